//! Services + EndpointSlices -> the desired state, following kube-proxy:
//! - one virtual service per (VIP, port, protocol): every clusterIP (dual-stack), externalIPs,
//!   status.loadBalancer ingress IPs, and NodePorts on the node's addresses;
//! - backends from the EndpointSlices labelled with the service's name, in the VIP's family,
//!   port matched by name (the slice carries the resolved targetPort);
//! - ready endpoints are active; serving+terminating ones are used only when no endpoint is
//!   ready, otherwise kept at weight 0 for their established flows; not serving ones are out;
//! - externalTrafficPolicy/internalTrafficPolicy Local keep only this node's endpoints;
//! - sessionAffinity ClientIP -> affinity with timeoutSeconds (default 10800);
//! - headless and ExternalName services are ignored; SCTP is skipped with a warning;
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

use k8s_openapi::api::{
    core::v1::{Service as KubeService, ServicePort},
    discovery::v1::EndpointSlice,
};
use xvs_common::Scheduler;

use crate::model::{Backend, BackendState, Model, Protocol, Service, ServiceId};

pub const SCHEDULER_ANNOTATION: &str = "xvs.io/scheduler";
pub const WEIGHTS_ANNOTATION: &str = "xvs.io/weights";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const DEFAULT_AFFINITY_TIMEOUT: i32 = 10_800;

/// The node this agent programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Addresses NodePorts are served on.
    pub addresses: Vec<IpAddr>,
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

fn name_of(kind: &'static str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectRef {
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
    services: Vec<(ObjectRef, Service)>,
    warnings: Vec<Warning>,
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
    parse_ips(cluster_ips, Scope::Internal, "clusterIP", warnings);
    parse_ips(spec.external_ips.iter().flatten().collect(), Scope::External, "externalIP", warnings);
    let lb: Vec<&String> =
        svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref()).into_iter().flatten().filter_map(|i| i.ip.as_ref()).collect();
    parse_ips(lb, Scope::External, "load-balancer ingress IP", warnings);
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");

    for port in spec.ports.iter().flatten() {
        let proto = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
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
            targets.extend(node.addresses.iter().map(|&ip| (ip, Scope::External, node_port)));
        }
        for (vip, scope, vport) in targets {
            let local = match scope {
                Scope::Internal => internal_local,
                Scope::External => external_local,
            };
            let sel = Selection { v6: vip.is_ipv6(), proto, only_node: local.then_some(node.name.as_str()), weights: &weights };
            let backends = backends(mine, port, &sel, warnings);
            let id = ServiceId { vip, port: vport, proto };
            part.services.push((object.clone(), Service { id, scheduler, affinity_timeout: affinity, sh_port: false, backends }));
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
        Some(other) => {
            warnings.push(Warning {
                object: object.clone(),
                cause: format!("annotation {SCHEDULER_ANNOTATION}={other:?} is not rr, wrr or sh; using rr"),
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
struct Weights(BTreeMap<String, u32>);

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

    fn of_endpoint(&self, pod: Option<&str>, ip: IpAddr) -> u32 {
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

/// The endpoints of one service port in one family, by kube-proxy's readiness rules.
struct Selection<'a> {
    v6: bool,
    proto: Protocol,
    /// externalTrafficPolicy/internalTrafficPolicy Local: only this node's endpoints.
    only_node: Option<&'a str>,
    weights: &'a Weights,
}

fn backends(slices: &[&EndpointSlice], port: &ServicePort, sel: &Selection, warnings: &mut Vec<Warning>) -> Vec<Backend> {
    let Selection { v6, proto, only_node, weights } = *sel;
    let family = if v6 { "IPv6" } else { "IPv4" };
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        let object = name_of("EndpointSlice", &slice.metadata);
        let proto_name = match proto {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        let Some(target) = slice.ports.iter().flatten().find(|p| p.name == port.name && p.protocol.as_deref().unwrap_or("TCP") == proto_name).and_then(|p| p.port) else {
            continue;
        };
        let Ok(target) = u16::try_from(target) else {
            warnings.push(Warning { object, cause: format!("port {target} is out of range; skipped") });
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            if only_node.is_some_and(|n| ep.node_name.as_deref() != Some(n)) {
                continue;
            }
            let c = ep.conditions.as_ref();
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    warnings.push(Warning { object: object.clone(), cause: format!("endpoint address {addr:?} is not an IP address; skipped") });
                    continue;
                };
                let pod = ep.target_ref.as_ref().and_then(|r| r.name.as_deref());
                let b = Backend { addr: ip, port: target, weight: weights.of_endpoint(pod, ip), state: BackendState::Active };
                if is_ready && !is_terminating {
                    ready.push(b);
                } else if serving && is_terminating {
                    terminating.push(b);
                }
            }
        }
    }
    if ready.is_empty() {
        // No ready endpoint: serve from the terminating ones that still serve (kube-proxy, Cilium).
        return dedup(terminating);
    }
    ready.extend(terminating.into_iter().map(|b| Backend { state: BackendState::Terminating, ..b }));
    dedup(ready)
}

/// The same endpoint can appear in two slices during a rollout: keep its first (most useful) form.
fn dedup(mut list: Vec<Backend>) -> Vec<Backend> {
    let mut seen = std::collections::HashSet::new();
    list.retain(|b| seen.insert((b.addr, b.port)));
    list
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
