//! `cargo xtask vm-test`: the IPVS tests in a real IPVS kernel. This machine's kernel has no
//! IPVS, so Debian's kernel package boots under qemu (KVM when it works, else TCG) with an
//! initramfs holding busybox, the IPVS modules, Debian's ipvsadm, the `xvs` binary and the test
//! binary, each with the shared libraries `ldd` lists. Results come back on the serial console.
//! The kernel package is downloaded once and cached under target/vm/.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use crate::{
    cmd,
    rootfs::{copy, install_with_libs},
};

/// Module load order for busybox `insmod` (no modules.dep in the package; libcrc32c's soft
/// dependency crc32c_generic first), from ../shared/reference/ipvs-vm.md.
const MODULES: &[&str] = &[
    "crc32c_generic",
    "nf_defrag_ipv4",
    "nf_defrag_ipv6",
    "libcrc32c",
    "nf_conntrack",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "ip_vs_mh",
    "veth",
    "dummy",
    // clsact and cls_bpf: TC programs attach through netlink filters on this kernel (no TCX).
    "sch_ingress",
    "cls_bpf",
    "nf_nat",
    // SCTP sockets for the SCTP test's clients and servers (IPVS's SCTP support is built in).
    "udp_tunnel",
    "ip6_udp_tunnel",
    "sctp",
];
/// busybox applets; `ip` is Debian's (busybox's has no `netns`).
const APPLETS: &[&str] = &["sh", "mount", "mkdir", "insmod", "poweroff", "echo", "cat", "ls", "sleep", "dmesg", "grep", "httpd", "wget", "kill", "netstat"];
const EXIT_MARKER: &str = "XVS-VM-EXIT:";
const TEST_NAME: &str = "ipvs_vm";

/// Boots the VM with `xvs` and the IPVS test binary and fails unless every test passed (the
/// `bench_` ones are skipped: `cargo xtask bench` runs those).
/// `XVS_VM_TESTS` (a libtest filter, e.g. a test's name) narrows the run while working on one.
pub fn run(xvs: &Path, object: &Path) -> anyhow::Result<()> {
    let only = std::env::var("XVS_VM_TESTS").unwrap_or_default();
    in_vm(xvs, object, &format!("--skip bench_ {only}")).map(drop)
}

/// Runs the IPVS benchmarks in the VM; returns their `XVS-BENCH` lines.
pub fn bench(xvs: &Path, object: &Path) -> anyhow::Result<Vec<String>> {
    let console = in_vm(xvs, object, "bench_ --nocapture")?;
    // libtest prints the test's name on the same line before the output.
    Ok(console.lines().filter_map(|l| l.find("XVS-BENCH ").map(|at| l[at + "XVS-BENCH ".len()..].trim().to_owned())).collect())
}

/// Boots the VM running the test binary with `test_args`; returns the console on success.
fn in_vm(xvs: &Path, object: &Path, test_args: &str) -> anyhow::Result<String> {
    let root = cmd::root();
    let cache = root.join("target/vm");
    std::fs::create_dir_all(&cache)?;
    let kernel = kernel(&cache)?;
    let tests = test_binary(&root)?;
    println!("== IPVS tests in a VM: kernel {}, tests {}", kernel.display(), tests.display());
    let initrd = initramfs(&cache, &kernel, &Files { xvs, object, tests: &tests }, test_args)?;
    boot(&kernel, &initrd)
}

/// What goes into the initramfs besides busybox, modules and ipvsadm.
struct Files<'a> {
    xvs: &'a Path,
    object: &'a Path,
    tests: &'a Path,
}

/// The unpacked kernel package (downloaded once): the one `linux-image-amd64` depends on.
fn kernel(cache: &Path) -> anyhow::Result<PathBuf> {
    let depends = cmd::output(Command::new("apt-cache").args(["depends", "linux-image-amd64"])).unwrap_or_default();
    let Some(package) = depends.lines().find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-"))) else {
        bail!("cannot tell which kernel package linux-image-amd64 depends on (apt-cache depends linux-image-amd64)");
    };
    let dir = cache.join(package);
    if dir.join("boot").exists() {
        return Ok(dir);
    }
    println!("== downloading {package} (once; cached in {})", cache.display());
    cmd::run(Command::new("apt-get").current_dir(cache).args(["download", package]))?;
    let deb = std::fs::read_dir(cache)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")) && n.to_string_lossy().ends_with(".deb")))
        .context("the downloaded kernel package is not in the cache")?;
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&dir))?;
    let _ = std::fs::remove_file(deb);
    Ok(dir)
}

/// Builds the IPVS integration test binary and returns its path (from cargo's JSON messages).
fn test_binary(root: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args(["test", "--package", "xvs-integration", "--test", TEST_NAME, "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the IPVS test binary failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains(&format!("\"name\":\"{TEST_NAME}\"")))
        .find_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = l[start..].find('"')? + start;
            Some(PathBuf::from(&l[start..end]))
        })
        .context("cargo did not report the IPVS test executable")
}

fn initramfs(cache: &Path, kernel: &Path, files: &Files<'_>, test_args: &str) -> anyhow::Result<PathBuf> {
    let root = cache.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "sbin", "proc", "sys", "dev", "tmp", "run", "modules", "tests"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let modules = kernel.join("lib/modules");
    for m in MODULES {
        let found = find_file(&modules, &format!("{m}.ko")).with_context(|| format!("module {m}.ko is not in the kernel package"))?;
        copy(&found, &root.join("modules").join(format!("{m}.ko")))?;
    }
    install_with_libs(&root, Path::new("/usr/sbin/ipvsadm"), "/sbin/ipvsadm")?;
    install_with_libs(&root, Path::new("/usr/sbin/ip"), "/sbin/ip")?;
    // `ip netns` keeps its namespaces under /var/run/netns.
    std::fs::create_dir_all(root.join("var"))?;
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    install_with_libs(&root, files.xvs, "/bin/xvs")?;
    install_with_libs(&root, files.tests, "/tests/ipvs_vm")?;
    copy(files.object, &root.join("xvs-ebpf.o"))?;
    let init = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\nmount -t tmpfs tmp /tmp\n\
         for m in {}; do insmod /modules/$m.ko || echo \"insmod $m failed\"; done\n\
         ip link set lo up\n\
         export PATH=/bin:/sbin XVS_BIN=/bin/xvs XVS_BPF_OBJECT=/xvs-ebpf.o RUST_BACKTRACE=1\n\
         /tests/ipvs_vm --ignored --test-threads=1 {test_args}\n\
         echo \"{EXIT_MARKER} $?\"\n\
         poweroff -f\n",
        MODULES.join(" ")
    );
    std::fs::write(root.join("init"), init)?;
    std::fs::set_permissions(root.join("init"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let initrd = cache.join("initrd.gz");
    cmd::run(Command::new("sh").current_dir(&root).arg("-c").arg(format!("find . | cpio -o -H newc --quiet | gzip -1 > {}", initrd.display())))?;
    Ok(initrd)
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

/// Boots and streams the serial console; the exit marker carries the test binary's status.
fn boot(kernel: &Path, initrd: &Path) -> anyhow::Result<String> {
    let vmlinuz = std::fs::read_dir(kernel.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz")))
        .context("no vmlinuz in the kernel package")?;
    // KVM does not boot a stock kernel on these machines (see ipvs-vm.md); TCG always works.
    let mut qemu = Command::new("timeout");
    qemu.arg("900")
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"]);
    println!("+ qemu-system-x86_64 -accel tcg ... (serial console follows)");
    let started = std::time::Instant::now();
    let out = qemu.stderr(Stdio::inherit()).output().context("cannot start qemu-system-x86_64")?;
    let console = String::from_utf8_lossy(&out.stdout);
    print!("{console}");
    let elapsed = started.elapsed();
    let status = console.lines().find_map(|l| l.trim().strip_prefix(EXIT_MARKER).map(|s| s.trim().to_owned()));
    match status.as_deref() {
        Some("0") => {
            println!("== IPVS VM tests passed ({:.0} s including boot)", elapsed.as_secs_f64());
            Ok(console.into_owned())
        }
        Some(code) => bail!("IPVS VM tests failed (exit status {code})"),
        None if elapsed >= Duration::from_secs(900) => bail!("the IPVS VM timed out"),
        None => bail!("the IPVS VM stopped without reporting a result"),
    }
}
