//! `cargo xtask demo`: builds what is needed and runs the namespace demo as root; removes the
//! demo's namespaces afterwards whatever happened, Ctrl-C included.
use std::process::Command;

use anyhow::bail;

use crate::{build_ebpf, cmd};

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the demo creates network namespaces and attaches XDP/TC programs: run it as root");
    }
    let object = build_ebpf::run()?;
    println!("== building the agent (xvs, release, with the eBPF object built in)");
    let xvs = build_ebpf::agent(&object)?;
    // Survive Ctrl-C (the demo itself stops) so the clean-up below always runs. A handler, not
    // SIG_IGN: handlers are reset on exec, so the demo still stops on Ctrl-C.
    ignore_sigint_here();
    let demo = |args: &[&str]| {
        cmd::run(
            Command::new("cargo")
                .current_dir(cmd::root())
                .args(["run", "--quiet", "--package", "xvs-integration", "--bin", "xvs-demo", "--"])
                .args(args)
                .env("XVS_BIN", &xvs),
        )
    };
    let result = demo(&[]);
    // The demo cleans up after itself; this catches a run stopped by Ctrl-C.
    let cleaned = demo(&["--clean"]);
    result.and(cleaned)
}

extern "C" fn on_sigint(_: libc::c_int) {}

fn ignore_sigint_here() {
    // SAFETY: installs an async-signal-safe no-op handler.
    #[expect(unsafe_code, reason = "signal(2) has no safe std wrapper")]
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}
