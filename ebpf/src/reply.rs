//! The reply pipeline for backend -> client packets: finds the flow's reply entry and rewrites
//! the source back to the VIP, so the client only ever talks to the service address. ICMP
//! errors about clients' packets branch off to icmp.rs.
use xvs_common::{Reason, FLOW_REPLY};

use crate::{
    conntrack,
    icmp::{self, Way},
    nat::{End, Packet},
    parse,
    stats::{self, Direction},
};

/// `Ok(ReplyNat)`: rewritten; `Err(reason)`: untouched (or dropped when `reason.is_drop()`).
#[inline(always)]
pub fn reverse_nat<P: Packet>(packet: &P) -> Result<Reason, Reason> {
    let ip = parse::parse_ip(packet.frame())?;
    if icmp::is_icmp(&ip) {
        return icmp::translate(packet, &ip, Way::ToClient);
    }
    let meta = parse::parse_l4(packet.frame(), ip)?;
    let entry = conntrack::lookup(&conntrack::key_of(&meta), FLOW_REPLY).ok_or(Reason::NotService)?;
    packet.rewrite(&meta, End::Source, &entry.nat_addr, entry.nat_port)?;
    stats::count_flow(entry.svc_id, entry.backend_id, meta.l3_len, Direction::Out);
    Ok(Reason::ReplyNat)
}
