//! The egress pipeline, where packets leave an interface xvs serves. One connection-table
//! lookup tells what a packet is:
//! - a reply (backend -> client): the source goes back to the VIP, so the client only ever
//!   talks to the service address;
//! - a DNATed flow's packet to its backend (client -> backend): masqueraded or not, as the
//!   flow's first packet out decided (snat.rs).
//!
//! ICMP errors about clients' packets branch off to icmp.rs.
use xvs_common::{Reason, FLOW_MASQ, FLOW_REPLY};

use crate::{
    conntrack,
    icmp::{self, Way},
    nat::{End, Packet},
    parse, snat,
    stats::{self, Direction},
};

/// `Ok(reason)`: rewritten; `Err(reason)`: untouched (or dropped when `reason.is_drop()`).
#[inline(always)]
pub fn egress<P: Packet>(packet: &P) -> Result<Reason, Reason> {
    let ip = parse::parse_ip(packet.frame())?;
    if icmp::is_icmp(&ip) {
        return icmp::translate(packet, &ip, Way::ToClient);
    }
    let meta = parse::parse_l4(packet.frame(), ip)?;
    let Some(in_place) = conntrack::any_in_place(&conntrack::key_of(&meta)) else {
        return snat::first_out(packet, &meta);
    };
    // SAFETY: a live map value for this program run; copied so one version is read.
    let entry = unsafe { *in_place };
    match entry.kind {
        FLOW_REPLY => {
            packet.rewrite(&meta, End::Source, &entry.nat_addr, entry.nat_port)?;
            stats::count_flow(entry.svc_id, entry.backend_id, meta.l3_len, Direction::Out);
            Ok(Reason::ReplyNat)
        }
        FLOW_MASQ => snat::masquerade(packet, &meta, in_place),
        _ => Err(Reason::NotService),
    }
}
