//! The agent as users run it: `xvs run` in the node namespace serving real traffic from a
//! services file, `xvs list -n` and `xvs verify` reading the pinned maps, restarts, reloads,
//! graceful termination.
use std::{collections::BTreeMap, path::PathBuf};

use xvs::dataplane::Maps;
use xvs_common::SlotKey;
use xvs_integration::{
    agent::{eventually, list, write_services, xvs, Agent, Conn},
    topology::{Topology, NODE_IFACE},
};

const ECHO_PORT: u16 = 9000;

fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/xvs-test-{name}"))
}

fn config_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xvs-test-{name}.toml"))
}

fn http_backends(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{}:8080", Topology::backend_addr(i))).collect()
}

fn spread(topo: &Topology, requests: usize) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for n in 0..requests {
        let body = topo.client_get("http://10.96.0.10/").unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        *served.entry(body).or_insert(0) += 1;
    }
    served
}

#[test]
fn list_matches_ipvsadm_and_verify_catches_and_repair_fixes_drift() {
    let mut topo = Topology::create("xvs-ag1", 3);
    topo.start_http_backends();
    let config = config_path("ag1");
    let eps = http_backends(3);
    let backends: Vec<(&str, &str)> = eps.iter().map(|e| (e.as_str(), "")).collect();
    write_services(&config, "10.96.0.10", 80, &backends);
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin_dir("ag1"), &["--resync-interval", "2"]);

    let served = spread(&topo, 30);
    assert_eq!(served.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{served:?}");

    // Every request's connection was closed by the client (FIN): IPVS counts those as InActConn.
    let expected = "IP Virtual Server version 1.2.1 (size=262144)\n\
        Prot LocalAddress:Port Scheduler Flags\n  \
        -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
        TCP  10.96.0.10:80 rr\n  \
        -> 10.0.11.2:8080               Masq    1      0          10        \n  \
        -> 10.0.12.2:8080               Masq    1      0          10        \n  \
        -> 10.0.13.2:8080               Masq    1      0          10        \n";
    assert_eq!(list(&agent.pin_dir, &[]), expected);

    let stats = list(&agent.pin_dir, &["--stats"]);
    let conns: Vec<&str> = stats.lines().skip(3).map(|l| l.split_whitespace().rev().nth(4).unwrap_or_default()).collect();
    assert_eq!(conns, ["30", "10", "10", "10"], "{stats}");

    let pin = agent.pin_dir.to_string_lossy().into_owned();
    let cfg = config.to_string_lossy().into_owned();
    let verify = || xvs(&["verify", "--config", &cfg, "--pin-dir", &pin]);
    let ok = verify();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));

    // Someone deletes a slot of the live selection table behind the agent's back.
    {
        let mut maps = Maps::open_pinned(&agent.pin_dir).unwrap_or_else(|e| panic!("{e}"));
        let svc = maps.services.iter().next().and_then(Result::ok).map(|(_, v)| v).unwrap_or_else(|| panic!("no service"));
        maps.slots.remove(&SlotKey { svc_id: svc.svc_id, slot: svc.slot_base + 1 }).unwrap_or_else(|e| panic!("{e}"));
    }
    let drift = verify();
    let text = String::from_utf8_lossy(&drift.stdout);
    assert_eq!(drift.status.code(), Some(1), "{text}");
    assert!(text.contains("drift: TCP 10.96.0.10:80: selection table slot 1 is missing (want 10.0.12.2:8080)"), "{text}");

    // The agent's periodic resync repairs it.
    eventually(10, "the agent repairs the drift", || verify().status.success());
    assert!(agent.log().contains("drift: TCP 10.96.0.10:80: selection table slot 1 is missing"), "{}", agent.log());
    assert_eq!(spread(&topo, 3).len(), 3);
}
