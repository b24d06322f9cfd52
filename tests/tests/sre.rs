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
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &[]);
    assert!(agent.log().contains("was severed (interface re-created); attaching anew"), "{}", agent.log());
    eventually(10, "traffic is served after the restart", || serves(&topo));
    assert_eq!(spread(&topo, 4).len(), 2);

    // The kernel's link events, not the periodic check (an hour here), bring it back.
    agent.kill9();
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &["--link-check-interval", "3600"]);
    topo.recreate_client_link();
    agent.wait_log("datapath attached to n0 again", 5);
    eventually(10, "traffic is served through the new interface", || serves(&topo));
}

/// `n` services 10.96.0.1..n on port 8080, each over the topology's first backend.
fn services_text(n: usize) -> String {
    (1..=n).map(|i| format!("[[service]]\nvip = \"10.96.0.{i}\"\nport = 8080\nbackends = [{{ endpoint = \"{}:8080\" }}]\n", Topology::backend_addr(1))).collect()
}

/// Writes `text` in place (no rename), as a non-atomic editor or `>` redirection does.
fn write_in_place(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_empty_or_half_written_services_file_keeps_the_last_good_state() {
    let mut topo = Topology::create("xvs-sr3", 2);
    topo.start_http_backends();
    let config = config("sr3", 2);
    let pin = pin_dir("sr3");
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &["--watch-interval-ms", "300"]);
    assert_eq!(spread(&topo, 2).len(), 2);

    // Truncated to 0 bytes, as `> file` does before writing: refused, the service stays.
    write_in_place(&config, "");
    agent.wait_log("has no [[service]]", 10);
    assert!(agent.log().contains("keeping the last good state"), "{}", agent.log());
    assert_eq!(spread(&topo, 4).len(), 2, "still served by both backends");

    // A write in two parts with a pause (30 ms) well under the watch interval (300 ms): only the whole file
    // is applied (never its first half, which does not parse).
    let whole = services_text(2);
    let (first, rest) = whole.split_at(whole.len() / 2 + 3);
    write_in_place(&config, first);
    std::thread::sleep(std::time::Duration::from_millis(30));
    let mut f = std::fs::OpenOptions::new().append(true).open(&config).unwrap_or_else(|e| panic!("{e}"));
    std::io::Write::write_all(&mut f, rest.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    drop(f);
    eventually(10, "the whole file is applied", || list(&pin, &[]).contains("TCP  10.96.0.2:8080 rr"));
    assert!(!agent.log().contains("TOML parse error"), "a half-written file was read:\n{}", agent.log());

    // Removing every service takes saying so.
    write_in_place(&config, "service = []\n");
    eventually(10, "every service removed", || !list(&pin, &[]).contains("TCP "));
}

#[test]
fn a_desired_state_over_capacity_is_refused_whole_and_capacity_means_what_it_says() {
    let mut topo = Topology::create("xvs-sr4", 1);
    topo.start_http_backends();
    let config = std::env::temp_dir().join("xvs-test-sr4.toml");
    write_in_place(&config, &services_text(1));
    let pin = pin_dir("sr4");
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &["--watch-interval-ms", "100", "--max-services", "2", "--max-backends", "2"]);
    assert!(list(&pin, &[]).contains("TCP  10.96.0.1:8080 rr"));

    // Three services into a map sized for two: one error naming the flag, nothing applied.
    write_in_place(&config, &services_text(3));
    agent.wait_log("the desired state needs 3 services, the eBPF maps hold 2: raise --max-services", 10);
    let listed = list(&pin, &[]);
    assert!(listed.contains("10.96.0.1:8080") && !listed.contains("10.96.0.2:8080"), "applied in part:\n{listed}");
    assert_eq!(agent.log().matches("ERROR").count(), 1, "one error, not one per service:\n{}", agent.log());
    assert!(topo.client_get("http://10.96.0.1:8080/").is_ok(), "the last good state still serves");

    // --max-services 2 holds two services (and --max-backends 2 two backends): id 0 is
    // reserved inside, not taken from what the flag says.
    write_in_place(&config, &services_text(2));
    eventually(10, "two services fit", || list(&pin, &[]).contains("TCP  10.96.0.2:8080 rr"));
    assert!(!agent.log().contains("no free"), "{}", agent.log());
}

#[test]
fn a_drain_ends_on_time_however_often_the_agent_restarts() {
    use xvs_integration::agent::Conn;
    const ECHO: u16 = 9000;
    let mut topo = Topology::create("xvs-sr5", 2);
    topo.start_echo_backends(ECHO);
    let config = std::env::temp_dir().join("xvs-test-sr5.toml");
    // rr starts at the head of IPVS's list: the last added (backend-2, after backend-1).
    let (be1, be2) = (format!("{}:{ECHO}", Topology::backend_addr(2)), format!("{}:{ECHO}", Topology::backend_addr(1)));
    write_services(&config, "10.96.0.10", ECHO, &[(&be1, ""), (&be2, "")]);
    let pin = pin_dir("sr5");
    let flags = ["--drain-timeout", "4", "--flow-interval", "1", "--watch-interval-ms", "100"];
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &flags);
    // A long connection on be1 keeps its flow alive: only the timeout ends the drain.
    let mut long = Conn::open(&topo.ns("client"), "10.96.0.10", ECHO);
    assert_eq!(long.backend(), "backend-2");
    write_services(&config, "10.96.0.10", ECHO, &[(&be2, "")]);
    agent.wait_log("backend draining", 10);
    let started = std::time::Instant::now();
    // Restarts every 1.5 s, more often than the 4 s drain timeout: the drain still ends on
    // time, counted from when it started (the pinned record), not from each restart.
    loop {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        agent.kill9();
        agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &flags);
        let listed = list(&pin, &[]);
        if !listed.contains(&be1) {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the drain never ended across restarts:\n{listed}\n{}", agent.log());
    }
    assert!(started.elapsed() >= std::time::Duration::from_secs(3), "drained before its timeout with a live connection");
}

#[test]
fn a_restart_over_removed_pins_says_so_and_repairs_before_serving() {
    let mut topo = Topology::create("xvs-sr6", 3);
    topo.start_http_backends();
    let config = config("sr6", 3);
    let pin = pin_dir("sr6");
    // The periodic resync is an hour away: only the start-up check can repair.
    let flags = ["--resync-interval", "3600"];
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &flags);
    assert_eq!(spread(&topo, 3).len(), 3);
    agent.kill9();
    // While no agent runs, someone removes the selection-table and connection-table pins.
    for map in [xvs_common::MAP_SLOTS, xvs_common::MAP_CONNTRACK] {
        std::fs::remove_file(pin.join(map)).unwrap_or_else(|e| panic!("{map}: {e}"));
    }
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &flags);
    let log = agent.log();
    for map in [xvs_common::MAP_SLOTS, xvs_common::MAP_CONNTRACK] {
        assert!(log.contains(&format!("map not pinned (removed while no agent ran, or new in this version): created empty map=\"{map}\"")), "{map}:\n{log}");
    }
    assert!(log.contains("drift: TCP 10.96.0.10:8080: selection table slot 1 is missing") && log.contains("the adopted dataplane differed from the desired state; repaired"), "{log}");
    assert_eq!(spread(&topo, 3).len(), 3, "served right after the restart");
}

#[test]
fn foreign_or_damaged_pins_are_named_and_a_failed_start_detaches_nothing() {
    use xvs_integration::pins::{pin_foreign_map, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_PERCPU_ARRAY};
    let mut topo = Topology::create("xvs-sr7", 2);
    topo.start_http_backends();
    let config = config("sr7", 2);
    let pin = pin_dir("sr7");
    let pin_arg = pin.to_string_lossy().into_owned();
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &[]);
    assert_eq!(spread(&topo, 2).len(), 2);
    agent.kill9();
    let args = ["--config", &*config.to_string_lossy(), "--iface", NODE_IFACE, "--pin-dir", &pin_arg, "--dataplane", "ebpf"].map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Each damage in turn, restored after: (map, its foreign shape, what the error must say).
    // The stamp keeps its shape but says the maps are another build's: same layout, another
    // meaning (ABI 1: before Backend.last_weight and mh's slot fallbacks).
    let stamped = format!("the maps were made by a build whose maps mean other things (ABI 1; this build's is {})", xvs_common::ABI_VERSION);
    for (map, shape, said) in [
        (xvs_common::MAP_SERVICES, (BPF_MAP_TYPE_HASH, 40, 8, 16), "its keys are 40 bytes and values 8 bytes"),
        (xvs_common::MAP_BACKENDS, (BPF_MAP_TYPE_HASH, 4, 28, 16), "it is a Some(Hash) map, this build needs Array"),
        (xvs_common::MAP_REASONS, (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 3), "it has 3 entries"),
        (xvs_common::MAP_STAMP, (BPF_MAP_TYPE_ARRAY, 4, 8, 1), stamped.as_str()),
    ] {
        let path = pin.join(map);
        // The real map stays alive through this handle (bpffs has no rename) and is pinned back.
        let original = aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        pin_foreign_map(&path, shape.0, shape.1, shape.2, shape.3);
        if map == xvs_common::MAP_STAMP {
            let data = aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{e}"));
            let map = aya::maps::Map::from_map_data(data).unwrap_or_else(|e| panic!("{e}"));
            let mut stamp = aya::maps::Array::<_, u64>::try_from(map).unwrap_or_else(|e| panic!("{e}"));
            stamp.set(0, 1, 0).unwrap_or_else(|e| panic!("{e}"));
        }
        let out = run_expecting_exit(&topo.ns("node"), &args, 20);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&format!("the pinned map {map} under {pin_arg} is not this build's: {said}")) && err.contains("nothing was loaded or attached"), "{map}:\n{err}");
        let not_log: Vec<&str> = err.lines().filter(|l| !l.contains(" INFO ") && !l.contains(" WARN ") && !l.contains(" DEBUG ")).collect();
        assert_eq!(not_log.len(), 1, "one error line, not a verifier dump:\n{err}");
        assert_eq!(spread(&topo, 2).len(), 2, "{map}: the failed start took the datapath down");
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        original.pin(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    let _agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &[]);
    assert_eq!(spread(&topo, 2).len(), 2);
}

fn bpffs_mounted_on(dir: &str) -> bool {
    std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines().any(|l| l.split(' ').nth(1) == Some(dir) && l.split(' ').nth(2) == Some("bpf"))
}

#[test]
fn cleanup_unmounts_the_bpffs_xvs_mounted_and_no_other() {
    let mut topo = Topology::create("xvs-sr8", 1);
    topo.start_http_backends();
    let config = config("sr8", 1);
    // A pin directory whose parent is no bpffs: the agent mounts one there (and marks it).
    let mount = "/tmp/xvs-test-sr8-bpffs";
    while bpffs_mounted_on(mount) {
        let _ = std::process::Command::new("umount").arg(mount).status();
    }
    std::fs::create_dir_all(mount).unwrap_or_else(|e| panic!("{e}"));
    let pin = PathBuf::from(mount).join("pins");
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &[]);
    assert_eq!(spread(&topo, 1).len(), 1);
    assert!(bpffs_mounted_on(mount), "the agent mounted no bpffs on {mount}");
    agent.kill9();
    let out = xvs(&["cleanup", "--pin-dir", &pin.to_string_lossy()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("unmounted the bpffs xvs had mounted on {mount}")), "{said}");
    assert!(!bpffs_mounted_on(mount), "the bpffs xvs mounted is left behind");
    assert!(!serves(&topo), "the datapath is still attached");
    // The host's own bpffs (not mounted by xvs) stays, even with no pin directory left on it.
    let host = pin_dir("sr8");
    let mut agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &host, &[]);
    agent.kill9();
    let out = xvs(&["cleanup", "--pin-dir", &host.to_string_lossy()]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("unmounted"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(bpffs_mounted_on("/sys/fs/bpf"));
}

/// `tc filter show dev n0 <direction>` in namespace `netns`.
fn tc_filters(netns: &str, direction: &str) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .args(["tc", "filter", "show", "dev", NODE_IFACE, direction])
        .output()
        .unwrap_or_else(|e| panic!("tc: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kernels before 6.6 have no TCX: TC goes through netlink filters, which no pin holds.
#[test]
fn tc_through_netlink_filters_outlives_the_agent_is_adopted_and_goes_with_cleanup() {
    let mut topo = Topology::create("xvs-sr9", 2);
    topo.start_http_backends();
    let config = config("sr9", 2);
    let pin = pin_dir("sr9");
    let node = topo.ns("node");
    let netlink = ["--attach", "tc", "--tc-attach", "netlink"];
    let mut agent = Agent::start(&node, &config, NODE_IFACE, &pin, &netlink);
    assert_eq!(spread(&topo, 2).len(), 2);
    for (direction, program) in [("ingress", "xvs_tc_ingress"), ("egress", "xvs_tc_egress")] {
        let filters = tc_filters(&node, direction);
        assert!(filters.contains(program) && filters.contains("pref 1 ") && filters.contains("handle 0x5856"), "{direction}:\n{filters}");
    }
    // kill -9: the filters keep their programs, and traffic goes on.
    agent.kill9();
    assert_eq!(spread(&topo, 2).len(), 2);
    // A restart swaps its programs into the same filters: still one per direction, each now
    // running the new agent's program.
    let program_id = |direction: &str| tc_filters(&node, direction).split(" id ").nth(1).and_then(|r| r.split(' ').next()).map(str::to_owned);
    let before = (program_id("ingress"), program_id("egress"));
    let mut agent = Agent::start(&node, &config, NODE_IFACE, &pin, &netlink);
    let after = (program_id("ingress"), program_id("egress"));
    assert!(before.0.is_some() && before.1.is_some() && before.0 != after.0 && before.1 != after.1, "{before:?} -> {after:?}");
    for (direction, program) in [("ingress", "xvs_tc_ingress"), ("egress", "xvs_tc_egress")] {
        let filters = tc_filters(&node, direction);
        assert_eq!(filters.lines().filter(|l| l.contains(program)).count(), 1, "{filters}");
    }
    assert_eq!(spread(&topo, 4).len(), 2);
    // A re-created interface gets its filters back.
    topo.recreate_client_link();
    agent.wait_log("datapath attached to n0 again", 10);
    eventually(10, "traffic is served through the new interface", || serves(&topo));
    agent.kill9();
    // `xvs cleanup` (in the agent's network namespace) removes the filters as well as the pins.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{node}"))
        .args([std::env::var("XVS_BIN").unwrap_or_default().as_str(), "cleanup", "--pin-dir", &pin.to_string_lossy()])
        .output()
        .unwrap_or_else(|e| panic!("xvs cleanup: {e}"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains(&format!("removed xvs's TC filters from {NODE_IFACE}")), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!tc_filters(&node, "ingress").contains("xvs_tc_") && !tc_filters(&node, "egress").contains("xvs_tc_"));
    assert!(!serves(&topo), "the datapath still serves after cleanup");
}
