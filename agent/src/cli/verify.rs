//! `xvs verify`: the live maps against the services file; exit status 1 on any difference.
use std::path::PathBuf;

use clap::Args;
use xvs::{
    dataplane::Maps,
    source::file,
    sync::{verify, LiveState},
};

#[derive(Args)]
pub struct VerifyArgs {
    /// Services file holding the desired state.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Where `xvs run` pinned the dataplane.
    #[arg(long, default_value = xvs::dataplane::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

/// Returns whether the dataplane matches.
pub fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    let model = file::load(&args.config)?;
    let maps = Maps::open_pinned(&args.pin_dir)?;
    let live = LiveState::read(&maps)?;
    let drift = verify::diff(&model, &live);
    for d in &drift {
        println!("drift: {d}");
    }
    if drift.is_empty() {
        println!("ok: {} services in the dataplane match {}", model.len(), args.config.display());
    } else {
        println!("{} differences between the dataplane and {}", drift.len(), args.config.display());
    }
    Ok(drift.is_empty())
}
