//! Conversions between std IP addresses and the datapath's map representation.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use xvs_common::{addr_octets, addr_v4, addr_v6, AF_INET, AF_INET6};

/// (map address words, address family) of an IP address.
pub fn to_map_addr(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => (addr_v4(v4.octets()), AF_INET),
        IpAddr::V6(v6) => (addr_v6(v6.octets()), AF_INET6),
    }
}

/// The IP address a map entry holds, or `None` for an unknown family.
pub fn from_map_addr(addr: &[u32; 4], family: u8) -> Option<IpAddr> {
    let octets = addr_octets(addr);
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(octets))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for ip in ["10.96.0.10", "fd00::1:2", "::ffff:1.2.3.4"] {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let (words, family) = to_map_addr(ip);
            assert_eq!(from_map_addr(&words, family), Some(ip));
        }
        assert_eq!(from_map_addr(&[0; 4], 0), None);
    }

    #[test]
    fn ipv4_is_raw_network_order_in_word_zero() {
        let (words, _) = to_map_addr("10.0.0.1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(words[0].to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(&words[1..], &[0, 0, 0]);
    }
}
