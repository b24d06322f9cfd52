//! ICMP errors about NATed flows, through the real programs (BPF_PROG_TEST_RUN). Every
//! expected frame is built from scratch by etherparse around the quote as it must read after
//! translation (itself a packet etherparse built, cut where the error cuts it), so every
//! checksum (the error's IPv4 header, ICMP/ICMPv6 with its pseudo-header, the quoted IPv4
//! header, the quoted TCP/UDP checksum where the quote holds it) is checked independently.
use std::net::{IpAddr, SocketAddr};

use xvs::dataplane::Dataplane;
use xvs_common::Reason;
use xvs_integration::{
    icmp_frames::{icmp_error, quote, IcmpError as Error},
    table::*,
    *,
};

fn ip(s: &str) -> IpAddr {
    s.parse::<SocketAddr>().map(|a| a.ip()).or_else(|_| s.parse()).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A flow through the standard table: the client's first packet through XDP (DNAT, both
/// connection-table entries).
fn flow(dp: &mut Dataplane, first: &Pkt) {
    let run = xdp(dp, &first.bytes());
    assert_eq!(run.verdict, XDP_PASS);
    assert_ne!(run.out, first.bytes(), "the flow's first packet was not DNATed");
}

/// Which program meets the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

fn run(dp: &mut Dataplane, hook: Hook, frame: &[u8]) -> Run {
    match hook {
        Hook::Xdp => xdp(dp, frame),
        Hook::TcIngress => tc_ingress(dp, frame),
        Hook::TcEgress => tc_egress(dp, frame),
    }
}

fn passed(hook: Hook) -> u32 {
    if hook == Hook::Xdp { XDP_PASS } else { TC_ACT_OK }
}

struct Case {
    name: &'static str,
    /// The flow's first packet (client -> VIP).
    first: Pkt,
    hook: Hook,
    input: Vec<u8>,
    /// `None`: passes untouched.
    expected: Option<Vec<u8>>,
    reason: Reason,
}

/// Errors on their way to the client (TC egress): about the client's packet after DNAT.
fn to_client(v6: bool) -> Vec<Case> {
    let (client, vip, backend, router) =
        if v6 { (CLIENT6, VIP6, BACKEND6, "fd00:2::1") } else { (CLIENT, VIP, BACKEND, "10.0.2.1") };
    let (udp_vip, udp_backend) = if v6 { ("[fd00::10]:53", "[fd00:2::2]:5353") } else { ("10.96.0.10:53", "10.0.2.2:5353") };
    let syn = Pkt::new(L4::TcpSyn, client, vip);
    let ack = Pkt::new(L4::TcpAck, client, vip);
    let udp = Pkt::new(L4::Udp, client, udp_vip);
    let ip_hlen = if v6 { 40 } else { 20 };
    let mut cases = vec![
        // A router between node and backend: the quote's destination goes back to the VIP, the
        // router's own address stays. Cut after 8 bytes of TCP: no TCP checksum in the quote.
        Case {
            name: "router's too-big about a DNATed segment, quote cut after 8 bytes of TCP",
            first: syn.clone(),
            hook: Hook::TcEgress,
            input: icmp_error(ip(router), ip(client), Error::TooBig, &quote(&ack.with_dst(backend), Some(ip_hlen + 8))),
            expected: Some(icmp_error(ip(router), ip(client), Error::TooBig, &quote(&ack, Some(ip_hlen + 8)))),
            reason: Reason::IcmpErrorNat,
        },
        // The whole segment quoted: its TCP checksum is translated too.
        Case {
            name: "router's too-big quoting the whole DNATed segment",
            first: syn.clone(),
            hook: Hook::TcEgress,
            input: icmp_error(ip(router), ip(client), Error::TooBig, &quote(&ack.with_dst(backend), None)),
            expected: Some(icmp_error(ip(router), ip(client), Error::TooBig, &quote(&ack, None))),
            reason: Reason::IcmpErrorNat,
        },
        // The backend's own port unreachable: the error's source is the backend, and goes to the VIP.
        Case {
            name: "backend's port unreachable about a DNATed datagram",
            first: udp.clone(),
            hook: Hook::TcEgress,
            input: icmp_error(ip(udp_backend), ip(client), Error::PortUnreachable, &quote(&udp.with_dst(udp_backend), None)),
            expected: Some(icmp_error(ip(vip), ip(client), Error::PortUnreachable, &quote(&udp, None))),
            reason: Reason::IcmpErrorNat,
        },
        // No flow of xvs's behind the quote (another client port): untouched.
        Case {
            name: "error about a packet of no flow",
            first: syn.clone(),
            hook: Hook::TcEgress,
            input: icmp_error(ip(router), ip(client), Error::TooBig, &quote(&ack.with_src(&client.replace("40000", "40001")).with_dst(backend), None)),
            expected: None,
            reason: Reason::NotService,
        },
        // The quote ends inside the TCP ports: too short to be matched.
        Case {
            name: "quote cut inside the ports",
            first: syn.clone(),
            hook: Hook::TcEgress,
            input: icmp_error(ip(router), ip(client), Error::TooBig, &quote(&ack.with_dst(backend), Some(ip_hlen + 3))),
            expected: None,
            reason: Reason::Malformed,
        },
    ];
    if !v6 {
        let nocsum = Pkt::new(L4::UdpNoChecksum, client, udp_vip);
        cases.push(Case {
            name: "a quoted UDP datagram without checksum keeps none",
            first: nocsum.clone(),
            hook: Hook::TcEgress,
            input: icmp_error(ip(udp_backend), ip(client), Error::PortUnreachable, &quote(&nocsum.with_dst(udp_backend), None)),
            expected: Some(icmp_error(ip(vip), ip(client), Error::PortUnreachable, &quote(&nocsum, None))),
            reason: Reason::IcmpErrorNat,
        });
    }
    cases
}

/// Errors on their way to the service (ingress): about a reply the client got from the VIP.
fn to_service(v6: bool, hook: Hook) -> Vec<Case> {
    let (client, vip, backend, router) =
        if v6 { (CLIENT6, VIP6, BACKEND6, "fd00:1::1") } else { (CLIENT, VIP, BACKEND, "10.0.1.1") };
    let syn = Pkt::new(L4::TcpSyn, client, vip);
    // The reply as the client saw it (after reverse NAT) and as the backend sent it.
    let reply = Pkt::new(L4::TcpAck, vip, client);
    let sent = reply.with_src(backend);
    let ip_hlen = if v6 { 40 } else { 20 };
    vec![
        // PMTU discovery for a VIP: a router towards the client cannot forward the backend's
        // large reply. The error goes to the backend, quoting what the backend sent.
        Case {
            name: "router's too-big about a reply, to the VIP",
            first: syn.clone(),
            hook,
            input: icmp_error(ip(router), ip(vip), Error::TooBig, &quote(&reply, Some(ip_hlen + 8))),
            expected: Some(icmp_error(ip(router), ip(backend), Error::TooBig, &quote(&sent, Some(ip_hlen + 8)))),
            reason: Reason::IcmpErrorNat,
        },
        Case {
            name: "client's port unreachable quoting the whole reply",
            first: syn.clone(),
            hook,
            input: icmp_error(ip(client), ip(vip), Error::PortUnreachable, &quote(&reply, None)),
            expected: Some(icmp_error(ip(client), ip(backend), Error::PortUnreachable, &quote(&sent, None))),
            reason: Reason::IcmpErrorNat,
        },
        Case {
            name: "error about a reply of no flow",
            first: syn.clone(),
            hook,
            input: icmp_error(ip(router), ip(vip), Error::TooBig, &quote(&reply.with_dst(&client.replace("40000", "40001")), None)),
            expected: None,
            reason: Reason::NotService,
        },
    ]
}

#[test]
fn icmp_errors_about_nated_flows_are_translated_both_ways_v4_and_v6() {
    let mut cases = Vec::new();
    for v6 in [false, true] {
        cases.extend(to_client(v6));
        cases.extend(to_service(v6, Hook::Xdp));
        cases.extend(to_service(v6, Hook::TcIngress));
    }
    for case in cases {
        let mut dp = load();
        standard(&mut dp);
        flow(&mut dp, &case.first);
        let before = Reasons::read(&dp);
        let out = run(&mut dp, case.hook, &case.input);
        let what = format!("{} ({:?}, {})", case.name, case.hook, if case.first.src.is_ipv6() { "v6" } else { "v4" });
        assert_eq!(out.verdict, passed(case.hook), "{what}: verdict");
        let expected = case.expected.as_ref().unwrap_or(&case.input);
        assert_eq!(hex(&out.out), hex(expected), "{what}: bytes");
        assert_eq!(Reasons::read(&dp).since(&before), vec![(case.reason, 1)], "{what}: counters");
    }
}

/// A router may quote as little as the IP header and 8 bytes: every cut from nothing to the
/// whole segment. Shorter than the ports: untouched, never dropped. From 8 bytes of TCP on:
/// translated, the TCP checksum too once the quote holds it.
#[test]
fn every_quote_length_either_translates_exactly_or_passes_untouched() {
    for v6 in [false, true] {
        let (client, vip, backend, router) =
            if v6 { (CLIENT6, VIP6, BACKEND6, "fd00:2::1") } else { (CLIENT, VIP, BACKEND, "10.0.2.1") };
        let ack = Pkt::new(L4::TcpAck, client, vip);
        let whole = quote(&ack, None).len();
        let l4 = if v6 { 40 } else { 20 };
        let mut dp = load();
        standard(&mut dp);
        flow(&mut dp, &Pkt::new(L4::TcpSyn, client, vip));
        for cut in 0..=whole {
            let input = icmp_error(ip(router), ip(client), Error::TooBig, &quote(&ack.with_dst(backend), Some(cut)));
            let before = Reasons::read(&dp);
            let out = tc_egress(&mut dp, &input);
            assert_eq!(out.verdict, TC_ACT_OK, "v6={v6} cut {cut}");
            let counted = Reasons::read(&dp).since(&before);
            if cut < l4 + 8 {
                assert_eq!(hex(&out.out), hex(&input), "v6={v6} cut {cut}: modified");
                assert_eq!(counted, vec![(Reason::Malformed, 1)], "v6={v6} cut {cut}");
            } else {
                let mut translated = quote(&ack, Some(cut));
                // A quote that ends after the first byte of the TCP checksum: that byte cannot
                // be translated (the update needs both) and stays as it was.
                if cut == l4 + 17 {
                    translated[l4 + 16] = quote(&ack.with_dst(backend), None)[l4 + 16];
                }
                let expected = icmp_error(ip(router), ip(client), Error::TooBig, &translated);
                assert_eq!(hex(&out.out), hex(&expected), "v6={v6} cut {cut}");
                assert_eq!(counted, vec![(Reason::IcmpErrorNat, 1)], "v6={v6} cut {cut}");
            }
        }
    }
}

/// Every prefix of an ICMP error frame (the frame itself cut short, its IP length then
/// overstated): never modified, never dropped. (The kernel runs no skb program on a frame too
/// short for an Ethernet and an IPv4 header: nothing to check there but "not run".)
#[test]
fn truncated_icmp_error_frames_pass_untouched() {
    let ack = Pkt::new(L4::TcpAck, CLIENT, VIP);
    let frame = icmp_error(ip("10.0.2.1"), ip(CLIENT), Error::TooBig, &quote(&ack.with_dst(BACKEND), None));
    let mut dp = load();
    standard(&mut dp);
    flow(&mut dp, &Pkt::new(L4::TcpSyn, CLIENT, VIP));
    for len in 15..frame.len() {
        let before = Reasons::read(&dp);
        let out = match try_tc_egress(&mut dp, &frame[..len]) {
            Ok(out) => out,
            Err(_) if len < 14 + 20 => continue,
            Err(e) => panic!("len {len}: {e:?}"),
        };
        assert_eq!(out.verdict, TC_ACT_OK, "len {len}");
        assert_eq!(out.out, &frame[..len], "len {len}: modified");
        assert_eq!(Reasons::read(&dp).since(&before), vec![(Reason::Malformed, 1)], "len {len}");
    }
}
