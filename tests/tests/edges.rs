//! Packets at the edges of what the parser accepts, through XDP and TC ingress alike: source
//! routes (the VIP only a hop), QinQ, long IPv6 extension chains, lengths that disagree,
//! Ethernet padding, and invalid TCP flag combinations on a live flow. Rewritten packets are
//! compared byte for byte with frames built from scratch (etherparse, plus the same edits), so
//! every checksum is checked independently.
use xvs::dataplane::Dataplane;
use xvs_common::{Reason, Scheduler, IPPROTO_TCP};
use xvs_integration::{table::*, *};

/// TCP flag bits.
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;

/// What a frame must come out as.
enum Out {
    Rewritten(Vec<u8>),
    Untouched,
}

/// Runs `input` through XDP and TC ingress on fresh dataplanes and checks the verdict (pass),
/// the bytes and the one reason counted.
fn expect(name: &str, input: &[u8], out: &Out, reason: Reason) {
    for tc in [false, true] {
        let mut dp = load();
        standard(&mut dp);
        let before = Reasons::read(&dp);
        let run = if tc { tc_ingress(&mut dp, input) } else { xdp(&mut dp, input) };
        let program = if tc { "tc" } else { "xdp" };
        assert_eq!(run.verdict, if tc { TC_ACT_OK } else { XDP_PASS }, "{name} ({program}): verdict");
        let want = match out {
            Out::Rewritten(bytes) => bytes.as_slice(),
            Out::Untouched => input,
        };
        assert_eq!(hex(&run.out), hex(want), "{name} ({program}): output bytes");
        assert_eq!(Reasons::read(&dp).since(&before), vec![(reason, 1)], "{name} ({program}): counters");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn syn() -> Pkt {
    Pkt::new(L4::TcpSyn, CLIENT, VIP)
}

fn syn6() -> Pkt {
    Pkt::new(L4::TcpSyn, CLIENT6, VIP6)
}

/// `pkt`'s frame with `options` (a multiple of 4 bytes) after its IPv4 header: IHL, total
/// length and header checksum follow; the L4 checksum does not cover options.
fn with_options(pkt: &Pkt, options: &[u8]) -> Vec<u8> {
    let mut frame = pkt.bytes();
    let l3 = pkt.l3_offset();
    frame.splice(l3 + 20..l3 + 20, options.iter().copied());
    frame[l3] = 0x40 | (5 + options.len() / 4) as u8;
    let total = u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]) + options.len() as u16;
    frame[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut frame, l3);
    frame
}

/// A loose (0x83) or strict (0x89) source route of one hop with `pointer`, then end of list.
fn source_route(kind: u8, pointer: u8) -> [u8; 8] {
    [kind, 7, pointer, 10, 0, 9, 9, 0]
}

#[test]
fn source_routed_packets_to_a_vip_hop_pass_untouched() {
    for kind in [0x83, 0x89] {
        // Pointer 4 <= length 7: one hop left, the VIP is not the destination.
        expect("ipv4 source route with a hop left", &with_options(&syn(), &source_route(kind, 4)), &Out::Untouched, Reason::NotService);
        // Pointer 8 > length 7: the route is used up, the VIP is the final destination.
        let done = source_route(kind, 8);
        expect(
            "ipv4 source route used up",
            &with_options(&syn(), &done),
            &Out::Rewritten(with_options(&syn().with_dst(BACKEND), &done)),
            Reason::NewFlow,
        );
    }
    // Options walked past NOPs; a bad option length is malformed.
    expect("ipv4 nop then source route", &with_options(&syn(), &[1, 0x83, 7, 4, 10, 0, 9, 9]), &Out::Untouched, Reason::NotService);
    expect("ipv4 option length 1", &with_options(&syn(), &[0x44, 1, 0, 0, 0, 0, 0, 0]), &Out::Untouched, Reason::Malformed);
    expect("ipv4 option past the header", &with_options(&syn(), &[1, 1, 0x44, 12, 0, 0, 0, 0]), &Out::Untouched, Reason::Malformed);
    // Up to eight options are walked (the verifier's budget); more pass untouched.
    let nops = |n: usize| {
        let mut o = vec![1u8; n];
        o.resize(n.div_ceil(4) * 4, 0);
        o
    };
    expect("ipv4 eight nops", &with_options(&syn(), &nops(8)), &Out::Rewritten(with_options(&syn().with_dst(BACKEND), &nops(8))), Reason::NewFlow);
    expect("ipv4 seven nops and end of list", &with_options(&syn(), &nops(7)), &Out::Rewritten(with_options(&syn().with_dst(BACKEND), &nops(7))), Reason::NewFlow);
    expect("ipv4 nine nops", &with_options(&syn(), &nops(9)), &Out::Untouched, Reason::Malformed);

    let l3 = syn6().l3_offset();
    // Routing header type 4 (SRH-like), segments left 1: the VIP is a waypoint.
    let routed = insert_ipv6_header(syn6().bytes(), l3, 43, [0, 4, 1, 0, 0, 0, 0]);
    expect("ipv6 routing header with segments left", &routed, &Out::Untouched, Reason::NotService);
    let arrived = |p: &Pkt| insert_ipv6_header(p.bytes(), l3, 43, [0, 4, 0, 0, 0, 0, 0]);
    expect("ipv6 routing header, no segments left", &arrived(&syn6()), &Out::Rewritten(arrived(&syn6().with_dst(BACKEND6))), Reason::NewFlow);
}

#[test]
fn qinq_service_traffic_is_balanced() {
    for pkt in [Pkt { vlan: Some(100), outer_vlan: Some(7), ..syn() }, Pkt { vlan: Some(4000), outer_vlan: Some(300), ..syn6() }] {
        let to = if pkt.dst.is_ipv6() { BACKEND6 } else { BACKEND };
        expect("qinq", &pkt.bytes(), &Out::Rewritten(pkt.with_dst(to).bytes()), Reason::NewFlow);
    }
    // Three tags are more than a frame on the wire carries: left to the kernel.
    let mut three = Pkt { vlan: Some(100), outer_vlan: Some(7), ..syn() }.bytes();
    three.splice(12..12, [0x88, 0xa8, 0, 5]);
    expect("three vlan tags", &three, &Out::Untouched, Reason::NotIp);
}

#[test]
fn ipv6_extension_chains_up_to_eight_headers_are_walked() {
    let chain = |p: &Pkt, n: usize| (0..n).fold(p.bytes(), |f, _| insert_ipv6_ext(f, p.l3_offset(), 60));
    for n in 1..=8 {
        expect(&format!("{n} destination options headers"), &chain(&syn6(), n), &Out::Rewritten(chain(&syn6().with_dst(BACKEND6), n)), Reason::NewFlow);
    }
    expect("9 extension headers", &chain(&syn6(), 9), &Out::Untouched, Reason::Ipv6ExtUnsupported);
}

#[test]
fn lengths_that_disagree_pass_untouched() {
    let v4 = syn().bytes();
    let l3 = syn().l3_offset();
    let l4 = syn().l4_offset();
    let edited = |base: &[u8], at: usize, bytes: &[u8], v4_header: bool| {
        let mut f = base.to_vec();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        if v4_header {
            fix_ipv4_checksum(&mut f, l3);
        }
        f
    };
    let total = u16::from_be_bytes([v4[l3 + 2], v4[l3 + 3]]);
    expect("ipv4 total length past the frame", &edited(&v4, l3 + 2, &(total + 1).to_be_bytes(), true), &Out::Untouched, Reason::Malformed);
    // The TCP header would end in Ethernet padding: the checksum would be written there.
    expect("ipv4 total length inside the tcp header", &edited(&v4, l3 + 2, &(20u16 + 12).to_be_bytes(), true), &Out::Untouched, Reason::Malformed);
    expect("tcp data offset 4", &edited(&v4, l4 + 12, &[0x40], false), &Out::Untouched, Reason::Malformed);
    expect("tcp data offset past the datagram", &edited(&v4, l4 + 12, &[0xf0], false), &Out::Untouched, Reason::Malformed);

    let udp = Pkt::new(L4::Udp, CLIENT, "10.96.0.10:53");
    let u = udp.bytes();
    let ulen = u16::from_be_bytes([u[l4 + 4], u[l4 + 5]]);
    expect("udp length longer than the datagram", &edited(&u, l4 + 4, &(ulen + 1).to_be_bytes(), false), &Out::Untouched, Reason::Malformed);
    expect("udp length shorter than the datagram", &edited(&u, l4 + 4, &(ulen - 1).to_be_bytes(), false), &Out::Untouched, Reason::Malformed);
    expect("udp length below its header", &edited(&u, l4 + 4, &4u16.to_be_bytes(), false), &Out::Untouched, Reason::Malformed);

    let v6 = syn6().bytes();
    let l3 = syn6().l3_offset();
    let plen = u16::from_be_bytes([v6[l3 + 4], v6[l3 + 5]]);
    expect("ipv6 payload length past the frame", &edited(&v6, l3 + 4, &(plen + 1).to_be_bytes(), false), &Out::Untouched, Reason::Malformed);
    expect("ipv6 payload length 0 (jumbogram)", &edited(&v6, l3 + 4, &[0, 0], false), &Out::Untouched, Reason::Malformed);
    // Hop-by-hop header claiming 16 bytes more than the payload holds.
    let hbh = insert_ipv6_header(syn6().bytes(), l3, 0, [200, 1, 4, 0, 0, 0, 0]);
    expect("ipv6 extension header past the payload", &hbh, &Out::Untouched, Reason::Malformed);
}

#[test]
fn ethernet_padding_after_a_short_datagram_is_never_written() {
    // A UDP datagram with no payload is 28 bytes of IP: the frame is padded to 60 bytes.
    for (pkt, to) in [
        (Pkt { payload: Vec::new(), ..Pkt::new(L4::Udp, CLIENT, "10.96.0.10:53") }, "10.0.2.2:5353"),
        (Pkt { payload: Vec::new(), ..syn() }, BACKEND),
    ] {
        let pad = |mut f: Vec<u8>| {
            f.resize(60.max(f.len()), 0xee);
            f
        };
        expect("padded frame", &pad(pkt.bytes()), &Out::Rewritten(pad(pkt.with_dst(to).bytes())), Reason::NewFlow);
    }
}

/// `pkt` with its TCP flags byte set to `flags` (the checksum is not the datapath's concern
/// here: only where the packet goes).
fn with_flags(pkt: &Pkt, flags: u8) -> Vec<u8> {
    let mut f = pkt.bytes();
    f[pkt.l4_offset() + 13] = flags;
    f
}

/// The backend the packet was sent to (its destination port after DNAT), and the reason.
fn sent(dp: &mut Dataplane, frame: &[u8], l4: usize) -> (Reason, u16) {
    let before = Reasons::read(dp);
    let run = xdp(dp, frame);
    assert_eq!(run.verdict, XDP_PASS);
    let delta = Reasons::read(dp).since(&before);
    assert_eq!(delta.len(), 1, "{delta:?}");
    (delta[0].0, u16::from_be_bytes([run.out[l4 + 2], run.out[l4 + 3]]))
}

#[test]
fn syn_fin_and_syn_rst_never_move_a_flow() {
    let two = |dp: &mut Dataplane| {
        let svc = service(1, VIP, IPPROTO_TCP, Scheduler::RoundRobin, &[(1, "10.0.2.2:8081", 1), (2, "10.0.2.3:8082", 1)]);
        dp.maps.apply_service(&svc).unwrap_or_else(|e| panic!("{e}"));
    };
    let l4 = syn().l4_offset();
    let ack = Pkt::new(L4::TcpAck, CLIENT, VIP);
    for (name, odd) in [("syn+fin", SYN | FIN), ("syn+rst", SYN | RST)] {
        let mut dp = load();
        two(&mut dp);
        assert_eq!(sent(&mut dp, &syn().bytes(), l4), (Reason::NewFlow, 8081));
        assert_eq!(sent(&mut dp, &ack.bytes(), l4), (Reason::Established, 8081));
        for n in 0..4 {
            assert_eq!(sent(&mut dp, &with_flags(&syn(), odd), l4), (Reason::Established, 8081), "{name} #{n} moved the flow");
        }
        // A plain SYN after the connection closed still opens a new one, as IPVS does.
        sent(&mut dp, &with_flags(&syn(), RST), l4);
        assert_eq!(sent(&mut dp, &syn().bytes(), l4), (Reason::Rescheduled, 8082), "{name}: a new connection after close");
    }
}
