//! `cargo xtask <task>`: build, set-up, test and demo automation for xvs. One file per task.
mod bench;
mod build_ebpf;
mod cmd;
mod demo;
mod doctor;
mod image;
mod kernel;
mod linker;
mod rootfs;
mod setup;
mod test;
mod toolchain;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xvs build and test automation")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (apt packages, the pinned nightly with rust-src,
    /// bpf-linker built against that nightly's LLVM), after the doctor's report. Idempotent.
    Setup,
    /// Report the toolchain and its LLVM, bpf-linker's LLVM, and what the kernel offers (BPF,
    /// XDP, TC, TCX, BTF, bpffs, cgroup v2, IPVS); fail on a mismatch, saying what to do.
    Doctor,
    /// Build the eBPF object (nightly, -Z build-std=core, bpfel-unknown-none, bpf-linker).
    BuildEbpf,
    /// Build the release `xvs` binary with the eBPF object built in (what deploy/Dockerfile
    /// copies into the image): target/release/xvs.
    Dist,
    /// Build the container image offline (buildah over deploy/Dockerfile, from this machine's
    /// Debian binaries) and export it as an OCI archive: target/image/xvs-<version>.oci.tar.
    Image,
    /// Run every test: host unit tests, then the root-only kernel tests (BPF_PROG_TEST_RUN, netns).
    Test,
    /// Run the demo: three HTTP backends behind one VIP in network namespaces, 30 requests.
    Demo,
    /// Run the IPVS tests in a VM booting Debian's kernel (this kernel has no IPVS).
    VmTest,
    /// Run the benchmarks: per-packet cost against an empty XDP program, scaling with services,
    /// control-plane sync against kube-proxy's iptables-restore, agent memory.
    Bench,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Doctor => doctor::run(false),
        Task::BuildEbpf => build_ebpf::run().map(|_| ()),
        Task::Dist => {
            let xvs = build_ebpf::agent(&build_ebpf::run()?)?;
            println!("xvs (object built in): {}\nimage: cargo xtask image", xvs.display());
            Ok(())
        }
        Task::Image => image::build(&build_ebpf::agent(&build_ebpf::run()?)?).map(drop),
        Task::Test => test::run(),
        Task::Demo => demo::run(),
        Task::Bench => bench::run(),
        Task::VmTest => {
            let object = build_ebpf::run()?;
            vm::run(&build_ebpf::agent(&object)?, &object)
        }
    }
}
