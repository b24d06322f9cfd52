//! Masquerading through BPF_PROG_TEST_RUN: a flow DNATed at ingress is source-NATed on its way
//! out (TC egress), replies to the SNAT address and port go on to the client (ingress, through
//! the unmasquerade program) and then leave from the VIP. Expected packets are built by
//! etherparse, every checksum computed from scratch.
use std::collections::BTreeMap;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use xvs::dataplane::{Dataplane, NatSettings};
use xvs_common::{Reason, Scheduler, IPPROTO_TCP, IPPROTO_UDP, SERVICE_F_EXTERNAL, SERVICE_F_KEEP_CLIENT};
use xvs_integration::*;

/// BPF_PROG_TEST_RUN runs TC programs on the loopback device.
const TEST_IFINDEX: u32 = 1;
const NODE: &str = "10.2.0.1";
const NODE6: &str = "fd02::1";
const OUTSIDE: &str = "192.0.2.7:40000";
const OUTSIDE6: &str = "[fd01::7]:40000";
const POD: &str = "10.244.1.2:40000";
const VIP: &str = "10.96.0.10:80";
const VIP6: &str = "[fd00::10]:80";
const BACKEND: &str = "10.244.2.2:8080";
const BACKEND6: &str = "[fd44:2::2]:8080";

fn setup(flags: u8, ports: std::ops::RangeInclusive<u16>) -> Dataplane {
    setup_with(flags, ports, false)
}

fn setup_with(flags: u8, ports: std::ops::RangeInclusive<u16>, masquerade_all: bool) -> Dataplane {
    let mut dp = load();
    let settings = NatSettings { cluster_cidrs: vec![(ip("10.244.0.0"), 16), (ip("fd44::"), 16)], masquerade_all, ports };
    dp.maps.set_nat(&settings).unwrap_or_else(|e| panic!("{e}"));
    let addrs = BTreeMap::from([((TEST_IFINDEX, xvs_common::AF_INET), ip(NODE)), ((TEST_IFINDEX, xvs_common::AF_INET6), ip(NODE6))]);
    dp.maps.set_nat_addrs(&addrs).unwrap_or_else(|e| panic!("{e}"));
    for (id, vip, backend, proto) in [(1, VIP, BACKEND, IPPROTO_TCP), (2, VIP6, BACKEND6, IPPROTO_TCP), (3, VIP, BACKEND, IPPROTO_UDP)] {
        let mut svc = service(id, vip, proto, Scheduler::RoundRobin, &[(id, backend, 1)]);
        svc.flags = flags;
        dp.maps.apply_service(&svc).unwrap_or_else(|e| panic!("{e}"));
    }
    dp
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Runs `program` on `pkt`, checks the verdict and the one reason counted, returns the output.
fn run(dp: &mut Dataplane, program: fn(&mut Dataplane, &[u8]) -> Run, pkt: &Pkt, verdict: u32, reason: Reason) -> Vec<u8> {
    let before = Reasons::read(dp);
    let out = program(dp, &pkt.bytes());
    assert_eq!(out.verdict, verdict, "{pkt:?}");
    assert_eq!(Reasons::read(dp).since(&before), vec![(reason, 1)], "{pkt:?}");
    out.out
}

/// The source address and port of a frame.
fn source_of(frame: &[u8]) -> std::net::SocketAddr {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap_or_else(|e| panic!("{e}"));
    let addr = match sliced.net {
        Some(NetSlice::Ipv4(v4)) => std::net::IpAddr::V4(v4.header().source_addr()),
        Some(NetSlice::Ipv6(v6)) => std::net::IpAddr::V6(v6.header().source_addr()),
        _ => panic!("not IP"),
    };
    let port = match sliced.transport {
        Some(TransportSlice::Tcp(t)) => t.source_port(),
        Some(TransportSlice::Udp(u)) => u.source_port(),
        _ => panic!("not TCP/UDP"),
    };
    std::net::SocketAddr::new(addr, port)
}

/// One flow end to end: DNAT at ingress, SNAT at egress (twice: the port stays), the reply
/// unmasqueraded at ingress and reverse-NATed at egress. Returns the SNAT source.
fn masqueraded_flow(dp: &mut Dataplane, ingress: fn(&mut Dataplane, &[u8]) -> Run, l4: (L4, L4), client: &str, vip: &str, backend: &str, node: &str) -> std::net::SocketAddr {
    let first = Pkt::new(l4.0, client, vip);
    let dnat = run(dp, ingress, &first, XDP_OR_TC_PASS, Reason::NewFlow);
    assert_eq!(dnat, first.with_dst(backend).bytes());
    let out = run(dp, tc_egress, &first.with_dst(backend), TC_ACT_OK, Reason::Masquerade);
    let snat = source_of(&out);
    assert_eq!(snat.ip(), ip(node), "masqueraded to the interface's address");
    assert!((61000..=65535).contains(&snat.port()), "{snat}");
    assert_eq!(out, first.with_dst(backend).with_src(&snat.to_string()).bytes(), "checksums and all");
    // The flow's next packet takes the same source.
    let next = Pkt::new(l4.1, client, vip).with_dst(backend);
    assert_eq!(run(dp, tc_egress, &next, TC_ACT_OK, Reason::Masquerade), next.with_src(&snat.to_string()).bytes());
    // The reply comes back to the SNAT address and goes on to the client, then leaves from the VIP.
    let reply = Pkt::new(l4.1, backend, &snat.to_string());
    let on = run(dp, ingress, &reply, XDP_OR_TC_PASS, Reason::Unmasquerade);
    assert_eq!(on, reply.with_dst(client).bytes());
    assert_eq!(run(dp, tc_egress, &reply.with_dst(client), TC_ACT_OK, Reason::ReplyNat), reply.with_dst(client).with_src(vip).bytes());
    snat
}

/// XDP_PASS and TC_ACT_OK differ; the ingress helpers below return the TC verdict as XDP's.
const XDP_OR_TC_PASS: u32 = XDP_PASS;

fn tc_ingress_as_xdp(dp: &mut Dataplane, input: &[u8]) -> Run {
    let mut run = tc_ingress(dp, input);
    run.verdict = match run.verdict {
        TC_ACT_OK => XDP_PASS,
        TC_ACT_SHOT => XDP_DROP,
        other => other,
    };
    run
}

#[test]
fn external_traffic_is_masqueraded_and_replies_find_their_client_v4_v6_tcp_udp() {
    for ingress in [xdp as fn(&mut Dataplane, &[u8]) -> Run, tc_ingress_as_xdp] {
        let mut dp = setup(SERVICE_F_EXTERNAL, 61000..=65535);
        masqueraded_flow(&mut dp, ingress, (L4::TcpSyn, L4::TcpAck), OUTSIDE, VIP, BACKEND, NODE);
        masqueraded_flow(&mut dp, ingress, (L4::TcpSyn, L4::TcpAck), OUTSIDE6, VIP6, BACKEND6, NODE6);
        masqueraded_flow(&mut dp, ingress, (L4::Udp, L4::Udp), OUTSIDE, VIP, BACKEND, NODE);
        masqueraded_flow(&mut dp, ingress, (L4::UdpNoChecksum, L4::UdpNoChecksum), "192.0.2.7:40001", VIP, BACKEND, NODE);
    }
}

#[test]
fn kube_proxys_rules_decide_who_is_masqueraded() {
    // A cluster IP: from outside the cluster CIDR masqueraded, from a pod not.
    let mut dp = setup(0, 61000..=65535);
    masqueraded_flow(&mut dp, xdp, (L4::TcpSyn, L4::TcpAck), OUTSIDE, VIP, BACKEND, NODE);
    let from_pod = Pkt::new(L4::TcpSyn, POD, VIP);
    run(&mut dp, xdp, &from_pod, XDP_PASS, Reason::NewFlow);
    let out = run(&mut dp, tc_egress, &from_pod.with_dst(BACKEND), TC_ACT_OK, Reason::NotService);
    assert_eq!(out, from_pod.with_dst(BACKEND).bytes(), "a pod's address is kept");
    // The decision is recorded: the next packet is left alone the same way.
    let next = Pkt::new(L4::TcpAck, POD, VIP).with_dst(BACKEND);
    assert_eq!(run(&mut dp, tc_egress, &next, TC_ACT_OK, Reason::NotService), next.bytes());
    // Hairpin: the backend connecting to its own service is masqueraded even from the pod CIDR.
    let hairpin_client = "10.244.2.2:40000";
    masqueraded_flow(&mut dp, xdp, (L4::TcpSyn, L4::TcpAck), hairpin_client, VIP, BACKEND, NODE);

    // --masquerade-all: a cluster IP's flows from pods too.
    let mut dp = setup_with(0, 61000..=65535, true);
    masqueraded_flow(&mut dp, xdp, (L4::TcpSyn, L4::TcpAck), POD, VIP, BACKEND, NODE);

    // externalTrafficPolicy Local keeps the client's address, --masquerade-all or not.
    for masquerade_all in [false, true] {
        let mut dp = setup_with(SERVICE_F_EXTERNAL | SERVICE_F_KEEP_CLIENT, 61000..=65535, masquerade_all);
        let outside = Pkt::new(L4::TcpSyn, OUTSIDE, VIP);
        run(&mut dp, xdp, &outside, XDP_PASS, Reason::NewFlow);
        assert_eq!(run(&mut dp, tc_egress, &outside.with_dst(BACKEND), TC_ACT_OK, Reason::NotService), outside.with_dst(BACKEND).bytes());
    }
}

#[test]
fn ports_run_out_are_counted_and_never_shared_by_live_flows() {
    // Two ports for one backend: two flows get them, the third is dropped and counted.
    let mut dp = setup(SERVICE_F_EXTERNAL, 61000..=61001);
    let mut taken = Vec::new();
    for port in 40000..40002 {
        let client = format!("192.0.2.7:{port}");
        let snat = masqueraded_flow(&mut dp, xdp, (L4::TcpSyn, L4::TcpAck), &client, VIP, BACKEND, NODE);
        taken.push(snat.port());
    }
    taken.sort_unstable();
    assert_eq!(taken, vec![61000, 61001], "each live flow its own port");
    let third = Pkt::new(L4::TcpSyn, "192.0.2.7:40002", VIP);
    run(&mut dp, xdp, &third, XDP_PASS, Reason::NewFlow);
    run(&mut dp, tc_egress, &third.with_dst(BACKEND), TC_ACT_SHOT, Reason::SnatPortsExhausted);
    // Another backend address is another tuple space: its flows still get ports.
    dp.maps.apply_service(&{
        let mut svc = service(1, VIP, IPPROTO_TCP, Scheduler::RoundRobin, &[(4, "10.244.3.3:8080", 1)]);
        svc.flags = SERVICE_F_EXTERNAL;
        svc
    }).unwrap_or_else(|e| panic!("{e}"));
    masqueraded_flow(&mut dp, xdp, (L4::TcpSyn, L4::TcpAck), "192.0.2.7:40003", VIP, "10.244.3.3:8080", NODE);
}

#[test]
fn an_interface_without_an_address_and_strangers_are_left_alone() {
    let mut dp = setup(SERVICE_F_EXTERNAL, 61000..=65535);
    dp.maps.set_nat_addrs(&BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
    let first = Pkt::new(L4::TcpSyn, OUTSIDE, VIP);
    run(&mut dp, xdp, &first, XDP_PASS, Reason::NewFlow);
    let out = run(&mut dp, tc_egress, &first.with_dst(BACKEND), TC_ACT_OK, Reason::SnatNoAddress);
    assert_eq!(out, first.with_dst(BACKEND).bytes());
    // A packet to a port of the SNAT range that no flow took passes untouched, as does one to
    // a port outside it.
    for to in ["10.2.0.1:61234", "10.2.0.1:22"] {
        let stray = Pkt::new(L4::TcpAck, BACKEND, to);
        assert_eq!(run(&mut dp, xdp, &stray, XDP_PASS, Reason::NotService), stray.bytes());
    }
}

#[test]
fn the_collector_removes_every_entry_of_a_dead_masqueraded_flow_and_orphans_but_nothing_live() {
    use xvs::sync::flows::{collect_garbage, scan};
    let mut dp = setup(0, 61000..=65535);
    // A masqueraded flow (client outside the cluster CIDR), one that keeps its client's
    // address (a pod), and an UNMASQ entry no flow owns (a racing CPU's leftover).
    masqueraded_flow(&mut dp, xdp, (L4::TcpSyn, L4::TcpAck), OUTSIDE, VIP, BACKEND, NODE);
    let from_pod = Pkt::new(L4::TcpSyn, POD, VIP);
    run(&mut dp, xdp, &from_pod, XDP_PASS, Reason::NewFlow);
    run(&mut dp, tc_egress, &from_pod.with_dst(BACKEND), TC_ACT_OK, Reason::NotService);
    let entries = |dp: &Dataplane| dp.maps.conntrack.iter().filter_map(Result::ok).collect::<Vec<_>>();
    let kinds = |dp: &Dataplane| {
        let mut k: Vec<u8> = entries(dp).iter().map(|(_, e)| e.kind).collect();
        k.sort_unstable();
        k
    };
    use xvs_common::{FLOW_FORWARD as F, FLOW_MASQ as M, FLOW_REPLY as R, FLOW_UNMASQ as U};
    assert_eq!(kinds(&dp), vec![F, F, R, R, M, M, U]);
    let (stray_key, mut stray) = entries(&dp).into_iter().find(|(_, e)| e.kind == U).unwrap_or_else(|| panic!("no UNMASQ entry"));
    let mut stray_key = stray_key;
    stray_key.dport = (u16::from_be(stray_key.dport) ^ 1).to_be();
    stray.nat_port = 1234u16.to_be();
    dp.maps.conntrack.insert(stray_key, stray, 0).unwrap_or_else(|e| panic!("{e}"));

    let now = xvs::sync::datapath_secs(&dp.maps).unwrap_or_else(|e| panic!("{e}"));
    let live = scan(&dp.maps, now).unwrap_or_else(|e| panic!("{e}"));
    assert!(live.dead.is_empty());
    assert_eq!(live.orphans, vec![stray_key], "only the stray entry is an orphan");
    assert_eq!(collect_garbage(&mut dp.maps, &live, now).unwrap_or_else(|e| panic!("{e}")), 1);
    assert_eq!(kinds(&dp), vec![F, F, R, R, M, M, U], "live flows keep every entry");

    // Both flows die (SYN_SENT/ESTABLISHED: 900 s at most): every entry goes.
    dp.maps.set_clock_offset(1000).unwrap_or_else(|e| panic!("{e}"));
    let now = xvs::sync::datapath_secs(&dp.maps).unwrap_or_else(|e| panic!("{e}"));
    let dead = scan(&dp.maps, now).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dead.dead.len(), 2);
    assert_eq!(collect_garbage(&mut dp.maps, &dead, now).unwrap_or_else(|e| panic!("{e}")), 7);
    assert_eq!(kinds(&dp), Vec::<u8>::new());
}

/// ICMP errors about masqueraded packets: a router between the nodes (too big) or the remote
/// backend (port unreachable) answers the packet as it left, `node:port -> backend`. Ingress
/// sends the error on to the client with the quote's source translated back (the unmasquerade
/// program); TC egress on the client's side then translates the quote's destination back to the
/// VIP and, when the backend sent it, the error's own source. Cut quotes and whole ones.
#[test]
fn icmp_errors_about_masqueraded_packets_reach_the_client_translated_v4_v6() {
    use xvs_integration::icmp_frames::{icmp_error, quote, IcmpError};
    for (client, vip, backend, node, router) in [(OUTSIDE, VIP, BACKEND, NODE, "10.2.0.254"), (OUTSIDE6, VIP6, BACKEND6, NODE6, "fd02::fe")] {
        for (error, from_backend) in [(IcmpError::TooBig, false), (IcmpError::PortUnreachable, true)] {
            for cut in [Some(28), Some(48), None] {
                let mut dp = setup(SERVICE_F_EXTERNAL, 61000..=65535);
                let snat = masqueraded_flow(&mut dp, xdp, (L4::TcpSyn, L4::TcpAck), client, vip, backend, node);
                let client_ip = sa(client).ip();
                let sender = if from_backend { sa(backend).ip() } else { ip(router) };
                let ack = Pkt::new(L4::TcpAck, client, vip);
                let cut = cut.map(|c| c + if client_ip.is_ipv6() { 20 } else { 0 });
                let as_sent = quote(&ack.with_dst(backend).with_src(&snat.to_string()), cut);
                let error_in = icmp_error(sender, snat.ip(), error, &as_sent);
                let before = Reasons::read(&dp);
                let run = xdp(&mut dp, &error_in);
                assert_eq!(run.verdict, XDP_PASS);
                assert_eq!(Reasons::read(&dp).since(&before), vec![(Reason::IcmpErrorNat, 1)], "{error:?} {cut:?}");
                let to_client = icmp_error(sender, client_ip, error, &quote(&ack.with_dst(backend), cut));
                assert_eq!(run.out, to_client, "{error:?} {cut:?}: unmasqueraded");
                let out = tc_egress(&mut dp, &to_client);
                let own_source = if from_backend { sa(vip).ip() } else { sender };
                assert_eq!(out.out, icmp_error(own_source, client_ip, error, &quote(&ack, cut)), "{error:?} {cut:?}: to the client");
            }
        }
    }
    // An error about a tuple no flow took passes untouched.
    let mut dp = setup(SERVICE_F_EXTERNAL, 61000..=65535);
    let stray = quote(&Pkt::new(L4::TcpAck, "10.2.0.1:61234", BACKEND), None);
    let frame = icmp_error(ip("10.2.0.254"), ip(NODE), IcmpError::TooBig, &stray);
    let run = xdp(&mut dp, &frame);
    assert_eq!((run.verdict, run.out), (XDP_PASS, frame));
}

#[test]
fn a_flow_rescheduled_to_another_backend_leaves_orphans_the_collector_finds() {
    use xvs::sync::flows::{collect_garbage, scan};
    let mut dp = setup(SERVICE_F_EXTERNAL, 61000..=65535);
    let old = masqueraded_flow(&mut dp, xdp, (L4::TcpSyn, L4::TcpAck), OUTSIDE, VIP, BACKEND, NODE);
    // The backend goes; the flow's next packet moves to the new one and is masqueraded anew.
    let moved = "10.244.3.3:8080";
    let mut svc = service(1, VIP, IPPROTO_TCP, Scheduler::RoundRobin, &[(4, moved, 1)]);
    svc.flags = SERVICE_F_EXTERNAL;
    dp.maps.apply_service(&svc).unwrap_or_else(|e| panic!("{e}"));
    dp.maps.remove_backend(1).unwrap_or_else(|e| panic!("{e}"));
    let next = Pkt::new(L4::TcpAck, OUTSIDE, VIP);
    assert_eq!(run(&mut dp, xdp, &next, XDP_PASS, Reason::Rescheduled), next.with_dst(moved).bytes());
    run(&mut dp, tc_egress, &next.with_dst(moved), TC_ACT_OK, Reason::Masquerade);

    let now = xvs::sync::datapath_secs(&dp.maps).unwrap_or_else(|e| panic!("{e}"));
    let found = scan(&dp.maps, now).unwrap_or_else(|e| panic!("{e}"));
    let mut orphans: Vec<(u8, std::net::SocketAddr, std::net::SocketAddr)> = found
        .orphans
        .iter()
        .map(|k| {
            let kind = dp.maps.conntrack.get(k, 0).map_or(0, |e| e.kind);
            let at = |a: &[u32; 4], p: u16| std::net::SocketAddr::new(xvs::dataplane::from_map_addr(a, k.family).unwrap_or_else(|| panic!("family")), u16::from_be(p));
            (kind, at(&k.saddr, k.sport), at(&k.daddr, k.dport))
        })
        .collect();
    orphans.sort_unstable();
    use xvs_common::{FLOW_MASQ as M, FLOW_REPLY as R, FLOW_UNMASQ as U};
    assert_eq!(
        orphans,
        vec![(R, sa(BACKEND), sa(OUTSIDE)), (M, sa(OUTSIDE), sa(BACKEND)), (U, sa(BACKEND), old)],
        "the old backend's reply, MASQ and UNMASQ entries, nothing of the flow's new ones"
    );
    assert_eq!(collect_garbage(&mut dp.maps, &found, now).unwrap_or_else(|e| panic!("{e}")), 3);
    // The moved flow still works both ways.
    let reply = Pkt::new(L4::TcpAck, moved, &{
        let masq = dp.maps.conntrack.iter().filter_map(Result::ok).find(|(_, e)| e.kind == U).unwrap_or_else(|| panic!("no UNMASQ entry left"));
        std::net::SocketAddr::new(ip(NODE), u16::from_be(masq.0.dport)).to_string()
    });
    run(&mut dp, xdp, &reply, XDP_PASS, Reason::Unmasquerade);
}
