//! The ingress pipeline for client -> service packets: parse, service lookup, connection table,
//! scheduling of new flows (session affinity first), DNAT, counters.
//! Shared by the XDP program and the TC ingress program. ICMP errors about replies branch off
//! to icmp.rs, replies to masquerade addresses to snat.rs.
use xvs_common::{maglev::JUMP_UNMASQ, Reason, FLOW_FORWARD};

use crate::{
    affinity, clock, conntrack,
    icmp::{self, Way},
    maglev::Jump,
    nat::{End, Packet},
    parse, ranges, select, service, snat,
    stats::{self, Direction},
};

/// Runs the pipeline. `Ok(reason)`: the packet was rewritten towards a backend and is to be
/// passed on; `Err(reason)`: untouched, to be passed or dropped as `reason.is_drop()` says.
#[inline(always)]
pub fn forward<P: Packet + Jump>(packet: &P) -> Result<Reason, Reason> {
    let ip = parse::parse_ip(packet.frame())?;
    if icmp::is_icmp(&ip) {
        let translated = icmp::translate(packet, &ip, Way::ToService);
        // Perhaps an error about a masqueraded packet: the unmasquerade program's.
        if translated == Err(Reason::NotService) && snat::enabled() {
            packet.jump(JUMP_UNMASQ);
        }
        return translated;
    }
    let meta = parse::parse_l4(packet.frame(), ip)?;
    let Some(svc) = service::lookup(&meta) else {
        // Perhaps a reply to a masqueraded flow: handled by the unmasquerade program.
        if snat::in_port_range(&meta) {
            packet.jump(JUMP_UNMASQ);
        }
        return Err(Reason::NotService);
    };
    // SAFETY: `svc` points at a live map value; copied so the cursor update stays in select.
    let value = unsafe { *svc };
    let svc_id = value.svc_id;
    let key = conntrack::key_of(&meta);
    let now = clock::now_secs();

    // One lookup serves an established packet: read in place, stamped through the same pointer.
    let existing = conntrack::lookup_in_place(&key, FLOW_FORWARD);
    // A flow keeps its backend while it is alive and the backend still serves this service
    // (draining or not: established flows finish where they started).
    let pinned = existing.and_then(|in_place| {
        // SAFETY: a live map value for this program run; copied so the checks read one version.
        let entry = unsafe { *in_place };
        if !conntrack::alive(&entry, &meta, now) {
            return None;
        }
        let backend = service::backend(entry.backend_id)?;
        (entry.svc_id == svc_id && backend.svc_id == svc_id).then_some((entry.backend_id, backend, in_place))
    });
    let (outcome, backend_id, backend) = match pinned {
        Some((id, backend, in_place)) => {
            conntrack::touch(in_place, &meta, now);
            (Reason::Established, id, backend)
        }
        None => {
            ranges::admit(&value, &meta)?;
            let (id, backend) = match affinity::find(&value, &meta, now) {
                Some(bound) => bound,
                None => {
                    let id = select::select(packet, svc, &meta)?;
                    (id, service::backend(id).ok_or(Reason::BackendMissing)?)
                }
            };
            conntrack::create(&key, &meta, svc_id, id, &backend, now)?;
            // A forward entry that existed but no longer carries its flow: the flow moved.
            let outcome = if existing.is_some() { Reason::Rescheduled } else { Reason::NewFlow };
            (outcome, id, backend)
        }
    };
    if value.affinity_timeout != 0 {
        affinity::remember(&value, &meta, backend_id, now);
    }
    packet.rewrite(&meta, End::Destination, &backend.addr, backend.port)?;
    let new_conn = outcome != Reason::Established;
    stats::count_flow(svc_id, backend_id, meta.l3_len, Direction::In { new_conn });
    Ok(outcome)
}
