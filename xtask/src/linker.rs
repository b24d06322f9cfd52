//! bpf-linker, built per toolchain against that toolchain's own libLLVM (rustup ships it in
//! `lib/`), so the linker always reads the bitcode rustc writes: no distribution LLVM, and a
//! nightly that moves to a new LLVM gets a linker of its own instead of a link-time error
//! ("Not an int attribute (Producer: 'LLVM23...' Reader: 'LLVM 22...')").
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;

use crate::{
    cmd::{self, output},
    toolchain::{self, Toolchain},
};

pub const VERSION: &str = "0.13.0";
/// The `llvm-N` features bpf-linker 0.13.0 has.
const LLVM_MAJORS: std::ops::RangeInclusive<u32> = 21..=23;

/// What is at a toolchain's linker path.
pub enum State {
    /// Built for this toolchain: the linker and the LLVM library it loads.
    Ready { path: PathBuf, llvm: PathBuf },
    Missing { path: PathBuf },
    /// Something else is there; the text says what.
    Mismatch { path: PathBuf, why: String },
}

/// Where the linker for `toolchain` lives: one install root per toolchain build (name and rustc
/// commit), outside the workspace so clones and `cargo clean` share it.
pub fn path_for(toolchain: &Toolchain) -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    cargo_home
        .join("xvs")
        .join(format!("bpf-linker-{VERSION}"))
        .join(format!("{}-{}", toolchain.name, &toolchain.commit[..toolchain.commit.len().min(12)]))
        .join("bin/bpf-linker")
}

/// Checks the linker at the toolchain's path: the right version, loading the toolchain's LLVM.
pub fn state(toolchain: &Toolchain) -> State {
    let path = path_for(toolchain);
    if !path.exists() {
        return State::Missing { path };
    }
    let mismatch = |why: String| State::Mismatch { path: path.clone(), why };
    let version = output(Command::new(&path).arg("--version")).unwrap_or_default();
    if version.split_whitespace().nth(1) != Some(VERSION) {
        return mismatch(format!("it reports {:?}, not bpf-linker {VERSION}", version.trim()));
    }
    match loaded_llvm(&path) {
        Err(why) => mismatch(why),
        Ok(llvm) if !toolchain::in_lib_dir(toolchain, &llvm) => mismatch(format!(
            "it loads {}, not the LLVM of {} in {}",
            llvm.display(),
            toolchain.name,
            toolchain.sysroot.join("lib").display()
        )),
        Ok(llvm) => State::Ready { path, llvm },
    }
}

/// The libLLVM the dynamic loader resolves for `binary` (from `ldd`).
pub fn loaded_llvm(binary: &Path) -> Result<PathBuf, String> {
    let ldd = output(Command::new("ldd").arg(binary)).ok_or_else(|| format!("ldd {} failed", binary.display()))?;
    llvm_in_ldd(&ldd)
}

/// The libLLVM line of `ldd`'s output, resolved.
fn llvm_in_ldd(ldd: &str) -> Result<PathBuf, String> {
    let line = ldd
        .lines()
        .find(|l| l.trim_start().starts_with("libLLVM"))
        .ok_or_else(|| "it loads no libLLVM (built with LLVM linked in, for an unknown LLVM)".to_owned())?;
    match line.split("=>").nth(1).map(str::trim) {
        Some(target) if !target.starts_with("not found") => {
            Ok(PathBuf::from(target.split(" (").next().unwrap_or(target)))
        }
        _ => Err(format!("its {} is not found (the toolchain it was built for is gone)", line.trim().split(' ').next().unwrap_or("libLLVM"))),
    }
}

/// The linker for `toolchain`, built first if it is missing or built for something else.
pub fn ensure(toolchain: &Toolchain) -> anyhow::Result<PathBuf> {
    let path = match state(toolchain) {
        State::Ready { path, llvm } => {
            println!("  bpf-linker {VERSION} for {}: present ({})", toolchain.name, llvm.display());
            return Ok(path);
        }
        State::Missing { path } => {
            println!("  bpf-linker {VERSION} for {}: building against its LLVM {} (about a minute)", toolchain.name, toolchain.llvm);
            path
        }
        State::Mismatch { path, why } => {
            println!("  bpf-linker at {}: {why}; rebuilding it for {} (about a minute)", path.display(), toolchain.describe());
            path
        }
    };
    build(toolchain, &path)?;
    match state(toolchain) {
        State::Ready { path, .. } => Ok(path),
        State::Missing { path } => bail!("cargo install left no bpf-linker at {}", path.display()),
        State::Mismatch { path, why } => bail!("the bpf-linker just built at {} is still wrong: {why}", path.display()),
    }
}

/// The `llvm-N` feature for the toolchain's LLVM, or what to do when bpf-linker has none.
pub fn feature(toolchain: &Toolchain) -> anyhow::Result<String> {
    match toolchain.llvm_major() {
        Some(major) if LLVM_MAJORS.contains(&major) => Ok(format!("llvm-{major}")),
        _ => bail!(
            "{} carries LLVM {}, and bpf-linker {VERSION} supports LLVM {} to {}: build with a nightly whose \
             LLVM it supports (XVS_TOOLCHAIN=<toolchain>, or let the pinned {} install), or move the project \
             to a bpf-linker release for that LLVM",
            toolchain.describe(),
            toolchain.llvm,
            LLVM_MAJORS.start(),
            LLVM_MAJORS.end(),
            toolchain::PINNED
        ),
    }
}

fn build(toolchain: &Toolchain, path: &Path) -> anyhow::Result<()> {
    let feature = feature(toolchain)?;
    let Some(libllvm) = toolchain.libllvm() else {
        bail!("{} has no lib/libLLVM-*.so to build bpf-linker against", toolchain.sysroot.display());
    };
    // libLLVM-22-rust-1.97.0-nightly.so -> -l dylib=LLVM-22-rust-1.97.0-nightly
    let name = libllvm.file_stem().and_then(|s| s.to_str()).and_then(|s| s.strip_prefix("lib")).unwrap_or_default().to_owned();
    let lib = toolchain.sysroot.join("lib");
    // bin/bpf-linker -> the install root
    let root = path.parent().and_then(Path::parent).unwrap_or(path);
    std::fs::create_dir_all(root)?;
    cmd::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["install", "bpf-linker", "--version", &format!("={VERSION}"), "--locked", "--force"])
            .args(["--no-default-features", "--features", &format!("{feature},no-llvm-linking")])
            .arg("--root")
            .arg(root)
            .env("RUSTFLAGS", format!("-L {0} -l dylib={name} -C link-arg=-Wl,-rpath,{0}", lib.display())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llvm_a_linker_loads_is_read_from_ldd() {
        let found = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibLLVM.so.22.1-rust-1.97.0-nightly => /root/.rustup/toolchains/n/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x00007f3d)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3c)\n";
        assert_eq!(llvm_in_ldd(found), Ok(PathBuf::from("/root/.rustup/toolchains/n/lib/libLLVM.so.22.1-rust-1.97.0-nightly")));
        let gone = "\tlibLLVM.so.23.1-rust-1.101.0-nightly => not found\n";
        assert_eq!(llvm_in_ldd(gone), Err("its libLLVM.so.23.1-rust-1.101.0-nightly is not found (the toolchain it was built for is gone)".to_owned()));
        assert!(llvm_in_ldd("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n").is_err_and(|e| e.contains("no libLLVM")));
    }
}
