//! Command-line interface: one file per subcommand; doc comments are the help text.
mod probe;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
        let source = ObjectSource::choose(self.bpf_object);
        match self.command {
            Command::Probe => probe::run(&source),
        }
    }
}

/// Where the eBPF object comes from, in order of precedence.
pub enum ObjectSource {
    File(PathBuf),
    Embedded(&'static [u8]),
}

impl ObjectSource {
    fn choose(flag: Option<PathBuf>) -> Self {
        if let Some(path) = flag.or_else(|| std::env::var_os("XVS_BPF_OBJECT").map(PathBuf::from)) {
            return Self::File(path);
        }
        match xvs::dataplane::embedded_object() {
            Some(bytes) => Self::Embedded(bytes),
            None => Self::File(xvs::dataplane::default_object_path()),
        }
    }

    pub fn load(&self) -> Result<xvs::dataplane::Dataplane, xvs::dataplane::DataplaneError> {
        match self {
            Self::File(path) => xvs::dataplane::Dataplane::load(path),
            Self::Embedded(bytes) => xvs::dataplane::Dataplane::load_bytes(bytes, std::path::Path::new("<embedded>")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Embedded(bytes) => format!("built into this binary ({} bytes)", bytes.len()),
        }
    }
}
