//! The Services and EndpointSlices the agent follows, kept compact: each object as the JSON it
//! came in (managed fields dropped), with the few fields read without decoding it (its
//! resourceVersion, a slice's Service, whether a Service has a health check port). A sync
//! decodes only the objects of the Services it translates again, so the agent holds a
//! cluster's objects at about their wire size instead of several times that as decoded
//! structs (an EndpointSlice of 10 endpoints: ~1.2 kB of JSON, ~5.5 kB decoded).
//!
//! Like kube-rs's reflector store, a relist replaces the objects only once it is complete: an
//! outage or a 410 Gone never empties the store.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use k8s_openapi::api::{core::v1::Service as KubeService, discovery::v1::EndpointSlice};
use kube::{runtime::watcher, Resource};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::watch;

use super::{
    incremental::{key_of, Key},
    slices::owner_of,
};

/// One object, compact.
pub struct Stored {
    pub rv: Option<String>,
    /// A slice's `kubernetes.io/service-name`; a Service: none.
    pub owner: Option<String>,
    /// A Service with a health check node port (see health.rs).
    pub health_checked: bool,
    json: Box<[u8]>,
}

impl Stored {
    /// The object, decoded; None if it does not decode (it did when it came in).
    pub fn decode<K: DeserializeOwned>(&self) -> Option<K> {
        serde_json::from_slice(&self.json).ok()
    }
}

/// What the store keeps of an object, and how to read its few fields.
pub trait Compact: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static {
    fn strip(&mut self);
    fn owner(&self) -> Option<String>;
    fn health_checked(&self) -> bool;
}

impl Compact for KubeService {
    fn strip(&mut self) {
        self.metadata.managed_fields = None;
    }
    fn owner(&self) -> Option<String> {
        None
    }
    fn health_checked(&self) -> bool {
        self.spec.as_ref().is_some_and(|s| s.health_check_node_port.is_some())
    }
}

impl Compact for EndpointSlice {
    fn strip(&mut self) {
        self.metadata.managed_fields = None;
    }
    fn owner(&self) -> Option<String> {
        owner_of(self).map(str::to_owned)
    }
    fn health_checked(&self) -> bool {
        false
    }
}

fn stored<K: Compact>(mut object: K) -> (Key, Stored) {
    object.strip();
    let key = key_of(object.meta());
    let json = serde_json::to_vec(&object).unwrap_or_default().into_boxed_slice();
    (key, Stored { rv: object.meta().resource_version.clone(), owner: object.owner(), health_checked: object.health_checked(), json })
}

#[derive(Default)]
struct Inner {
    objects: HashMap<Key, Stored>,
    /// A relist in progress: replaces `objects` when complete.
    relist: Option<HashMap<Key, Stored>>,
}

/// The objects of one resource, shared by its watcher (writing) and the snapshots (reading).
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<Mutex<Inner>>,
    ready: watch::Sender<bool>,
}

impl Default for ObjectStore {
    fn default() -> Self {
        Self { inner: Arc::default(), ready: watch::Sender::new(false) }
    }
}

/// The store's objects, locked for one snapshot.
pub struct Locked<'a>(MutexGuard<'a, Inner>);

impl Locked<'_> {
    pub fn get(&self, key: &Key) -> Option<&Stored> {
        self.0.objects.get(key)
    }

    /// The Service the slice at `key` names (None: no such slice, or no label).
    pub fn owner(&self, key: &Key) -> Option<String> {
        self.get(key)?.owner.clone()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Stored)> {
        self.0.objects.iter()
    }

    /// The object at `key`, decoded. One that does not decode (it did when it came in) is
    /// named in the log and treated as absent.
    pub fn decode<K: DeserializeOwned>(&self, key: &Key) -> Option<K> {
        let object = self.get(key)?.decode();
        if object.is_none() {
            tracing::error!(namespace = %key.0, name = %key.1, "a stored object no longer decodes; left out of the translation");
        }
        object
    }
}

impl ObjectStore {
    pub fn lock(&self) -> Locked<'_> {
        Locked(self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Applies one watcher event; returns the key of the object it changed (None for the
    /// steps of a relist: `InitDone` changes everything).
    pub fn apply<K: Compact>(&self, event: watcher::Event<K>) -> Option<Key> {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            watcher::Event::Init => {
                inner.relist = Some(HashMap::new());
                None
            }
            watcher::Event::InitApply(object) => {
                let (key, stored) = stored(object);
                inner.relist.get_or_insert_default().insert(key, stored);
                None
            }
            watcher::Event::InitDone => {
                if let Some(objects) = inner.relist.take() {
                    inner.objects = objects;
                }
                drop(inner);
                self.ready.send_replace(true);
                None
            }
            watcher::Event::Apply(object) => {
                let (key, stored) = stored(object);
                inner.objects.insert(key.clone(), stored);
                Some(key)
            }
            watcher::Event::Delete(object) => {
                let key = key_of(object.meta());
                inner.objects.remove(&key);
                Some(key)
            }
        }
    }

    /// Waits for the first complete list.
    pub async fn ready(&self) -> Result<(), watch::error::RecvError> {
        self.ready.subscribe().wait_for(|ready| *ready).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(name: &str, service: &str, rv: &str) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": rv,
            "labels": {"kubernetes.io/service-name": service}, "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}]},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]}))
        .unwrap_or_default()
    }

    #[test]
    fn objects_come_back_as_they_went_in_without_managed_fields() {
        let store = ObjectStore::default();
        let key = store.apply(watcher::Event::Apply(slice("web-1", "web", "7")));
        let key = key.unwrap_or_default();
        let locked = store.lock();
        let got = locked.get(&key);
        assert_eq!(got.map(|s| (s.rv.as_deref(), s.owner.as_deref())), Some((Some("7"), Some("web"))));
        let mut want = slice("web-1", "web", "7");
        want.metadata.managed_fields = None;
        assert_eq!(locked.decode::<EndpointSlice>(&key), Some(want));
    }

    #[test]
    fn a_relist_replaces_the_objects_only_when_complete() {
        let store = ObjectStore::default();
        store.apply(watcher::Event::Apply(slice("old", "web", "1")));
        store.apply(watcher::Event::<EndpointSlice>::Init);
        store.apply(watcher::Event::InitApply(slice("new", "web", "2")));
        let names = |s: &ObjectStore| {
            let mut n: Vec<String> = s.lock().iter().map(|(k, _)| k.1.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&store), ["old"], "an unfinished relist leaves the objects alone");
        store.apply(watcher::Event::<EndpointSlice>::InitDone);
        assert_eq!(names(&store), ["new"]);
        let gone = store.apply(watcher::Event::Delete(slice("new", "web", "3")));
        assert_eq!(gone, Some(("default".to_owned(), "new".to_owned())));
        assert!(names(&store).is_empty());
    }
}
