//! Address ranges (source ranges, `--nodeport-addresses`).
use std::net::IpAddr;

/// An address range: `addr/prefix`, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// The range `addr/prefix` (host bits cleared, as the kernel keeps routes).
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let prefix = prefix.min(if addr.is_ipv4() { 32 } else { 128 });
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))),
            IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0))),
        };
        Self { addr, prefix }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let bits = |ip: &IpAddr| match ip {
            IpAddr::V4(a) => (u128::from(u32::from(*a)) << 96, 32),
            IpAddr::V6(a) => (u128::from(*a), 128),
        };
        let ((net, width), (host, host_width)) = (bits(&self.addr), bits(ip));
        if width != host_width {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        net & mask == host & mask
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.split_once('/').ok_or_else(|| format!("{text:?} is not a CIDR (address/prefix)"))?;
        let addr: IpAddr = addr.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("{text:?}: the prefix must be 0..={max}"))?;
        Ok(Self::new(addr, prefix))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
