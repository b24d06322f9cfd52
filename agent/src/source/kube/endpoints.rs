//! The endpoints of one Service port in one family, by kube-proxy's rules
//! (pkg/proxy/endpointslicecache.go and topology.go):
//! - slices of the VIP's address type; their port matched by name (an unnamed Service port is
//!   name "", which the API server writes into the slice) and protocol; a slice port without a
//!   name or number is ignored;
//! - an endpoint is its first address only; one listed twice (slices overlap during a rollout)
//!   counts once, its local form winning;
//! - ready endpoints serve (terminating or not: with publishNotReadyAddresses a terminating pod
//!   stays ready); with none ready, the serving+terminating ones do;
//! - traffic policy Local: only this node's endpoints, ready ones first, else serving+terminating;
//! - policy Cluster follows topology hints: PreferSameNode when every ready endpoint has a node
//!   hint and one names this node, else PreferSameZone when every ready endpoint has a zone hint
//!   and one names this node's zone, else every ready endpoint.
//!
//! One deliberate difference: serving+terminating endpoints that are not used for new flows stay
//! in the set at weight 0 (state Terminating), so their established connections finish there,
//! as IPVS's graceful termination keeps a deleted destination at weight 0.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{core::v1::ServicePort, discovery::v1::EndpointSlice};

use super::translate::{name_of, Node, Warning, Weights};
use crate::model::{Backend, BackendState, Protocol};

/// Which endpoints a VIP may use.
pub(super) struct Selection<'a> {
    pub v6: bool,
    pub proto: Protocol,
    /// Traffic policy Local for this VIP (externalTrafficPolicy or internalTrafficPolicy).
    pub local: bool,
    pub node: &'a Node,
    pub weights: &'a Weights,
}

/// One endpoint as kube-proxy sees it.
struct Endpoint<'s> {
    ip: IpAddr,
    port: u16,
    pod: Option<&'s str>,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    zone_hints: Vec<&'s str>,
    node_hints: Vec<&'s str>,
}

impl Endpoint<'_> {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// Topology mode chosen from the hints of the ready endpoints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    Any,
    SameNode,
    SameZone,
}

pub(super) fn backends(slices: &[&EndpointSlice], port: &ServicePort, sel: &Selection, warnings: &mut Vec<Warning>) -> Vec<Backend> {
    let all = endpoints(slices, port, sel, warnings);
    let usable: Vec<&Endpoint> = if sel.local { local_endpoints(&all) } else { cluster_endpoints(&all, sel.node) };
    let in_use = |e: &Endpoint| usable.iter().any(|u| (u.ip, u.port) == (e.ip, e.port));
    let backend = |e: &Endpoint, state| Backend {
        addr: e.ip,
        port: e.port,
        weight: sel.weights.of_endpoint(e.pod, e.ip),
        state,
    };
    let mut out: Vec<Backend> = usable.iter().map(|e| backend(e, BackendState::Active)).collect();
    // Serving+terminating endpoints in this policy's scope that take no new flows: weight 0.
    out.extend(
        all.iter()
            .filter(|e| e.serving_terminating() && !e.ready && (!sel.local || e.local) && !in_use(e))
            .map(|e| backend(e, BackendState::Terminating)),
    );
    out
}

/// kube-proxy's CategorizeEndpoints, Local half: this node's ready endpoints, else its
/// serving+terminating ones.
fn local_endpoints<'a>(all: &'a [Endpoint<'a>]) -> Vec<&'a Endpoint<'a>> {
    let ready: Vec<&Endpoint> = all.iter().filter(|e| e.local && e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    all.iter().filter(|e| e.local && e.serving_terminating()).collect()
}

/// kube-proxy's CategorizeEndpoints, Cluster half: the ready endpoints the topology allows, else
/// every serving+terminating one.
fn cluster_endpoints<'a>(all: &'a [Endpoint<'a>], node: &Node) -> Vec<&'a Endpoint<'a>> {
    let zone = node.zone.as_deref().unwrap_or("");
    let mode = topology(all, node);
    let ready: Vec<&Endpoint> = all
        .iter()
        .filter(|e| e.ready)
        .filter(|e| match mode {
            Topology::Any => true,
            Topology::SameNode => e.node_hints.contains(&node.name.as_str()),
            Topology::SameZone => e.zone_hints.contains(&zone),
        })
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    all.iter().filter(|e| e.serving_terminating()).collect()
}

/// kube-proxy's topologyModeFromHints (with PreferSameTrafficDistribution on).
fn topology(all: &[Endpoint], node: &Node) -> Topology {
    let ready: Vec<&Endpoint> = all.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    if ready.iter().all(|e| !e.node_hints.is_empty()) && ready.iter().any(|e| e.node_hints.contains(&node.name.as_str())) {
        return Topology::SameNode;
    }
    if let Some(zone) = node.zone.as_deref()
        && ready.iter().all(|e| !e.zone_hints.is_empty())
        && ready.iter().any(|e| e.zone_hints.contains(&zone))
    {
        return Topology::SameZone;
    }
    Topology::Any
}

/// Every endpoint of the port in the family, once each (by address and port; slices in name
/// order, the first form kept unless a later one is local, as kube-proxy does).
fn endpoints<'s>(slices: &[&'s EndpointSlice], port: &ServicePort, sel: &Selection, warnings: &mut Vec<Warning>) -> Vec<Endpoint<'s>> {
    let family = if sel.v6 { "IPv6" } else { "IPv4" };
    let proto_name = sel.proto.name();
    let port_name = port.name.as_deref().unwrap_or("");
    let mut found: BTreeMap<(IpAddr, u16), Endpoint<'s>> = BTreeMap::new();
    let mut order: Vec<(IpAddr, u16)> = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        let object = name_of("EndpointSlice", &slice.metadata);
        let matching = slice.ports.iter().flatten().find(|p| p.name.as_deref() == Some(port_name) && p.protocol.as_deref().unwrap_or("TCP") == proto_name);
        if port_name.is_empty() && slice.ports.iter().flatten().any(|p| p.name.is_none()) {
            warnings.push(Warning { object: object.clone(), cause: "a port has no name (the API server writes \"\" for an unnamed port); ignored, as kube-proxy does".into() });
        }
        let Some(target) = matching.and_then(|p| p.port).filter(|&p| p != 0) else {
            continue;
        };
        let Ok(target) = u16::try_from(target) else {
            warnings.push(Warning { object, cause: format!("port {target} is out of range; skipped") });
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            // kube-proxy uses an endpoint's first address only.
            let Some(addr) = ep.addresses.first() else { continue };
            let Ok(ip) = addr.parse::<IpAddr>() else {
                warnings.push(Warning { object: object.clone(), cause: format!("endpoint address {addr:?} is not an IP address; skipped") });
                continue;
            };
            if ip.is_ipv6() != sel.v6 {
                warnings.push(Warning { object: object.clone(), cause: format!("endpoint address {ip} is not {family}; skipped") });
                continue;
            }
            let c = ep.conditions.as_ref();
            let hints = ep.hints.as_ref();
            let endpoint = Endpoint {
                ip,
                port: target,
                pod: ep.target_ref.as_ref().and_then(|r| r.name.as_deref()),
                ready: c.and_then(|c| c.ready).unwrap_or(true),
                serving: c.and_then(|c| c.serving).unwrap_or(true),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                local: !sel.node.name.is_empty() && ep.node_name.as_deref() == Some(sel.node.name.as_str()),
                zone_hints: hints.and_then(|h| h.for_zones.as_ref()).into_iter().flatten().map(|z| z.name.as_str()).collect(),
                node_hints: hints.and_then(|h| h.for_nodes.as_ref()).into_iter().flatten().map(|n| n.name.as_str()).collect(),
            };
            let key = (ip, target);
            match found.get(&key) {
                None => order.push(key),
                Some(_) if !endpoint.local => continue,
                Some(_) => {}
            }
            found.insert(key, endpoint);
        }
    }
    order.into_iter().filter_map(|k| found.remove(&k)).collect()
}
