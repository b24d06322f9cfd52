//! The datapath's clock: CLOCK_MONOTONIC seconds plus the offset in XVS_CLOCK (0 in service;
//! tests move it to age flows), the unit of flow and affinity timestamps. The agent reads the
//! same sum to age flows (`Maps::now_secs`).
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::XVS_CLOCK;

#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: helper without arguments.
    let monotonic = (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32;
    // An array lookup the verifier inlines: a bounds check and a load.
    let offset = XVS_CLOCK.get(0).copied().unwrap_or(0);
    monotonic.wrapping_add(offset)
}
