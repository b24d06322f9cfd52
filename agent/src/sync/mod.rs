//! From desired state to dataplane state: the reconciler that writes the maps, the live view
//! read back from them, flow accounting, and the diff `verify` reports.
mod clock;
pub mod fit;
pub mod flows;
mod ids;
pub mod live;
mod reconcile;
pub mod verify;

pub use clock::{datapath_secs, monotonic_secs};
pub use live::LiveState;
pub use reconcile::{Reconciler, SyncError, SyncReport};

use aya::maps::PerCpuValues;
use xvs_common::{Counters, MAP_BACKEND_STATS, MAP_DRAINS, MAP_SERVICE_STATS};

use crate::dataplane::{DataplaneError, Maps, ServiceEntry};

/// Which id space a counter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Service,
    Backend,
}

/// The writes the reconciler makes: the BPF maps in the agent, a recorder in tests.
pub trait Writer {
    /// Moves a service from `old` (last written) to `new`, make-before-break.
    fn update_service(&mut self, old: Option<&ServiceEntry>, new: &ServiceEntry) -> Result<(), DataplaneError>;
    fn remove_service(&mut self, entry: &ServiceEntry) -> Result<(), DataplaneError>;
    fn reset_counters(&mut self, kind: Counted, id: u32) -> Result<(), DataplaneError>;
    /// Zeroes the counters of the ids in `ids` (for ids no service uses).
    fn zero_counters(&mut self, kind: Counted, ids: std::ops::RangeInclusive<u32>) -> Result<(), DataplaneError> {
        ids.into_iter().try_for_each(|id| self.reset_counters(kind, id))
    }
    /// Keeps when backend `id`'s drain started, where a restarted agent finds it.
    fn record_drain(&mut self, id: u32, since: u32) -> Result<(), DataplaneError>;
    /// Forgets backend `id`'s drain (ended, or the id was released).
    fn forget_drain(&mut self, id: u32) -> Result<(), DataplaneError>;
    /// Live flows per backend id, from the connection table (`now`: datapath seconds).
    fn flow_counts(&mut self, now: u32) -> Result<std::collections::HashMap<u32, flows::ConnCounts>, DataplaneError>;
}

impl Writer for Maps {
    fn update_service(&mut self, old: Option<&ServiceEntry>, new: &ServiceEntry) -> Result<(), DataplaneError> {
        Maps::update_service(self, old, new)
    }

    fn remove_service(&mut self, entry: &ServiceEntry) -> Result<(), DataplaneError> {
        Maps::remove_service(self, entry)
    }

    fn reset_counters(&mut self, kind: Counted, id: u32) -> Result<(), DataplaneError> {
        let (map, name) = stats_of(self, kind);
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::map(name, "count CPUs")(aya::maps::MapError::IoError(e)))?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(|e| DataplaneError::map(name, "write")(aya::maps::MapError::IoError(e)))?;
        map.set(id, zeros, 0).map_err(DataplaneError::map(name, "write"))
    }

    fn zero_counters(&mut self, kind: Counted, ids: std::ops::RangeInclusive<u32>) -> Result<(), DataplaneError> {
        let (map, name) = stats_of(self, kind);
        match crate::dataplane::batch::zero_per_cpu(map, name, ids.clone()) {
            Err(DataplaneError::Batch { source: crate::dataplane::batch::BatchError::Unsupported, .. }) => ids.into_iter().try_for_each(|id| self.reset_counters(kind, id)),
            other => other,
        }
    }

    fn record_drain(&mut self, id: u32, since: u32) -> Result<(), DataplaneError> {
        self.drains.insert(id, since, 0).map_err(DataplaneError::map(MAP_DRAINS, "write"))
    }

    fn forget_drain(&mut self, id: u32) -> Result<(), DataplaneError> {
        match self.drains.remove(&id) {
            Err(e) if !crate::dataplane::is_missing(&e) => Err(DataplaneError::map(MAP_DRAINS, "delete")(e)),
            _ => Ok(()),
        }
    }

    fn flow_counts(&mut self, now: u32) -> Result<std::collections::HashMap<u32, flows::ConnCounts>, DataplaneError> {
        Ok(flows::scan(self, now)?.per_backend)
    }
}

/// The per-CPU counters of one id space, and the map's name.
fn stats_of(maps: &mut Maps, kind: Counted) -> (&mut aya::maps::PerCpuArray<aya::maps::MapData, Counters>, &'static str) {
    match kind {
        Counted::Service => (&mut maps.service_stats, MAP_SERVICE_STATS),
        Counted::Backend => (&mut maps.backend_stats, MAP_BACKEND_STATS),
    }
}

#[cfg(test)]
mod tests;
