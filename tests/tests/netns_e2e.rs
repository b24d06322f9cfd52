//! End to end in network namespaces: client -> node with XDP (ingress DNAT) and TC egress
//! (reverse NAT) attached -> three backend namespaces running real HTTP servers.
use std::collections::BTreeMap;

use aya::programs::{TcAttachType, XdpMode};
use xvs::dataplane::PROG_TC_EGRESS;
use xvs_common::{Reason, Scheduler, IPPROTO_TCP};
use xvs_integration::{
    load, service,
    topology::{enter_netns, Topology, BACKEND_PORT, NODE_IFACE},
};

#[test]
fn thirty_http_requests_to_the_vip_spread_10_10_10() {
    let mut topo = Topology::create("xvs-e2e", 3);
    topo.start_http_backends();

    // Attach inside the node namespace (this thread only).
    enter_netns(&topo.ns("node"));
    let mut dp = load();
    let backends: Vec<(u32, String, u32)> =
        (1..=3).map(|i| (i as u32, format!("{}:{BACKEND_PORT}", Topology::backend_addr(i)), 1)).collect();
    let refs: Vec<(u32, &str, u32)> = backends.iter().map(|(id, a, w)| (*id, a.as_str(), *w)).collect();
    dp.maps
        .apply_service(&service(1, "10.96.0.10:80", IPPROTO_TCP, Scheduler::RoundRobin, &refs))
        .unwrap_or_else(|e| panic!("{e}"));
    dp.attach_xdp(NODE_IFACE, XdpMode::Driver).unwrap_or_else(|e| panic!("{e}"));
    dp.attach_tc(NODE_IFACE, PROG_TC_EGRESS, TcAttachType::Egress).unwrap_or_else(|e| panic!("{e}"));

    let mut served = BTreeMap::new();
    for n in 0..30 {
        let body = topo.client_get("http://10.96.0.10/").unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        *served.entry(body).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, i32> = (1..=3).map(|i| (format!("backend-{i}"), 10)).collect();
    assert_eq!(served, expected);

    let reasons = dp.maps.reason_counts().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reasons[Reason::NewFlow as usize], 30, "{reasons:?}");
    assert!(reasons[Reason::ReplyNat as usize] >= 30, "{reasons:?}");
    assert_eq!(reasons[Reason::NoBackend as usize], 0);
    let svc = dp.maps.service_counters(1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(svc.conns, 30);
    drop(dp);
    drop(topo);
}
