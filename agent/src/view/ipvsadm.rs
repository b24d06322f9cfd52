//! `ipvsadm -L -n` text, byte for byte: the same title lines, column widths, truncation and
//! number formats as ipvsadm 1.31 (`print_title`, `print_service_entry`, `print_largenum`), so
//! scripts and eyes trained on ipvsadm read `xvs list -n` unchanged.
use std::fmt::Write as _;

use super::{Listing, Rates};

const VERSION: &str = "1.2.1";

fn title(out: &mut String, size: u32) {
    let _ = writeln!(out, "IP Virtual Server version {VERSION} (size={size})");
}

/// ipvsadm's `%-4s %s` service name, cut to 33 characters for IPv4.
fn service_name(proto: &str, vip: std::net::IpAddr, port: u16) -> String {
    let mut name = format!("{proto:<4} {}", std::net::SocketAddr::new(vip, port));
    if vip.is_ipv4() {
        name.truncate(33);
    }
    name
}

/// A destination's `addr:port`, cut to 28 characters for IPv4.
fn dest_name(ep: std::net::SocketAddr) -> String {
    let mut name = ep.to_string();
    if ep.is_ipv4() {
        name.truncate(28);
    }
    name
}

/// `print_largenum` without `--exact`: 9 columns, K/M/G/T above 10^8.
fn largenum(out: &mut String, v: u64) {
    let _ = match v {
        0..100_000_000 => write!(out, "{v:9}"),
        100_000_000..1_000_000_000 => write!(out, "{:8}K", v / 1_000),
        1_000_000_000..100_000_000_000 => write!(out, "{:8}M", v / 1_000_000),
        100_000_000_000..100_000_000_000_000 => write!(out, "{:8}G", v / 1_000_000_000),
        _ => write!(out, "{:8}T", v / 1_000_000_000_000),
    };
}

/// `ipvsadm -L -n`.
pub fn list(l: &Listing) -> String {
    let mut out = String::new();
    title(&mut out, l.size);
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
    out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    for s in &l.services {
        let _ = write!(out, "{} {}", service_name(s.id.proto.name(), s.id.vip, s.id.port), s.scheduler);
        // ipvsadm's print_sched_flags: named after the scheduler they belong to.
        let names = crate::ipvs::wire::sched_flag_names(&s.scheduler);
        let flags: Vec<&str> = [(s.sh_fallback, names[0]), (s.sh_port, names[1])].into_iter().filter(|f| f.0).map(|f| f.1).collect();
        if !flags.is_empty() {
            let _ = write!(out, " ({})", flags.join(","));
        }
        if let Some(t) = s.persistent {
            let _ = write!(out, " persistent {t}");
        }
        out.push('\n');
        for b in &s.backends {
            let _ = writeln!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10}",
                dest_name(b.endpoint),
                "Masq",
                b.weight,
                b.conns.active,
                b.conns.inactive
            );
        }
    }
    out
}

/// `ipvsadm -L -n --stats`.
pub fn stats(l: &Listing) -> String {
    let mut out = String::new();
    title(&mut out, l.size);
    let _ = writeln!(out, "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}", "Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes");
    out.push_str("  -> RemoteAddress:Port\n");
    for s in &l.services {
        let _ = write!(out, "{:<33}", service_name(s.id.proto.name(), s.id.vip, s.id.port));
        for v in [s.stats.conns, s.stats.in_pkts, s.stats.out_pkts, s.stats.in_bytes, s.stats.out_bytes] {
            largenum(&mut out, v);
        }
        out.push('\n');
        for b in &s.backends {
            let _ = write!(out, "  -> {:<28}", dest_name(b.endpoint));
            for v in [b.stats.conns, b.stats.in_pkts, b.stats.out_pkts, b.stats.in_bytes, b.stats.out_bytes] {
                largenum(&mut out, v);
            }
            out.push('\n');
        }
    }
    out
}

/// `ipvsadm -L -n --rate`, from rates measured over an interval (`Rates` per service/backend
/// in the same order as `l`).
pub fn rate(l: &Listing, rates: &Rates) -> String {
    let mut out = String::new();
    title(&mut out, l.size);
    let _ = writeln!(out, "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}", "Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS");
    out.push_str("  -> RemoteAddress:Port\n");
    for (s, (sr, brs)) in l.services.iter().zip(&rates.services) {
        let _ = write!(out, "{:<33}", service_name(s.id.proto.name(), s.id.vip, s.id.port));
        for v in [sr.cps, sr.in_pps, sr.out_pps, sr.in_bps, sr.out_bps] {
            largenum(&mut out, v);
        }
        out.push('\n');
        for (b, br) in s.backends.iter().zip(brs) {
            let _ = write!(out, "  -> {:<28} {:8} {:8} {:8}", dest_name(b.endpoint), br.cps, br.in_pps, br.out_pps);
            largenum(&mut out, br.in_bps);
            largenum(&mut out, br.out_bps);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use xvs_common::Counters;

    use super::*;
    use crate::{
        model::{Protocol, ServiceId},
        sync::flows::ConnCounts,
        view::{ListedBackend, ListedService, Rate},
    };

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn listing() -> Listing {
        let c = |conns, in_pkts, in_bytes| Counters { conns, in_pkts, in_bytes, out_pkts: in_pkts - 1, out_bytes: in_bytes * 1000 };
        Listing {
            size: 262144,
            services: vec![
                ListedService {
                    id: ServiceId { vip: ep("10.96.0.10:80").ip(), port: 80, proto: Protocol::Tcp },
                    scheduler: "rr".into(),
                    sh_port: false,
                    sh_fallback: false,
                    persistent: None,
                    stats: c(30, 180, 123_456),
                    backends: vec![
                        ListedBackend { endpoint: ep("10.244.1.2:8080"), weight: 1, conns: ConnCounts { active: 2, inactive: 8 }, stats: c(10, 60, 41_152) },
                        ListedBackend { endpoint: ep("10.244.1.3:8080"), weight: 0, conns: ConnCounts::default(), stats: c(20, 120, 82_304) },
                    ],
                },
                ListedService {
                    id: ServiceId { vip: ep("[fd00::10]:53").ip(), port: 53, proto: Protocol::Udp },
                    scheduler: "sh".into(),
                    sh_port: true,
                    sh_fallback: true,
                    persistent: Some(10800),
                    stats: c(1, 2, 3),
                    backends: vec![ListedBackend { endpoint: ep("[fd00:1::2]:5353"), weight: 3, conns: ConnCounts { active: 0, inactive: 1 }, stats: c(1, 2, 3) }],
                },
            ],
        }
    }

    #[test]
    fn list_golden() {
        assert_eq!(
            list(&listing()),
            "IP Virtual Server version 1.2.1 (size=262144)\n\
             Prot LocalAddress:Port Scheduler Flags\n  \
             -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
             TCP  10.96.0.10:80 rr\n  \
             -> 10.244.1.2:8080              Masq    1      2          8         \n  \
             -> 10.244.1.3:8080              Masq    0      0          0         \n\
             UDP  [fd00::10]:53 sh (sh-fallback,sh-port) persistent 10800\n  \
             -> [fd00:1::2]:5353             Masq    3      0          1         \n"
        );
    }

    #[test]
    fn stats_golden_with_large_numbers() {
        assert_eq!(
            stats(&listing()),
            "IP Virtual Server version 1.2.1 (size=262144)\n\
             Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  \
             -> RemoteAddress:Port\n\
             TCP  10.96.0.10:80                      30      180      179   123456  123456K\n  \
             -> 10.244.1.2:8080                    10       60       59    41152 41152000\n  \
             -> 10.244.1.3:8080                    20      120      119    82304 82304000\n\
             UDP  [fd00::10]:53                       1        2        1        3     3000\n  \
             -> [fd00:1::2]:5353                    1        2        1        3     3000\n"
        );
    }

    #[test]
    fn largenum_steps() {
        let mut s = String::new();
        for v in [99_999_999, 100_000_000, 1_000_000_000, 100_000_000_000, 100_000_000_000_000] {
            largenum(&mut s, v);
            s.push('|');
        }
        assert_eq!(s, " 99999999|  100000K|    1000M|     100G|     100T|");
    }

    #[test]
    fn rate_golden() {
        let r = |cps, pps, bps| Rate { cps, in_pps: pps, out_pps: pps, in_bps: bps, out_bps: bps * 1000 };
        let rates = Rates {
            services: vec![(r(3, 20, 1500), vec![r(1, 10, 750), r(2, 10, 750)]), (r(0, 0, 0), vec![r(0, 0, 0)])],
        };
        let text = rate(&listing(), &rates);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS");
        assert_eq!(lines[3], "TCP  10.96.0.10:80                       3       20       20     1500  1500000");
        assert_eq!(lines[4], "  -> 10.244.1.2:8080                     1       10       10      750   750000");
    }
}
