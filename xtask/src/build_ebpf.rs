//! Builds the eBPF object with the nightly toolchain and bpf-linker.
use std::{path::PathBuf, process::Command};

use crate::{cmd, setup};

pub const TARGET: &str = "bpfel-unknown-none";

/// Builds `xvs-ebpf` and returns the object's path.
pub fn run() -> anyhow::Result<PathBuf> {
    if !setup::is_complete() {
        setup::run()?;
    }
    let root = cmd::root();
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["+nightly", "build", "-Z", "build-std=core", "--release"])
            .args(["--target", TARGET, "--package", "xvs-ebpf"])
            .envs(setup::llvm_env()),
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
