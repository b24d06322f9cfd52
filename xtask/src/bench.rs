//! `cargo xtask bench`: builds the datapath, the agent and the benchmark driver (release) and
//! runs it as root. Results: target/bench/report.md, target/bench/scaling.svg and target/bench/control.svg.
use std::process::Command;

use anyhow::bail;

use crate::{build_ebpf, cmd, vm};

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
    )?;
    println!("== IPVS mirror full sync against BPF map sync, inside the IPVS VM (ratios only)");
    let lines = vm::bench(&xvs, &object)?;
    let mut section = String::from("\n## Control plane in the IPVS VM: IPVS mirror against BPF maps\n\nInside the VM (Debian 6.1 kernel, TCG emulation: only the ratio means anything), the same model synced by the agent's code into the BPF maps and into kernel IPVS through the mirror (VIPs bound to the dummy link, one NEW_SERVICE and ten NEW_DEST requests per service, each with its ACK).\n\n| measure | value |\n|---|---:|\n");
    for line in &lines {
        for pair in line.split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                section.push_str(&format!("| {k} | {v} |\n"));
            }
        }
    }
    print!("{section}");
    let report = root.join("target/bench/report.md");
    let mut text = std::fs::read_to_string(&report).unwrap_or_default();
    text.push_str(&section);
    std::fs::write(&report, text)?;
    Ok(())
}
