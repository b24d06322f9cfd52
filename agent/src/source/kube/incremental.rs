//! Translation with memory: a Service whose object and EndpointSlices carry the same
//! resourceVersions as last time (and the node is the same) keeps its translated part, so one
//! changed EndpointSlice costs one Service's translation plus the assembly, not the cluster's.
use std::{borrow::Borrow, collections::HashMap};

use k8s_openapi::api::{core::v1::Service as KubeService, discovery::v1::EndpointSlice};

use super::translate::{assemble, slices_by_service, slices_of, translate_service, Node, Part, Warning};
use crate::model::Model;

/// What a part was translated from: the Service's resourceVersion and its slices' names and
/// resourceVersions. None when an object has no resourceVersion (never cached).
type Fingerprint = Vec<(String, String)>;

fn fingerprint(svc: &KubeService, slices: &[&EndpointSlice]) -> Option<Fingerprint> {
    let entry = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| Some((meta.name.clone()?, meta.resource_version.clone()?));
    std::iter::once(entry(&svc.metadata)).chain(slices.iter().map(|s| entry(&s.metadata))).collect()
}

#[derive(Default)]
pub struct Translator {
    node: Option<Node>,
    parts: HashMap<(String, String), (Fingerprint, Part)>,
}

impl Translator {
    /// The same result as `translate::translate`, reusing the parts of unchanged Services.
    pub fn translate(&mut self, services: &[impl Borrow<KubeService>], slices: &[impl Borrow<EndpointSlice>], node: &Node) -> (Model, Vec<Warning>) {
        if self.node.as_ref() != Some(node) {
            // NodePorts and Local policy depend on the node: nothing is reusable.
            self.parts.clear();
            self.node = Some(node.clone());
        }
        let by_service = slices_by_service(slices);
        let mut next: HashMap<(String, String), (Fingerprint, Part)> = HashMap::with_capacity(services.len());
        let mut uncached: Vec<Part> = Vec::new();
        let mut sequence: Vec<Result<(String, String), usize>> = Vec::with_capacity(services.len());
        for svc in services.iter().map(Borrow::borrow) {
            let mine = slices_of(&by_service, svc);
            let key = (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default());
            let Some(print) = fingerprint(svc, mine) else {
                uncached.push(translate_service(svc, mine, node));
                sequence.push(Err(uncached.len() - 1));
                continue;
            };
            let part = match self.parts.remove(&key) {
                Some((old, part)) if old == print => part,
                _ => translate_service(svc, mine, node),
            };
            sequence.push(Ok(key.clone()));
            next.insert(key, (print, part));
        }
        // Services gone since the last call are dropped with the old map.
        self.parts = next;
        let parts = sequence.iter().filter_map(|s| match s {
            Ok(key) => self.parts.get(key).map(|(_, p)| p),
            Err(i) => uncached.get(*i),
        });
        assemble(parts)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::source::kube::translate::translate;

    fn service(name: &str, vip: &str, rv: &str) -> KubeService {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
            "spec": {"clusterIP": vip, "clusterIPs": [vip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
        .unwrap_or_default()
    }

    fn slice(service: &str, ips: &[&str], rv: &str) -> EndpointSlice {
        let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
        serde_json::from_value(json!({"metadata": {"name": format!("{service}-x"), "namespace": "default", "resourceVersion": rv,
            "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every step must equal a translation from scratch, whatever was cached before it.
    #[test]
    fn reused_parts_always_equal_a_fresh_translation() {
        let node = Node { name: "node-a".into(), addresses: vec![] };
        let mut t = Translator::default();
        let steps: Vec<(Vec<KubeService>, Vec<EndpointSlice>)> = vec![
            (vec![service("a", "10.96.0.1", "1"), service("b", "10.96.0.2", "2")], vec![slice("a", &["10.0.0.1"], "3"), slice("b", &["10.0.0.2"], "4")]),
            // a's slice changes; b is untouched.
            (vec![service("a", "10.96.0.1", "1"), service("b", "10.96.0.2", "2")], vec![slice("a", &["10.0.0.1", "10.0.0.3"], "5"), slice("b", &["10.0.0.2"], "4")]),
            // b's VIP moves; a new Service c claims b's old VIP.
            (vec![service("a", "10.96.0.1", "1"), service("b", "10.96.0.9", "6"), service("c", "10.96.0.2", "7")], vec![slice("a", &["10.0.0.1", "10.0.0.3"], "5"), slice("b", &["10.0.0.2"], "4")]),
            // a is deleted, its slice remains (orphaned); c's slice appears.
            (vec![service("b", "10.96.0.9", "6"), service("c", "10.96.0.2", "7")], vec![slice("a", &["10.0.0.1"], "5"), slice("b", &["10.0.0.2"], "4"), slice("c", &["10.0.0.7"], "8")]),
            // A slice without resourceVersion is never cached.
            (vec![service("b", "10.96.0.9", "6")], vec![{
                let mut s = slice("b", &["10.0.0.4"], "");
                s.metadata.resource_version = None;
                s
            }]),
        ];
        for (i, (services, slices)) in steps.iter().enumerate() {
            assert_eq!(t.translate(services, slices, &node), translate(services, slices, &node), "step {i}");
        }
        // A node change invalidates everything (NodePorts, Local policy).
        let other = Node { name: "node-b".into(), addresses: vec!["192.168.0.2".parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))] };
        let (services, slices) = &steps[3];
        assert_eq!(t.translate(services, slices, &other), translate(services, slices, &other));
    }
}
