//! Typed handles on every map of the datapath, and the reads the agent and tests need.
use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
    Ebpf,
};
use xvs_common::{
    reason::REASON_COUNT, AffinityEntry, AffinityKey, Backend, Counters, FlowEntry, FlowKey, Reason, ServiceKey,
    ServiceValue, SlotKey, MAP_AFFINITY, MAP_BACKENDS, MAP_BACKEND_STATS, MAP_CLOCK, MAP_CONNTRACK, MAP_DRAINS, MAP_REASONS,
    MAP_SERVICES, MAP_SERVICE_STATS, MAP_SLOTS, MAP_SOURCE_RANGES, MAP_STAMP, SourceRange, NatAddrKey, NatConfig, MAP_NAT,
    MAP_NAT_ADDRS,
    sock::{SockConfig, SockEntry, SockEvent, SockKey, MAP_SOCK_CONFIG, MAP_SOCK_EVENTS, MAP_SOCK_NAT, SOCK_EVENT_COUNT},
};

use super::{capacity::Capacity, error::DataplaneError};

pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub slots: HashMap<MapData, SlotKey, u32>,
    pub backends: Array<MapData, Backend>,
    pub conntrack: HashMap<MapData, FlowKey, FlowEntry>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
    pub service_stats: PerCpuArray<MapData, Counters>,
    pub backend_stats: PerCpuArray<MapData, Counters>,
    pub reasons: PerCpuArray<MapData, u64>,
    /// Seconds the datapath adds to CLOCK_MONOTONIC (see [`MAP_CLOCK`]).
    pub clock: Array<MapData, u32>,
    /// When each drain started (see [`MAP_DRAINS`]).
    pub drains: HashMap<MapData, u32, u32>,
    /// The ABI of the build that made the maps (see [`MAP_STAMP`]).
    pub stamp: Array<MapData, u64>,
    /// The clients each service with source ranges admits (see [`MAP_SOURCE_RANGES`]).
    pub source_ranges: LpmTrie<MapData, SourceRange, u8>,
    /// How new flows are masqueraded (see [`MAP_NAT`]).
    pub nat: Array<MapData, NatConfig>,
    /// The address each served interface masquerades to, per family (see [`MAP_NAT_ADDRS`]).
    pub nat_addrs: HashMap<MapData, NatAddrKey, [u32; 4]>,
    /// What each socket was translated to by the socket hooks (see [`MAP_SOCK_NAT`]).
    pub sock_nat: HashMap<MapData, SockKey, SockEntry>,
    /// What the socket hooks did, per [`SockEvent`].
    pub sock_events: PerCpuArray<MapData, u64>,
    /// Whether the socket hooks translate, and for which namespaces (see [`MAP_SOCK_CONFIG`]).
    pub sock_config: Array<MapData, SockConfig>,
    /// The maps' real sizes, read back from the kernel.
    pub capacity: Capacity,
}

fn typed<T>(source: &mut dyn FnMut(&'static str) -> Option<Map>, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = source(name).ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(DataplaneError::map(name, "open"))
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Self::from_maps(&mut |name| ebpf.take_map(name))
    }

    /// Builds the typed handles from `source` (map by name); a wrong key or value size (a map
    /// from another build) is an error here, before any program uses it.
    pub(super) fn from_maps(source: &mut dyn FnMut(&'static str) -> Option<Map>) -> Result<Self, DataplaneError> {
        let mut maps = Self {
            services: typed(source, MAP_SERVICES)?,
            slots: typed(source, MAP_SLOTS)?,
            backends: typed(source, MAP_BACKENDS)?,
            conntrack: typed(source, MAP_CONNTRACK)?,
            affinity: typed(source, MAP_AFFINITY)?,
            service_stats: typed(source, MAP_SERVICE_STATS)?,
            backend_stats: typed(source, MAP_BACKEND_STATS)?,
            reasons: typed(source, MAP_REASONS)?,
            clock: typed(source, MAP_CLOCK)?,
            drains: typed(source, MAP_DRAINS)?,
            stamp: typed(source, MAP_STAMP)?,
            source_ranges: typed(source, MAP_SOURCE_RANGES)?,
            nat: typed(source, MAP_NAT)?,
            nat_addrs: typed(source, MAP_NAT_ADDRS)?,
            sock_nat: typed(source, MAP_SOCK_NAT)?,
            sock_events: typed(source, MAP_SOCK_EVENTS)?,
            sock_config: typed(source, MAP_SOCK_CONFIG)?,
            capacity: Capacity::default(),
        };
        maps.capacity = Capacity::of(&maps)?;
        Ok(maps)
    }

    /// Packets per verdict reason, summed over CPUs, indexed by `Reason as usize`.
    pub fn reason_counts(&self) -> Result<[u64; REASON_COUNT as usize], DataplaneError> {
        let mut out = [0u64; REASON_COUNT as usize];
        for r in Reason::ALL {
            let per_cpu = self
                .reasons
                .get(&(r as u32), 0)
                .map_err(DataplaneError::map(MAP_REASONS, "read"))?;
            out[r as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// What the socket hooks did, summed over CPUs, indexed by `SockEvent as usize`.
    pub fn sock_event_counts(&self) -> Result<[u64; SOCK_EVENT_COUNT as usize], DataplaneError> {
        let mut out = [0u64; SOCK_EVENT_COUNT as usize];
        for e in SockEvent::ALL {
            let per_cpu = self.sock_events.get(&(e as u32), 0).map_err(DataplaneError::map(MAP_SOCK_EVENTS, "read"))?;
            out[e as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Marks the maps as this build's (`xvs_common::ABI_VERSION`).
    pub(super) fn stamp(&mut self) -> Result<(), DataplaneError> {
        self.stamp.set(0, xvs_common::ABI_VERSION, 0).map_err(DataplaneError::map(MAP_STAMP, "write"))
    }

    /// Seconds the datapath's clock runs ahead of CLOCK_MONOTONIC.
    pub fn clock_offset(&self) -> Result<u32, DataplaneError> {
        self.clock.get(&0, 0).map_err(DataplaneError::map(MAP_CLOCK, "read"))
    }

    /// Moves the datapath's clock to `secs` ahead of CLOCK_MONOTONIC (tests age flows so).
    pub fn set_clock_offset(&mut self, secs: u32) -> Result<(), DataplaneError> {
        self.clock.set(0, secs, 0).map_err(DataplaneError::map(MAP_CLOCK, "write"))
    }

    /// A service's counters summed over CPUs.
    pub fn service_counters(&self, svc_id: u32) -> Result<Counters, DataplaneError> {
        sum(&self.service_stats, svc_id, MAP_SERVICE_STATS)
    }

    /// A backend's counters summed over CPUs.
    pub fn backend_counters(&self, backend_id: u32) -> Result<Counters, DataplaneError> {
        sum(&self.backend_stats, backend_id, MAP_BACKEND_STATS)
    }
}

fn sum(map: &PerCpuArray<MapData, Counters>, id: u32, name: &'static str) -> Result<Counters, DataplaneError> {
    let per_cpu = map.get(&id, 0).map_err(DataplaneError::map(name, "read"))?;
    let mut total = Counters::default();
    for c in per_cpu.iter() {
        total.add(c);
    }
    Ok(total)
}
