//! Map capacities. The object declares defaults (`xvs_common::MAX_*`); the agent can size the
//! maps at load time (`xvs run --max-services ...`), and everything that allocates ids or walks
//! a map reads the real capacity back from the kernel, so pinned maps of another size are
//! handled too.
use aya::{maps::IterableMap, EbpfLoader};
use xvs_common::{
    MAP_BACKENDS, MAP_BACKEND_STATS, MAP_CONNTRACK, MAP_DRAINS, MAP_SERVICES, MAP_SERVICE_STATS, MAP_SLOTS, MAX_BACKENDS, MAX_FLOWS,
    MAX_SERVICES, MAX_SLOTS,
};

use super::{error::DataplaneError, maps::Maps};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// How many services: ids are 1..=services (0 is reserved, so the arrays indexed by service
    /// id have one entry more).
    pub services: u32,
    /// How many backends: ids are 1..=backends.
    pub backends: u32,
    /// Selection-table slots of all services together (both halves while a table flips).
    pub slots: u32,
    /// Connection-table entries (two per flow).
    pub flows: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self { services: MAX_SERVICES, backends: MAX_BACKENDS, slots: MAX_SLOTS, flows: MAX_FLOWS }
    }
}

impl Capacity {
    /// The `max_entries` each sized map gets for this capacity.
    fn entries(&self) -> [(&'static str, u32); 7] {
        [
            (MAP_SERVICES, self.services),
            (MAP_SERVICE_STATS, self.services.saturating_add(1)),
            (MAP_BACKENDS, self.backends.saturating_add(1)),
            (MAP_BACKEND_STATS, self.backends.saturating_add(1)),
            (MAP_DRAINS, self.backends),
            (MAP_SLOTS, self.slots),
            (MAP_CONNTRACK, self.flows),
        ]
    }

    /// Sizes the maps of an object about to be loaded. A map already pinned keeps its size,
    /// and the loader is told that size (`pinned` reads it), so every bound check agrees with
    /// the kernel's map: one rule for every capacity flag, never a mismatch at the first read.
    pub fn apply(&self, loader: &mut EbpfLoader<'_>, pinned: &dyn Fn(&'static str) -> Option<u32>) {
        for (name, entries) in self.entries() {
            loader.map_max_entries(name, pinned(name).unwrap_or(entries));
        }
    }

    /// What the kernel's maps hold: for each id space, the smallest of its maps (maps pinned by
    /// an older agent had arrays of exactly `services`/`backends` entries, id 0 included).
    pub(super) fn of(maps: &Maps) -> Result<Self, DataplaneError> {
        let max = |m: &aya::maps::MapData, name: &'static str| {
            m.info().map(|i| i.max_entries()).map_err(DataplaneError::map(name, "read the size of"))
        };
        let ids = |entries: u32| entries.saturating_sub(1);
        Ok(Self {
            services: max(maps.services.map(), MAP_SERVICES)?.min(ids(max(maps.service_stats.map(), MAP_SERVICE_STATS)?)),
            backends: ids(max(maps.backends.map(), MAP_BACKENDS)?).min(ids(max(maps.backend_stats.map(), MAP_BACKEND_STATS)?)),
            slots: max(maps.slots.map(), MAP_SLOTS)?,
            flows: max(maps.conntrack.map(), MAP_CONNTRACK)?,
        })
    }
}
