//! The datapath's clock: CLOCK_MONOTONIC seconds (bpf_ktime_get_ns) plus the offset the
//! datapath reads from XVS_CLOCK, so the agent ages flows by the clock that stamped them.
use crate::dataplane::{DataplaneError, Maps};

pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// The time the datapath stamps flows with now: what flow ages and drains are measured in.
pub fn datapath_secs(maps: &Maps) -> Result<u32, DataplaneError> {
    Ok(monotonic_secs().wrapping_add(maps.clock_offset()?))
}
