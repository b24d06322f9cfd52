//! Writes one service into the maps make-before-break: backends, then the selection table (in
//! the half the live service does not use), then the service entry that switches to it; the old
//! table goes last. Removal runs the other way round.
use std::net::IpAddr;

use aya::maps::MapError;
use xvs_common::{
    Backend, Scheduler, ServiceKey, ServiceValue, SlotKey, BACKEND_F_DRAINING, BACKEND_F_PRESENT, IPPROTO_TCP,
    IPPROTO_UDP, MAP_BACKENDS, MAP_SERVICES, MAP_SLOTS, MAX_BACKENDS,
};

use super::{addr::to_map_addr, error::DataplaneError, maps::Maps, tables};

/// Selection tables alternate between two halves of the slot space, so the live table is never
/// overwritten while packets read it.
const SLOT_HALF: u32 = 1 << 31;

/// One backend of a service as the datapath sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    /// Non-zero, unique among all backends the dataplane holds.
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// 0 = drain: no new flows, established flows continue.
    pub weight: u32,
}

/// One virtual service (VIP, port, proto) with its scheduler and backends in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Non-zero, unique among services.
    pub svc_id: u32,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub scheduler: Scheduler,
    /// `SERVICE_F_*` bits.
    pub flags: u8,
    /// Session affinity timeout in seconds (IPVS persistence); 0 = none.
    pub affinity_timeout: u32,
    pub backends: Vec<BackendEntry>,
}

impl ServiceEntry {
    pub fn key(&self) -> ServiceKey {
        let (addr, family) = to_map_addr(self.vip);
        ServiceKey { addr, port: self.port.to_be(), proto: self.proto, family }
    }

    /// `TCP 10.96.0.10:80`, `UDP [fd00::10]:53`: how errors name the service.
    pub fn name(&self) -> String {
        let proto = match self.proto {
            IPPROTO_TCP => "TCP",
            IPPROTO_UDP => "UDP",
            _ => "proto?",
        };
        format!("{proto} {}", std::net::SocketAddr::new(self.vip, self.port))
    }
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

impl Maps {
    /// Creates or updates a service.
    pub fn apply_service(&mut self, svc: &ServiceEntry) -> Result<(), DataplaneError> {
        let weights: Vec<u32> = svc.backends.iter().map(|b| b.weight).collect();
        let table = tables::render(svc.scheduler, &weights)
            .map_err(|source| DataplaneError::Table { service: svc.name(), source })?;

        for b in &svc.backends {
            if b.id == 0 || b.id >= MAX_BACKENDS {
                return Err(DataplaneError::BackendId { service: svc.name(), id: b.id, max: MAX_BACKENDS });
            }
            let (addr, family) = to_map_addr(b.addr);
            let flags = if b.weight == 0 { BACKEND_F_PRESENT | BACKEND_F_DRAINING } else { BACKEND_F_PRESENT };
            let value = Backend { addr, port: b.port.to_be(), family, flags, svc_id: svc.svc_id, weight: b.weight };
            self.backends.set(b.id, value, 0).map_err(DataplaneError::map(MAP_BACKENDS, "write"))?;
        }

        let key = svc.key();
        let live = self.services.get(&key, 0).ok();
        let base = match live {
            Some(v) if v.slot_base == 0 => SLOT_HALF,
            _ => 0,
        };
        for (slot, &index) in (base..).zip(&table) {
            let key = SlotKey { svc_id: svc.svc_id, slot };
            self.slots.insert(key, svc.backends[index].id, 0).map_err(DataplaneError::map(MAP_SLOTS, "write"))?;
        }

        let value = ServiceValue {
            svc_id: svc.svc_id,
            slot_base: base,
            slot_count: table.len() as u32,
            // Keep the rotation where it was: an update must not restart rr at the first backend.
            rr_cursor: live.map_or(0, |v| v.rr_cursor),
            scheduler: svc.scheduler as u8,
            flags: svc.flags,
            _pad: [0; 2],
            affinity_timeout: svc.affinity_timeout,
        };
        self.services.insert(key, value, 0).map_err(DataplaneError::map(MAP_SERVICES, "write"))?;

        if let Some(old) = live {
            self.remove_slots(&old)?;
        }
        Ok(())
    }

    /// Removes a service: entry first (no new packet finds it), then its table, then backends.
    pub fn remove_service(&mut self, svc: &ServiceEntry) -> Result<(), DataplaneError> {
        let key = svc.key();
        let live = self.services.get(&key, 0).ok();
        ignore_missing(self.services.remove(&key)).map_err(DataplaneError::map(MAP_SERVICES, "delete"))?;
        if let Some(old) = live {
            self.remove_slots(&old)?;
        }
        for b in &svc.backends {
            self.remove_backend(b.id)?;
        }
        Ok(())
    }

    /// Marks a backend gone: flows pinned to it are rescheduled on their next packet.
    pub fn remove_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.backends.set(id, Backend::default(), 0).map_err(DataplaneError::map(MAP_BACKENDS, "write"))
    }

    fn remove_slots(&mut self, old: &ServiceValue) -> Result<(), DataplaneError> {
        for slot in old.slot_base..old.slot_base + old.slot_count {
            let key = SlotKey { svc_id: old.svc_id, slot };
            ignore_missing(self.slots.remove(&key)).map_err(DataplaneError::map(MAP_SLOTS, "delete"))?;
        }
        Ok(())
    }
}
