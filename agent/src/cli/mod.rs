//! Command-line interface: one file per subcommand; doc comments are the help text.
mod probe;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use xvs::dataplane::ObjectSource;

/// eXpress Virtual Server: an eBPF service load balancer with IPVS semantics.
#[derive(Parser)]
#[command(name = "xvs", version)]
pub struct Cli {
    /// The eBPF object to load (default: $XVS_BPF_OBJECT, else the object built into this
    /// binary if it has one, else /usr/lib/xvs/xvs-ebpf.o or the output of `cargo xtask build-ebpf`).
    #[arg(long, global = true)]
    bpf_object: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this node can run the xvs datapath: load the eBPF object and pass every
    /// program through the kernel verifier, without attaching anything.
    Probe,
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        let source = ObjectSource::resolve(self.bpf_object);
        match self.command {
            Command::Probe => probe::run(&source),
        }
    }
}

