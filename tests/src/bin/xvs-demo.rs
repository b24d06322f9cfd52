//! The demo behind `cargo xtask demo`: kube-proxy's IPVS walkthrough on one machine, with the
//! xvs agent. Three HTTP backends in their own network namespaces, a services file with one
//! VIP 10.96.0.10:80 (rr), `xvs run` serving it in the node namespace (XDP ingress DNAT + TC
//! egress reverse NAT), 30 requests from a client namespace, then `xvs list -n` and
//! `xvs list -n --stats` as ipvsadm would print them.
use std::{collections::BTreeMap, path::PathBuf};

use xvs_integration::{
    agent::{list, xvs, xvs_bin, Agent},
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

    println!("-- starting the agent in {PREFIX}-node:");
    println!("   {} run --config {} --iface {NODE_IFACE} --pin-dir {PIN_DIR} --cleanup", xvs_bin().display(), config.display());
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &PathBuf::from(PIN_DIR), &["--cleanup"]);
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
    println!("-- requests served per backend:");
    for (backend, n) in &served {
        println!("   {backend}: {n}");
    }

    println!("-- xvs list -n   (the live dataplane read back from the BPF maps, in ipvsadm's format)");
    print!("{}", list(&agent.pin_dir, &[]));
    println!("-- xvs list -n --stats");
    print!("{}", list(&agent.pin_dir, &["--stats"]));

    let ok = served.len() == BACKENDS && served.values().all(|&n| n == 10);
    println!("-- stopping the agent (SIGTERM; --cleanup detaches the datapath) and removing the namespaces");
    let stopped = agent.stop();
    drop(topo);
    if ok && stopped {
        println!("== demo OK: rr spread 30 requests 10/10/10 across the backends");
    } else {
        println!("== demo FAILED: expected 10/10/10 and a clean agent stop, got {served:?} (agent stopped cleanly: {stopped})");
        println!("agent log:\n{}", agent.log());
        std::process::exit(1);
    }
}
