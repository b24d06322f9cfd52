//! Golden tests of the reconciler against a recording writer: which writes a model change
//! causes, in order.
use std::collections::HashMap;

use super::{flows::ConnCounts, Counted, Reconciler, Writer};
use crate::{
    dataplane::{Capacity, DataplaneError, ServiceEntry},
    source::file,
};

#[derive(Default)]
struct Recorder {
    ops: Vec<String>,
    /// Services (by VIP text) whose writes fail.
    failing: Vec<String>,
    /// Pinned drain starts: backend id -> second.
    drains: std::collections::BTreeMap<u32, u32>,
    /// Backends without live flows; every other has one.
    idle: Vec<u32>,
}

fn show(e: &ServiceEntry) -> String {
    let backends: Vec<String> = e.backends.iter().map(|b| format!("{}={}:{}/w{}", b.id, b.addr, b.port, b.weight)).collect();
    format!("{} #{} {:?} aff={} [{}]", e.name(), e.svc_id, e.scheduler, e.affinity_timeout, backends.join(" "))
}

impl Writer for Recorder {
    fn update_service(&mut self, old: Option<&ServiceEntry>, new: &ServiceEntry) -> Result<(), DataplaneError> {
        if self.failing.contains(&new.vip.to_string()) {
            return Err(DataplaneError::MissingMap("XVS_TEST"));
        }
        self.ops.push(format!("{} {}", if old.is_some() { "update" } else { "create" }, show(new)));
        Ok(())
    }
    fn remove_service(&mut self, entry: &ServiceEntry) -> Result<(), DataplaneError> {
        self.ops.push(format!("remove {}", show(entry)));
        Ok(())
    }
    fn reset_counters(&mut self, kind: Counted, id: u32) -> Result<(), DataplaneError> {
        self.ops.push(format!("zero {kind:?} {id}"));
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
    fn flow_counts(&mut self, _now: u32) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        self.ops.push("count flows".into());
        Ok((1..100).filter(|id| !self.idle.contains(id)).map(|id| (id, ConnCounts { active: 1, inactive: 0 })).collect())
    }
}

fn model(text: &str) -> crate::model::Model {
    file::parse(text, std::path::Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

const TWO: &str = r#"
[[service]]
vip = "10.96.0.10"
port = 80
backends = [{ endpoint = "10.244.1.3:80" }, { endpoint = "10.244.1.2:80" }]

[[service]]
vip = "10.96.0.53"
port = 53
protocol = "udp"
scheduler = "wrr"
session_affinity_timeout = 60
backends = [{ endpoint = "10.244.2.2:53", weight = 3 }]
"#;

#[test]
fn first_sync_creates_everything_then_nothing() {
    let mut w = Recorder::default();
    let mut r = Reconciler::new(30, Capacity::default());
    let (report, errors) = r.sync(&model(TWO), &mut w, 100);
    assert!(errors.is_empty());
    assert_eq!((report.created, report.updated, report.removed), (2, 0, 0));
    assert_eq!(
        w.ops,
        [
            "zero Service 1",
            "zero Backend 1",
            "zero Backend 2",
            "create TCP 10.96.0.10:80 #1 RoundRobin aff=0 [2=10.244.1.3:80/w1 1=10.244.1.2:80/w1]",
            "zero Service 2",
            "zero Backend 3",
            "create UDP 10.96.0.53:53 #2 WeightedRoundRobin aff=60 [3=10.244.2.2:53/w3]",
        ]
    );
    w.ops.clear();
    let (report, _) = r.sync(&model(TWO), &mut w, 101);
    assert_eq!(report.unchanged, 2);
    assert!(w.ops.is_empty(), "{:?}", w.ops);
}

#[test]
fn removed_backend_drains_until_its_flows_end() {
    let mut w = Recorder::default();
    let mut r = Reconciler::new(30, Capacity::default());
    r.sync(&model(TWO), &mut w, 100);
    w.ops.clear();
    let one_left = TWO.replace(r#"{ endpoint = "10.244.1.3:80" }, "#, "");
    let (report, _) = r.sync(&model(&one_left), &mut w, 110);
    assert_eq!(report.draining.len(), 1);
    // The leaving backend has a flow (counted once per sync) and keeps its list place.
    assert_eq!(w.ops, ["count flows", "update TCP 10.96.0.10:80 #1 RoundRobin aff=0 [2=10.244.1.3:80/w0 1=10.244.1.2:80/w1]"]);
    w.ops.clear();

    // Still one established flow on backend 2, timeout not reached: it stays.
    let busy = HashMap::from([(2, ConnCounts { active: 1, inactive: 0 })]);
    let (removed, _) = r.finish_drains(&busy, &mut w, 120);
    assert!(removed.is_empty() && w.ops.is_empty());
    // The flow ended: removed.
    let (removed, _) = r.finish_drains(&HashMap::new(), &mut w, 121);
    assert_eq!(removed.len(), 1);
    assert_eq!(w.ops, ["update TCP 10.96.0.10:80 #1 RoundRobin aff=0 [1=10.244.1.2:80/w1]"]);
    w.ops.clear();

    // Its id is free again for the next new backend.
    let added = TWO.replace("10.244.1.3:80", "10.244.1.9:80");
    r.sync(&model(&added), &mut w, 130);
    assert_eq!(w.ops, ["zero Backend 2", "update TCP 10.96.0.10:80 #1 RoundRobin aff=0 [2=10.244.1.9:80/w1 1=10.244.1.2:80/w1]"]);
}

#[test]
fn drain_timeout_ends_a_busy_drain_and_a_returning_backend_is_active_again() {
    let mut w = Recorder::default();
    let mut r = Reconciler::new(30, Capacity::default());
    r.sync(&model(TWO), &mut w, 100);
    let one_left = TWO.replace(r#"{ endpoint = "10.244.1.3:80" }, "#, "");
    r.sync(&model(&one_left), &mut w, 100);
    let busy = HashMap::from([(2, ConnCounts { active: 0, inactive: 4 })]);
    assert_eq!(r.finish_drains(&busy, &mut w, 129).0.len(), 0);
    assert_eq!(r.finish_drains(&busy, &mut w, 130).0.len(), 1);

    let mut r = Reconciler::new(30, Capacity::default());
    r.sync(&model(TWO), &mut w, 100);
    r.sync(&model(&one_left), &mut w, 100);
    w.ops.clear();
    r.sync(&model(TWO), &mut w, 105);
    assert_eq!(w.ops, ["update TCP 10.96.0.10:80 #1 RoundRobin aff=0 [2=10.244.1.3:80/w1 1=10.244.1.2:80/w1]"]);
    assert_eq!(r.draining().count(), 0);
}

#[test]
fn terminating_backends_get_weight_zero_and_services_go() {
    let mut w = Recorder::default();
    let mut r = Reconciler::new(30, Capacity::default());
    r.sync(&model(TWO), &mut w, 100);
    w.ops.clear();
    let text = TWO.replace(r#"{ endpoint = "10.244.1.3:80" }"#, r#"{ endpoint = "10.244.1.3:80", state = "terminating" }"#);
    let first_only = &text[..text.find("[[service]]\nvip = \"10.96.0.53\"").unwrap_or(text.len())];
    let (report, _) = r.sync(&model(first_only), &mut w, 100);
    assert_eq!((report.updated, report.removed), (1, 1));
    assert_eq!(
        w.ops,
        [
            "remove UDP 10.96.0.53:53 #2 WeightedRoundRobin aff=60 [3=10.244.2.2:53/w3]",
            "update TCP 10.96.0.10:80 #1 RoundRobin aff=0 [2=10.244.1.3:80/w0 1=10.244.1.2:80/w1]",
        ]
    );
}

#[test]
fn a_failing_service_keeps_its_state_and_others_still_apply() {
    let mut w = Recorder { failing: vec!["10.96.0.10".into()], ..Recorder::default() };
    let mut r = Reconciler::new(30, Capacity::default());
    let (report, errors) = r.sync(&model(TWO), &mut w, 100);
    assert_eq!(report.created, 1);
    let messages: Vec<String> = errors.iter().map(|e| crate::error_chain(e)).collect();
    assert_eq!(
        messages,
        ["service TCP 10.96.0.10:80: update failed; it keeps its previous state: the eBPF object has no map XVS_TEST: object and agent are from different builds"]
    );
    let applied: Vec<String> = r.applied().map(show).collect();
    assert_eq!(applied, ["UDP 10.96.0.53:53 #1 WeightedRoundRobin aff=60 [1=10.244.2.2:53/w3]"]);
}

#[test]
fn a_drain_s_start_is_pinned_and_forgotten_when_it_ends() {
    let mut r = Reconciler::new(30, Capacity::default());
    let mut w = Recorder::default();
    let both = model(TWO);
    r.sync(&both, &mut w, 100);
    let ep: std::net::SocketAddr = "10.244.1.3:80".parse().unwrap_or_else(|e| panic!("{e}"));
    let found = r.applied().flat_map(|e| e.backends.iter()).find(|b| std::net::SocketAddr::new(b.addr, b.port) == ep).map(|b| b.id);
    let Some(id) = found else { panic!("no backend {ep}") };
    let text = TWO.replacen("{ endpoint = \"10.244.1.3:80\" }, ", "", 1);
    assert_ne!(text, TWO);
    r.sync(&model(&text), &mut w, 200);
    assert_eq!(w.drains.get(&id), Some(&200), "drain start pinned");
    // A second sync does not restart the drain.
    r.sync(&model(&text), &mut w, 250);
    assert_eq!(w.drains.get(&id), Some(&200));
    // The backend comes back: the drain is over and its record goes.
    r.sync(&both, &mut w, 260);
    assert!(w.drains.is_empty(), "{:?}", w.drains);
    // Drained again, then removed once its flows are gone: the record goes with it.
    r.sync(&model(&text), &mut w, 300);
    assert_eq!(w.drains.get(&id), Some(&300));
    let (done, errors) = r.finish_drains(&HashMap::new(), &mut w, 301);
    assert!(errors.is_empty() && done == [(r.applied().next().map(|e| crate::model::ServiceId { vip: e.vip, port: e.port, proto: crate::model::Protocol::Tcp }).unwrap_or_else(|| panic!()), ep)], "{done:?}");
    assert!(w.drains.is_empty(), "{:?}", w.drains);
}

#[test]
fn leaving_backends_go_at_once_when_udp_or_idle_and_come_back_at_the_head() {
    const MIXED: &str = "[[service]]\nvip = \"10.96.0.10\"\nport = 80\nbackends = [{ endpoint = \"10.244.1.2:80\" }, { endpoint = \"10.244.1.3:80\" }, { endpoint = \"10.244.1.4:80\" }]\n\n[[service]]\nvip = \"10.96.0.53\"\nport = 53\nprotocol = \"udp\"\nbackends = [{ endpoint = \"10.244.2.2:53\" }, { endpoint = \"10.244.2.3:53\" }]\n";
    let mut w = Recorder { idle: vec![3], ..Recorder::default() };
    let mut r = Reconciler::new(30, Capacity::default());
    r.sync(&model(MIXED), &mut w, 100);
    w.ops.clear();
    // TCP: 10.244.1.3 (id 2) has a flow and drains, 10.244.1.4 (id 3) has none and goes; the
    // flows are counted once. UDP: 10.244.2.2 goes at once, as kube-proxy deletes UDP reals.
    let fewer = MIXED.replace(", { endpoint = \"10.244.1.3:80\" }, { endpoint = \"10.244.1.4:80\" }", "").replace("{ endpoint = \"10.244.2.2:53\" }, ", "");
    let (report, _) = r.sync(&model(&fewer), &mut w, 110);
    assert_eq!(report.draining.len(), 1);
    assert_eq!(
        w.ops,
        [
            "count flows",
            "update TCP 10.96.0.10:80 #1 RoundRobin aff=0 [2=10.244.1.3:80/w0 1=10.244.1.2:80/w1]",
            "update UDP 10.96.0.53:53 #2 RoundRobin aff=0 [5=10.244.2.3:53/w1]",
        ]
    );
    w.ops.clear();
    // Both come back: the draining one keeps its place (an edit), the removed one is added at
    // the head, as the kernel does; the removed ones' ids were given back and are reused.
    r.sync(&model(MIXED), &mut w, 120);
    assert_eq!(
        w.ops,
        [
            "zero Backend 3",
            "update TCP 10.96.0.10:80 #1 RoundRobin aff=0 [3=10.244.1.4:80/w1 2=10.244.1.3:80/w1 1=10.244.1.2:80/w1]",
            "zero Backend 4",
            "update UDP 10.96.0.53:53 #2 RoundRobin aff=0 [4=10.244.2.2:53/w1 5=10.244.2.3:53/w1]",
        ]
    );
}

#[test]
fn sctp_services_never_reach_the_ebpf_maps_and_are_not_drift() {
    let with_sctp = format!("{TWO}\n[[service]]\nvip = \"10.96.0.99\"\nport = 3868\nprotocol = \"sctp\"\nbackends = [{{ endpoint = \"10.244.3.2:3868\" }}]\n");
    let mut w = Recorder::default();
    let mut r = Reconciler::new(30, Capacity::default());
    let (report, errors) = r.sync(&model(&with_sctp), &mut w, 100);
    assert!(errors.is_empty());
    assert_eq!((report.created, report.unchanged), (2, 0));
    assert!(!w.ops.iter().any(|op| op.contains("10.96.0.99") || op.contains("SCTP")), "{:?}", w.ops);
    // An SCTP service leaving the model is no removal either.
    w.ops.clear();
    let (report, _) = r.sync(&model(TWO), &mut w, 101);
    assert_eq!((report.removed, report.unchanged), (0, 2));
    assert!(w.ops.is_empty(), "{:?}", w.ops);
    // It takes none of the maps' capacity: the two others fit in room for two.
    assert!(super::fit::check(&model(&with_sctp), &Capacity { services: 2, ..Capacity::default() }).is_ok());
    assert!(super::fit::check(&model(&with_sctp), &Capacity { services: 1, ..Capacity::default() }).is_err());
}

#[test]
fn a_change_of_reach_alone_rewrites_the_service_flags() {
    let mut w = Recorder::default();
    let mut r = Reconciler::new(30, Capacity::default());
    let text = |reach: &str| format!("[[service]]\nvip = \"10.1.0.1\"\nport = 30080\nreach = \"{reach}\"\nbackends = [{{ endpoint = \"10.244.2.2:8080\" }}]\n");
    r.sync(&model(&text("external")), &mut w, 100);
    w.ops.clear();
    let (report, errors) = r.sync(&model(&text("external-local")), &mut w, 101);
    assert!(errors.is_empty());
    assert_eq!((report.updated, report.unchanged), (1, 0), "{:?}", w.ops);
    assert_eq!(w.ops, ["update TCP 10.1.0.1:30080 #1 RoundRobin aff=0 [1=10.244.2.2:8080/w1]"]);
}
