//! Filling a root filesystem from this machine's (Debian's) binaries: each with the shared
//! libraries `ldd` lists, at their own paths. The VM's initramfs and the container image are
//! both made this way.
use std::{path::Path, process::Command};

use anyhow::Context;

use crate::cmd;

/// Copies `bin` to `dest` inside `root`, with every shared library ldd lists at its own path.
pub fn install_with_libs(root: &Path, bin: &Path, dest: &str) -> anyhow::Result<()> {
    copy(bin, &root.join(dest.trim_start_matches('/')))?;
    let ldd = cmd::output(Command::new("ldd").arg(bin)).unwrap_or_default();
    for line in ldd.lines() {
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(lib) = path.filter(|p| p.starts_with('/')) {
            copy(Path::new(lib), &root.join(lib.trim_start_matches('/')))?;
        }
    }
    Ok(())
}

pub fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copy {} -> {}", from.display(), to.display()))?;
    Ok(())
}

