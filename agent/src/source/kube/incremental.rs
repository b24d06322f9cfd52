//! Translation with memory. Each Service's part (its virtual services and problems) is kept,
//! with which Services claim each virtual service, so that:
//! - a full translation re-translates only the Services whose object or EndpointSlices
//!   changed resourceVersion (and everything when the node changed);
//! - an event-driven one (`patch`) re-translates only the Services the watch events named,
//!   and returns the virtual services that changed: O(change), not O(cluster).
//!
//! Both give what `translate::translate` gives for the same objects: a VIP claimed twice goes
//! to the first Service in namespace/name order, what the model refuses is dropped and named.
use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use k8s_openapi::{
    api::{core::v1::Service as KubeService, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    slices::Changed,
    translate::{translate_service, Node, Part, Warning},
};
use crate::model::{Model, Patch, Service, ServiceId};

/// A Service's (or an EndpointSlice's) namespace and name, as the stores key them.
pub type Key = (String, String);

pub fn key_of(meta: &ObjectMeta) -> Key {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// What a part was translated from: a hash of the Service's and its slices' names and
/// resourceVersions (8 bytes a Service; a resourceVersion changes with every update, and a
/// 64-bit collision between two versions of one Service is not a practical concern).
pub type Fingerprint = u64;

/// The fingerprint of (name, resourceVersion) entries, Service first, then its slices in name
/// order; None when one lacks either: such a Service is translated every time.
pub fn fingerprint_of<'a>(entries: impl IntoIterator<Item = Option<(&'a str, &'a str)>>) -> Option<Fingerprint> {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    for entry in entries {
        entry?.hash(&mut hasher);
    }
    Some(hasher.finish())
}

fn versions<'o>(svc: &'o KubeService, slices: &'o [&EndpointSlice]) -> impl Iterator<Item = Option<(&'o str, &'o str)>> {
    let entry = |meta: &'o ObjectMeta| Some((meta.name.as_deref()?, meta.resource_version.as_deref()?));
    std::iter::once(entry(&svc.metadata)).chain(slices.iter().map(move |s| entry(&s.metadata)))
}

fn fingerprint(svc: &KubeService, slices: &[&EndpointSlice]) -> Option<Fingerprint> {
    fingerprint_of(versions(svc, slices))
}

struct Cached {
    print: Option<Fingerprint>,
    part: Part,
    /// The last full translation that saw this Service; older entries are swept.
    seen: u64,
}

/// The Services whose parts hold one virtual service, in namespace/name order (the first
/// wins), and what assembling it found wrong.
#[derive(Default)]
struct Claim {
    by: Vec<Key>,
    /// The winner is refused by the model: the virtual service is not programmed.
    refused: bool,
    warnings: Vec<Warning>,
}

#[derive(Default)]
pub struct Translator {
    node: Option<Node>,
    /// By namespace, then name: looked up with the objects' own `&str`s.
    parts: HashMap<String, HashMap<String, Cached>>,
    claims: BTreeMap<ServiceId, Claim>,
    call: u64,
    /// Whether a part or claim with warnings changed since the warnings were last taken.
    warnings_changed: bool,
}

impl Translator {
    /// The same result as `translate::translate` for the objects given, reusing the parts of
    /// unchanged Services. Warnings come sorted and without repeats.
    #[cfg(test)]
    pub fn translate(&mut self, services: &[impl Borrow<KubeService>], slices: &[impl Borrow<EndpointSlice>], node: &Node) -> (Model, Vec<Warning>) {
        use super::translate::{slices_by_service, slices_of};
        let by_service = slices_by_service(slices);
        let by_key: BTreeMap<Key, &KubeService> = services.iter().map(|s| (key_of(&s.borrow().metadata), s.borrow())).collect();
        let mine = |k: &Key| by_key.get(k).map(|svc| (*svc, slices_of(&by_service, svc)));
        self.translate_from(
            by_key.keys().cloned(),
            |k| mine(k).and_then(|(svc, slices)| fingerprint(svc, slices)),
            |k| mine(k).map(|(svc, slices)| (svc, slices.to_vec())),
            node,
        )
    }

    /// A full translation over objects read on demand: every Service's key, the fingerprint
    /// of its object and slices (`print`, from the store without decoding; None: never
    /// reused), and the objects themselves (`load`, decoded only for Services whose
    /// fingerprint changed). Warnings come sorted and without repeats.
    pub fn translate_from<S, E>(
        &mut self,
        services: impl IntoIterator<Item = Key>,
        print: impl Fn(&Key) -> Option<Fingerprint>,
        load: impl Fn(&Key) -> Option<(S, Vec<E>)>,
        node: &Node,
    ) -> (Model, Vec<Warning>)
    where
        S: Borrow<KubeService>,
        E: Borrow<EndpointSlice>,
    {
        if self.node.as_ref() != Some(node) {
            // NodePorts and Local policy depend on the node: nothing is reusable.
            self.parts.clear();
            self.claims.clear();
            self.node = Some(node.clone());
        }
        self.call += 1;
        let call = self.call;
        let mut affected = BTreeSet::new();
        for key in services {
            let print = print(&key);
            if let Some(cached) = self.parts.get_mut(&key.0).and_then(|m| m.get_mut(&key.1))
                && print.is_some()
                && cached.print == print
            {
                cached.seen = call;
                continue;
            }
            let Some((svc, slices)) = load(&key) else { continue };
            let mine: Vec<&EndpointSlice> = slices.iter().map(Borrow::borrow).collect();
            let cached = Cached { print, part: translate_service(svc.borrow(), &mine, node), seen: call };
            affected.extend(self.set_part(key, Some(cached)));
        }
        // Services gone since the last call.
        let gone: Vec<Key> = self
            .parts
            .iter()
            .flat_map(|(namespace, names)| names.iter().filter(|(_, c)| c.seen != call).map(|(name, _)| (namespace.clone(), name.clone())))
            .collect();
        for key in gone {
            affected.extend(self.set_part(key, None));
        }
        for id in affected {
            self.resolve(id);
        }
        let services = self.claims.iter().filter(|(_, c)| !c.refused).filter_map(|(id, c)| self.winner(*id, c)).cloned().collect();
        let model = Model::new(services).unwrap_or_else(|errors| {
            // resolve() refused every service the model refuses: this cannot happen.
            tracing::error!(errors = errors.len(), "the assembled state did not validate; nothing applied from it");
            Model::default()
        });
        self.warnings_changed = false;
        (model, self.warnings())
    }

    /// The virtual services that change when the Services `changed` names are as given now
    /// (None: deleted), each with the EndpointSlices labelled with its name in name order.
    /// None when there was no full translation yet (no node to translate for).
    pub fn patch<S, E>(&mut self, changed: impl IntoIterator<Item = Changed<S, E>>) -> Option<Patch>
    where
        S: Borrow<KubeService>,
        E: Borrow<EndpointSlice>,
    {
        let node = self.node.clone()?;
        let mut affected = BTreeSet::new();
        for (key, now) in changed {
            let cached = now.map(|(svc, slices)| {
                let mine: Vec<&EndpointSlice> = slices.iter().map(Borrow::borrow).collect();
                let svc = svc.borrow();
                Cached { print: fingerprint(svc, &mine), part: translate_service(svc, &mine, &node), seen: self.call }
            });
            affected.extend(self.set_part(key, cached));
        }
        Some(affected.into_iter().map(|id| (id, self.resolve(id))).collect())
    }

    /// The node of the last full translation.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// Every problem known, if that changed since the last call (or full translation).
    pub fn warnings_if_changed(&mut self) -> Option<Vec<Warning>> {
        std::mem::take(&mut self.warnings_changed).then(|| self.warnings())
    }

    /// Every problem known: each part's, and each virtual service's assembly's.
    pub fn warnings(&self) -> Vec<Warning> {
        let parts = self.parts.values().flat_map(HashMap::values).flat_map(|c| &c.part.warnings);
        let claims = self.claims.values().flat_map(|c| &c.warnings);
        parts.chain(claims).cloned().collect::<BTreeSet<_>>().into_iter().collect()
    }

    /// Replaces the part of Service `key` (None: removes it); returns the virtual services
    /// it claimed before or claims now.
    fn set_part(&mut self, key: Key, new: Option<Cached>) -> BTreeSet<ServiceId> {
        let (namespace, name) = &key;
        let ids = |c: &Cached| c.part.services.iter().map(|(_, s)| s.id).collect::<BTreeSet<_>>();
        let warned = |c: &Cached| !c.part.warnings.is_empty();
        let new_ids = new.as_ref().map(ids).unwrap_or_default();
        self.warnings_changed |= new.as_ref().is_some_and(warned);
        let old = match new {
            Some(new) => self.parts.entry(namespace.clone()).or_default().insert(name.clone(), new),
            None => {
                let old = self.parts.get_mut(namespace).and_then(|m| m.remove(name));
                if self.parts.get(namespace).is_some_and(HashMap::is_empty) {
                    self.parts.remove(namespace);
                }
                old
            }
        };
        self.warnings_changed |= old.as_ref().is_some_and(warned);
        let old_ids = old.as_ref().map(ids).unwrap_or_default();
        for id in old_ids.difference(&new_ids) {
            if let Some(claim) = self.claims.get_mut(id) {
                claim.by.retain(|k| *k != key);
            }
        }
        for id in new_ids.difference(&old_ids) {
            let claim = self.claims.entry(*id).or_default();
            if let Err(at) = claim.by.binary_search(&key) {
                claim.by.insert(at, key.clone());
            }
        }
        old_ids.union(&new_ids).copied().collect()
    }

    fn part(&self, (namespace, name): &Key) -> Option<&Part> {
        self.parts.get(namespace).and_then(|m| m.get(name)).map(|c| &c.part)
    }

    /// Every (object, service) claiming `id`, in namespace/name order, then part order.
    fn claimants<'a>(&'a self, id: ServiceId, claim: &'a Claim) -> impl Iterator<Item = &'a (super::ObjectRef, Service)> {
        claim.by.iter().filter_map(|k| self.part(k)).flat_map(move |p| p.services.iter().filter(move |(_, s)| s.id == id))
    }

    fn winner<'a>(&'a self, id: ServiceId, claim: &'a Claim) -> Option<&'a Service> {
        self.claimants(id, claim).next().map(|(_, s)| s)
    }

    /// Assembles virtual service `id` from its claims: the first claimant's service unless
    /// the model refuses it; the others are warned about.
    fn resolve(&mut self, id: ServiceId) -> Option<Service> {
        let assembled = {
            let claim = self.claims.get(&id)?;
            let mut claimants = self.claimants(id, claim);
            claimants.next().map(|(first, service)| {
                let mut warnings: Vec<Warning> =
                    claimants.map(|(object, _)| Warning { object: object.clone(), cause: format!("{id} is already used by {first}; skipped") }).collect();
                let issues = Model::issues(service);
                warnings.extend(issues.iter().map(|issue| Warning { object: first.clone(), cause: format!("{id}: {issue}") }));
                let service = issues.is_empty().then(|| service.clone());
                (service, warnings)
            })
        };
        let Some((service, warnings)) = assembled else {
            let gone = self.claims.remove(&id);
            self.warnings_changed |= gone.is_some_and(|c| !c.warnings.is_empty());
            return None;
        };
        if let Some(claim) = self.claims.get_mut(&id) {
            self.warnings_changed |= !claim.warnings.is_empty() || !warnings.is_empty();
            claim.refused = service.is_none();
            claim.warnings = warnings;
        }
        service
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
        let fresh = |services: &[KubeService], slices: &[EndpointSlice], node: &Node| {
            let (model, warnings) = translate(services, slices, node);
            (model, warnings.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>())
        };
        for (i, (services, slices)) in steps.iter().enumerate() {
            assert_eq!(t.translate(services, slices, &node), fresh(services, slices, &node), "step {i}");
            assert_eq!(t.cached(), services.len(), "step {i}: parts kept for Services that are gone");
        }
        // A node change invalidates everything (NodePorts, Local policy).
        let other = Node { name: "node-b".into(), addresses: vec!["192.168.0.2".parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))], zone: None };
        let (services, slices) = &steps[3];
        assert_eq!(t.translate(services, slices, &other), fresh(services, slices, &other));
    }
}
