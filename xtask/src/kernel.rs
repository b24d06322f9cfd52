//! What the running kernel offers, read from /proc and /sys, and a trivial program load through
//! bpf(2) (the only honest test that BPF and a program type work).
use std::path::Path;

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_LOAD: libc::c_long = 5;

/// `uname -r`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}

/// Whether `release` (`6.18.3-foo`) is at least `major.minor`.
pub fn at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

/// The fields of `union bpf_attr` that BPF_PROG_LOAD reads first; the rest stays zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    _rest: [u64; 12],
}

/// Loads `r0 = 0; exit` as a program of `prog_type` and closes it at once.
pub fn load_trivial(prog_type: u32) -> Result<(), std::io::Error> {
    // mov64 r0, 0 (BPF_ALU64 | BPF_MOV | BPF_K); exit (BPF_JMP | BPF_EXIT)
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    #[expect(unsafe_code, reason = "bpf(2) has no safe wrapper in libc")]
    // SAFETY: `attr` and what it points at outlive the call; the size is the struct's.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, size_of::<ProgLoadAttr>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[expect(unsafe_code, reason = "closing the fd bpf(2) returned")]
    // SAFETY: `fd` is ours and used nowhere else.
    unsafe {
        libc::close(fd as libc::c_int);
    }
    Ok(())
}

/// Where a filesystem of type `fstype` is mounted (the first one in /proc/mounts).
pub fn mounted(fstype: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        let target = fields.nth(1)?;
        (fields.next()? == fstype).then(|| target.to_owned())
    })
}

/// How IPVS is there, if it is: loaded, built in, or a module to load.
pub fn ipvs(release: &str) -> Option<String> {
    if Path::new("/proc/net/ip_vs").exists() {
        return Some("loaded (/proc/net/ip_vs)".into());
    }
    let modules = Path::new("/lib/modules").join(release);
    if std::fs::read_to_string(modules.join("modules.builtin")).is_ok_and(|b| b.contains("/ip_vs.ko")) {
        return Some("built in".into());
    }
    let dir = modules.join("kernel/net/netfilter/ipvs");
    let has_module = std::fs::read_dir(&dir).is_ok_and(|d| {
        d.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("ip_vs.ko")))
    });
    has_module.then(|| format!("module in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(at_least("6.18.44-fc-v857", 6, 6));
        assert!(at_least("6.6.0", 6, 6));
        assert!(!at_least("6.1.0-57-amd64", 6, 6));
        assert!(!at_least("5.15.0-91-generic", 6, 6));
        assert!(at_least("7.0", 6, 6));
    }
}
