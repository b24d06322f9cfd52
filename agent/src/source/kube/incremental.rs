//! Translation with memory: a Service whose object and EndpointSlices carry the same
//! resourceVersions as last time (and the node is the same) keeps its translated part, so one
//! changed EndpointSlice costs one Service's translation plus the assembly, not the cluster's.
use std::{borrow::Borrow, collections::HashMap};

use k8s_openapi::{
    api::{core::v1::Service as KubeService, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::translate::{assemble, slices_by_service, slices_of, translate_service, Node, Part, Warning};
use crate::model::Model;

/// What a part was translated from: the Service's and its slices' names and resourceVersions.
type Fingerprint = Vec<(String, String)>;

fn versions<'o>(svc: &'o KubeService, slices: &'o [&EndpointSlice]) -> impl Iterator<Item = Option<(&'o str, &'o str)>> {
    let entry = |meta: &'o ObjectMeta| Some((meta.name.as_deref()?, meta.resource_version.as_deref()?));
    std::iter::once(entry(&svc.metadata)).chain(slices.iter().map(move |s| entry(&s.metadata)))
}

/// None when an object has no name or resourceVersion: such a Service is never cached.
fn fingerprint(svc: &KubeService, slices: &[&EndpointSlice]) -> Option<Fingerprint> {
    versions(svc, slices).map(|v| v.map(|(n, r)| (n.to_owned(), r.to_owned()))).collect()
}

/// Compared in place: a sync of an unchanged cluster allocates nothing per Service.
fn unchanged(print: &Fingerprint, svc: &KubeService, slices: &[&EndpointSlice]) -> bool {
    print.len() == slices.len() + 1 && print.iter().zip(versions(svc, slices)).all(|((n, r), now)| now == Some((n.as_str(), r.as_str())))
}

struct Cached {
    print: Fingerprint,
    part: Part,
    /// The last call that saw this Service; older entries are swept.
    seen: u64,
}

#[derive(Default)]
pub struct Translator {
    node: Option<Node>,
    /// By namespace, then name: looked up with the objects' own `&str`s.
    parts: HashMap<String, HashMap<String, Cached>>,
    call: u64,
}

impl Translator {
    /// The same result as `translate::translate`, reusing the parts of unchanged Services.
    pub fn translate(&mut self, services: &[impl Borrow<KubeService>], slices: &[impl Borrow<EndpointSlice>], node: &Node) -> (Model, Vec<Warning>) {
        if self.node.as_ref() != Some(node) {
            // NodePorts and Local policy depend on the node: nothing is reusable.
            self.parts.clear();
            self.node = Some(node.clone());
        }
        self.call += 1;
        let call = self.call;
        let by_service = slices_by_service(slices);
        let mut uncached: Vec<Part> = Vec::new();
        let mut sequence: Vec<Result<(&str, &str), usize>> = Vec::with_capacity(services.len());
        for svc in services.iter().map(Borrow::borrow) {
            let mine = slices_of(&by_service, svc);
            let key = svc.metadata.namespace.as_deref().zip(svc.metadata.name.as_deref());
            if let Some((namespace, name)) = key
                && let Some(cached) = self.parts.get_mut(namespace).and_then(|m| m.get_mut(name))
                && unchanged(&cached.print, svc, mine)
            {
                cached.seen = call;
                sequence.push(Ok((namespace, name)));
                continue;
            }
            let part = translate_service(svc, mine, node);
            match key.zip(fingerprint(svc, mine)) {
                Some(((namespace, name), print)) => {
                    self.parts.entry(namespace.to_owned()).or_default().insert(name.to_owned(), Cached { print, part, seen: call });
                    sequence.push(Ok((namespace, name)));
                }
                None => {
                    uncached.push(part);
                    sequence.push(Err(uncached.len() - 1));
                }
            }
        }
        // Services gone (or no longer cacheable) since the last call.
        for names in self.parts.values_mut() {
            names.retain(|_, c| c.seen == call);
        }
        self.parts.retain(|_, names| !names.is_empty());
        let parts = sequence.iter().filter_map(|s| match s {
            Ok((namespace, name)) => self.parts.get(*namespace).and_then(|m| m.get(*name)).map(|c| &c.part),
            Err(i) => uncached.get(*i),
        });
        assemble(parts)
    }

    /// How many Services' parts are kept (deleted Services must not linger).
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.parts.values().map(HashMap::len).sum()
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
        let node = Node { name: "node-a".into(), addresses: vec![], zone: None };
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
            let cacheable = services.iter().filter(|svc| fingerprint(svc, slices_of(&slices_by_service(slices), svc)).is_some()).count();
            assert_eq!(t.cached(), cacheable, "step {i}: parts kept for Services that are gone");
        }
        // A node change invalidates everything (NodePorts, Local policy).
        let other = Node { name: "node-b".into(), addresses: vec!["192.168.0.2".parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))], zone: None };
        let (services, slices) = &steps[3];
        assert_eq!(t.translate(services, slices, &other), translate(services, slices, &other));
    }
}
