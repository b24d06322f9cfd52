//! Services + EndpointSlices -> the desired state, following kube-proxy:
//! - one virtual service per (VIP, port, protocol), in each family the Service has a clusterIP
//!   of (a single-stack Service is programmed in its family only): the clusterIP, externalIPs,
//!   status.loadBalancer ingress IPs (not those with ipMode Proxy), and NodePorts on the node's
//!   addresses (chosen as kube-proxy's `--nodeport-addresses` does, see node_ports.rs), each
//!   address of the other family dropped; an address listed twice (an LB IP
//!   that is also an externalIP) is one virtual service;
//! - backends from the EndpointSlices labelled with the service's name (endpoints.rs:
//!   readiness, traffic policy Local, topology hints);
//! - sessionAffinity ClientIP -> affinity with timeoutSeconds (default 10800);
//! - headless and ExternalName services are ignored; SCTP ports are programmed like TCP and UDP
//!   (the IPVS mirror serves them; the eBPF datapath passes SCTP to the stack);
//! - the scheduler comes from the annotation `xvs.io/scheduler` (rr, wrr, sh; default rr), and
//!   endpoint weights (for wrr and sh) from `xvs.io/weights`.
//!
//! Bad objects never stop the rest: each problem is a warning naming the object, and the
//! object (or just the bad part) is skipped.
use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service as KubeService, discovery::v1::EndpointSlice};
use xvs_common::Scheduler;

use super::endpoints::{backends, Selection};
use crate::model::{Cidr, Model, Protocol, Reach, Service, ServiceId};

pub const SCHEDULER_ANNOTATION: &str = "xvs.io/scheduler";
pub const WEIGHTS_ANNOTATION: &str = "xvs.io/weights";
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const DEFAULT_AFFINITY_TIMEOUT: i32 = 10_800;

/// The node this agent programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Addresses NodePorts are served on.
    pub addresses: Vec<IpAddr>,
    /// The Node's `topology.kubernetes.io/zone` label (topology hints).
    pub zone: Option<String>,
}

/// The Kubernetes object a warning is about: shown as `Service default/web`, and the
/// `regarding` object of the Event the agent publishes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl ObjectRef {
    pub fn api_version(&self) -> &'static str {
        match self.kind {
            "EndpointSlice" => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A problem with one object, which was skipped (wholly or in part).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Warning {
    pub object: ObjectRef,
    pub cause: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.cause)
    }
}

pub(super) fn name_of(kind: &'static str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_else(|| "<unnamed>".into()),
        uid: meta.uid.clone(),
    }
}

/// Which VIPs of a service are "external" for externalTrafficPolicy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Internal,
    External,
}

/// Translates everything; returns the model and the warnings. Takes the objects or shared
/// references to them (the reflector stores hold `Arc`s: no copy of the cluster per sync).
pub fn translate(services: &[impl Borrow<KubeService>], slices: &[impl Borrow<EndpointSlice>], node: &Node) -> (Model, Vec<Warning>) {
    let by_service = slices_by_service(slices);
    let parts: Vec<Part> = services.iter().map(|svc| translate_service(svc.borrow(), slices_of(&by_service, svc.borrow()), node)).collect();
    assemble(parts.iter())
}

/// Slices by the Service they belong to: namespace, then the service-name label. One pass, so
/// a translation is linear in the objects, not services x slices.
pub(super) type SlicesByService<'s> = HashMap<&'s str, HashMap<&'s str, Vec<&'s EndpointSlice>>>;

pub(super) fn slices_by_service(slices: &[impl Borrow<EndpointSlice>]) -> SlicesByService<'_> {
    let mut by_service: SlicesByService<'_> = HashMap::new();
    for slice in slices.iter().map(Borrow::borrow) {
        if let Some(name) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            let namespace = slice.metadata.namespace.as_deref().unwrap_or("");
            by_service.entry(namespace).or_default().entry(name.as_str()).or_default().push(slice);
        }
    }
    // Each Service's slices in name order, whatever order the caller's store had: the first
    // form of an endpoint listed twice, and the order of warnings, stay the same between runs.
    for slices in by_service.values_mut().flat_map(HashMap::values_mut).filter(|s| s.len() > 1) {
        slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    by_service
}

pub(super) fn slices_of<'m, 's>(by_service: &'m SlicesByService<'s>, svc: &KubeService) -> &'m [&'s EndpointSlice] {
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("");
    let name = svc.metadata.name.as_deref().unwrap_or("");
    by_service.get(namespace).and_then(|m| m.get(name)).map_or(&[], Vec::as_slice)
}

/// One Service's share of the desired state: its virtual services and its problems.
#[derive(Clone, Debug, Default)]
pub(super) struct Part {
    pub(super) services: Vec<(ObjectRef, Service)>,
    pub(super) warnings: Vec<Warning>,
}

/// The virtual services of one Service over its slices (`mine`).
pub(super) fn translate_service(svc: &KubeService, mine: &[&EndpointSlice], node: &Node) -> Part {
    let mut part = Part::default();
    let warnings = &mut part.warnings;
    let object = name_of("Service", &svc.metadata);
    let Some(spec) = &svc.spec else {
        warnings.push(Warning { object, cause: "no spec".into() });
        return part;
    };
    if spec.type_.as_deref() == Some("ExternalName") || spec.cluster_ip.as_deref() == Some("None") {
        return part;
    }
    let scheduler = scheduler_of(svc, &object, warnings);
    let weights = Weights::of(svc, &object, warnings);
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let t = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds).unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
        u32::try_from(t).unwrap_or(DEFAULT_AFFINITY_TIMEOUT as u32)
    });
    let mut vips: Vec<(IpAddr, Scope)> = Vec::new();
    let mut parse_ips = |ips: Vec<&String>, scope: Scope, what: &str, warnings: &mut Vec<Warning>| {
        for ip in ips {
            match ip.parse::<IpAddr>() {
                Ok(a) => vips.push((a, scope)),
                Err(_) => warnings.push(Warning { object: object.clone(), cause: format!("{what} {ip:?} is not an IP address; skipped") }),
            }
        }
    };
    let cluster_ips: Vec<&String> = match &spec.cluster_ips {
        Some(list) if !list.is_empty() => list.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    // No clusterIP (yet): nothing to program, as in kube-proxy.
    parse_ips(cluster_ips.into_iter().filter(|ip| !ip.is_empty()).collect(), Scope::Internal, "clusterIP", warnings);
    parse_ips(spec.external_ips.iter().flatten().collect(), Scope::External, "externalIP", warnings);
    // ipMode Proxy: the load balancer proxies to the nodes itself; kube-proxy leaves the IP alone.
    let lb: Vec<&String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref().is_none_or(|m| m == "VIP"))
        .filter_map(|i| i.ip.as_ref())
        .collect();
    let lb_ips: std::collections::HashSet<IpAddr> = lb.iter().filter_map(|ip| ip.parse().ok()).collect();
    parse_ips(lb, Scope::External, "load-balancer ingress IP", warnings);
    let all_ranges: Vec<Cidr> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| match r.trim().parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(e) => {
                warnings.push(Warning { object: object.clone(), cause: format!("loadBalancerSourceRanges: {e}; that range is skipped") });
                None
            }
        })
        .collect();
    // The ranges of an LB IP's family (none of it: every client, as in kube-proxy), and the LB
    // IP itself when a range holds a node address: the node reaches its own LB IP from it.
    let ranges_for = |vip: IpAddr| -> Vec<Cidr> {
        let mut out: Vec<Cidr> = all_ranges.iter().filter(|c| c.addr.is_ipv6() == vip.is_ipv6()).copied().collect();
        if out.iter().any(|c| node.addresses.iter().any(|a| c.contains(a))) {
            out.push(Cidr::new(vip, if vip.is_ipv6() { 128 } else { 32 }));
        }
        out.sort();
        out.dedup();
        out
    };
    // The families the Service lives in are those of its clusterIPs; every other address of
    // another family (externalIPs, LB IPs, node addresses) is dropped, as kube-proxy's
    // per-family proxiers do.
    let has_family = |v6: bool| vips.iter().any(|&(ip, scope)| scope == Scope::Internal && ip.is_ipv6() == v6);
    let (v4, v6) = (has_family(false), has_family(true));
    let in_family = |ip: &IpAddr| if ip.is_ipv6() { v6 } else { v4 };
    vips.retain(|(ip, _)| in_family(ip));
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");

    let mut programmed = std::collections::HashSet::new();
    for port in spec.ports.iter().flatten() {
        let proto = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                warnings.push(Warning { object: object.clone(), cause: format!("port {}: protocol {other} is not supported; skipped", port.port) });
                continue;
            }
        };
        let Ok(svc_port) = u16::try_from(port.port) else {
            warnings.push(Warning { object: object.clone(), cause: format!("port {} is out of range; skipped", port.port) });
            continue;
        };
        let mut targets: Vec<(IpAddr, Scope, u16)> = vips.iter().map(|&(ip, scope)| (ip, scope, svc_port)).collect();
        if let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|&p| p != 0) {
            targets.extend(node.addresses.iter().filter(|ip| in_family(ip)).map(|&ip| (ip, Scope::External, node_port)));
        }
        for (vip, scope, vport) in targets {
            let id = ServiceId { vip, port: vport, proto };
            // The same address listed twice (an LB IP that is also an externalIP): once.
            if !programmed.insert(id) {
                continue;
            }
            let local = match scope {
                Scope::Internal => internal_local,
                Scope::External => external_local,
            };
            let reach = match scope {
                Scope::Internal => Reach::Cluster,
                Scope::External if external_local => Reach::ExternalLocal,
                Scope::External => Reach::External,
            };
            let sel = Selection { v6: vip.is_ipv6(), proto, local, node, weights: &weights };
            let backends = backends(mine, port, &sel, warnings);
            let source_ranges = if lb_ips.contains(&vip) { ranges_for(vip) } else { Vec::new() };
            part.services.push((object.clone(), Service { id, scheduler, affinity_timeout: affinity, sh_port: false, backends, source_ranges, reach }));
        }
    }
    part
}

/// The parts together: a VIP claimed twice goes to the first Service (in namespace/name
/// order), the rest are warned about; what the model refuses is dropped and named.
pub(super) fn assemble<'a>(parts: impl Iterator<Item = &'a Part>) -> (Model, Vec<Warning>) {
    let mut warnings = Vec::new();
    let mut out: BTreeMap<ServiceId, (&ObjectRef, &Service)> = BTreeMap::new();
    for part in parts {
        warnings.extend(part.warnings.iter().cloned());
        for (object, service) in &part.services {
            if let Some((first, _)) = out.get(&service.id) {
                warnings.push(Warning { object: object.clone(), cause: format!("{} is already used by {first}; skipped", service.id) });
                continue;
            }
            out.insert(service.id, (object, service));
        }
    }
    // A slice read for several VIPs of one service reports its problem once.
    let mut seen = std::collections::HashSet::new();
    warnings.retain(|w| seen.insert(w.clone()));
    let (owners, refs): (Vec<&ObjectRef>, Vec<&Service>) = out.into_values().unzip();
    let services = || refs.iter().map(|s| (*s).clone());
    match Model::new(services().collect()) {
        Ok(model) => (model, warnings),
        Err(errors) => {
            // Drop exactly the services the model refuses, keep the rest.
            let bad: Vec<usize> = errors.iter().map(|e| e.index).collect();
            for e in &errors {
                let object = owners.get(e.index).map(|o| (*o).clone()).unwrap_or_else(|| ObjectRef { kind: "Service", namespace: String::new(), name: e.service.clone(), uid: None });
                warnings.push(Warning { object, cause: format!("{}: {}", e.service, e.issue) });
            }
            let kept = services().enumerate().filter(|(i, _)| !bad.contains(i)).map(|(_, s)| s).collect();
            (Model::new(kept).unwrap_or_default(), warnings)
        }
    }
}

fn scheduler_of(svc: &KubeService, object: &ObjectRef, warnings: &mut Vec<Warning>) -> Scheduler {
    match svc.metadata.annotations.as_ref().and_then(|a| a.get(SCHEDULER_ANNOTATION)).map(String::as_str) {
        None | Some("rr") => Scheduler::RoundRobin,
        Some("wrr") => Scheduler::WeightedRoundRobin,
        Some("sh") => Scheduler::SourceHash,
        Some("mh") => Scheduler::MaglevHash,
        Some(other) => {
            warnings.push(Warning {
                object: object.clone(),
                cause: format!("annotation {SCHEDULER_ANNOTATION}={other:?} is not rr, wrr, sh or mh; using rr"),
            });
            Scheduler::RoundRobin
        }
    }
}

/// Endpoint weights from the annotation `xvs.io/weights: "web-0=3,web-1=1,10.244.2.7=2"`: keys are
/// pod names (the endpoint's targetRef) or endpoint addresses; unlisted endpoints weigh 1.
/// A weight is 0..=65535 (0: no new flows, as `ipvsadm -w 0`). Any bad entry voids the whole
/// annotation (all weights 1), so a typo never skews traffic in a half-applied way.
#[derive(Default)]
pub(super) struct Weights(BTreeMap<String, u32>);

impl Weights {
    fn of(svc: &KubeService, object: &ObjectRef, warnings: &mut Vec<Warning>) -> Self {
        let Some(text) = svc.metadata.annotations.as_ref().and_then(|a| a.get(WEIGHTS_ANNOTATION)) else {
            return Self::default();
        };
        match parse_weights(text) {
            Ok(map) => Self(map),
            Err(cause) => {
                warnings.push(Warning {
                    object: object.clone(),
                    cause: format!("annotation {WEIGHTS_ANNOTATION}={text:?}: {cause}; every endpoint weighs 1"),
                });
                Self::default()
            }
        }
    }

    pub(super) fn of_endpoint(&self, pod: Option<&str>, ip: IpAddr) -> u32 {
        pod.and_then(|p| self.0.get(p)).or_else(|| self.0.get(&ip.to_string())).copied().unwrap_or(1)
    }
}

fn parse_weights(text: &str) -> Result<BTreeMap<String, u32>, String> {
    let mut map = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!("{entry:?} is not name=weight"));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(format!("{entry:?} has no pod name or address"));
        }
        let weight = value.parse::<u16>().map_err(|_| format!("weight {value:?} of {key} is not a number in 0..=65535"))?;
        if map.insert(key.to_owned(), u32::from(weight)).is_some() {
            return Err(format!("{key} is listed twice"));
        }
    }
    Ok(map)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
