//! The desired state: what services exist and where their traffic goes. Pure data with one
//! deterministic order (services by family, protocol, address, port; backends by address and
//! port), filled by a source (services file, Kubernetes) and rendered into the dataplane.
mod validate;

use std::{collections::BTreeMap, fmt, net::IpAddr};

mod cidr;

pub use cidr::Cidr;
pub use validate::{ModelError, ModelIssue, MAX_AFFINITY_TIMEOUT, MAX_WEIGHT};
use xvs_common::{Scheduler, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    /// In the IPVS mirror only (like kube-proxy's IPVS mode); see [`Protocol::in_ebpf`].
    Sctp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
            Self::Sctp => IPPROTO_SCTP,
        }
    }

    /// Whether the eBPF datapath serves it. SCTP it does not: NAT that rewrites a port must
    /// recompute SCTP's CRC32c over the whole packet, and multi-homed associations need the
    /// addresses inside INIT chunks translated too (Cilium's datapath refuses port rewriting
    /// for the same reasons). SCTP packets pass the XDP and TC programs untouched, and the
    /// IPVS mirror, which does both, serves them.
    pub const fn in_ebpf(self) -> bool {
        !matches!(self, Self::Sctp)
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            IPPROTO_TCP => Some(Self::Tcp),
            IPPROTO_UDP => Some(Self::Udp),
            IPPROTO_SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    /// As ipvsadm prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

/// A virtual service's identity: what a client connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceId {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl ServiceId {
    /// ipvsadm's listing order: family, protocol, address, port.
    fn sort_key(&self) -> (bool, Protocol, IpAddr, u16) {
        (self.vip.is_ipv6(), self.proto, self.vip, self.port)
    }
}

impl Ord for ServiceId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for ServiceId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `TCP 10.96.0.10:80`, `UDP [fd00::10]:53`.
impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.proto.name(), std::net::SocketAddr::new(self.vip, self.port))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Takes new flows (in proportion to its weight).
    Active,
    /// Going away (Kubernetes: serving + terminating): no new flows, established flows go on.
    Terminating,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// Configured weight; 0 drains like a terminating backend.
    pub weight: u32,
    pub state: BackendState,
}

impl Backend {
    /// The weight the dataplane uses: terminating backends get 0, like kube-proxy's IPVS mode.
    pub const fn effective_weight(&self) -> u32 {
        match self.state {
            BackendState::Active => self.weight,
            BackendState::Terminating => 0,
        }
    }

    pub fn endpoint(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.addr, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: ServiceId,
    pub scheduler: Scheduler,
    /// ClientIP session affinity timeout in seconds (IPVS `persistent N`).
    pub affinity_timeout: Option<u32>,
    /// sh or mh hashes the client port too (IPVS flag `sh-port`, `mh-port`).
    pub sh_port: bool,
    /// Sorted by (address, port), unique.
    pub backends: Vec<Backend>,
    /// Clients allowed to open flows (kube-proxy's `loadBalancerSourceRanges`); empty: all.
    /// Sorted, unique, of the VIP's family.
    pub source_ranges: Vec<Cidr>,
    /// What kind of address the VIP is, which decides who is masqueraded.
    pub reach: Reach,
}

/// What kind of address a VIP is, for masquerading (kube-proxy's rules, see
/// `xvs_common::snat::masquerades`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reach {
    /// A cluster IP: masqueraded from outside `--cluster-cidr`, or with `--masquerade-all`.
    #[default]
    Cluster,
    /// A NodePort, externalIP or LoadBalancer address with `externalTrafficPolicy: Cluster`:
    /// masqueraded, since the backend may be on another node.
    External,
    /// The same with `externalTrafficPolicy: Local`: the client's address is kept.
    ExternalLocal,
}

impl Reach {
    /// Its `SERVICE_F_*` bits.
    pub const fn flags(self) -> u8 {
        match self {
            Self::Cluster => 0,
            Self::External => xvs_common::SERVICE_F_EXTERNAL,
            Self::ExternalLocal => xvs_common::SERVICE_F_EXTERNAL | xvs_common::SERVICE_F_KEEP_CLIENT,
        }
    }

    /// The services file's name for it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::External => "external",
            Self::ExternalLocal => "external-local",
        }
    }
}

/// Changes to a model by service id: the new service, or None for one that goes. What an
/// event-driven source hands over instead of a whole model; in id order, the model's order.
pub type Patch = BTreeMap<ServiceId, Option<Service>>;

/// The whole desired state, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    services: BTreeMap<ServiceId, Service>,
    /// The backends of all services together, kept by `apply` (a count, not a walk, per sync).
    backends: usize,
}

impl Model {
    /// Validates `services` (all problems at once, each with the index of the service it is
    /// about, so a source can point at its line) and puts everything in canonical order.
    pub fn new(services: Vec<Service>) -> Result<Self, Vec<ModelError>> {
        let errors = validate::check(&services);
        if !errors.is_empty() {
            return Err(errors);
        }
        let backends = services.iter().map(|s| s.backends.len()).sum();
        let services = services
            .into_iter()
            .map(|mut s| {
                s.backends.sort_by_key(|b| (b.addr, b.port));
                (s.id, s)
            })
            .collect();
        Ok(Self { services, backends })
    }

    /// Everything wrong with `svc` on its own: a patch is validated service by service.
    pub fn issues(svc: &Service) -> Vec<ModelIssue> {
        let mut issues = Vec::new();
        validate::check_service(svc, &mut |issue| issues.push(issue));
        issues
    }

    /// Applies `patch`, all or nothing: every service in it is validated first (the errors
    /// index the patch in id order). Returns what it replaced: the patch that undoes it.
    pub fn apply(&mut self, patch: Patch) -> Result<Patch, Vec<ModelError>> {
        let mut errors = Vec::new();
        for (index, (id, svc)) in patch.iter().enumerate() {
            let Some(svc) = svc else { continue };
            let mut err = |issue| errors.push(ModelError { index, service: id.to_string(), issue });
            if svc.id != *id {
                err(ModelIssue::PatchedUnder(svc.id));
            }
            validate::check_service(svc, &mut err);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let undo = patch
            .into_iter()
            .map(|(id, svc)| {
                let old = match svc {
                    Some(mut svc) => {
                        svc.backends.sort_by_key(|b| (b.addr, b.port));
                        self.backends += svc.backends.len();
                        self.services.insert(id, svc)
                    }
                    None => self.services.remove(&id),
                };
                self.backends -= old.as_ref().map_or(0, |o| o.backends.len());
                (id, old)
            })
            .collect();
        Ok(undo)
    }

    pub fn services(&self) -> impl ExactSizeIterator<Item = &Service> {
        self.services.values()
    }

    /// The services the eBPF datapath serves (all but SCTP), in the same order.
    pub fn in_ebpf(&self) -> impl Iterator<Item = &Service> {
        self.services.values().filter(|s| s.id.proto.in_ebpf())
    }

    pub fn get(&self, id: &ServiceId) -> Option<&Service> {
        self.services.get(id)
    }

    /// A service the eBPF datapath serves, by id.
    pub fn get_in_ebpf(&self, id: &ServiceId) -> Option<&Service> {
        self.get(id).filter(|s| s.id.proto.in_ebpf())
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// The backends of all services together.
    pub fn backend_count(&self) -> usize {
        self.backends
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}
