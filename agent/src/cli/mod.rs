//! Command-line interface: one file per subcommand; doc comments are the help text.
mod list;
#[cfg(test)]
mod manifests;
mod probe;
mod run;
mod source;
mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use xvs::dataplane::{detach_tc_filters, unpin_all, ObjectSource, PinLock};

/// eXpress Virtual Server: an eBPF service load balancer with IPVS semantics.
#[derive(Parser)]
#[command(name = "xvs", version)]
pub struct Cli {
    /// The eBPF object to load (default: $XVS_BPF_OBJECT, else the object built into this
    /// binary if it has one, else /usr/lib/xvs/xvs-ebpf.o or the output of `cargo xtask build-ebpf`).
    #[arg(long, global = true)]
    bpf_object: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Check that this node can run the xvs datapath: load the eBPF object and pass every
    /// program through the kernel verifier, without attaching anything.
    Probe,
    /// Run the agent: attach the datapath and keep it equal to the services file or to the
    /// Kubernetes Services and EndpointSlices.
    Run(run::RunArgs),
    /// Print the live dataplane like `ipvsadm -L -n` (also --stats, --rate).
    List(list::ListArgs),
    /// Compare the live dataplanes with the desired state (services file or Kubernetes) and
    /// with each other; exit status 1 on any difference.
    Verify(verify::VerifyArgs),
    /// Remove what xvs programmed on this node: the pinned datapath (maps and links: detaches
    /// xvs and drops its flows) and xvs's IPVS virtual services with their VIPs (foreign
    /// virtual services stay). Refused while an agent runs on the pin directory.
    Cleanup {
        #[arg(long, default_value = xvs::dataplane::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// The dummy interface whose addresses mark xvs's IPVS services.
        #[arg(long, default_value = "xvs-ipvs0")]
        ipvs_dummy: String,
        /// Clean up even while an agent runs (it re-creates its datapath at its next check).
        #[arg(long)]
        force: bool,
    },
}

pub enum Outcome {
    Success,
    /// The command ran but found a problem (verify's drift): exit status 1.
    Failure,
}

impl Cli {
    pub fn run(self) -> anyhow::Result<Outcome> {
        let source = ObjectSource::resolve(self.bpf_object);
        match self.command {
            Command::Probe => probe::run(&source)?,
            Command::Run(args) => run::run(&source, args)?,
            Command::List(args) => list::run(args)?,
            Command::Verify(args) => {
                if !verify::run(args)? {
                    return Ok(Outcome::Failure);
                }
            }
            Command::Cleanup { pin_dir, ipvs_dummy, force } => {
                if let Some(holder) = PinLock::holder(&pin_dir) {
                    let pid = holder.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                    if !force {
                        anyhow::bail!(
                            "an xvs agent{pid} runs on {}: stop it first (SIGTERM leaves the datapath serving; `xvs run --cleanup` removes it on exit), or pass --force",
                            holder.dir.display()
                        );
                    }
                    eprintln!("warning: removing {} under a running agent{pid} (--force)", holder.dir.display());
                }
                let unmounted = unpin_all(&pin_dir)?;
                println!("removed {}", pin_dir.display());
                for iface in detach_tc_filters() {
                    println!("removed xvs's TC filters from {iface}");
                }
                if let Some(mount) = unmounted {
                    println!("unmounted the bpffs xvs had mounted on {}", mount.display());
                }
                cleanup_ipvs(&ipvs_dummy)?;
            }
        }
        Ok(Outcome::Success)
    }
}

/// Removes xvs's IPVS services and VIPs (an empty desired state); nothing where the kernel
/// has no IPVS.
fn cleanup_ipvs(dummy: &str) -> anyhow::Result<()> {
    use xvs::ipvs::{mirror::IpvsMirror, IpvsError};
    let mut mirror = match IpvsMirror::inspect(dummy) {
        Ok(m) => m,
        Err(IpvsError::Unavailable) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let (done, errors) = mirror.sync(&xvs::model::Model::default())?;
    for op in &done {
        println!("ipvsadm {op}");
    }
    if let Some(first) = errors.into_iter().next() {
        return Err(anyhow::Error::new(first).context("removing xvs's IPVS services"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subcommand_s_arguments_are_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
