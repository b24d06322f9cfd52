//! Socket-level load balancing, end to end: `xvs run --dataplane ebpf --socket-lb on` with its
//! socket hooks on a cgroup of the test's own, and real clients in that cgroup, in a pod's
//! network namespace and in the node's, reaching a cluster IP that no packet path serves for
//! them: the connection goes to the backend when the socket connects (or sends), and the
//! socket still shows the VIP as its peer.
use std::{collections::BTreeMap, path::PathBuf};

use xvs::dataplane::Maps;
use xvs_common::{
    sock::{SockEvent, SOCK_EVENT_COUNT},
    Reason,
};
use serde_json::json;
use xvs_integration::{
    agent::{eventually, list, Agent},
    kube::{api_server_in, ready},
    sockets::{command_in, requests, run_in, spread, Answer, Mode, TestCgroup},
    topology::{Topology, NODE_IFACE},
};
use xvs_test_apiserver::fixture;

const PORT: u16 = 9100;

struct Family {
    vip: &'static str,
    /// The VIP as a socket reports its peer, without the port.
    shown: &'static str,
    backend: fn(usize) -> String,
}

const V4: Family = Family { vip: "10.96.0.10", shown: "10.96.0.10", backend: Topology::backend_addr };
const V6: Family = Family { vip: "fd00:96::10", shown: "[fd00:96::10]", backend: Topology::backend_addr6 };

impl Family {
    /// The VIP with a last group of `n` instead of 10 (another service of the family).
    fn vip_n(&self, n: u8) -> String {
        last_group(self.vip, n)
    }

    /// The VIP as a socket shows it, with a last group of `n`.
    fn shown_n(&self, n: u8) -> String {
        last_group(self.shown, n)
    }

    fn endpoint(&self, i: usize) -> String {
        let addr = (self.backend)(i);
        if addr.contains(':') { format!("[{addr}]:{PORT}") } else { format!("{addr}:{PORT}") }
    }
}

/// `addr` with its last "10" made `n`.
fn last_group(addr: &str, n: u8) -> String {
    let at = addr.rfind("10").unwrap_or_else(|| panic!("{addr}"));
    format!("{}{n}{}", &addr[..at], &addr[at + 2..])
}

/// A `[[service]]` of `vip:port` over backends 1..=3 with `weights` (None: the default, 1).
fn service(vip: &str, port: u16, fam: &Family, settings: &str, weights: [Option<u32>; 3]) -> String {
    let backends: Vec<String> = (1..=3)
        .map(|i| match weights[i - 1] {
            Some(w) => format!("{{ endpoint = \"{}\", weight = {w} }}", fam.endpoint(i)),
            None => format!("{{ endpoint = \"{}\" }}", fam.endpoint(i)),
        })
        .collect();
    format!("[[service]]\nvip = \"{vip}\"\nport = {port}\n{settings}\nbackends = [{}]\n\n", backends.join(", "))
}

struct Setup {
    topo: Topology,
    cgroup: TestCgroup,
    agent: Agent,
}

/// Three dual-stack backends, the agent on the node with `services`, socket hooks on a cgroup
/// of the test's own, IPVS off.
fn setup(name: &str, services: &str, extra: &[&str]) -> Setup {
    let mut topo = Topology::create(&format!("xvs-{name}"), 3);
    topo.add_ipv6();
    topo.start_name_backends(PORT);
    let cgroup = TestCgroup::create(&format!("xvs-test-{name}"));
    let config = std::env::temp_dir().join(format!("xvs-test-{name}.toml"));
    std::fs::write(&config, services).unwrap_or_else(|e| panic!("{e}"));
    let agent = start_agent(name, &topo, &cgroup, extra);
    agent.wait_log("socket-level load balancing attached", 10);
    Setup { topo, cgroup, agent }
}

/// `xvs run` for test `name` (its services file and pin directory), IPVS off, the socket hooks
/// on `cgroup`.
fn start_agent(name: &str, topo: &Topology, cgroup: &TestCgroup, extra: &[&str]) -> Agent {
    let config = std::env::temp_dir().join(format!("xvs-test-{name}.toml"));
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xvs-test-{name}"));
    let cg = cgroup.path.to_string_lossy().into_owned();
    let mut args = vec!["--dataplane", "ebpf", "--socket-lb", "on", "--cgroup-root", &cg];
    args.extend_from_slice(extra);
    Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin_dir, &args)
}

impl Setup {
    fn maps(&self) -> Maps {
        Maps::open_pinned(&self.agent.pin_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    fn events(&self) -> [u64; SOCK_EVENT_COUNT as usize] {
        self.maps().sock_event_counts().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The client namespaces: a pod's, and the node's own (host-network processes).
    fn clients(&self) -> [String; 2] {
        [self.topo.ns("client"), self.topo.ns("node")]
    }

    fn ask(&self, netns: &str, mode: Mode, vip: &str, port: u16, count: usize) -> Vec<Answer> {
        requests(Some(&self.cgroup), netns, mode, vip, port, count)
    }
}

fn even(n: usize) -> BTreeMap<String, usize> {
    (1..=3).map(|i| (format!("backend-{i}"), n)).collect()
}

/// The packet path's per-flow reasons: zero when every connection went by socket.
fn packet_path_flows(maps: &Maps) -> [u64; 4] {
    let r = maps.reason_counts().unwrap_or_else(|e| panic!("{e}"));
    [r[Reason::NewFlow as usize], r[Reason::Established as usize], r[Reason::Rescheduled as usize], r[Reason::ReplyNat as usize]]
}

#[test]
fn tcp_and_udp_from_a_pod_and_from_the_node_reach_a_cluster_ip_by_socket_alone_v4_v6() {
    let mut services = String::new();
    for fam in [&V4, &V6] {
        services += &service(fam.vip, 80, fam, "", [None; 3]);
        services += &service(fam.vip, 53, fam, "protocol = \"udp\"", [None; 3]);
    }
    let s = setup("sock1", &services, &[]);
    for fam in [&V4, &V6] {
        for netns in s.clients() {
            let tcp = s.ask(&netns, Mode::Tcp, fam.vip, 80, 30);
            assert_eq!(spread(&tcp, &format!("{}:80", fam.shown)), even(10), "TCP from {netns} to {}", fam.vip);
            let udp = s.ask(&netns, Mode::UdpConnected, fam.vip, 53, 30);
            assert_eq!(spread(&udp, &format!("{}:53", fam.shown)), even(10), "connected UDP from {netns} to {}", fam.vip);
            // One unconnected socket: every datagram goes to the backend its first went to, and
            // every reply comes from the VIP.
            let unconnected = s.ask(&netns, Mode::UdpUnconnected, fam.vip, 53, 6);
            let seen = spread(&unconnected, &format!("{}:53", fam.shown));
            assert_eq!(seen.values().copied().collect::<Vec<_>>(), [6], "unconnected UDP from {netns} to {}: {seen:?}", fam.vip);
        }
    }
    let maps = s.maps();
    assert_eq!(packet_path_flows(&maps), [0; 4], "no packet of these connections was NATed by the packet path");
    let events = s.events();
    // 2 families x 2 clients x (30 TCP + 30 connected UDP).
    assert_eq!(events[SockEvent::Connect as usize], 240, "{events:?}");
    assert_eq!(events[SockEvent::PeerRestored as usize], 240, "{events:?}");
    assert_eq!(events[SockEvent::DatagramNew as usize], 4, "{events:?}");
    assert_eq!(events[SockEvent::DatagramSticky as usize], 20, "{events:?}");
    assert!(events[SockEvent::ReplyRestored as usize] >= 24, "{events:?}");
    assert_eq!(events[SockEvent::NoBackend as usize] + events[SockEvent::TableFull as usize], 0, "{events:?}");
    // The connections are counted as IPVS counts them (the connection count; no packets).
    let listing = list(&s.agent.pin_dir, &["--stats"]);
    for (family, tcp, udp) in [("IPv4", "TCP  10.96.0.10:80", "UDP  10.96.0.10:53"), ("IPv6", "TCP  [fd00:96::10]:80", "UDP  [fd00:96::10]:53")] {
        let conns = |svc: &str| listing.lines().find(|l| l.starts_with(svc)).map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>());
        assert_eq!(conns(tcp), Some(vec!["60", "0", "0", "0", "0"]), "{family}: one connection per connect, no packets:\n{listing}");
        assert_eq!(conns(udp), Some(vec!["62", "0", "0", "0", "0"]), "{family}: and one per unconnected socket:\n{listing}");
    }
    // Every socket was closed: its translations went with it.
    let left: Vec<_> = maps.sock_nat.keys().collect();
    assert!(left.is_empty(), "released sockets left translations: {left:?}");
}

#[test]
fn wrr_sh_and_session_affinity_schedule_connections_as_for_packets_v4_v6() {
    let mut services = String::new();
    for fam in [&V4, &V6] {
        services += &service(&fam.vip_n(20), 80, fam, "scheduler = \"wrr\"", [Some(3), Some(2), Some(1)]);
        services += &service(&fam.vip_n(21), 80, fam, "scheduler = \"sh\"", [None; 3]);
        services += &service(&fam.vip_n(22), 80, fam, "session_affinity_timeout = 600", [None; 3]);
    }
    let s = setup("sock2", &services, &[]);
    for fam in [&V4, &V6] {
        let pod = s.topo.ns("client");
        let wrr = s.ask(&pod, Mode::Tcp, &fam.vip_n(20), 80, 60);
        let expected: BTreeMap<String, usize> = [("backend-1", 30), ("backend-2", 20), ("backend-3", 10)].map(|(b, n)| (b.to_owned(), n)).into();
        assert_eq!(spread(&wrr, &format!("{}:80", fam.shown_n(20))), expected, "wrr 3:2:1 to {}", fam.vip_n(20));
        // sh and affinity: each client (a namespace: a pod, or the node) keeps one backend.
        for netns in s.clients() {
            for n in [21, 22] {
                let vip = fam.vip_n(n);
                let answers = s.ask(&netns, Mode::Tcp, &vip, 80, 12);
                let seen = spread(&answers, &format!("{}:80", fam.shown_n(n)));
                assert_eq!(seen.len(), 1, "one backend for every connection from {netns} to {vip}: {seen:?}");
            }
        }
        // Affinity binds the namespace, not the connection: with a different client namespace
        // the rr underneath moves on, but the same namespace still gets its backend.
        let first = s.ask(&pod, Mode::Tcp, &fam.vip_n(22), 80, 1);
        let again = s.ask(&pod, Mode::Tcp, &fam.vip_n(22), 80, 3);
        assert!(again.iter().all(|a| a == &first[0]), "{first:?} then {again:?}");
    }
    assert_eq!(packet_path_flows(&s.maps()), [0; 4]);
}

#[test]
fn a_draining_backend_gets_no_new_connections_and_a_service_without_backends_refuses_v4_v6() {
    let mut services = String::new();
    for fam in [&V4, &V6] {
        services += &service(fam.vip, 80, fam, "", [None, Some(0), None]);
        services += &format!("[[service]]\nvip = \"{}\"\nport = 81\nbackends = []\n\n", fam.vip);
    }
    let s = setup("sock3", &services, &[]);
    for fam in [&V4, &V6] {
        for netns in s.clients() {
            let answers = s.ask(&netns, Mode::Tcp, fam.vip, 80, 30);
            let expected: BTreeMap<String, usize> = [("backend-1", 15), ("backend-3", 15)].map(|(b, n)| (b.to_owned(), n)).into();
            assert_eq!(spread(&answers, &format!("{}:80", fam.shown)), expected, "weight 0 takes no new connection ({netns}, {})", fam.vip);
            // No endpoints: refused at once, as kube-proxy's REJECT rule does.
            let refused = s.ask(&netns, Mode::Tcp, fam.vip, 81, 1);
            assert_eq!(refused, [Answer::Failed("ECONNREFUSED".into())], "{netns}, {}", fam.vip);
        }
    }
    let events = s.events();
    assert_eq!(events[SockEvent::NoBackend as usize], 4, "{events:?}");
    assert_eq!(packet_path_flows(&s.maps()), [0; 4]);
}

#[test]
fn hostns_only_translates_the_node_and_leaves_pods_to_the_packet_path() {
    let s = setup("sock4", &service(V4.vip, 80, &V4, "", [None; 3]), &["--socket-lb-hostns-only"]);
    let node = s.ask(&s.topo.ns("node"), Mode::Tcp, V4.vip, 80, 9);
    assert_eq!(spread(&node, "10.96.0.10:80"), even(3));
    assert_eq!(packet_path_flows(&s.maps())[0], 0);
    // The pod's connections keep the VIP and are served by the packet path on the node's
    // interface (the cluster IP's flows, DNATed there).
    let pod = s.ask(&s.topo.ns("client"), Mode::Tcp, V4.vip, 80, 9);
    assert_eq!(spread(&pod, "10.96.0.10:80"), even(3));
    assert_eq!(packet_path_flows(&s.maps())[0], 9, "the pod's flows went by the packet path");
    let events = s.events();
    assert_eq!(events[SockEvent::Connect as usize], 9, "{events:?}");
    assert!(events[SockEvent::OtherNamespace as usize] >= 9, "{events:?}");
}

#[test]
fn open_sockets_are_listed_as_connections_and_removed_when_released() {
    let s = setup("sock5", &service(V4.vip, 80, &V4, "", [None; 3]), &[]);
    // A connection held open, from the pod.
    let hold = "import socket,sys\ns=socket.create_connection(('10.96.0.10',80),3)\nprint(s.getpeername()[0],flush=True)\nsys.stdin.read()";
    let mut child = command_in(Some(&s.cgroup), &s.topo.ns("client"), &["python3", "-c", hold])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(line.trim(), "10.96.0.10");
    let listing = list(&s.agent.pin_dir, &[]);
    let active: Vec<&str> = listing.lines().filter(|l| l.contains("-> 10.0.1") && l.split_whitespace().nth(4) == Some("1")).collect();
    assert_eq!(active.len(), 1, "one backend has the open connection as ActiveConn:\n{listing}");
    assert_eq!(s.maps().sock_nat.keys().count(), 1);
    // Closing the socket (the process ends) releases its translation.
    drop(child.stdin.take());
    let _ = child.wait();
    xvs_integration::agent::eventually(5, "the released socket's translation is removed", || s.maps().sock_nat.keys().count() == 0);
    let listing = list(&s.agent.pin_dir, &[]);
    assert!(listing.lines().filter(|l| l.contains("-> 10.0.1")).all(|l| l.split_whitespace().nth(4) == Some("0")), "{listing}");
}

#[test]
fn socket_hooks_outlive_the_agent_are_adopted_by_the_next_and_go_with_cleanup() {
    let mut s = setup("sock6", &service(V4.vip, 80, &V4, "", [None; 3]), &[]);
    let (pod, node) = (s.topo.ns("client"), s.topo.ns("node"));
    assert_eq!(spread(&s.ask(&pod, Mode::Tcp, V4.vip, 80, 3), "10.96.0.10:80"), even(1));
    s.agent.kill9();
    // No agent: the pinned links keep the hooks, the pinned maps their services.
    assert_eq!(spread(&s.ask(&pod, Mode::Tcp, V4.vip, 80, 3), "10.96.0.10:80"), even(1));
    let again = start_agent("sock6", &s.topo, &s.cgroup, &[]);
    again.wait_log("socket-level load balancing adopted", 10);
    assert_eq!(spread(&s.ask(&node, Mode::Tcp, V4.vip, 80, 3), "10.96.0.10:80"), even(1), "served after the restart:\n{}", again.log());
    assert_eq!(s.events()[SockEvent::Connect as usize], 9, "one set of maps all along");
    // Another --cgroup-root: the next agent moves the hooks there.
    let mut moved = again;
    moved.kill9();
    let other = TestCgroup::create("xvs-test-sock6-other");
    let elsewhere = start_agent("sock6", &s.topo, &other, &[]);
    elsewhere.wait_log("the pinned socket hook is on another cgroup", 10);
    assert_eq!(spread(&requests(Some(&other), &node, Mode::Tcp, V4.vip, 80, 3), "10.96.0.10:80"), even(1));
    let left = s.ask(&node, Mode::Tcp, V4.vip, 80, 1);
    assert!(matches!(&left[..], [Answer::Failed(_)]), "the old cgroup is still translated: {left:?}");
    // Turned off: the next agent detaches the hooks it finds.
    let mut off = elsewhere;
    off.kill9();
    let config = std::env::temp_dir().join("xvs-test-sock6.toml");
    let quiet = Agent::start(&node, &config, NODE_IFACE, &s.agent.pin_dir, &["--dataplane", "ebpf", "--socket-lb", "off"]);
    quiet.wait_log("socket hooks of an earlier agent detached", 10);
    // Nothing translates the VIP now, and the node has no route to it.
    let refused = requests(Some(&other), &node, Mode::Tcp, V4.vip, 80, 1);
    assert!(matches!(&refused[..], [Answer::Failed(_)]), "{refused:?}");
    // Back on, then `xvs cleanup`: the hooks go with the pins.
    let mut on = quiet;
    on.kill9();
    let last = start_agent("sock6", &s.topo, &s.cgroup, &[]);
    last.wait_log("socket-level load balancing attached", 10);
    assert_eq!(spread(&s.ask(&node, Mode::Tcp, V4.vip, 80, 3), "10.96.0.10:80"), even(1));
    let mut last = last;
    last.kill9();
    let out = xvs_integration::agent::xvs(&["cleanup", "--pin-dir", &s.agent.pin_dir.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = s.ask(&node, Mode::Tcp, V4.vip, 80, 1);
    assert!(matches!(&after[..], [Answer::Failed(_)]), "still translated after cleanup: {after:?}");
}

/// From the Kubernetes API: service-nginx with internalTrafficPolicy Local, endpoints 1 and 2
/// on this node (node-a) and 3 on node-b. A pod's connections to the cluster IP stay on this
/// node's endpoints, by socket alone.
#[test]
fn internal_traffic_policy_local_keeps_a_pod_on_this_node_s_endpoints_from_the_kubernetes_api() {
    let mut topo = Topology::create("xvs-sock7", 3);
    topo.start_http_backends();
    let cgroup = TestCgroup::create("xvs-test-sock7");
    let server = api_server_in(&topo.ns("node"));
    let mut svc = fixture("service-nginx.json");
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    for object in [fixture("node-a.json"), svc, ready(&[1, 2, 3])] {
        server.apply(object).unwrap_or_else(|e| panic!("{e}"));
    }
    let kubeconfig = std::env::temp_dir().join("xvs-test-sock7.kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    let pin = PathBuf::from("/sys/fs/bpf/xvs-test-sock7");
    let cg = cgroup.path.to_string_lossy().into_owned();
    let args = ["--debounce-ms", "50", "--dataplane", "ebpf", "--socket-lb", "on", "--cgroup-root", &cg];
    let _agent = Agent::start_kube(&topo.ns("node"), &kubeconfig, "node-a", &[], NODE_IFACE, &pin, &args);
    eventually(10, "service-nginx is programmed with this node's two endpoints", || list(&pin, &[]).matches("Masq").count() == 2);
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..30 {
        let out = run_in(&cgroup, &topo.ns("client"), &["curl", "-sS", "--max-time", "5", "http://10.96.0.10/"]);
        assert!(out.status.success(), "request {n}: {}", String::from_utf8_lossy(&out.stderr));
        *served.entry(String::from_utf8_lossy(&out.stdout).trim().to_owned()).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, usize> = [("backend-1", 15), ("backend-2", 15)].map(|(b, n)| (b.to_owned(), n)).into();
    assert_eq!(served, expected, "node-b's endpoint takes no connection of this node's pods");
    let maps = Maps::open_pinned(&pin).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(packet_path_flows(&maps), [0; 4]);
}
