//! Two nodes, a pod on each, and an external client, built from network namespaces:
//!
//! ```text
//!  client              node a (xvs on ac, af, ap1)          node b (no xvs)
//!  c0 10.1.0.2  <----> ac 10.1.0.1
//!     fd01::2             fd01::1
//!                      af 10.2.0.1  <---- fabric ------->  bf 10.2.0.2
//!                         fd02::1                              fd02::2
//!                      ap1 10.244.1.1 <-> pod a1           bp1 10.244.2.1 <-> pod b1
//!                          fd44:1::1      10.244.1.2           fd44:2::1      10.244.2.2
//!                                         fd44:1::2                           fd44:2::2
//! ```
//! Node b routes the pod network of node a over the fabric and knows no way to the client: a
//! reply from its pod reaches the client only if node a masqueraded the flow. Every pod runs an
//! HTTP server on port 8080 answering `<pod> <peer address>` (and, for a POST, the body's
//! length), so a test sees which pod served it and which source address the pod saw. Every
//! address lives inside namespaces this module creates; dropping the cluster deletes them.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::topology::{curl, sh};

pub const POD_PORT: u16 = 8080;
/// The interfaces of node a, in the order xvs serves them.
pub const NODE_A_IFACES: [&str; 3] = ["ac", "af", "ap1"];

/// One family's addresses.
pub struct Family {
    pub client: &'static str,
    /// Node a's address on the client's side (its NodePort address in the tests).
    pub node_a: &'static str,
    /// Node a's address on the fabric: what masqueraded flows to node b's pods come from.
    pub node_a_fabric: &'static str,
    /// Node a's address on its pod's link: what hairpin flows come from.
    pub node_a_pod_link: &'static str,
    pub pod_a1: &'static str,
    pub pod_b1: &'static str,
    /// An unused cluster IP.
    pub cluster_ip: &'static str,
    pub cluster_cidr: &'static str,
}

pub const V4: Family = Family {
    client: "10.1.0.2",
    node_a: "10.1.0.1",
    node_a_fabric: "10.2.0.1",
    node_a_pod_link: "10.244.1.1",
    pod_a1: "10.244.1.2",
    pod_b1: "10.244.2.2",
    cluster_ip: "10.96.0.10",
    cluster_cidr: "10.244.0.0/16",
};

pub const V6: Family = Family {
    client: "fd01::2",
    node_a: "fd01::1",
    node_a_fabric: "fd02::1",
    node_a_pod_link: "fd44:1::1",
    pod_a1: "fd44:1::2",
    pod_b1: "fd44:2::2",
    cluster_ip: "fd00::10",
    cluster_cidr: "fd44::/16",
};

impl Family {
    /// `addr:port` as a URL's host part.
    pub fn url(addr: &str, port: u16, path: &str) -> String {
        if addr.contains(':') { format!("http://[{addr}]:{port}{path}") } else { format!("http://{addr}:{port}{path}") }
    }

    /// `addr:port` as a services-file endpoint.
    pub fn endpoint(addr: &str, port: u16) -> String {
        if addr.contains(':') { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") }
    }
}

pub struct Cluster {
    pub prefix: String,
    servers: Vec<Child>,
}

const NAMESPACES: [&str; 5] = ["client", "a", "b", "a1", "b1"];

const POD_SERVER: &str = r#"
import http.server, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, extra):
        peer = self.client_address[0].removeprefix("::ffff:")
        body = f"{sys.argv[1]} {peer}{extra}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply("")
    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reply(f" {len(data)}")
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
S(("::", int(sys.argv[2])), H).serve_forever()
"#;

impl Cluster {
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn clean(prefix: &str) {
        for n in NAMESPACES {
            let _ = Command::new("ip").args(["netns", "del", &format!("{prefix}-{n}")]).stderr(Stdio::null()).status();
        }
    }

    /// Builds the namespaces and links; the fabric link takes `fabric_mtu` on both ends.
    pub fn create(prefix: &str, fabric_mtu: u32) -> Self {
        Self::clean(prefix);
        let c = Self { prefix: prefix.to_owned(), servers: Vec::new() };
        for n in NAMESPACES {
            let ns = c.ns(n);
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let (a, b) = (c.ns("a"), c.ns("b"));
        for node in [&a, &b] {
            for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.send_redirects=0"] {
                sh(&["ip", "netns", "exec", node, "sysctl", "-qw", sysctl]);
            }
        }
        c.link((&c.ns("client"), "c0", &["10.1.0.2/24", "fd01::2/64"]), (&a, "ac", &["10.1.0.1/24", "fd01::1/64"]));
        c.link((&a, "af", &["10.2.0.1/24", "fd02::1/64"]), (&b, "bf", &["10.2.0.2/24", "fd02::2/64"]));
        c.link((&c.ns("a1"), "eth0", &["10.244.1.2/24", "fd44:1::2/64"]), (&a, "ap1", &["10.244.1.1/24", "fd44:1::1/64"]));
        c.link((&c.ns("b1"), "eth0", &["10.244.2.2/24", "fd44:2::2/64"]), (&b, "bp1", &["10.244.2.1/24", "fd44:2::1/64"]));
        for (ns, v4, v6) in [("client", "10.1.0.1", "fd01::1"), ("a1", "10.244.1.1", "fd44:1::1"), ("b1", "10.244.2.1", "fd44:2::1")] {
            sh(&["ip", "-n", &c.ns(ns), "route", "add", "default", "via", v4]);
            sh(&["ip", "-n", &c.ns(ns), "-6", "route", "add", "default", "via", v6]);
        }
        // Each node reaches the other's pods over the fabric; node b has no route to the client.
        sh(&["ip", "-n", &a, "route", "add", "10.244.2.0/24", "via", "10.2.0.2"]);
        sh(&["ip", "-n", &a, "-6", "route", "add", "fd44:2::/64", "via", "fd02::2"]);
        sh(&["ip", "-n", &b, "route", "add", "10.244.1.0/24", "via", "10.2.0.1"]);
        sh(&["ip", "-n", &b, "-6", "route", "add", "fd44:1::/64", "via", "fd02::1"]);
        let mtu = fabric_mtu.to_string();
        sh(&["ip", "-n", &a, "link", "set", "af", "mtu", &mtu]);
        sh(&["ip", "-n", &b, "link", "set", "bf", "mtu", &mtu]);
        c
    }

    /// A veth pair between two namespaces, addresses on both ends (IPv6 without duplicate
    /// address detection, usable at once), transmit checksum offload off on both: frames carry
    /// full checksums, which XDP needs and receivers verify.
    fn link(&self, (ns1, if1, addrs1): (&str, &str, &[&str]), (ns2, if2, addrs2): (&str, &str, &[&str])) {
        sh(&["ip", "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2]);
        for (ns, iface, addrs) in [(ns1, if1, addrs1), (ns2, if2, addrs2)] {
            for addr in addrs {
                let mut cmd = vec!["ip", "-n", ns, "addr", "add", addr, "dev", iface];
                if addr.contains(':') {
                    cmd.push("nodad");
                }
                sh(&cmd);
            }
            sh(&["ip", "-n", ns, "link", "set", iface, "up"]);
            sh(&["ip", "netns", "exec", ns, "ethtool", "-K", iface, "tx", "off"]);
        }
    }

    /// Starts the HTTP server of both pods and waits until each answers from its node.
    pub fn start_pods(&mut self) {
        for (pod, node, addr) in [("a1", "a", V4.pod_a1), ("b1", "b", V4.pod_b1)] {
            self.serve(pod, POD_SERVER, POD_PORT);
            let url = Family::url(addr, POD_PORT, "/");
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.get(node, &url).is_err() {
                assert!(Instant::now() < deadline, "pod {pod} did not start serving {url}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Starts a line echo server on `port` in `pod` ("a1" or "b1"), both families: each line
    /// comes back as `<pod> <peer address>:<line>`, so a long-lived connection shows where it
    /// lands and what source address the pod sees.
    pub fn start_echo(&mut self, pod: &str, port: u16) {
        const ECHO: &str = r#"
import socket, socketserver, sys
class H(socketserver.StreamRequestHandler):
    def handle(self):
        peer = self.client_address[0].removeprefix("::ffff:")
        for line in self.rfile:
            self.wfile.write(f"{sys.argv[1]} {peer}:".encode() + line)
class S(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
S(("::", int(sys.argv[2])), H).serve_forever()
"#;
        self.serve(pod, ECHO, port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sh(&["ip", "netns", "exec", &self.ns(pod), "ss", "-Htln", &format!("sport = :{port}")]).contains(&port.to_string()) {
            assert!(Instant::now() < deadline, "the echo server in {pod} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the Python server `script` in `pod` with the pod's name and `port` as arguments,
    /// until the cluster is dropped.
    fn serve(&mut self, pod: &str, script: &str, port: u16) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(pod), "python3", "-c", script, pod, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3: {e}"));
        self.servers.push(child);
    }

    /// One HTTP GET from namespace `from` (a short name: "client", "a1", ...): the body, trimmed.
    pub fn get(&self, from: &str, url: &str) -> Result<String, String> {
        self.curl(from, &[url])
    }

    /// One HTTP POST of `bytes` bytes from `from`.
    pub fn post(&self, from: &str, url: &str, bytes: usize) -> Result<String, String> {
        self.curl(from, &["--data-binary", &"x".repeat(bytes), url])
    }

    /// `-g`: IPv6 addresses in brackets are taken literally.
    fn curl(&self, from: &str, args: &[&str]) -> Result<String, String> {
        curl(&self.ns(from), &[&["-g"], args].concat())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        Self::clean(&self.prefix);
    }
}
