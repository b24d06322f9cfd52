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

/// The kernel's `ip_vs_mh_get_fallback` over a table (indexes into `backends`), transcribed:
/// the client's bucket, then up to 4093 hops, each hashing `(hop + ihash) % 4093` in.
fn kernel_mh(table: &[usize], backends: &[xvs::dataplane::BackendEntry], client: std::net::SocketAddr, hash_port: bool) -> Option<(usize, u32)> {
    use xvs_common::maglev::{mh_bucket, mh_fallback_bucket, MH_TABLE_SIZE};
    let (addr, family) = xvs::dataplane::to_map_addr(client.ip());
    let (v6, port) = (family == xvs_common::AF_INET6, if hash_port { client.port().to_be() } else { 0 });
    let ihash = mh_bucket(&addr, v6, port);
    if backends[table[ihash as usize]].weight > 0 {
        return Some((table[ihash as usize], 0));
    }
    (0..MH_TABLE_SIZE).find_map(|hop| {
        let d = table[mh_fallback_bucket(&addr, v6, port, ihash, hop) as usize];
        (backends[d].weight > 0).then_some((d, hop + 1))
    })
}

#[test]
fn mh_walks_as_far_as_the_kernel_through_the_walker_in_xdp_and_tc() {
    // 24 backends, 22 of them drained to weight 0 (their last weight keeps their buckets): a
    // walk from a drained bucket takes ~12 hops on average, often more than the 16 inline.
    let addrs: Vec<String> = (0..24).map(|i| format!("10.0.{}.2:8080", 10 + i)).collect();
    let backends: Vec<(u32, &str, u32)> = addrs.iter().enumerate().map(|(i, a)| (i as u32 + 1, a.as_str(), 1)).collect();
    for hash_port in [false, true] {
        let mut dp = load();
        let mut svc = service(1, VIP, IPPROTO_TCP, Scheduler::MaglevHash, &backends);
        svc.flags = if hash_port { xvs_common::SERVICE_F_SH_PORT } else { 0 };
        for b in svc.backends.iter_mut().skip(2) {
            b.weight = 0;
        }
        dp.maps.apply_service(&svc).unwrap_or_else(|e| panic!("{e}"));
        let table = xvs::dataplane::tables::render(Scheduler::MaglevHash, &svc.backends).unwrap_or_default();
        assert_eq!(table.len(), 4093);
        let before = Reasons::read(&dp);
        let (mut walker, mut longest) = (0, 0);
        for i in 0..600 {
            let client = client(i * 7);
            let sa: std::net::SocketAddr = client.parse().unwrap_or_else(|e| panic!("{e}"));
            let (want, hops) = kernel_mh(&table, &svc.backends, sa, hash_port).unwrap_or_else(|| panic!("{client}: the kernel finds no backend"));
            walker += usize::from(hops > xvs_common::maglev::MH_WALK_HOPS + 1);
            longest = longest.max(hops);
            let pkt = Pkt::new(L4::TcpSyn, &client, VIP);
            let expected = pkt.with_dst(&addrs[want]).bytes();
            assert_eq!(xdp(&mut dp, &pkt.bytes()).out, expected, "XDP {client}: want {} after {hops} hops", addrs[want]);
            let syn_again = pkt.with_src(&format!("{}:{}", sa.ip(), sa.port() + 1)).bytes();
            let tc = tc_ingress(&mut dp, &syn_again).out;
            let (want2, _) = kernel_mh(&table, &svc.backends, format!("{}:{}", sa.ip(), sa.port() + 1).parse().unwrap_or(sa), hash_port).unwrap_or((want, 0));
            assert_eq!(tc, pkt.with_src(&format!("{}:{}", sa.ip(), sa.port() + 1)).with_dst(&addrs[want2]).bytes(), "TC {client}");
        }
        assert!(walker > 50, "the walker ran for {walker} flows only (longest walk {longest} hops)");
        let counted = Reasons::read(&dp).since(&before);
        assert!(!counted.iter().any(|(r, _)| *r == xvs_common::Reason::MhWalkExhausted), "a walk was cut short: {counted:?}");
        assert!(counted.contains(&(xvs_common::Reason::NewFlow, 1200)), "{counted:?}");
    }
}
