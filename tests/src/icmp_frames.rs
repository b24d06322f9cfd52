//! ICMP errors for the tests, built by etherparse (every checksum computed from scratch).
use std::net::IpAddr;

use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, PacketBuilder};

use crate::Pkt;

/// The errors the tests send: PMTU discovery's and a closed port's.
#[derive(Clone, Copy, Debug)]
pub enum IcmpError {
    /// "Fragmentation needed" (ICMPv6 "packet too big"), MTU 1400.
    TooBig,
    PortUnreachable,
}

/// An ICMP error from `src` to `dst` quoting `quote`.
pub fn icmp_error(src: IpAddr, dst: IpAddr, error: IcmpError, quote: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 2]);
    let mut out = Vec::new();
    let written = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let header = match error {
                IcmpError::TooBig => icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
                IcmpError::PortUnreachable => icmpv4::DestUnreachableHeader::Port,
            };
            eth.ipv4(s.octets(), d.octets(), 64).icmpv4(Icmpv4Type::DestinationUnreachable(header)).write(&mut out, quote)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let kind = match error {
                IcmpError::TooBig => Icmpv6Type::PacketTooBig { mtu: 1400 },
                IcmpError::PortUnreachable => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
            };
            eth.ipv6(s.octets(), d.octets(), 64).icmpv6(kind).write(&mut out, quote)
        }
        _ => panic!("mixed families"),
    };
    written.unwrap_or_else(|e| panic!("{e}"));
    out
}

/// `p`'s IP packet, cut after `cut` bytes (all of it when `None`).
pub fn quote(p: &Pkt, cut: Option<usize>) -> Vec<u8> {
    let ip = p.bytes()[p.l3_offset()..].to_vec();
    ip[..cut.map_or(ip.len(), |c| c.min(ip.len()))].to_vec()
}

