//! East-west: a pod connecting to a cluster IP, through network namespaces (pod ns -> node ns
//! -> backend ns over veth), served four ways: xvs's socket hooks (the connection goes to the
//! backend at connect; its packets are routed untouched), xvs's packet path (XDP DNAT and TC
//! reverse NAT on the node's interface), and kube-proxy's iptables and nftables rules. Two
//! figures: new connections per second (connect, then close), and requests per second over one
//! open connection (32-byte ping-pong), with 1 and 10,000 services.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use super::throughput::{in_netns, program, services, Way as PacketWay, HTTP_PORT, MEASURE};
use crate::{sockets::TestCgroup, topology::Topology};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// xvs's socket hooks, on a cgroup the bench process joins for the measurement.
    Socket,
    /// A packet-level way: xvs's XDP + TC, or kube-proxy's rules.
    Packet(PacketWay),
}

impl Way {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Socket => "xvs socket LB",
            Self::Packet(w) => w.name(),
        }
    }
}

pub struct EastWest {
    pub conns_per_sec: f64,
    pub requests_per_sec: f64,
}

/// This process in a cgroup v2 while it lives (cgroup v2 moves whole processes), back in the
/// one it came from on drop.
struct Member {
    home: std::path::PathBuf,
}

impl Member {
    fn join(cgroup: &TestCgroup) -> Self {
        let root = xvs::dataplane::cgroup2_root().unwrap_or_else(|| panic!("no cgroup v2"));
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim_start_matches('/').to_owned();
        let home = root.join(path);
        move_to(&cgroup.path);
        Self { home }
    }
}

fn move_to(cgroup: &std::path::Path) {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).unwrap_or_else(|e| panic!("{}: {e}", procs.display()));
}

impl Drop for Member {
    fn drop(&mut self) {
        move_to(&self.home);
    }
}

/// New connections per second: connect to the service and close at once, in a loop (the
/// backend accepts and closes too). TIME_WAIT ports are reused (tcp_tw_reuse in the client's
/// namespace), as a busy client's would be.
fn conns_per_sec(client_ns: &str, backend_ns: &str, target: SocketAddr, backend: SocketAddr) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_netns(backend_ns.to_owned(), move || {
        let listener = TcpListener::bind(backend).unwrap_or_else(|e| panic!("server: {e}"));
        listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let _ = ready_tx.send(());
        while !s2.load(Ordering::Relaxed) {
            if listener.accept().is_err() {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    });
    let _ = ready_rx.recv();
    let client = in_netns(client_ns.to_owned(), move || {
        for _ in 0..50 {
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap_or_else(|e| panic!("warm-up connection: {e}"));
        }
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed() < MEASURE {
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap_or_else(|e| panic!("connection {done}: {e}"));
            done += 1;
        }
        done as f64 / start.elapsed().as_secs_f64()
    });
    let rate = client.join().unwrap_or(0.0);
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    rate
}

/// Requests per second over one open connection: 32 bytes out, 32 back, in a loop.
fn requests_per_sec(client_ns: &str, backend_ns: &str, target: SocketAddr, backend: SocketAddr) -> f64 {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_netns(backend_ns.to_owned(), move || {
        let listener = TcpListener::bind(backend).unwrap_or_else(|e| panic!("server: {e}"));
        let _ = ready_tx.send(());
        let (mut c, _) = listener.accept().unwrap_or_else(|e| panic!("accept: {e}"));
        let _ = c.set_nodelay(true);
        let mut buf = [0u8; 32];
        while c.read_exact(&mut buf).is_ok() && c.write_all(&buf).is_ok() {}
    });
    let _ = ready_rx.recv();
    let client = in_netns(client_ns.to_owned(), move || {
        let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap_or_else(|e| panic!("connect: {e}"));
        let _ = c.set_nodelay(true);
        let mut buf = [0x5au8; 32];
        let mut once = |c: &mut TcpStream| {
            c.write_all(&buf.clone()).and_then(|()| c.read_exact(&mut buf)).unwrap_or_else(|e| panic!("request: {e}"));
        };
        for _ in 0..200 {
            once(&mut c);
        }
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed() < MEASURE {
            once(&mut c);
            done += 1;
        }
        done as f64 / start.elapsed().as_secs_f64()
    });
    let rate = client.join().unwrap_or(0.0);
    let _ = server.join();
    rate
}

/// One way, `n` services: a fresh topology, programmed, measured, torn down.
pub fn measure(way: Way, n: u32) -> EastWest {
    let topo = Topology::create("xvs-ew", 1);
    crate::topology::sh(&["ip", "netns", "exec", &topo.ns("client"), "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    let backend: Ipv4Addr = Topology::backend_addr(1).parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let (list, http, _) = services(n, backend);
    let cgroup = (way == Way::Socket).then(|| TestCgroup::create("xvs-bench-eastwest"));
    let guard = match (way, &cgroup) {
        (Way::Socket, Some(cgroup)) => {
            let path = cgroup.path.clone();
            let setup = move |dp: &mut xvs::dataplane::Dataplane| {
                let lb = xvs::dataplane::SocketLb { cgroup: path.clone(), host_ns_only: false };
                dp.maps.set_socket_lb(Some(&lb)).unwrap_or_else(|e| panic!("{e}"));
                dp.attach_socket_lb(&path).unwrap_or_else(|e| panic!("{e}"));
            };
            Some(super::throughput::serve_with_xvs(topo.ns("node"), list, setup, &[]))
        }
        (Way::Packet(w), _) => program(w, &topo, list),
        (Way::Socket, None) => None,
    };
    let member = cgroup.as_ref().map(Member::join);
    let target = SocketAddr::new(http.vip, http.port);
    let backend = SocketAddr::new(IpAddr::V4(backend), HTTP_PORT);
    let conns_per_sec = conns_per_sec(&topo.ns("client"), &topo.ns("be1"), target, backend);
    let requests_per_sec = requests_per_sec(&topo.ns("client"), &topo.ns("be1"), target, backend);
    drop(member);
    if let Some((stop, handle)) = guard {
        let _ = stop.send(());
        let _ = handle.join();
    }
    drop(cgroup);
    drop(topo);
    EastWest { conns_per_sec, requests_per_sec }
}
