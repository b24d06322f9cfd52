//! ICMP errors about NATed flows, translated along the flow as IPVS does (`ip_vs_in_icmp`,
//! `ip_vs_out_icmp`). An error quotes the packet that caused it as that packet was when the
//! error was raised, i.e. after xvs rewrote it, and whoever gets the error matches the quote
//! against its own socket. So, both ways:
//! - to the service (ingress): a router between client and node, or the client, answers a
//!   reply (quoted `VIP:vport -> client`; "fragmentation needed" for PMTU discovery, say). The
//!   backend sent it: the quote's source becomes the backend, and so does the error's
//!   destination when it is the VIP.
//! - to the client (TC egress): a router between node and backend, or the backend, answers a
//!   client's packet after DNAT (quoted `client -> backend:port`; port unreachable, say). The
//!   quote's destination becomes the VIP, and so does the error's source when it is the
//!   backend.
//! - to a masquerade address (ingress, the unmasquerade program): a router between the nodes,
//!   or the remote backend, answers a masqueraded packet (quoted `node:snat_port -> backend`).
//!   The quote's source becomes the client again and so does the error's destination; the
//!   error then leaves towards the client, where TC egress translates it as above.
//!
//! Checksums, incrementally: the quoted L4 checksum where the quote holds it (a UDP checksum of
//! 0 stays 0), the quoted IPv4 header's, the ICMP checksum over everything changed in the
//! message (and, for ICMPv6, its pseudo-header's address), and the error's IPv4 header's.
//! With every checksum field compensating its own change the packet's whole sum is unchanged,
//! so a TC skb's CHECKSUM_COMPLETE sum stays valid too.
use xvs_common::{csum, Reason, FLOW_FORWARD, FLOW_REPLY, FLOW_UNMASQ, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP};

use crate::{
    conntrack,
    csum::store,
    nat::{End, Packet},
    parse::{self, load, PacketMeta},
    stats::{self, Direction},
};

/// The fixed ICMP/ICMPv6 header before the quoted packet: type, code, checksum, and 4 bytes
/// the type defines (unused, MTU, pointer).
const ICMP_HLEN: usize = 8;

/// Where the error is met, and so which way it goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Ingress, addressed to a VIP: it quotes a reply.
    ToService,
    /// TC egress, towards a client: it quotes a client's packet after DNAT.
    ToClient,
    /// Ingress, addressed to a masquerade address: it quotes a masqueraded packet.
    Unmasquerade,
}

/// Whether `meta` (from `parse::parse_ip`) is ICMP of its own family.
#[inline(always)]
pub const fn is_icmp(meta: &PacketMeta) -> bool {
    meta.proto == if meta.is_v6() { IPPROTO_ICMPV6 } else { IPPROTO_ICMP }
}

/// The types that quote the offending packet: destination unreachable (fragmentation needed
/// among them), source quench, time exceeded, parameter problem; ICMPv6's destination
/// unreachable, packet too big, time exceeded, parameter problem.
#[inline(always)]
const fn is_error(v6: bool, icmp_type: u8) -> bool {
    if v6 { matches!(icmp_type, 1..=4) } else { matches!(icmp_type, 3 | 4 | 11 | 12) }
}

/// `Ok(IcmpErrorNat)`: translated. `Err`: untouched: not an error (echo, ...: `NotTcpUdp` as
/// before), a quote too short or not TCP/UDP, or no flow of xvs's behind it (`NotService`).
#[inline(always)]
pub fn translate<P: Packet>(packet: &P, outer: &PacketMeta, way: Way) -> Result<Reason, Reason> {
    let frame = packet.frame();
    let v6 = outer.is_v6();
    let header: [u8; 2] = load(frame.data, frame.data_end, outer.l4_off)?;
    if !is_error(v6, header[0]) {
        return Err(Reason::NotTcpUdp);
    }
    // Nothing is read or written past the error's own datagram (Ethernet padding follows).
    let end = outer.l3_off + outer.l3_len as usize;
    let quote = parse::parse_quoted(frame, outer.l4_off + ICMP_HLEN, end, v6)?;
    // The flow's entry, keyed as the packet going the other way was.
    let key = conntrack::key_of(&quote).reply_of(quote.daddr, quote.dport);
    // Counted once per error: an unmasqueraded one is counted when it leaves to the client.
    let (kind, quoted_end, own_end, dir) = match way {
        Way::ToService => (FLOW_FORWARD, End::Source, End::Destination, Some(Direction::In { new_conn: false })),
        Way::ToClient => (FLOW_REPLY, End::Destination, End::Source, Some(Direction::Out)),
        Way::Unmasquerade => (FLOW_UNMASQ, End::Source, End::Destination, None),
    };
    let entry = conntrack::lookup(&key, kind).ok_or(Reason::NotService)?;
    rewrite(frame.data, frame.data_end, end, outer, &quote, quoted_end, own_end, (&entry.nat_addr, entry.nat_port))?;
    if let Some(dir) = dir {
        stats::count_flow(entry.svc_id, entry.backend_id, outer.l3_len, dir);
    }
    Ok(Reason::IcmpErrorNat)
}

/// `parse::load` and `csum::store` with the bounds check kept: the quote's headers were
/// checked when parsed, so LLVM would drop these checks as redundant, and the verifier, having
/// lost those ranges to register spills, would refuse the access.
#[inline(always)]
fn get<T: Copy>(data: usize, data_end: usize, off: usize) -> Result<T, Reason> {
    load(data, data_end, core::hint::black_box(off))
}

#[inline(always)]
fn put<T: Copy>(data: usize, data_end: usize, off: usize, value: T) -> Result<(), Reason> {
    store(data, data_end, core::hint::black_box(off), value)
}

/// Rewrites the quote's `quoted_end` to `to`, and the error's own `own_end` where it is the
/// same address; every checksum follows (see the module's comment).
#[expect(clippy::too_many_arguments, reason = "offsets of two nested packets")]
#[inline(always)]
fn rewrite(
    data: usize,
    data_end: usize,
    end: usize,
    outer: &PacketMeta,
    quote: &PacketMeta,
    quoted_end: End,
    own_end: End,
    to: (&[u32; 4], u16),
) -> Result<(), Reason> {
    let (old_addr, old_port) = quoted_end.current(quote);
    let (old_addr, new_addr) = (*old_addr, *to.0);
    let v6 = outer.is_v6();
    let icmp_check_off = outer.l4_off + 2;
    let mut icmp_check: u16 = get(data, data_end, icmp_check_off)?;

    // The quoted L4 checksum, where the quote holds it.
    let l4_check_off = quote.l4_csum_off();
    if l4_check_off + 2 <= end {
        let old: u16 = get(data, data_end, l4_check_off)?;
        let udp = quote.proto == IPPROTO_UDP;
        if !(udp && old == 0) {
            let mut new = csum::replace_addr_port(old, &old_addr, &new_addr, old_port, to.1, v6);
            if udp {
                new = csum::udp_mangled_zero(new);
            }
            icmp_check = csum::replace(icmp_check, &[old], &[new]);
            put(data, data_end, l4_check_off, new)?;
        }
    }
    // The quoted IPv4 header's checksum.
    if !v6 {
        let off = quote.l3_off + 10;
        let old: u16 = get(data, data_end, off)?;
        let new = csum::replace(old, &csum::split(old_addr[0]), &csum::split(new_addr[0]));
        icmp_check = csum::replace(icmp_check, &[old], &[new]);
        put(data, data_end, off, new)?;
    }
    // The quoted address and port themselves.
    icmp_check = csum::replace_addr_port(icmp_check, &old_addr, &new_addr, old_port, to.1, v6);
    if v6 {
        put(data, data_end, quoted_end.addr_off(quote), new_addr)?;
    } else {
        put(data, data_end, quoted_end.addr_off(quote), new_addr[0])?;
    }
    put(data, data_end, quoted_end.port_off(quote), to.1)?;

    // The error's own address, when it is the translated one (a router's stays).
    let (own, _) = own_end.current(outer);
    if *own == old_addr {
        if v6 {
            // ICMPv6's checksum covers the addresses in its pseudo-header.
            icmp_check = csum::replace_addr_port(icmp_check, &old_addr, &new_addr, 0, 0, true);
            put(data, data_end, own_end.addr_off(outer), new_addr)?;
        } else {
            crate::csum::xdp_fix_ipv4_header(data, data_end, outer, old_addr[0], new_addr[0])?;
            put(data, data_end, own_end.addr_off(outer), new_addr[0])?;
        }
    }
    put(data, data_end, icmp_check_off, icmp_check)
}
