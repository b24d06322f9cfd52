//! `xvs list`: the live dataplane, read back from the pinned maps (or the kernel IPVS table), as
//! `ipvsadm -L -n` prints it.
use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use xvs::{
    dataplane::Maps,
    ipvs::IpvsClient,
    view::{ipvsadm, Listing, Rates},
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// The eBPF maps pinned by `xvs run`.
    Ebpf,
    /// The kernel IPVS table (what `ipvsadm -ln` shows).
    Ipvs,
}

#[derive(Args)]
pub struct ListArgs {
    /// Numeric output (accepted for ipvsadm muscle memory: xvs never resolves names).
    #[arg(short = 'n', long)]
    numeric: bool,
    /// Packet, byte and connection counters (ipvsadm --stats).
    #[arg(long, conflicts_with = "rate")]
    stats: bool,
    /// Rates per second, measured over --interval-ms (ipvsadm --rate).
    #[arg(long)]
    rate: bool,
    /// Measuring interval for --rate, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Which dataplane to read.
    #[arg(long, value_enum, default_value_t = Source::Ebpf)]
    source: Source,
    /// Where `xvs run` pinned the dataplane.
    #[arg(long, default_value = xvs::dataplane::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

pub fn run(args: ListArgs) -> anyhow::Result<()> {
    let _ = args.numeric;
    if args.source == Source::Ipvs {
        if args.stats || args.rate {
            anyhow::bail!("--stats and --rate read the eBPF counters; for the kernel's, use `ipvsadm -L -n --stats`");
        }
        let listing = Listing::read_ipvs(&IpvsClient::connect()?)?;
        print!("{}", ipvsadm::list(&listing));
        return Ok(());
    }
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
