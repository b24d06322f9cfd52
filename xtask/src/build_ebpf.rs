//! Builds the eBPF object with the pinned nightly and the bpf-linker built for its LLVM.
use std::{path::PathBuf, process::Command};

use crate::{cmd, setup};

pub const TARGET: &str = "bpfel-unknown-none";

/// Builds `xvs-ebpf` and returns the object's path.
pub fn run() -> anyhow::Result<PathBuf> {
    let tools = setup::ensure()?;
    let root = cmd::root();
    println!("== eBPF object: {} with {}", tools.toolchain.describe(), tools.linker.display());
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .arg(format!("+{}", tools.toolchain.name))
            .args(["build", "-Z", "build-std=core", "--release"])
            .args(["--target", TARGET, "--package", "xvs-ebpf"])
            // This toolchain's linker, never whatever `bpf-linker` PATH holds.
            .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &tools.linker)
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )?;
    let object = root.join("target").join(TARGET).join("release/xvs-ebpf");
    println!("eBPF object: {}", object.display());
    Ok(object)
}

/// Builds the release `xvs` binary with `object` built in (one file, as images ship it) and
/// returns its path.
pub fn agent(object: &std::path::Path) -> anyhow::Result<PathBuf> {
    let root = cmd::root();
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--release", "--package", "xvs", "--features", "embed-bpf"])
            .env("XVS_EMBED_BPF_OBJECT", object),
    )?;
    Ok(root.join("target/release/xvs"))
}
