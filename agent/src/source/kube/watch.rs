//! The API side of the Kubernetes source: reflectors on Services, EndpointSlices and this
//! node's Node object. They only fill stores and mark "changed"; the daemon's loop debounces,
//! translates a snapshot of the stores, and applies it.
//!
//! Outages never flush: a reflector's store keeps its last complete list while the watch is
//! down, and a relist (410 Gone, or a restart of the watch) replaces the store atomically
//! only once the new list is complete. Until every store has its first list, nothing is
//! applied, so a restarted agent keeps the pinned dataplane of the previous one meanwhile.
use std::{
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
    runtime::{reflector, reflector::Store, watcher, WatchStreamExt as _},
    Api, Client, Config, Resource,
};
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    incremental::Translator,
    node_ports::NodePortAddresses,
    translate::{translate, Node, Warning},
};
use crate::{metrics::METRICS, model::Model};

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

/// "Something changed since the last snapshot", and since when (for the sync latency).
#[derive(Default)]
struct Changes {
    notify: Notify,
    pending_since: Mutex<Option<Instant>>,
}

impl Changes {
    fn mark(&self) {
        if let Ok(mut since) = self.pending_since.lock() {
            since.get_or_insert_with(Instant::now);
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Option<Instant> {
        self.pending_since.lock().ok().and_then(|mut s| s.take())
    }

    fn peek(&self) -> Option<Instant> {
        self.pending_since.lock().ok().and_then(|s| *s)
    }
}

/// One snapshot of the stores, translated.
pub struct Snapshot {
    pub model: Model,
    pub warnings: Vec<Warning>,
    /// When the oldest change in this snapshot was received (None: nothing pending).
    pub pending_since: Option<Instant>,
    pub node_found: bool,
    /// Health check node ports and what they report.
    pub health: std::collections::BTreeMap<u16, super::health::HealthCheck>,
}

/// The node's interface addresses (those of xvs's IPVS dummy link left out), read when needed.
pub type LocalAddresses = Arc<dyn Fn() -> Vec<IpAddr> + Send + Sync>;

pub struct KubeSource {
    services: Store<KubeService>,
    slices: Store<EndpointSlice>,
    nodes: Store<KubeNode>,
    node_name: String,
    node_ports: NodePortAddresses,
    local: LocalAddresses,
    /// The interface addresses the last snapshot used.
    last_local: Mutex<Vec<IpAddr>>,
    changes: Arc<Changes>,
    translator: Mutex<Translator>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Starts the three watchers (they list, then watch, and retry with backoff forever).
    pub fn start(client: Client, node_name: String, node_ports: NodePortAddresses, local: LocalAddresses) -> Self {
        let changes = Arc::new(Changes::default());
        let (services, w_services) = reflector::store();
        let (slices, w_slices) = reflector::store();
        let (nodes, w_nodes) = reflector::store();
        let node_filter = format!("metadata.name={node_name}");
        let tasks = vec![
            spawn_reflector(Api::<KubeService>::all(client.clone()), watcher::Config::default(), w_services, Watched::Services, changes.clone()),
            spawn_reflector(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default(), w_slices, Watched::EndpointSlices, changes.clone()),
            spawn_reflector(Api::<KubeNode>::all(client), watcher::Config::default().fields(&node_filter), w_nodes, Watched::Node, changes.clone()),
        ];
        Self { services, slices, nodes, node_name, node_ports, local, last_local: Mutex::default(), changes, translator: Mutex::default(), tasks }
    }

    /// Waits until every watcher has its first complete list.
    pub async fn ready(&self) -> Result<(), KubeError> {
        self.services.wait_until_ready().await.map_err(|_| KubeError::WatcherGone("services"))?;
        self.slices.wait_until_ready().await.map_err(|_| KubeError::WatcherGone("endpointslices"))?;
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

    /// Whether the node's interface addresses changed since the last snapshot (NodePorts move
    /// with them); never when they are not used.
    pub fn local_addresses_changed(&self) -> bool {
        if !self.node_ports.needs_local() {
            return false;
        }
        let now = (self.local)();
        self.last_local.lock().map(|last| *last != now).unwrap_or(false)
    }

    /// Translates what the stores hold now; clears the pending mark first, so a change that
    /// lands while this snapshot is being applied is seen by the next one.
    pub fn snapshot(&self) -> Snapshot {
        let pending_since = self.changes.take();
        // Stores are hash maps: Services in namespace/name order, so warnings and the winner of
        // a VIP claimed twice do not change from one snapshot to the next (slices are ordered
        // per Service by the translation).
        let services = sorted(self.services.state());
        let slices = self.slices.state();
        let own = self.nodes.state().into_iter().find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()));
        let local = if self.node_ports.needs_local() { (self.local)() } else { Vec::new() };
        let addresses = self.node_ports.select(&local, &own.as_deref().map(internal_ips).unwrap_or_default());
        if let Ok(mut last) = self.last_local.lock() {
            *last = local;
        }
        let node = Node {
            name: self.node_name.clone(),
            addresses,
            zone: own.as_deref().and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned()),
        };
        let (model, warnings) = match self.translator.lock() {
            Ok(mut t) => t.translate(&services, &slices, &node),
            Err(_) => translate(&services, &slices, &node),
        };
        let health = super::health::health_checks(&services, &slices, &node);
        Snapshot { model, warnings, pending_since, node_found: own.is_some(), health }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn sorted<K: Resource>(mut objects: Vec<Arc<K>>) -> Vec<Arc<K>> {
    objects.sort_by(|a, b| (&a.meta().namespace, &a.meta().name).cmp(&(&b.meta().namespace, &b.meta().name)));
    objects
}

/// The Node label topology hints refer to.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The Node object's InternalIP addresses, in its order (`--nodeport-addresses primary`).
fn internal_ips(node: &KubeNode) -> Vec<IpAddr> {
    node.status.iter().flat_map(|s| s.addresses.iter().flatten()).filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect()
}

fn spawn_reflector<K>(api: Api<K>, config: watcher::Config, writer: reflector::store::Writer<K>, what: Watched, changes: Arc<Changes>) -> JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        let stream = reflector(writer, watcher(api, config)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut relisting = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::Init) => {
                    relisting = true;
                    METRICS.relist(what);
                    tracing::debug!(resource = what.name(), "listing");
                }
                // The store swaps in the new list only here: until then it keeps the old one.
                Ok(watcher::Event::InitDone) => {
                    if relisting {
                        tracing::info!(resource = what.name(), "list complete");
                    }
                    relisting = false;
                    changes.mark();
                }
                Ok(watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => changes.mark(),
                Err(e) => {
                    METRICS.watch_error(what);
                    if let watcher::Error::WatchError(status) = &e
                        && status.code == 410
                    {
                        tracing::info!(resource = what.name(), "resourceVersion expired (410 Gone): relisting; the dataplane keeps its state until the list completes");
                    } else {
                        tracing::warn!(resource = what.name(), "{}; the dataplane keeps its state, retrying", crate::error_chain(&e));
                    }
                }
            }
        }
    })
}
