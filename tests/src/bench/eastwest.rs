//! East-west: a pod connecting to a cluster IP, through network namespaces (pod ns -> node ns
//! -> backend ns over veth), served four ways: xvs's socket hooks (the connection goes to the
//! backend at connect; its packets are routed untouched), xvs's packet path (XDP DNAT and TC
//! reverse NAT on the node's interface), and kube-proxy's iptables and nftables rules. Two
//! figures: new connections per second (connect, then close), and requests per second over one
//! open connection (32-byte ping-pong), with 1 and 10,000 services; each the median of five
//! runs, the client pinned to one CPU and the backend to the other.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use super::throughput::{accept_until, in_netns, program, services, Way as PacketWay, HTTP_PORT, MEASURE};
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

/// Runs `f` in network namespace `ns` on CPU `cpu` alone. Left to the scheduler, the client
/// and the server sometimes share a CPU and sometimes not, and the figures of the same run
/// jump between two levels twice apart (seen with every way, and with no service at all);
/// pinned, the client is on one CPU and the backend on the other every time.
fn on_cpu<T: Send + 'static>(ns: String, cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    in_netns(ns, move || {
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it; 0 names this thread.
        #[expect(unsafe_code, reason = "sched_setaffinity has no std wrapper")]
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu % num_cpus(), &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
        }
        f()
    })
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// New connections per second: connect to the service and close at once, in a loop (the
/// backend accepts and closes too). The client closes with a RST (SO_LINGER 0): a FIN would
/// leave every connection in TIME_WAIT, and at these rates the client's ports, not the path,
/// would set the figure (a ceiling near 14,000/s, whatever served the service).
fn conns_per_sec(client_ns: &str, backend_ns: &str, target: SocketAddr, backend: SocketAddr) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = on_cpu(backend_ns.to_owned(), 1, move || {
        let listener = TcpListener::bind(backend).unwrap_or_else(|e| panic!("server: {e}"));
        let _ = ready_tx.send(());
        accept_until(&listener, &s2, drop);
    });
    let _ = ready_rx.recv();
    let client = on_cpu(client_ns.to_owned(), 0, move || {
        let once = |n: u64| {
            let c = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap_or_else(|e| panic!("connection {n}: {e}"));
            socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap_or_else(|e| panic!("SO_LINGER: {e}"));
        };
        for n in 0..50 {
            once(n);
        }
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed() < MEASURE {
            once(done);
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
    let server = on_cpu(backend_ns.to_owned(), 1, move || {
        let listener = TcpListener::bind(backend).unwrap_or_else(|e| panic!("server: {e}"));
        let _ = ready_tx.send(());
        let (mut c, _) = listener.accept().unwrap_or_else(|e| panic!("accept: {e}"));
        let _ = c.set_nodelay(true);
        let mut buf = [0u8; 32];
        while c.read_exact(&mut buf).is_ok() && c.write_all(&buf).is_ok() {}
    });
    let _ = ready_rx.recv();
    let client = on_cpu(client_ns.to_owned(), 0, move || {
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
    // The median of five runs each: on 2 vCPUs the client, the server and the softirqs share
    // the CPUs, and single runs still vary by a third now and then.
    let median = |f: &dyn Fn() -> f64| {
        let mut runs = [f(), f(), f(), f(), f()];
        runs.sort_by(f64::total_cmp);
        runs[2]
    };
    let (client, server) = (topo.ns("client"), topo.ns("be1"));
    let conns_per_sec = median(&|| conns_per_sec(&client, &server, target, backend));
    let requests_per_sec = median(&|| requests_per_sec(&client, &server, target, backend));
    drop(member);
    if let Some((stop, handle)) = guard {
        let _ = stop.send(());
        let _ = handle.join();
    }
    drop(cgroup);
    drop(topo);
    EastWest { conns_per_sec, requests_per_sec }
}
