//! Parses a frame once (Ethernet, up to two VLAN tags, IPv4 with options or IPv6 with up to
//! eight extension headers, TCP/UDP) into a `PacketMeta` holding the offsets later stages use.
//! In two stages, IP then L4, so that ICMP errors can branch off to icmp.rs in between.
//!
//! Only consistent datagrams are ours: every length the headers state (IP total/payload
//! length, TCP data offset, UDP length) must agree with each other and fit in the frame, so a
//! rewrite can never land outside the IP datagram (e.g. in Ethernet padding). Source-routed
//! packets with hops left (IPv4 LSRR/SSRR, an IPv6 routing header with segments left) are not
//! addressed to the VIP at all, and their L4 checksum covers the final destination: untouched.
use core::mem::size_of;

use xvs_common::{addr_v4, addr_v6, Reason, AF_INET, AF_INET6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// 802.1ad QinQ: an outer service tag and an inner customer tag.
const MAX_VLAN_TAGS: usize = 2;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// IPv4 `frag_off` bits that mark any fragment: More Fragments or a non-zero offset.
const IPV4_FRAG_MASK: u16 = 0x3FFF;
/// Its fragment offset alone: a first fragment (offset 0) still starts with the L4 header.
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1FFF;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
const IPV6_ESP: u8 = 50;
const IPV6_AH: u8 = 51;
/// How many IPv6 extension headers are walked before giving up (bounded for the verifier; more
/// pass untouched as `Ipv6ExtUnsupported`).
const IPV6_MAX_EXT: usize = 8;
/// IPv4 options: end of list, no-op, loose and strict source route.
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 0x83;
const IPOPT_SSRR: u8 = 0x89;
/// How many IPv4 options are walked looking for a source route, bounded for the verifier: each
/// one multiplies its paths (40 single-byte options exceed its million instructions; 16 take a
/// second to verify, 8 a third of one). A header with more is passed untouched as malformed:
/// nothing sends that many options to a service.
const IPV4_MAX_OPTS: usize = 8;

/// Everything later stages need, read once.
#[derive(Clone, Copy)]
pub struct PacketMeta {
    pub l3_off: usize,
    pub l4_off: usize,
    pub family: u8,
    pub proto: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for UDP): drives the flow state (see `xvs_common::flow`).
    pub tcp_flags: u8,
    /// Bytes counted in stats: the IP packet length as the header states it.
    pub l3_len: u32,
}

impl PacketMeta {
    /// What the IP header says; ports and flags are filled by the L4 stage.
    #[inline(always)]
    const fn ip(l3_off: usize, l4_off: usize, family: u8, proto: u8, addrs: ([u32; 4], [u32; 4]), l3_len: u32) -> Self {
        Self { l3_off, l4_off, family, proto, saddr: addrs.0, daddr: addrs.1, sport: 0, dport: 0, tcp_flags: 0, l3_len }
    }

    pub const fn is_v6(&self) -> bool {
        self.family == AF_INET6
    }

    /// Offset of the L4 checksum field.
    pub const fn l4_csum_off(&self) -> usize {
        self.l4_off + if self.proto == IPPROTO_TCP { 16 } else { 6 }
    }
}

/// Where a frame lies: the bytes readable directly, `[data, data_end)`, and its whole length.
/// They differ in TC, where `len` (skb->len) also counts paged data past the linear part (a
/// GRO/GSO packet's payload); lengths the headers state are checked against `len`.
#[derive(Clone, Copy)]
pub struct Frame {
    pub data: usize,
    pub data_end: usize,
    pub len: usize,
}

/// IP length fields top out here; a GSO super-packet above it (BIG TCP) states 0 instead.
const MAX_IP_LEN: usize = 65_535;

/// Reads a `T` at `off` if the whole value lies inside the packet.
#[inline(always)]
pub fn load<T: Copy>(data: usize, data_end: usize, off: usize) -> Result<T, Reason> {
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return Err(Reason::Malformed);
    }
    // SAFETY: bounds checked above; packet memory has no alignment guarantee, hence unaligned.
    Ok(unsafe { (start as *const T).read_unaligned() })
}

#[inline(always)]
fn load_be16(data: usize, data_end: usize, off: usize) -> Result<u16, Reason> {
    load::<u16>(data, data_end, off).map(u16::from_be)
}

/// Parses Ethernet and IP: `meta` with the L4 protocol and offset, ports unset. ICMP and
/// ICMPv6 come out of here too (icmp.rs translates errors about NATed flows).
#[inline(always)]
pub fn parse_ip(frame: Frame) -> Result<PacketMeta, Reason> {
    let Frame { data, data_end, len } = frame;
    let mut l3_off = ETH_HLEN;
    let mut ethertype = load_be16(data, data_end, 12)?;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = load_be16(data, data_end, l3_off + 2)?;
        l3_off += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(data, data_end, len, l3_off),
        ETH_P_IPV6 => parse_ipv6(data, data_end, len, l3_off),
        _ => Err(Reason::NotIp),
    }
}

/// The TCP/UDP header of a packet `parse_ip` read: ports and flags, lengths checked.
#[inline(always)]
pub fn parse_l4(frame: Frame, mut meta: PacketMeta) -> Result<PacketMeta, Reason> {
    let Frame { data, data_end, .. } = frame;
    // The whole L4 header must be there, inside the datagram: NAT writes the checksum field in
    // it. `l4_len` is what the IP header says follows it.
    let l4_len = (meta.l3_off + meta.l3_len as usize).checked_sub(meta.l4_off).ok_or(Reason::Malformed)?;
    let ports = match meta.proto {
        IPPROTO_TCP => {
            let tcp: [u16; TCP_MIN_HLEN / 2] = load(data, data_end, meta.l4_off)?;
            // Word 6 holds bytes 12 (data offset) and 13 (flags) in wire order.
            let [doff, flags] = tcp[6].to_ne_bytes();
            let doff = usize::from(doff >> 4) * 4;
            if doff < TCP_MIN_HLEN || doff > l4_len {
                return Err(Reason::Malformed);
            }
            meta.tcp_flags = flags;
            [tcp[0], tcp[1]]
        }
        IPPROTO_UDP => {
            let udp: [u16; UDP_HLEN / 2] = load(data, data_end, meta.l4_off)?;
            // The UDP length must be the datagram's: its checksum covers exactly that much.
            if usize::from(u16::from_be(udp[2])) != l4_len {
                return Err(Reason::Malformed);
            }
            [udp[0], udp[1]]
        }
        _ => return Err(Reason::NotTcpUdp),
    };
    meta.sport = ports[0];
    meta.dport = ports[1];
    Ok(meta)
}

/// The packet an ICMP error quotes, starting at `off` and cut at `end` (the error's own
/// datagram end): its IP header (of the error's family) and the first 8 bytes of its TCP/UDP
/// header, ports included, must be there; the rest is usually cut off, so its stated lengths
/// mean nothing here. A quoted fragment past the first has no ports: not ours.
#[inline(always)]
pub fn parse_quoted(frame: Frame, off: usize, end: usize, v6: bool) -> Result<PacketMeta, Reason> {
    let Frame { data, data_end, .. } = frame;
    let mut meta = if v6 {
        let ip: Ipv6Fixed = load(data, data_end, off)?;
        if ip.version_class_flow[0] >> 4 != 6 {
            return Err(Reason::Malformed);
        }
        // Extension headers in a quoted packet are not walked: nothing NATed by xvs has them.
        PacketMeta::ip(off, off + IPV6_HLEN, AF_INET6, ip.next_header, (addr_v6(ip.saddr), addr_v6(ip.daddr)), 0)
    } else {
        let ip: Ipv4Fixed = load(data, data_end, off)?;
        let hlen = usize::from(ip.version_ihl & 0x0f) * 4;
        if ip.version_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN {
            return Err(Reason::Malformed);
        }
        if u16::from_be_bytes(ip.frag_off) & IPV4_FRAG_OFFSET_MASK != 0 {
            return Err(Reason::Fragment);
        }
        PacketMeta::ip(off, off + hlen, AF_INET, ip.proto, (addr_v4(ip.saddr), addr_v4(ip.daddr)), 0)
    };
    if meta.proto != IPPROTO_TCP && meta.proto != IPPROTO_UDP {
        return Err(Reason::NotTcpUdp);
    }
    if meta.l4_off + UDP_HLEN > end {
        return Err(Reason::Malformed);
    }
    let ports: [u16; 2] = load(data, data_end, meta.l4_off)?;
    meta.sport = ports[0];
    meta.dport = ports[1];
    Ok(meta)
}

/// The fixed part of an IPv4 header, read in one bounded load (field-by-field loads let LLVM
/// merge the bounds checks into one the verifier cannot follow).
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Fixed {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// The fixed IPv6 header.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Fixed {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[inline(always)]
fn parse_ipv4(data: usize, data_end: usize, len: usize, l3_off: usize) -> Result<PacketMeta, Reason> {
    let ip: Ipv4Fixed = load(data, data_end, l3_off)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let hlen = usize::from(ip.version_ihl & 0x0f) * 4;
    if hlen < IPV4_MIN_HLEN {
        return Err(Reason::Malformed);
    }
    // Options included: the whole header must be present.
    if data + l3_off + hlen > data_end {
        return Err(Reason::Malformed);
    }
    let total_len = datagram_len(usize::from(u16::from_be_bytes(ip.total_len)), len, l3_off)?;
    if total_len < hlen {
        return Err(Reason::Malformed);
    }
    if u16::from_be_bytes(ip.frag_off) & IPV4_FRAG_MASK != 0 {
        return Err(Reason::Fragment);
    }
    if hlen > IPV4_MIN_HLEN && source_routed_v4(data, data_end, l3_off + IPV4_MIN_HLEN, l3_off + hlen)? {
        return Err(Reason::NotService);
    }
    Ok(PacketMeta::ip(l3_off, l3_off + hlen, AF_INET, ip.proto, (addr_v4(ip.saddr), addr_v4(ip.daddr)), total_len as u32))
}

#[inline(always)]
fn parse_ipv6(data: usize, data_end: usize, len: usize, l3_off: usize) -> Result<PacketMeta, Reason> {
    let ip: Ipv6Fixed = load(data, data_end, l3_off)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let payload_len = datagram_len(usize::from(u16::from_be_bytes(ip.payload_len)), len, l3_off + IPV6_HLEN)?;
    let mut next = ip.next_header;
    let mut off = l3_off + IPV6_HLEN;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                // next header, length, and for a routing header its type and segments left
                let ext: [u8; 4] = load(data, data_end, off)?;
                if next == IPV6_ROUTING && ext[3] != 0 {
                    // Segments left: the VIP is a hop, not the destination.
                    return Err(Reason::NotService);
                }
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => return Err(Reason::Fragment),
            _ => break,
        }
    }
    match next {
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_ESP | IPV6_AH => {
            return Err(Reason::Ipv6ExtUnsupported);
        }
        IPV6_FRAGMENT => return Err(Reason::Fragment),
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {}
        // No-next-header, SCTP, ...: not ours to touch.
        _ => return Err(Reason::NotTcpUdp),
    }
    if off > l3_off + IPV6_HLEN + payload_len {
        return Err(Reason::Malformed);
    }
    Ok(PacketMeta::ip(l3_off, off, AF_INET6, next, (addr_v6(ip.saddr), addr_v6(ip.daddr)), (payload_len + IPV6_HLEN) as u32))
}

/// The length an IP header states for what starts at `from`, checked against the frame's:
/// it must fit (whatever follows is Ethernet padding). 0 is a length only for a GSO
/// super-packet past 64 KiB (BIG TCP, TC only), which then runs to the frame's end; anywhere
/// else (an IPv6 jumbogram, a zeroed field) it is malformed.
#[inline(always)]
fn datagram_len(stated: usize, frame_len: usize, from: usize) -> Result<usize, Reason> {
    let available = frame_len.checked_sub(from).ok_or(Reason::Malformed)?;
    match stated {
        0 if available > MAX_IP_LEN => Ok(available),
        0 => Err(Reason::Malformed),
        n if n > available => Err(Reason::Malformed),
        n => Ok(n),
    }
}

/// Whether the IPv4 options in `[start, end)` hold a loose or strict source route with hops
/// left (its pointer still inside the option): the header's destination is then the next hop.
#[inline(always)]
fn source_routed_v4(data: usize, data_end: usize, start: usize, end: usize) -> Result<bool, Reason> {
    let mut off = start;
    for _ in 0..IPV4_MAX_OPTS {
        if off >= end {
            return Ok(false);
        }
        // The header's bounds were checked already, so LLVM would drop the bounds check of
        // this load as redundant, and the verifier cannot see it was: keep it opaque.
        let at = core::hint::black_box(off);
        let kind: u8 = load(data, data_end, at)?;
        match kind {
            IPOPT_END => return Ok(false),
            IPOPT_NOOP => off += 1,
            _ => {
                // type, length, and for source routes the pointer
                let opt: [u8; 3] = load(data, data_end, at)?;
                let len = usize::from(opt[1]);
                if len < 2 || off + len > end {
                    return Err(Reason::Malformed);
                }
                if (kind == IPOPT_LSRR || kind == IPOPT_SSRR) && len >= 3 && usize::from(opt[2]) <= len {
                    return Ok(true);
                }
                off += len;
            }
        }
    }
    if off >= end { Ok(false) } else { Err(Reason::Malformed) }
}
