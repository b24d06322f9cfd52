//! The demo behind `cargo xtask demo`: kube-proxy's IPVS walkthrough on one machine. Three HTTP
//! backends in their own network namespaces, one service VIP 10.96.0.10:80 (rr) served by the
//! xvs datapath (XDP ingress DNAT + TC egress reverse NAT) on the node namespace, 30 requests
//! from a client namespace.
use std::collections::BTreeMap;

use xvs::dataplane::from_map_addr;
use xvs_common::{Reason, Scheduler};
use xvs_integration::topology::{serve_vip, Topology, BACKEND_PORT, CLIENT_ADDR, NODE_IFACE};

const PREFIX: &str = "xvs-demo";
const BACKENDS: usize = 3;
const VIP: &str = "10.96.0.10:80";

fn main() {
    // `--clean`: only remove what an interrupted run left behind (`cargo xtask demo` calls this
    // after every run, Ctrl-C included).
    if std::env::args().nth(1).as_deref() == Some("--clean") {
        Topology::clean(PREFIX, BACKENDS);
        return;
    }
    println!("== xvs demo: one VIP, three HTTP backends, all in network namespaces on this machine");
    println!("-- creating namespaces {PREFIX}-client, {PREFIX}-node, {PREFIX}-be1..3 (veth pairs, 10.0.0.0/16 inside them only)");
    let mut topo = Topology::create(PREFIX, BACKENDS);
    println!("-- starting an HTTP server (python3 http.server) in each backend namespace on :{BACKEND_PORT}");
    topo.start_http_backends();

    println!("-- loading the datapath in {PREFIX}-node: service TCP {VIP} rr over the three backends,");
    println!("   XDP (driver mode) and TC egress attached to {NODE_IFACE}");
    let (dp, svc) = serve_vip(&topo, VIP);

    println!("-- 30 requests: curl http://10.96.0.10/ from {CLIENT_ADDR} in {PREFIX}-client");
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    for n in 1..=30 {
        match topo.client_get("http://10.96.0.10/") {
            Ok(body) => {
                println!("   request {n:2}: {body}");
                *served.entry(body).or_default() += 1;
            }
            Err(e) => println!("   request {n:2}: FAILED: {e}"),
        }
    }
    println!("-- requests served per backend:");
    for (backend, n) in &served {
        println!("   {backend}: {n}");
    }

    println!("-- dataplane read back from the BPF maps (per-CPU counters summed):");
    println!("   Prot LocalAddress:Port Scheduler        Conns   InPkts  OutPkts");
    let s = dp.maps.service_counters(1).unwrap_or_default();
    println!("   TCP  {VIP:<21} {:<9} {:>8} {:>8} {:>8}", Scheduler::RoundRobin.ipvs_name(), s.conns, s.in_pkts, s.out_pkts);
    for b in &svc.backends {
        let c = dp.maps.backend_counters(b.id).unwrap_or_default();
        let stored = dp.maps.backends.get(&b.id, 0).ok();
        let addr = stored.and_then(|v| from_map_addr(&v.addr, v.family)).map_or("?".into(), |a| a.to_string());
        println!("     -> {addr}:{:<15} {:>16} {:>8} {:>8}", b.port, c.conns, c.in_pkts, c.out_pkts);
    }
    let reasons = dp.maps.reason_counts().unwrap_or_default();
    let summary: Vec<String> = Reason::ALL
        .iter()
        .filter(|r| reasons[**r as usize] > 0)
        .map(|r| format!("{}={}", r.name(), reasons[*r as usize]))
        .collect();
    println!("   verdicts: {}", summary.join(" "));

    let ok = served.len() == 3 && served.values().all(|&n| n == 10);
    println!("-- cleaning up namespaces and servers");
    drop(dp);
    drop(topo);
    if ok {
        println!("== demo OK: rr spread 30 requests 10/10/10 across the backends");
    } else {
        println!("== demo FAILED: expected 10/10/10, got {served:?}");
        std::process::exit(1);
    }
}
