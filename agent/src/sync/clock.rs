//! CLOCK_MONOTONIC seconds: the clock the datapath stamps flows with (bpf_ktime_get_ns).
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}
