//! The object store behind the test API server: objects by resource, namespace and name, one
//! global resourceVersion counter (etcd's revision), and the change history that watches
//! replay from. `compact` forgets the history, as etcd compaction does: a watch from an older
//! resourceVersion then gets 410 Gone.
use std::collections::BTreeMap;

use serde_json::{json, Value};

/// The resources the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
    Events,
}

impl Resource {
    pub const ALL: [Resource; 4] = [Resource::Services, Resource::EndpointSlices, Resource::Nodes, Resource::Events];

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
            Resource::Events => "events",
        }
    }

    /// The path prefix of the resource's group version.
    pub fn group_path(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "/api/v1",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1",
            Resource::Events => "/apis/events.k8s.io/v1",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::Events => "events.k8s.io/v1",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
            Resource::Events => "Event",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Resource::Nodes
    }

    pub fn of_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }
}

/// One change, as a watch event carries it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: Resource,
    /// ADDED, MODIFIED, DELETED.
    pub type_: &'static str,
    pub object: Value,
}

type Key = (Resource, String, String);

#[derive(Default)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Watches from a resourceVersion below this one get 410 Gone (the history before it is gone).
    compacted: u64,
    uids: u64,
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).unwrap_or("")
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Creates or replaces an object: a new resourceVersion, and the fields the API server
    /// owns (uid, creationTimestamp, generation) filled in. Returns the change.
    pub fn apply(&mut self, resource: Resource, mut object: Value) -> Result<Change, String> {
        let name = meta_str(&object, "name").to_owned();
        if name.is_empty() {
            return Err("metadata.name is required".into());
        }
        let namespace = if resource.namespaced() { meta_str(&object, "namespace").to_owned() } else { String::new() };
        if resource.namespaced() && namespace.is_empty() {
            return Err("metadata.namespace is required".into());
        }
        let key = (resource, namespace, name);
        let previous = self.objects.get(&key);
        self.rv += 1;
        let generation = previous.and_then(|p| p.pointer("/metadata/generation")).and_then(Value::as_u64).unwrap_or(0) + 1;
        let uid = match previous {
            Some(p) => meta_str(p, "uid").to_owned(),
            None => {
                self.uids += 1;
                format!("00000000-0000-4000-8000-{:012x}", self.uids)
            }
        };
        let type_ = if previous.is_some() { "MODIFIED" } else { "ADDED" };
        let obj = object.as_object_mut().ok_or("an object must be a JSON object")?;
        obj.insert("kind".into(), json!(resource.kind()));
        obj.insert("apiVersion".into(), json!(resource.api_version()));
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        let meta = meta.as_object_mut().ok_or("metadata must be an object")?;
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("uid".into(), json!(uid));
        meta.insert("generation".into(), json!(generation));
        meta.entry("creationTimestamp").or_insert_with(|| json!("2026-11-25T00:00:00Z"));
        self.objects.insert(key, object.clone());
        Ok(self.record(resource, type_, object))
    }

    /// Deletes an object; the DELETED event carries its last state at a new resourceVersion.
    pub fn delete(&mut self, resource: Resource, namespace: &str, name: &str) -> Option<Change> {
        let ns = if resource.namespaced() { namespace } else { "" };
        let mut object = self.objects.remove(&(resource, ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        }
        Some(self.record(resource, "DELETED", object))
    }

    fn record(&mut self, resource: Resource, type_: &'static str, object: Value) -> Change {
        let change = Change { rv: self.rv, resource, type_, object };
        self.history.push(change.clone());
        change
    }

    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// The objects of one resource (one namespace, or all), sorted by namespace and name.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v)
            .collect()
    }

    /// One page of a list: up to `limit` objects of `resource` that `wanted` keeps, after the
    /// object named by `after` (namespace, name), in namespace/name order; with the position
    /// of the last one when more may follow. O(page): a paged list of N objects costs O(N).
    pub fn page(&self, resource: Resource, after: Option<(String, String)>, limit: usize, wanted: impl Fn(&Value) -> bool) -> (Vec<&Value>, Option<(String, String)>) {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let start = match after {
            Some((ns, name)) => Excluded((resource, ns, name)),
            None => Included((resource, String::new(), String::new())),
        };
        let mut items = Vec::new();
        let mut last = None;
        for ((r, ns, name), object) in self.objects.range((start, Unbounded)) {
            if *r != resource {
                break;
            }
            if !wanted(object) {
                continue;
            }
            if items.len() == limit {
                return (items, last);
            }
            items.push(object);
            last = Some((ns.clone(), name.clone()));
        }
        (items, None)
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<&Value> {
        let ns = if resource.namespaced() { namespace } else { "" };
        self.objects.get(&(resource, ns.to_owned(), name.to_owned()))
    }

    /// The changes after `rv`; None when they were compacted away (410 Gone).
    pub fn since(&self, rv: u64, resource: Resource) -> Option<Vec<Change>> {
        if rv < self.compacted {
            return None;
        }
        Some(self.history.iter().filter(|c| c.rv > rv && c.resource == resource).cloned().collect())
    }
}
