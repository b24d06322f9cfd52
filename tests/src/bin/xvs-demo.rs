//! The demo behind `cargo xtask demo`: kube-proxy's IPVS walkthrough on one machine, with the
//! xvs agent. Three HTTP backends in their own network namespaces, a services file with one
//! VIP 10.96.0.10:80 (rr), `xvs run` serving it in the node namespace (XDP ingress DNAT + TC
//! egress reverse NAT), 30 requests from a client namespace, then 30 more from a process in
//! the demo's cgroup, which the socket hooks send to a backend at connect (east-west: no packet
//! NAT), then `xvs list -n` and `xvs list -n --stats` as ipvsadm would print them.
use std::{collections::BTreeMap, path::PathBuf};

use xvs_integration::{
    agent::{list, xvs, xvs_bin, Agent},
    sockets::{run_in, TestCgroup},
    topology::{Topology, BACKEND_PORT, CLIENT_ADDR, NODE_IFACE},
};

const PREFIX: &str = "xvs-demo";
const BACKENDS: usize = 3;
const PIN_DIR: &str = "/sys/fs/bpf/xvs-demo";

fn main() {
    // `--clean`: only remove what an interrupted run left behind (`cargo xtask demo` calls this
    // after every run, Ctrl-C included).
    if std::env::args().nth(1).as_deref() == Some("--clean") {
        Topology::clean(PREFIX, BACKENDS);
        let _ = xvs(&["cleanup", "--pin-dir", PIN_DIR]);
        drop(TestCgroup::create(PREFIX));
        return;
    }
    println!("== xvs demo: one VIP, three HTTP backends, all in network namespaces on this machine");
    println!("-- creating namespaces {PREFIX}-client, {PREFIX}-node, {PREFIX}-be1..3 (veth pairs, 10.0.0.0/16 inside them only)");
    let mut topo = Topology::create(PREFIX, BACKENDS);
    println!("-- starting an HTTP server (python3 http.server) in each backend namespace on :{BACKEND_PORT}");
    topo.start_http_backends();

    let config = std::env::temp_dir().join("xvs-demo-services.toml");
    let backends: Vec<String> =
        (1..=BACKENDS).map(|i| format!("  {{ endpoint = \"{}:{BACKEND_PORT}\" }},", Topology::backend_addr(i))).collect();
    let text = format!(
        "# kube-proxy's example: service-nginx, ClusterIP 10.96.0.10:80, three pods\n\
         [[service]]\nvip = \"10.96.0.10\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"rr\"\nbackends = [\n{}\n]\n",
        backends.join("\n")
    );
    std::fs::write(&config, &text).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    println!("-- services file {}:", config.display());
    for line in text.lines() {
        println!("   {line}");
    }

    // Socket-level load balancing attaches to the root cgroup by default: the demo gives it a
    // cgroup of its own, so only the demo's processes are touched.
    let cgroup = TestCgroup::create(PREFIX);
    let cg = cgroup.path.to_string_lossy().into_owned();
    println!("-- starting the agent in {PREFIX}-node (socket hooks on the demo's cgroup {cg}):");
    println!("   {} run --config {} --iface {NODE_IFACE} --pin-dir {PIN_DIR} --socket-lb on --cgroup-root {cg} --cleanup", xvs_bin().display(), config.display());
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &PathBuf::from(PIN_DIR), &["--socket-lb", "on", "--cgroup-root", &cg, "--cleanup"]);
    for line in agent.log().lines().filter(|l| !l.contains("DEBUG")) {
        println!("   | {line}");
    }

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
    println!("-- requests served per backend (packet path: XDP DNAT on {NODE_IFACE}, TC reverse NAT):");
    for (backend, n) in &served {
        println!("   {backend}: {n}");
    }

    println!("-- east-west: 30 more requests from a process in the demo's cgroup (a pod's): the socket");
    println!("   hooks connect it to a backend directly, so its packets need no NAT");
    let mut east_west: BTreeMap<String, u32> = BTreeMap::new();
    for n in 1..=30 {
        let out = run_in(&cgroup, &topo.ns("client"), &["curl", "-sS", "--max-time", "5", "http://10.96.0.10/"]);
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            println!("   request {n:2}: {body}");
            *east_west.entry(body).or_default() += 1;
        } else {
            println!("   request {n:2}: FAILED: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    for (backend, n) in &east_west {
        println!("   {backend}: {n}");
    }

    println!("-- xvs list -n   (the live dataplane read back from the BPF maps, in ipvsadm's format)");
    print!("{}", list(&agent.pin_dir, &[]));
    println!("-- xvs list -n --stats   (Conns counts both kinds; packets and bytes only the packet path's)");
    print!("{}", list(&agent.pin_dir, &["--stats"]));

    let even = |m: &BTreeMap<String, u32>| m.len() == BACKENDS && m.values().all(|&n| n == 10);
    let ok = even(&served) && even(&east_west);
    println!("-- stopping the agent (SIGTERM; --cleanup detaches the datapath) and removing the namespaces");
    let stopped = agent.stop();
    drop(topo);
    drop(cgroup);
    if ok && stopped {
        println!("== demo OK: rr spread 30 requests 10/10/10 across the backends, by packet and by socket");
    } else {
        println!("== demo FAILED: expected 10/10/10 twice and a clean agent stop, got {served:?} and {east_west:?} (agent stopped cleanly: {stopped})");
        println!("agent log:\n{}", agent.log());
        std::process::exit(1);
    }
}
