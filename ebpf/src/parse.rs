//! Parses a frame once (Ethernet, one VLAN tag, IPv4 with options or IPv6 with common
//! extension headers, TCP/UDP) into a `PacketMeta` holding the offsets later stages use.
use core::mem::size_of;

use xvs_common::{addr_v4, addr_v6, Reason, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
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
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
const IPV6_ESP: u8 = 50;
const IPV6_AH: u8 = 51;
/// How many IPv6 extension headers are walked before giving up (bounded for the verifier).
const IPV6_MAX_EXT: usize = 4;

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
    pub const fn is_v6(&self) -> bool {
        self.family == AF_INET6
    }

    /// Offset of the L4 checksum field.
    pub const fn l4_csum_off(&self) -> usize {
        self.l4_off + if self.proto == IPPROTO_TCP { 16 } else { 6 }
    }
}

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

#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<PacketMeta, Reason> {
    let mut l3_off = ETH_HLEN;
    let mut ethertype = load_be16(data, data_end, 12)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = load_be16(data, data_end, ETH_HLEN + 2)?;
        l3_off += VLAN_HLEN;
    }
    let mut meta = match ethertype {
        ETH_P_IP => parse_ipv4(data, data_end, l3_off)?,
        ETH_P_IPV6 => parse_ipv6(data, data_end, l3_off)?,
        _ => return Err(Reason::NotIp),
    };
    // The whole minimal L4 header must be there: NAT writes the checksum field in it.
    let ports = match meta.proto {
        IPPROTO_TCP => {
            let tcp: [u16; TCP_MIN_HLEN / 2] = load(data, data_end, meta.l4_off)?;
            // Word 6 holds bytes 12 (data offset) and 13 (flags) in wire order.
            meta.tcp_flags = tcp[6].to_ne_bytes()[1];
            [tcp[0], tcp[1]]
        }
        IPPROTO_UDP => {
            let udp: [u16; UDP_HLEN / 2] = load(data, data_end, meta.l4_off)?;
            [udp[0], udp[1]]
        }
        _ => return Err(Reason::NotTcpUdp),
    };
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
fn parse_ipv4(data: usize, data_end: usize, l3_off: usize) -> Result<PacketMeta, Reason> {
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
    let total_len = u16::from_be_bytes(ip.total_len);
    if usize::from(total_len) < hlen {
        return Err(Reason::Malformed);
    }
    if u16::from_be_bytes(ip.frag_off) & IPV4_FRAG_MASK != 0 {
        return Err(Reason::Fragment);
    }
    Ok(PacketMeta {
        l3_off,
        l4_off: l3_off + hlen,
        family: AF_INET,
        proto: ip.proto,
        saddr: addr_v4(ip.saddr),
        daddr: addr_v4(ip.daddr),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        l3_len: u32::from(total_len),
    })
}

#[inline(always)]
fn parse_ipv6(data: usize, data_end: usize, l3_off: usize) -> Result<PacketMeta, Reason> {
    let ip: Ipv6Fixed = load(data, data_end, l3_off)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let payload_len = u16::from_be_bytes(ip.payload_len);
    let mut next = ip.next_header;
    let mut off = l3_off + IPV6_HLEN;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext: [u8; 2] = load(data, data_end, off)?;
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
        IPPROTO_TCP | IPPROTO_UDP => {}
        // ICMPv6, no-next-header, SCTP, ...: not ours to touch.
        _ => return Err(Reason::NotTcpUdp),
    }
    Ok(PacketMeta {
        l3_off,
        l4_off: off,
        family: AF_INET6,
        proto: next,
        saddr: addr_v6(ip.saddr),
        daddr: addr_v6(ip.daddr),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        l3_len: u32::from(payload_len) + IPV6_HLEN as u32,
    })
}

