//! End to end in network namespaces: client -> node with XDP (ingress DNAT) and TC egress
//! (reverse NAT) attached -> three backend namespaces running real HTTP servers.
use std::collections::BTreeMap;

use xvs_common::Reason;
use xvs_integration::topology::{serve_vip, Topology};

#[test]
fn thirty_http_requests_to_the_vip_spread_10_10_10() {
    let mut topo = Topology::create("xvs-e2e", 3);
    topo.start_http_backends();

    let (dp, _svc) = serve_vip(&topo, "10.96.0.10:80");

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
