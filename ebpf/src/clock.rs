//! The datapath's clock: CLOCK_MONOTONIC seconds, the unit of flow and affinity timestamps
//! (the agent reads the same clock to age flows).
use aya_ebpf::helpers::bpf_ktime_get_ns;

#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: helper without arguments.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}
