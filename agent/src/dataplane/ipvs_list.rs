//! IPVS's destination list and where its rr and wrr schedulers stand, modelled so that the
//! eBPF tables choose what the kernel chooses, through any sequence of changes:
//! - the kernel puts every added destination (a re-added one too) at the head of the list,
//!   and rr, wrr and sh follow that list;
//! - the changes of one sync reach the kernel as one sequence of operations ([`dest_ops`]),
//!   which the IPVS mirror sends and the eBPF side replays ([`replay`]);
//! - rr continues after the destination it chose last (`ip_vs_rr_schedule`; a removed one hands
//!   its place to its predecessor, `ip_vs_rr_del_dest`); wrr restarts at the list head at a
//!   level derived from its current one on every change (`ip_vs_wrr_dest_changed`); both start
//!   fresh when the service switches scheduler.
//!
//! The datapath's rr/wrr cursor only counts flows; the service entry keeps the cursor as
//! written (`sched_mark`) and the scheduler's position then (`sched_state`), so the position
//! now is either that one (no flow since) or right after the last slot taken.
use std::net::SocketAddr;

use xvs_common::{
    sched::{wrr_changed_level, wrr_level_offset, wrr_params, wrr_slot_level},
    Scheduler, ServiceValue,
};

use super::{BackendEntry, DataplaneError, ServiceEntry};

/// One kernel operation on a service's destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestOp {
    /// Delete `current[i]`.
    Del(usize),
    /// Set `current[i]` to the weight of `want[j]`.
    Edit(usize, usize),
    /// Add `want[j]` at the head of the list.
    Add(usize),
}

/// The operations that turn `current` (the kernel's list order) into `want` (each endpoint
/// with its weight), in the order the mirror sends them: deletions, then weight edits, both
/// in list order, then additions in (address, port) order, each at the head of the list.
pub fn dest_ops(current: &[(SocketAddr, u32)], want: &[(SocketAddr, u32)]) -> Vec<DestOp> {
    let mut ops = Vec::new();
    let find = |list: &[(SocketAddr, u32)], ep: &SocketAddr| list.iter().position(|(e, _)| e == ep);
    for (i, (ep, _)) in current.iter().enumerate() {
        if find(want, ep).is_none() {
            ops.push(DestOp::Del(i));
        }
    }
    for (i, (ep, weight)) in current.iter().enumerate() {
        if let Some(j) = find(want, ep)
            && want[j].1 != *weight
        {
            ops.push(DestOp::Edit(i, j));
        }
    }
    let mut adds: Vec<usize> = (0..want.len()).filter(|&j| find(current, &want[j].0).is_none()).collect();
    adds.sort_by_key(|&j| (want[j].0.ip(), want[j].0.port()));
    ops.extend(adds.into_iter().map(DestOp::Add));
    ops
}

/// Where a service's scheduler stands between two flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// rr: continues after the destination with this list stamp (0: from the list head).
    After(u32),
    /// wrr: continues from the list head at this level (`cw`); 0 when nothing has weight.
    Level(u32),
    /// sh has no position.
    Stateless,
}

impl Position {
    /// Where a scheduler stands when the kernel (re)initialises it over `list`
    /// (`init_service`: a new service, or a scheduler switch).
    pub fn fresh(scheduler: Scheduler, list: &[BackendEntry]) -> Self {
        match scheduler {
            Scheduler::RoundRobin => Self::After(0),
            Scheduler::WeightedRoundRobin => Self::Level(wrr_params(&weights(list)).1),
            Scheduler::SourceHash | Scheduler::MaglevHash => Self::Stateless,
        }
    }

    /// The position the live entry `value` shows for a service written as `list` with
    /// `table` (indexes into `list`).
    pub fn live(scheduler: Scheduler, list: &[BackendEntry], table: &[usize], value: &ServiceValue) -> Self {
        let last = match (value.rr_cursor != value.sched_mark, table.len()) {
            (true, len) if len > 0 => Some(value.rr_cursor.wrapping_sub(1) as usize % len),
            _ => None,
        };
        match scheduler {
            Scheduler::RoundRobin => Self::After(last.map_or(value.sched_state, |slot| list[table[slot]].seq)),
            Scheduler::WeightedRoundRobin => Self::Level(last.map_or(value.sched_state, |slot| wrr_slot_level(&weights(list), slot))),
            Scheduler::SourceHash | Scheduler::MaglevHash => Self::Stateless,
        }
    }

    /// What the service entry keeps of it (`sched_state`).
    pub const fn state(self) -> u32 {
        match self {
            Self::After(seq) => seq,
            Self::Level(cw) => cw,
            Self::Stateless => 0,
        }
    }

    /// The cursor at which the table rendered from `list` continues from this position.
    pub fn cursor(self, list: &[BackendEntry], table: &[usize]) -> u32 {
        match self {
            Self::After(seq) => {
                let from = list.iter().position(|b| b.seq == seq).map_or(0, |i| i + 1);
                let next = (0..list.len()).map(|k| (from + k) % list.len()).find(|&i| list[i].weight > 0);
                next.and_then(|i| table.iter().position(|&t| t == i)).unwrap_or(0) as u32
            }
            Self::Level(cw) if cw > 0 => wrr_level_offset(&weights(list), cw) as u32,
            Self::Level(_) | Self::Stateless => 0,
        }
    }
}

fn weights(list: &[BackendEntry]) -> Vec<u32> {
    list.iter().map(|b| b.weight).collect()
}

/// The endpoints and weights of a list, as [`dest_ops`] takes them.
pub fn endpoints(list: &[BackendEntry]) -> Vec<(SocketAddr, u32)> {
    list.iter().map(|b| (SocketAddr::new(b.addr, b.port), b.weight)).collect()
}

/// Runs `ops` (from [`dest_ops`] of `old` and `want`) on `old` as the kernel does, one at a
/// time, moving `position` with each. Added destinations take their stamps from `want`.
/// Returns the new list (head first) and the position after the last operation.
pub fn replay(old: &[BackendEntry], want: &[BackendEntry], ops: &[DestOp], mut position: Position) -> (Vec<BackendEntry>, Position) {
    let mut list = old.to_vec();
    let at = |list: &[BackendEntry], b: &BackendEntry| list.iter().position(|x| x.addr == b.addr && x.port == b.port);
    for op in ops {
        match *op {
            DestOp::Del(i) => {
                let Some(k) = at(&list, &old[i]) else { continue };
                // ip_vs_rr_del_dest: a removed last choice hands over to its predecessor.
                if position == Position::After(list[k].seq) {
                    position = Position::After(if k == 0 { 0 } else { list[k - 1].seq });
                }
                list.remove(k);
            }
            DestOp::Edit(i, j) => {
                if let Some(k) = at(&list, &old[i]) {
                    list[k].weight = want[j].weight;
                    // __ip_vs_update_dest: "keep the last_weight with latest non-0 weight".
                    if want[j].weight != 0 {
                        list[k].last_weight = want[j].weight;
                    }
                }
            }
            DestOp::Add(j) => list.insert(0, want[j].clone()),
        }
        if let Position::Level(cw) = position {
            position = Position::Level(wrr_changed_level(cw, &weights(&list)));
        }
    }
    (list, position)
}

/// The scheduler fields (`rr_cursor`, `sched_mark`, `sched_state`) to write `new` with, its
/// table being `table` (indexes into its backends): where the kernel's scheduler would stand
/// after the operations from `old` (as written; `None` for a new service) to `new`, `live`
/// being the entry in the map now. Without a switch or a destination operation the rotation
/// stays exactly where it is, as in the kernel.
pub fn scheduler_fields(old: Option<&ServiceEntry>, live: Option<&ServiceValue>, new: &ServiceEntry, table: &[usize]) -> Result<(u32, u32, u32), DataplaneError> {
    let live = live.filter(|v| old.is_some_and(|o| o.svc_id == v.svc_id));
    let position = match (old, live) {
        (None, _) => {
            let ops = dest_ops(&[], &endpoints(&new.backends));
            replay(&[], &new.backends, &ops, Position::fresh(new.scheduler, &[])).1
        }
        (Some(o), Some(v)) if o.scheduler == new.scheduler && dest_ops(&endpoints(&o.backends), &endpoints(&new.backends)).is_empty() => {
            return Ok((v.rr_cursor, v.sched_mark, v.sched_state));
        }
        (Some(o), live) => {
            let mut position = match live {
                Some(v) => Position::live(o.scheduler, &o.backends, &o.table_indexes()?, v),
                None => Position::fresh(o.scheduler, &o.backends),
            };
            if o.scheduler != new.scheduler {
                position = Position::fresh(new.scheduler, &o.backends);
            }
            let ops = dest_ops(&endpoints(&o.backends), &endpoints(&new.backends));
            replay(&o.backends, &new.backends, &ops, position).1
        }
    };
    let cursor = position.cursor(&new.backends, table);
    Ok((cursor, cursor, position.state()))
}

#[cfg(test)]
mod tests;
