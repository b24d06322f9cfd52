//! Map capacities. The object declares defaults (`xvs_common::MAX_*`); the agent can size the
//! maps at load time (`xvs run --max-services ...`), and everything that allocates ids or walks
//! a map reads the real capacity back from the kernel, so pinned maps of another size are
//! handled too.
use aya::{maps::IterableMap, EbpfLoader};
use xvs_common::{
    MAP_BACKENDS, MAP_BACKEND_STATS, MAP_CONNTRACK, MAP_SERVICES, MAP_SERVICE_STATS, MAP_SLOTS, MAX_BACKENDS, MAX_FLOWS,
    MAX_SERVICES, MAX_SLOTS,
};

use super::{error::DataplaneError, maps::Maps};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Service ids are 1..services.
    pub services: u32,
    /// Backend ids are 1..backends.
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
    /// Sizes the maps of an object about to be loaded (maps already pinned keep their size).
    pub fn apply(&self, loader: &mut EbpfLoader<'_>) {
        loader
            .map_max_entries(MAP_SERVICES, self.services)
            .map_max_entries(MAP_SERVICE_STATS, self.services)
            .map_max_entries(MAP_BACKENDS, self.backends)
            .map_max_entries(MAP_BACKEND_STATS, self.backends)
            .map_max_entries(MAP_SLOTS, self.slots)
            .map_max_entries(MAP_CONNTRACK, self.flows);
    }

    /// What the kernel says the maps hold.
    pub(super) fn of(maps: &Maps) -> Result<Self, DataplaneError> {
        let max = |m: &aya::maps::MapData, name: &'static str| {
            m.info().map(|i| i.max_entries()).map_err(DataplaneError::map(name, "read the size of"))
        };
        Ok(Self {
            services: max(maps.services.map(), MAP_SERVICES)?,
            backends: max(maps.backends.map(), MAP_BACKENDS)?,
            slots: max(maps.slots.map(), MAP_SLOTS)?,
            flows: max(maps.conntrack.map(), MAP_CONNTRACK)?,
        })
    }
}
