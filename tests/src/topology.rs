//! A node with a client and HTTP backends, built from network namespaces and veth pairs:
//!
//! ```text
//!  client ns            node ns (xvs attached to n0)           backend ns i (i = 1..=n)
//!  c0 10.0.1.2/24 <---> n0 10.0.1.1/24
//!                       nb<i> 10.0.<10+i>.1/24  <--------------> b0 10.0.<10+i>.2/24, HTTP :8080
//! ```
//! Every address lives inside namespaces this module creates; dropping the topology deletes them.
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const CLIENT_ADDR: &str = "10.0.1.2";
pub const NODE_IFACE: &str = "n0";
pub const BACKEND_PORT: u16 = 8080;

/// The namespaces of one topology, named `<prefix>-client`, `<prefix>-node`, `<prefix>-be<i>`.
pub struct Topology {
    pub prefix: String,
    pub backends: usize,
    servers: Vec<Child>,
    dirs: Vec<PathBuf>,
}

/// Runs a command, panicking with its stderr if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Topology {
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn backend_addr(i: usize) -> String {
        format!("10.0.{}.2", 10 + i)
    }

    /// Removes any namespaces left behind by an earlier run with this prefix.
    pub fn clean(prefix: &str, backends: usize) {
        let mut names = vec![format!("{prefix}-client"), format!("{prefix}-node")];
        names.extend((1..=backends).map(|i| format!("{prefix}-be{i}")));
        for n in names {
            let _ = Command::new("ip").args(["netns", "del", &n]).stderr(Stdio::null()).status();
        }
    }

    pub fn create(prefix: &str, backends: usize) -> Self {
        Self::clean(prefix, backends);
        let t = Self { prefix: prefix.to_owned(), backends, servers: Vec::new(), dirs: Vec::new() };
        let (client, node) = (t.ns("client"), t.ns("node"));
        for ns in [&client, &node] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        t.link(&client, "c0", &format!("{CLIENT_ADDR}/24"), NODE_IFACE, "10.0.1.1/24", "10.0.1.1");
        for i in 1..=backends {
            let be = t.ns(&format!("be{i}"));
            sh(&["ip", "netns", "add", &be]);
            sh(&["ip", "-n", &be, "link", "set", "lo", "up"]);
            let gw = format!("10.0.{}.1", 10 + i);
            t.link(&be, "b0", &format!("{}/24", Self::backend_addr(i)), &format!("nb{i}"), &format!("{gw}/24"), &gw);
        }
        sh(&["ip", "netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        t
    }

    /// Deletes the client's veth pair (the node's `n0` with it) and creates it again, as a NIC
    /// driver reload or a re-created bond does: same name, new interface index.
    pub fn recreate_client_link(&self) {
        sh(&["ip", "-n", &self.ns("node"), "link", "del", NODE_IFACE]);
        self.link(&self.ns("client"), "c0", &format!("{CLIENT_ADDR}/24"), NODE_IFACE, "10.0.1.1/24", "10.0.1.1");
    }

    /// A veth pair from `ns` (the end with a default route via `gw`) to the node namespace.
    /// Transmit checksum offload is turned off on the `ns` end: frames then carry full
    /// checksums, which XDP needs (see ebpf/src/csum.rs) and which receivers verify, so the
    /// end-to-end traffic checks xvs's checksum updates too.
    fn link(&self, ns: &str, inner: &str, inner_addr: &str, outer: &str, outer_addr: &str, gw: &str) {
        let node = self.ns("node");
        sh(&["ip", "link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer, "netns", &node]);
        sh(&["ip", "-n", ns, "addr", "add", inner_addr, "dev", inner]);
        sh(&["ip", "-n", &node, "addr", "add", outer_addr, "dev", outer]);
        sh(&["ip", "-n", ns, "link", "set", inner, "up"]);
        sh(&["ip", "-n", &node, "link", "set", outer, "up"]);
        sh(&["ip", "-n", ns, "route", "add", "default", "via", gw]);
        sh(&["ip", "netns", "exec", ns, "ethtool", "-K", inner, "tx", "off"]);
    }

    /// Starts an HTTP server in every backend namespace answering `backend-<i>`, and waits until
    /// each one answers from the node namespace.
    pub fn start_http_backends(&mut self) {
        for i in 1..=self.backends {
            let dir = std::env::temp_dir().join(format!("{}-be{i}-www", self.prefix));
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(dir.join("index.html"), format!("backend-{i}\n")).unwrap_or_else(|e| panic!("{e}"));
            let child = Command::new("ip")
                .args(["netns", "exec", &self.ns(&format!("be{i}")), "python3", "-m", "http.server"])
                .args([&BACKEND_PORT.to_string(), "--bind", &Self::backend_addr(i), "--directory"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start python3 http.server: {e}"));
            self.servers.push(child);
            self.dirs.push(dir);
        }
        let node = self.ns("node");
        for i in 1..=self.backends {
            let url = format!("http://{}:{BACKEND_PORT}/", Self::backend_addr(i));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let ok = Command::new("ip")
                    .args(["netns", "exec", &node, "curl", "-sf", "--max-time", "1", &url])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "backend {i} did not start serving {url}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Starts a line echo server on `port` in every backend namespace: each line comes back as
    /// `backend-<i>:<line>`, so a long-lived connection shows which backend carries it.
    pub fn start_echo_backends(&mut self, port: u16) {
        const ECHO: &str = r#"
import socketserver, sys
class H(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(sys.argv[1].encode() + b":" + line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[2], int(sys.argv[3])), H).serve_forever()
"#;
        for i in 1..=self.backends {
            let child = Command::new("ip")
                .args(["netns", "exec", &self.ns(&format!("be{i}")), "python3", "-c", ECHO])
                .args([&format!("backend-{i}"), &Self::backend_addr(i), &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start the echo server: {e}"));
            self.servers.push(child);
        }
        let node = self.ns("node");
        for i in 1..=self.backends {
            let deadline = Instant::now() + Duration::from_secs(20);
            let target = format!("{}:{port}", Self::backend_addr(i));
            loop {
                let probe = format!("import socket;socket.create_connection(('{}',{port}),1).close()", Self::backend_addr(i));
                let ok = Command::new("ip").args(["netns", "exec", &node, "python3", "-c", &probe]).output().is_ok_and(|o| o.status.success());
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "echo backend {target} did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Gives the topology IPv6 as well: the client fd00:1::2/64 behind the node's fd00:1::1, and
    /// backend i at [`Topology::backend_addr6`] behind fd00:<10+i>::1, with default routes and
    /// forwarding as for IPv4.
    pub fn add_ipv6(&self) {
        let node = self.ns("node");
        let pair = |ns: &str, inner: &str, outer: &str, net: &str| {
            sh(&["ip", "-n", ns, "addr", "add", &format!("{net}::2/64"), "dev", inner, "nodad"]);
            sh(&["ip", "-n", &node, "addr", "add", &format!("{net}::1/64"), "dev", outer, "nodad"]);
            sh(&["ip", "-n", ns, "-6", "route", "add", "default", "via", &format!("{net}::1")]);
        };
        pair(&self.ns("client"), "c0", NODE_IFACE, "fd00:1");
        for i in 1..=self.backends {
            pair(&self.ns(&format!("be{i}")), "b0", &format!("nb{i}"), &format!("fd00:{}", 10 + i));
        }
        sh(&["ip", "netns", "exec", &node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    }

    pub fn backend_addr6(i: usize) -> String {
        format!("fd00:{}::2", 10 + i)
    }

    /// Starts a server on `port` in every backend namespace, TCP and UDP, IPv4 and IPv6, that
    /// answers each request (a TCP connection's first bytes, a datagram) with `backend-<i>`;
    /// waits until each one answers TCP from the node namespace.
    pub fn start_name_backends(&mut self, port: u16) {
        const SERVER: &str = r#"
import socket, sys, threading
name, port = sys.argv[1].encode(), int(sys.argv[2])
def bound(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s
def tcp():
    s = bound(socket.SOCK_STREAM)
    s.listen(512)
    while True:
        c, _ = s.accept()
        try:
            c.settimeout(5)
            c.recv(100)
            c.sendall(name)
        except OSError:
            pass
        c.close()
threading.Thread(target=tcp, daemon=True).start()
u = bound(socket.SOCK_DGRAM)
while True:
    _, peer = u.recvfrom(100)
    u.sendto(name, peer)
"#;
        for i in 1..=self.backends {
            let child = Command::new("ip")
                .args(["netns", "exec", &self.ns(&format!("be{i}")), "python3", "-c", SERVER])
                .args([&format!("backend-{i}"), &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start the name server: {e}"));
            self.servers.push(child);
        }
        let node = self.ns("node");
        for i in 1..=self.backends {
            let deadline = Instant::now() + Duration::from_secs(20);
            let probe = format!("import socket;socket.create_connection(('{}',{port}),1).close()", Self::backend_addr(i));
            while !Command::new("ip").args(["netns", "exec", &node, "python3", "-c", &probe]).output().is_ok_and(|o| o.status.success()) {
                assert!(Instant::now() < deadline, "name server of backend {i} did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// One HTTP GET from the client namespace; the body (trimmed) or the error.
    pub fn client_get(&self, url: &str) -> Result<String, String> {
        curl(&self.ns("client"), &[url])
    }
}

/// `curl -sS --max-time 5 <args>` in namespace `ns`: the body (trimmed) or curl's error.
pub fn curl(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        Self::clean(&self.prefix, self.backends);
    }
}

/// Moves the calling thread into a named network namespace (for attaching programs there).
pub fn enter_netns(name: &str) {
    let f = File::open(format!("/var/run/netns/{name}")).unwrap_or_else(|e| panic!("netns {name}: {e}"));
    // SAFETY: setns on a valid fd; affects only this thread's network namespace.
    #[expect(unsafe_code, reason = "setns(2) has no safe std wrapper")]
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// Loads the datapath in the node namespace (entering it on this thread), programs `vip` (TCP,
/// rr) over every backend's HTTP server, and attaches XDP (driver mode) plus TC egress to
/// `NODE_IFACE`. Returns the dataplane (dropping it detaches) and the service it programmed.
pub fn serve_vip(topo: &Topology, vip: &str) -> (xvs::dataplane::Dataplane, xvs::dataplane::ServiceEntry) {
    use aya::programs::{TcAttachType, XdpMode};

    enter_netns(&topo.ns("node"));
    let mut dp = crate::load();
    let backends: Vec<(u32, String, u32)> = (1..=topo.backends)
        .map(|i| (i as u32, format!("{}:{BACKEND_PORT}", Topology::backend_addr(i)), 1))
        .collect();
    let refs: Vec<(u32, &str, u32)> = backends.iter().map(|(id, a, w)| (*id, a.as_str(), *w)).collect();
    let svc = crate::service(1, vip, xvs_common::IPPROTO_TCP, xvs_common::Scheduler::RoundRobin, &refs);
    dp.maps.apply_service(&svc).unwrap_or_else(|e| panic!("{e}"));
    dp.attach_xdp(NODE_IFACE, XdpMode::Driver).unwrap_or_else(|e| panic!("{e}"));
    dp.attach_tc(NODE_IFACE, xvs::dataplane::PROG_TC_EGRESS, TcAttachType::Egress).unwrap_or_else(|e| panic!("{e}"));
    (dp, svc)
}
