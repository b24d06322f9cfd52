//! Installs what a fresh machine lacks, printing each step; does nothing for what is present:
//! Debian packages, the pinned nightly with rust-src, and bpf-linker built against that
//! nightly's own LLVM.
use std::{path::PathBuf, process::Command};

use anyhow::bail;

use crate::{
    cmd::{self, output},
    doctor, linker,
    toolchain::{self, Toolchain},
};

/// Debian packages: iproute2/ethtool for attaching and the netns tests; curl and python3 for the
/// end-to-end HTTP traffic; qemu, busybox, cpio and ipvsadm for the IPVS tests in a VM (this
/// kernel has no IPVS); iptables and nftables for the kube-proxy baselines of the benchmarks;
/// buildah to build the container image offline and podman with runc to run it as the DaemonSet
/// does (runc: crun refuses this machine's hybrid cgroup layout), kmod for the image's modprobe.
/// No LLVM: bpf-linker uses the one inside the Rust toolchain.
const APT_PACKAGES: &[&str] = &[
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
    "buildah",
    "podman",
    "runc",
    "kmod",
];

/// What building the datapath needs, in place.
pub struct BuildTools {
    pub toolchain: Toolchain,
    pub linker: PathBuf,
}

/// `cargo xtask setup`: the doctor's report first, then everything installed.
pub fn run() -> anyhow::Result<()> {
    doctor::run(true)?;
    ensure().map(drop)
}

/// Installs whatever is missing (each step printed) and returns the build tools.
pub fn ensure() -> anyhow::Result<BuildTools> {
    println!("xtask setup: checking the build and test prerequisites");
    apt()?;
    let toolchain = toolchain::ensure()?;
    let linker = linker::ensure(&toolchain)?;
    Ok(BuildTools { toolchain, linker })
}

pub fn missing_packages() -> Vec<&'static str> {
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
