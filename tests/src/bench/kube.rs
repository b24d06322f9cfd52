//! The real agent following the test API server (tests/apiserver, the real list/watch
//! protocol) that holds N Services x BACKENDS endpoints as Services and EndpointSlices: the
//! first sync (first list to programmed maps), one EndpointSlice change at a time through the
//! API, and the agent's memory.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use super::control;
use crate::{
    agent::Agent,
    kube::{api_server_in, cluster_ip_service, ready_slice},
    topology::{Topology, NODE_IFACE},
};

pub struct KubeRun {
    pub services: u32,
    /// From the agent starting to list to its maps programmed (its log's timestamps), s.
    pub first_sync_s: f64,
    /// Of that, until the lists were complete, s.
    pub listed_s: f64,
    /// From the agent's first log line (it loads the eBPF object first) to its maps
    /// programmed, s.
    pub start_s: f64,
    /// Per EndpointSlice update: from the update stored in the API server to the agent's
    /// "changes applied" log line, µs.
    pub change_us: Vec<f64>,
    /// VmHWM (peak) and VmRSS after the changes, KiB.
    pub peak_kib: u64,
    pub rss_kib: u64,
}

fn name(i: usize) -> String {
    format!("svc-{i:06}")
}

/// Seconds since the epoch of a log line's RFC 3339 timestamp (`2026-12-07T23:47:36.025046Z`).
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (hh, mm, ss): (f64, f64, f64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// The time of the first log line containing `what`.
fn first(log: &str, what: &str) -> Option<f64> {
    log.lines().find(|l| l.contains(what)).and_then(log_time)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

pub fn run(n: u32, changes: u32) -> KubeRun {
    println!("   Kubernetes: {n} Services in the test API server, `xvs run --kubeconfig`, {changes} EndpointSlice updates");
    let topo = Topology::create("xvs-bench-k8s", 0);
    let server = api_server_in(&topo.ns("node"));
    let model = control::model(n);
    let addresses = |svc: &xvs::model::Service| svc.backends.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>();
    for (i, svc) in model.services().enumerate() {
        server.apply(cluster_ip_service(&name(i), &svc.id.vip.to_string())).unwrap_or_else(|e| panic!("{e}"));
        server.apply(ready_slice(&name(i), &addresses(svc))).unwrap_or_else(|e| panic!("{e}"));
    }
    let kubeconfig = std::env::temp_dir().join("xvs-bench-k8s.kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    let cap = control::capacity(n);
    let flags = [
        "--dataplane".to_owned(), "ebpf".to_owned(), "--debounce-ms".to_owned(), "0".to_owned(),
        "--max-services".to_owned(), cap.services.to_string(), "--max-backends".to_owned(), cap.backends.to_string(),
        "--max-slots".to_owned(), cap.slots.to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let pin = PathBuf::from("/sys/fs/bpf/xvs-bench-k8s");
    let agent = Agent::start_kube(&topo.ns("node"), &kubeconfig, "node-a", &[], NODE_IFACE, &pin, &flags);
    let log = agent.log();
    let listing = first(&log, "following the Kubernetes API");
    let synced = first(&log, "dataplane synced");
    let since_listing = |t: Option<f64>| listing.zip(t).map_or(f64::NAN, |(a, b)| b - a);
    let first_sync_s = since_listing(synced);
    let listed_s = since_listing(log.lines().filter(|l| l.contains("list complete")).filter_map(log_time).reduce(f64::max));
    let start_s = log.lines().next().and_then(log_time).zip(synced).map_or(f64::NAN, |(a, b)| b - a);
    let applied = || agent.log().matches("Kubernetes changes applied").count();
    let services: Vec<&xvs::model::Service> = model.services().collect();
    let mut change_us = Vec::new();
    for c in 0..changes as usize {
        std::thread::sleep(Duration::from_millis(20));
        let before = applied();
        let i = (c * 7919) % services.len();
        let mut eps = addresses(services[i]);
        eps.push(std::net::Ipv4Addr::from(0x0b00_0000 + c as u32).to_string());
        let start = Instant::now();
        server.apply(ready_slice(&name(i), &eps)).unwrap_or_else(|e| panic!("{e}"));
        while applied() == before {
            assert!(start.elapsed().as_secs() < 30, "change {c} never applied:\n{}", agent.log());
            std::thread::sleep(Duration::from_micros(200));
        }
        change_us.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let (peak_kib, rss_kib) = (status_kib(agent.pid(), "VmHWM:"), status_kib(agent.pid(), "VmRSS:"));
    KubeRun { services: n, first_sync_s, listed_s, start_s, change_us, peak_kib, rss_kib }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_seconds_since_the_epoch() {
        assert_eq!(log_time("1970-01-01T00:00:01.5Z  INFO x"), Some(1.5));
        // 2026-12-07 is day 20_794 since the epoch.
        assert_eq!(log_time("2026-12-07T23:47:36.025Z INFO"), Some(20_794.0 * 86_400.0 + 23.0 * 3600.0 + 47.0 * 60.0 + 36.025));
        assert_eq!(log_time("no stamp"), None);
    }
}
