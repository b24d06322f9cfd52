//! Entry points of the xvs datapath. Each one runs a pipeline, counts the reason it ended with,
//! and returns the verdict that reason implies.
#![no_std]
#![no_main]
// The scheduler's shared round-robin cursor needs an atomic fetch-add (see select.rs).
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics for atomic_xadd on the BPF target")]

mod affinity;
mod clock;
mod conntrack;
mod csum;
mod floor;
mod forward;
mod icmp;
mod maglev;
mod maps;
mod nat;
mod parse;
mod ranges;
mod reply;
mod select;
mod service;
mod snat;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
};
use sock::Family;
use xvs_common::Reason;

/// Counts how the pipeline ended and tells whether the packet must be dropped.
#[inline(always)]
fn settle(result: Result<Reason, Reason>) -> bool {
    let reason = match result {
        Ok(r) | Err(r) => r,
    };
    stats::count_reason(reason);
    reason.is_drop()
}

/// XDP ingress fast path: service packets are DNATed to their backend and handed to the kernel
/// to route (XDP_PASS); everything else passes untouched.
#[xdp]
pub fn xvs_xdp_ingress(ctx: XdpContext) -> u32 {
    if settle(forward::forward(&ctx)) { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

/// TC ingress: the same pipeline for interfaces where XDP cannot run (or whose senders use
/// checksum offload, see csum.rs).
#[classifier]
pub fn xvs_tc_ingress(ctx: TcContext) -> i32 {
    if settle(forward::forward(&ctx)) { TC_ACT_SHOT } else { TC_ACT_OK }
}

/// mh's walker for XDP: a long fallback walk, then back into `xvs_xdp_ingress` (maglev.rs).
/// Reached only by tail call; passing is the answer only if jumping back fails.
#[xdp]
pub fn xvs_xdp_mh_walk(ctx: XdpContext) -> u32 {
    maglev::walk(&ctx);
    xdp_action::XDP_PASS
}

/// mh's walker for TC ingress, as `xvs_xdp_mh_walk`.
#[classifier]
pub fn xvs_tc_mh_walk(ctx: TcContext) -> i32 {
    maglev::walk(&ctx);
    TC_ACT_OK
}

/// Replies to masquerade addresses (snat.rs), for XDP: reached from `xvs_xdp_ingress` by tail
/// call.
#[xdp]
pub fn xvs_xdp_unmasq(ctx: XdpContext) -> u32 {
    if settle(snat::unmasquerade(&ctx)) { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

/// The same for TC ingress.
#[classifier]
pub fn xvs_tc_unmasq(ctx: TcContext) -> i32 {
    if settle(snat::unmasquerade(&ctx)) { TC_ACT_SHOT } else { TC_ACT_OK }
}

/// TC egress: reverse NAT on replies (backend -> client becomes VIP -> client), and the SNAT of
/// masqueraded flows on their way to the backend.
#[classifier]
pub fn xvs_tc_egress(ctx: TcContext) -> i32 {
    if settle(reply::egress(&ctx)) { TC_ACT_SHOT } else { TC_ACT_OK }
}

/// Socket-level load balancing (sock.rs), attached to a cgroup v2: a connect to a cluster IP
/// goes to a backend.
#[cgroup_sock_addr(connect4)]
pub fn xvs_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::connect(&ctx, Family::V4)
}

#[cgroup_sock_addr(connect6)]
pub fn xvs_sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::connect(&ctx, Family::V6)
}

/// An unconnected UDP socket's datagram to a cluster IP goes to the socket's backend for it.
#[cgroup_sock_addr(sendmsg4)]
pub fn xvs_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::sendmsg(&ctx, Family::V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn xvs_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::sendmsg(&ctx, Family::V6)
}

/// A datagram from such a backend shows the VIP as its source.
#[cgroup_sock_addr(recvmsg4)]
pub fn xvs_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::recvmsg(&ctx, Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn xvs_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::recvmsg(&ctx, Family::V6)
}

/// A socket connected through a VIP has the VIP as its peer.
#[cgroup_sock_addr(getpeername4)]
pub fn xvs_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::getpeername(&ctx, Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn xvs_sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::getpeername(&ctx, Family::V6)
}

/// A released socket's translations are removed.
#[cgroup_sock(sock_release)]
pub fn xvs_sock_release(ctx: SockContext) -> i32 {
    sock::release(&ctx)
}

/// The bench's floor for an established packet (floor.rs); the agent never attaches it.
#[xdp]
pub fn xvs_floor_flow_hit(ctx: XdpContext) -> u32 {
    core::hint::black_box(floor::flow_hit(&ctx));
    xdp_action::XDP_PASS
}

/// The bench's floor for a new flow (floor.rs); the agent never attaches it.
#[xdp]
pub fn xvs_floor_flow_insert(ctx: XdpContext) -> u32 {
    core::hint::black_box(floor::flow_insert(&ctx));
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
