//! `cargo xtask bench`: builds the datapath, the agent and the benchmark driver (release) and
//! runs it as root. Results: target/bench/report.md and target/bench/scaling.svg.
use std::process::Command;

use anyhow::bail;

use crate::{build_ebpf, cmd};

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the benchmarks load BPF programs, create network namespaces and run iptables-restore: run them as root");
    }
    let object = build_ebpf::run()?;
    let xvs = build_ebpf::agent(&object)?;
    let root = cmd::root();
    println!("== benchmarks (release build; about two minutes)");
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["run", "--release", "--quiet", "--package", "xvs-integration", "--bin", "xvs-bench"])
            .env("XVS_BPF_OBJECT", &object)
            .env("XVS_BIN", &xvs)
            .env("XVS_BENCH_OUT", root.join("target/bench")),
    )
}
