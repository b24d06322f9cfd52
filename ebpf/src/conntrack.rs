//! The connection table: pins every flow to its backend and remembers how to undo the NAT on
//! replies. Each flow has two entries in one LRU map: forward (client -> VIP) and reply
//! (backend -> client).
use xvs_common::{
    flow::{expired, FlowState},
    Backend, FlowEntry, FlowKey, Reason, FLOW_FORWARD, FLOW_REPLY, IPPROTO_TCP,
};

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

/// The entry of `key` of whatever kind, in place.
#[inline(always)]
pub fn any_in_place(key: &FlowKey) -> Option<*mut FlowEntry> {
    XVS_CONNTRACK.get_ptr_mut(key)
}

/// The entry of `key` if it is of `kind`, in place: an established packet reads and stamps it
/// through this one lookup.
#[inline(always)]
pub fn lookup_in_place(key: &FlowKey, kind: u8) -> Option<*mut FlowEntry> {
    let entry = any_in_place(key)?;
    // SAFETY: a live map value for the rest of this program run.
    (unsafe { (*entry).kind } == kind).then_some(entry)
}

/// A copy of the entry of `key` if it is of `kind`.
#[inline(always)]
pub fn lookup(key: &FlowKey, kind: u8) -> Option<FlowEntry> {
    // SAFETY: as above; copied out before anything else touches the map.
    lookup_in_place(key, kind).map(|entry| unsafe { *entry })
}

/// The state a client packet moves its flow to.
#[inline(always)]
pub fn next_state(entry_state: u8, meta: &PacketMeta) -> FlowState {
    let state = FlowState::from_u8(entry_state);
    if meta.proto == IPPROTO_TCP { state.after_tcp(meta.tcp_flags) } else { FlowState::Datagram }
}

/// Whether the forward entry still carries its flow: not idle past its timeout, and not a
/// closed connection whose client port opens a new one.
#[inline(always)]
pub fn alive(entry: &FlowEntry, meta: &PacketMeta, now: u32) -> bool {
    let state = FlowState::from_u8(entry.state);
    let reopened = meta.proto == IPPROTO_TCP && state.reopened_by(meta.tcp_flags);
    !reopened && !expired(state, entry.last_seen, now)
}

/// Stamps a client packet on its established flow's entry (from `lookup_in_place`). Written
/// only when something changed, so a busy flow costs one write per second, not one per packet.
#[inline(always)]
pub fn touch(entry: *mut FlowEntry, meta: &PacketMeta, now: u32) {
    // SAFETY: a live map value (see `lookup_in_place`); racing CPUs write equivalent values.
    let entry = unsafe { &mut *entry };
    let state = next_state(entry.state, meta) as u8;
    if entry.state != state {
        entry.state = state;
    }
    if entry.last_seen != now {
        entry.last_seen = now;
    }
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
    now: u32,
) -> Result<(), Reason> {
    let forward = FlowEntry {
        nat_addr: backend.addr,
        nat_port: backend.port,
        kind: FLOW_FORWARD,
        family: meta.family,
        svc_id,
        backend_id,
        last_seen: now,
        state: next_state(FlowState::Datagram as u8, meta) as u8,
        _pad: [0; 3],
    };
    let reply_key = fwd_key.reply_of(backend.addr, backend.port);
    let reply = FlowEntry {
        nat_addr: meta.daddr,
        nat_port: meta.dport,
        kind: FLOW_REPLY,
        family: meta.family,
        svc_id,
        backend_id,
        // Reply entries live and die with their forward entry (the agent removes both).
        last_seen: now,
        state: 0,
        _pad: [0; 3],
    };
    XVS_CONNTRACK
        .insert(fwd_key, &forward, 0)
        .map_err(|_| Reason::ConntrackFull)?;
    XVS_CONNTRACK
        .insert(&reply_key, &reply, 0)
        .map_err(|_| Reason::ConntrackFull)
}
