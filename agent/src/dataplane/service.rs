//! Writes one service into the maps make-before-break: backends, then the selection table (in
//! the half the live service does not use), then the service entry that switches to it; the old
//! table goes last. Removal runs the other way round.
use std::net::IpAddr;

use aya::maps::MapError;
use xvs_common::{
    Backend, Scheduler, ServiceKey, ServiceValue, SlotKey, BACKEND_F_DRAINING, BACKEND_F_PRESENT, IPPROTO_TCP,
    IPPROTO_UDP, MAP_BACKENDS, MAP_SERVICES, MAP_SLOTS,
};

use super::{
    addr::to_map_addr,
    error::{is_missing, DataplaneError},
    ipvs_list::scheduler_fields,
    maps::Maps,
    tables,
};

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
    /// Position in the kernel's destination list (see [`xvs_common::Backend::seq`]).
    pub seq: u32,
    /// IPVS's `last_weight` (see [`xvs_common::Backend::last_weight`]).
    pub last_weight: u32,
}

/// One virtual service (VIP, port, proto) with its scheduler and backends in the kernel's
/// destination list order (head first).
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
    /// Clients admitted (address, prefix bits), sorted; with `SERVICE_F_SOURCE_RANGES` only.
    pub source_ranges: Vec<(IpAddr, u8)>,
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
        Err(e) if is_missing(&e) => Ok(()),
        other => other,
    }
}

impl ServiceEntry {
    /// The selection table as indexes into `backends`, slot by slot.
    pub fn table_indexes(&self) -> Result<Vec<usize>, DataplaneError> {
        tables::render(self.scheduler, &self.backends).map_err(|source| DataplaneError::Table { service: self.name(), source })
    }

    /// The selection table as the slot values the datapath reads: backend ids (mh's with its
    /// fallbacks, see `tables::mh_slots`).
    pub fn table(&self) -> Result<Vec<u32>, DataplaneError> {
        let indexes = self.table_indexes()?;
        if self.scheduler == xvs_common::Scheduler::MaglevHash {
            return tables::mh_slots(&indexes, &self.backends).map_err(|source| DataplaneError::Table { service: self.name(), source });
        }
        Ok(indexes.into_iter().map(|i| self.backends[i].id).collect())
    }

    fn backend_value(&self, b: &BackendEntry) -> Backend {
        let (addr, family) = to_map_addr(b.addr);
        let flags = if b.weight == 0 { BACKEND_F_PRESENT | BACKEND_F_DRAINING } else { BACKEND_F_PRESENT };
        Backend { addr, port: b.port.to_be(), family, flags, svc_id: self.svc_id, weight: b.weight, seq: b.seq, last_weight: b.last_weight }
    }
}

impl Maps {
    /// Creates or updates a service, writing everything.
    pub fn apply_service(&mut self, svc: &ServiceEntry) -> Result<(), DataplaneError> {
        self.update_service(None, svc)
    }

    /// Moves a service from `old` (what was last written; `None` when unknown) to `new`,
    /// writing only the entries that change: new or changed backends, then the selection table
    /// (in the half the live service does not use) and the service entry that switches to it,
    /// then the old table; backends `new` no longer has go last.
    pub fn update_service(&mut self, old: Option<&ServiceEntry>, new: &ServiceEntry) -> Result<(), DataplaneError> {
        let indexes = new.table_indexes()?;
        let table = new.table()?;
        for b in &new.backends {
            if b.id == 0 || b.id > self.capacity.backends {
                return Err(DataplaneError::BackendId { service: new.name(), id: b.id, max: self.capacity.backends });
            }
        }
        for b in &new.backends {
            if old.is_some_and(|o| o.svc_id == new.svc_id && o.backends.contains(b)) {
                continue;
            }
            self.backends.set(b.id, new.backend_value(b), 0).map_err(DataplaneError::map(MAP_BACKENDS, "write"))?;
        }

        self.add_ranges(old, new)?;
        let key = new.key();
        let live = self.services.get(&key, 0).ok();
        let table_is_live = match (old, live) {
            (Some(o), Some(v)) => v.svc_id == new.svc_id && v.slot_count as usize == table.len() && o.table()? == table,
            _ => false,
        };
        // rr and wrr go on where the kernel's would after the same changes; with none (or
        // only settings changed) the rotation stays exactly where it is.
        let (rr_cursor, sched_mark, sched_state) = scheduler_fields(old, live.as_ref(), new, &indexes)?;
        let mut value = ServiceValue {
            svc_id: new.svc_id,
            slot_base: 0,
            slot_count: table.len() as u32,
            rr_cursor,
            scheduler: new.scheduler as u8,
            flags: new.flags,
            _pad: [0; 2],
            affinity_timeout: new.affinity_timeout,
            sched_mark,
            sched_state,
        };
        match live {
            Some(v) if table_is_live => {
                value.slot_base = v.slot_base;
                if value != v {
                    self.services.insert(key, value, 0).map_err(DataplaneError::map(MAP_SERVICES, "write"))?;
                }
            }
            _ => {
                value.slot_base = match live {
                    Some(v) if v.slot_base == 0 => SLOT_HALF,
                    _ => 0,
                };
                for (slot, &id) in (value.slot_base..).zip(&table) {
                    let key = SlotKey { svc_id: new.svc_id, slot };
                    self.slots.insert(key, id, 0).map_err(DataplaneError::map(MAP_SLOTS, "write"))?;
                }
                self.services.insert(key, value, 0).map_err(DataplaneError::map(MAP_SERVICES, "write"))?;
                if let Some(v) = live {
                    self.remove_slots(&v)?;
                }
            }
        }

        if let Some(o) = old {
            self.drop_ranges(o, Some(new))?;
            for b in &o.backends {
                if !new.backends.iter().any(|n| n.id == b.id) {
                    self.remove_backend(b.id)?;
                }
            }
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
        self.drop_ranges(svc, None)?;
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
