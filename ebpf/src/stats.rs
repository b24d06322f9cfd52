//! Per-CPU counters: one per verdict reason, and IPVS-style per-service/per-backend counters.
//! Per-CPU values are written without atomics: each CPU owns its copy.
use xvs_common::{Counters, Reason};

use crate::maps::{XVS_BACKEND_STATS, XVS_REASONS, XVS_SERVICE_STATS};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = XVS_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// Direction of the packet being counted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client -> service; `new_conn` when the packet scheduled a flow.
    In { new_conn: bool },
    /// Backend -> client.
    Out,
}

#[inline(always)]
pub fn count_flow(svc_id: u32, backend_id: u32, bytes: u32, dir: Direction) {
    if let Some(c) = XVS_SERVICE_STATS.get_ptr_mut(svc_id) {
        // SAFETY: as above.
        unsafe { bump(&mut *c, bytes, dir) };
    }
    if let Some(c) = XVS_BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe { bump(&mut *c, bytes, dir) };
    }
}

/// A connection the socket hooks sent to a backend: counted as a new connection, like the
/// packet path's first packet of a flow; its packets never pass the packet path, so no packet
/// or byte is counted.
#[inline(always)]
pub fn count_socket_conn(svc_id: u32, backend_id: u32) {
    if let Some(c) = XVS_SERVICE_STATS.get_ptr_mut(svc_id) {
        // SAFETY: as above.
        unsafe { (*c).conns += 1 };
    }
    if let Some(c) = XVS_BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe { (*c).conns += 1 };
    }
}

#[inline(always)]
fn bump(c: &mut Counters, bytes: u32, dir: Direction) {
    match dir {
        Direction::In { new_conn } => {
            c.conns += u64::from(new_conn);
            c.in_pkts += 1;
            c.in_bytes += u64::from(bytes);
        }
        Direction::Out => {
            c.out_pkts += 1;
            c.out_bytes += u64::from(bytes);
        }
    }
}
