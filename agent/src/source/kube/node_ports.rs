//! The addresses NodePorts are served on, as kube-proxy's IPVS mode chooses them with its
//! `--nodeport-addresses`:
//! - unset: every address of the node's interfaces, but those on the IPVS dummy link (the VIPs),
//!   loopback ones and IPv6 link-local ones;
//! - CIDRs: the node's interface addresses inside any of them (loopback never);
//! - `primary`: the node's primary address of each family, its Node object's first InternalIP.
use std::net::IpAddr;

use crate::model::Cidr;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    #[default]
    All,
    Primary,
    Cidrs(Vec<Cidr>),
}

impl NodePortAddresses {
    /// `--nodeport-addresses` as given: nothing, `primary`, or CIDRs.
    pub fn parse(values: &[String]) -> Result<Self, String> {
        match values {
            [] => Ok(Self::All),
            [one] if one == "primary" => Ok(Self::Primary),
            cidrs => cidrs.iter().map(|c| c.parse()).collect::<Result<Vec<_>, _>>().map(Self::Cidrs),
        }
    }

    /// Whether the choice needs the node's interface addresses.
    pub fn needs_local(&self) -> bool {
        *self != Self::Primary
    }

    /// The NodePort addresses from `local` (the node's interface addresses, the dummy link's
    /// left out) and `internal` (the Node object's InternalIPs, in its order).
    pub fn select(&self, local: &[IpAddr], internal: &[IpAddr]) -> Vec<IpAddr> {
        let link_local_v6 = |ip: &IpAddr| matches!(ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
        let mut out: Vec<IpAddr> = match self {
            Self::All => local.iter().filter(|ip| !ip.is_loopback() && !link_local_v6(ip)).copied().collect(),
            Self::Cidrs(cidrs) => local.iter().filter(|ip| !ip.is_loopback() && cidrs.iter().any(|c| c.contains(ip))).copied().collect(),
            Self::Primary => [internal.iter().find(|ip| ip.is_ipv4()), internal.iter().find(|ip| ip.is_ipv6())].into_iter().flatten().copied().collect(),
        };
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))).collect()
    }

    #[test]
    fn kube_proxy_s_choices() {
        let local = ips(&["127.0.0.1", "10.0.1.1", "192.168.0.11", "::1", "fe80::1", "2001:db8::11", "fd00::11"]);
        let internal = ips(&["192.168.0.11", "192.168.0.12", "2001:db8::11"]);
        assert_eq!(NodePortAddresses::All.select(&local, &internal), ips(&["10.0.1.1", "192.168.0.11", "2001:db8::11", "fd00::11"]));
        let cidrs = NodePortAddresses::parse(&["192.168.0.0/16".into(), "fd00::/8".into(), "127.0.0.0/8".into()]);
        assert_eq!(cidrs.map(|c| c.select(&local, &internal)), Ok(ips(&["192.168.0.11", "fd00::11"])));
        let primary = NodePortAddresses::parse(&["primary".into()]);
        assert_eq!(primary.map(|p| p.select(&local, &internal)), Ok(ips(&["192.168.0.11", "2001:db8::11"])));
        assert_eq!(NodePortAddresses::parse(&[]), Ok(NodePortAddresses::All));
        assert!(NodePortAddresses::parse(&["10.0.0.0/33".into()]).is_err_and(|e| e.contains("0..=32")));
        assert!(NodePortAddresses::parse(&["10.0.0.1".into()]).is_err_and(|e| e.contains("not a CIDR")));
    }
}
