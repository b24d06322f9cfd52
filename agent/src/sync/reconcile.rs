//! Keeps the dataplane equal to the model. It remembers what it wrote (adopted from the maps
//! after a restart), diffs each service against the model, and writes only what changed.
//! A failure is confined to its service: that service keeps its last good state, the others
//! are still applied.
//!
//! Graceful termination: a backend that leaves a service is not deleted but drained: it stays
//! with weight 0 (no new flows, its established flows continue) until it has no live flow or
//! the drain timeout passes, like kube-proxy's IPVS graceful termination.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
};

use xvs_common::{SERVICE_F_SH_PORT, SERVICE_F_SOURCE_RANGES};

use super::{flows::ConnCounts, ids::IdPool, live::LiveState, Counted, Writer};
use crate::{
    dataplane::{
        ipvs_list::{dest_ops, endpoints, replay, Position},
        BackendEntry, Capacity, DataplaneError, ServiceEntry,
    },
    model::{Model, Protocol, Service, ServiceId},
};

/// Live flows per backend, read from the connection table once per sync and only if a TCP
/// backend leaves (the scan walks the whole table).
#[derive(Default)]
struct FlowCounts(Option<HashMap<u32, ConnCounts>>);

impl FlowCounts {
    /// Whether backend `id` still has flows. A failed read counts as busy: draining a backend
    /// that had none costs a few seconds, removing one that had some breaks connections.
    fn busy(&mut self, w: &mut impl Writer, id: u32, now: u32) -> bool {
        if self.0.is_none() {
            match w.flow_counts(now) {
                Ok(counts) => self.0 = Some(counts),
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "could not count flows; leaving TCP backends drain");
                    return true;
                }
            }
        }
        self.0.as_ref().is_none_or(|c| c.get(&id).is_some_and(|n| n.total() > 0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("service {service}: {cause}")]
    Dataplane { service: ServiceId, cause: String, source: DataplaneError },
    #[error("service {service}: no free {what} id (the dataplane holds at most {max})")]
    IdsExhausted { service: ServiceId, what: &'static str, max: u32 },
}

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub created: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Backends that started draining in this sync.
    pub draining: Vec<(ServiceId, SocketAddr)>,
}

#[derive(Debug)]
pub struct Reconciler {
    applied: BTreeMap<ServiceId, ServiceEntry>,
    /// Backends being drained, with the time (CLOCK_MONOTONIC s) the drain started.
    draining: BTreeMap<(ServiceId, SocketAddr), u32>,
    svc_ids: IdPool,
    backend_ids: IdPool,
    drain_timeout: u32,
    /// Services whose maps may differ from `applied` (drift): rewritten in full next sync.
    dirty: BTreeSet<ServiceId>,
    capacity: Capacity,
}

impl Reconciler {
    pub fn new(drain_timeout: u32, capacity: Capacity) -> Self {
        Self {
            applied: BTreeMap::new(),
            draining: BTreeMap::new(),
            svc_ids: IdPool::new(capacity.services),
            backend_ids: IdPool::new(capacity.backends),
            drain_timeout,
            dirty: BTreeSet::new(),
            capacity,
        }
    }

    /// Takes over what a previous agent left in the maps, so established flows keep their
    /// backends and nothing is rewritten that does not change. Drains go on from when they
    /// started (the pinned record), so a drain ends on time however often the agent restarts;
    /// weight-0 backends without a record are drained again if the model no longer has them.
    pub fn adopt(live: &LiveState, drain_timeout: u32, capacity: Capacity) -> Self {
        let applied: BTreeMap<ServiceId, ServiceEntry> =
            live.services.values().map(|s| (s.id, live.entry(s))).collect();
        let svc_ids = IdPool::with_used(capacity.services, applied.values().map(|e| e.svc_id));
        let backend_ids = IdPool::with_used(capacity.backends, live.backends.keys().map(|&(_, id)| id));
        let draining = applied
            .iter()
            .flat_map(|(sid, e)| e.backends.iter().map(move |b| (sid, b)))
            .filter(|(_, b)| b.weight == 0)
            .filter_map(|(sid, b)| live.drains.get(&b.id).map(|&since| ((*sid, SocketAddr::new(b.addr, b.port)), since)))
            .collect();
        Self { applied, draining, svc_ids, backend_ids, drain_timeout, dirty: BTreeSet::new(), capacity }
    }

    /// Marks services whose maps were changed behind the reconciler's back: the next sync
    /// rewrites them in full (same ids, so their flows stay).
    pub fn invalidate(&mut self, services: impl IntoIterator<Item = ServiceId>) {
        self.dirty.extend(services);
    }

    /// What the reconciler believes is in the dataplane.
    pub fn applied(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.applied.values()
    }

    pub fn draining(&self) -> impl Iterator<Item = &(ServiceId, SocketAddr)> {
        self.draining.keys()
    }

    /// Brings the dataplane to `model`. Every service is attempted; the errors of those that
    /// failed (and kept their previous state) are returned with the report.
    pub fn sync(&mut self, model: &Model, w: &mut impl Writer, now: u32) -> (SyncReport, Vec<SyncError>) {
        let gone: Vec<ServiceId> = self.applied.keys().filter(|id| model.get_in_ebpf(id).is_none()).copied().collect();
        self.sync_services(gone, model.in_ebpf(), w, now)
    }

    /// Brings the services `changed` names (and only those) to `model`: what an event-driven
    /// source says changed, at the cost of those services whatever the model's size. The
    /// result is the full `sync`'s when every service that differs is named.
    pub fn sync_changed(&mut self, model: &Model, changed: impl IntoIterator<Item = ServiceId>, w: &mut impl Writer, now: u32) -> (SyncReport, Vec<SyncError>) {
        // In the model's order, as the full sync goes: ids are allocated the same way.
        let changed: BTreeSet<ServiceId> = changed.into_iter().collect();
        let gone: Vec<ServiceId> = changed.iter().filter(|id| model.get_in_ebpf(id).is_none() && self.applied.contains_key(id)).copied().collect();
        self.sync_services(gone, changed.iter().filter_map(|id| model.get_in_ebpf(id)), w, now)
    }

    fn sync_services<'m>(&mut self, gone: Vec<ServiceId>, present: impl Iterator<Item = &'m Service>, w: &mut impl Writer, now: u32) -> (SyncReport, Vec<SyncError>) {
        let mut report = SyncReport::default();
        let mut errors = Vec::new();
        let mut flows = FlowCounts::default();
        for id in gone {
            match self.remove(id, w) {
                Ok(()) => report.removed += 1,
                Err(e) => errors.push(e),
            }
        }
        for svc in present {
            let old = self.applied.get(&svc.id).cloned();
            let dirty = self.dirty.remove(&svc.id);
            match self.desired(svc, old.as_ref(), w, now, &mut report, &mut flows) {
                Ok(new) if old.as_ref() == Some(&new) && !dirty => report.unchanged += 1,
                // A dirty service is written as if nothing were known about its maps.
                Ok(new) => match w.update_service(old.as_ref().filter(|_| !dirty), &new) {
                    Ok(()) => {
                        if old.is_some() { report.updated += 1 } else { report.created += 1 }
                        // Backends removed at once (UDP, or no flows) give their ids back.
                        for gone in old.iter().flat_map(|o| &o.backends).filter(|b| !new.backends.iter().any(|n| n.id == b.id)) {
                            self.backend_ids.release(gone.id);
                        }
                        self.applied.insert(svc.id, new);
                    }
                    Err(source) => {
                        self.release_unused(old.as_ref(), &new);
                        errors.push(SyncError::Dataplane { service: svc.id, cause: "update failed; it keeps its previous state".into(), source });
                    }
                },
                Err(e) => errors.push(e),
            }
        }
        // Drains of backends that came back, or of services that went, are over.
        let applied = &self.applied;
        let mut over = Vec::new();
        self.draining.retain(|(sid, ep), _| {
            let drained = applied.get(sid).and_then(|e| e.backends.iter().find(|b| SocketAddr::new(b.addr, b.port) == *ep));
            match drained {
                Some(b) if b.weight == 0 => true,
                Some(b) => {
                    over.push(b.id);
                    false
                }
                None => false,
            }
        });
        for id in over {
            forget_drain(w, id);
        }
        (report, errors)
    }

    /// Ends the drains that are complete: no live flow left on the backend (`conns` from a
    /// connection-table scan) or the drain timeout passed. Returns the backends removed.
    pub fn finish_drains(
        &mut self,
        conns: &HashMap<u32, ConnCounts>,
        w: &mut impl Writer,
        now: u32,
    ) -> (Vec<(ServiceId, SocketAddr)>, Vec<SyncError>) {
        let mut done: BTreeMap<ServiceId, Vec<SocketAddr>> = BTreeMap::new();
        for (&(sid, ep), &since) in &self.draining {
            let Some(entry) = self.applied.get(&sid) else { continue };
            let Some(b) = entry.backends.iter().find(|b| SocketAddr::new(b.addr, b.port) == ep) else { continue };
            let flows = conns.get(&b.id).map_or(0, ConnCounts::total);
            if flows == 0 || now.saturating_sub(since) >= self.drain_timeout {
                done.entry(sid).or_default().push(ep);
            }
        }
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for (sid, eps) in done {
            let Some(old) = self.applied.get(&sid).cloned() else { continue };
            let mut new = old.clone();
            new.backends.retain(|b| !eps.contains(&SocketAddr::new(b.addr, b.port)));
            match w.update_service(Some(&old), &new) {
                Ok(()) => {
                    for b in old.backends.iter().filter(|b| !new.backends.contains(b)) {
                        self.backend_ids.release(b.id);
                        forget_drain(w, b.id);
                    }
                    for ep in eps {
                        self.draining.remove(&(sid, ep));
                        removed.push((sid, ep));
                    }
                    self.applied.insert(sid, new);
                }
                Err(source) => errors.push(SyncError::Dataplane { service: sid, cause: "removing drained backends failed".into(), source }),
            }
        }
        (removed, errors)
    }

    fn remove(&mut self, id: ServiceId, w: &mut impl Writer) -> Result<(), SyncError> {
        let Some(entry) = self.applied.get(&id) else { return Ok(()) };
        w.remove_service(entry).map_err(|source| SyncError::Dataplane {
            service: id,
            cause: "removal failed; it stays in the dataplane".into(),
            source,
        })?;
        self.svc_ids.release(entry.svc_id);
        for b in &entry.backends {
            self.backend_ids.release(b.id);
            if b.weight == 0 {
                forget_drain(w, b.id);
            }
        }
        self.applied.remove(&id);
        Ok(())
    }

    /// The entry `svc` should have, reusing ids of `old` and allocating (with zeroed counters)
    /// what is new. The backends are in the kernel's destination list order: IPVS puts each
    /// added destination at the head, so an added backend gets a newer stamp than any before
    /// it (in (address, port) order, the order the mirror adds them in). A backend that leaves
    /// goes as kube-proxy's graceful termination has it: a TCP one with live flows stays at
    /// weight 0 while they drain, any other goes at once (kube-proxy deletes UDP real servers
    /// at once; their flows move on their next packet, like IPVS's expire_nodest_conn).
    fn desired(
        &mut self,
        svc: &Service,
        old: Option<&ServiceEntry>,
        w: &mut impl Writer,
        now: u32,
        report: &mut SyncReport,
        flows: &mut FlowCounts,
    ) -> Result<ServiceEntry, SyncError> {
        let exhausted = |what, max| SyncError::IdsExhausted { service: svc.id, what, max };
        let svc_id = match old {
            Some(o) => o.svc_id,
            None => self.allocate(Counted::Service, w).ok_or_else(|| exhausted("service", self.capacity.services))?,
        };
        let old_list = old.map(|o| o.backends.as_slice()).unwrap_or_default();
        let mut next_seq = old_list.iter().map(|b| b.seq).max().unwrap_or(0) + 1;
        let mut want = Vec::with_capacity(svc.backends.len());
        for b in &svc.backends {
            let reuse = old_list.iter().find(|ob| ob.addr == b.addr && ob.port == b.port);
            let (id, seq) = match reuse {
                Some(ob) => (ob.id, ob.seq),
                None => match self.allocate(Counted::Backend, w) {
                    Some(id) => {
                        next_seq += 1;
                        (id, next_seq - 1)
                    }
                    None => {
                        // Give back what this attempt took.
                        for fresh in want.iter().filter(|n: &&BackendEntry| !old_list.iter().any(|ob| ob.id == n.id)) {
                            self.backend_ids.release(fresh.id);
                        }
                        if old.is_none() {
                            self.svc_ids.release(svc_id);
                        }
                        return Err(exhausted("backend", self.capacity.backends));
                    }
                },
            };
            // An added destination's last_weight is its weight; an edit (replay) keeps the
            // old one when the new weight is 0.
            want.push(BackendEntry { id, addr: b.addr, port: b.port, weight: b.effective_weight(), seq, last_weight: b.effective_weight() });
        }
        for ob in old_list {
            if svc.backends.iter().any(|b| b.addr == ob.addr && b.port == ob.port) {
                continue;
            }
            let ep = SocketAddr::new(ob.addr, ob.port);
            let draining = self.draining.contains_key(&(svc.id, ep));
            if !draining && (svc.id.proto != Protocol::Tcp || !flows.busy(w, ob.id, now)) {
                continue;
            }
            if !draining {
                self.draining.insert((svc.id, ep), now);
                report.draining.push((svc.id, ep));
                if let Err(e) = w.record_drain(ob.id, now) {
                    // Only a restart's timing suffers: the drain would start over.
                    tracing::warn!(error = %crate::error_chain(&e), backend = %ep, "could not pin the drain's start");
                }
            }
            want.push(BackendEntry { weight: 0, ..ob.clone() });
        }
        let ops = dest_ops(&endpoints(old_list), &endpoints(&want));
        let (backends, _) = replay(old_list, &want, &ops, Position::Stateless);
        Ok(ServiceEntry {
            svc_id,
            vip: svc.id.vip,
            port: svc.id.port,
            proto: svc.id.proto.number(),
            scheduler: svc.scheduler,
            flags: if svc.sh_port { SERVICE_F_SH_PORT } else { 0 } | if svc.source_ranges.is_empty() { 0 } else { SERVICE_F_SOURCE_RANGES } | svc.reach.flags(),
            affinity_timeout: svc.affinity_timeout.unwrap_or(0),
            backends,
            source_ranges: svc.source_ranges.iter().map(|c| (c.addr, c.prefix)).collect(),
        })
    }

    /// Zeroes the counters of every id never handed out, a few batched writes per map, so that
    /// allocating one needs no write of its own (at a first sync of 10k services x 10, 110,000
    /// bpf(2) calls fewer). Ids released later are zeroed when reused, as before.
    pub fn zero_unused_counters(&mut self, w: &mut impl Writer) -> Result<(), DataplaneError> {
        for (kind, pool) in [(Counted::Service, &mut self.svc_ids), (Counted::Backend, &mut self.backend_ids)] {
            w.zero_counters(kind, pool.never_used())?;
            pool.zeroed_from_next();
        }
        Ok(())
    }

    fn allocate(&mut self, kind: Counted, w: &mut impl Writer) -> Option<u32> {
        let pool = match kind {
            Counted::Service => &mut self.svc_ids,
            Counted::Backend => &mut self.backend_ids,
        };
        let (id, zeroed) = pool.allocate_checked()?;
        if zeroed {
            return Some(id);
        }
        // A reused id must not inherit its predecessor's counters. Failing that only skews stats.
        if let Err(e) = w.reset_counters(kind, id) {
            tracing::warn!(error = %crate::error_chain(&e), ?kind, id, "could not zero the counters of a reused id");
        }
        Some(id)
    }

    /// After a failed write: ids allocated for `new` that `old` does not hold go back.
    fn release_unused(&mut self, old: Option<&ServiceEntry>, new: &ServiceEntry) {
        for b in &new.backends {
            if !old.is_some_and(|o| o.backends.iter().any(|ob| ob.id == b.id)) {
                self.backend_ids.release(b.id);
            }
        }
        if old.is_none() {
            self.svc_ids.release(new.svc_id);
        }
    }
}

/// Forgets a pinned drain record; failing that leaves a stale record, which only matters if the
/// id is drained again after a restart (its drain would count from the old start).
fn forget_drain(w: &mut impl Writer, id: u32) {
    if let Err(e) = w.forget_drain(id) {
        tracing::warn!(error = %crate::error_chain(&e), id, "could not remove a drain record");
    }
}
