//! The ingress pipeline for client -> service packets: parse, service lookup, connection table,
//! scheduling of new flows, DNAT, counters. Shared by the XDP program and the TC ingress program.
use xvs_common::{Reason, FLOW_FORWARD};

use crate::{
    conntrack,
    nat::{End, Packet},
    parse, select, service,
    stats::{self, Direction},
};

/// Runs the pipeline. `Ok(reason)`: the packet was rewritten towards a backend and is to be
/// passed on; `Err(reason)`: untouched, to be passed or dropped as `reason.is_drop()` says.
#[inline(always)]
pub fn forward<P: Packet>(packet: &P) -> Result<Reason, Reason> {
    let (data, data_end) = packet.bounds();
    let meta = parse::parse(data, data_end)?;
    let svc = service::lookup(&meta).ok_or(Reason::NotService)?;
    // SAFETY: `svc` points at a live map value.
    let svc_id = unsafe { (*svc).svc_id };
    let key = conntrack::key_of(&meta);

    let existing = conntrack::lookup(&key, FLOW_FORWARD);
    let pinned = existing.and_then(|entry| {
        let backend = service::backend(entry.backend_id)?;
        (entry.svc_id == svc_id && backend.svc_id == svc_id).then_some((entry.backend_id, backend))
    });
    let (outcome, backend_id, backend) = match pinned {
        Some((id, backend)) => (Reason::Established, id, backend),
        None => {
            let id = select::select(svc, &meta)?;
            let backend = service::backend(id).ok_or(Reason::BackendMissing)?;
            conntrack::create(&key, &meta, svc_id, id, &backend)?;
            // A forward entry that existed but no longer leads to a live backend: the flow moved.
            let outcome = if existing.is_some() { Reason::Rescheduled } else { Reason::NewFlow };
            (outcome, id, backend)
        }
    };
    packet.rewrite(&meta, End::Destination, &backend.addr, backend.port)?;
    let new_conn = outcome != Reason::Established;
    stats::count_flow(svc_id, backend_id, meta.l3_len, Direction::In { new_conn });
    Ok(outcome)
}
