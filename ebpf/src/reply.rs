//! The reply pipeline for backend -> client packets: finds the flow's reply entry and rewrites
//! the source back to the VIP, so the client only ever talks to the service address.
use xvs_common::{Reason, FLOW_REPLY};

use crate::{
    conntrack,
    nat::{End, Packet},
    parse,
    stats::{self, Direction},
};

/// `Ok(ReplyNat)`: rewritten; `Err(reason)`: untouched (or dropped when `reason.is_drop()`).
#[inline(always)]
pub fn reverse_nat<P: Packet>(packet: &P) -> Result<Reason, Reason> {
    let meta = parse::parse(packet.frame())?;
    let entry = conntrack::lookup(&conntrack::key_of(&meta), FLOW_REPLY).ok_or(Reason::NotService)?;
    packet.rewrite(&meta, End::Source, &entry.nat_addr, entry.nat_port)?;
    stats::count_flow(entry.svc_id, entry.backend_id, meta.l3_len, Direction::Out);
    Ok(Reason::ReplyNat)
}
