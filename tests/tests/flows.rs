//! Connection-table behaviour through BPF_PROG_TEST_RUN: flows stick to their backend, move when
//! it disappears, drain on weight 0, and replies are reverse-NATed.
use xvs::dataplane::Dataplane;
use xvs_common::{Reason, Scheduler, IPPROTO_TCP};
use xvs_integration::*;

const CLIENT: &str = "10.0.1.2:40000";
const VIP: &str = "10.96.0.10:80";
const A: &str = "10.0.2.2:8080";
const B: &str = "10.0.3.2:8080";

fn two_backends(weight_a: u32) -> xvs::dataplane::ServiceEntry {
    service(1, VIP, IPPROTO_TCP, Scheduler::RoundRobin, &[(1, A, weight_a), (2, B, 1)])
}

fn apply(dp: &mut Dataplane, svc: &xvs::dataplane::ServiceEntry) {
    dp.maps.apply_service(svc).unwrap_or_else(|e| panic!("{e}"));
}

/// Sends one packet of the flow and returns (reason, backend it was sent to).
fn send(dp: &mut Dataplane, pkt: &Pkt) -> (Reason, std::net::SocketAddr) {
    let before = Reasons::read(dp);
    let run = xdp(dp, &pkt.bytes());
    assert_eq!(run.verdict, XDP_PASS);
    let delta = Reasons::read(dp).since(&before);
    assert_eq!(delta.len(), 1, "{delta:?}");
    for to in [A, B] {
        if run.out == pkt.with_dst(to).bytes() {
            return (delta[0].0, sa(to));
        }
    }
    panic!("packet was not DNATed to a backend: {:02x?}", run.out);
}

#[test]
fn established_flow_keeps_its_backend() {
    let mut dp = load();
    apply(&mut dp, &two_backends(1));
    let (r, first) = send(&mut dp, &Pkt::new(L4::TcpSyn, CLIENT, VIP));
    assert_eq!(r, Reason::NewFlow);
    // rr would pick the other backend for a new flow; the table must win.
    for _ in 0..5 {
        assert_eq!(send(&mut dp, &Pkt::new(L4::TcpAck, CLIENT, VIP)), (Reason::Established, first));
    }
    // A different client port is a new flow and goes to the next backend.
    let (r, other) = send(&mut dp, &Pkt::new(L4::TcpSyn, "10.0.1.2:40001", VIP));
    assert_eq!(r, Reason::NewFlow);
    assert_ne!(other, first);
}

#[test]
fn backend_removed_mid_flow_is_rescheduled() {
    let mut dp = load();
    apply(&mut dp, &two_backends(1));
    let (_, first) = send(&mut dp, &Pkt::new(L4::TcpSyn, CLIENT, VIP));
    assert_eq!(first, sa(A));
    // Backend A goes away: service updated to B only, A's entry cleared.
    apply(&mut dp, &service(1, VIP, IPPROTO_TCP, Scheduler::RoundRobin, &[(2, B, 1)]));
    dp.maps.remove_backend(1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpAck, CLIENT, VIP)), (Reason::Rescheduled, sa(B)));
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpAck, CLIENT, VIP)), (Reason::Established, sa(B)));
    // The reply entry follows the new backend.
    let reply = Pkt::new(L4::TcpAck, B, CLIENT);
    assert_eq!(tc_egress(&mut dp, &reply.bytes()).out, reply.with_src(VIP).bytes());
}

#[test]
fn weight_zero_drains_new_flows_only() {
    let mut dp = load();
    apply(&mut dp, &two_backends(1));
    let (_, first) = send(&mut dp, &Pkt::new(L4::TcpSyn, CLIENT, VIP));
    assert_eq!(first, sa(A));
    apply(&mut dp, &two_backends(0));
    // Established flow stays on the draining backend...
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpAck, CLIENT, VIP)), (Reason::Established, sa(A)));
    // ...new flows never go there.
    for port in 41000..41010 {
        let (r, to) = send(&mut dp, &Pkt::new(L4::TcpSyn, &format!("10.0.1.2:{port}"), VIP));
        assert_eq!((r, to), (Reason::NewFlow, sa(B)));
    }
}

#[test]
fn replies_are_reverse_natted_v4_and_v6() {
    let mut dp = load();
    apply(&mut dp, &two_backends(1));
    apply(&mut dp, &service(3, "[fd00::10]:443", IPPROTO_TCP, Scheduler::RoundRobin, &[(3, "[fd00:2::2]:8443", 1)]));
    apply(&mut dp, &service(4, "10.96.0.10:53", xvs_common::IPPROTO_UDP, Scheduler::RoundRobin, &[(4, "10.0.2.2:5353", 1)]));
    send(&mut dp, &Pkt::new(L4::TcpSyn, CLIENT, VIP));
    xdp(&mut dp, &Pkt::new(L4::TcpSyn, "[fd00:1::2]:40000", "[fd00::10]:443").bytes());
    xdp(&mut dp, &Pkt::new(L4::UdpNoChecksum, CLIENT, "10.96.0.10:53").bytes());
    for (reply, vip) in [
        (Pkt::new(L4::TcpAck, A, CLIENT), VIP),
        (Pkt::new(L4::TcpAck, "[fd00:2::2]:8443", "[fd00:1::2]:40000"), "[fd00::10]:443"),
        (Pkt::new(L4::Udp, "10.0.2.2:5353", CLIENT), "10.96.0.10:53"),
        (Pkt::new(L4::UdpNoChecksum, "10.0.2.2:5353", CLIENT), "10.96.0.10:53"),
    ] {
        let before = Reasons::read(&dp);
        let run = tc_egress(&mut dp, &reply.bytes());
        assert_eq!(run.verdict, TC_ACT_OK);
        assert_eq!(run.out, reply.with_src(vip).bytes(), "{reply:?}");
        assert_eq!(Reasons::read(&dp).since(&before), vec![(Reason::ReplyNat, 1)]);
    }
    // A packet from the backend to someone it has no flow with is not touched.
    let stranger = Pkt::new(L4::TcpAck, A, "10.0.1.3:40000");
    let run = tc_egress(&mut dp, &stranger.bytes());
    assert_eq!((run.verdict, run.out), (TC_ACT_OK, stranger.bytes()));
}
