//! Scheduler distribution through the real program: rr exact thirds, wrr IPVS's exact sequence
//! and ratios, sh stable per source and spread across sources.
use std::collections::BTreeMap;

use xvs::dataplane::Dataplane;
use xvs_common::{Scheduler, IPPROTO_TCP};
use xvs_integration::*;

const VIP: &str = "10.96.0.10:80";
const BACKENDS: [&str; 3] = ["10.0.2.2:8080", "10.0.3.2:8080", "10.0.4.2:8080"];

fn setup(scheduler: Scheduler, weights: [u32; 3]) -> Dataplane {
    let mut dp = load();
    let backends: Vec<(u32, &str, u32)> = (0..3).map(|i| (i as u32 + 1, BACKENDS[i], weights[i])).collect();
    let svc = service(1, VIP, IPPROTO_TCP, scheduler, &backends);
    dp.maps.apply_service(&svc).unwrap_or_else(|e| panic!("{e}"));
    dp
}

/// Backend index a new flow from `client` went to.
fn pick(dp: &mut Dataplane, client: &str) -> usize {
    let pkt = Pkt::new(L4::TcpSyn, client, VIP);
    let run = xdp(dp, &pkt.bytes());
    BACKENDS
        .iter()
        .position(|b| run.out == pkt.with_dst(b).bytes())
        .unwrap_or_else(|| panic!("{client}: not DNATed to any backend"))
}

fn client(i: usize) -> String {
    format!("10.0.{}.{}:{}", 1 + i / 50_000, 2 + (i / 250) % 200, 1024 + i % 250)
}

fn tally(picks: &[usize]) -> [usize; 3] {
    let mut t = [0; 3];
    for &p in picks {
        t[p] += 1;
    }
    t
}

#[test]
fn rr_30_new_flows_are_exactly_10_each_in_order() {
    let mut dp = setup(Scheduler::RoundRobin, [1, 1, 1]);
    let picks: Vec<usize> = (0..30).map(|i| pick(&mut dp, &client(i))).collect();
    assert_eq!(tally(&picks), [10, 10, 10]);
    assert!(picks.windows(2).all(|w| w[1] == (w[0] + 1) % 3), "not round robin: {picks:?}");
}

#[test]
fn wrr_1_2_3_over_600_flows_is_100_200_300_in_ipvs_order() {
    let mut dp = setup(Scheduler::WeightedRoundRobin, [1, 2, 3]);
    let picks: Vec<usize> = (0..603).map(|i| pick(&mut dp, &client(i))).collect();
    // A service whose destinations were just added starts where ip_vs_wrr_dest_changed left
    // it: one pass over every destination (cw = 1), then the weighted cycle c, b, c, a, b, c.
    assert_eq!(&picks[..12], &[0, 1, 2, 2, 1, 2, 0, 1, 2, 2, 1, 2]);
    assert_eq!(tally(&picks[3..]), [100, 200, 300]);
}

#[test]
fn wrr_weight_zero_gets_nothing() {
    let mut dp = setup(Scheduler::WeightedRoundRobin, [0, 1, 3]);
    let picks: Vec<usize> = (0..400).map(|i| pick(&mut dp, &client(i))).collect();
    assert_eq!(tally(&picks), [0, 100, 300]);
}

#[test]
fn sh_same_source_same_backend_and_spread_across_sources() {
    let mut dp = setup(Scheduler::SourceHash, [1, 1, 1]);
    // 1000 flows (different ports) from one client address: one backend.
    let first = pick(&mut dp, "10.0.1.2:1024");
    for port in 1025..2024 {
        assert_eq!(pick(&mut dp, &format!("10.0.1.2:{port}")), first);
    }
    // Many client addresses spread over all backends, each one agreeing with the kernel's
    // ip_vs_sh table (bucket = hash_32(ntohl(addr)), buckets dealt round robin).
    let mut per_backend = BTreeMap::new();
    for i in 0..600u32 {
        let ip = format!("10.{}.{}.{}", 1 + i / 60_000, (i / 200) % 250, 2 + i % 200);
        let got = pick(&mut dp, &format!("{ip}:5000"));
        let addr: std::net::Ipv4Addr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
        let bucket = xvs_common::sched::sh_bucket(&xvs_common::addr_v4(addr.octets()), false, 0);
        assert_eq!(got, bucket as usize % 3, "{ip}");
        *per_backend.entry(got).or_insert(0) += 1;
    }
    assert_eq!(per_backend.len(), 3);
    assert!(per_backend.values().all(|&n| n > 120), "{per_backend:?}");
}
