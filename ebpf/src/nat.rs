//! Rewrites one end (source or destination address and port) of a parsed packet and keeps its
//! checksums right: DNAT towards the backend on ingress, SNAT back to the VIP on replies.
use aya_ebpf::programs::{TcContext, XdpContext};
use xvs_common::Reason;

use crate::{
    csum,
    parse::{Frame, PacketMeta},
};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

impl End {
    /// Offset of this end's address in the IP header.
    #[inline(always)]
    pub const fn addr_off(self, meta: &PacketMeta) -> usize {
        meta.l3_off
            + match (self, meta.is_v6()) {
                (Self::Source, false) => 12,
                (Self::Destination, false) => 16,
                (Self::Source, true) => 8,
                (Self::Destination, true) => 24,
            }
    }

    #[inline(always)]
    pub const fn port_off(self, meta: &PacketMeta) -> usize {
        meta.l4_off + if matches!(self, Self::Source) { 0 } else { 2 }
    }

    #[inline(always)]
    pub const fn current(self, meta: &PacketMeta) -> (&[u32; 4], u16) {
        match self {
            Self::Source => (&meta.saddr, meta.sport),
            Self::Destination => (&meta.daddr, meta.dport),
        }
    }
}

/// A packet that can be read directly and rewritten in place; XDP and TC differ in how bytes
/// and checksums are written.
pub trait Packet {
    /// The frame: its directly readable bytes and its whole length.
    fn frame(&self) -> Frame;
    /// The interface the packet arrived on (XDP, TC ingress) or leaves by (TC egress).
    fn ifindex(&self) -> u32;
    fn rewrite(&self, meta: &PacketMeta, end: End, addr: &[u32; 4], port: u16) -> Result<(), Reason>;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn frame(&self) -> Frame {
        // The program does not take multi-buffer frames: all of it is linear.
        Frame { data: self.data(), data_end: self.data_end(), len: self.data_end() - self.data() }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn rewrite(&self, meta: &PacketMeta, end: End, addr: &[u32; 4], port: u16) -> Result<(), Reason> {
        let (data, data_end) = (self.data(), self.data_end());
        let (old_addr, old_port) = end.current(meta);
        // Checksums first (they read the old checksum only), then the fields.
        csum::xdp_fix_l4(data, data_end, meta, (old_addr, old_port), (addr, port))?;
        if meta.is_v6() {
            csum::store(data, data_end, end.addr_off(meta), *addr)?;
        } else {
            csum::xdp_fix_ipv4_header(data, data_end, meta, old_addr[0], addr[0])?;
            csum::store(data, data_end, end.addr_off(meta), addr[0])?;
        }
        csum::store(data, data_end, end.port_off(meta), port)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn frame(&self) -> Frame {
        // skb->len: paged data (GRO/GSO payload) counts too.
        Frame { data: self.data(), data_end: self.data_end(), len: self.len() as usize }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context's own __sk_buff, valid for the program run.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn rewrite(&self, meta: &PacketMeta, end: End, addr: &[u32; 4], port: u16) -> Result<(), Reason> {
        let (old_addr, old_port) = end.current(meta);
        let words = if meta.is_v6() { 4 } else { 1 };
        for w in 0..4 {
            if w < words {
                csum::tc_fix_addr_word(self, meta, old_addr[w], addr[w])?;
            }
        }
        csum::tc_fix_port(self, meta, old_port, port)?;
        let stored = if meta.is_v6() {
            self.store(end.addr_off(meta), addr, 0)
        } else {
            self.store(end.addr_off(meta), &addr[0], 0)
        };
        stored.map_err(|_| Reason::RewriteFailed)?;
        self.store(end.port_off(meta), &port, 0).map_err(|_| Reason::RewriteFailed)
    }
}
