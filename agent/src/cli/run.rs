//! `xvs run`: the daemon. Loads (or adopts) the pinned datapath, attaches it, applies the
//! desired state (services file or Kubernetes), and keeps the dataplanes equal to it until
//! SIGTERM/SIGINT.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::programs::XdpMode;
use clap::{Args, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use xvs::{
    daemon::{Agent, Ebpf},
    ipvs::mirror::IpvsMirror,
    dataplane::{
        cgroup2_root, detach_socket_lb, resolve_cgroup2, detach_tc_filters, ephemeral_overlap, unpin_all, Attachment, Capacity, DataplaneError, Ingress, LinkEvents, NatSettings,
        ObjectSource, SocketLb, TcLinks,
    },
};

use super::source::{KubeArgs, NodeArgs, Source, SourceArgs};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(super) source: SourceArgs,
    #[command(flatten)]
    pub(super) node: NodeArgs,
    #[command(flatten)]
    pub(super) kube: KubeArgs,
    /// Interface to serve on (repeatable): ingress program for client traffic, TC egress for
    /// reverse NAT of replies.
    #[arg(long = "iface", short = 'i')]
    pub(super) ifaces: Vec<String>,
    /// Ingress program: XDP (fast path) or TC (where XDP cannot run, or the senders use
    /// checksum offload).
    #[arg(long, value_enum, default_value_t = Attach::Xdp)]
    attach: Attach,
    /// How TC programs attach: TCX links (pinned; kernel 6.6+), netlink filters on the clsact
    /// qdisc (older kernels: they outlive the agent without pins), or auto (TCX where the
    /// kernel has it).
    #[arg(long, value_enum, default_value_t = TcAttach::Auto)]
    tc_attach: TcAttach,
    /// XDP mode: native (driver), skb (generic) or auto (the kernel picks).
    #[arg(long, value_enum, default_value_t = Mode::Native)]
    xdp_mode: Mode,
    /// bpffs directory for pinned maps and links (a bpffs is mounted on its parent if needed).
    #[arg(long, default_value = xvs::dataplane::DEFAULT_PIN_DIR)]
    pub(super) pin_dir: PathBuf,
    /// Longest time a removed backend drains (weight 0, established flows only) before it is
    /// deleted even with flows left, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u32,
    /// How often the services file (with --config) is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    watch_interval_ms: u64,
    /// How often dead flows are removed and drains checked, in seconds.
    #[arg(long, default_value_t = 5)]
    flow_interval: u64,
    /// How often the attachments and pins are checked, in seconds. Interfaces created or deleted
    /// are acted on at once anyway (rtnetlink link events); the check also finds pins removed.
    #[arg(long, default_value_t = 1)]
    link_check_interval: u64,
    /// How often the maps are compared with the desired state and drift is repaired, and (with
    /// Kubernetes) everything is translated again as a check on the event-driven sync, in seconds.
    #[arg(long, default_value_t = 60)]
    resync_interval: u64,
    /// Which dataplanes to program: the eBPF datapath, the kernel IPVS mirror, both, or auto
    /// (both where available: eBPF only when the kernel has no IPVS, IPVS only when the eBPF
    /// datapath cannot load or attach).
    #[arg(long, value_enum, default_value_t = DataplaneMode::Auto)]
    dataplane: DataplaneMode,
    /// The dummy interface VIPs are bound to for IPVS (kube-proxy's kube-ipvs0); created if
    /// missing. Virtual services on its addresses are xvs's; others are never touched.
    #[arg(long, default_value = "xvs-ipvs0")]
    ipvs_dummy: String,
    /// Capacity of the eBPF maps: services (ids and per-service counters).
    #[arg(long, default_value_t = xvs_common::MAX_SERVICES)]
    max_services: u32,
    /// Backends of all services together (ids and per-backend counters).
    #[arg(long, default_value_t = xvs_common::MAX_BACKENDS)]
    max_backends: u32,
    /// Selection-table slots of all services together (rr: one per backend, wrr: one cycle,
    /// sh: 256 per service, mh: 4093; a table being replaced briefly needs twice its size).
    #[arg(long, default_value_t = xvs_common::MAX_SLOTS)]
    max_slots: u32,
    /// Connection-table entries (two per flow; LRU beyond that).
    #[arg(long, default_value_t = xvs_common::MAX_FLOWS)]
    max_flows: u32,
    /// The cluster's pod network, one CIDR per family (kube-proxy's --cluster-cidr, comma
    /// separated or repeated): traffic to a cluster IP from outside it is masqueraded.
    #[arg(long, value_delimiter = ',')]
    cluster_cidr: Vec<xvs::model::Cidr>,
    /// Masquerade every flow to a cluster IP (kube-proxy's --masquerade-all).
    #[arg(long)]
    masquerade_all: bool,
    /// The source ports masqueraded flows take, LOW-HIGH; outside the node's ephemeral range
    /// (net.ipv4.ip_local_port_range) so the node's own connections never take the same tuple.
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    snat_ports: std::ops::RangeInclusive<u16>,
    /// Socket-level load balancing for east-west traffic (pods and the node's own processes
    /// connecting to a cluster IP): the connection goes to a backend when the socket connects,
    /// so its packets need no NAT. auto: on where the kernel supports it (cgroup v2, the
    /// hooks load); on: fail when it cannot be; off: detach the hooks.
    #[arg(long, value_enum, default_value_t = SocketLbMode::Auto)]
    socket_lb: SocketLbMode,
    /// The cgroup v2 the socket hooks attach to; it and every cgroup below it are covered. A
    /// cgroup v1 hierarchy's root (a hybrid host's /sys/fs/cgroup) means its unified/ v2.
    /// Default: the cgroup v2 mounted in the agent's mount namespace, which in a pod is the
    /// pod's own: the DaemonSet names the host's (a hostPath of /sys/fs/cgroup).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Translate only sockets of the host's network namespace: pods' connections keep the VIP
    /// and take the packet path (for service meshes whose sidecars redirect by the VIP;
    /// Cilium's bpf-lb-sock-hostns-only).
    #[arg(long)]
    socket_lb_hostns_only: bool,
    /// On SIGTERM/SIGINT remove the pinned maps and links (detaching the datapath, dropping
    /// established flows). Without it the datapath keeps serving until the next agent adopts it.
    #[arg(long)]
    cleanup: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DataplaneMode {
    Ebpf,
    Ipvs,
    Both,
    Auto,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SocketLbMode {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum Attach {
    Xdp,
    Tc,
}

#[derive(Clone, Copy, ValueEnum)]
enum TcAttach {
    Auto,
    Tcx,
    Netlink,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Native,
    Skb,
    Auto,
}

pub fn run(object: &ObjectSource, args: RunArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?.block_on(serve(object, args))
}

async fn serve(object: &ObjectSource, args: RunArgs) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives while the dataplanes are being set up is acted on
    // (with --cleanup) once they are, instead of killing the agent half-way.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let _metrics = match args.kube.metrics_addr {
        Some(addr) => Some(xvs::metrics::serve(addr).await.with_context(|| format!("serving metrics on {addr}"))?),
        None => None,
    };
    // The services file is read before the dataplane is touched: an invalid file at start
    // leaves the pinned state as it is, and the agent exits. With Kubernetes the dataplanes
    // come first (a pinned datapath is adopted as it is; no service changes before the first
    // complete lists): the agent waits for the API server however long it takes, and the
    // kernel BTF the object load parses (~20 MB) is freed before the lists fill the heap.
    let mut opened = None;
    if args.source.config.is_none() {
        opened = Some(open_dataplanes(object, &args)?);
        xvs::daemon::release_freed_memory();
    }
    let (mut source, model) = tokio::select! {
        opened = Source::open(&args.source, &args.node, &args.kube, &args.ipvs_dummy) => opened?,
        _ = term.recv() => return stop(&args, opened.unwrap_or_default()),
        _ = int.recv() => return stop(&args, opened.unwrap_or_default()),
    };
    let (ebpf, ipvs) = match opened {
        Some(opened) => opened,
        None => open_dataplanes(object, &args)?,
    };
    tracing::info!(ebpf = ebpf.is_some(), ipvs = ipvs.is_some(), "dataplanes");
    let mut agent = Agent::start(ebpf, ipvs, model)?;

    let mut watch = tokio::time::interval(Duration::from_millis(args.watch_interval_ms.max(50)));
    let mut flows = tokio::time::interval(Duration::from_secs(args.flow_interval.max(1)));
    // Interfaces re-created are noticed when the kernel says so; pins removed (and interfaces,
    // should events be lost) within a second (an ifindex and a few stat calls per interface).
    let mut links = tokio::time::interval(Duration::from_secs(args.link_check_interval.max(1)));
    let mut events = match agent.ebpf.as_ref().map(|_| LinkEvents::subscribe()) {
        Some(Ok(events)) => Some(events),
        Some(Err(e)) => {
            tracing::warn!("{}; interfaces are checked every {} s instead", xvs::error_chain(&e), args.link_check_interval.max(1));
            None
        }
        None => None,
    };
    let mut resync = tokio::time::interval(Duration::from_secs(args.resync_interval.max(1)));
    resync.tick().await;
    tracing::info!("running");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-reading the desired state and re-applying it");
                if let Some(model) = source.poll_file(true) {
                    agent.update(model, true);
                }
                source.apply_kube(&mut agent, true);
            }
            _ = watch.tick() => {
                if let Some(model) = source.poll_file(false) {
                    agent.update(model, false);
                }
            }
            _ = source.kube_changed() => source.apply_kube(&mut agent, false),
            _ = links.tick() => {
                agent.ensure_attached();
                source.follow_node_addresses(&mut agent);
            }
            () = link_event(&mut events) => agent.ensure_attached(),
            _ = flows.tick() => {
                if let Err(e) = agent.tend_flows() {
                    tracing::error!("{}", xvs::error_chain(&e));
                }
            }
            _ = resync.tick() => {
                source.resync_kube(&mut agent);
                if let Err(e) = agent.repair_drift() {
                    tracing::error!("{}", xvs::error_chain(&e));
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let dataplanes = (agent.ebpf.take(), agent.ipvs.take());
    drop(agent);
    stop(&args, dataplanes)
}

/// The eBPF datapath and the IPVS mirror, as `--dataplane` asks.
fn open_dataplanes(object: &ObjectSource, args: &RunArgs) -> anyhow::Result<(Option<Ebpf>, Option<IpvsMirror>)> {
    let ipvs = match args.dataplane {
        DataplaneMode::Ebpf => None,
        DataplaneMode::Ipvs | DataplaneMode::Both => Some(IpvsMirror::open(&args.ipvs_dummy)?),
        DataplaneMode::Auto => match IpvsMirror::open(&args.ipvs_dummy) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("IPVS mirror off ({}): serving with the eBPF datapath only", xvs::error_chain(&e));
                None
            }
        },
    };
    let ebpf = match args.dataplane {
        DataplaneMode::Ipvs => None,
        DataplaneMode::Ebpf | DataplaneMode::Both => Some(start_ebpf(object, args)?),
        DataplaneMode::Auto => match start_ebpf(object, args) {
            Ok(e) => Some(e),
            // Another agent on the pin directory is no reason to fall back: it is a mistake.
            Err(e) if ipvs.is_some() && !matches!(e.downcast_ref(), Some(DataplaneError::Locked { .. })) => {
                tracing::warn!("eBPF datapath unavailable ({e:#}): serving with kernel IPVS only");
                None
            }
            // IPVS was already reported unavailable: the eBPF error is the one to fix.
            Err(e) => return Err(e.context("the eBPF datapath cannot start (and IPVS is not available to fall back to)")),
        },
    };
    Ok((ebpf, ipvs))
}

/// Stops: the dataplanes keep serving, or with `--cleanup` xvs's state is removed.
fn stop(args: &RunArgs, (ebpf, mut ipvs): (Option<Ebpf>, Option<IpvsMirror>)) -> anyhow::Result<()> {
    if !args.cleanup {
        if ebpf.is_some() {
            tracing::info!(pin_dir = %args.pin_dir.display(), "stopped; the pinned datapath keeps serving until the next agent adopts it");
        }
        if ipvs.is_some() {
            tracing::info!("stopped; xvs's IPVS services stay in the kernel until the next agent adopts them");
        }
        return Ok(());
    }
    if let Some(mirror) = &mut ipvs {
        // An empty desired state: every service xvs owns goes, with its VIP; foreign ones stay.
        let (_, errors) = mirror.sync(&xvs::model::Model::default())?;
        for e in &errors {
            tracing::error!("ipvs cleanup: {}", xvs::error_chain(e));
        }
        tracing::info!(dummy = %args.ipvs_dummy, "stopped; xvs's IPVS services and VIPs removed");
    }
    if ebpf.is_some() {
        drop(ebpf);
        let unmounted = unpin_all(&args.pin_dir)?;
        for iface in detach_tc_filters() {
            tracing::info!(iface, "TC filters removed");
        }
        tracing::info!(pin_dir = %args.pin_dir.display(), "stopped; pinned maps and links removed, datapath detached");
        if let Some(mount) = unmounted {
            tracing::info!(mount = %mount.display(), "unmounted the bpffs xvs had mounted");
        }
    }
    Ok(())
}

/// "LOW-HIGH", both ends included, LOW <= HIGH.
fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (low, high) = text.split_once('-').ok_or_else(|| format!("{text:?}: expected LOW-HIGH, e.g. 61000-65535"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{text:?}: {p:?} is not a port ({e})"));
    let (low, high) = (port(low)?, port(high)?);
    if low == 0 || low > high {
        return Err(format!("{text:?}: the range must run from a port above 0 up to a port no lower"));
    }
    Ok(low..=high)
}

/// The next link event; never, without a subscription.
async fn link_event(events: &mut Option<LinkEvents>) {
    match events {
        Some(events) => events.changed().await,
        None => std::future::pending().await,
    }
}

/// Loads (or adopts) the pinned datapath and attaches it to every interface.
fn start_ebpf(object: &ObjectSource, args: &RunArgs) -> anyhow::Result<Ebpf> {
    if args.ifaces.is_empty() && args.socket_lb == SocketLbMode::Off {
        anyhow::bail!("the eBPF datapath needs at least one --iface to attach to, or socket-level load balancing (or run with --dataplane ipvs)");
    }
    let ingress = match args.attach {
        Attach::Xdp => Ingress::Xdp(match args.xdp_mode {
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
            Mode::Auto => XdpMode::Default,
        }),
        Attach::Tc => Ingress::Tc,
    };
    let tc = match args.tc_attach {
        TcAttach::Auto => TcLinks::detect(),
        TcAttach::Tcx => TcLinks::Tcx,
        TcAttach::Netlink => TcLinks::Netlink,
    };
    tracing::info!(?tc, "TC programs attach through {}", if tc == TcLinks::Tcx { "TCX links" } else { "netlink filters (no TCX in this kernel)" });
    let attachment = Attachment::claim(&args.pin_dir, ingress, tc, &args.ifaces)?;
    tracing::info!(object = %object.describe(), pin_dir = %args.pin_dir.display(), "loading the datapath");
    let capacity = Capacity { services: args.max_services, backends: args.max_backends, slots: args.max_slots, flows: args.max_flows };
    let mut dataplane = object.load_with(Some(&args.pin_dir), capacity)?;
    if dataplane.maps.capacity != capacity {
        tracing::warn!(pinned = ?dataplane.maps.capacity, requested = ?capacity, "the pinned maps keep their size; `xvs cleanup` (drops flows) to resize");
    }
    let mut cidrs = args.cluster_cidr.clone();
    cidrs.sort_by_key(|c| c.addr.is_ipv6());
    if cidrs.windows(2).any(|w| w[0].addr.is_ipv6() == w[1].addr.is_ipv6()) {
        anyhow::bail!("--cluster-cidr takes one CIDR per family, as kube-proxy's does: {}", args.cluster_cidr.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
    }
    let nat = NatSettings { cluster_cidrs: cidrs.iter().map(|c| (c.addr, c.prefix)).collect(), masquerade_all: args.masquerade_all, ports: args.snat_ports.clone() };
    dataplane.maps.set_nat(&nat)?;
    tracing::info!(cluster_cidr = ?args.cluster_cidr.iter().map(ToString::to_string).collect::<Vec<_>>(), masquerade_all = args.masquerade_all, snat_ports = ?args.snat_ports, "masquerading");
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    if let Some(shared) = ephemeral_overlap(&args.snat_ports, &ephemeral) {
        tracing::warn!(
            "--snat-ports {}-{} shares ports {}-{} with the node's own ephemeral ports (net.ipv4.ip_local_port_range {}): a connection of the node's to a backend could take a tuple a masqueraded flow holds; move one of the ranges, or list the shared ports in net.ipv4.ip_local_reserved_ports",
            args.snat_ports.start(), args.snat_ports.end(), shared.start(), shared.end(), ephemeral.split_whitespace().collect::<Vec<_>>().join("-")
        );
    }
    let socket_lb = socket_lb(&mut dataplane, args)?;
    if args.ifaces.is_empty() && socket_lb.is_none() {
        anyhow::bail!("no --iface and no socket-level load balancing: the eBPF datapath would serve nothing");
    }
    dataplane.maps.set_socket_lb(socket_lb.as_ref())?;
    let mut attachment = attachment.with_socket_lb(socket_lb);
    attachment.attach_all(&mut dataplane)?;
    Ok(Ebpf::adopt(dataplane, attachment, args.drain_timeout)?)
}

/// Where socket-level load balancing attaches, after checking this kernel runs its hooks; None
/// when it is off (its pinned hooks, from an earlier agent, are detached then).
fn socket_lb(dataplane: &mut xvs::dataplane::Dataplane, args: &RunArgs) -> anyhow::Result<Option<SocketLb>> {
    let off = |why: Option<String>| {
        if let Some(why) = why {
            tracing::warn!("socket-level load balancing is off: {why}; pods' and the node's connections to cluster IPs are served only where they cross an --iface (or by IPVS)");
        }
        let detached = detach_socket_lb(&args.pin_dir);
        if detached > 0 {
            tracing::info!(detached, "socket hooks of an earlier agent detached");
        }
        Ok(None)
    };
    if args.socket_lb == SocketLbMode::Off {
        return off(None);
    }
    let required = args.socket_lb == SocketLbMode::On;
    let cgroup = match &args.cgroup_root {
        Some(path) => resolve_cgroup2(path).map(Some),
        None => Ok(cgroup2_root()),
    };
    let cgroup = match cgroup {
        Ok(Some(cgroup)) => cgroup,
        Ok(None) if required => anyhow::bail!("--socket-lb on: no cgroup v2 is mounted (mount one, or name it with --cgroup-root)"),
        Ok(None) => return off(Some("no cgroup v2 is mounted".into())),
        Err(e) if required => anyhow::bail!("--socket-lb on: --cgroup-root: {e}"),
        Err(e) => return off(Some(format!("--cgroup-root: {e}"))),
    };
    if let Err(e) = dataplane.load_socket_lb() {
        if required {
            return Err(anyhow::Error::new(e).context("--socket-lb on: this kernel does not run the socket hooks"));
        }
        return off(Some(format!("this kernel does not run the socket hooks ({})", xvs::error_chain(&e))));
    }
    Ok(Some(SocketLb { cgroup, host_ns_only: args.socket_lb_hostns_only }))
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

    #[test]
    fn snat_ports_are_a_non_empty_range_above_zero() {
        assert_eq!(parse_port_range("61000-65535"), Ok(61000..=65535));
        assert_eq!(parse_port_range(" 7 - 7 "), Ok(7..=7));
        for bad in ["61000", "0-100", "200-100", "1-65536", "a-b", "-5"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        let e = parse_port_range("65535-1").unwrap_err();
        assert!(e.contains("65535-1"), "names the value: {e}");
    }
}
