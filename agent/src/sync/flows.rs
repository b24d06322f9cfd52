//! Reading the connection table: live connections per backend (ActiveConn/InActConn, draining)
//! and garbage collection of dead flows, by the same liveness rules as the datapath.
use std::collections::HashMap;

use xvs_common::{
    flow::{expired, FlowState},
    FlowEntry, FlowKey, FLOW_FORWARD, FLOW_REPLY, MAP_CONNTRACK,
};

use crate::dataplane::{is_missing, DataplaneError, Maps};

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
}

#[derive(Debug, Default)]
pub struct FlowScan {
    pub per_backend: HashMap<u32, ConnCounts>,
    /// Forward keys of dead flows, with their entries (to find the reply key).
    pub dead: Vec<(FlowKey, FlowEntry)>,
    /// Reply entries whose forward entry is gone (LRU eviction, or a crash between deletes).
    pub orphan_replies: Vec<FlowKey>,
}

/// The reply key a forward entry created.
pub fn reply_key(fwd: &FlowKey, entry: &FlowEntry) -> FlowKey {
    fwd.reply_of(entry.nat_addr, entry.nat_port)
}

/// Walks the whole table once. `now` is CLOCK_MONOTONIC seconds.
pub fn scan(maps: &Maps, now: u32) -> Result<FlowScan, DataplaneError> {
    let mut out = FlowScan::default();
    let mut replies = Vec::new();
    let mut forwards = std::collections::HashSet::new();
    for item in maps.conntrack.iter() {
        let (key, entry) = match item {
            Ok(kv) => kv,
            // An LRU entry evicted between "next key" and "lookup": nothing to count.
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(DataplaneError::map(MAP_CONNTRACK, "read")(e)),
        };
        match entry.kind {
            FLOW_FORWARD => {
                forwards.insert(key);
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
            _ => {}
        }
    }
    for (key, entry) in replies {
        let forward = key.forward_of(entry.nat_addr, entry.nat_port);
        // Seen in this walk: not an orphan. Otherwise look again, since a flow created during
        // the walk may have put its forward entry where the walk had already passed.
        if !forwards.contains(&forward) && maps.conntrack.get(&forward, 0).is_err() {
            out.orphan_replies.push(key);
        }
    }
    Ok(out)
}

/// Deletes dead flows (both entries) and orphaned replies; returns how many entries went. Each
/// dead flow is read again first: a packet may have revived it since the scan (a new SYN on the
/// same ports), and a live flow must never lose its entry.
pub fn collect_garbage(maps: &mut Maps, scan: &FlowScan, now: u32) -> Result<usize, DataplaneError> {
    let mut keys = Vec::with_capacity(scan.dead.len() * 2 + scan.orphan_replies.len());
    for (key, entry) in &scan.dead {
        let still_dead = match maps.conntrack.get(key, 0) {
            Ok(current) => current.kind == FLOW_FORWARD && expired(FlowState::from_u8(current.state), current.last_seen, now),
            Err(_) => true,
        };
        if still_dead {
            keys.push(*key);
            keys.push(reply_key(key, entry));
        }
    }
    keys.extend(scan.orphan_replies.iter().copied());
    let mut removed = 0;
    for key in keys {
        match maps.conntrack.remove(&key) {
            Ok(()) => removed += 1,
            // Evicted meanwhile: fine.
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(DataplaneError::map(MAP_CONNTRACK, "delete")(e)),
        }
    }
    Ok(removed)
}
