//! Control-plane cost: full sync of N services x 10 backends into the BPF maps and one-endpoint
//! incremental changes, through the agent's real reconciler; the same service set written as
//! kube-proxy's iptables mode would (iptables-restore into a private network namespace) is the
//! baseline measured in the same run.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    process::{Command, Stdio},
    time::Instant,
};

use xvs::{
    dataplane::Capacity,
    model::{Backend, BackendState, Model, Protocol, Service, ServiceId},
    sync::{monotonic_secs, Reconciler},
};
use xvs_common::Scheduler;

use super::datapath::fresh;

pub const BACKENDS: u32 = 10;

fn services(n: u32) -> Vec<Service> {
    (1..=n)
        .map(|s| Service {
            id: ServiceId { vip: IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + s)), port: 80, proto: Protocol::Tcp },
            scheduler: Scheduler::RoundRobin,
            affinity_timeout: None,
            sh_port: false,
            source_ranges: Vec::new(),
            reach: xvs::model::Reach::Cluster,
            backends: (0..BACKENDS)
                .map(|b| Backend { addr: IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 + s * 16 + b)), port: 8080, weight: 1, state: BackendState::Active })
                .collect(),
        })
        .collect()
}

pub fn model(n: u32) -> Model {
    Model::new(services(n)).unwrap_or_else(|e| panic!("{e:?}"))
}

pub fn capacity(n: u32) -> Capacity {
    Capacity { services: n + 2, backends: (n + 1) * (BACKENDS + 1) + 1, slots: ((n + 1) * (BACKENDS + 1) * 2).max(1024), flows: 65_536 }
}

/// Loads a fresh datapath and syncs `n` services into it; returns the seconds the sync took.
/// (`xvs-bench control-full` runs this under `perf stat` to count its bpf(2) calls.)
pub fn full_sync(n: u32) -> (f64, Reconciler, xvs::dataplane::Dataplane, Vec<Service>) {
    let list = services(n);
    let model = Model::new(list.clone()).unwrap_or_else(|e| panic!("{e:?}"));
    let mut dp = fresh(capacity(n));
    let mut r = Reconciler::new(30, dp.maps.capacity);
    let start = Instant::now();
    // As the agent does when it adopts the maps, before its first sync.
    r.zero_unused_counters(&mut dp.maps).unwrap_or_else(|e| panic!("{e}"));
    let (report, errors) = r.sync(&model, &mut dp.maps, monotonic_secs());
    let secs = start.elapsed().as_secs_f64();
    assert!(errors.is_empty() && report.created == n as usize, "{errors:?}");
    (secs, r, dp, list)
}

/// Flows the bpf(2)-call count of a connection-table scan is measured over.
pub const FLOWS: u32 = 20_000;

/// Puts `n` established forward flows in the connection table (written one by one; the
/// counts subtract them).
pub fn fill_flows(dp: &mut xvs::dataplane::Dataplane, n: u32) {
    for i in 0..n {
        let key = xvs_common::FlowKey { saddr: [0x0a00_0000 + i, 0, 0, 0], daddr: [0x0a60_0001, 0, 0, 0], sport: 40_000, dport: 80, proto: 6, family: 2, _pad: [0; 2] };
        let entry = xvs_common::FlowEntry { nat_addr: [0x0ac8_0000, 0, 0, 0], nat_port: 8080, kind: xvs_common::FLOW_FORWARD, family: 2, svc_id: 1, backend_id: 1, last_seen: 0, state: 1, _pad: [0; 3] };
        dp.maps.conntrack.insert(key, entry, 0).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// How the agent takes a change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// A whole new model reconciled against the applied one (the services file).
    Full,
    /// The changed service patched into the model and reconciled alone (Kubernetes events).
    Event,
}

/// One endpoint added to one service, `rounds` times: the microseconds from handing the new
/// model (`Path::Full`) or the patch (`Path::Event`) to the agent's reconciler to the maps
/// being written.
pub fn incremental(n: u32, rounds: usize, path: Path) -> Vec<f64> {
    let (_, mut r, mut dp, mut list) = full_sync(n);
    let mut model = Model::new(list.clone()).unwrap_or_else(|e| panic!("{e:?}"));
    let mut out = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let s = (i * 7919) % list.len();
        let extra = Backend { addr: IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i as u32)), port: 8080, weight: 1, state: BackendState::Active };
        list[s].backends.push(extra);
        let (report, errors) = match path {
            Path::Full => {
                let model = Model::new(list.clone()).unwrap_or_else(|e| panic!("{e:?}"));
                let start = Instant::now();
                let synced = r.sync(&model, &mut dp.maps, monotonic_secs());
                out.push(start.elapsed().as_secs_f64() * 1e6);
                synced
            }
            Path::Event => {
                let patch = [(list[s].id, Some(list[s].clone()))].into_iter().collect();
                let start = Instant::now();
                model.apply(patch).unwrap_or_else(|e| panic!("{e:?}"));
                let synced = r.sync_changed(&model, [list[s].id], &mut dp.maps, monotonic_secs());
                out.push(start.elapsed().as_secs_f64() * 1e6);
                synced
            }
        };
        assert!(errors.is_empty() && report.updated == 1, "{errors:?} {report:?}");
    }
    out
}

fn chain(kind: &str, s: u32, b: Option<u32>) -> String {
    match b {
        Some(b) => format!("KUBE-{kind}-{s:08X}{b:04X}"),
        None => format!("KUBE-{kind}-{s:012X}"),
    }
}

/// kube-proxy's iptables-mode rules (nat table) for `list`, as iptables-restore input.
pub fn iptables_rules(list: &[Service], only: Option<usize>) -> String {
    let mut out = String::from("*nat\n");
    let picked: Vec<(usize, &Service)> = list.iter().enumerate().filter(|(i, _)| only.is_none_or(|o| o == *i)).collect();
    if only.is_none() {
        out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    }
    for (i, s) in &picked {
        let i = *i as u32;
        let _ = writeln!(out, ":{} - [0:0]", chain("SVC", i, None));
        for b in 0..s.backends.len() as u32 {
            let _ = writeln!(out, ":{} - [0:0]", chain("SEP", i, Some(b)));
        }
    }
    if only.is_none() {
        out.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    }
    for (i, s) in &picked {
        let i = *i as u32;
        let svc = chain("SVC", i, None);
        let proto = s.id.proto.name().to_ascii_lowercase();
        if only.is_none() {
            let _ = writeln!(out, "-A KUBE-SERVICES -d {}/32 -p {proto} -m comment --comment \"default/svc-{i}:http cluster IP\" -m {proto} --dport {} -j {svc}", s.id.vip, s.id.port);
        }
        let n = s.backends.len();
        for (b, be) in s.backends.iter().enumerate() {
            let sep = chain("SEP", i, Some(b as u32));
            let left = n - b;
            if left > 1 {
                let _ = writeln!(out, "-A {svc} -m comment --comment \"default/svc-{i}:http\" -m statistic --mode random --probability {:.10} -j {sep}", 1.0 / left as f64);
            } else {
                let _ = writeln!(out, "-A {svc} -m comment --comment \"default/svc-{i}:http\" -j {sep}");
            }
            let _ = writeln!(out, "-A {sep} -s {}/32 -m comment --comment \"default/svc-{i}:http\" -j KUBE-MARK-MASQ", be.addr);
            let _ = writeln!(out, "-A {sep} -p {proto} -m comment --comment \"default/svc-{i}:http\" -m {proto} -j DNAT --to-destination {}:{}", be.addr, be.port);
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's nftables-mode ruleset (its `kube-proxy` table, reduced to what forwards a
/// service: a verdict map from VIP . proto . port to a per-service chain that picks an endpoint
/// chain with `numgen random`, which DNATs), as `nft -f` input.
pub fn nft_rules(list: &[Service]) -> String {
    let mut out = String::from("table ip kube-proxy {\n");
    out.push_str("  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n");
    out.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {\n");
    for (i, s) in list.iter().enumerate() {
        let proto = s.id.proto.name().to_ascii_lowercase();
        let _ = writeln!(out, "      {} . {proto} . {} : goto service-{i},", s.id.vip, s.id.port);
    }
    out.push_str("    }\n  }\n  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n");
    for (i, s) in list.iter().enumerate() {
        let proto = s.id.proto.name().to_ascii_lowercase();
        let picks: Vec<String> = (0..s.backends.len()).map(|b| format!("{b} : goto endpoint-{i}-{b}")).collect();
        let _ = writeln!(out, "  chain service-{i} {{\n    numgen random mod {} vmap {{ {} }}\n  }}", s.backends.len(), picks.join(", "));
        for (b, be) in s.backends.iter().enumerate() {
            let _ = writeln!(out, "  chain endpoint-{i}-{b} {{\n    meta l4proto {proto} dnat to {}:{}\n  }}", be.addr, be.port);
        }
    }
    out.push_str("}\n");
    out
}

/// Seconds `nft -f -` takes to load `rules` in network namespace `netns`.
pub fn nft_load(netns: &str, rules: &str) -> f64 {
    feed(netns, &["nft", "-f", "-"], rules)
}

/// Seconds `iptables-restore [extra]` takes to load `rules` in network namespace `netns`.
pub fn iptables_restore(netns: &str, rules: &str, extra: &[&str]) -> f64 {
    let mut cmd = vec!["iptables-restore"];
    cmd.extend_from_slice(extra);
    feed(netns, &cmd, rules)
}

/// Runs `cmd` in `netns` with `input` on stdin, as kube-proxy runs its rule loaders; the
/// seconds it took, process start included.
fn feed(netns: &str, cmd: &[&str], input: &str) -> f64 {
    use std::io::Write;
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(cmd)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).unwrap_or_else(|e| panic!("{cmd:?} stdin: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_baseline_has_kube_proxy_shape() {
        let mut list = services(1);
        list[0].backends.truncate(2);
        assert_eq!(
            iptables_rules(&list, None),
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SVC-000000000000 - [0:0]\n:KUBE-SEP-000000000000 - [0:0]\n:KUBE-SEP-000000000001 - [0:0]\n\
             -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
             -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment \"default/svc-0:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-000000000000\n\
             -A KUBE-SVC-000000000000 -m comment --comment \"default/svc-0:http\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-000000000000\n\
             -A KUBE-SEP-000000000000 -s 10.200.0.16/32 -m comment --comment \"default/svc-0:http\" -j KUBE-MARK-MASQ\n\
             -A KUBE-SEP-000000000000 -p tcp -m comment --comment \"default/svc-0:http\" -m tcp -j DNAT --to-destination 10.200.0.16:8080\n\
             -A KUBE-SVC-000000000000 -m comment --comment \"default/svc-0:http\" -j KUBE-SEP-000000000001\n\
             -A KUBE-SEP-000000000001 -s 10.200.0.17/32 -m comment --comment \"default/svc-0:http\" -j KUBE-MARK-MASQ\n\
             -A KUBE-SEP-000000000001 -p tcp -m comment --comment \"default/svc-0:http\" -m tcp -j DNAT --to-destination 10.200.0.17:8080\n\
             COMMIT\n"
        );
        // The partial (incremental) form rewrites only the service's own chains.
        let partial = iptables_rules(&list, Some(0));
        assert!(!partial.contains("KUBE-SERVICES") && partial.contains(":KUBE-SVC-000000000000 - [0:0]"), "{partial}");
    }

    #[test]
    fn nftables_baseline_has_kube_proxy_shape() {
        let mut list = services(1);
        list[0].backends.truncate(2);
        let rules = nft_rules(&list);
        for line in [
            "type nat hook prerouting priority dstnat; policy accept;",
            "10.96.0.1 . tcp . 80 : goto service-0,",
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            "numgen random mod 2 vmap { 0 : goto endpoint-0-0, 1 : goto endpoint-0-1 }",
            "meta l4proto tcp dnat to 10.200.0.17:8080",
        ] {
            assert!(rules.contains(line), "missing {line:?} in\n{rules}");
        }
    }

    #[test]
    fn percentiles() {
        let f = crate::bench::datapath::summarize("x", (1..=100).collect());
        assert_eq!((f.median_ns, f.p90_ns), (50.0, 90.0));
    }
}
