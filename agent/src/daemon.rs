//! The agent's work between signals: apply the services file, keep the connection table clean,
//! end drains, and repair drift. The binary owns the event loop (cli/run.rs); this owns state.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use crate::{
    dataplane::{Dataplane, DataplaneError},
    error_chain,
    model::{Model, ServiceId},
    source::file,
    sync::{flows, monotonic_secs, verify, LiveState, Reconciler, Writer},
};

/// What identifies one version of the services file on disk, to notice edits and replacements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

pub fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp { modified: m.modified().ok(), len: m.len(), inode: m.ino() })
}

pub struct Agent {
    pub dataplane: Dataplane,
    config: PathBuf,
    stamp: Option<FileStamp>,
    /// The last valid model: what the dataplane is kept equal to.
    model: Model,
    reconciler: Reconciler,
}

impl Agent {
    /// Adopts whatever a previous agent left in the (pinned) maps, then applies `model`.
    pub fn start(dataplane: Dataplane, config: PathBuf, model: Model, drain_timeout: u32) -> Result<Self, DataplaneError> {
        let live = LiveState::read(&dataplane.maps)?;
        let adopted = live.services.len();
        let reconciler = Reconciler::adopt(&live, drain_timeout);
        if adopted > 0 {
            tracing::info!(services = adopted, backends = live.backends.len(), "adopted the pinned dataplane of a previous agent");
        }
        let stamp = stamp(&config);
        let mut agent = Self { dataplane, config, stamp, model, reconciler };
        agent.apply();
        Ok(agent)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Re-reads the services file if it changed on disk (or always, when `force`: SIGHUP).
    /// An invalid file is reported and ignored: the dataplane keeps the last good state.
    pub fn reload(&mut self, force: bool) {
        let now_stamp = stamp(&self.config);
        if !force && now_stamp == self.stamp {
            return;
        }
        self.stamp = now_stamp;
        match file::load(&self.config) {
            Ok(model) => {
                if model == self.model && !force {
                    return;
                }
                tracing::info!(file = %self.config.display(), services = model.len(), "services file loaded");
                self.model = model;
                self.apply();
            }
            Err(e) => tracing::error!(
                "{}; keeping the last good state ({} services)",
                error_chain(&e),
                self.model.len()
            ),
        }
    }

    fn apply(&mut self) {
        let (report, errors) = self.reconciler.sync(&self.model, &mut self.dataplane.maps, monotonic_secs());
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

    /// Removes dead flows and finishes drains whose backends have no flow left.
    pub fn tend_flows(&mut self) -> Result<(), DataplaneError> {
        let now = monotonic_secs();
        let scan = flows::scan(&self.dataplane.maps, now)?;
        let removed = flows::collect_garbage(&mut self.dataplane.maps, &scan, now)?;
        if removed > 0 {
            tracing::debug!(entries = removed, "expired flows removed");
        }
        let (done, errors) = self.reconciler.finish_drains(&scan.per_backend, &mut self.dataplane.maps, now);
        for (svc, backend) in done {
            tracing::info!(service = %svc, %backend, "backend drained and removed");
        }
        for e in &errors {
            tracing::error!("{}", error_chain(e));
        }
        Ok(())
    }

    /// Compares the maps with the model and rewrites what someone else changed.
    pub fn repair_drift(&mut self) -> Result<usize, DataplaneError> {
        let live = LiveState::read(&self.dataplane.maps)?;
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
                if let Err(e) = Writer::remove_service(&mut self.dataplane.maps, &entry) {
                    tracing::error!("{}", error_chain(&e));
                }
            }
            if let Some(id) = drift_service(d) {
                dirty.insert(id);
            }
        }
        self.reconciler.invalidate(dirty);
        self.apply();
        Ok(drift.len())
    }
}

fn drift_service(d: &verify::Drift) -> Option<ServiceId> {
    use verify::Drift::*;
    match d {
        MissingService(s) | Setting { service: s, .. } | MissingBackend { service: s, .. } | ExtraBackend { service: s, .. } | Weight { service: s, .. } | Table { service: s, .. } => Some(*s),
        ExtraService(_) | UnreadableService(_) => None,
    }
}
