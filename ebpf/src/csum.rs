//! Checksum fix-ups applied to packet memory after a NAT rewrite.
//!
//! XDP: in place, RFC 1624 arithmetic from `xvs_common::csum`. This assumes the L4 checksum is a
//! full checksum, which holds for frames from a wire. A frame that a local veth peer sent with
//! checksum offload (CHECKSUM_PARTIAL) carries only the pseudo-header sum and no XDP program can
//! tell, so where such peers send to the VIP use the TC attach mode (documented in the README).
//!
//! TC: the `bpf_l3/l4_csum_replace` helpers, which know the skb's checksum state and update a
//! CHECKSUM_PARTIAL pseudo-header sum correctly (`BPF_F_PSEUDO_HDR`).
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use xvs_common::{csum, Reason, IPPROTO_UDP};

use crate::parse::{load, PacketMeta};

/// Writes `value` at `off` if it lies inside the packet.
#[inline(always)]
pub fn store<T: Copy>(data: usize, data_end: usize, off: usize, value: T) -> Result<(), Reason> {
    let start = data + off;
    if start + core::mem::size_of::<T>() > data_end {
        return Err(Reason::Malformed);
    }
    // SAFETY: bounds checked above; no alignment guarantee in packet memory.
    unsafe { (start as *mut T).write_unaligned(value) };
    Ok(())
}

/// XDP: updates the IPv4 header checksum for an address change.
#[inline(always)]
pub fn xdp_fix_ipv4_header(
    data: usize,
    data_end: usize,
    meta: &PacketMeta,
    old: u32,
    new: u32,
) -> Result<(), Reason> {
    let off = meta.l3_off + 10;
    let check: u16 = load(data, data_end, off)?;
    store(data, data_end, off, csum::replace(check, &csum::split(old), &csum::split(new)))
}

/// XDP: updates the TCP/UDP checksum for an address (pseudo-header) and port change. A UDP
/// datagram sent without checksum (0) stays without one.
#[inline(always)]
pub fn xdp_fix_l4(
    data: usize,
    data_end: usize,
    meta: &PacketMeta,
    old: (&[u32; 4], u16),
    new: (&[u32; 4], u16),
) -> Result<(), Reason> {
    let off = meta.l4_csum_off();
    let check: u16 = load(data, data_end, off)?;
    let udp = meta.proto == IPPROTO_UDP;
    if udp && check == 0 {
        return Ok(());
    }
    let mut fixed = csum::replace_addr_port(check, old.0, new.0, old.1, new.1, meta.is_v6());
    if udp {
        fixed = csum::udp_mangled_zero(fixed);
    }
    store(data, data_end, off, fixed)
}

/// TC: the flags for every L4 checksum update of this packet.
#[inline(always)]
fn l4_flags(meta: &PacketMeta, size: u64, pseudo: bool) -> u64 {
    let mut flags = size;
    if pseudo {
        flags |= u64::from(BPF_F_PSEUDO_HDR);
    }
    if meta.proto == IPPROTO_UDP {
        flags |= u64::from(BPF_F_MARK_MANGLED_0);
    }
    flags
}

/// TC: checksum updates for one 32-bit address word (pseudo-header and, for IPv4, the IP header).
#[inline(always)]
pub fn tc_fix_addr_word(ctx: &TcContext, meta: &PacketMeta, old: u32, new: u32) -> Result<(), Reason> {
    if !meta.is_v6() {
        ctx.l3_csum_replace(meta.l3_off + 10, u64::from(old), u64::from(new), 4)
            .map_err(|_| Reason::RewriteFailed)?;
    }
    ctx.l4_csum_replace(meta.l4_csum_off(), u64::from(old), u64::from(new), l4_flags(meta, 4, true))
        .map_err(|_| Reason::RewriteFailed)
}

/// TC: checksum update for a port change.
#[inline(always)]
pub fn tc_fix_port(ctx: &TcContext, meta: &PacketMeta, old: u16, new: u16) -> Result<(), Reason> {
    ctx.l4_csum_replace(meta.l4_csum_off(), u64::from(old), u64::from(new), l4_flags(meta, 2, false))
        .map_err(|_| Reason::RewriteFailed)
}
