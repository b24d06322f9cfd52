//! The floor every datapath figure is compared with: an empty XDP program (`return XDP_PASS`),
//! loaded and run through the same BPF_PROG_TEST_RUN path as the real programs. Two
//! instructions, loaded with the raw bpf(2) syscall so no second object has to be built.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const XDP_PASS: i32 = 2;

/// One eBPF instruction, encoded as the kernel reads it (little-endian `struct bpf_insn`).
const fn insn(code: u8, dst: u8, imm: i32) -> u64 {
    (code as u64) | ((dst as u64) << 8) | ((imm as u32 as u64) << 32)
}

pub struct EmptyXdp {
    fd: OwnedFd,
}

fn put32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get32(attr: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([attr[at], attr[at + 1], attr[at + 2], attr[at + 3]])
}

impl EmptyXdp {
    pub fn load() -> std::io::Result<Self> {
        // r0 = XDP_PASS; exit
        let insns = [insn(0xb7, 0, XDP_PASS), insn(0x95, 0, 0)];
        let license = c"GPL";
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, BPF_PROG_TYPE_XDP);
        put32(&mut attr, 4, insns.len() as u32);
        put64(&mut attr, 8, insns.as_ptr() as u64);
        put64(&mut attr, 16, license.as_ptr() as u64);
        // SAFETY: `attr` is a valid bpf_attr for BPF_PROG_LOAD whose pointers outlive the call.
        #[expect(unsafe_code, reason = "bpf(2) has no std wrapper")]
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new fd we own.
        #[expect(unsafe_code, reason = "taking ownership of the fd bpf(2) returned")]
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { fd })
    }

    /// Runs the program once on `data`; returns the kernel-measured duration in ns.
    pub fn run(&self, data: &[u8]) -> std::io::Result<u32> {
        let mut attr = [0u8; 80];
        put32(&mut attr, 0, self.fd.as_raw_fd() as u32);
        put32(&mut attr, 8, data.len() as u32);
        put64(&mut attr, 16, data.as_ptr() as u64);
        put32(&mut attr, 32, 1);
        // SAFETY: a valid bpf_attr for BPF_PROG_TEST_RUN; `data` outlives the call, no output buffer.
        #[expect(unsafe_code, reason = "bpf(2) has no std wrapper")]
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, attr.as_mut_ptr(), attr.len()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if get32(&attr, 4) != XDP_PASS as u32 {
            return Err(std::io::Error::other("the empty program did not return XDP_PASS"));
        }
        Ok(get32(&attr, 36))
    }
}
