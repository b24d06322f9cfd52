//! Installs what a fresh machine lacks, printing each step; does nothing for what is present.
use std::process::Command;

use anyhow::bail;

use crate::cmd::{self, output};

/// LLVM major version bpf-linker is built against (the nightly's LLVM).
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13";

/// Debian packages: LLVM for bpf-linker; iproute2/ethtool for attaching and the netns tests;
/// curl and python3 for the end-to-end HTTP traffic; qemu, busybox, cpio and ipvsadm for the
/// IPVS tests in a VM (this kernel has no IPVS); iptables and nftables for the kube-proxy
/// baselines of the benchmarks.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "curl",
    "python3",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "ipvsadm",
    "iptables",
    "nftables",
];

pub fn run() -> anyhow::Result<()> {
    println!("xtask setup: checking the build and test prerequisites");
    apt()?;
    rust_src()?;
    bpf_linker()?;
    println!("xtask setup: everything is in place");
    Ok(())
}

/// True when everything `setup` would install is there (so `test`/`demo` can skip it quickly).
pub fn is_complete() -> bool {
    missing_packages().is_empty() && has_rust_src() && has_bpf_linker()
}

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

fn apt() -> anyhow::Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        println!("  apt packages: present ({})", APT_PACKAGES.join(" "));
        return Ok(());
    }
    if !cmd::is_root() {
        bail!("apt packages missing ({}); run `cargo xtask setup` as root", missing.join(" "));
    }
    println!("  apt packages: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").arg("update").arg("-qq"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn has_rust_src() -> bool {
    output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")))
}

fn rust_src() -> anyhow::Result<()> {
    if has_rust_src() {
        println!("  nightly rust-src: present");
        return Ok(());
    }
    println!("  nightly rust-src: installing (needed for -Z build-std=core)");
    cmd::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn has_bpf_linker() -> bool {
    output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(&format!(" {BPF_LINKER_VERSION}.")))
}

fn bpf_linker() -> anyhow::Result<()> {
    if has_bpf_linker() {
        println!("  bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    println!("  bpf-linker {BPF_LINKER_VERSION}: building against LLVM 22 (about a minute)");
    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", &format!("^{BPF_LINKER_VERSION}")])
            .args(["--no-default-features", "--features", "llvm-22"])
            .envs(llvm_env()),
    )
}

/// Environment that points llvm-sys and the linker at LLVM 22 rather than an older default
/// `llvm-config` on PATH.
pub fn llvm_env() -> Vec<(&'static str, String)> {
    let path = std::env::var("PATH").unwrap_or_default();
    vec![
        ("LLVM_SYS_221_PREFIX", LLVM_PREFIX.to_owned()),
        ("LIBRARY_PATH", format!("{LLVM_PREFIX}/lib")),
        ("PATH", format!("{LLVM_PREFIX}/bin:{path}")),
    ]
}
