//! `cargo xtask image`: the container image deploy/daemonset.yaml runs, built offline (no
//! registry is needed, none is reached). A root filesystem is filled from this machine's
//! Debian binaries, then buildah builds deploy/Dockerfile over it (`FROM scratch`, so no base
//! image is pulled) and exports it as an OCI archive that `podman load`, `skopeo copy` or
//! `ctr import` take. The Dockerfile is the image's one definition: `docker build` over the same
//! directory makes the same image for people with a registry.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::{cmd, rootfs::install_with_libs};

/// The image's name, as deploy/daemonset.yaml refers to it.
pub const TAG: &str = concat!("xvs:", env!("CARGO_PKG_VERSION"));

/// What the image holds besides the agent, from Debian's packages (installed by setup):
/// (binary on this machine, path in the image, why).
const TOOLS: &[(&str, &str, &str)] = &[
    // The IPVS mirror loads ip_vs and its schedulers from the host's /lib/modules.
    ("/usr/bin/kmod", "/usr/bin/kmod", "modprobe (kmod)"),
    // `kubectl exec ... ipvsadm -ln`: the cross-check, from inside the pod.
    ("/usr/sbin/ipvsadm", "/usr/sbin/ipvsadm", "ipvsadm"),
    // The mount-bpffs init container's `sh -c 'grep ... || mount -t bpf ...'`.
    ("/bin/busybox", "/bin/busybox", "sh, grep, mount (busybox-static)"),
];
/// kmod and busybox act on the name they are called by.
const LINKS: &[(&str, &str)] = &[
    ("/usr/sbin/modprobe", "../bin/kmod"),
    ("/bin/sh", "busybox"),
    ("/bin/grep", "busybox"),
    ("/bin/mount", "busybox"),
];

/// Where the image is built: target/image/{rootfs, storage, run} and the archive.
fn dir() -> PathBuf {
    cmd::root().join("target/image")
}

/// Builds the image around `xvs` (the release binary with the object built in) and returns
/// the OCI archive.
pub fn build(xvs: &Path) -> anyhow::Result<PathBuf> {
    let dir = dir();
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    println!("== container image {TAG}: root filesystem {}", rootfs.display());
    install_with_libs(&rootfs, xvs, "/usr/bin/xvs")?;
    println!("   /usr/bin/xvs (eBPF object built in)");
    for (from, to, what) in TOOLS {
        if !Path::new(from).exists() {
            bail!("{from} is missing ({what}): run `cargo xtask setup`");
        }
        install_with_libs(&rootfs, Path::new(from), to)?;
        println!("   {to}: {what}");
    }
    for (link, target) in LINKS {
        let at = rootfs.join(link.trim_start_matches('/'));
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(target, &at).with_context(|| format!("symlink {}", at.display()))?;
    }
    // The agent records the IPVS services it made under /run/xvs (a hostPath mount); /tmp for
    // anything else that wants one on a read-only root.
    for d in ["run/xvs", "tmp", "sys/fs/bpf", "lib/modules", "host/sys/fs/cgroup", "var/run/secrets/kubernetes.io/serviceaccount"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }

    let archive = dir.join(format!("xvs-{}.oci.tar", env!("CARGO_PKG_VERSION")));
    let _ = std::fs::remove_file(&archive);
    let dockerfile = cmd::root().join("deploy/Dockerfile");
    // A private store (vfs: no overlay mounts, works on any filesystem) under target/, so
    // nothing depends on or changes the machine's own container storage. Timestamps fixed at
    // 0: the same inputs give the same image.
    cmd::run(buildah(&dir).arg("bud").args(["--timestamp", "0", "--layers=false", "-t", TAG, "-f"]).arg(&dockerfile).arg(&rootfs))?;
    cmd::run(buildah(&dir).arg("push").arg(TAG).arg(format!("oci-archive:{}:{TAG}", archive.display())))?;
    cmd::run(buildah(&dir).args(["rmi", TAG]))?;
    println!("image: {} ({TAG}; load it with `podman load -i`, or push it with `skopeo copy oci-archive:... docker://<registry>/{TAG}`)", archive.display());
    Ok(archive)
}

fn buildah(dir: &Path) -> Command {
    let mut c = Command::new("buildah");
    c.arg("--root").arg(dir.join("storage")).arg("--runroot").arg(dir.join("run")).args(["--storage-driver", "vfs"]);
    c
}
