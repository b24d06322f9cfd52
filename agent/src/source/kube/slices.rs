//! Which EndpointSlices belong to which Service (by the `kubernetes.io/service-name` label),
//! kept up to date from the slices the watch events name. An event-driven sync finds the
//! Services a slice event touches (the one its label names now, and the one it named before
//! a relabel or a delete) and each such Service's slices without reading every slice.
use std::{
    borrow::Borrow,
    collections::{BTreeSet, HashMap},
};

use k8s_openapi::api::{core::v1::Service as KubeService, discovery::v1::EndpointSlice};

use super::{
    incremental::Key,
    translate::SERVICE_NAME_LABEL,
};

/// The Service a slice's label names.
pub fn owner_of(slice: &EndpointSlice) -> Option<&str> {
    slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL).map(String::as_str)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SliceIndex {
    /// Slice (namespace, name) -> the name of the Service its label names.
    owner: HashMap<Key, String>,
    /// Service (namespace, name) -> the names of its slices, in name order.
    slices: HashMap<Key, BTreeSet<String>>,
}

impl SliceIndex {
    /// From every slice's key and the Service its label names.
    pub fn build<'a>(slices: impl IntoIterator<Item = (Key, Option<&'a str>)>) -> Self {
        let mut index = Self::default();
        for (key, owner) in slices {
            index.update(key, owner);
        }
        index
    }

    #[cfg(test)]
    pub fn of(slices: &[impl Borrow<EndpointSlice>]) -> Self {
        Self::build(slices.iter().map(Borrow::borrow).map(|s| (super::incremental::key_of(&s.metadata), owner_of(s))))
    }

    /// Slice `key` now names Service `now` (None: deleted, or no label). Returns the Services
    /// it belonged to before and belongs to now: both must be translated again.
    pub fn update(&mut self, key: Key, now: Option<&str>) -> Vec<Key> {
        let (namespace, name) = &key;
        let before = self.owner.get(&key).map(String::as_str);
        let mut touched = Vec::new();
        if before != now {
            if let Some(before) = self.owner.remove(&key) {
                let service = (namespace.clone(), before);
                if let Some(names) = self.slices.get_mut(&service) {
                    names.remove(name);
                    if names.is_empty() {
                        self.slices.remove(&service);
                    }
                }
                touched.push(service);
            }
            if let Some(now) = now {
                self.owner.insert(key.clone(), now.to_owned());
                self.slices.entry((namespace.clone(), now.to_owned())).or_default().insert(name.clone());
            }
        }
        if let Some(now) = now {
            touched.push((namespace.clone(), now.to_owned()));
        }
        touched
    }

    /// The keys of the slices of Service `service`, in name order.
    pub fn slices_of<'a>(&'a self, service: &'a Key) -> impl Iterator<Item = Key> + 'a {
        self.slices.get(service).into_iter().flatten().map(|name| (service.0.clone(), name.clone()))
    }
}

/// A Service to translate again: its key, and its object with its slices now (None: deleted).
pub type Changed<S, E> = (Key, Option<(S, Vec<E>)>);

/// The Services to translate again, given the Services and slices the watch events named
/// since the last sync: each with its object now (None: deleted) and its slices now, in name
/// order. `owner` reads a slice's label from the store (None: no such slice, or no label);
/// `service` and `slice` decode an object from it.
pub fn changed_services<S, E>(
    index: &mut SliceIndex,
    services: BTreeSet<Key>,
    slices: BTreeSet<Key>,
    owner: impl Fn(&Key) -> Option<String>,
    service: impl Fn(&Key) -> Option<S>,
    slice: impl Fn(&Key) -> Option<E>,
) -> Vec<Changed<S, E>>
where
    S: Borrow<KubeService>,
    E: Borrow<EndpointSlice>,
{
    let mut touched = services;
    for key in slices {
        let now = owner(&key);
        touched.extend(index.update(key, now.as_deref()));
    }
    touched.into_iter().map(|key| {
        let now = service(&key).map(|svc| (svc, slices_of(index, &key, &owner, &slice)));
        (key, now)
    }).collect()
}

/// The slices of Service `key`, decoded, in name order. The label is checked again: the index
/// follows the events, the store is the truth.
pub fn slices_of<E>(index: &SliceIndex, key: &Key, owner: impl Fn(&Key) -> Option<String>, slice: impl Fn(&Key) -> Option<E>) -> Vec<E> {
    index.slices_of(key).filter(|k| owner(k).as_deref() == Some(key.1.as_str())).filter_map(|k| slice(&k)).collect()
}
