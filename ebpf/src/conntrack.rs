//! The connection table: pins every flow to its backend and remembers how to undo the NAT on
//! replies. Each flow has two entries in one LRU map: forward (client -> VIP) and reply
//! (backend -> client).
use xvs_common::{Backend, FlowEntry, FlowKey, Reason, FLOW_FORWARD, FLOW_REPLY};

use crate::{maps::XVS_CONNTRACK, parse::PacketMeta};

/// The key of the packet's own direction.
#[inline(always)]
pub fn key_of(meta: &PacketMeta) -> FlowKey {
    FlowKey {
        saddr: meta.saddr,
        daddr: meta.daddr,
        sport: meta.sport,
        dport: meta.dport,
        proto: meta.proto,
        family: meta.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn lookup(key: &FlowKey, kind: u8) -> Option<FlowEntry> {
    // SAFETY: plain lookup; the value is copied out before anything else touches the map.
    let entry = unsafe { XVS_CONNTRACK.get(key) }.copied()?;
    (entry.kind == kind).then_some(entry)
}

/// Records a new (or rescheduled) flow: forward entry first, then the reply entry. Fails closed:
/// the caller drops the packet if either insert fails.
#[inline(always)]
pub fn create(
    fwd_key: &FlowKey,
    meta: &PacketMeta,
    svc_id: u32,
    backend_id: u32,
    backend: &Backend,
) -> Result<(), Reason> {
    let forward = FlowEntry {
        nat_addr: backend.addr,
        nat_port: backend.port,
        kind: FLOW_FORWARD,
        family: meta.family,
        svc_id,
        backend_id,
    };
    let reply_key = FlowKey {
        saddr: backend.addr,
        daddr: meta.saddr,
        sport: backend.port,
        dport: meta.sport,
        proto: meta.proto,
        family: meta.family,
        _pad: [0; 2],
    };
    let reply = FlowEntry {
        nat_addr: meta.daddr,
        nat_port: meta.dport,
        kind: FLOW_REPLY,
        family: meta.family,
        svc_id,
        backend_id,
    };
    XVS_CONNTRACK
        .insert(fwd_key, &forward, 0)
        .map_err(|_| Reason::ConntrackFull)?;
    XVS_CONNTRACK
        .insert(&reply_key, &reply, 0)
        .map_err(|_| Reason::ConntrackFull)
}
