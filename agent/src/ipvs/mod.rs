//! Kernel IPVS over generic netlink: a small client (neli), the wire format, and the renderer
//! that writes the desired state as kube-proxy's IPVS mode would.
mod client;
mod error;
pub mod dummy;
pub mod mirror;
pub mod owned;
pub mod render;
pub mod wire;

use std::net::IpAddr;

pub use client::{IpvsClient, IpvsInfo};
pub use error::IpvsError;

/// A virtual service as IPVS holds it (address-based; fwmark services are not xvs's).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IpvsService {
    /// IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP.
    pub protocol: u16,
    pub addr: IpAddr,
    pub port: u16,
    pub scheduler: String,
    /// IP_VS_SVC_F_* without HASHED.
    pub flags: u32,
    /// Persistence timeout, seconds.
    pub timeout: u32,
}

impl IpvsService {
    /// `TCP 10.96.0.10:80`: how errors and logs name it.
    pub fn name(&self) -> String {
        let proto = match self.protocol {
            6 => "TCP",
            17 => "UDP",
            132 => "SCTP",
            _ => "?",
        };
        format!("{proto} {}", std::net::SocketAddr::new(self.addr, self.port))
    }
}

/// A real server of a virtual service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IpvsDest {
    pub addr: IpAddr,
    pub port: u16,
    /// IP_VS_CONN_F_* forwarding method (0 = Masq).
    pub fwd_method: u32,
    pub weight: u32,
    /// Output only.
    pub active_conns: u32,
    /// Output only.
    pub inactive_conns: u32,
}
