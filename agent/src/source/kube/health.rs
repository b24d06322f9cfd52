//! kube-proxy's health check node ports (pkg/proxy/healthcheck): for every LoadBalancer
//! Service with `externalTrafficPolicy: Local` and a `healthCheckNodePort`, how many of its
//! endpoints are ready on this node (distinct addresses over all its slices, as kube-proxy's
//! `LocalReadyEndpoints` counts them). Cloud load balancers probe that port and send traffic
//! only to nodes that answer 200.
use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use k8s_openapi::api::{core::v1::Service as KubeService, discovery::v1::EndpointSlice};

use super::translate::{Node, SERVICE_NAME_LABEL};

/// One health check port's subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// Health check ports and what they report. A port claimed by two Services goes to the first
/// (the API server does not allocate one twice). Runs on every snapshot: with no such Service
/// it costs one pass over the Services; with some, one pass over the slices, looking only
/// theirs up.
pub fn health_checks(services: &[impl Borrow<KubeService>], slices: &[impl Borrow<EndpointSlice>], node: &Node) -> BTreeMap<u16, HealthCheck> {
    // (namespace, name) -> (port, this node's ready endpoint addresses)
    let mut wanted: HashMap<(&str, &str), (u16, BTreeSet<&str>)> = HashMap::new();
    let mut ports = BTreeMap::new();
    for svc in services.iter().map(Borrow::borrow) {
        let Some(spec) = &svc.spec else { continue };
        let Some(port) = spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()).filter(|&p| p != 0) else { continue };
        if spec.external_traffic_policy.as_deref() != Some("Local") || spec.type_.as_deref() != Some("LoadBalancer") {
            continue;
        }
        let key = (svc.metadata.namespace.as_deref().unwrap_or(""), svc.metadata.name.as_deref().unwrap_or(""));
        if ports.insert(port, key).is_none() {
            wanted.insert(key, (port, BTreeSet::new()));
        }
    }
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    for slice in slices.iter().map(Borrow::borrow).filter(|s| s.address_type == "IPv4" || s.address_type == "IPv6") {
        let Some(name) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
        let Some((_, ready_here)) = wanted.get_mut(&(slice.metadata.namespace.as_deref().unwrap_or(""), name.as_str())) else { continue };
        let here = slice
            .endpoints
            .iter()
            .flatten()
            .filter(|ep| !node.name.is_empty() && ep.node_name.as_deref() == Some(node.name.as_str()))
            .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .filter_map(|ep| ep.addresses.first().map(String::as_str));
        ready_here.extend(here);
    }
    wanted
        .into_iter()
        .map(|((namespace, name), (port, ready_here))| {
            (port, HealthCheck { namespace: namespace.to_owned(), name: name.to_owned(), local_endpoints: ready_here.len() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn local_load_balancers_report_this_node_s_ready_endpoints() {
        let svc = |name: &str, ty: &str, policy: &str, port: u16| -> KubeService {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop"},
                "spec": {"type": ty, "clusterIP": "10.96.0.20", "externalTrafficPolicy": policy, "healthCheckNodePort": port,
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}}))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "nodeName": "node-a", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.3"], "nodeName": "node-a", "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.1.4"], "nodeName": "node-a"},
                {"addresses": ["10.244.2.2"], "nodeName": "node-b", "conditions": {"ready": true}}
            ]}))
        .unwrap_or_else(|e| panic!("{e}"));
        let node = Node { name: "node-a".into(), addresses: vec![], zone: None };
        let checks = health_checks(&[svc("web", "LoadBalancer", "Local", 32000), svc("other", "LoadBalancer", "Cluster", 32001), svc("np", "NodePort", "Local", 32002)], &[slice], &node);
        assert_eq!(checks.into_iter().collect::<Vec<_>>(), [(32000, HealthCheck { namespace: "shop".into(), name: "web".into(), local_endpoints: 2 })]);
    }
}
