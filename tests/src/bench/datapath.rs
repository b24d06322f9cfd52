//! Per-packet cost of the real datapath through BPF_PROG_TEST_RUN, against the empty-program
//! floor run the same way. Every figure is the median of single runs timed by the kernel, each
//! on a packet of its own: a repeated run would re-read the packet the previous run rewrote.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use xvs::dataplane::{Capacity, Dataplane, ObjectSource, PROG_FLOOR_FLOW_HIT, PROG_FLOOR_FLOW_INSERT};
use xvs_common::{Scheduler, IPPROTO_TCP};

use super::floor::EmptyXdp;
use crate::{service, tc_egress, xdp, Pkt, L4, XDP_PASS};

/// Packets per measurement.
pub const N: usize = 20_000;

#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub median_ns: f64,
    pub p90_ns: f64,
}

pub fn summarize(name: impl Into<String>, mut ns: Vec<u32>) -> Figure {
    ns.sort_unstable();
    let at = |q: f64| f64::from(ns[((ns.len() - 1) as f64 * q) as usize]);
    Figure { name: name.into(), median_ns: at(0.5), p90_ns: at(0.9) }
}

fn client(i: usize, v6: bool) -> SocketAddr {
    let port = 10_000 + (i % 50_000) as u16;
    if v6 {
        SocketAddr::new(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, (i >> 16) as u16, i as u16).into(), port)
    } else {
        SocketAddr::new(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8).into(), port)
    }
}

fn ns(run: &crate::Run) -> u32 {
    run.duration.as_nanos() as u32
}

/// Loads a fresh datapath with `capacity`.
pub fn fresh(capacity: Capacity) -> Dataplane {
    ObjectSource::resolve(None).load_with(None, capacity).unwrap_or_else(|e| panic!("loading the datapath: {e}"))
}

/// Ten backends for service `svc` (ids svc*10-9 .. svc*10), family of `v6`.
fn backends(svc: u32, v6: bool) -> Vec<(u32, String, u32)> {
    (0..10u32)
        .map(|b| {
            let id = (svc - 1) * 10 + b + 1;
            let addr = if v6 { format!("[fd00:2::{id:x}]:8080") } else { format!("{}:8080", Ipv4Addr::from(0x0ac8_0000 + id)) };
            (id, addr, 1 + b % 3)
        })
        .collect()
}

fn install(dp: &mut Dataplane, svc: u32, vip: &str, scheduler: Scheduler, v6: bool) -> Vec<SocketAddr> {
    let b = backends(svc, v6);
    let refs: Vec<(u32, &str, u32)> = b.iter().map(|(id, a, w)| (*id, a.as_str(), *w)).collect();
    dp.maps.apply_service(&service(svc, vip, IPPROTO_TCP, scheduler, &refs)).unwrap_or_else(|e| panic!("{e}"));
    b.iter().map(|(_, a, _)| a.parse().unwrap_or_else(|e| panic!("{a}: {e}"))).collect()
}

/// Names of the structural floor figures (the bench's report compares against them).
pub const FLOOR_INSERT: &str = "structural floor: parse + flow miss + two inserts";
pub const FLOOR_HIT: &str = "structural floor: parse + one flow hit";
pub const NEW_FLOW: &str = "new TCP flow (rr: schedule, conntrack insert, DNAT)";
pub const ESTABLISHED: &str = "established flow (conntrack hit, DNAT)";

/// The per-packet figures of one address family: pass, new flow, established, reply.
pub fn family(floor: &EmptyXdp, v6: bool) -> Vec<Figure> {
    let fam = if v6 { "IPv6" } else { "IPv4" };
    let vip = if v6 { "[fd00::10]:80" } else { "10.96.0.10:80" };
    let other = if v6 { "[fd00::11]:80" } else { "10.96.0.11:80" };
    let mut dp = fresh(Capacity::default());
    install(&mut dp, 1, vip, Scheduler::RoundRobin, v6);
    let syn = |i| Pkt::new(L4::TcpSyn, &client(i, v6).to_string(), vip);

    let ack = |i| Pkt::new(L4::TcpAck, &client(i, v6).to_string(), vip);
    // Each figure and its floor are measured packet by packet in turn, so a machine that slows
    // down or speeds up during the run moves both alike and their ratio holds. The structural
    // floors run on a datapath of their own, on the same packets.
    let mut bare = fresh(Capacity::default());
    let (mut floor_ns, mut pass) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for i in 0..N {
        floor_ns.push(floor.run(&syn(i).bytes()).unwrap_or_else(|e| panic!("floor: {e}")));
        pass.push(ns(&xdp(&mut dp, &Pkt::new(L4::TcpSyn, &client(i, v6).to_string(), other).bytes())));
    }
    let (mut insert_floor, mut new, mut backend_of) = (Vec::with_capacity(N), Vec::with_capacity(N), Vec::with_capacity(N));
    for i in 0..N {
        insert_floor.push(ns(&crate::floor(&mut bare, PROG_FLOOR_FLOW_INSERT, &syn(i).bytes())));
        let run = xdp(&mut dp, &syn(i).bytes());
        assert_eq!(run.verdict, XDP_PASS);
        new.push(ns(&run));
        backend_of.push(run.out);
    }
    let (mut hit_floor, mut est) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for i in 0..N {
        hit_floor.push(ns(&crate::floor(&mut bare, PROG_FLOOR_FLOW_HIT, &ack(i).bytes())));
        est.push(ns(&xdp(&mut dp, &ack(i).bytes())));
    }
    assert_eq!(bare.maps.conntrack.keys().count(), 2 * N, "the insert floor made every flow");
    // The reply of flow i comes from the backend its SYN was sent to (read from the rewritten packet).
    let reply: Vec<u32> = (0..N)
        .map(|i| {
            let backend = destination(&backend_of[i]);
            ns(&tc_egress(&mut dp, &Pkt::new(L4::TcpAck, &backend.to_string(), &client(i, v6).to_string()).bytes()))
        })
        .collect();
    vec![
        summarize(format!("empty XDP program (floor), {fam}"), floor_ns),
        summarize(format!("{FLOOR_INSERT}, {fam}"), insert_floor),
        summarize(format!("{FLOOR_HIT}, {fam}"), hit_floor),
        summarize(format!("not a service: pass, {fam}"), pass),
        summarize(format!("{NEW_FLOW}, {fam}"), new),
        summarize(format!("{ESTABLISHED}, {fam}"), est),
        summarize(format!("reply reverse NAT (TC egress), {fam}"), reply),
    ]
}

/// The destination of a rewritten Ethernet frame.
fn destination(frame: &[u8]) -> SocketAddr {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).unwrap_or_else(|e| panic!("rewritten frame: {e}"));
    let ip = match sliced.net {
        Some(etherparse::NetSlice::Ipv4(v4)) => std::net::IpAddr::from(v4.header().destination()),
        Some(etherparse::NetSlice::Ipv6(v6)) => std::net::IpAddr::from(v6.header().destination()),
        _ => panic!("no IP header"),
    };
    let port = match sliced.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => t.destination_port(),
        _ => panic!("no TCP header"),
    };
    SocketAddr::new(ip, port)
}

/// New-flow cost per scheduler (IPv4, ten backends with weights 1..3).
pub fn schedulers() -> Vec<Figure> {
    [(Scheduler::RoundRobin, "rr"), (Scheduler::WeightedRoundRobin, "wrr"), (Scheduler::SourceHash, "sh")]
        .into_iter()
        .map(|(s, name)| {
            let mut dp = fresh(Capacity::default());
            install(&mut dp, 1, "10.96.0.10:80", s, false);
            let new: Vec<u32> = (0..N).map(|i| ns(&xdp(&mut dp, &Pkt::new(L4::TcpSyn, &client(i, false).to_string(), "10.96.0.10:80").bytes()))).collect();
            summarize(format!("new TCP flow, {name}"), new)
        })
        .collect()
}

/// Cost with `services` services of ten backends each, for two traffic mixes. Hot: every packet
/// goes to one of 100 services, whatever the table holds (the lookup cost itself: flat if
/// lookups are hashes). Spread: every packet to a different service, so the working set grows
/// with the table (a worst case for the CPU caches).
pub struct Scaling {
    pub services: u32,
    pub hot_new: Figure,
    pub hot_established: Figure,
    pub spread_new: Figure,
    pub spread_established: Figure,
}

pub fn scaling(services: u32) -> Scaling {
    let capacity = Capacity { services: services + 1, backends: services * 10 + 1, slots: (services * 10 + 1).max(1024) * 2, flows: 262_144 };
    let mut dp = fresh(capacity);
    for s in 1..=services {
        install(&mut dp, s, &format!("{}:80", Ipv4Addr::from(0x0a60_0000 + s)), Scheduler::RoundRobin, false);
    }
    let mut run = |first_client: usize, among: u32| -> (Figure, Figure) {
        let vip = |i: usize| format!("{}:80", Ipv4Addr::from(0x0a60_0000 + 1 + (i as u32 * 7919) % among));
        let c = |i: usize| client(first_client + i, false).to_string();
        let new: Vec<u32> = (0..N).map(|i| ns(&xdp(&mut dp, &Pkt::new(L4::TcpSyn, &c(i), &vip(i)).bytes()))).collect();
        let est: Vec<u32> = (0..N).map(|i| ns(&xdp(&mut dp, &Pkt::new(L4::TcpAck, &c(i), &vip(i)).bytes()))).collect();
        (summarize(format!("new flow, {services} services"), new), summarize(format!("established, {services} services"), est))
    };
    let (hot_new, hot_established) = run(0, services.min(100));
    let (spread_new, spread_established) = run(N, services);
    Scaling { services, hot_new, hot_established, spread_new, spread_established }
}
