//! When a new flow is masqueraded (source-NATed to the node), decided as kube-proxy decides it,
//! and where its SNAT port comes from. One pure rule for the datapath and the agent's tests.
use crate::{NatConfig, AF_INET6, NAT_F_CIDR_V4, NAT_F_CIDR_V6, NAT_F_ENABLED, NAT_F_MASQUERADE_ALL, SERVICE_F_EXTERNAL, SERVICE_F_KEEP_CLIENT};

/// Whether a new flow from `client` to a service with `svc_flags`, scheduled to `backend`, is
/// masqueraded. kube-proxy's rules (iptables and IPVS modes alike):
/// - hairpin, the client is the backend itself: always (the `-s <endpoint>` KUBE-MARK-MASQ
///   rule of every endpoint chain), or the backend would answer itself directly;
/// - an external VIP (NodePort, externalIP, LoadBalancer) with `externalTrafficPolicy:
///   Cluster`: always, since the backend may sit on another node that would answer the client
///   directly;
/// - an external VIP with `externalTrafficPolicy: Local`: never, the client's address is kept;
/// - a cluster IP: with `--masquerade-all`, or from outside the cluster CIDR when one is set
///   (kube-proxy's local-traffic detector); without a CIDR kube-proxy cannot tell, and keeps it.
#[inline(always)]
pub fn masquerades(cfg: &NatConfig, svc_flags: u8, family: u8, client: &[u32; 4], backend: &[u32; 4]) -> bool {
    // Arithmetic, not branches: the datapath runs this at the end of its longest pipeline,
    // where every extra branch is walked again by the verifier on every path that gets there.
    let flag = |flags: u8, bit: u8| u64::from(flags & bit != 0);
    let cidr = &cfg.cluster_cidr[usize::from(family == AF_INET6)];
    let mut differ = 0u32;
    let mut outside = 0u32;
    let mut w = 0;
    while w < 4 {
        differ |= client[w] ^ backend[w];
        outside |= (client[w] & cidr.mask[w]) ^ cidr.net[w];
        w += 1;
    }
    let hairpin = 1 - nonzero(differ);
    let cidr_bit = if family == AF_INET6 { NAT_F_CIDR_V6 } else { NAT_F_CIDR_V4 };
    let external = flag(svc_flags, SERVICE_F_EXTERNAL);
    let keep = flag(svc_flags, SERVICE_F_KEEP_CLIENT);
    let cluster_ip = (1 - external) & (flag(cfg.flags, NAT_F_MASQUERADE_ALL) | (flag(cfg.flags, cidr_bit) & nonzero(outside)));
    flag(cfg.flags, NAT_F_ENABLED) & (hairpin | (external & (1 - keep)) | cluster_ip) != 0
}

/// 1 if `x` is not zero, else 0, without a branch.
#[inline(always)]
const fn nonzero(x: u32) -> u64 {
    let x = x as u64;
    (x | x.wrapping_neg()) >> 63
}

/// The SNAT port (host order) a try with random number `random` takes: uniform over the
/// configured range (inclusive), so retries after a collision land anywhere in it.
#[inline(always)]
pub fn port_of(cfg: &NatConfig, random: u32) -> u16 {
    let span = u32::from(cfg.port_max.saturating_sub(cfg.port_min)) + 1;
    cfg.port_min.wrapping_add((random % span) as u16)
}

/// How many ports a new masqueraded flow tries before it counts the range as full (Cilium's
/// SNAT_COLLISION_RETRIES is 32; each try is one insert that fails only on a live tuple).
pub const SNAT_TRIES: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr_v4, addr_v6, ClusterCidr, AF_INET};

    fn cfg(flags: u8) -> NatConfig {
        let v4 = ClusterCidr { net: addr_v4([10, 244, 0, 0]), mask: addr_v4([255, 255, 0, 0]) };
        let v6 = ClusterCidr { net: addr_v6([0xfd, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), mask: addr_v6([0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) };
        NatConfig { cluster_cidr: [v4, v6], port_min: 61000, port_max: 65535, flags: NAT_F_ENABLED | flags, _pad: [0; 3] }
    }

    const POD: [u32; 4] = addr_v4([10, 244, 1, 2]);
    const OUTSIDE: [u32; 4] = addr_v4([192, 0, 2, 7]);
    const BACKEND: [u32; 4] = addr_v4([10, 244, 2, 2]);

    #[test]
    fn cluster_ip_is_masqueraded_from_outside_the_cluster_cidr_only() {
        let c = cfg(NAT_F_CIDR_V4);
        assert!(masquerades(&c, 0, AF_INET, &OUTSIDE, &BACKEND));
        assert!(!masquerades(&c, 0, AF_INET, &POD, &BACKEND));
        // Without a CIDR of the family nothing tells inside from outside: kept.
        assert!(!masquerades(&cfg(0), 0, AF_INET, &OUTSIDE, &BACKEND));
        let pod6 = addr_v6([0xfd, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let out6 = addr_v6([0xfd, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let c6 = cfg(NAT_F_CIDR_V6);
        assert!(masquerades(&c6, 0, AF_INET6, &out6, &BACKEND));
        assert!(!masquerades(&c6, 0, AF_INET6, &pod6, &BACKEND));
        assert!(!masquerades(&c, 0, AF_INET6, &out6, &BACKEND), "a v4 CIDR says nothing about v6 clients");
    }

    #[test]
    fn masquerade_all_covers_cluster_ips_but_not_local_policy() {
        let c = cfg(NAT_F_MASQUERADE_ALL | NAT_F_CIDR_V4);
        assert!(masquerades(&c, 0, AF_INET, &POD, &BACKEND));
        assert!(!masquerades(&c, SERVICE_F_EXTERNAL | SERVICE_F_KEEP_CLIENT, AF_INET, &OUTSIDE, &BACKEND));
    }

    #[test]
    fn external_vips_by_traffic_policy() {
        let c = cfg(NAT_F_CIDR_V4);
        assert!(masquerades(&c, SERVICE_F_EXTERNAL, AF_INET, &OUTSIDE, &BACKEND));
        assert!(masquerades(&c, SERVICE_F_EXTERNAL, AF_INET, &POD, &BACKEND), "eTP Cluster: even from a pod");
        assert!(!masquerades(&c, SERVICE_F_EXTERNAL | SERVICE_F_KEEP_CLIENT, AF_INET, &OUTSIDE, &BACKEND));
    }

    #[test]
    fn hairpin_always_and_nothing_when_disabled() {
        assert!(masquerades(&cfg(NAT_F_CIDR_V4), 0, AF_INET, &BACKEND, &BACKEND));
        assert!(masquerades(&cfg(0), SERVICE_F_EXTERNAL | SERVICE_F_KEEP_CLIENT, AF_INET, &BACKEND, &BACKEND));
        let mut off = cfg(NAT_F_MASQUERADE_ALL);
        off.flags &= !NAT_F_ENABLED;
        assert!(!masquerades(&off, SERVICE_F_EXTERNAL, AF_INET, &BACKEND, &BACKEND));
    }

    #[test]
    fn ports_stay_in_the_range() {
        let c = cfg(0);
        for r in [0, 1, 4535, 4536, u32::MAX] {
            assert!((61000..=65535).contains(&port_of(&c, r)), "{r}");
        }
        assert_eq!(port_of(&c, 4536), 61000);
        let one = NatConfig { port_min: 7, port_max: 7, ..c };
        assert_eq!(port_of(&one, 12345), 7);
        let whole = NatConfig { port_min: 0, port_max: 65535, ..c };
        assert_eq!(port_of(&whole, 65536 + 9), 9);
    }
}
