//! `xvs verify`: the live dataplanes against the desired state (the services file, or what
//! Kubernetes says now), and against each other; exit status 1 on any difference.
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::source::{load_once, NodeArgs, SourceArgs};
use xvs::{
    dataplane::Maps,
    ipvs::{
        mirror::{IpvsMirror, Op},
        IpvsError,
    },
    sync::{verify, LiveState},
    view::Listing,
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The pinned eBPF maps.
    Ebpf,
    /// The kernel IPVS table (xvs's services: those on the dummy link's addresses).
    Ipvs,
    /// Every dataplane present on this node, and eBPF against IPVS when both are.
    All,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    source_of_truth: SourceArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Which dataplane to check.
    #[arg(long, value_enum, default_value_t = Which::All)]
    source: Which,
    /// Where `xvs run` pinned the dataplane.
    #[arg(long, default_value = xvs::dataplane::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The dummy interface `xvs run` binds VIPs to for IPVS.
    #[arg(long, default_value = "xvs-ipvs0")]
    ipvs_dummy: String,
}

/// Returns whether everything checked matches.
pub fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    let (model, origin) = load_once(&args.source_of_truth, &args.node, &args.ipvs_dummy)?;
    let mut differences = 0;
    let mut checked = Vec::new();
    let mut ebpf_listing = None;
    let mut ebpf_drains = Vec::new();
    let maps = match (args.source, Maps::open_pinned(&args.pin_dir)) {
        (Which::Ipvs, _) => None,
        (_, Ok(maps)) => Some(maps),
        (Which::Ebpf, Err(e)) => return Err(e.into()),
        (Which::All, Err(_)) => None,
    };
    if let Some(maps) = &maps {
        let live = LiveState::read(maps)?;
        ebpf_drains = verify::draining(&model, &live);
        for d in verify::diff(&model, &live) {
            println!("drift: ebpf: {d}");
            differences += 1;
        }
        ebpf_listing = Some(Listing::read(maps)?);
        checked.push("ebpf");
    }
    let mut mirror = match (args.source, IpvsMirror::inspect(&args.ipvs_dummy)) {
        (Which::Ebpf, _) => None,
        (_, Ok(m)) => Some(m),
        (Which::Ipvs, Err(e)) => return Err(e.into()),
        (Which::All, Err(IpvsError::Unavailable)) => None,
        (Which::All, Err(e)) => return Err(e.into()),
    };
    if let Some(mirror) = &mut mirror {
        // What the eBPF side drains, IPVS keeps at weight 0 too (`--dataplane both`).
        for op in mirror.drift_draining(&model, &ebpf_drains)? {
            match op {
                Op::Foreign(s) => println!("drift: ipvs: {} exists but xvs did not make it (left alone)", s.name()),
                op => println!("drift: ipvs: needs `ipvsadm {op}`"),
            }
            differences += 1;
        }
        checked.push("ipvs");
        if let Some(ebpf) = &ebpf_listing {
            let ipvs = Listing::read_ipvs(&mirror.client)?;
            for d in xvs::view::cross_check(ebpf, &ipvs) {
                println!("drift: ebpf vs ipvs: {d}");
                differences += 1;
            }
        }
    }
    if checked.is_empty() {
        anyhow::bail!("nothing to verify: no pinned eBPF dataplane at {} and no IPVS in this kernel", args.pin_dir.display());
    }
    if differences == 0 {
        println!("ok: {} ({}) match {origin} ({} services)", checked.join(" and "), if checked.len() > 1 { "and each other" } else { "checked" }, model.len());
    } else {
        println!("{differences} differences between the dataplane and {origin}");
    }
    Ok(differences == 0)
}
