//! Runs every test: host unit tests (no root), then the kernel tests against the real object.
use std::process::Command;

use anyhow::bail;

use crate::{build_ebpf, cmd, image, vm};

pub fn run() -> anyhow::Result<()> {
    let object = build_ebpf::run()?;
    let root = cmd::root();
    println!("== host unit tests (stable, no root)");
    cmd::run(Command::new("cargo").current_dir(&root).args(["test", "--workspace", "--exclude", "xvs-integration", "--exclude", "xvs-ebpf"]))?;
    if !cmd::is_root() {
        bail!("the kernel tests (BPF_PROG_TEST_RUN, XDP/TC attach, netns) need root: run `sudo -E cargo xtask test`");
    }
    println!("== release binary with the object built in: `xvs probe` loads and verifies it");
    let xvs = build_ebpf::agent(&object)?;
    cmd::run(Command::new(&xvs).arg("probe").env_remove("XVS_BPF_OBJECT"))?;
    println!("== container image, built offline: tests/tests/image.rs runs it as deploy/daemonset.yaml does");
    let image = image::build(&xvs)?;
    println!("== kernel tests (root): packet tables through BPF_PROG_TEST_RUN, schedulers, flows, netns end to end, the agent");
    // One test at a time: the end-to-end tests share namespace names and the machine has 2 cores.
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--package", "xvs-integration", "--", "--test-threads=1"])
            .env("XVS_BPF_OBJECT", &object)
            .env("XVS_BIN", &xvs)
            .env("XVS_IMAGE", &image),
    )?;
    println!("== IPVS tests in a VM (this kernel has no IPVS): the client and ipvsadm parity");
    vm::run(&xvs, &object)
}
