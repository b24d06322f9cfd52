//! `xvs list`: the live dataplane, read back from the pinned maps, as `ipvsadm -L -n` prints it.
use std::{path::PathBuf, time::Duration};

use clap::Args;
use xvs::{
    dataplane::Maps,
    view::{ipvsadm, Listing, Rates},
};

#[derive(Args)]
pub struct ListArgs {
    /// Numeric output (accepted for ipvsadm muscle memory: xvs never resolves names).
    #[arg(short = 'n', long)]
    numeric: bool,
    /// Packet, byte and connection counters (ipvsadm --stats).
    #[arg(long, conflicts_with = "rate")]
    stats: bool,
    /// Rates per second, measured over --interval (ipvsadm --rate).
    #[arg(long)]
    rate: bool,
    /// Measuring interval for --rate, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Where `xvs run` pinned the dataplane.
    #[arg(long, default_value = xvs::dataplane::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

pub fn run(args: ListArgs) -> anyhow::Result<()> {
    let _ = args.numeric;
    let maps = Maps::open_pinned(&args.pin_dir)?;
    let first = Listing::read(&maps)?;
    let text = if args.stats {
        ipvsadm::stats(&first)
    } else if args.rate {
        let interval = Duration::from_millis(args.interval_ms.max(100));
        std::thread::sleep(interval);
        let second = Listing::read(&maps)?;
        ipvsadm::rate(&second, &Rates::between(&first, &second, interval.as_secs_f64()))
    } else {
        ipvsadm::list(&first)
    };
    print!("{text}");
    Ok(())
}
