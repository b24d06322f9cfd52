//! The Rust toolchain the datapath is built with: a pinned dated nightly with rust-src, so the
//! object (and the LLVM that compiles it) is the same on every machine whatever nightly the
//! machine carries. If the pinned one cannot be installed, the machine's nightly is used, and
//! every build says so. `XVS_TOOLCHAIN` names another toolchain (the re-check of the datapath
//! under the newest nightly: `XVS_TOOLCHAIN=nightly cargo xtask test`).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::cmd::{self, output};

/// The dated nightly the datapath is built and tested with (rustc 1.97.0, LLVM 22.1.4).
pub const PINNED: &str = "nightly-2026-05-01";
/// The fallback when the pinned nightly cannot be installed.
const FALLBACK: &str = "nightly";
/// Names a toolchain to build with instead of the pinned one.
pub const OVERRIDE_ENV: &str = "XVS_TOOLCHAIN";

/// An installed toolchain, as its `rustc -vV` describes it.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// The rustup name, as written after `+` (`nightly-2026-05-01`, `nightly`).
    pub name: String,
    /// `1.97.0-nightly`.
    pub release: String,
    /// rustc's commit hash: two toolchains with one name (a `nightly` that moved) differ here.
    pub commit: String,
    /// `22.1.4`.
    pub llvm: String,
    pub sysroot: PathBuf,
}

impl Toolchain {
    /// The toolchain `name` if it is installed (never installs: rustup's auto-install is off).
    pub fn installed(name: &str) -> Option<Self> {
        let rustc = |args: &[&str]| output(Command::new("rustc").arg(format!("+{name}")).args(args).env("RUSTUP_AUTO_INSTALL", "0"));
        let verbose = rustc(&["-vV"])?;
        let field = |key: &str| verbose.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned());
        Some(Self {
            name: name.to_owned(),
            release: field("release:")?,
            commit: field("commit-hash:")?,
            llvm: field("LLVM version:")?,
            sysroot: PathBuf::from(rustc(&["--print", "sysroot"])?.trim()),
        })
    }

    /// LLVM's major version: bpf-linker must be built for exactly this one.
    pub fn llvm_major(&self) -> Option<u32> {
        self.llvm.split('.').next()?.parse().ok()
    }

    /// The toolchain's own LLVM library (`lib/libLLVM-22-rust-1.97.0-nightly.so`), which
    /// bpf-linker is linked against so that it reads the bitcode rustc writes.
    pub fn libllvm(&self) -> Option<PathBuf> {
        let lib = self.sysroot.join("lib");
        std::fs::read_dir(&lib).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        })
    }

    /// rust-src is what `-Z build-std=core` compiles.
    pub fn has_rust_src(&self) -> bool {
        self.sysroot.join("lib/rustlib/src/rust/library/core").is_dir()
    }

    /// `nightly-2026-05-01 (rustc 1.97.0-nightly f53b654a8, LLVM 22.1.4)`.
    pub fn describe(&self) -> String {
        format!("{} (rustc {} {}, LLVM {})", self.name, self.release, &self.commit[..self.commit.len().min(9)], self.llvm)
    }
}

/// The toolchain a build would use now, without installing anything: the override, else the
/// pinned nightly, else the machine's nightly. `Err` names what is missing.
pub fn current() -> Result<Toolchain, String> {
    if let Some(name) = override_name() {
        return Toolchain::installed(&name).ok_or_else(|| format!("{OVERRIDE_ENV}={name} is not installed"));
    }
    Toolchain::installed(PINNED)
        .or_else(|| Toolchain::installed(FALLBACK))
        .ok_or_else(|| format!("neither the pinned {PINNED} nor a nightly is installed"))
}

/// The toolchain to build with, installed with rust-src: the override, else the pinned nightly
/// (installed if missing), else, if that cannot be installed, the machine's nightly.
pub fn ensure() -> anyhow::Result<Toolchain> {
    if let Some(name) = override_name() {
        let toolchain = Toolchain::installed(&name)
            .with_context(|| format!("{OVERRIDE_ENV}={name}: no such toolchain installed (rustup toolchain install {name} --profile minimal)"))?;
        println!("  toolchain: {} (from {OVERRIDE_ENV})", toolchain.describe());
        return with_rust_src(toolchain);
    }
    if let Some(pinned) = Toolchain::installed(PINNED) {
        println!("  toolchain: {} (pinned): present", pinned.describe());
        return with_rust_src(pinned);
    }
    println!("  toolchain: installing the pinned {PINNED} with rust-src (about 15 s)");
    if install(PINNED).is_ok()
        && let Some(pinned) = Toolchain::installed(PINNED)
    {
        return with_rust_src(pinned);
    }
    let fallback = match Toolchain::installed(FALLBACK) {
        Some(t) => t,
        None => {
            install(FALLBACK).context("neither the pinned nightly nor the current one can be installed")?;
            Toolchain::installed(FALLBACK).context("rustup installed no `nightly`")?
        }
    };
    println!(
        "  WARNING: the pinned {PINNED} cannot be installed; building the datapath with this machine's {} \
         instead (bpf-linker is built for its LLVM; the object may differ from the pinned build's)",
        fallback.describe()
    );
    with_rust_src(fallback)
}

fn override_name() -> Option<String> {
    std::env::var(OVERRIDE_ENV).ok().filter(|s| !s.is_empty())
}

fn install(name: &str) -> anyhow::Result<()> {
    cmd::run(Command::new("rustup").args(["toolchain", "install", name, "--profile", "minimal", "--component", "rust-src"]))
}

fn with_rust_src(toolchain: Toolchain) -> anyhow::Result<Toolchain> {
    if !toolchain.has_rust_src() {
        println!("  rust-src for {}: installing (-Z build-std=core compiles it)", toolchain.name);
        cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &toolchain.name]))?;
        if !toolchain.has_rust_src() {
            bail!("rust-src is still missing under {}", toolchain.sysroot.display());
        }
    }
    Ok(toolchain)
}

/// Whether `path` lies in the toolchain's `lib/` directory (symlinks resolved).
pub fn in_lib_dir(toolchain: &Toolchain, path: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    match (canonical(path), canonical(&toolchain.sysroot.join("lib"))) {
        (Some(file), Some(lib)) => file.parent() == Some(lib.as_path()),
        _ => false,
    }
}
