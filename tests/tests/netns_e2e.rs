//! End to end in network namespaces: client -> node with XDP (ingress DNAT) and TC egress
//! (reverse NAT) attached -> three backend namespaces running real HTTP servers.
use std::collections::BTreeMap;

use xvs_common::Reason;
use xvs_integration::topology::{serve_vip, sh, Topology};

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

/// PMTU discovery through the VIP. The node's end of the link to the backend takes 1400-byte
/// packets (the backend's end stays at 1500, so the backend still offers a 1460-byte MSS). The
/// client's full-size segments to the VIP meet that hop after DNAT, and the node answers
/// "fragmentation needed" quoting the DNATed segment (client -> backend). Only when TC egress
/// translates the quote back to client -> VIP does the client's kernel match it to its socket,
/// lower the path MTU to the VIP and get its request through; otherwise it resends full-size
/// segments until curl gives up.
#[test]
fn pmtu_discovery_through_the_vip_across_a_1400_byte_hop() {
    let mut topo = Topology::create("xvs-pmtu", 1);
    topo.start_http_backends();
    sh(&["ip", "-n", &topo.ns("node"), "link", "set", "nb1", "mtu", "1400"]);
    let (dp, _svc) = serve_vip(&topo, "10.96.0.10:80");

    // About 4 KB of request (the server ignores the query): segments of 1460 bytes.
    let url = format!("http://10.96.0.10/?pad={}", "x".repeat(4000));
    let body = topo.client_get(&url).unwrap_or_else(|e| panic!("the large request did not get through: {e}"));
    assert_eq!(body, "backend-1");
    let reasons = dp.maps.reason_counts().unwrap_or_else(|e| panic!("{e}"));
    assert!(reasons[Reason::IcmpErrorNat as usize] >= 1, "no ICMP error translated: {reasons:?}");
    // The client's kernel learned the smaller MTU for the VIP itself.
    let route = sh(&["ip", "-n", &topo.ns("client"), "route", "get", "10.96.0.10"]);
    assert!(route.contains("mtu 1400"), "{route}");
    drop(dp);
    drop(topo);
}
