//! `cargo xtask doctor`: what this machine has for building and running xvs, one line each: the
//! toolchain and its LLVM, bpf-linker and the LLVM it loads, the Debian packages, the kernel and
//! what it offers. What `setup` installs may be missing; a mismatch (a linker built for another
//! LLVM, an LLVM bpf-linker cannot read) or a kernel without what the datapath needs fails, with
//! what to do.
use std::path::Path;

use anyhow::bail;

use crate::{cmd, kernel, linker, setup, toolchain};

/// How a finding weighs.
#[derive(PartialEq)]
enum Level {
    Ok,
    /// Not there yet; `setup` installs it.
    Missing,
    /// There but wrong, or impossible here: the message says what to do.
    Problem,
    /// Worth knowing, needs nothing.
    Note,
}

struct Report {
    problems: Vec<String>,
}

impl Report {
    fn line(&mut self, what: &str, level: Level, text: impl Into<String>) {
        let text = text.into();
        let mark = match level {
            Level::Ok => "ok",
            Level::Missing => "missing",
            Level::Problem => "PROBLEM",
            Level::Note => "note",
        };
        println!("  {what:<14} {mark:<8} {text}");
        if level == Level::Problem {
            self.problems.push(format!("{what}: {text}"));
        }
    }
}

/// Prints the report; fails when something is wrong that `setup` would not fix by installing.
/// `repairing`: called by `setup`, which goes on to rebuild a mismatched linker itself.
pub fn run(repairing: bool) -> anyhow::Result<()> {
    println!("xtask doctor: this machine, for building and running xvs");
    let mut report = Report { problems: Vec::new() };
    build_side(&mut report, repairing);
    kernel_side(&mut report);
    if report.problems.is_empty() {
        println!("xtask doctor: nothing in the way");
        return Ok(());
    }
    bail!("xtask doctor found {} problem(s):\n  {}", report.problems.len(), report.problems.join("\n  "))
}

fn build_side(report: &mut Report, repairing: bool) {
    let missing = setup::missing_packages();
    if missing.is_empty() {
        report.line("packages", Level::Ok, "Debian packages present");
    } else {
        report.line("packages", Level::Missing, format!("{} (setup installs them)", missing.join(" ")));
    }
    let toolchain = match toolchain::current() {
        Ok(t) => t,
        Err(why) => {
            report.line("toolchain", Level::Missing, format!("{why} (setup installs {})", toolchain::PINNED));
            return;
        }
    };
    let pinned = if toolchain.name == toolchain::PINNED { "pinned" } else { "NOT the pinned one" };
    report.line("toolchain", Level::Ok, format!("{} [{pinned}]", toolchain.describe()));
    if !toolchain.has_rust_src() {
        report.line("rust-src", Level::Missing, format!("for {} (setup adds it)", toolchain.name));
    }
    if let Err(e) = linker::feature(&toolchain) {
        report.line("bpf-linker", Level::Problem, e.to_string());
        return;
    }
    match linker::state(&toolchain) {
        linker::State::Ready { path, llvm } => report.line(
            "bpf-linker",
            Level::Ok,
            format!("{} {} loads {}", path.display(), linker::VERSION, llvm.file_name().unwrap_or_default().to_string_lossy()),
        ),
        linker::State::Missing { path } => {
            report.line("bpf-linker", Level::Missing, format!("{} (setup builds it for LLVM {})", path.display(), toolchain.llvm))
        }
        linker::State::Mismatch { path, why } if repairing => {
            report.line("bpf-linker", Level::Missing, format!("{}: {why} (setup rebuilds it)", path.display()))
        }
        linker::State::Mismatch { path, why } => report.line(
            "bpf-linker",
            Level::Problem,
            format!("{}: {why}; run `cargo xtask setup`, which rebuilds it for {}", path.display(), toolchain.name),
        ),
    }
    if let Some(on_path) = cmd::output(std::process::Command::new("which").arg("bpf-linker")) {
        let llvm = linker::loaded_llvm(Path::new(on_path.trim())).map(|p| p.display().to_string()).unwrap_or_else(|e| e);
        report.line("PATH", Level::Note, format!("{} (loads {llvm}) is not used: builds use the linker above", on_path.trim()));
    }
}

fn kernel_side(report: &mut Report) {
    let release = kernel::release();
    report.line("kernel", Level::Ok, release.clone());
    if !cmd::is_root() {
        report.line("BPF", Level::Note, "not checked: loading a program needs root");
    } else {
        for (what, prog_type, needed_for) in [
            ("BPF + XDP", kernel::BPF_PROG_TYPE_XDP, "the XDP ingress program"),
            ("BPF + TC", kernel::BPF_PROG_TYPE_SCHED_CLS, "the TC programs"),
        ] {
            match kernel::load_trivial(prog_type) {
                Ok(()) => report.line(what, Level::Ok, "a program loads"),
                Err(e) => report.line(what, Level::Problem, format!("loading a trivial program fails ({e}): {needed_for} cannot run here")),
            }
        }
    }
    let present = |path: &str| Path::new(path).exists();
    if present("/sys/kernel/btf/vmlinux") {
        report.line("BTF", Level::Ok, "/sys/kernel/btf/vmlinux");
    } else {
        report.line("BTF", Level::Note, "no /sys/kernel/btf/vmlinux (the datapath does not need it)");
    }
    if kernel::at_least(&release, 6, 6) {
        report.line("TCX", Level::Ok, "kernel >= 6.6");
    } else {
        report.line("TCX", Level::Note, "kernel < 6.6: the TC programs attach through netlink filters instead of TCX links");
    }
    match kernel::mounted("bpf") {
        Some(at) => report.line("bpffs", Level::Ok, at),
        None => report.line("bpffs", Level::Note, "not mounted (the agent mounts one on /sys/fs/bpf)"),
    }
    match kernel::mounted("cgroup2") {
        Some(at) => report.line("cgroup v2", Level::Ok, at),
        None if std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("cgroup2")) => {
            report.line("cgroup v2", Level::Note, "supported, not mounted")
        }
        None => report.line("cgroup v2", Level::Note, "not in this kernel"),
    }
    match kernel::ipvs(&release) {
        Some(how) => report.line("IPVS", Level::Ok, how),
        None => report.line("IPVS", Level::Note, "not in this kernel: the IPVS tests boot Debian's kernel in a VM"),
    }
}
