//! What an SRE breaks in ten minutes, with traffic running: a second agent on the same pins,
//! `xvs cleanup` under a live agent, an interface deleted and re-created under the running
//! agent and under a stopped one.
use std::{collections::BTreeMap, path::PathBuf};

use xvs_integration::{
    agent::{eventually, list, run_expecting_exit, write_services, xvs, Agent},
    topology::{Topology, NODE_IFACE},
};

fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/xvs-test-{name}"))
}

fn config(name: &str, backends: usize) -> PathBuf {
    let path = std::env::temp_dir().join(format!("xvs-test-{name}.toml"));
    let eps: Vec<String> = (1..=backends).map(|i| format!("{}:8080", Topology::backend_addr(i))).collect();
    let list: Vec<(&str, &str)> = eps.iter().map(|e| (e.as_str(), "")).collect();
    write_services(&path, "10.96.0.10", 8080, &list);
    path
}

/// Backends that answered `requests` requests to the VIP (port 8080: the services file's).
fn spread(topo: &Topology, requests: usize) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for n in 0..requests {
        let body = topo.client_get("http://10.96.0.10:8080/").unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        *served.entry(body).or_insert(0) += 1;
    }
    served
}

fn serves(topo: &Topology) -> bool {
    topo.client_get("http://10.96.0.10:8080/").is_ok()
}

#[test]
fn a_second_agent_is_refused_and_cleanup_refuses_under_a_live_agent_unless_forced() {
    let mut topo = Topology::create("xvs-sr1", 3);
    topo.start_http_backends();
    let config = config("sr1", 3);
    let pin = pin_dir("sr1");
    let pin_arg = pin.to_string_lossy().into_owned();
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &[]);
    assert_eq!(spread(&topo, 3).len(), 3);

    // A second agent on the same pin directory: refused at once, naming the first.
    let second = run_expecting_exit(&topo.ns("node"), &["--config", &config.to_string_lossy(), "--iface", NODE_IFACE, "--pin-dir", &pin_arg], 20);
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    assert!(said.contains(&format!("another xvs agent (pid {}) runs on the pin directory {pin_arg}", agent.pid())), "{said}");
    assert_eq!(spread(&topo, 3).len(), 3, "the refused agent touched nothing");

    // cleanup under the live agent: refused, naming it; nothing removed.
    let out = xvs(&["cleanup", "--pin-dir", &pin_arg]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains(&format!("an xvs agent (pid {}) runs on {pin_arg}", agent.pid())) && said.contains("--force"), "{said}");
    assert!(pin.join(xvs_common::MAP_CONNTRACK).exists());
    assert!(serves(&topo));

    // --force removes it; the agent notices within a second or two, pins and attaches again.
    let out = xvs(&["cleanup", "--force", "--pin-dir", &pin_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    agent.wait_log("was removed: re-created", 10);
    agent.wait_log("datapath attached to n0 again (its link pins were removed)", 10);
    eventually(10, "traffic is served again", || serves(&topo));
    assert!(list(&pin, &[]).contains("TCP  10.96.0.10:8080 rr"), "the maps are pinned again");
    // ... and holds the re-created directory: a second agent is still refused.
    let again = run_expecting_exit(&topo.ns("node"), &["--config", &config.to_string_lossy(), "--iface", NODE_IFACE, "--pin-dir", &pin_arg], 20);
    assert!(String::from_utf8_lossy(&again.stderr).contains("another xvs agent"), "{}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn a_re_created_interface_gets_the_datapath_back_running_or_restarted() {
    let mut topo = Topology::create("xvs-sr2", 2);
    topo.start_http_backends();
    let config = config("sr2", 2);
    let pin = pin_dir("sr2");
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &[]);
    assert_eq!(spread(&topo, 2).len(), 2);

    // Under the running agent: the interface goes away and comes back under its name.
    topo.recreate_client_link();
    agent.wait_log("datapath attached to n0 again", 10);
    eventually(10, "traffic is served through the new interface", || serves(&topo));
    assert_eq!(spread(&topo, 4).len(), 2);

    // While no agent runs: the pinned links are severed; the next agent replaces them.
    agent.kill9();
    topo.recreate_client_link();
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &[]);
    assert!(agent.log().contains("was severed (interface re-created); attaching anew"), "{}", agent.log());
    eventually(10, "traffic is served after the restart", || serves(&topo));
    assert_eq!(spread(&topo, 4).len(), 2);
}
