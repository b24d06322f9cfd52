//! Reading the connection table: live connections per backend (ActiveConn/InActConn, draining)
//! and garbage collection of dead flows, by the same liveness rules as the datapath.
use std::collections::HashMap;

use xvs_common::{
    flow::{expired, FlowState},
    FlowEntry, FlowKey, FLOW_FORWARD, FLOW_MASQ, FLOW_REPLY, FLOW_UNMASQ, MAP_CONNTRACK,
};

use crate::dataplane::{batch, DataplaneError, Maps};

/// IPVS's two connection counters of a destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCounts {
    /// Established TCP connections.
    pub active: u32,
    /// Every other live flow (handshaking or closing TCP, UDP).
    pub inactive: u32,
}

impl ConnCounts {
    pub const fn total(&self) -> u32 {
        self.active + self.inactive
    }

    /// Both counts of `self` and `other` together.
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self { active: self.active + other.active, inactive: self.inactive + other.inactive }
    }
}

#[derive(Debug, Default)]
pub struct FlowScan {
    pub per_backend: HashMap<u32, ConnCounts>,
    /// Forward keys of dead flows, with their entries (to find the reply key).
    pub dead: Vec<(FlowKey, FlowEntry)>,
    /// Entries whose flow is gone (LRU eviction, or a crash between deletes): replies without
    /// their forward entry, MASQ entries without their reply entry, UNMASQ entries their MASQ
    /// entry does not point at.
    pub orphans: Vec<FlowKey>,
}

/// The reply key a forward entry created.
pub fn reply_key(fwd: &FlowKey, entry: &FlowEntry) -> FlowKey {
    fwd.reply_of(entry.nat_addr, entry.nat_port)
}

/// The key of a flow's packets after DNAT (client -> backend), where egress keeps its MASQ
/// entry (snat.rs), from the forward entry.
pub fn masq_key(fwd: &FlowKey, entry: &FlowEntry) -> FlowKey {
    FlowKey { daddr: entry.nat_addr, dport: entry.nat_port, ..*fwd }
}

/// The key of the replies to a masqueraded flow's SNAT address and port (UNMASQ), from its
/// MASQ entry; none while the flow keeps its client's address.
pub fn unmasq_key(masq: &FlowKey, entry: &FlowEntry) -> Option<FlowKey> {
    (entry.kind == FLOW_MASQ && entry.nat_port != 0)
        .then_some(FlowKey { saddr: masq.daddr, daddr: entry.nat_addr, sport: masq.dport, dport: entry.nat_port, ..*masq })
}

/// The MASQ key an UNMASQ entry belongs to.
fn masq_of_unmasq(unmasq: &FlowKey, entry: &FlowEntry) -> FlowKey {
    FlowKey { saddr: entry.nat_addr, daddr: unmasq.saddr, sport: entry.nat_port, dport: unmasq.sport, ..*unmasq }
}

/// The mirror image of a key (the reply of a MASQ key is the flow's reply entry).
fn mirror(key: &FlowKey) -> FlowKey {
    FlowKey { saddr: key.daddr, daddr: key.saddr, sport: key.dport, dport: key.sport, ..*key }
}

/// Connections the socket hooks sent to each backend and whose sockets are still open (a
/// released socket's entries are removed): TCP ones count as active, UDP ones (connected, or a
/// service an unconnected socket sends to) as inactive, as IPVS counts its UDP connections.
pub fn socket_conns(maps: &Maps) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
    let mut out: HashMap<u32, ConnCounts> = HashMap::new();
    for (_, entry) in batch::hash_entries(&maps.sock_nat, xvs_common::sock::MAP_SOCK_NAT)? {
        if entry.flags & xvs_common::sock::SOCK_F_TRANSLATED == 0 {
            continue;
        }
        let counts = out.entry(entry.backend_id).or_default();
        if entry.proto == xvs_common::IPPROTO_TCP {
            counts.active += 1;
        } else {
            counts.inactive += 1;
        }
    }
    Ok(out)
}

/// Walks the whole table once (read in batches where the kernel can). `now` is
/// CLOCK_MONOTONIC seconds.
pub fn scan(maps: &Maps, now: u32) -> Result<FlowScan, DataplaneError> {
    let mut out = FlowScan::default();
    let mut replies = Vec::new();
    let mut forwards = HashMap::new();
    let mut masqs = Vec::new();
    let mut unmasqs = Vec::new();
    for (key, entry) in batch::hash_entries(&maps.conntrack, MAP_CONNTRACK)? {
        match entry.kind {
            FLOW_FORWARD => {
                forwards.insert(key, entry);
                let state = FlowState::from_u8(entry.state);
                if expired(state, entry.last_seen, now) {
                    out.dead.push((key, entry));
                    continue;
                }
                let counts = out.per_backend.entry(entry.backend_id).or_default();
                if state.is_active() {
                    counts.active += 1;
                } else {
                    counts.inactive += 1;
                }
            }
            FLOW_REPLY => replies.push((key, entry)),
            FLOW_MASQ => masqs.push((key, entry)),
            FLOW_UNMASQ => unmasqs.push((key, entry)),
            _ => {}
        }
    }
    // Ownership runs forward -> reply -> MASQ -> UNMASQ. An entry is an orphan when the entry it
    // belongs to is gone or no longer points at it: a flow rescheduled to another backend leaves
    // its old reply, MASQ and UNMASQ entries behind, and the UNMASQ entry holds an SNAT port.
    // An owner the walk did not see is read again: a flow created during the walk may have put
    // it where the walk had already passed.
    let reply_owned = |fwd: &FlowEntry, reply: &FlowKey| fwd.kind == FLOW_FORWARD && fwd.nat_addr == reply.saddr && fwd.nat_port == reply.sport;
    let mut judged = Judged::default();
    for (key, entry) in replies {
        let forward = key.forward_of(entry.nat_addr, entry.nat_port);
        let owned = match forwards.get(&forward) {
            Some(fwd) => reply_owned(fwd, &key),
            None => maps.conntrack.get(&forward, 0).is_ok_and(|fwd| reply_owned(&fwd, &key)),
        };
        judged.file(key, owned, &mut out.orphans);
    }
    let mut masq_entries = HashMap::new();
    for (key, entry) in masqs {
        let reply = mirror(&key);
        let owned = judged.live_or(&reply, || maps.conntrack.get(&reply, 0).is_ok_and(|r| r.kind == FLOW_REPLY));
        judged.file(key, owned, &mut out.orphans);
        masq_entries.insert(key, entry);
    }
    for (key, entry) in unmasqs {
        let masq = masq_of_unmasq(&key, &entry);
        let points_here = |m: &FlowEntry| unmasq_key(&masq, m) == Some(key);
        let owned = judged.live_or(&masq, || maps.conntrack.get(&masq, 0).is_ok_and(|m| points_here(&m))) && masq_entries.get(&masq).is_none_or(points_here);
        judged.file(key, owned, &mut out.orphans);
    }
    Ok(out)
}

/// The entries the walk has judged, owner before owned.
#[derive(Default)]
struct Judged {
    seen: std::collections::HashSet<FlowKey>,
    live: std::collections::HashSet<FlowKey>,
}

impl Judged {
    fn file(&mut self, key: FlowKey, owned: bool, orphans: &mut Vec<FlowKey>) {
        self.seen.insert(key);
        if owned {
            self.live.insert(key);
        } else {
            orphans.push(key);
        }
    }

    /// Whether `owner` is live: as judged, or, if the walk did not see it, as `reread` finds it.
    fn live_or(&self, owner: &FlowKey, reread: impl FnOnce() -> bool) -> bool {
        if self.seen.contains(owner) { self.live.contains(owner) } else { reread() }
    }
}

/// Deletes dead flows (all their entries) and orphans; returns how many entries went. Each
/// dead flow is read again first: a packet may have revived it since the scan (a new SYN on the
/// same ports), and a live flow must never lose its entry.
pub fn collect_garbage(maps: &mut Maps, scan: &FlowScan, now: u32) -> Result<usize, DataplaneError> {
    let mut keys = Vec::with_capacity(scan.dead.len() * 2 + scan.orphans.len());
    for (key, entry) in &scan.dead {
        let still_dead = match maps.conntrack.get(key, 0) {
            Ok(current) => current.kind == FLOW_FORWARD && expired(FlowState::from_u8(current.state), current.last_seen, now),
            Err(_) => true,
        };
        if still_dead {
            keys.push(*key);
            keys.push(reply_key(key, entry));
            let masq = masq_key(key, entry);
            if let Ok(masq_entry) = maps.conntrack.get(&masq, 0) {
                keys.push(masq);
                keys.extend(unmasq_key(&masq, &masq_entry));
            }
        }
    }
    keys.extend(scan.orphans.iter().copied());
    batch::hash_delete(&mut maps.conntrack, MAP_CONNTRACK, &keys)
}
