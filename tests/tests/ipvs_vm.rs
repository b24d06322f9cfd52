//! Tests against a real IPVS kernel. This machine's kernel has none, so they are ignored here
//! and run inside a VM booting Debian's kernel by `cargo xtask vm-test` (part of
//! `cargo xtask test`), with Debian's ipvsadm as the independent reader.
use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
};

use xvs::{
    ipvs::{IpvsClient, IpvsDest, IpvsError, IpvsService},
    view::{ipvsadm, Listing},
};

fn ipvsadm(args: &[&str]) -> String {
    let out = Command::new("ipvsadm").args(args).output().unwrap_or_else(|e| panic!("ipvsadm {args:?}: {e}"));
    assert!(out.status.success(), "ipvsadm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn svc(addr: &str, port: u16, scheduler: &str, flags: u32, timeout: u32) -> IpvsService {
    IpvsService { protocol: 6, addr: ip(addr), port, scheduler: scheduler.into(), flags, timeout }
}

fn dest(addr: &str, port: u16, weight: u32) -> IpvsDest {
    IpvsDest { addr: ip(addr), port, fwd_method: 0, weight, active_conns: 0, inactive_conns: 0 }
}

/// A client on an empty IPVS table, as after a reboot: xvs's record of its services goes too.
fn client() -> IpvsClient {
    let c = IpvsClient::connect().unwrap_or_else(|e| panic!("{e}"));
    c.flush().unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(RECORD);
    c
}

/// Where the agent records the IPVS services it made (default dummy link).
const RECORD: &str = "/run/xvs/ipvs-services-xvs-ipvs0";

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn client_writes_what_ipvsadm_lists_byte_for_byte() {
    let c = client();
    let info = c.info().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.version_string(), "1.2.1");

    let web = svc("10.96.0.10", 80, "rr", 0, 0);
    c.add_service(&web).unwrap_or_else(|e| panic!("{e}"));
    for (i, a) in ["10.244.1.3", "10.244.1.2", "10.244.2.7"].iter().enumerate() {
        c.add_dest(&web, &dest(a, 8080, 1 + i as u32 % 2)).unwrap_or_else(|e| panic!("{e}"));
    }
    let sticky = svc("10.96.0.11", 443, "sh", wire_flags(true, true), 10800);
    c.add_service(&sticky).unwrap_or_else(|e| panic!("{e}"));
    c.add_dest(&sticky, &dest("10.244.1.2", 8443, 3)).unwrap_or_else(|e| panic!("{e}"));
    let v6 = IpvsService { protocol: 17, ..svc("fd00::10", 53, "wrr", 0, 0) };
    c.add_service(&v6).unwrap_or_else(|e| panic!("{e}"));
    c.add_dest(&v6, &dest("fd00:1::2", 5353, 2)).unwrap_or_else(|e| panic!("{e}"));

    let services = c.services().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(services.len(), 3);
    assert!(services.contains(&sticky), "{services:?}");
    let listing = Listing::read_ipvs(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ipvsadm::list(&listing), ipvsadm(&["-L", "-n"]));

    // Addresses from several ranges: ipvsadm's order compares them as signed differences
    // (192.168.x and 172.16/12 before 10/8, fd00:: before 2001:db8::); byte for byte.
    let ranges = [("192.168.50.10", 30080), ("172.18.0.5", 80), ("10.96.0.12", 80), ("2001:db8::1", 80), ("fd00::20", 80)];
    for (vip, port) in ranges {
        let s = svc(vip, port, "rr", 0, 0);
        c.add_service(&s).unwrap_or_else(|e| panic!("{e}"));
        let reals: &[&str] = if vip.contains(':') { &["2001:db8:1::2", "fd00:1::3", "fd00:1::2"] } else { &["10.244.1.2", "192.168.7.2", "172.17.0.9"] };
        for r in reals {
            c.add_dest(&s, &dest(r, 8080, 1)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let listing = Listing::read_ipvs(&c).unwrap_or_else(|e| panic!("{e}"));
    let kernel = ipvsadm(&["-L", "-n"]);
    assert_eq!(ipvsadm::list(&listing), kernel);
    assert!(kernel.find("TCP  172.18.0.5:80").zip(kernel.find("TCP  10.96.0.10:80")).is_some_and(|(a, b)| a < b), "{kernel}");
    for (vip, port) in ranges {
        c.del_service(&svc(vip, port, "rr", 0, 0)).unwrap_or_else(|e| panic!("{e}"));
    }

    // Edits land in place; weight 0 drains.
    c.edit_dest(&web, &dest("10.244.1.3", 8080, 0)).unwrap_or_else(|e| panic!("{e}"));
    c.edit_service(&svc("10.96.0.10", 80, "wrr", 0, 0)).unwrap_or_else(|e| panic!("{e}"));
    let text = ipvsadm(&["-L", "-n"]);
    assert!(text.contains("TCP  10.96.0.10:80 wrr\n"), "{text}");
    assert!(text.contains("  -> 10.244.1.3:8080              Masq    0      0          0"), "{text}");
    c.del_dest(&web, &dest("10.244.1.3", 8080, 0)).unwrap_or_else(|e| panic!("{e}"));
    c.del_service(&v6).unwrap_or_else(|e| panic!("{e}"));
    let listing = Listing::read_ipvs(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ipvsadm::list(&listing), ipvsadm(&["-L", "-n"]));
}

fn wire_flags(persistent: bool, sh_port: bool) -> u32 {
    use xvs::ipvs::wire::{SVC_F_PERSISTENT, SVC_F_SCHED2};
    (if persistent { SVC_F_PERSISTENT } else { 0 }) | (if sh_port { SVC_F_SCHED2 } else { 0 })
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn kernel_errors_map_to_typed_errors_naming_the_object() {
    let c = client();
    let web = svc("10.96.0.10", 80, "rr", 0, 0);
    c.add_service(&web).unwrap_or_else(|e| panic!("{e}"));
    let again = c.add_service(&web);
    assert!(matches!(again, Err(IpvsError::Exists { .. })), "{again:?}");
    let unknown = c.add_service(&svc("10.96.0.12", 80, "nosuch", 0, 0));
    assert!(matches!(unknown, Err(IpvsError::NoScheduler { .. })), "{unknown:?}");
    let missing = c.del_dest(&web, &dest("10.244.9.9", 80, 1));
    assert!(matches!(missing, Err(IpvsError::NoDest { .. })), "{missing:?}");
    let no_service = c.edit_service(&svc("10.96.0.99", 80, "rr", 0, 0));
    let text = no_service.as_ref().map_err(ToString::to_string).err().unwrap_or_default();
    assert!(matches!(no_service, Err(IpvsError::NoService { .. })), "{no_service:?}");
    assert_eq!(text, "edit TCP 10.96.0.99:80: no such virtual service");
    // A dest dump of a service that does not exist is empty, not an error.
    assert_eq!(c.dests(&svc("10.96.0.98", 80, "rr", 0, 0)).map(|d| d.len()).ok(), Some(0));
}

/// `xvs list` prints ipvsadm's table byte for byte, in ipvsadm's own order.
fn assert_same_table(ipvsadm: &str, xvs: &str) {
    assert_eq!(ipvsadm, xvs, "ipvsadm:\n{ipvsadm}\nxvs:\n{xvs}");
}

/// `xvs run --dataplane ipvs` as a process in the VM.
struct Agent(std::process::Child);

impl Agent {
    fn start(config: &str) -> Self {
        Self::start_with(&["--dataplane", "ipvs", "--config", config], std::process::Stdio::null())
    }

    fn start_with(args: &[&str], stderr: std::process::Stdio) -> Self {
        let child = Command::new(std::env::var("XVS_BIN").unwrap_or_else(|_| "xvs".into()))
            .arg("run")
            .args(args)
            .args(["--watch-interval-ms", "100", "--flow-interval", "1"])
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("xvs run: {e}"));
        Self(child)
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our child.
        let _ = unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn xvs(args: &[&str]) -> std::process::Output {
    Command::new(std::env::var("XVS_BIN").unwrap_or_else(|_| "xvs".into())).args(args).output().unwrap_or_else(|e| panic!("xvs {args:?}: {e}"))
}

fn write(path: &str, text: &str) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{e}"));
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

const SERVICES: &str = r#"
[[service]]
vip = "10.96.0.10"
port = 80
backends = [{ endpoint = "10.244.1.2:8080" }, { endpoint = "10.244.1.3:8080" }, { endpoint = "10.244.2.7:8080", weight = 2 }]

[[service]]
vip = "10.96.0.11"
port = 443
scheduler = "sh"
flags = ["sh-port"]
session_affinity_timeout = 10800
backends = [{ endpoint = "10.244.1.2:8443", state = "terminating" }, { endpoint = "10.244.1.3:8443" }]

[[service]]
vip = "fd00::10"
port = 53
protocol = "udp"
scheduler = "wrr"
backends = [{ endpoint = "[fd00:1::2]:5353", weight = 3 }]
"#;

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn the_agent_mirrors_the_model_into_ipvs_like_kube_proxy_and_leaves_foreign_services_alone() {
    let c = client();
    // A service somebody else made with ipvsadm.
    ipvsadm(&["-A", "-t", "192.168.99.1:22", "-s", "wrr"]);
    ipvsadm(&["-a", "-t", "192.168.99.1:22", "-r", "192.168.99.2:22", "-m"]);
    let config = "/tmp/services.toml";
    write(config, SERVICES);
    let agent = Agent::start(config);
    eventually("the agent programs IPVS", || c.services().map(|s| s.len()).unwrap_or(0) == 4);

    let expected = "IP Virtual Server version 1.2.1 (size=4096)\n\
        Prot LocalAddress:Port Scheduler Flags\n  \
        -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
        TCP  192.168.99.1:22 wrr\n  \
        -> 192.168.99.2:22              Masq    1      0          0         \n\
        TCP  10.96.0.10:80 rr\n  \
        -> 10.244.1.2:8080              Masq    1      0          0         \n  \
        -> 10.244.1.3:8080              Masq    1      0          0         \n  \
        -> 10.244.2.7:8080              Masq    2      0          0         \n\
        TCP  10.96.0.11:443 sh (sh-fallback,sh-port) persistent 10800\n  \
        -> 10.244.1.2:8443              Masq    0      0          0         \n  \
        -> 10.244.1.3:8443              Masq    1      0          0         \n\
        UDP  [fd00::10]:53 wrr\n  \
        -> [fd00:1::2]:5353             Masq    3      0          0         \n";
    let ours = xvs(&["list", "-n", "--source", "ipvs"]);
    assert_eq!(String::from_utf8_lossy(&ours.stdout), expected, "{}", String::from_utf8_lossy(&ours.stderr));
    assert_same_table(&ipvsadm(&["-L", "-n"]), expected);
    // Every VIP is bound to the dummy link, so the node accepts the traffic for IPVS.
    let addrs = Command::new("ip").args(["addr", "show", "xvs-ipvs0"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    for vip in ["10.96.0.10/32", "10.96.0.11/32", "fd00::10/128"] {
        let all = Command::new("ip").args(["-br", "addr"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        assert!(addrs.contains(vip), "{vip} not on xvs-ipvs0:\n{addrs}\nall addresses:\n{all}");
    }

    // Edit: scheduler change in place, a backend leaves (no connections: deleted at once), the
    // IPv6 service goes (and its VIP with it). The foreign service stays.
    let edited = SERVICES
        .replace("port = 80\n", "port = 80\nscheduler = \"wrr\"\n")
        .replace("{ endpoint = \"10.244.1.3:8080\" }, ", "");
    let edited = &edited[..edited.find("[[service]]\nvip = \"fd00::10\"").unwrap_or(edited.len())];
    write(config, edited);
    eventually("the edit lands", || ipvsadm(&["-L", "-n"]).contains("TCP  10.96.0.10:80 wrr\n"));
    eventually("the IPv6 service goes", || !ipvsadm(&["-L", "-n"]).contains("fd00::10"));
    let text = ipvsadm(&["-L", "-n"]);
    assert!(!text.contains("10.244.1.3:8080"), "{text}");
    assert!(text.contains("TCP  192.168.99.1:22 wrr\n  -> 192.168.99.2:22"), "foreign service touched:\n{text}");
    let ours = xvs(&["list", "-n", "--source", "ipvs"]);
    assert_same_table(&text, &String::from_utf8_lossy(&ours.stdout));

    // Drift injected behind the agent's back is reported by `xvs verify`.
    agent.stop();
    let ok = xvs(&["verify", "--config", config, "--source", "ipvs"]);
    assert!(ok.status.success(), "{}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    ipvsadm(&["-d", "-t", "10.96.0.10:80", "-r", "10.244.1.2:8080"]);
    let drift = xvs(&["verify", "--config", config, "--source", "ipvs"]);
    let out = String::from_utf8_lossy(&drift.stdout);
    assert_eq!(drift.status.code(), Some(1), "{out}{}", String::from_utf8_lossy(&drift.stderr));
    assert!(out.contains("drift: ipvs: needs `ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1`"), "{out}");
    // A restarted agent repairs it.
    let agent = Agent::start(config);
    eventually("the agent repairs the drift", || xvs(&["verify", "--config", config, "--source", "ipvs"]).status.success());
    agent.stop();

    // `xvs cleanup` (after a stop that kept the services) removes xvs's services and VIPs only.
    let cleanup = xvs(&["cleanup"]);
    let said = String::from_utf8_lossy(&cleanup.stdout);
    assert!(cleanup.status.success(), "{said}{}", String::from_utf8_lossy(&cleanup.stderr));
    assert!(said.contains("ipvsadm -D -t 10.96.0.10:80"), "{said}");
    let text = ipvsadm(&["-L", "-n"]);
    assert!(!text.contains("10.96.0.1"), "xvs's services left behind by `xvs cleanup`:\n{text}");
    assert!(text.contains("TCP  192.168.99.1:22 wrr"), "foreign service removed:\n{text}");

    // --cleanup on stop removes xvs's services and VIPs; the foreign service stays.
    // (Wait for its "running" line: the table already matches, so verify cannot tell that the
    // agent has its signal handlers in place.)
    let log = std::fs::File::create("/tmp/cleanup.log").unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent::start_with(&["--dataplane", "ipvs", "--config", config, "--cleanup"], log.into());
    eventually("the agent runs", || std::fs::read_to_string("/tmp/cleanup.log").is_ok_and(|l| l.contains("running")));
    agent.stop();
    let text = ipvsadm(&["-L", "-n"]);
    assert!(!text.contains("10.96.0.1"), "xvs's services left behind:\n{text}");
    assert!(text.contains("TCP  192.168.99.1:22 wrr"), "foreign service removed:\n{text}");
    let addrs = Command::new("ip").args(["addr", "show", "xvs-ipvs0"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    assert!(!addrs.contains("10.96.0."), "VIPs left on xvs-ipvs0:\n{addrs}");
}

const OWNED: &str = r#"
[[service]]
vip = "10.96.0.10"
port = 80
backends = [{ endpoint = "10.244.1.2:8080" }, { endpoint = "10.244.1.3:8080" }]

[[service]]
vip = "192.168.50.10"
port = 30080
backends = [{ endpoint = "10.244.1.2:8080" }]
"#;

fn addrs_of(link: &str) -> String {
    Command::new("ip").args(["-br", "addr", "show", link]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn foreign_services_on_a_node_address_and_on_a_vip_survive_churn_restarts_and_cleanup() {
    let c = client();
    // The node's own address (where NodePorts are served), on a link of its own.
    let _ = Command::new("ip").args(["link", "del", "node0"]).output();
    sh(&["ip", "link", "add", "node0", "type", "dummy"]);
    sh(&["ip", "addr", "add", "192.168.50.10/24", "dev", "node0"]);
    sh(&["ip", "link", "set", "node0", "up"]);
    // An older xvs bound the node address to its dummy link and kept no record (the state the
    // issue found: the next sync deleted the operator's service on the node address).
    let _ = Command::new("ip").args(["link", "add", "xvs-ipvs0", "type", "dummy"]).output();
    let _ = Command::new("ip").args(["addr", "add", "192.168.50.10/32", "dev", "xvs-ipvs0"]).output();
    assert!(addrs_of("xvs-ipvs0").contains("192.168.50.10/32"), "{}", addrs_of("xvs-ipvs0"));
    // The operator's services: ssh on the node address, and another port of xvs's VIP.
    ipvsadm(&["-A", "-t", "192.168.50.10:22", "-s", "wrr"]);
    ipvsadm(&["-a", "-t", "192.168.50.10:22", "-r", "10.0.0.9:22", "-m"]);
    ipvsadm(&["-A", "-t", "10.96.0.10:8443", "-s", "rr"]);
    ipvsadm(&["-a", "-t", "10.96.0.10:8443", "-r", "10.0.0.9:8443", "-m", "-w", "3"]);
    let foreign = || (ipvsadm(&["-L", "-n", "-t", "192.168.50.10:22"]), ipvsadm(&["-L", "-n", "-t", "10.96.0.10:8443"]));
    let before = foreign();

    let config = "/tmp/owned.toml";
    write(config, OWNED);
    let mut agent = Agent::start(config);
    eventually("the agent programs IPVS", || c.services().map(|s| s.len()).unwrap_or(0) == 4);
    // The node address is not xvs's to bind (and an older xvs's binding goes); the VIP is.
    eventually("the node address leaves the dummy link", || !addrs_of("xvs-ipvs0").contains("192.168.50.10"));
    assert!(addrs_of("xvs-ipvs0").contains("10.96.0.10/32"), "{}", addrs_of("xvs-ipvs0"));
    assert!(addrs_of("node0").contains("192.168.50.10/24"), "{}", addrs_of("node0"));
    assert_eq!(
        std::fs::read_to_string(RECORD).unwrap_or_default().lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(),
        ["-t 10.96.0.10:80", "-t 192.168.50.10:30080"]
    );

    // Churn, with restarts in between: the VIP's service goes (its address with it), comes
    // back with another scheduler, the NodePort's backends change; the foreign services stay.
    let node_port_at = OWNED.find("[[service]]\nvip = \"192.168.50.10\"").unwrap_or(0);
    let steps: [(String, &[&str], usize); 4] = [
        (OWNED[..node_port_at].to_owned(), &["TCP  10.96.0.10:80 rr"], 1),
        (OWNED[node_port_at..].to_owned(), &["TCP  192.168.50.10:30080 rr"], 1),
        (OWNED.replace("port = 80\n", "port = 80\nscheduler = \"sh\"\n"), &["TCP  10.96.0.10:80 sh", "TCP  192.168.50.10:30080 rr"], 2),
        (OWNED.replace("[{ endpoint = \"10.244.1.2:8080\" }]", "[{ endpoint = \"10.244.3.3:8080\" }]"), &["TCP  10.96.0.10:80 rr", "-> 10.244.3.3:8080"], 2),
    ];
    for (i, (text, expected, services)) in steps.iter().enumerate() {
        write(config, text);
        eventually(&format!("step {i} lands"), || {
            let table = ipvsadm(&["-L", "-n"]);
            expected.iter().all(|e| table.contains(e)) && table.matches("TCP  ").count() == 2 + services
        });
        assert_eq!(foreign(), before, "step {i}: a foreign service was touched");
        if i % 2 == 1 {
            agent.stop();
            agent = Agent::start(config);
        }
    }
    let ok = xvs(&["verify", "--config", config, "--source", "ipvs"]);
    assert!(ok.status.success(), "{}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));

    // A service somebody else made where xvs wants one is reported and left alone: xvs lets
    // 10.96.0.10:80 go, an operator makes their own there, then xvs wants it back.
    write(config, &steps[1].0);
    eventually("xvs's 10.96.0.10:80 goes", || !ipvsadm(&["-L", "-n"]).contains("TCP  10.96.0.10:80 "));
    agent.stop();
    ipvsadm(&["-A", "-t", "10.96.0.10:80", "-s", "sh"]);
    write(config, OWNED);
    let said = xvs(&["verify", "--config", config, "--source", "ipvs"]);
    let out = String::from_utf8_lossy(&said.stdout);
    assert!(out.contains("TCP 10.96.0.10:80 exists but xvs did not make it"), "{out}");
    let log = std::fs::File::create("/tmp/foreign.log").unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent::start_with(&["--dataplane", "ipvs", "--config", config], log.into());
    eventually("the agent reports the foreign service", || std::fs::read_to_string("/tmp/foreign.log").is_ok_and(|l| l.contains("TCP 10.96.0.10:80: an IPVS service that xvs did not make is in the way")));
    assert!(ipvsadm(&["-L", "-n", "-t", "10.96.0.10:80"]).contains(" sh"), "taken over");
    agent.stop();

    // `xvs cleanup` removes xvs's services only.
    let cleanup = xvs(&["cleanup"]);
    assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
    let text = ipvsadm(&["-L", "-n"]);
    assert!(!text.contains("30080"), "{text}");
    assert!(text.contains("TCP  10.96.0.10:80 sh"), "{text}");
    assert_eq!(foreign(), before);
    let _ = Command::new("ip").args(["link", "del", "node0"]).output();
    c.flush().unwrap_or_else(|e| panic!("{e}"));
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// client ns (10.0.1.2) -- node (the VM's own namespace, IPVS) -- backend ns i (10.0.1i.2),
/// each backend serving `backend-<i>` with busybox httpd on :8080.
/// The backends' servers, stopped when the test ends, also by a panic: a server left running
/// holds its namespace, and the next test could not make its own.
struct Servers(Vec<std::process::Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for s in &mut self.0 {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn topology(backends: usize) -> Servers {
    let link = |ns: &str, inner: &str, inner_addr: &str, outer: &str, outer_addr: &str, gw: &str| {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer]);
        sh(&["ip", "-n", ns, "addr", "add", inner_addr, "dev", inner]);
        sh(&["ip", "-n", ns, "link", "set", inner, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", ns, "route", "add", "default", "via", gw]);
        sh(&["ip", "addr", "add", outer_addr, "dev", outer]);
        sh(&["ip", "link", "set", outer, "up"]);
    };
    // What an earlier test left (its veths go with its namespaces).
    for ns in ["client"].into_iter().chain(["be1", "be2", "be3", "be4"]) {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
    link("client", "c0", "10.0.1.2/24", "n0", "10.0.1.1/24", "10.0.1.1");
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap_or_else(|e| panic!("ip_forward: {e}"));
    let mut servers = Vec::new();
    for i in 1..=backends {
        let ns = format!("be{i}");
        link(&ns, "b0", &format!("10.0.{}.2/24", 10 + i), &format!("nb{i}"), &format!("10.0.{}.1/24", 10 + i), &format!("10.0.{}.1", 10 + i));
        let www = format!("/tmp/www{i}");
        std::fs::create_dir_all(&www).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(format!("{www}/index.html"), format!("backend-{i}\n")).unwrap_or_else(|e| panic!("{e}"));
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "httpd", "-f", "-p", &format!("10.0.{}.2:8080", 10 + i), "-h", &www])
            .spawn()
            .unwrap_or_else(|e| panic!("httpd: {e}"));
        servers.push(server);
    }
    Servers(servers)
}

/// Moves the calling thread into network namespace `ns` (setns affects only this thread).
fn enter_netns(ns: &str) -> Result<(), String> {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string())?;
    // SAFETY: setns on a valid fd; affects only this thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// One HTTP/1.0 GET of `/` from network namespace `netns` (or this one), in a thread that
/// enters it; the body (trimmed) or the error.
fn get(netns: Option<&str>, addr: &str) -> Result<String, String> {
    let netns = netns.map(str::to_owned);
    let addr = addr.to_owned();
    std::thread::spawn(move || -> Result<String, String> {
        use std::io::{Read, Write};
        if let Some(ns) = netns {
            enter_netns(&ns)?;
        }
        let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let mut s = std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).map_err(|e| format!("read {addr}: {e}"))?;
        let body = reply.split("\r\n\r\n").nth(1).ok_or_else(|| format!("no HTTP body from {addr}: {reply:?}"))?;
        Ok(body.trim().to_owned())
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}

fn sctp_socket() -> std::io::Result<socket2::Socket> {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::from(libc::IPPROTO_SCTP)))
}

/// SCTP servers in the backend namespaces of `topology(n)`: backend i accepts associations on
/// 10.0.1i.2:3868 and answers `backend-<i>`. Stopped, their threads joined, on drop: a thread
/// left in a namespace keeps it (and its veth) alive into the next test.
struct SctpServers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl SctpServers {
    fn start(backends: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (1..=backends)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || -> Result<(), String> {
                    use std::io::Write;
                    enter_netns(&format!("be{i}"))?;
                    let addr: SocketAddr = format!("10.0.{}.2:3868", 10 + i).parse().map_err(|e| format!("{e}"))?;
                    let listener = sctp_socket().map_err(|e| format!("SCTP socket (is the sctp module loaded?): {e}"))?;
                    listener.bind(&addr.into()).map_err(|e| format!("bind {addr}: {e}"))?;
                    listener.listen(16).map_err(|e| format!("listen {addr}: {e}"))?;
                    // accept(2) honours SO_RCVTIMEO: the stop flag is seen within 100 ms.
                    listener.set_read_timeout(Some(std::time::Duration::from_millis(100))).map_err(|e| e.to_string())?;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Ok((mut assoc, _)) = listener.accept() {
                            let _ = assoc.write_all(format!("backend-{i}\n").as_bytes());
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for SctpServers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if let Ok(Err(e)) = t.join() {
                eprintln!("SCTP server: {e}");
            }
        }
    }
}

/// One SCTP association from network namespace `netns` to `addr`: what the server said.
fn sctp_get(netns: &str, addr: &str) -> Result<String, String> {
    let (netns, addr) = (netns.to_owned(), addr.to_owned());
    std::thread::spawn(move || -> Result<String, String> {
        use std::io::Read;
        enter_netns(&netns)?;
        let sa: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let mut s = sctp_socket().map_err(|e| format!("SCTP socket: {e}"))?;
        s.connect_timeout(&sa.into(), std::time::Duration::from_secs(2)).map_err(|e| format!("SCTP connect {addr}: {e}"))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).map_err(|e| format!("SCTP read {addr}: {e}"))?;
        Ok(reply.trim().to_owned())
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}

/// The VIP over the three backends of `topology(3)`.
const THREE_BACKENDS: &str = "[[service]]\nvip = \"10.96.0.10\"\nport = 80\nbackends = [{ endpoint = \"10.0.11.2:8080\" }, { endpoint = \"10.0.12.2:8080\" }, { endpoint = \"10.0.13.2:8080\" }]\n";

/// Waits until the three backends of `topology(3)` answer directly.
fn backends_answer() {
    for i in 1..=3 {
        let addr = format!("10.0.{}.2:8080", 10 + i);
        eventually(&format!("backend {addr} answers"), || get(None, &addr).is_ok());
    }
}

/// 30 requests from the client namespace to the VIP land 10/10/10 (`context` explains a
/// failed request: the agent's log, say).
fn assert_served_10_10_10(context: impl Fn() -> String) {
    let mut served = std::collections::BTreeMap::new();
    for n in 0..30 {
        let body = get(Some("client"), "10.96.0.10:80").unwrap_or_else(|e| panic!("request {n}: {e}\n{}", context()));
        *served.entry(body).or_insert(0) += 1;
    }
    let expected: std::collections::BTreeMap<String, i32> = (1..=3).map(|i| (format!("backend-{i}"), 10)).collect();
    assert_eq!(served, expected);
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn ipvs_only_mode_serves_traffic_end_to_end_rr_10_10_10() {
    let _c = client();
    let _servers = topology(3);
    let config = "/tmp/e2e.toml";
    write(config, THREE_BACKENDS);
    let agent = Agent::start(config);
    backends_answer();
    eventually("the VIP is programmed", || ipvsadm(&["-L", "-n"]).contains("10.0.13.2:8080"));
    assert_served_10_10_10(String::new);
    // The kernel counted the connections (its stats estimator folds per-CPU counters every 2 s).
    eventually("IPVS counts 30 connections", || ipvsadm(&["-L", "-n", "--stats"]).contains("TCP  10.96.0.10:80                      30"));
    agent.stop();
}

/// SCTP, as kube-proxy's IPVS mode programs it: the mirror makes the virtual service, ipvsadm
/// and `xvs list` print it alike, associations spread rr 10/10/10, verify checks it and
/// cleanup removes it. (The eBPF datapath passes SCTP to the kernel: IPVS serves it.)
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn sctp_services_are_mirrored_into_ipvs_and_served_10_10_10() {
    let _c = client();
    let _servers = topology(3);
    let _sctp = SctpServers::start(3);
    let config = "/tmp/sctp.toml";
    let sctp = "[[service]]\nvip = \"10.96.0.10\"\nport = 3868\nprotocol = \"sctp\"\nbackends = [{ endpoint = \"10.0.11.2:3868\" }, { endpoint = \"10.0.12.2:3868\" }, { endpoint = \"10.0.13.2:3868\" }]\n";
    write(config, &format!("{THREE_BACKENDS}{sctp}"));
    let agent = Agent::start(config);
    eventually("the SCTP service is programmed", || ipvsadm(&["-L", "-n"]).contains("10.0.13.2:3868"));
    let listing = ipvsadm(&["-L", "-n"]);
    assert!(listing.contains("SCTP") && listing.contains("10.96.0.10:3868"), "{listing}");
    assert_same_table(&listing, &String::from_utf8_lossy(&xvs(&["list", "-n", "--source", "ipvs"]).stdout));

    let mut served = std::collections::BTreeMap::new();
    for n in 0..30 {
        let said = sctp_get("client", "10.96.0.10:3868").unwrap_or_else(|e| panic!("association {n}: {e}\n{}", ipvsadm(&["-L", "-n", "-c"])));
        *served.entry(said).or_insert(0) += 1;
    }
    let expected: std::collections::BTreeMap<String, i32> = (1..=3).map(|i| (format!("backend-{i}"), 10)).collect();
    assert_eq!(served, expected);

    let ok = xvs(&["verify", "--config", config, "--source", "ipvs"]);
    assert!(ok.status.success(), "{}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    agent.stop();
    let cleanup = xvs(&["cleanup"]);
    assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
    let left = ipvsadm(&["-L", "-n"]);
    assert!(!left.contains("3868"), "the SCTP service outlived `xvs cleanup`:\n{left}");
}

/// The connection count of `service`'s line in an ipvsadm-format `--stats` listing.
fn conns(stats: &str, service: &str) -> Option<u64> {
    stats.lines().find(|l| l.starts_with(service))?.split_whitespace().nth(2)?.parse().ok()
}

/// A listing without its connection columns (the dataplanes count their own connections).
fn without_conns(listing: &str) -> String {
    listing.lines().map(|l| if l.starts_with("  -> ") { l.split_whitespace().take(5).collect::<Vec<_>>().join(" ") } else { l.to_owned() }).collect::<Vec<_>>().join("\n")
}

/// Waits until the agent logging to `log` says `said`: the eBPF datapath's programs are verified
/// first (whether they then attach or not), which takes a while under emulation, and longer as
/// the programs grow. With `fail_on_error`, an error in the log ends the wait at once.
fn wait_for_agent(log: &str, said: &str, fail_on_error: bool) {
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !text().contains(said) {
        assert!(std::time::Instant::now() < deadline && !(fail_on_error && text().contains("error")), "the agent never said {said:?}:\n{}", text());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Debian 12's kernel (6.1, no TCX): the eBPF datapath (XDP in, TC egress through netlink
/// filters) serves the traffic while the IPVS mirror holds the same table; verify checks both.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn both_dataplanes_on_6_1_the_ebpf_datapath_serves_and_ipvs_mirrors_it() {
    let _c = client();
    let _servers = topology(3);
    let config = "/tmp/both.toml";
    write(config, THREE_BACKENDS);
    let pin = "/sys/fs/bpf/xvs-both";
    let log = std::fs::File::create("/tmp/both.log").unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent::start_with(&["--dataplane", "both", "--config", config, "--iface", "n0", "--pin-dir", pin], log.into());
    backends_answer();
    let said = || std::fs::read_to_string("/tmp/both.log").unwrap_or_default();
    wait_for_agent("/tmp/both.log", "running", true);
    assert!(said().contains("netlink filters (no TCX in this kernel)"), "{}", said());
    assert!(!said().contains("serving with kernel IPVS only"), "{}", said());
    // Before any traffic the two listings are the same, byte for byte, but for the title's
    // size: each dataplane names its own connection table's.
    let ebpf = xvs(&["list", "-n", "--pin-dir", pin]);
    let body = |listing: &str| listing.split_once('\n').map(|(_, rest)| rest.to_owned()).unwrap_or_default();
    assert_eq!(body(&String::from_utf8_lossy(&ebpf.stdout)), body(&ipvsadm(&["-L", "-n"])), "{}", String::from_utf8_lossy(&ebpf.stderr));

    assert_served_10_10_10(said);
    // The eBPF datapath served them: its counters have the 30 connections, IPVS's none.
    let stats = String::from_utf8_lossy(&xvs(&["list", "-n", "--stats", "--pin-dir", pin]).stdout).into_owned();
    assert_eq!(conns(&stats, "TCP  10.96.0.10:80"), Some(30), "{stats}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let kernel = ipvsadm(&["-L", "-n", "--stats"]);
    assert_eq!(conns(&kernel, "TCP  10.96.0.10:80"), Some(0), "{kernel}");
    // Both dataplanes match the file and each other; the tables agree but for the counts.
    let ok = xvs(&["verify", "--config", config, "--pin-dir", pin]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success() && out.contains("ebpf and ipvs"), "{out}{}", String::from_utf8_lossy(&ok.stderr));
    let ebpf = String::from_utf8_lossy(&xvs(&["list", "-n", "--pin-dir", pin]).stdout).into_owned();
    assert_eq!(without_conns(&body(&ebpf)), without_conns(&body(&ipvsadm(&["-L", "-n"]))));
    agent.stop();
    let cleanup = xvs(&["cleanup", "--pin-dir", pin]);
    assert!(String::from_utf8_lossy(&cleanup.stdout).contains("removed xvs's TC filters from n0"), "{}", String::from_utf8_lossy(&cleanup.stdout));
}

/// Debian 12's kernel (6.1) runs the socket hooks: a process in a cgroup of the test's, in a
/// pod's namespace, reaches the cluster IP by socket alone (IPVS off, no interface served).
#[test]
#[ignore = "needs the VM's older kernel: run by `cargo xtask vm-test`"]
fn socket_lb_on_6_1_serves_a_cluster_ip_by_socket_alone() {
    let _servers = topology(3);
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        sh(&["mount", "-t", "cgroup2", "none", "/sys/fs/cgroup"]);
    }
    let cgroup = "/sys/fs/cgroup/xvs-vm";
    std::fs::create_dir_all(cgroup).unwrap_or_else(|e| panic!("{e}"));
    let config = "/tmp/sock.toml";
    write(config, THREE_BACKENDS);
    let pin = "/sys/fs/bpf/xvs-sock";
    let log = std::fs::File::create("/tmp/sock.log").unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent::start_with(&["--dataplane", "ebpf", "--socket-lb", "on", "--cgroup-root", cgroup, "--config", config, "--pin-dir", pin], log.into());
    backends_answer();
    wait_for_agent("/tmp/sock.log", "running", true);
    let said = std::fs::read_to_string("/tmp/sock.log").unwrap_or_default();
    assert!(said.contains("socket-level load balancing attached"), "{said}");
    let mut served = std::collections::BTreeMap::new();
    for n in 0..30 {
        let script = format!("echo $$ > {cgroup}/cgroup.procs && exec /sbin/ip netns exec client wget -q -O - http://10.96.0.10/");
        let out = Command::new("sh").args(["-c", &script]).output().unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "request {n}: {}\n{said}", String::from_utf8_lossy(&out.stderr));
        *served.entry(String::from_utf8_lossy(&out.stdout).trim().to_owned()).or_insert(0) += 1;
    }
    let expected: std::collections::BTreeMap<String, i32> = (1..=3).map(|i| (format!("backend-{i}"), 10)).collect();
    assert_eq!(served, expected);
    let stats = String::from_utf8_lossy(&xvs(&["list", "-n", "--stats", "--pin-dir", pin]).stdout).into_owned();
    assert_eq!(conns(&stats, "TCP  10.96.0.10:80"), Some(30), "{stats}");
    agent.stop();
    let cleanup = xvs(&["cleanup", "--pin-dir", pin]);
    assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
    let _ = std::fs::remove_dir(cgroup);
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn auto_mode_serves_with_ipvs_alone_when_the_ebpf_datapath_cannot_attach() {
    let c = client();
    let config = "/tmp/auto.toml";
    write(config, "[[service]]\nvip = \"10.96.0.20\"\nport = 80\nbackends = [{ endpoint = \"10.0.11.2:8080\" }]\n");
    let log = std::fs::File::create("/tmp/auto.log").unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent::start_with(&["--config", config, "--iface", "nosuch0", "--pin-dir", "/sys/fs/bpf/xvs-auto"], log.into());
    wait_for_agent("/tmp/auto.log", "serving with kernel IPVS only", false);
    eventually("IPVS programmed", || c.services().is_ok_and(|s| s.iter().any(|x| x.port == 80 && x.addr == ip("10.96.0.20"))));
    agent.stop();
    let text = std::fs::read_to_string("/tmp/auto.log").unwrap_or_default();
    assert!(text.contains("serving with kernel IPVS only"), "{text}");
    assert!(text.contains("nosuch0"), "the notice names the failed attach: {text}");
}

/// Not a test: the IPVS half of `cargo xtask bench` (the VM is the only IPVS kernel here).
/// The same model synced into the BPF maps and into IPVS, timed in the same VM.
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench` in the IPVS VM"]
fn bench_full_sync_ipvs_mirror_against_bpf_maps() {
    use xvs_integration::bench::control;
    const N: u32 = 2_000;
    let _c = client();
    let (bpf_secs, ..) = control::full_sync(N);
    let model = control::model(N);
    let mut mirror = xvs::ipvs::mirror::IpvsMirror::open("xvs-ipvs0").unwrap_or_else(|e| panic!("{e}"));
    let start = std::time::Instant::now();
    let (ops, errors) = mirror.sync(&model).unwrap_or_else(|e| panic!("{e}"));
    let ipvs_secs = start.elapsed().as_secs_f64();
    assert!(errors.is_empty(), "{errors:?}");
    println!(
        "XVS-BENCH services={N} backends_each={} bpf_maps_full_sync_s={bpf_secs:.3} ipvs_full_sync_s={ipvs_secs:.3} ipvs_operations={} ratio_bpf_over_ipvs={:.3}",
        control::BACKENDS,
        ops.len(),
        bpf_secs / ipvs_secs
    );
}

/// The Kubernetes source into real IPVS: what kube-proxy's IPVS mode would program for a
/// ClusterIP + NodePort Service with ClientIP affinity and a terminating endpoint, read back by
/// Debian's ipvsadm; then a scale-down follows the watch.
#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn kubernetes_service_lands_in_ipvs_as_kube_proxy_programs_it() {
    use serde_json::json;
    let c = client();
    sh(&["ip", "link", "set", "lo", "up"]);
    let server = xvs_test_apiserver::ApiServer::start().unwrap_or_else(|e| panic!("{e}"));
    let apply = |v: serde_json::Value| server.apply(v).unwrap_or_else(|e| panic!("{e}"));
    apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "vm-node"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.10"}, {"type": "Hostname", "address": "vm-node"}]}}));
    apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080}],
            "selector": {"app": "web"}, "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
            "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}}));
    let slice = |endpoints: serde_json::Value| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-x7k2p", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "endpoints": endpoints, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    };
    let ep = |ip: &str, ready: bool, terminating: bool| json!({"addresses": [ip], "nodeName": "vm-node", "conditions": {"ready": ready, "serving": true, "terminating": terminating}});
    apply(slice(json!([ep("10.244.1.2", true, false), ep("10.244.1.3", true, false), ep("10.244.2.9", false, true)])));
    server.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig")).unwrap_or_else(|e| panic!("{e}"));
    // The node's own address on an interface of its own; NodePorts go on the interface
    // addresses inside --nodeport-addresses (other tests leave veths with addresses behind).
    let _ = Command::new("ip").args(["link", "del", "node0"]).output();
    sh(&["ip", "link", "add", "node0", "type", "dummy"]);
    sh(&["ip", "addr", "add", "192.168.50.10/24", "dev", "node0"]);
    let node_ports = ["--nodeport-addresses", "192.168.50.0/24"];
    let agent = Agent::start_with(
        &[&["--dataplane", "ipvs", "--kubeconfig", "/tmp/kubeconfig", "--node-name", "vm-node", "--debounce-ms", "50"][..], &node_ports].concat(),
        std::process::Stdio::null(),
    );
    eventually("the agent programs IPVS", || c.services().map(|s| s.len()).unwrap_or(0) == 2);

    let block = |vip: &str| {
        format!(
            "TCP  {vip} rr persistent 600\n  \
            -> 10.244.1.2:8080              Masq    1      0          0         \n  \
            -> 10.244.1.3:8080              Masq    1      0          0         \n  \
            -> 10.244.2.9:8080              Masq    0      0          0         \n"
        )
    };
    let header = "IP Virtual Server version 1.2.1 (size=4096)\n\
        Prot LocalAddress:Port Scheduler Flags\n  \
        -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n";
    // ipvsadm's order: 192.168.x before 10.x (see view/order.rs).
    let expected = format!("{header}{}{}", block("192.168.50.10:30080"), block("10.96.0.20:80"));
    assert_same_table(&ipvsadm(&["-L", "-n"]), &expected);
    let ours = xvs(&["list", "-n", "--source", "ipvs"]);
    assert_eq!(String::from_utf8_lossy(&ours.stdout), expected);
    let verify = xvs(&[&["verify", "--kubeconfig", "/tmp/kubeconfig", "--node-name", "vm-node", "--source", "ipvs"][..], &node_ports].concat());
    assert!(verify.status.success(), "{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));

    // The terminating pod is gone: its real server leaves both virtual services.
    apply(slice(json!([ep("10.244.1.2", true, false), ep("10.244.1.3", true, false)])));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ipvsadm(&["-L", "-n"]).contains("10.244.2.9") {
        assert!(std::time::Instant::now() < deadline, "the scale-down never landed:\n{}\nrequests: {:#?}", ipvsadm(&["-L", "-n"]), server.requests());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    agent.stop();
    let cleanup = xvs(&["cleanup"]);
    assert!(cleanup.status.success());
    assert_eq!(c.services().map(|s| s.len()).unwrap_or(99), 0);
    let _ = Command::new("ip").args(["link", "del", "node0"]).output();
}

/// One round of the differential test: the services, as a services file, after the changes.
fn differential_round(round: usize) -> String {
    // Backends by round (weight; None: not in the service): adds, removals, re-adds,
    // reweights, one added terminating (weight 0 from the start: mh gives it no bucket) and one
    // that terminates (drained to weight 0: mh keeps its buckets, and walks on from them).
    const PLAN: [[Option<&str>; 4]; 6] = [
        [Some("weight = 1"), Some("weight = 1"), Some("state = \"terminating\""), Some("weight = 2")],
        [Some("weight = 2"), None, Some("weight = 2"), Some("state = \"terminating\"")],
        [Some("weight = 3"), Some("weight = 1"), Some("weight = 3"), None],
        [Some("weight = 1"), Some("weight = 4"), None, Some("weight = 1")],
        [None, Some("weight = 2"), Some("weight = 2"), Some("weight = 6")],
        [None, None, Some("weight = 1"), Some("weight = 3")],
    ];
    let v4 = ["10.244.1.2", "172.16.5.9", "192.168.7.3", "10.244.2.2", "172.20.0.4", "192.168.9.9"];
    let v6 = ["fd00:1::2", "2001:db8:1::5", "fd00:1::9", "2001:db8:2::3", "fd00:2::4", "fd00:1::3"];
    // (vip, port, protocol, scheduler this round, sh-port)
    let switching = ["rr", "mh", "sh", "wrr"][round];
    let services = [
        ("10.96.0.1", 80, "tcp", "rr", false),
        ("10.96.0.2", 53, "udp", "wrr", false),
        ("10.96.0.3", 80, "tcp", "sh", false),
        ("10.96.0.4", 80, "tcp", "sh", true),
        ("10.96.0.5", 80, "tcp", "wrr", false),
        ("fd00::1", 80, "tcp", "wrr", false),
        ("fd00::2", 53, "udp", "sh", false),
        ("2001:db8::7", 443, "tcp", "rr", false),
        ("10.96.0.9", 80, "tcp", "mh", false),
        ("10.96.0.10", 53, "udp", "mh", true),
        ("fd00::9", 80, "tcp", "mh", false),
        ("10.96.0.7", 80, "tcp", switching, false),
        ("fd00::8", 53, "udp", switching, false),
    ];
    let mut text = String::new();
    for (vip, port, protocol, scheduler, sh_port) in services {
        let pool = if vip.contains(':') { v6 } else { v4 };
        let backends: Vec<String> = PLAN
            .iter()
            .zip(pool)
            .filter_map(|(rounds, addr)| rounds[round].map(|opts| (addr, opts)))
            .map(|(addr, opts)| {
                let ep = if addr.contains(':') { format!("[{addr}]:8080") } else { format!("{addr}:8080") };
                format!("{{ endpoint = \"{ep}\", {opts} }}")
            })
            .collect();
        let flags = match (sh_port, scheduler) {
            (true, "mh") => "flags = [\"mh-port\"]\n",
            (true, _) => "flags = [\"sh-port\"]\n",
            _ => "",
        };
        text.push_str(&format!(
            "[[service]]\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{protocol}\"\nscheduler = \"{scheduler}\"\n{flags}backends = [{}]\n\n",
            backends.join(", ")
        ));
    }
    // mh with most backends drained after the first round: long fallback walks, beyond the
    // datapath's inline hops (its walker program goes on as far as the kernel's walk).
    let many: Vec<String> = (1..=24)
        .map(|i| format!("{{ endpoint = \"10.244.3.{i}:8080\"{} }}", if round > 0 && i > 2 { ", state = \"terminating\"" } else { "" }))
        .collect();
    text.push_str(&format!("[[service]]\nvip = \"10.96.0.12\"\nport = 80\nscheduler = \"mh\"\nbackends = [{}]\n", many.join(", ")));
    text
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn ebpf_schedulers_choose_exactly_what_ipvs_chooses_flow_by_flow() {
    use xvs_integration::{differential::*, L4, Pkt};
    let c = client();
    // Frames written on dinj-in arrive on dinj; the VIPs are local (the mirror's dummy link),
    // the real servers are routed into a sink. Spoofed sources pass: no reverse-path filter.
    for cmd in [
        "ip link add dinj type veth peer name dinj-in",
        "ip link set dinj address 02:00:00:00:00:02 up",
        "ip link set dinj-in up",
        "ip link add dsink type dummy",
        "ip link set dsink up",
        "ip route add 10.244.0.0/16 dev dsink",
        "ip route add 172.16.0.0/12 dev dsink",
        "ip route add 192.168.0.0/16 dev dsink",
        "ip -6 route add fd00:1::/32 dev dsink",
        "ip -6 route add 2001:db8:1::/47 dev dsink",
    ] {
        sh(&cmd.split(' ').collect::<Vec<_>>());
    }
    for f in ["all", "default", "dinj"] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{f}/rp_filter"), "0").unwrap_or_else(|e| panic!("rp_filter {f}: {e}"));
    }
    let injector = Injector::open("dinj-in");
    let mut mirror = xvs::ipvs::mirror::IpvsMirror::open("xvs-diff0").unwrap_or_else(|e| panic!("{e}"));
    let mut dp = xvs_integration::load();
    let mut reconciler = xvs::sync::Reconciler::new(900, dp.maps.capacity);

    let (mut decisions, mut differing) = (0usize, Vec::new());
    let mut per_scheduler: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for round in 0..4 {
        let text = differential_round(round);
        let model = xvs::source::file::parse(&text, std::path::Path::new("round.toml")).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let (_, errors) = mirror.sync(&model).unwrap_or_else(|e| panic!("{e}"));
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        let now = xvs::sync::datapath_secs(&dp.maps).unwrap_or_else(|e| panic!("{e}"));
        let (_, errors) = reconciler.sync(&model, &mut dp.maps, now);
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        // mh's flags print under their own names, as ipvsadm prints them.
        let listing = Listing::read_ipvs(&c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ipvsadm::list(&listing), ipvsadm(&["-L", "-n"]), "round {round}");

        // The same new flows, in the same order, to both.
        let mut flows = Vec::new();
        for (s, svc) in model.services().enumerate() {
            let vip = SocketAddr::new(svc.id.vip, svc.id.port);
            let hashed = matches!(svc.scheduler, xvs_common::Scheduler::SourceHash | xvs_common::Scheduler::MaglevHash);
            let n = if hashed { 120 } else { 40 };
            for k in 0..n {
                let client = match svc.id.vip {
                    IpAddr::V4(_) => SocketAddr::new(IpAddr::from([198, 18 + round as u8, s as u8, k as u8]), 20000 + k as u16),
                    IpAddr::V6(_) => SocketAddr::new(IpAddr::from([0xfd99, 0, round as u16, s as u16, 0, 0, 0x10, k as u16]), 20000 + k as u16),
                };
                let l4 = if svc.id.proto == xvs::model::Protocol::Udp { L4::Udp } else { L4::TcpSyn };
                let frame = Pkt::new(l4, &client.to_string(), &vip.to_string()).bytes();
                injector.send(&frame);
                let ours = ebpf_choice(&mut dp, &frame);
                flows.push((client, vip, svc.scheduler.ipvs_name().to_owned() + if svc.sh_port { "+port" } else { "" }, ours));
            }
        }
        let mut kernel = kernel_choices();
        for _ in 0..50 {
            if flows.iter().all(|(c, v, _, _)| kernel.contains_key(&(*c, *v))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            kernel = kernel_choices();
        }
        for (client, vip, scheduler, ours) in flows {
            let theirs = kernel.get(&(client, vip)).copied();
            assert!(theirs.is_some() || ours.is_some(), "round {round}: neither dataplane scheduled {client} -> {vip}");
            decisions += 1;
            *per_scheduler.entry(scheduler.clone()).or_default() += 1;
            if theirs != ours {
                differing.push(format!("round {round} {scheduler} {vip} from {client}: ipvs {theirs:?}, ebpf {ours:?}"));
            }
        }
    }
    println!("differential: {decisions} decisions, {} differing, per scheduler {per_scheduler:?}", differing.len());
    assert!(differing.is_empty(), "{} of {decisions} decisions differ:\n{}", differing.len(), differing.join("\n"));
    assert!(decisions > 2000, "{decisions}");
    let _ = mirror.sync(&xvs::model::Model::default());
}
