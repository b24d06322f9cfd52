//! Structural floors for `cargo xtask bench` (never attached by the agent): the least any NAT
//! load balancer with a connection table pays per packet, built from xvs's own parser and
//! connection table, so the bench can say how far above them the real pipeline runs.
use xvs_common::{Backend, FLOW_FORWARD};

use crate::{clock, conntrack, nat::Packet, parse};

/// An established packet's floor: parse, then one connection-table hit.
#[inline(always)]
pub fn flow_hit<P: Packet>(packet: &P) -> bool {
    let Ok(ip) = parse::parse_ip(packet.frame()) else { return false };
    let Ok(meta) = parse::parse_l4(packet.frame(), ip) else { return false };
    conntrack::lookup(&conntrack::key_of(&meta), FLOW_FORWARD).is_some()
}

/// A new flow's floor: parse, a connection-table miss, then the two inserts (forward and
/// reply entries) every NAT flow needs; "scheduling" takes the VIP itself as the backend.
#[inline(always)]
pub fn flow_insert<P: Packet>(packet: &P) -> bool {
    let Ok(ip) = parse::parse_ip(packet.frame()) else { return false };
    let Ok(meta) = parse::parse_l4(packet.frame(), ip) else { return false };
    let key = conntrack::key_of(&meta);
    if conntrack::lookup(&key, FLOW_FORWARD).is_some() {
        return false;
    }
    let backend = Backend { addr: meta.daddr, port: meta.dport, family: meta.family, ..Backend::default() };
    conntrack::create(&key, &meta, 0, 0, &backend, clock::now_secs()).is_ok()
}
