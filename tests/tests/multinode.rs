//! Masquerading end to end across two nodes (tests/src/cluster.rs): an external client, node a
//! running the agent on its client, fabric and pod links, node b without xvs, a pod on each.
//! Node b has no route to the client, so a flow to its pod works only if node a masqueraded it.
use std::path::PathBuf;

use xvs::dataplane::Maps;
use xvs_common::Reason;
use xvs_integration::{
    agent::Agent,
    cluster::{Cluster, Family, NODE_A_IFACES, POD_PORT, V4, V6},
};

const NODE_PORT: u16 = 30080;
const NODE_PORT_LOCAL: u16 = 30081;
const NODE_PORT_BOTH: u16 = 30082;
const CLUSTER_PORT: u16 = 80;
const HAIRPIN_PORT: u16 = 81;
/// A long-lived TCP connection to the remote pod's echo server.
const NODE_PORT_ECHO: u16 = 30085;
const ECHO_POD_PORT: u16 = 9000;
/// UDP to a port the remote pod does not listen on.
const NODE_PORT_CLOSED: u16 = 30090;
const CLOSED_POD_PORT: u16 = 9999;

/// The services of both families, as kube-proxy would have them on node a.
fn services(f: &Family) -> String {
    let ep = |addr: &str| format!("{{ endpoint = \"{}\" }}", Family::endpoint(addr, POD_PORT));
    let svc = |vip: &str, port: u16, reach: &str, backends: &[&str]| {
        let list: Vec<String> = backends.iter().map(|b| ep(b)).collect();
        format!("[[service]]\nvip = \"{vip}\"\nport = {port}\nreach = \"{reach}\"\nbackends = [{}]\n\n", list.join(", "))
    };
    let closed = format!(
        "[[service]]\nvip = \"{}\"\nport = {NODE_PORT_CLOSED}\nprotocol = \"udp\"\nreach = \"external\"\nbackends = [{{ endpoint = \"{}\" }}]\n\n",
        f.node_a,
        Family::endpoint(f.pod_b1, CLOSED_POD_PORT)
    );
    let echo = format!(
        "[[service]]\nvip = \"{}\"\nport = {NODE_PORT_ECHO}\nreach = \"external\"\nbackends = [{{ endpoint = \"{}\" }}]\n\n",
        f.node_a,
        Family::endpoint(f.pod_b1, ECHO_POD_PORT)
    );
    [
        closed,
        echo,
        svc(f.node_a, NODE_PORT, "external", &[f.pod_b1]),
        svc(f.node_a, NODE_PORT_LOCAL, "external-local", &[f.pod_a1]),
        svc(f.node_a, NODE_PORT_BOTH, "external", &[f.pod_a1, f.pod_b1]),
        svc(f.cluster_ip, CLUSTER_PORT, "cluster", &[f.pod_b1]),
        svc(f.cluster_ip, HAIRPIN_PORT, "cluster", &[f.pod_a1]),
    ]
    .concat()
}

/// A cluster with both pods serving and the agent on node a (with `more` arguments).
fn start(name: &str, fabric_mtu: u32, more: &[&str]) -> (Cluster, Agent) {
    let mut cluster = Cluster::create(&format!("xvs-{name}"), fabric_mtu);
    cluster.start_pods();
    let config = std::env::temp_dir().join(format!("xvs-test-{name}.toml"));
    std::fs::write(&config, format!("{}{}", services(&V4), services(&V6))).unwrap_or_else(|e| panic!("{e}"));
    let agent = start_agent(&cluster, name, more);
    (cluster, agent)
}

/// `xvs run` on node a over the services file of `start`, with `more` arguments.
fn start_agent(cluster: &Cluster, name: &str, more: &[&str]) -> Agent {
    let config = std::env::temp_dir().join(format!("xvs-test-{name}.toml"));
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xvs-test-{name}"));
    let mut extra = vec!["--dataplane", "ebpf", "--cluster-cidr"];
    let cidrs = format!("{},{}", V4.cluster_cidr, V6.cluster_cidr);
    extra.push(&cidrs);
    for iface in &NODE_A_IFACES[1..] {
        extra.extend(["--iface", iface]);
    }
    extra.extend(more);
    Agent::start(&cluster.ns("a"), &config, NODE_A_IFACES[0], &pin_dir, &extra)
}

fn reasons(agent: &Agent) -> Vec<u64> {
    let maps = Maps::open_pinned(&agent.pin_dir).unwrap_or_else(|e| panic!("{e}"));
    maps.reason_counts().unwrap_or_else(|e| panic!("{e}")).to_vec()
}

fn ok(result: Result<String, String>, what: &str) -> String {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn node_port_to_a_remote_pod_is_masqueraded_to_the_nodes_fabric_address_v4_v6() {
    let (cluster, agent) = start("mn-np", 1500, &[]);
    for f in [&V4, &V6] {
        // The remote pod sees node a's fabric address, and answers through it.
        let url = Family::url(f.node_a, NODE_PORT, "/");
        for _ in 0..3 {
            assert_eq!(ok(cluster.get("client", &url), &url), format!("b1 {}", f.node_a_fabric));
        }
        // externalTrafficPolicy Cluster over both pods: the local one is masqueraded too (to
        // its link's address), as kube-proxy does, and both serve.
        let url = Family::url(f.node_a, NODE_PORT_BOTH, "/");
        let mut seen: Vec<String> = (0..4).map(|_| ok(cluster.get("client", &url), &url)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec![format!("a1 {}", f.node_a_pod_link), format!("b1 {}", f.node_a_fabric)]);
    }
    let r = reasons(&agent);
    assert!(r[Reason::Masquerade as usize] > 0 && r[Reason::Unmasquerade as usize] > 0, "{r:?}");
    assert_eq!(r[Reason::SnatPortsExhausted as usize] + r[Reason::SnatNoAddress as usize], 0, "{r:?}");
    drop(agent);
}

#[test]
fn external_traffic_policy_local_keeps_the_clients_address_v4_v6() {
    let (cluster, agent) = start("mn-local", 1500, &[]);
    for f in [&V4, &V6] {
        let url = Family::url(f.node_a, NODE_PORT_LOCAL, "/");
        assert_eq!(ok(cluster.get("client", &url), &url), format!("a1 {}", f.client));
    }
    drop(agent);
}

#[test]
fn cluster_ips_masquerade_outsiders_and_hairpins_but_not_pods_v4_v6() {
    let (cluster, agent) = start("mn-cip", 1500, &[]);
    for f in [&V4, &V6] {
        let url = Family::url(f.cluster_ip, CLUSTER_PORT, "/");
        // From outside the cluster CIDR: masqueraded (the remote pod could not answer otherwise).
        assert_eq!(ok(cluster.get("client", &url), &url), format!("b1 {}", f.node_a_fabric));
        // From a pod: its own address, routed back over the fabric.
        assert_eq!(ok(cluster.get("a1", &url), &url), format!("b1 {}", f.pod_a1));
        // Hairpin: the pod reaches itself through the cluster IP, masqueraded to its link's
        // address, and the answer comes from the cluster IP.
        let url = Family::url(f.cluster_ip, HAIRPIN_PORT, "/");
        assert_eq!(ok(cluster.get("a1", &url), &url), format!("a1 {}", f.node_a_pod_link));
    }
    drop(agent);
}

/// A masqueraded connection lives through the agent's collector (every second here: it must
/// never take a live flow's MASQ or UNMASQ entry), a kill -9 (the pinned datapath goes on
/// serving) and a restart that adopts the pins and writes the NAT settings again.
#[test]
fn a_masqueraded_connection_survives_the_collector_kill_9_and_a_restart_v4_v6() {
    use xvs_integration::agent::Conn;
    let (mut cluster, mut agent) = start("mn-restart", 1500, &["--flow-interval", "1"]);
    cluster.start_echo("b1", ECHO_POD_PORT);
    let mut conns: Vec<(Conn, String)> = [&V4, &V6].iter().map(|f| (Conn::open(&cluster.ns("client"), f.node_a, NODE_PORT_ECHO), format!("b1 {}", f.node_a_fabric))).collect();
    let check = |conns: &mut Vec<(Conn, String)>, line: &str| {
        for (conn, seen) in conns.iter_mut() {
            assert_eq!(conn.send(line), format!("{seen}:{line}"), "{line}");
        }
    };
    check(&mut conns, "before");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    check(&mut conns, "after-two-collections");
    agent.kill9();
    check(&mut conns, "agent-gone");
    let agent = start_agent(&cluster, "mn-restart", &["--flow-interval", "1"]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    check(&mut conns, "after-restart");
    let r = reasons(&agent);
    assert_eq!(r[Reason::SnatPortsExhausted as usize] + r[Reason::ConntrackFull as usize], 0, "{r:?}");
    drop(conns);
    drop(agent);
}

/// The remote pod's "port unreachable" about a masqueraded datagram is addressed to node a's
/// fabric address and quotes the datagram as it left node a. Node a sends it on to the client
/// and translates it back to the client's own datagram, so the client's connected UDP socket
/// hears ECONNREFUSED instead of waiting for an answer that never comes.
#[test]
fn a_remote_pods_port_unreachable_reaches_the_clients_socket_v4_v6() {
    const PROBE: &str = r#"
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
try:
    s.send(b"ping")
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"#;
    let (cluster, agent) = start("mn-icmp", 1500, &[]);
    for f in [&V4, &V6] {
        let out = xvs_integration::topology::sh(&["ip", "netns", "exec", &cluster.ns("client"), "python3", "-c", PROBE, f.node_a, &NODE_PORT_CLOSED.to_string()]);
        assert_eq!(out.trim(), "refused", "{}", f.node_a);
    }
    let r = reasons(&agent);
    assert!(r[Reason::IcmpErrorNat as usize] >= 4, "unmasqueraded and translated to the client, both families: {r:?}");
    drop(agent);
}

/// PMTU through the VIP: the fabric takes 1400-byte packets and the client sends full-size
/// segments to a NodePort whose pod is on the other node. Node a answers "fragmentation needed"
/// (IPv6: packet too big) for the DNATed segment before it is masqueraded, TC egress on the
/// client's link translates the quote back to the client's own packet, and the client's kernel
/// lowers its path MTU to the NodePort address.
#[test]
fn pmtu_through_a_node_port_to_a_remote_pod_across_a_1400_byte_fabric_v4_v6() {
    let (cluster, agent) = start("mn-pmtu", 1400, &[]);
    for f in [&V4, &V6] {
        let url = Family::url(f.node_a, NODE_PORT, "/");
        assert_eq!(ok(cluster.post("client", &url, 6000), &url), format!("b1 {} 6000", f.node_a_fabric));
        let route = xvs_integration::topology::sh(&["ip", "-n", &cluster.ns("client"), "route", "get", f.node_a]);
        assert!(route.contains("mtu 1400"), "{route}");
    }
    let r = reasons(&agent);
    assert!(r[Reason::IcmpErrorNat as usize] >= 2, "{r:?}");
    drop(agent);
}
