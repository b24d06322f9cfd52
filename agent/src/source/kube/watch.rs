//! The API side of the Kubernetes source: reflectors on Services, EndpointSlices and this
//! node's Node object. They fill stores and mark what changed (the Service or slice an event
//! names; everything on a relist or a Node event); the daemon's loop debounces, translates the
//! Services marked (or everything), and applies the result.
//!
//! Outages never flush: a reflector's store keeps its last complete list while the watch is
//! down, and a relist (410 Gone, or a restart of the watch) replaces the store atomically
//! only once the new list is complete. Until every store has its first list, nothing is
//! applied, so a restarted agent keeps the pinned dataplane of the previous one meanwhile.
use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node as KubeNode, Service as KubeService},
    discovery::v1::EndpointSlice,
};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt as _,
    },
    Api, Client, Config, Resource,
};
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    incremental::{fingerprint_of, Fingerprint, Key, Translator},
    node_ports::NodePortAddresses,
    slices::{changed_services, slices_of, SliceIndex},
    store::{Compact, Locked, ObjectStore},
    translate::{Node, Warning},
};
use crate::{
    metrics::METRICS,
    model::{Model, Patch},
};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}")]
    Kubeconfig { path: String, source: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration: not in a pod (no in-cluster service account) and no kubeconfig (pass --kubeconfig or set KUBECONFIG)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("in a pod (KUBERNETES_SERVICE_HOST is set) but the service account cannot be used (its token and ca.crt are read from /var/run/secrets/kubernetes.io/serviceaccount)")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("the {0} watcher stopped before its first list completed")]
    WatcherGone(&'static str),
}

/// A client from `--kubeconfig`; else, in a pod, the in-cluster service account (as
/// kube-proxy and Cilium's agent do: a kubeconfig the image or the node's root happens to
/// have must not win over the pod's identity); else $KUBECONFIG / ~/.kube/config.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeError::Kubeconfig { path: path.display().to_string(), source };
            let file = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(err)?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Config::incluster().map_err(KubeError::InCluster)?,
        None => Config::infer().await.map_err(KubeError::Infer)?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

/// Which resource a watcher follows (metric label and log field).
#[derive(Clone, Copy, Debug)]
pub enum Watched {
    Services,
    EndpointSlices,
    Node,
}

impl Watched {
    pub const ALL: [Watched; 3] = [Watched::Services, Watched::EndpointSlices, Watched::Node];

    pub fn name(self) -> &'static str {
        match self {
            Watched::Services => "services",
            Watched::EndpointSlices => "endpointslices",
            Watched::Node => "node",
        }
    }
}

/// What a watch event says changed.
#[derive(Clone, Debug)]
enum Mark {
    /// A relist or the Node: everything is translated again.
    Everything,
    Service(Key),
    Slice(Key),
}

/// What changed since the last snapshot, and since when (for the sync latency).
#[derive(Default)]
struct Pending {
    since: Option<Instant>,
    everything: bool,
    services: BTreeSet<Key>,
    slices: BTreeSet<Key>,
}

#[derive(Default)]
struct Changes {
    notify: Notify,
    pending: Mutex<Pending>,
}

impl Changes {
    fn mark(&self, mark: Mark) {
        if let Ok(mut p) = self.pending.lock() {
            p.since.get_or_insert_with(Instant::now);
            match mark {
                Mark::Everything => p.everything = true,
                Mark::Service(key) => {
                    p.services.insert(key);
                }
                Mark::Slice(key) => {
                    p.slices.insert(key);
                }
            }
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Pending {
        self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_else(|_| Pending { everything: true, ..Pending::default() })
    }

    fn peek(&self) -> Option<Instant> {
        self.pending.lock().ok().and_then(|p| p.since)
    }
}

/// What a snapshot hands the agent.
pub enum Desired {
    /// Everything, translated (first sync, relist, node change, resync, SIGHUP).
    Full(Model),
    /// Only the virtual services the watch events changed.
    Patch(Patch),
}

/// One snapshot of the stores, translated.
pub struct Snapshot {
    pub desired: Desired,
    /// Every problem known (not only this snapshot's); None: the same as the last snapshot's.
    pub warnings: Option<Vec<Warning>>,
    /// When the oldest change in this snapshot was received (None: nothing pending).
    pub pending_since: Option<Instant>,
    pub node_found: bool,
    /// Health check node ports and what they report; None: unchanged.
    pub health: Option<std::collections::BTreeMap<u16, super::health::HealthCheck>>,
}

/// The node's interface addresses (those of xvs's IPVS dummy link left out), read when needed.
pub type LocalAddresses = Arc<dyn Fn() -> Vec<IpAddr> + Send + Sync>;

/// What the snapshots remember between them.
#[derive(Default)]
struct Translated {
    translator: Translator,
    slices: SliceIndex,
    /// The interface addresses the last full snapshot used.
    local: Vec<IpAddr>,
    node_found: bool,
    /// The Services the health check ports report on.
    health_checked: BTreeSet<Key>,
}

pub struct KubeSource {
    services: ObjectStore,
    slices: ObjectStore,
    nodes: Store<KubeNode>,
    node_name: String,
    node_ports: NodePortAddresses,
    local: LocalAddresses,
    changes: Arc<Changes>,
    translated: Mutex<Translated>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Starts the three watchers (they list, then watch, and retry with backoff forever).
    pub fn start(client: Client, node_name: String, node_ports: NodePortAddresses, local: LocalAddresses) -> Self {
        let changes = Arc::new(Changes::default());
        let (services, slices) = (ObjectStore::default(), ObjectStore::default());
        let (nodes, w_nodes) = reflector::store();
        let node_filter = format!("metadata.name={node_name}");
        let tasks = vec![
            spawn_watcher::<KubeService>(Api::all(client.clone()), services.clone(), Watched::Services, changes.clone(), Mark::Service),
            spawn_watcher::<EndpointSlice>(Api::all(client.clone()), slices.clone(), Watched::EndpointSlices, changes.clone(), Mark::Slice),
            spawn_node_reflector(Api::<KubeNode>::all(client), watcher::Config::default().fields(&node_filter), w_nodes, changes.clone()),
        ];
        Self { services, slices, nodes, node_name, node_ports, local, changes, translated: Mutex::default(), tasks }
    }

    /// Waits until every watcher has its first complete list.
    pub async fn ready(&self) -> Result<(), KubeError> {
        self.services.ready().await.map_err(|_| KubeError::WatcherGone("services"))?;
        self.slices.ready().await.map_err(|_| KubeError::WatcherGone("endpointslices"))?;
        self.nodes.wait_until_ready().await.map_err(|_| KubeError::WatcherGone("node"))?;
        Ok(())
    }

    /// Resolves when a store changed since the last snapshot (at once if one already did),
    /// with the time of the oldest such change. Cancel-safe: the pending mark stays until a
    /// snapshot takes it, so a caller that drops this future (a `select!` taking another
    /// branch) loses nothing.
    pub async fn changed(&self) -> Instant {
        loop {
            if let Some(since) = self.changes.peek() {
                return since;
            }
            // A mark between the check and this wait leaves a permit: no change is missed.
            self.changes.notify.notified().await;
        }
    }

    fn translated(&self) -> std::sync::MutexGuard<'_, Translated> {
        self.translated.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the node's interface addresses changed since the last snapshot (NodePorts move
    /// with them); never when they are not used.
    pub fn local_addresses_changed(&self) -> bool {
        if !self.node_ports.needs_local() {
            return false;
        }
        let now = (self.local)();
        self.translated().local != now
    }

    /// The next snapshot translates everything (the node's addresses moved, or the agent
    /// refused a patch).
    pub fn translate_everything_next(&self) {
        self.changes.mark(Mark::Everything);
    }

    /// Translates what changed since the last snapshot: only the Services the watch events
    /// named, unless something calls for everything (a relist, the Node, the first snapshot).
    /// Clears the pending mark first, so a change that lands while this snapshot is being
    /// applied is seen by the next one.
    pub fn snapshot(&self) -> Snapshot {
        let pending = self.changes.take();
        if pending.everything {
            return self.translate_all(pending.since);
        }
        let mut guard = self.translated();
        let translated = &mut *guard;
        let (services, slices) = (self.services.lock(), self.slices.lock());
        let owner = |k: &Key| slices.owner(k);
        let changed = changed_services(&mut translated.slices, pending.services, pending.slices, owner, |k| services.decode::<KubeService>(k), |k| slices.decode::<EndpointSlice>(k));
        // A Service that has or had a health check port: the ports are counted again.
        let health_touched = changed.iter().any(|(key, _)| translated.health_checked.contains(key) || services.get(key).is_some_and(|s| s.health_checked));
        let Some(patch) = translated.translator.patch(changed) else {
            drop((services, slices, guard));
            return self.translate_all(pending.since);
        };
        let health = health_touched.then(|| {
            let node = translated.translator.node().cloned().unwrap_or_default();
            let health = health_checks(&services, &slices, &translated.slices, &node);
            translated.health_checked = health.values().map(|h| (h.namespace.clone(), h.name.clone())).collect();
            health
        });
        Snapshot { desired: Desired::Patch(patch), warnings: translated.translator.warnings_if_changed(), pending_since: pending.since, node_found: translated.node_found, health }
    }

    /// Translates everything the stores hold now (reusing unchanged Services' parts).
    pub fn snapshot_everything(&self) -> Snapshot {
        let pending = self.changes.take();
        self.translate_all(pending.since)
    }

    fn translate_all(&self, pending_since: Option<Instant>) -> Snapshot {
        let own = self.nodes.state().into_iter().find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()));
        let local = if self.node_ports.needs_local() { (self.local)() } else { Vec::new() };
        let addresses = self.node_ports.select(&local, &own.as_deref().map(internal_ips).unwrap_or_default());
        let node = Node {
            name: self.node_name.clone(),
            addresses,
            zone: own.as_deref().and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned()),
        };
        let node_found = own.is_some();
        let mut guard = self.translated();
        let t = &mut *guard;
        let (services, slices) = (self.services.lock(), self.slices.lock());
        t.local = local;
        t.node_found = node_found;
        t.slices = SliceIndex::build(slices.iter().map(|(k, s)| (k.clone(), s.owner.as_deref())));
        let health = health_checks(&services, &slices, &t.slices, &node);
        t.health_checked = health.values().map(|h| (h.namespace.clone(), h.name.clone())).collect();
        // In namespace/name order, so that warnings and the winner of a VIP claimed twice do
        // not depend on the stores' hash order.
        let mut keys: Vec<&Key> = services.iter().map(|(k, _)| k).collect();
        keys.sort();
        let index = &t.slices;
        let owner = |k: &Key| slices.owner(k);
        let print = |k: &Key| -> Option<Fingerprint> {
            // The same slices `load` decodes, read without decoding.
            let theirs = slices_of(index, k, owner, |s| Some((s.clone(), slices.get(s)?)));
            let versions = std::iter::once((k, services.get(k)?)).chain(theirs.iter().map(|(s, stored)| (s, *stored)));
            fingerprint_of(versions.map(|(key, stored)| Some((key.1.as_str(), stored.rv.as_deref()?))))
        };
        let load = |k: &Key| Some((services.decode::<KubeService>(k)?, slices_of(index, k, owner, |s| slices.decode::<EndpointSlice>(s))));
        let (model, warnings) = t.translator.translate_from(keys.into_iter().cloned(), print, load, &node);
        Snapshot { desired: Desired::Full(model), warnings: Some(warnings), pending_since, node_found, health: Some(health) }
    }
}

/// The health check ports, from the Services that have one (decoded with their slices).
fn health_checks(services: &Locked<'_>, slices: &Locked<'_>, index: &SliceIndex, node: &Node) -> std::collections::BTreeMap<u16, super::health::HealthCheck> {
    let mut keys: Vec<&Key> = services.iter().filter(|(_, s)| s.health_checked).map(|(k, _)| k).collect();
    keys.sort();
    let checked: Vec<KubeService> = keys.iter().filter_map(|k| services.decode(k)).collect();
    let theirs: Vec<EndpointSlice> = keys.iter().flat_map(|k| index.slices_of(k).collect::<Vec<_>>()).filter_map(|k| slices.decode(&k)).collect();
    super::health::health_checks(&checked, &theirs, node)
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The Node label topology hints refer to.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The Node object's InternalIP addresses, in its order (`--nodeport-addresses primary`).
fn internal_ips(node: &KubeNode) -> Vec<IpAddr> {
    node.status.iter().flat_map(|s| s.addresses.iter().flatten()).filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect()
}

/// Follows Services or EndpointSlices into their compact store; each event marks the object
/// it changed, a completed (re)list everything.
fn spawn_watcher<K>(api: Api<K>, store: ObjectStore, what: Watched, changes: Arc<Changes>, mark: fn(Key) -> Mark) -> JoinHandle<()>
where
    K: Compact + Resource,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    let done = matches!(event, watcher::Event::InitDone);
                    observe(what, &event);
                    match store.apply(event) {
                        Some(key) => changes.mark(mark(key)),
                        None if done => changes.mark(Mark::Everything),
                        None => {}
                    }
                }
                Err(e) => watch_error(what, &e),
            }
        }
    })
}

/// Follows this node's Node object (one object: kept whole); any change is a full sync.
fn spawn_node_reflector(api: Api<KubeNode>, config: watcher::Config, writer: reflector::store::Writer<KubeNode>, changes: Arc<Changes>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    observe(Watched::Node, &event);
                    if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                        changes.mark(Mark::Everything);
                    }
                }
                Err(e) => watch_error(Watched::Node, &e),
            }
        }
    })
}

/// Relists are counted and logged.
fn observe<K>(what: Watched, event: &watcher::Event<K>) {
    match event {
        watcher::Event::Init => {
            METRICS.relist(what);
            tracing::debug!(resource = what.name(), "listing");
        }
        // The store swaps in the new list only here: until then it keeps the old one.
        watcher::Event::InitDone => tracing::info!(resource = what.name(), "list complete"),
        _ => {}
    }
}

fn watch_error(what: Watched, e: &watcher::Error) {
    METRICS.watch_error(what);
    if let watcher::Error::WatchError(status) = e
        && status.code == 410
    {
        tracing::info!(resource = what.name(), "resourceVersion expired (410 Gone): relisting; the dataplane keeps its state until the list completes");
    } else {
        tracing::warn!(resource = what.name(), "{}; the dataplane keeps its state, retrying", crate::error_chain(e));
    }
}
