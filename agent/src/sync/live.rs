//! The live dataplane read back from the maps: what `list`, `verify` and a restarted agent see.
use std::collections::BTreeMap;

use xvs_common::{
    Backend, ServiceKey, ServiceValue, SlotKey, BACKEND_F_PRESENT, MAP_BACKENDS, MAP_DRAINS, MAP_SERVICES, MAP_SLOTS, SERVICE_F_SH_PORT, SERVICE_F_SOURCE_RANGES, SERVICE_F_EXTERNAL, SERVICE_F_KEEP_CLIENT,
};

use crate::{
    dataplane::{batch, from_map_addr, BackendEntry, DataplaneError, Maps, ServiceEntry},
    model::{Protocol, ServiceId},
};

/// One service entry of the maps with its table resolved slot by slot.
#[derive(Clone, Debug)]
pub struct LiveService {
    pub id: ServiceId,
    pub value: ServiceValue,
    /// The backend id in each slot of the live table; `None` where a slot entry is missing.
    pub table: Vec<Option<u32>>,
}

#[derive(Clone, Debug, Default)]
pub struct LiveState {
    pub services: BTreeMap<ServiceId, LiveService>,
    /// Present backends, keyed by (service id, backend id) so one service's backends are a
    /// range, not a scan of every backend.
    pub backends: BTreeMap<(u32, u32), Backend>,
    /// Service entries whose key cannot be decoded (unknown family or protocol): never written
    /// by xvs, so they are drift.
    pub unreadable: Vec<ServiceKey>,
    /// When each draining backend's drain started (backend id -> datapath second).
    pub drains: BTreeMap<u32, u32>,
    /// Each service's source ranges (service id -> (map address, prefix bits)).
    pub ranges: BTreeMap<u32, Vec<([u32; 4], u8)>>,
}

/// The `ServiceId` a map key stands for.
pub fn service_id(key: &ServiceKey) -> Option<ServiceId> {
    Some(ServiceId {
        vip: from_map_addr(&key.addr, key.family)?,
        port: u16::from_be(key.port),
        proto: Protocol::from_number(key.proto)?,
    })
}

impl LiveState {
    /// Reads every map whole, in batches where the kernel can (a few bpf(2) calls per map,
    /// not one per entry).
    pub fn read(maps: &Maps) -> Result<Self, DataplaneError> {
        let mut state = Self::default();
        let slots: std::collections::HashMap<SlotKey, u32> = batch::hash_entries(&maps.slots, MAP_SLOTS)?.into_iter().collect();
        for (key, value) in batch::hash_entries(&maps.services, MAP_SERVICES)? {
            let Some(id) = service_id(&key) else {
                state.unreadable.push(key);
                continue;
            };
            let table = (value.slot_base..value.slot_base.wrapping_add(value.slot_count))
                .map(|slot| slots.get(&SlotKey { svc_id: value.svc_id, slot }).copied())
                .collect();
            state.services.insert(id, LiveService { id, value, table });
        }
        for (id, backend) in batch::array_values(&maps.backends, MAP_BACKENDS)?.into_iter().enumerate().skip(1).take(maps.capacity.backends as usize) {
            if backend.flags & BACKEND_F_PRESENT != 0 {
                state.backends.insert((backend.svc_id, id as u32), backend);
            }
        }
        state.ranges = maps.source_ranges()?;
        state.drains = batch::hash_entries(&maps.drains, MAP_DRAINS)?.into_iter().collect();
        Ok(state)
    }

    /// Present backends that belong to service `svc_id`.
    pub fn backends_of(&self, svc_id: u32) -> impl Iterator<Item = (u32, &Backend)> {
        self.backends.range((svc_id, 0)..=(svc_id, u32::MAX)).map(|(&(_, id), b)| (id, b))
    }

    /// The service as the agent would have written it (for adoption after a restart): its
    /// backends in the kernel's list order (newest stamp first), with the weights the maps hold.
    pub fn entry(&self, svc: &LiveService) -> ServiceEntry {
        let mut backends: Vec<BackendEntry> = self
            .backends_of(svc.value.svc_id)
            .filter_map(|(id, b)| {
                let addr = from_map_addr(&b.addr, b.family)?;
                Some(BackendEntry { id, addr, port: u16::from_be(b.port), weight: b.weight, seq: b.seq, last_weight: b.last_weight })
            })
            .collect();
        backends.sort_by_key(|b| std::cmp::Reverse(b.seq));
        ServiceEntry {
            svc_id: svc.value.svc_id,
            vip: svc.id.vip,
            port: svc.id.port,
            proto: svc.id.proto.number(),
            scheduler: xvs_common::Scheduler::from_u8(svc.value.scheduler).unwrap_or(xvs_common::Scheduler::RoundRobin),
            flags: svc.value.flags & (SERVICE_F_SH_PORT | SERVICE_F_SOURCE_RANGES | SERVICE_F_EXTERNAL | SERVICE_F_KEEP_CLIENT),
            affinity_timeout: svc.value.affinity_timeout,
            backends,
            source_ranges: self.source_ranges_of(svc),
        }
    }

    /// A service's ranges, decoded in its VIP's family, sorted.
    pub fn source_ranges_of(&self, svc: &LiveService) -> Vec<(std::net::IpAddr, u8)> {
        let family = if svc.id.vip.is_ipv6() { xvs_common::AF_INET6 } else { xvs_common::AF_INET };
        let mut out: Vec<(std::net::IpAddr, u8)> =
            self.ranges.get(&svc.value.svc_id).into_iter().flatten().filter_map(|(addr, bits)| Some((from_map_addr(addr, family)?, *bits))).collect();
        out.sort();
        out
    }
}
