//! The event-driven path against the full one, over random event sequences: Services and
//! EndpointSlices added, changed, relabelled and deleted in any order (slices before their
//! Service, Services deleted under their slices, VIPs and NodePorts claimed twice, objects the
//! model refuses), with relists in between. After every sync, the model patched from the
//! events, the warnings, and the dataplane written by the reconciler from the patches must
//! equal what a translation of every object from scratch gives, synced in full.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::{core::v1::Service as KubeService, discovery::v1::EndpointSlice};
use serde_json::json;

use super::{
    incremental::{Key, Translator},
    slices::{changed_services, owner_of, SliceIndex},
    translate::{translate, Node},
};
use crate::{
    dataplane::{Capacity, DataplaneError, ServiceEntry},
    model::Model,
    sync::{fit::Usage, flows::ConnCounts, Counted, Reconciler, Writer},
};

/// xorshift64*: the same sequence for a seed on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const NAMESPACES: [&str; 2] = ["default", "prod"];
const SERVICES: [&str; 4] = ["a", "b", "c", "d"];
const SLICES: [&str; 5] = ["a-1", "a-2", "b-1", "x-1", "x-2"];

fn random_service(rng: &mut Rng, namespace: &str, name: &str, rv: u64) -> KubeService {
    let cluster_ip = *rng.pick(&["10.96.0.1", "10.96.0.2", "10.96.0.3", "None", "fd00::1"]);
    let family = if cluster_ip.contains(':') { "IPv6" } else { "IPv4" };
    let mut ports = vec![json!({"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080})];
    if rng.chance(40) {
        ports.push(json!({"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}));
    }
    let kind = *rng.pick(&["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"]);
    let mut spec = json!({"type": kind, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ipFamilies": [family], "ports": ports,
        "internalTrafficPolicy": rng.pick(&["Cluster", "Local"]), "externalTrafficPolicy": rng.pick(&["Cluster", "Local"])});
    if rng.chance(30) {
        spec["externalIPs"] = json!([rng.pick(&["192.0.2.1", "192.0.2.2", "not-an-ip"])]);
    }
    if rng.chance(25) {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    if kind == "LoadBalancer" && rng.chance(50) {
        spec["healthCheckNodePort"] = json!(32000);
    }
    let mut annotations = serde_json::Map::new();
    if rng.chance(40) {
        annotations.insert("xvs.io/scheduler".into(), json!(rng.pick(&["rr", "wrr", "sh", "bogus"])));
    }
    if rng.chance(20) {
        annotations.insert("xvs.io/weights".into(), json!(rng.pick(&["10.0.0.1=3", "10.0.0.2=0", "garbage"])));
    }
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace, "resourceVersion": rv.to_string(), "uid": format!("uid-{namespace}-{name}"),
        "annotations": annotations}, "spec": spec}))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn random_slice(rng: &mut Rng, namespace: &str, name: &str, rv: u64) -> EndpointSlice {
    let v6 = rng.chance(15);
    let pool: &[&str] = if v6 { &["fd00::10", "fd00::11"] } else { &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "0.0.0.0"] };
    let endpoints: Vec<_> = (0..rng.below(4))
        .map(|_| {
            let ready = rng.chance(80);
            json!({"addresses": [rng.pick(pool)], "conditions": {"ready": ready, "serving": ready || rng.chance(50), "terminating": !ready},
                "nodeName": rng.pick(&["node-a", "node-b"])})
        })
        .collect();
    let mut labels = serde_json::Map::new();
    if rng.chance(90) {
        labels.insert("kubernetes.io/service-name".into(), json!(rng.pick(&SERVICES)));
    }
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace, "resourceVersion": rv.to_string(), "labels": labels},
        "addressType": if v6 { "IPv6" } else { "IPv4" }, "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The maps as a reconciler leaves them: services by name.
#[derive(Default, PartialEq, Eq, Debug)]
struct Table {
    services: BTreeMap<String, ServiceEntry>,
    drains: BTreeMap<u32, u32>,
}

impl Writer for Table {
    fn update_service(&mut self, _old: Option<&ServiceEntry>, new: &ServiceEntry) -> Result<(), DataplaneError> {
        self.services.insert(new.name(), new.clone());
        Ok(())
    }
    fn remove_service(&mut self, entry: &ServiceEntry) -> Result<(), DataplaneError> {
        self.services.remove(&entry.name());
        Ok(())
    }
    fn reset_counters(&mut self, _kind: Counted, _id: u32) -> Result<(), DataplaneError> {
        Ok(())
    }
    fn record_drain(&mut self, id: u32, since: u32) -> Result<(), DataplaneError> {
        self.drains.insert(id, since);
        Ok(())
    }
    fn forget_drain(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.drains.remove(&id);
        Ok(())
    }
    /// Odd backend ids have a live flow (they drain), even ones none (they go at once).
    fn flow_counts(&mut self, _now: u32) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        Ok((1..1000).step_by(2).map(|id| (id, ConnCounts { active: 1, inactive: 0 })).collect())
    }
}

/// The stores, what the watch events marked, and both paths' state.
struct World {
    services: BTreeMap<Key, KubeService>,
    slices: BTreeMap<Key, EndpointSlice>,
    marked_services: BTreeSet<Key>,
    marked_slices: BTreeSet<Key>,
    relist: bool,
    rv: u64,
    node: Node,
    /// The event-driven path: translator, slice index, the agent's model and usage, its maps.
    translator: Translator,
    index: SliceIndex,
    model: Model,
    usage: Usage,
    /// The warnings as last reported.
    warnings: Vec<super::Warning>,
    events: (Reconciler, Table),
    /// The full path: everything translated from scratch and synced whole.
    full: (Reconciler, Table),
}

const NOW: u32 = 100;

impl World {
    fn new() -> Self {
        let capacity = Capacity { services: 64, backends: 256, slots: 1 << 16, flows: 1024 };
        Self {
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            marked_services: BTreeSet::new(),
            marked_slices: BTreeSet::new(),
            relist: true,
            rv: 0,
            node: Node { name: "node-a".into(), addresses: vec![[192, 168, 1, 10].into()], zone: None },
            translator: Translator::default(),
            index: SliceIndex::default(),
            model: Model::default(),
            usage: Usage::default(),
            warnings: Vec::new(),
            events: (Reconciler::new(30, capacity), Table::default()),
            full: (Reconciler::new(30, capacity), Table::default()),
        }
    }

    fn step(&mut self, rng: &mut Rng) {
        self.rv += 1;
        let key = |rng: &mut Rng, names: &[&str]| (rng.pick(&NAMESPACES).to_string(), rng.pick(names).to_string());
        match rng.below(100) {
            0..30 => {
                let k = key(rng, &SLICES);
                let slice = random_slice(rng, &k.0, &k.1, self.rv);
                self.slices.insert(k.clone(), slice);
                self.marked_slices.insert(k);
            }
            30..40 => {
                let k = key(rng, &SLICES);
                // A delete of an object the store never had still comes through as a mark.
                self.slices.remove(&k);
                self.marked_slices.insert(k);
            }
            40..65 => {
                let k = key(rng, &SERVICES);
                let svc = random_service(rng, &k.0, &k.1, self.rv);
                self.services.insert(k.clone(), svc);
                self.marked_services.insert(k);
            }
            65..75 => {
                let k = key(rng, &SERVICES);
                self.services.remove(&k);
                self.marked_services.insert(k);
            }
            75..79 => self.relist = true,
            _ => self.sync(),
        }
    }

    fn sync(&mut self) {
        let services: Vec<&KubeService> = self.services.values().collect();
        let slices: Vec<&EndpointSlice> = self.slices.values().collect();
        let marked = (std::mem::take(&mut self.marked_services), std::mem::take(&mut self.marked_slices));
        let (events, table) = (&mut self.events.0, &mut self.events.1);
        if std::mem::take(&mut self.relist) {
            let (model, warnings) = self.translator.translate(&services, &slices, &self.node);
            self.warnings = warnings;
            self.index = SliceIndex::of(&slices);
            self.usage = Usage::of(&model);
            self.model = model;
            events.sync(&self.model, table, NOW);
        } else {
            let owner = |k: &Key| self.slices.get(k).and_then(owner_of).map(str::to_owned);
            let changed = changed_services(&mut self.index, marked.0, marked.1, owner, |k| self.services.get(k), |k| self.slices.get(k));
            let mut patch = self.translator.patch(changed).unwrap_or_else(|| panic!("a patch before the first full translation"));
            patch.retain(|id, svc| self.model.get(id) != svc.as_ref());
            for (id, svc) in &patch {
                if let Some(old) = self.model.get(id) {
                    self.usage.remove(old);
                }
                if let Some(new) = svc {
                    self.usage.add(new);
                }
            }
            let ids: Vec<_> = patch.keys().copied().collect();
            if let Some(warnings) = self.translator.warnings_if_changed() {
                self.warnings = warnings;
            }
            self.model.apply(patch).unwrap_or_else(|e| panic!("the translator patched in what the model refuses: {e:?}"));
            events.sync_changed(&self.model, ids, table, NOW);
        }
        let (model, warnings) = translate(&services, &slices, &self.node);
        assert_eq!(self.model, model, "the patched model differs from a full translation");
        assert_eq!(self.usage, Usage::of(&model), "the usage kept by patches differs from a fresh count");
        let warnings: Vec<_> = warnings.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        assert_eq!(self.translator.warnings(), warnings, "warnings differ");
        assert_eq!(self.warnings, warnings, "the warnings were reported unchanged, but they changed");
        let (full, table) = (&mut self.full.0, &mut self.full.1);
        full.sync(&model, table, NOW);
        assert_eq!(self.events.1, self.full.1, "the maps written from patches differ from a full sync's");
        assert_eq!(self.events.0.draining().collect::<Vec<_>>(), self.full.0.draining().collect::<Vec<_>>(), "drains differ");
        let index = SliceIndex::of(&slices);
        assert_eq!(self.index, index, "the slice index differs from one built from the store");
    }
}

#[test]
fn patches_from_events_always_give_the_full_translation_s_dataplane() {
    let mut syncs = 0;
    let mut patched_services = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut world = World::new();
        world.sync();
        for step in 0..60 {
            let before = world.model.len();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.step(&mut rng)))
                .unwrap_or_else(|_| panic!("seed {seed}, step {step}: see the assertion above"));
            syncs += 1;
            patched_services += world.model.len().abs_diff(before);
        }
        world.sync();
    }
    // The sequences did exercise the path: services came and went.
    assert!(syncs > 0 && patched_services > 1000, "too few changes: {patched_services}");
}
