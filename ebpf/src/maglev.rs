//! mh (IPVS Maglev hashing): the client's bucket in the service's 4093-slot table, and when the
//! backend there takes no new flows (weight 0: draining), the kernel's `mh-fallback` walk
//! (`ip_vs_mh_get_fallback`), which the mirror sets on every mh service. The table keeps
//! draining backends in their buckets (it is built from last weights); their slots say so and
//! carry a live backend for a walk that cannot go on.
//!
//! The first hops run inline. A longer walk goes to the walker program by tail call, which
//! walks on as far as the kernel's walk goes and jumps back to the ingress program; run again
//! on the same packet, the ingress program takes the result. (Inline, every hop is verified
//! once per path into the scheduler: 24 hops already exceed the verifier's 1M instructions.)
use aya_ebpf::{
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use xvs_common::{
    maglev::{
        mh_bucket, mh_fallback_bucket, MhWalk, JUMP_INGRESS, JUMP_MH_WALK, MH_SLOT_FALLBACK_SHIFT, MH_SLOT_ID_MASK,
        MH_TABLE_SIZE, MH_WALK_CHUNK, MH_WALK_DONE, MH_WALK_HOPS, MH_WALK_IDLE, MH_WALK_RUNNING,
    },
    Reason, ServiceValue,
};

use crate::{
    maps::{XVS_MH_WALK, XVS_TC_JUMP, XVS_XDP_JUMP},
    parse::PacketMeta,
    service, stats,
};

/// A program type's jump table and walk entry.
pub trait Jump: EbpfContext {
    /// Its entry in `XVS_MH_WALK`.
    const WALK: u32;
    /// Tail call to entry `index` of its jump table; returns only if the call failed.
    fn jump(&self, index: u32);
}

impl Jump for XdpContext {
    const WALK: u32 = 0;
    fn jump(&self, index: u32) {
        // SAFETY: a tail call with this program's own context.
        unsafe { XVS_XDP_JUMP.tail_call(self, index) };
    }
}

impl Jump for TcContext {
    const WALK: u32 = 1;
    fn jump(&self, index: u32) {
        // SAFETY: a tail call with this program's own context.
        unsafe { XVS_TC_JUMP.tail_call(self, index) };
    }
}

/// The slot of `bucket`: a backend id, with the fallback in the high bits when that backend
/// takes no new flows (see `MH_SLOT_ID_MASK`).
#[inline(always)]
fn slot(svc_id: u32, slot_base: u32, bucket: u32) -> Result<u32, Reason> {
    service::slot(svc_id, slot_base + bucket)
}

#[inline(always)]
const fn live(slot: u32) -> bool {
    slot >> MH_SLOT_FALLBACK_SHIFT == 0
}

/// The backend the kernel's mh picks for a new flow of `meta` (`port_be`: the client port, or
/// 0 unless the service hashes ports).
#[inline(always)]
pub fn select<C: Jump>(ctx: &C, value: &ServiceValue, meta: &PacketMeta, port_be: u16) -> Result<u32, Reason> {
    // The agent writes whole tables, and none when no backend takes new flows.
    if value.slot_count != MH_TABLE_SIZE {
        return Err(Reason::NoBackend);
    }
    let (svc_id, base) = (value.svc_id, value.slot_base);
    let v6 = meta.is_v6();
    let ihash = mh_bucket(&meta.saddr, v6, port_be);
    let first = slot(svc_id, base, ihash)?;
    if live(first) {
        return Ok(first);
    }
    for hop in 0..MH_WALK_HOPS {
        let s = slot(svc_id, base, mh_fallback_bucket(&meta.saddr, v6, port_be, ihash, core::hint::black_box(hop)))?;
        if live(s) {
            return Ok(s);
        }
    }
    let fallback = first >> MH_SLOT_FALLBACK_SHIFT & MH_SLOT_ID_MASK;
    if let Some(walk) = XVS_MH_WALK.get_ptr_mut(C::WALK) {
        // SAFETY: this CPU's entry; a packet's programs run to the end before the next packet.
        let w = unsafe { &mut *walk };
        if w.state == MH_WALK_DONE && w.svc_id == svc_id && w.slot_base == base && w.saddr == meta.saddr && w.port_be == port_be {
            w.state = MH_WALK_IDLE;
            return if w.result == 0 { Err(Reason::NoBackend) } else { Ok(w.result) };
        }
        *w = MhWalk {
            saddr: meta.saddr,
            svc_id,
            slot_base: base,
            ihash,
            hop: MH_WALK_HOPS,
            result: 0,
            fallback,
            port_be,
            v6: u8::from(v6),
            state: MH_WALK_RUNNING,
        };
        ctx.jump(JUMP_MH_WALK);
        w.state = MH_WALK_IDLE;
    }
    // No walker (its jump table is empty while no agent holds it): the next live bucket.
    stats::count_reason(Reason::MhWalkExhausted);
    Ok(fallback)
}

/// The walker program's work: up to `MH_WALK_CHUNK` more hops, then on (itself again) or back
/// to the ingress program with the result.
#[inline(always)]
pub fn walk<C: Jump>(ctx: &C) {
    let Some(walk) = XVS_MH_WALK.get_ptr_mut(C::WALK) else { return };
    // SAFETY: this CPU's entry; a packet's programs run to the end before the next packet.
    let w = unsafe { &mut *walk };
    if w.state != MH_WALK_RUNNING {
        return;
    }
    let (saddr, v6, port_be, ihash) = (w.saddr, w.v6 != 0, w.port_be, w.ihash);
    let mut done = false;
    for i in 0..MH_WALK_CHUNK {
        let hop = w.hop + i;
        if hop >= MH_TABLE_SIZE {
            done = true;
            break;
        }
        match slot(w.svc_id, w.slot_base, mh_fallback_bucket(&saddr, v6, port_be, ihash, hop)) {
            Ok(s) if live(s) => {
                w.result = s;
                done = true;
                break;
            }
            Ok(_) => {}
            Err(_) => {
                done = true;
                break;
            }
        }
    }
    if !done {
        w.hop += MH_WALK_CHUNK;
        ctx.jump(JUMP_MH_WALK);
        w.result = w.fallback;
    }
    w.state = MH_WALK_DONE;
    ctx.jump(JUMP_INGRESS);
    w.state = MH_WALK_IDLE;
}
