//! Picks a backend for a new flow with the service's scheduler (rr, wrr, sh, mh).
//!
//! rr and wrr share one cursor per service, advanced with an atomic fetch-add on the map value:
//! all CPUs see one global order (like IPVS's per-service lock), and no update is lost when two
//! CPUs schedule at once. A per-CPU cursor would be cheaper but would make each CPU run its own
//! rotation, breaking the "every backend in turn" order IPVS users expect.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use xvs_common::{
    sched::{cursor_slot, sh_bucket, SH_TABLE_SIZE},
    Reason, Scheduler, ServiceValue, SERVICE_F_SH_PORT,
};

use crate::{maglev::Jump, parse::PacketMeta};

/// Returns the backend id chosen for a new flow of `meta` to the service at `svc`.
#[inline(always)]
pub fn select<C: Jump>(ctx: &C, svc: *mut ServiceValue, meta: &PacketMeta) -> Result<u32, Reason> {
    // SAFETY: `svc` points at a live map value (the verifier guarantees it for the lookup).
    let value = unsafe { *svc };
    if value.slot_count == 0 {
        return Err(Reason::NoBackend);
    }
    let slot = match Scheduler::from_u8(value.scheduler) {
        Some(Scheduler::RoundRobin | Scheduler::WeightedRoundRobin) => {
            // SAFETY: map values are aligned and live for the program's run. core's AtomicU32 is
            // not offered on the BPF target (it only declares 64-bit load/store atomics), so the
            // intrinsic it would call is used directly. SeqCst, not Relaxed: LLVM 22 and 23 lower a
            // relaxed 32-bit fetch-add to the non-fetching `lock +=` and then read the addend
            // as the old value (every flow got slot 1; the scheduler tests catch it; re-checked
            // with the pinned nightly-2026-05-01 and nightly-2026-10-29). SeqCst always emits
            // BPF_ATOMIC | BPF_FETCH, and on x86 it costs the same `lock xadd`.
            let cursor = unsafe {
                atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(&raw mut (*svc).rr_cursor, 1)
            };
            cursor_slot(cursor, value.slot_count)
        }
        Some(Scheduler::SourceHash) => {
            let port = if value.flags & SERVICE_F_SH_PORT != 0 { meta.sport } else { 0 };
            // The agent always writes full 256-bucket tables for sh; the modulo only keeps a
            // malformed table from sending us outside it.
            sh_bucket(&meta.saddr, meta.is_v6(), port) % (SH_TABLE_SIZE as u32).min(value.slot_count)
        }
        Some(Scheduler::MaglevHash) => {
            let port = if value.flags & SERVICE_F_SH_PORT != 0 { meta.sport } else { 0 };
            return crate::maglev::select(ctx, &value, meta, port);
        }
        None => return Err(Reason::NoBackend),
    };
    crate::service::slot(value.svc_id, value.slot_base + slot)
}
