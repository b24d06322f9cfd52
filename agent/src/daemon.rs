//! The agent's work between signals: apply the desired state (from the services file or from
//! Kubernetes) to the eBPF dataplane and/or the kernel IPVS mirror, keep the connection table
//! clean, end drains, and repair drift. The binary owns the event loop (cli/run.rs); this owns
//! state.
use std::collections::BTreeSet;

use crate::{
    dataplane::{interface_addresses, Attachment, Dataplane, DataplaneError},
    error_chain,
    ipvs::mirror::IpvsMirror,
    model::{Model, Patch, ServiceId},
    sync::{datapath_secs, fit, flows, monotonic_secs, verify, LiveState, Reconciler, Writer},
};

/// The eBPF side: the loaded (pinned) datapath, where it is attached (with the lock that makes
/// this agent its only writer), and the reconciler that writes its maps.
pub struct Ebpf {
    pub dataplane: Dataplane,
    reconciler: Reconciler,
    attachment: Attachment,
}

impl Ebpf {
    /// Adopts whatever a previous agent left in the (pinned) maps.
    pub fn adopt(mut dataplane: Dataplane, attachment: Attachment, drain_timeout: u32) -> Result<Self, DataplaneError> {
        let live = LiveState::read(&dataplane.maps)?;
        let mut reconciler = Reconciler::adopt(&live, drain_timeout, dataplane.maps.capacity);
        if let Err(e) = reconciler.zero_unused_counters(&mut dataplane.maps) {
            // Each new id's counters are zeroed as it is handed out instead.
            tracing::warn!("zeroing the counters of unused ids: {}", error_chain(&e));
        }
        if !live.services.is_empty() {
            tracing::info!(services = live.services.len(), backends = live.backends.len(), "adopted the pinned dataplane of a previous agent");
        }
        let mut ebpf = Self { dataplane, reconciler, attachment };
        ebpf.follow_interface_addresses();
        Ok(ebpf)
    }

    /// Writes each served interface's masquerade address per family (an interface whose
    /// address changed, or that was re-created with a new index, included).
    fn follow_interface_addresses(&mut self) {
        let addrs = interface_addresses(&self.attachment.ifaces());
        if let Err(e) = self.dataplane.maps.set_nat_addrs(&addrs) {
            tracing::error!("masquerade addresses: {}", error_chain(&e));
        }
    }
}

pub struct Agent {
    pub ebpf: Option<Ebpf>,
    pub ipvs: Option<IpvsMirror>,
    /// The last valid model: what the dataplanes are kept equal to.
    model: Model,
    /// What `model` takes of the maps, kept up to date by patches.
    usage: fit::Usage,
}

/// What became of a patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patched {
    Applied,
    /// Every service in it was already as it says.
    Unchanged,
    /// Invalid, or more than the maps hold: nothing applied, the last good state stays. The
    /// source should hand over a whole model next.
    Refused,
}

impl Agent {
    /// Applies `model` to whichever dataplanes are given; a model the eBPF maps cannot hold is
    /// refused (the pinned state stays as it is).
    pub fn start(ebpf: Option<Ebpf>, ipvs: Option<IpvsMirror>, model: Model) -> Result<Self, fit::OverCapacity> {
        let usage = fit::Usage::of(&model);
        if let Some(ebpf) = &ebpf {
            usage.check(&ebpf.dataplane.maps.capacity)?;
        }
        let mut agent = Self { ebpf, ipvs, model, usage };
        agent.apply();
        // What was adopted is checked as `xvs verify` checks it, and repaired now rather than
        // at the first periodic resync: a map whose pin was removed while no agent ran comes
        // back empty, and its services would not serve until then.
        match agent.repair_drift() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(repaired = n, "the adopted dataplane differed from the desired state; repaired"),
            Err(e) => tracing::error!("checking the adopted dataplane: {}", error_chain(&e)),
        }
        Ok(agent)
    }

    /// Makes `model` the desired state and applies it, unless it is the one already applied
    /// (or always, when `force`: SIGHUP re-asserts the state). Returns whether it applied: a
    /// model the eBPF maps cannot hold is refused whole, and the last good state stays.
    pub fn update(&mut self, model: Model, force: bool) -> bool {
        if model == self.model && !force {
            return false;
        }
        let usage = fit::Usage::of(&model);
        if let Some(ebpf) = &self.ebpf
            && let Err(e) = usage.check(&ebpf.dataplane.maps.capacity)
        {
            tracing::error!("{e}");
            return false;
        }
        self.model = model;
        self.usage = usage;
        self.apply();
        true
    }

    /// Applies what an event-driven source says changed: the model is patched and only those
    /// services are reconciled into the maps, at a cost that does not grow with the model.
    /// (The IPVS mirror, which reads the kernel's whole table to diff, is synced in full.)
    /// A patch that does not validate or that the maps cannot hold is refused whole.
    pub fn patch(&mut self, mut patch: Patch) -> Patched {
        patch.retain(|id, svc| self.model.get(id) != svc.as_ref());
        if patch.is_empty() {
            return Patched::Unchanged;
        }
        let mut usage = self.usage.clone();
        for (id, svc) in &patch {
            if let Some(old) = self.model.get(id) {
                usage.remove(old);
            }
            if let Some(new) = svc {
                usage.add(new);
            }
        }
        if let Some(ebpf) = &self.ebpf
            && let Err(e) = usage.check(&ebpf.dataplane.maps.capacity)
        {
            tracing::error!("{e}");
            return Patched::Refused;
        }
        let changed: Vec<ServiceId> = patch.keys().copied().collect();
        if let Err(errors) = self.model.apply(patch) {
            for e in &errors {
                tracing::error!("refused change: {e}");
            }
            return Patched::Refused;
        }
        self.usage = usage;
        self.apply_to_dataplanes(Some(&changed));
        self.warn_unserved(changed.iter().filter_map(|id| self.model.get(id)));
        Patched::Applied
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    fn apply(&mut self) {
        self.apply_to_dataplanes(None);
        self.warn_unserved(self.model.services());
        release_freed_memory();
    }

    /// What one dataplane alone leaves unserved, for `services` (the model, or a patch's).
    fn warn_unserved<'m>(&self, services: impl Iterator<Item = &'m crate::model::Service>) {
        let (mut unenforced, mut unserved) = (Vec::new(), Vec::new());
        for s in services {
            // IPVS has no source filter (kube-proxy adds ipset and iptables rules for it; xvs
            // leaves the node's firewall alone): with IPVS alone, source ranges are not enforced.
            if self.ebpf.is_none() && self.ipvs.is_some() && !s.source_ranges.is_empty() {
                unenforced.push(s.id.to_string());
            }
            // SCTP is served by the IPVS mirror alone (see `Protocol::in_ebpf`): with the eBPF
            // datapath alone these services are not served at all.
            if self.ipvs.is_none() && !s.id.proto.in_ebpf() {
                unserved.push(s.id.to_string());
            }
        }
        if !unenforced.is_empty() {
            tracing::warn!(services = ?unenforced, "source ranges (loadBalancerSourceRanges) are enforced by the eBPF datapath only: with IPVS alone these services admit every client");
        }
        if !unserved.is_empty() {
            tracing::warn!(services = ?unserved, "SCTP services are served by the IPVS mirror only (--dataplane ipvs or both): the eBPF datapath passes SCTP to the kernel, and these services are not served");
        }
    }

    /// Syncs the dataplanes to the model: every service, or only those `changed` names.
    fn apply_to_dataplanes(&mut self, changed: Option<&[ServiceId]>) {
        if let Some(ebpf) = &mut self.ebpf {
            let now = datapath_secs(&ebpf.dataplane.maps).unwrap_or_else(|e| {
                tracing::warn!("{}; drains are timed by CLOCK_MONOTONIC alone", error_chain(&e));
                monotonic_secs()
            });
            let maps = &mut ebpf.dataplane.maps;
            let (report, errors) = match changed {
                Some(ids) => ebpf.reconciler.sync_changed(&self.model, ids.iter().copied(), maps, now),
                None => ebpf.reconciler.sync(&self.model, maps, now),
            };
            for e in &errors {
                tracing::error!("{}", error_chain(e));
            }
            for (svc, backend) in &report.draining {
                tracing::info!(service = %svc, %backend, "backend draining: no new flows, established flows continue");
            }
            tracing::info!(
                created = report.created,
                updated = report.updated,
                removed = report.removed,
                unchanged = report.unchanged,
                failed = errors.len(),
                "dataplane synced"
            );
        }
        self.sync_ipvs();
    }

    fn sync_ipvs(&mut self) {
        let drains = self.ebpf_drains();
        let Some(mirror) = &mut self.ipvs else { return };
        match mirror.drift_draining(&self.model, &drains) {
            Ok(ops) => log_ipvs(mirror.apply(ops)),
            Err(e) => tracing::error!("ipvs: reading the kernel table failed: {}", error_chain(&e)),
        }
    }

    /// The backends the eBPF side drains: with both dataplanes, IPVS keeps them too, so both
    /// delete them at the same moment and keep one destination order.
    fn ebpf_drains(&self) -> Vec<(crate::model::ServiceId, std::net::SocketAddr)> {
        self.ebpf.as_ref().map(|e| e.reconciler.draining().copied().collect()).unwrap_or_default()
    }

    /// Removes dead flows and finishes drains whose backends have no flow left (eBPF), and
    /// deletes IPVS dests whose connections are gone.
    pub fn tend_flows(&mut self) -> Result<(), DataplaneError> {
        let tended = self.tend_ebpf_flows();
        self.sync_ipvs_quietly();
        tended
    }

    fn tend_ebpf_flows(&mut self) -> Result<(), DataplaneError> {
        let Some(ebpf) = &mut self.ebpf else { return Ok(()) };
        let now = datapath_secs(&ebpf.dataplane.maps)?;
        let scan = flows::scan(&ebpf.dataplane.maps, now)?;
        let removed = flows::collect_garbage(&mut ebpf.dataplane.maps, &scan, now)?;
        if removed > 0 {
            tracing::debug!(entries = removed, "expired flows removed");
        }
        let (done, errors) = ebpf.reconciler.finish_drains(&scan.per_backend, &mut ebpf.dataplane.maps, now);
        for (svc, backend) in done {
            tracing::info!(service = %svc, %backend, "backend drained and removed");
        }
        for e in &errors {
            tracing::error!("{}", error_chain(e));
        }
        Ok(())
    }

    /// Re-attaches the datapath where an interface was re-created or pins were removed, and
    /// keeps each served interface's masquerade addresses current.
    pub fn ensure_attached(&mut self) {
        let Some(ebpf) = &mut self.ebpf else { return };
        for outcome in ebpf.attachment.ensure(&mut ebpf.dataplane) {
            match outcome {
                Ok(done) => tracing::warn!("{done}"),
                Err(e) => tracing::error!("re-attaching the datapath: {}", error_chain(&e)),
            }
        }
        ebpf.follow_interface_addresses();
    }

    /// IPVS drains end when the kernel's counters reach 0: a periodic check finishes them (and
    /// repairs IPVS drift), applying the plan it already read.
    fn sync_ipvs_quietly(&mut self) {
        let drains = self.ebpf_drains();
        let Some(mirror) = &mut self.ipvs else { return };
        match mirror.drift_draining(&self.model, &drains) {
            // Still applied: the record of xvs's services may have news (adopted or forgotten).
            Ok(ops) if ops.is_empty() => log_ipvs_errors(&mirror.apply(ops).1),
            Ok(ops) => log_ipvs(mirror.apply(ops)),
            Err(e) => tracing::error!("ipvs: {}", error_chain(&e)),
        }
    }

    /// Compares the maps with the model and rewrites what someone else changed.
    pub fn repair_drift(&mut self) -> Result<usize, DataplaneError> {
        let Some(ebpf) = &mut self.ebpf else { return Ok(0) };
        let live = LiveState::read(&ebpf.dataplane.maps)?;
        let drift = verify::diff(&self.model, &live);
        if drift.is_empty() {
            return Ok(0);
        }
        let mut dirty = BTreeSet::new();
        for d in &drift {
            tracing::warn!("drift: {d}; repairing");
            if let verify::Drift::ExtraService(id) = d
                && let Some(l) = live.services.get(id)
            {
                let entry = live.entry(l);
                if let Err(e) = Writer::remove_service(&mut ebpf.dataplane.maps, &entry) {
                    tracing::error!("{}", error_chain(&e));
                }
            }
            if let Some(id) = drift_service(d) {
                dirty.insert(id);
            }
        }
        ebpf.reconciler.invalidate(dirty);
        self.apply();
        Ok(drift.len())
    }
}

fn log_ipvs((done, errors): (Vec<crate::ipvs::mirror::Op>, Vec<crate::ipvs::IpvsError>)) {
    for op in &done {
        tracing::info!(op = %op, "ipvs");
    }
    log_ipvs_errors(&errors);
    tracing::info!(changes = done.len(), failed = errors.len(), "ipvs synced");
}

fn log_ipvs_errors(errors: &[crate::ipvs::IpvsError]) {
    for e in errors {
        tracing::error!("ipvs: {}", error_chain(e));
    }
}

/// Parsing a large services file peaks at tens of bytes per byte of TOML, and glibc keeps freed
/// heap in its arenas: hand it back so the daemon's resident size reflects what it holds.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn drift_service(d: &verify::Drift) -> Option<ServiceId> {
    use verify::Drift::*;
    match d {
        MissingService(s) | Setting { service: s, .. } | MissingBackend { service: s, .. } | ExtraBackend { service: s, .. } | Weight { service: s, .. } | Table { service: s, .. } => Some(*s),
        ExtraService(_) | UnreadableService(_) => None,
    }
}
