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

/// The connection-table key of the TCP flow `client -> VIP`.
fn forward_key(client: &str) -> xvs_common::FlowKey {
    let (c, v) = (sa(client), sa(VIP));
    let (saddr, family) = xvs::dataplane::to_map_addr(c.ip());
    xvs_common::FlowKey {
        saddr,
        daddr: xvs::dataplane::to_map_addr(v.ip()).0,
        sport: c.port().to_be(),
        dport: v.port().to_be(),
        proto: IPPROTO_TCP,
        family,
        _pad: [0; 2],
    }
}

/// The forward entry of the flow `client -> VIP`.
fn forward_entry(dp: &Dataplane, client: &str) -> xvs_common::FlowEntry {
    dp.maps.conntrack.get(&forward_key(client), 0).unwrap_or_else(|e| panic!("no forward entry for {client}: {e}"))
}

#[test]
fn flow_state_follows_the_client_and_a_closed_port_reopens_as_a_new_flow() {
    use xvs_common::flow::FlowState;
    let mut dp = load();
    apply(&mut dp, &two_backends(1));
    let state = |dp: &Dataplane| FlowState::from_u8(forward_entry(dp, CLIENT).state);
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpSyn, CLIENT, VIP)), (Reason::NewFlow, sa(A)));
    assert_eq!(state(&dp), FlowState::SynSent);
    let now = xvs::sync::monotonic_secs();
    assert!(forward_entry(&dp, CLIENT).last_seen.abs_diff(now) <= 1, "stamped with CLOCK_MONOTONIC seconds");
    send(&mut dp, &Pkt::new(L4::TcpAck, CLIENT, VIP));
    assert_eq!(state(&dp), FlowState::Established);
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpFin, CLIENT, VIP)), (Reason::Established, sa(A)));
    assert_eq!(state(&dp), FlowState::Closing);
    // The last ACK of the close stays on the backend; a new SYN on the same port is a new
    // connection and is scheduled afresh (rr: the next backend).
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpAck, CLIENT, VIP)), (Reason::Established, sa(A)));
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpSyn, CLIENT, VIP)), (Reason::Rescheduled, sa(B)));
    assert_eq!(state(&dp), FlowState::SynSent);
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpRst, CLIENT, VIP)), (Reason::Established, sa(B)));
    assert_eq!(state(&dp), FlowState::Closed);
}

#[test]
fn an_idle_flow_past_its_timeout_is_rescheduled() {
    let mut dp = load();
    apply(&mut dp, &two_backends(1));
    send(&mut dp, &Pkt::new(L4::TcpSyn, CLIENT, VIP));
    send(&mut dp, &Pkt::new(L4::TcpAck, CLIENT, VIP));
    // Age the flow by moving the datapath's clock, not its timestamp: a machine up for less
    // than 15 minutes has no "901 s ago". One second short of the idle timeout (900 s) the
    // flow holds (and is touched); past it, it is rescheduled.
    let stamped = forward_entry(&dp, CLIENT).last_seen;
    dp.maps.set_clock_offset(899).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpAck, CLIENT, VIP)), (Reason::Established, sa(A)));
    let touched = forward_entry(&dp, CLIENT).last_seen;
    assert!(touched.wrapping_sub(stamped).abs_diff(899) <= 1, "stamped on the moved clock: {stamped} -> {touched}");
    dp.maps.set_clock_offset(899 + 901).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpAck, CLIENT, VIP)), (Reason::Rescheduled, sa(B)));
}

#[test]
fn session_affinity_keeps_a_client_on_its_backend_until_it_drains_or_times_out() {
    let mut dp = load();
    let mut svc = two_backends(1);
    svc.affinity_timeout = 1;
    apply(&mut dp, &svc);
    // Every new connection of one client goes where its first went; another client moves rr on.
    for port in 40000..40006 {
        assert_eq!(send(&mut dp, &Pkt::new(L4::TcpSyn, &format!("10.0.1.2:{port}"), VIP)), (Reason::NewFlow, sa(A)));
    }
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpSyn, "10.0.1.3:40000", VIP)), (Reason::NewFlow, sa(B)));
    // A draining backend takes no new flow, not even from a client bound to it; the client
    // is bound anew.
    let mut drained = two_backends(0);
    drained.affinity_timeout = 1;
    apply(&mut dp, &drained);
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpSyn, "10.0.1.2:40010", VIP)), (Reason::NewFlow, sa(B)));
    apply(&mut dp, &svc);
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpSyn, "10.0.1.2:40011", VIP)), (Reason::NewFlow, sa(B)));
    // After the timeout with no packet from the client, the binding to B is gone: rr decides,
    // and the new binding holds. rr goes on after its last pick (B, for 40010; 40011 came by
    // affinity), as the kernel's does: another client takes A, so this one gets B.
    dp.maps.set_clock_offset(2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(send(&mut dp, &Pkt::new(L4::TcpSyn, "10.0.1.4:40000", VIP)).1, sa(A));
    let picks: Vec<_> = (40020..40022).map(|p| send(&mut dp, &Pkt::new(L4::TcpSyn, &format!("10.0.1.2:{p}"), VIP)).1).collect();
    assert_eq!(picks, [sa(B), sa(B)]);
}
