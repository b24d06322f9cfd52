//! End-to-end throughput through network namespaces (client -> node -> backend over veth), the
//! same topology and traffic for each way of implementing the services: xvs (XDP ingress + TC
//! egress), kube-proxy's iptables mode (its DNAT rules for every service, conntrack) and its
//! nftables mode (a verdict map, then numgen-random endpoint chains). UDP
//! small packets per second, and HTTP requests per second over short connections (one TCP
//! connection per request, so every request is a new flow), with 1, 1,000 and 10,000 services;
//! traffic goes to the last service (the deepest in iptables' KUBE-SERVICES chain).
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::{TcAttachType, XdpMode};
use xvs::model::{Backend, BackendState, Protocol, Service, ServiceId};

use super::{control, datapath::fresh};
use crate::topology::{enter_netns, Topology, NODE_IFACE};

const UDP_PORT: u16 = 9000;
pub(super) const HTTP_PORT: u16 = 8080;
pub(super) const MEASURE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    Xvs,
    Iptables,
    Nftables,
}

impl Way {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xvs => "xvs (XDP + TC)",
            Self::Iptables => "kube-proxy iptables",
            Self::Nftables => "kube-proxy nftables",
        }
    }
}

pub struct Throughput {
    pub udp_pps: f64,
    pub http_rps: f64,
}

/// Where the measured traffic goes: the client's and the backend's namespaces, and for UDP and
/// HTTP the address the client sends to and the one the backend serves on.
pub(super) struct Ends {
    pub client_ns: String,
    pub backend_ns: String,
    pub udp: (SocketAddr, SocketAddr),
    pub http: (SocketAddr, SocketAddr),
}

pub(super) fn in_netns<T: Send + 'static>(ns: String, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
}

/// The services: `n` TCP services (the last one is served by the real HTTP backend, the others
/// by addresses nobody uses) and one UDP service to the real UDP sink.
pub(super) fn services(n: u32, backend: Ipv4Addr) -> (Vec<Service>, ServiceId, ServiceId) {
    let mut list: Vec<Service> = control::model(n).services().cloned().collect();
    let last = list.len() - 1;
    list[last].backends = vec![Backend { addr: IpAddr::V4(backend), port: HTTP_PORT, weight: 1, state: BackendState::Active }];
    let http = list[last].id;
    let udp = ServiceId { vip: http.vip, port: UDP_PORT, proto: Protocol::Udp };
    list.push(Service {
        id: udp,
        scheduler: xvs_common::Scheduler::RoundRobin,
        affinity_timeout: None,
        sh_port: false,
            source_ranges: Vec::new(),
            reach: xvs::model::Reach::Cluster,
        backends: vec![Backend { addr: IpAddr::V4(backend), port: UDP_PORT, weight: 1, state: BackendState::Active }],
    });
    (list, http, udp)
}

/// Programs the node namespace one way; the returned guard keeps the datapath attached.
pub(super) fn program(way: Way, topo: &Topology, list: Vec<Service>) -> Option<(mpsc::Sender<()>, JoinHandle<()>)> {
    match way {
        Way::Xvs => Some(serve_with_xvs(topo.ns("node"), list, |_| {}, &[NODE_IFACE])),
        Way::Iptables => {
            let rules = control::iptables_rules(&list, None).replace("COMMIT\n", "-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n");
            control::iptables_restore(&topo.ns("node"), &rules, &[]);
            None
        }
        Way::Nftables => {
            control::nft_load(&topo.ns("node"), &control::nft_rules(&list));
            None
        }
    }
}

/// Loads xvs in namespace `ns`, writes `list` with the agent's reconciler, lets `setup` do
/// the rest, and attaches XDP and TC egress to `ifaces`. Send on the returned channel (or
/// drop it) and join the handle to detach.
pub(super) fn serve_with_xvs(
    ns: String,
    list: Vec<Service>,
    setup: impl FnOnce(&mut xvs::dataplane::Dataplane) + Send + 'static,
    ifaces: &'static [&'static str],
) -> (mpsc::Sender<()>, JoinHandle<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let n = list.len() as u32;
    let guard = in_netns(ns, move || {
        let model = xvs::model::Model::new(list).unwrap_or_else(|e| panic!("{e:?}"));
        let mut dp = fresh(control::capacity(n));
        let mut r = xvs::sync::Reconciler::new(30, dp.maps.capacity);
        let (_, errors) = r.sync(&model, &mut dp.maps, xvs::sync::monotonic_secs());
        assert!(errors.is_empty(), "{errors:?}");
        setup(&mut dp);
        for iface in ifaces {
            dp.attach_xdp(iface, XdpMode::Driver).unwrap_or_else(|e| panic!("{e}"));
            dp.attach_tc(iface, xvs::dataplane::PROG_TC_EGRESS, TcAttachType::Egress).unwrap_or_else(|e| panic!("{e}"));
        }
        let _ = ready_tx.send(());
        let _ = stop_rx.recv();
        drop(dp);
    });
    let _ = ready_rx.recv();
    (stop_tx, guard)
}

const BATCH: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Send,
    Recv,
}

/// Sends or receives up to BATCH 18-byte datagrams in one sendmmsg/recvmmsg call, so the
/// generator and the sink cost a syscall per 64 packets instead of one each. Returns how many.
fn batch(sock: &UdpSocket, dir: Dir) -> usize {
    use std::os::fd::AsRawFd;
    let mut bufs = [[0x5au8; 64]; BATCH];
    // SAFETY: zeroed iovec/mmsghdr are valid; each points at a live buffer for the call.
    #[expect(unsafe_code, reason = "sendmmsg/recvmmsg have no std wrapper")]
    unsafe {
        let mut iov: [libc::iovec; BATCH] = std::mem::zeroed();
        let mut msgs: [libc::mmsghdr; BATCH] = std::mem::zeroed();
        for i in 0..BATCH {
            iov[i] = libc::iovec { iov_base: bufs[i].as_mut_ptr().cast(), iov_len: if dir == Dir::Send { 18 } else { 64 } };
            msgs[i].msg_hdr.msg_iov = &raw mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let n = match dir {
            Dir::Send => libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0),
            Dir::Recv => libc::recvmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0, std::ptr::null_mut()),
        };
        usize::try_from(n).unwrap_or(0)
    }
}

/// Packets the sink received per second while a sender blasted 18-byte datagrams over 32
/// flows to the service, both batching 64 packets per syscall.
pub(super) fn udp_pps(ends: &Ends) -> f64 {
    let (vip, backend) = ends.udp;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (s2, r2) = (stop.clone(), received.clone());
    let (ready_tx, ready_rx) = mpsc::channel();
    let sink = in_netns(ends.backend_ns.clone(), move || {
        let sock = UdpSocket::bind(backend).unwrap_or_else(|e| panic!("udp sink: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap_or_else(|e| panic!("{e}"));
        let _ = ready_tx.send(());
        while !s2.load(Ordering::Relaxed) {
            let got = batch(&sock, Dir::Recv);
            if got > 0 {
                r2.fetch_add(got as u64, Ordering::Relaxed);
            }
        }
    });
    let _ = ready_rx.recv();
    let s3 = stop.clone();
    let sender = in_netns(ends.client_ns.clone(), move || {
        let socks: Vec<UdpSocket> = (0..32)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("{e}"));
                s.connect(vip).unwrap_or_else(|e| panic!("{e}"));
                s
            })
            .collect();
        let mut i = 0usize;
        while !s3.load(Ordering::Relaxed) {
            batch(&socks[i % socks.len()], Dir::Send);
            i += 1;
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = received.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(MEASURE);
    let got = received.load(Ordering::Relaxed) - before;
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let _ = sink.join();
    got as f64 / secs
}

/// Serves each connection `listener` accepts with `serve` until `stop` is set. The accept
/// blocks (with a timeout, to see `stop`): a server that polls and sleeps between accepts caps
/// the rate at its sleep (a 50 µs sleep is ~100 µs with timer slack, 10,000 connections/s
/// whatever serves them), which once flattened these figures.
pub(super) fn accept_until(listener: &TcpListener, stop: &AtomicBool, mut serve: impl FnMut(TcpStream)) {
    use std::os::fd::AsRawFd;
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: setsockopt on a live socket with a timeval of the size passed. Linux applies
    // SO_RCVTIMEO to accept(2) too.
    #[expect(unsafe_code, reason = "SO_RCVTIMEO on a listener has no std wrapper")]
    let rc = unsafe {
        libc::setsockopt(listener.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const timeout).cast(), std::mem::size_of::<libc::timeval>() as libc::socklen_t)
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    while !stop.load(Ordering::Relaxed) {
        if let Ok((c, _)) = listener.accept() {
            serve(c);
        }
    }
}

/// Requests per second of one client doing connect / GET / read / close in a loop against
/// the service, served by a minimal HTTP server.
pub(super) fn http_rps(ends: &Ends) -> f64 {
    let (target, backend) = ends.http;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_netns(ends.backend_ns.clone(), move || {
        let listener = TcpListener::bind(backend).unwrap_or_else(|e| panic!("http server: {e}"));
        let _ = ready_tx.send(());
        let mut buf = [0u8; 512];
        accept_until(&listener, &s2, |mut c| {
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        });
    });
    let _ = ready_rx.recv();
    let client = in_netns(ends.client_ns.clone(), move || {
        let once = || -> std::io::Result<()> {
            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = Vec::new();
            c.read_to_end(&mut body)?;
            if body.ends_with(b"ok") { Ok(()) } else { Err(std::io::Error::other("bad reply")) }
        };
        for _ in 0..50 {
            once().unwrap_or_else(|e| panic!("warm-up request: {e}"));
        }
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed() < MEASURE {
            once().unwrap_or_else(|e| panic!("request {done}: {e}"));
            done += 1;
        }
        done as f64 / start.elapsed().as_secs_f64()
    });
    let rps = client.join().unwrap_or(0.0);
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    rps
}

/// One way, `n` services: a fresh topology, programmed, measured, torn down.
pub fn measure(way: Way, n: u32) -> Throughput {
    let topo = Topology::create("xvs-tput", 1);
    let backend: Ipv4Addr = Topology::backend_addr(1).parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let (list, http, udp) = services(n, backend);
    let guard = program(way, &topo, list);
    let ends = Ends {
        client_ns: topo.ns("client"),
        backend_ns: topo.ns("be1"),
        udp: (SocketAddr::new(udp.vip, udp.port), SocketAddr::new(IpAddr::V4(backend), UDP_PORT)),
        http: (SocketAddr::new(http.vip, http.port), SocketAddr::new(IpAddr::V4(backend), HTTP_PORT)),
    };
    let udp_pps = udp_pps(&ends);
    let http_rps = http_rps(&ends);
    if let Some((stop, handle)) = guard {
        let _ = stop.send(());
        let _ = handle.join();
    }
    drop(topo);
    Throughput { udp_pps, http_rps }
}
