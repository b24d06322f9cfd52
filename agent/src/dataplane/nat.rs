//! Masquerading's settings in the maps: the configuration (`XVS_NAT`) and the address each
//! served interface masquerades to (`XVS_NAT_ADDRS`). The datapath side is ebpf/src/snat.rs.
use std::{collections::BTreeMap, net::IpAddr, ops::RangeInclusive};

use xvs_common::{
    ClusterCidr, NatAddrKey, NatConfig, MAP_NAT, MAP_NAT_ADDRS, NAT_F_CIDR_V4, NAT_F_CIDR_V6, NAT_F_ENABLED, NAT_F_MASQUERADE_ALL,
};

use super::{addr::to_map_addr, error::DataplaneError, is_missing, maps::Maps};

/// kube-proxy's masquerade settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatSettings {
    /// `--cluster-cidr`: the pod network of each family, (network address, prefix length);
    /// traffic to a cluster IP from outside it is masqueraded.
    pub cluster_cidrs: Vec<(IpAddr, u8)>,
    /// `--masquerade-all`: every flow to a cluster IP is masqueraded.
    pub masquerade_all: bool,
    /// The SNAT ports, host order.
    pub ports: RangeInclusive<u16>,
}

/// Above Linux's default ephemeral range (`ip_local_port_range` 32768-60999), so the node's own
/// connections and masqueraded flows do not meet on the same tuple.
pub const DEFAULT_SNAT_PORTS: RangeInclusive<u16> = 61000..=65535;

impl Default for NatSettings {
    fn default() -> Self {
        Self { cluster_cidrs: Vec::new(), masquerade_all: false, ports: DEFAULT_SNAT_PORTS }
    }
}

impl NatSettings {
    /// The map value. An empty port range leaves masquerading off.
    pub fn config(&self) -> NatConfig {
        let mut cfg = NatConfig { port_min: *self.ports.start(), port_max: *self.ports.end(), ..NatConfig::default() };
        if !self.ports.is_empty() {
            cfg.flags |= NAT_F_ENABLED;
        }
        if self.masquerade_all {
            cfg.flags |= NAT_F_MASQUERADE_ALL;
        }
        for &(net, prefix) in &self.cluster_cidrs {
            let (slot, bit, bits) = if net.is_ipv6() { (1, NAT_F_CIDR_V6, 128) } else { (0, NAT_F_CIDR_V4, 32) };
            let mask_ip = mask(net.is_ipv6(), prefix.min(bits));
            let (mask_words, _) = to_map_addr(mask_ip);
            let (net_words, _) = to_map_addr(net);
            let net_words = std::array::from_fn(|w| net_words[w] & mask_words[w]);
            cfg.cluster_cidr[slot] = ClusterCidr { net: net_words, mask: mask_words };
            cfg.flags |= bit;
        }
        cfg
    }
}

/// Where `ports` meets the node's ephemeral ports (`ip_local_port_range`, as the file reads,
/// e.g. "32768\t60999"): a node's own connection to a backend could then take a tuple a
/// masqueraded flow holds. `None`: no overlap, or the text is not a range.
pub fn ephemeral_overlap(ports: &RangeInclusive<u16>, ip_local_port_range: &str) -> Option<RangeInclusive<u16>> {
    let mut ends = ip_local_port_range.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high))) = (ends.next(), ends.next()) else { return None };
    let (start, end) = (low.max(*ports.start()), high.min(*ports.end()));
    (start <= end).then_some(start..=end)
}

/// The netmask of `prefix` bits as an address of the family.
fn mask(v6: bool, prefix: u8) -> IpAddr {
    if v6 {
        let bits = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
        IpAddr::V6(bits.into())
    } else {
        let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        IpAddr::V4(bits.into())
    }
}

/// The address each of `ifaces` masquerades to, per family: its first address of the family
/// that is neither loopback nor link-local (the kernel lists an interface's primary address
/// first), keyed by (interface index, family). Interfaces that do not exist are left out.
pub fn interface_addresses(ifaces: &[String]) -> BTreeMap<(u32, u8), IpAddr> {
    let mut out = BTreeMap::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below; each node is read while the list is alive.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return out;
    }
    let mut node = list;
    while !node.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let entry = unsafe { &*node };
        node = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }.to_string_lossy();
        if !ifaces.iter().any(|i| *i == name) {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says which one.
        let ip = match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
            libc::AF_INET => IpAddr::V4(u32::from_be(unsafe { (*entry.ifa_addr.cast::<libc::sockaddr_in>()).sin_addr.s_addr }).into()),
            libc::AF_INET6 => IpAddr::V6(unsafe { (*entry.ifa_addr.cast::<libc::sockaddr_in6>()).sin6_addr.s6_addr }.into()),
            _ => continue,
        };
        if !masquerades_to(ip) {
            continue;
        }
        // SAFETY: the name is NUL-terminated (see above).
        let ifindex = unsafe { libc::if_nametoindex(entry.ifa_name) };
        let family = to_map_addr(ip).1;
        out.entry((ifindex, family)).or_insert(ip);
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// Whether the node can masquerade to `ip`: not loopback, not IPv6 link-local (a remote
/// backend could not answer it).
fn masquerades_to(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

impl Maps {
    pub fn set_nat(&mut self, settings: &NatSettings) -> Result<(), DataplaneError> {
        self.nat.set(0, settings.config(), 0).map_err(DataplaneError::map(MAP_NAT, "write"))
    }

    pub fn nat_config(&self) -> Result<NatConfig, DataplaneError> {
        self.nat.get(&0, 0).map_err(DataplaneError::map(MAP_NAT, "read"))
    }

    /// Makes the interface addresses exactly `addrs` (interface index -> one address per
    /// family); entries of interfaces no longer served go.
    pub fn set_nat_addrs(&mut self, addrs: &BTreeMap<(u32, u8), IpAddr>) -> Result<(), DataplaneError> {
        let wanted: std::collections::HashMap<NatAddrKey, [u32; 4]> = addrs
            .iter()
            .map(|(&(ifindex, family), &ip)| (NatAddrKey { ifindex, family, _pad: [0; 3] }, to_map_addr(ip).0))
            .collect();
        let present: Vec<NatAddrKey> = self.nat_addrs.keys().filter_map(Result::ok).collect();
        for key in present.iter().filter(|k| !wanted.contains_key(k)) {
            match self.nat_addrs.remove(key) {
                Ok(()) => {}
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(DataplaneError::map(MAP_NAT_ADDRS, "delete")(e)),
            }
        }
        for (key, addr) in &wanted {
            if self.nat_addrs.get(key, 0).ok().as_ref() != Some(addr) {
                self.nat_addrs.insert(key, addr, 0).map_err(DataplaneError::map(MAP_NAT_ADDRS, "write"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_masks_the_cidrs_and_sets_the_flags() {
        let settings = NatSettings {
            cluster_cidrs: vec![("10.244.7.9".parse().unwrap_or(IpAddr::from([0u8; 4])), 16), ("fd44::".parse().unwrap_or(IpAddr::from([0u8; 16])), 48)],
            masquerade_all: true,
            ports: 1000..=2000,
        };
        let cfg = settings.config();
        assert_eq!(cfg.flags, NAT_F_ENABLED | NAT_F_MASQUERADE_ALL | NAT_F_CIDR_V4 | NAT_F_CIDR_V6);
        assert_eq!((cfg.port_min, cfg.port_max), (1000, 2000));
        assert_eq!(cfg.cluster_cidr[0].net, xvs_common::addr_v4([10, 244, 0, 0]), "host bits cleared");
        assert_eq!(cfg.cluster_cidr[0].mask, xvs_common::addr_v4([255, 255, 0, 0]));
        assert!(cfg.cluster_cidr[1].contains(&to_map_addr("fd44::1:2".parse().unwrap_or(IpAddr::from([0u8; 16]))).0));
        assert!(!cfg.cluster_cidr[1].contains(&to_map_addr("fd45::1".parse().unwrap_or(IpAddr::from([0u8; 16]))).0));
    }

    #[test]
    fn overlap_with_the_ephemeral_range() {
        assert_eq!(ephemeral_overlap(&DEFAULT_SNAT_PORTS, "32768\t60999\n"), None);
        assert_eq!(ephemeral_overlap(&(1024..=65535), "32768\t60999\n"), Some(32768..=60999));
        assert_eq!(ephemeral_overlap(&(60000..=61000), "32768 60999"), Some(60000..=60999));
        assert_eq!(ephemeral_overlap(&(1024..=65535), "garbage"), None);
    }

    #[test]
    fn loopback_and_link_local_addresses_are_not_masquerade_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0u8; 4]));
        assert!(masquerades_to(ip("10.2.0.1")) && masquerades_to(ip("fd02::1")));
        assert!(!masquerades_to(ip("127.0.0.1")) && !masquerades_to(ip("::1")) && !masquerades_to(ip("fe80::1")));
    }

    #[test]
    fn an_empty_port_range_leaves_masquerading_off() {
        #[expect(clippy::reversed_empty_ranges, reason = "the case under test")]
        let settings = NatSettings { ports: 2000..=1000, ..NatSettings::default() };
        assert_eq!(settings.config().flags & NAT_F_ENABLED, 0);
        assert_ne!(NatSettings::default().config().flags & NAT_F_ENABLED, 0);
    }
}
