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
    // This kernel has no IPVS: the default mode says so and serves with eBPF alone.
    let log = agent.log();
    assert!(log.contains("IPVS mirror off (IPVS is not available in this kernel: load ip_vs"), "{log}");

    // Every request's connection was closed by the client (FIN): IPVS counts those as InActConn.
    let expected = "IP Virtual Server version 1.2.1 (size=262144)\n\
        Prot LocalAddress:Port Scheduler Flags\n  \
        -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
        TCP  10.96.0.10:80 rr\n  \
        -> 10.0.11.2:8080               Masq    1      0          10        \n  \
        -> 10.0.12.2:8080               Masq    1      0          10        \n  \
        -> 10.0.13.2:8080               Masq    1      0          10        \n";
    assert_eq!(list(&agent.pin_dir, &[]), expected);

    // --rate: the title ipvsadm prints, and per-second rates of traffic sent while it measures.
    let pin_for_rate = agent.pin_dir.clone();
    let rate = std::thread::spawn(move || list(&pin_for_rate, &["--rate", "--interval-ms", "1500"]));
    let mut sent = 0;
    while !rate.is_finished() {
        spread(&topo, 1);
        sent += 1;
    }
    let rate = rate.join().unwrap_or_default();
    let lines: Vec<&str> = rate.lines().collect();
    assert_eq!(lines.get(1).copied(), Some("Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS"), "{rate}");
    let in_pps: u64 = lines.get(3).and_then(|l| l.split_whitespace().nth(3)).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(in_pps > 0, "no inbound packet rate measured: {rate}");

    let stats = list(&agent.pin_dir, &["--stats"]);
    let conns: Vec<&str> = stats.lines().skip(3).map(|l| l.split_whitespace().rev().nth(4).unwrap_or_default()).collect();
    let total = 30 + sent;
    let per_backend: u32 = conns[1..].iter().map(|c| c.parse::<u32>().unwrap_or(0)).sum();
    assert_eq!((conns[0].parse::<usize>().ok(), per_backend as usize), (Some(total), total), "{stats}");

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
    assert!(text.contains("drift: ebpf: TCP 10.96.0.10:80: selection table slot 1 is missing (want 10.0.12.2:8080)"), "{text}");

    // The agent's periodic resync repairs it.
    eventually(10, "the agent repairs the drift", || verify().status.success());
    assert!(agent.log().contains("drift: TCP 10.96.0.10:80: selection table slot 1 is missing"), "{}", agent.log());
    assert_eq!(spread(&topo, 3).len(), 3);
}

#[test]
fn established_connection_survives_kill_9_and_restart_on_the_same_backend() {
    let mut topo = Topology::create("xvs-ag2", 3);
    topo.start_echo_backends(ECHO_PORT);
    let config = config_path("ag2");
    let eps: Vec<String> = (1..=3).map(|i| format!("{}:{ECHO_PORT}", Topology::backend_addr(i))).collect();
    let backends: Vec<(&str, &str)> = eps.iter().map(|e| (e.as_str(), "")).collect();
    write_services(&config, "10.96.0.10", ECHO_PORT, &backends);
    let pin = pin_dir("ag2");
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &[]);

    // Two connections first, so the long-lived one lands on the second backend (rr), not on
    // the one a fresh agent would also pick first. IPVS's list has the last added (in address
    // order) destination at its head: backend-3, then backend-2, backend-1.
    let mut first = Conn::open(&topo.ns("client"), "10.96.0.10", ECHO_PORT);
    assert_eq!(first.backend(), "backend-3");
    let mut conn = Conn::open(&topo.ns("client"), "10.96.0.10", ECHO_PORT);
    assert_eq!(conn.send("before"), "backend-2:before");

    agent.kill9();
    // No agent: the pinned links and maps keep the datapath serving.
    assert_eq!(conn.send("while-down"), "backend-2:while-down");

    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &[]);
    assert!(agent.log().contains("adopted the pinned dataplane of a previous agent"), "{}", agent.log());
    assert!(agent.log().contains("unchanged=1"), "the restart rewrote the service:\n{}", agent.log());
    assert_eq!(conn.send("after"), "backend-2:after");
    assert_eq!(first.send("after"), "backend-3:after");
    // New flows continue the rotation where it was.
    let mut third = Conn::open(&topo.ns("client"), "10.96.0.10", ECHO_PORT);
    assert_eq!(third.backend(), "backend-1");

    // SIGTERM without --cleanup: the agent exits, the pinned datapath stays and keeps serving.
    let mut agent = agent;
    assert!(agent.stop(), "{}", agent.log());
    assert!(agent.log().contains("the pinned datapath keeps serving"), "{}", agent.log());
    assert!(pin.join(xvs_common::MAP_CONNTRACK).exists());
    assert_eq!(conn.send("after-stop"), "backend-2:after-stop");
    // `xvs cleanup` removes it: the datapath is detached.
    let out = xvs(&["cleanup", "--pin-dir", &pin.to_string_lossy()]);
    assert!(out.status.success() && !pin.exists(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn graceful_termination_and_reloads_move_new_flows_only() {
    let mut topo = Topology::create("xvs-ag3", 2);
    topo.start_echo_backends(ECHO_PORT);
    let config = config_path("ag3");
    // IPVS's rr starts at the head of its list, where the last added destination is: be1
    // (backend-2, added after backend-1 in address order) takes the first connection.
    let be1 = format!("{}:{ECHO_PORT}", Topology::backend_addr(2));
    let be2 = format!("{}:{ECHO_PORT}", Topology::backend_addr(1));
    write_services(&config, "10.96.0.10", ECHO_PORT, &[(&be1, ""), (&be2, "")]);
    let pin = pin_dir("ag3");
    // File watching is slowed right down in this test: SIGHUP alone must trigger the reloads,
    // until the last step, which checks the watcher.
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &["--watch-interval-ms", "600000", "--flow-interval", "1", "--drain-timeout", "600"]);
    let client = topo.ns("client");

    let mut long = Conn::open(&client, "10.96.0.10", ECHO_PORT);
    assert_eq!(long.backend(), "backend-2");

    // be1 terminating: new flows all go to be2, the old one stays on be1.
    write_services(&config, "10.96.0.10", ECHO_PORT, &[(&be1, "state = \"terminating\""), (&be2, "")]);
    agent.hup();
    agent.wait_log_count("services file loaded", 2, 10);
    for _ in 0..4 {
        assert_eq!(Conn::open(&client, "10.96.0.10", ECHO_PORT).backend(), "backend-1");
    }
    assert_eq!(long.backend(), "backend-2");

    // An invalid file is refused with its line; nothing changes.
    std::fs::write(&config, "[[service]]\nvip = \"10.96.0.10\"\nport = 9000\nbackends = [{ endpoint = \"10.0.11.2\" }]\n").unwrap_or_else(|e| panic!("{e}"));
    agent.hup();
    agent.wait_log("keeping the last good state", 10);
    assert!(agent.log().contains("line 4"), "{}", agent.log());
    assert_eq!(long.backend(), "backend-2");
    assert_eq!(Conn::open(&client, "10.96.0.10", ECHO_PORT).backend(), "backend-1");

    // be1 removed: it drains (weight 0, its established flow continues) while the flow lives.
    write_services(&config, "10.96.0.10", ECHO_PORT, &[(&be2, "")]);
    agent.hup();
    agent.wait_log("backend draining", 10);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let listed = list(&pin, &[]);
    assert!(listed.contains(&format!("  -> {be1:<28} Masq    0      1          0")), "{listed}");
    assert_eq!(long.backend(), "backend-2");

    // The flow ends (RST: closed flows die after 10 s, like IPVS's CLOSE state): the drain
    // completes and be1 leaves the dataplane.
    long.reset();
    agent.wait_log("backend drained and removed", 20);
    let listed = list(&pin, &[]);
    assert!(!listed.contains(&be1), "{listed}");

    // The watcher picks up an edit without a signal.
    drop(agent);
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &["--watch-interval-ms", "100"]);
    write_services(&config, "10.96.0.10", ECHO_PORT, &[(&be1, "weight = 3"), (&be2, "")]);
    agent.wait_log_count("services file loaded", 1, 10);
    eventually(5, "backend-2 back with weight 3", || list(&pin, &[]).contains(&format!("  -> {be1:<28} Masq    3 ")));
}

#[test]
fn tc_attach_mode_serves_through_pinned_tcx_links() {
    let mut topo = Topology::create("xvs-ag4", 3);
    topo.start_http_backends();
    let config = config_path("ag4");
    let eps = http_backends(3);
    let backends: Vec<(&str, &str)> = eps.iter().map(|e| (e.as_str(), "")).collect();
    write_services(&config, "10.96.0.10", 80, &backends);
    let pin = pin_dir("ag4");
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &["--attach", "tc"]);
    assert!(pin.join("links").join(format!("{NODE_IFACE}_tc_ingress")).exists());
    assert!(pin.join("links").join(format!("{NODE_IFACE}_tc_egress")).exists());
    assert!(!pin.join("links").join(format!("{NODE_IFACE}_xdp")).exists());
    let served = spread(&topo, 6);
    assert_eq!(served.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{served:?}");
    drop(agent);
}
