//! Where `xvs run` takes its desired state from: the services file, or the Kubernetes API.
//! The file hands the daemon a whole `Model`, which it diffs against what it applied; the
//! Kubernetes API a patch of what its watch events changed (a whole model on relists, node
//! changes and the periodic resync).
use std::{
    net::SocketAddr,
    sync::Arc,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use xvs::{
    daemon::{Agent, Patched},
    error_chain,
    health::HealthServer,
    metrics::METRICS,
    model::Model,
    source::{
        file::FileWatch,
        kube::{self, events::EventPublisher, Desired, KubeSource, LocalAddresses, NodePortAddresses},
    },
};

#[derive(Args)]
#[group(id = "desired_state", required = true, multiple = false)]
pub struct SourceArgs {
    /// Services file (TOML; see README "Services file"). Reloaded on SIGHUP and when it changes.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Follow the Kubernetes API with the in-cluster service account (or $KUBECONFIG /
    /// ~/.kube/config outside a pod): Services and EndpointSlices, by kube-proxy's rules.
    #[arg(long)]
    pub kubernetes: bool,
    /// Follow the Kubernetes API of this kubeconfig (implies --kubernetes).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
pub struct NodeArgs {
    /// This node's name, for externalTrafficPolicy/internalTrafficPolicy Local and NodePort
    /// addresses (the DaemonSet passes spec.nodeName). Default: $NODE_NAME, else the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Where NodePorts are served, as kube-proxy's flag: CIDRs (the node's interface addresses
    /// inside them), `primary` (the Node object's first InternalIP of each family), or, unset,
    /// every interface address but loopback, IPv6 link-local and the IPVS dummy link's.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
}

impl NodeArgs {
    fn resolve(&self) -> anyhow::Result<String> {
        match &self.node_name {
            Some(n) => Ok(n.clone()),
            None => hostname().context("no --node-name, no $NODE_NAME and no hostname"),
        }
    }
}

#[derive(Args)]
pub struct KubeArgs {    /// How long a burst of Kubernetes changes is collected before it is applied, in ms.
    #[arg(long, default_value_t = 200)]
    debounce_ms: u64,
    /// Serve Prometheus metrics (sync latency, watch errors, sizes) on this address.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

pub enum Source {
    File(FileWatch),
    Kube {
        source: Box<KubeSource>,
        events: EventPublisher,
        debounce: Duration,
        /// Whether the missing Node object was reported (once, not on every sync).
        node_missing_told: bool,
        /// The health check node ports of Local load balancers.
        health: HealthServer,
    },
}

impl Source {
    /// Reads the first desired state. For Kubernetes this waits for the first complete lists
    /// of Services, EndpointSlices and the Node: applying before then would withdraw services.
    pub async fn open(args: &SourceArgs, node: &NodeArgs, kube_args: &KubeArgs, dummy: &str) -> anyhow::Result<(Self, Model)> {
        if let Some(path) = &args.config {
            let (watch, model) = FileWatch::open(path)?;
            tracing::info!(file = %path.display(), services = model.len(), "services file loaded");
            return Ok((Source::File(watch), model));
        }
        let (source, client, node_name) = start_kube(args, node, dummy).await?;
        let events = EventPublisher::new(client, &node_name);
        let mut source = Source::Kube { source: Box::new(source), events, debounce: Duration::from_millis(kube_args.debounce_ms), node_missing_told: false, health: HealthServer::default() };
        let model = match source.kube_snapshot(true) {
            Some((Desired::Full(model), _)) => model,
            _ => Model::default(),
        };
        Ok((source, model))
    }

    /// The file's model if it changed (always on `force`, SIGHUP). None: nothing to apply.
    pub fn poll_file(&mut self, force: bool) -> Option<Model> {
        let Source::File(watch) = self else { return None };
        match watch.poll(force)? {
            Ok(model) => {
                tracing::info!(file = %watch.path().display(), services = model.len(), "services file loaded");
                Some(model)
            }
            Err(e) => {
                tracing::error!("{}; keeping the last good state", error_chain(&e));
                None
            }
        }
    }

    /// Resolves when the Kubernetes stores changed, once the debounce window from the first
    /// change has passed (never for a file). Cancel-safe: the window is measured from the
    /// pending change, not from when this future was polled.
    pub async fn kube_changed(&self) {
        match self {
            Source::Kube { source, debounce, .. } => {
                let since = source.changed().await;
                tokio::time::sleep_until((since + *debounce).into()).await;
            }
            Source::File(_) => std::future::pending().await,
        }
    }

    /// Translates what changed in the stores (everything, when `everything`), with the time
    /// of the oldest change; logs and publishes the problems not reported yet.
    fn kube_snapshot(&mut self, everything: bool) -> Option<(Desired, Option<Instant>)> {
        let Source::Kube { source, events, node_missing_told, health, .. } = self else { return None };
        let snapshot = if everything { source.snapshot_everything() } else { source.snapshot() };
        if let Some(checks) = snapshot.health {
            health.update(checks);
        }
        if snapshot.node_found {
            *node_missing_told = false;
        } else if !*node_missing_told {
            *node_missing_told = true;
            tracing::warn!("this node's Node object was not found: Local traffic policy matches endpoints by --node-name only, and `--nodeport-addresses primary` finds no address");
        }
        if let Some(warnings) = &snapshot.warnings {
            let fresh = events.fresh(warnings);
            for w in &fresh {
                tracing::warn!(object = %w.object, "skipped: {}", w.cause);
            }
            events.publish(fresh);
            METRICS.warnings(warnings.len());
        }
        Some((snapshot.desired, snapshot.pending_since))
    }

    /// Re-applies the Kubernetes state when the node's interface addresses moved: NodePorts go
    /// with them (kube-proxy re-reads them on every sync).
    pub fn follow_node_addresses(&mut self, agent: &mut Agent) {
        if let Source::Kube { source, .. } = self
            && source.local_addresses_changed()
        {
            tracing::info!("the node's addresses changed: NodePorts follow");
            source.translate_everything_next();
            self.apply_kube(agent, false);
        }
    }

    /// Applies what changed in the Kubernetes state (everything, re-asserted, on `force`) and
    /// records the sync latency.
    pub fn apply_kube(&mut self, agent: &mut Agent, force: bool) {
        let Some((desired, pending)) = self.kube_snapshot(force) else { return };
        let applied = match desired {
            Desired::Full(model) => agent.update(model, force),
            Desired::Patch(patch) => match agent.patch(patch) {
                Patched::Applied => true,
                Patched::Unchanged => false,
                Patched::Refused => {
                    // The translation moved on without the agent: hand it everything next.
                    if let Source::Kube { source, .. } = self {
                        source.translate_everything_next();
                    }
                    false
                }
            },
        };
        self.applied(agent, applied.then_some(pending).flatten());
    }

    /// The periodic resync: everything translated again and compared with what the agent
    /// holds. Any difference the watch events did not account for is applied and reported.
    pub fn resync_kube(&mut self, agent: &mut Agent) {
        let Some((Desired::Full(model), pending)) = self.kube_snapshot(true) else { return };
        let applied = agent.update(model, false);
        if applied && pending.is_none() {
            tracing::warn!("the full translation of the Kubernetes state differed from the event-driven one; applied the full one");
        }
        self.applied(agent, applied.then_some(pending).flatten());
    }

    fn applied(&self, agent: &Agent, pending: Option<Instant>) {
        let model = agent.model();
        METRICS.synced(model.len(), model.backend_count());
        if let Some(since) = pending {
            let latency = since.elapsed();
            METRICS.observe_sync_latency(latency);
            tracing::info!(services = model.len(), latency_ms = latency.as_millis() as u64, "Kubernetes changes applied");
        }
    }
}

/// Connects, starts the watchers and waits for their first complete lists.
async fn start_kube(args: &SourceArgs, node: &NodeArgs, dummy: &str) -> anyhow::Result<(KubeSource, ::kube::Client, String)> {
    let client = kube::client(args.kubeconfig.as_deref()).await?;
    let node_name = node.resolve()?;
    tracing::info!(node = %node_name, "following the Kubernetes API");
    let node_ports = NodePortAddresses::parse(&node.nodeport_addresses).map_err(|e| anyhow::anyhow!("--nodeport-addresses: {e}"))?;
    let dummy = dummy.to_owned();
    let local: LocalAddresses = Arc::new(move || match xvs::ipvs::dummy::DummyLink::existing(&dummy).and_then(|l| l.addresses()) {
        Ok(addresses) => addresses.elsewhere.into_iter().collect(),
        Err(e) => {
            tracing::warn!("reading the node's addresses for NodePorts: {}", error_chain(&e));
            Vec::new()
        }
    });
    let source = KubeSource::start(client.clone(), node_name.clone(), node_ports, local);
    let mut waited = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), source.ready()).await {
            Ok(ready) => break ready?,
            Err(_) => {
                waited += 10;
                tracing::warn!("no complete list from the API server after {waited} s; the dataplane keeps its state meanwhile");
            }
        }
    }
    Ok((source, client, node_name))
}

/// The desired state once, for `xvs verify`: the file, or one complete list of each
/// Kubernetes resource. Returns the model and what it came from.
pub fn load_once(args: &SourceArgs, node: &NodeArgs, dummy: &str) -> anyhow::Result<(Model, String)> {
    if let Some(path) = &args.config {
        return Ok((xvs::source::file::load(path)?, path.display().to_string()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let (source, _, node_name) = tokio::time::timeout(Duration::from_secs(60), start_kube(args, node, dummy)).await.context("no complete list from the API server within 60 s")??;
        let snapshot = source.snapshot_everything();
        for w in snapshot.warnings.iter().flatten() {
            eprintln!("skipped: {w}");
        }
        let Desired::Full(model) = snapshot.desired else { anyhow::bail!("a full snapshot gave a patch") };
        Ok((model, format!("Kubernetes (node {node_name})")))
    })
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|n| !n.is_empty())
}
