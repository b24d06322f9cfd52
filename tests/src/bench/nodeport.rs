//! NodePort to a backend on another node, end to end (the two-node topology of
//! tests/src/cluster.rs): client -> node a (DNAT + masquerade) -> fabric -> node b -> pod b1,
//! and back through node a. Each way implements the NodePort (TCP and UDP, externalTrafficPolicy
//! Cluster) as it would on node a: xvs (XDP ingress + TC egress on the client and fabric links,
//! masquerading in the datapath), kube-proxy's iptables mode (DNAT rules, KUBE-MARK-MASQ and
//! the KUBE-POSTROUTING MASQUERADE, conntrack) and its nftables mode (the same with a verdict
//! map, a mark and a masquerading chain).
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    sync::mpsc,
    thread::JoinHandle,
};

use xvs::{
    dataplane::{interface_addresses, NatSettings},
    model::{Backend, BackendState, Protocol, Reach, Service, ServiceId},
};

use super::{
    control,
    throughput::{http_rps, serve_with_xvs, udp_pps, Ends, Throughput, Way},
};
use crate::cluster::{Cluster, V4};

const HTTP_NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30090;
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;
/// Node a's links xvs serves: the client's and the fabric.
const SERVED: [&str; 2] = ["ac", "af"];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn node_port(port: u16, proto: Protocol, backend_port: u16) -> Service {
    Service {
        id: ServiceId { vip: ip(V4.node_a), port, proto },
        scheduler: xvs_common::Scheduler::RoundRobin,
        affinity_timeout: None,
        sh_port: false,
        source_ranges: Vec::new(),
        reach: Reach::External,
        backends: vec![Backend { addr: ip(V4.pod_b1), port: backend_port, weight: 1, state: BackendState::Active }],
    }
}

/// kube-proxy's masquerade glue for its iptables rules: every NodePort packet is marked, and
/// marked packets are masqueraded on their way out (KUBE-POSTROUTING, `--random-fully`).
fn iptables_rules(list: &[Service]) -> String {
    let mut marks = String::new();
    for s in list {
        let proto = s.id.proto.name().to_ascii_lowercase();
        let _ = writeln!(marks, "-A KUBE-SERVICES -d {}/32 -p {proto} -m {proto} --dport {} -j KUBE-MARK-MASQ", s.id.vip, s.id.port);
    }
    control::iptables_rules(list, None)
        .replace(":KUBE-MARK-MASQ - [0:0]\n", ":KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n")
        .replace("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n", &format!("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n{marks}"))
        .replace(
            "COMMIT\n",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
             -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n-A PREROUTING -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\nCOMMIT\n",
        )
}

/// The same for kube-proxy's nftables ruleset: each service chain marks, a postrouting chain
/// masquerades what is marked.
fn nft_rules(list: &[Service]) -> String {
    let rules = control::nft_rules(list);
    let mut out = String::new();
    for line in rules.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("  chain service-") {
            out.push_str("    meta mark set meta mark or 0x4000\n");
        }
    }
    let masquerading = "  chain masquerading {\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & 0x4000 == 0 return\n    meta mark set meta mark xor 0x4000\n    masquerade fully-random\n  }\n}\n";
    match out.rfind("}\n") {
        Some(end) => format!("{}{masquerading}", &out[..end]),
        None => out,
    }
}

/// Programs node a one way; the returned guard keeps xvs attached.
fn program(way: Way, cluster: &Cluster, list: Vec<Service>, snat_ports: RangeInclusive<u16>) -> Option<(mpsc::Sender<()>, JoinHandle<()>)> {
    let node = cluster.ns("a");
    match way {
        Way::Xvs => Some(serve_with_xvs(
            node,
            list,
            move |dp| {
                dp.maps.set_nat(&NatSettings { ports: snat_ports, ..NatSettings::default() }).unwrap_or_else(|e| panic!("{e}"));
                let served: Vec<String> = SERVED.iter().map(|s| (*s).to_owned()).collect();
                dp.maps.set_nat_addrs(&interface_addresses(&served)).unwrap_or_else(|e| panic!("{e}"));
            },
            &SERVED,
        )),
        Way::Iptables => {
            control::iptables_restore(&node, &iptables_rules(&list), &[]);
            None
        }
        Way::Nftables => {
            control::nft_load(&node, &nft_rules(&list));
            None
        }
    }
}

/// One way: a fresh two-node cluster, node a programmed (xvs masquerading to `snat_ports`),
/// measured, torn down.
pub fn measure(way: Way, snat_ports: RangeInclusive<u16>) -> Throughput {
    let cluster = Cluster::create("xvs-nptput", 1500);
    let list = vec![node_port(HTTP_NODE_PORT, Protocol::Tcp, HTTP_PORT), node_port(UDP_NODE_PORT, Protocol::Udp, UDP_PORT)];
    let guard = program(way, &cluster, list, snat_ports);
    let (node_a, pod) = (ip(V4.node_a), ip(V4.pod_b1));
    let ends = Ends {
        client_ns: cluster.ns("client"),
        backend_ns: cluster.ns("b1"),
        udp: (SocketAddr::new(node_a, UDP_NODE_PORT), SocketAddr::new(pod, UDP_PORT)),
        http: (SocketAddr::new(node_a, HTTP_NODE_PORT), SocketAddr::new(pod, HTTP_PORT)),
    };
    let throughput = Throughput { udp_pps: udp_pps(&ends), http_rps: http_rps(&ends) };
    if let Some((stop, handle)) = guard {
        let _ = stop.send(());
        let _ = handle.join();
    }
    drop(cluster);
    throughput
}
