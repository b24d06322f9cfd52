//! The benchmark driver behind `cargo xtask bench` (root). Writes target/bench/report.md and
//! target/bench/scaling.svg and prints the report.
use std::{fmt::Write as _, path::PathBuf, process::Command};

use xvs_integration::{
    agent::Agent,
    bench::{
        control,
        datapath,
        floor::EmptyXdp,
        kube,
        svg::{line_chart, Series},
    },
    topology::{Topology, NODE_IFACE},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Internal: one full sync of N services, run under `perf stat` by the parent to count bpf(2).
    // With `flows`, the same plus a connection table of control::FLOWS flows; with `read` or
    // `scan`, that plus a live read of the maps, or a flow-table scan.
    if args.get(1).map(String::as_str) == Some("control-full") {
        let n: u32 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
        if n == 0 {
            let _ = datapath::fresh(control::capacity(0));
        } else {
            let (secs, _, mut dp, _) = control::full_sync(n);
            let extra = args.get(3).map(String::as_str);
            if extra.is_some() {
                control::fill_flows(&mut dp, control::FLOWS);
            }
            match extra {
                Some("read") => drop(xvs::sync::LiveState::read(&dp.maps).unwrap_or_else(|e| panic!("{e}"))),
                Some("scan") => drop(xvs::sync::flows::scan(&dp.maps, 0).unwrap_or_else(|e| panic!("{e}"))),
                _ => {}
            }
            println!("{secs}");
        }
        return;
    }
    // One part alone, for working on it: `xvs-bench throughput`, `xvs-bench kube [N]`.
    match args.get(1).map(String::as_str) {
        Some("throughput") => drop(throughput()),
        Some("eastwest") => drop(east_west()),
        Some("nodeport") => drop(node_port_remote()),
        Some("control") => drop(control_plane()),
        Some("memory") => drop(memory()),
        Some("kube") => {
            let n = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(10_000);
            let mut run = kube::run(n, 50);
            println!(
                "first sync {:.3} s (listed {:.3}; agent start to maps {:.3}), p50 {:.0} µs, p99 {:.0} µs, peak {} KiB, rss {} KiB",
                run.first_sync_s,
                run.listed_s,
                run.start_s,
                pct(&mut run.change_us, 0.5),
                pct(&mut run.change_us, 0.99),
                run.peak_kib,
                run.rss_kib
            );
        }
        _ => full_run(),
    }
}

/// Every part, written to the report.
fn full_run() {
    let out_dir = PathBuf::from(std::env::var("XVS_BENCH_OUT").unwrap_or_else(|_| "target/bench".into()));
    std::fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("{}: {e}", out_dir.display()));
    let mut report = String::new();

    println!("== datapath: ns per packet, BPF_PROG_TEST_RUN on the real object, {} packets each", datapath::N);
    let floor = EmptyXdp::load().unwrap_or_else(|e| panic!("loading the empty XDP program: {e}"));
    let mut figures = datapath::family(&floor, false);
    figures.extend(datapath::family(&floor, true).into_iter().skip(1));
    figures.extend(datapath::schedulers());
    let floor_ns = figures[0].median_ns;
    report.push_str("## Datapath: cost per packet\n\n");
    let _ = writeln!(report, "Median (p90) of single runs timed by the kernel, {} packets each; ratio to the empty XDP program measured the same way.\n", datapath::N);
    report.push_str("| case | median ns | p90 ns | x empty program |\n|---|---:|---:|---:|\n");
    for f in &figures {
        let _ = writeln!(report, "| {} | {:.0} | {:.0} | {:.2} |", f.name, f.median_ns, f.p90_ns, f.median_ns / floor_ns);
    }
    report.push_str(&structural(&figures));
    print!("{report}");

    println!("\n== scaling: 10 backends per service; hot = packets to 100 services, spread = to every service");
    let rows: Vec<datapath::Scaling> = [1, 100, 10_000, 100_000]
        .into_iter()
        .map(|n| {
            let r = datapath::scaling(n);
            println!(
                "   {n:>6} services: hot new {:.0} ns, hot established {:.0} ns; spread new {:.0} ns, spread established {:.0} ns",
                r.hot_new.median_ns, r.hot_established.median_ns, r.spread_new.median_ns, r.spread_established.median_ns
            );
            r
        })
        .collect();
    let mut section = String::from("\n## Scaling with the number of services\n\n10 backends per service (rr). **Hot**: every packet goes to one of 100 services, whatever the table holds: the cost of the lookups themselves, which are hash and array accesses (no per-service scan), so it stays flat. **Spread**: every packet to a different service, a worst case for the CPU caches: the working set (service, slot, backend, per-CPU counter and flow entries of every service; the backend counters alone are 40 MB per CPU at 100k x 10) outgrows them and each lookup misses.\n\n![datapath cost vs services](benchmarks-scaling.svg)\n\n| services | hot: new flow ns | hot: established ns | hot established x 1-service | spread: new flow ns | spread: established ns |\n|---:|---:|---:|---:|---:|---:|\n");
    let base = rows[0].hot_established.median_ns;
    for r in &rows {
        let _ = writeln!(
            section,
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
            r.services, r.hot_new.median_ns, r.hot_established.median_ns, r.hot_established.median_ns / base, r.spread_new.median_ns, r.spread_established.median_ns
        );
    }
    print!("{section}");
    report.push_str(&section);
    let points = |f: fn(&datapath::Scaling) -> f64| rows.iter().map(|r| (f64::from(r.services), f(r))).collect::<Vec<_>>();
    let chart = line_chart(
        "xvs datapath cost vs number of services (10 backends each)",
        "services (log scale)",
        "ns per packet (median)",
        &[
            Series { name: "new flow, hot", color: "#d62728", points: points(|r| r.hot_new.median_ns) },
            Series { name: "established, hot", color: "#1f77b4", points: points(|r| r.hot_established.median_ns) },
            Series { name: "new flow, spread", color: "#ff9896", points: points(|r| r.spread_new.median_ns) },
            Series { name: "established, spread", color: "#aec7e8", points: points(|r| r.spread_established.median_ns) },
            Series { name: "empty XDP program", color: "#7f7f7f", points: rows.iter().map(|r| (f64::from(r.services), floor_ns)).collect() },
        ],
    );
    std::fs::write(out_dir.join("scaling.svg"), chart).unwrap_or_else(|e| panic!("{e}"));

    report.push_str(&control_plane());
    report.push_str(&throughput());
    report.push_str(&east_west());
    report.push_str(&node_port_remote());
    report.push_str(&memory());
    std::fs::write(out_dir.join("report.md"), &report).unwrap_or_else(|e| panic!("{e}"));
    println!("\n== written: {} and {}", out_dir.join("report.md").display(), out_dir.join("scaling.svg").display());
}

fn throughput() -> String {
    use xvs_integration::bench::throughput::{measure, Way};
    println!("\n== end to end through network namespaces (veth): UDP packets/s and HTTP requests/s");
    let mut s = String::from("\n## Throughput end to end (network namespaces, veth)\n\nclient ns -> node ns -> backend ns over veth, traffic to the last of N services; UDP: 18-byte datagrams over 32 flows in sendmmsg/recvmmsg batches of 64, packets/s received by the backend; HTTP: one client, a new TCP connection per request. Same topology, generator and server for every way; on 2 vCPUs the generator, the forwarding and the receiver share the CPUs, so compare ratios.\n\n| services | UDP pkt/s xvs | iptables | nftables | xvs/ipt | xvs/nft | HTTP req/s xvs | iptables | nftables | xvs/ipt | xvs/nft |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for n in [1, 1_000, 10_000] {
        let [x, i, f] = [Way::Xvs, Way::Iptables, Way::Nftables].map(|w| {
            let t = measure(w, n);
            println!("   {n:>6} services, {}: {:.0} pkt/s, {:.0} req/s", w.name(), t.udp_pps, t.http_rps);
            t
        });
        let r = |a: f64, b: f64| a / b.max(1.0);
        let _ = writeln!(
            s,
            "| {n} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            x.udp_pps, i.udp_pps, f.udp_pps, r(x.udp_pps, i.udp_pps), r(x.udp_pps, f.udp_pps),
            x.http_rps, i.http_rps, f.http_rps, r(x.http_rps, i.http_rps), r(x.http_rps, f.http_rps)
        );
    }
    print!("{s}");
    s
}

fn east_west() -> String {
    use xvs_integration::bench::{
        eastwest::{measure, Way},
        throughput::Way as Packet,
    };
    println!("\n== east-west: a pod to a cluster IP, new connections/s and requests/s over one connection");
    let mut s = String::from("\n## East-west: a pod to a cluster IP (socket LB against the packet path)\n\npod ns -> node ns -> backend ns over veth, to the last of N TCP services. **conn/s**: one client connecting and closing in a loop (closing with a RST, so that TIME_WAIT does not run the client out of ports; the backend accepts and closes); **req/s**: 32-byte ping-pong over one open connection. Each figure is the median of five 2-second runs, with the client pinned to one CPU and the backend to the other (left to the scheduler, the same run jumped between two levels twice apart, with every way). xvs socket LB: the hooks on a cgroup the client is in, nothing on the interfaces; xvs packet path: XDP + TC egress on the node's interface; kube-proxy: its rules in the node namespace. Ratios are socket LB's against each other way.\n\n| services | way | conn/s | req/s | socket LB conn/s x | socket LB req/s x |\n|---:|---|---:|---:|---:|---:|\n");
    // Discarded: a process's first measurement runs slow (whichever way it is), which once made
    // socket LB at 1 service look 40% slower than at 10,000.
    let _ = measure(Way::Socket, 1);
    for n in [1, 10_000] {
        let ways = [Way::Socket, Way::Packet(Packet::Xvs), Way::Packet(Packet::Iptables), Way::Packet(Packet::Nftables)];
        let figures: Vec<_> = ways
            .iter()
            .map(|&w| {
                let f = measure(w, n);
                println!("   {n:>6} services, {}: {:.0} conn/s, {:.0} req/s", w.name(), f.conns_per_sec, f.requests_per_sec);
                (w, f)
            })
            .collect();
        let socket = &figures[0].1;
        for (w, f) in &figures {
            let _ = writeln!(
                s,
                "| {n} | {} | {:.0} | {:.0} | {:.2} | {:.2} |",
                w.name(), f.conns_per_sec, f.requests_per_sec, socket.conns_per_sec / f.conns_per_sec.max(1.0), socket.requests_per_sec / f.requests_per_sec.max(1.0)
            );
        }
    }
    print!("{s}");
    s
}

fn node_port_remote() -> String {
    use xvs::dataplane::DEFAULT_SNAT_PORTS;
    use xvs_integration::bench::{nodeport::measure, throughput::Way};
    println!("\n== NodePort to a pod on another node (two nodes, masquerading): UDP packets/s and HTTP requests/s");
    let mut s = String::from("\n## NodePort to a remote backend, end to end (two nodes, masquerading)\n\nclient ns -> node a -> fabric -> node b -> pod, replies back through node a (tests/src/cluster.rs). Node a implements a TCP and a UDP NodePort with externalTrafficPolicy Cluster whose only endpoint is the pod on node b: xvs masquerades in its datapath (DNAT at XDP ingress, SNAT at TC egress on the fabric, replies unmasqueraded at XDP ingress and reverse-NATed at TC egress), kube-proxy's iptables and nftables rules mark the NodePort's packets and MASQUERADE them in POSTROUTING (conntrack). Same generator and server as above. Every HTTP request is a new connection, and no agent collects closed flows during the run, so each one holds its SNAT port to the end (with the agent, 120 s after its FIN, as conntrack's TIME_WAIT holds kube-proxy's): the run opens several thousand, more than xvs's default range of 4,536 ports holds. kube-proxy's MASQUERADE takes ports from 1024-65535; xvs is measured with its default range and with that one.\n\n| xvs --snat-ports | UDP pkt/s xvs | iptables | nftables | xvs/ipt | xvs/nft | HTTP req/s xvs | iptables | nftables | xvs/ipt | xvs/nft |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let [i, f] = [Way::Iptables, Way::Nftables].map(|w| {
        let t = measure(w, DEFAULT_SNAT_PORTS);
        println!("   {}: {:.0} pkt/s, {:.0} req/s", w.name(), t.udp_pps, t.http_rps);
        t
    });
    for ports in [DEFAULT_SNAT_PORTS, 1024..=65535] {
        let x = measure(Way::Xvs, ports.clone());
        println!("   {} --snat-ports {}-{}: {:.0} pkt/s, {:.0} req/s", Way::Xvs.name(), ports.start(), ports.end(), x.udp_pps, x.http_rps);
        let r = |a: f64, b: f64| a / b.max(1.0);
        let _ = writeln!(
            s,
            "| {}-{} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            ports.start(), ports.end(),
            x.udp_pps, i.udp_pps, f.udp_pps, r(x.udp_pps, i.udp_pps), r(x.udp_pps, f.udp_pps),
            x.http_rps, i.http_rps, f.http_rps, r(x.http_rps, i.http_rps), r(x.http_rps, f.http_rps)
        );
    }
    print!("{s}");
    s
}

/// bpf(2) calls of `xvs-bench control-full <n>`, counted by perf.
fn bpf_syscalls(n: u32, extra: Option<&str>) -> Option<u64> {
    let me = std::env::current_exe().ok()?;
    let out = Command::new("perf").args(["stat", "-x,", "-e", "syscalls:sys_enter_bpf", "--"]).arg(me).args(["control-full", &n.to_string()]).args(extra).output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines().find(|l| l.contains("sys_enter_bpf")).and_then(|l| l.split(',').next()?.trim().parse().ok())
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q) as usize]
}

fn control_plane() -> String {
    const N: u32 = 10_000;
    println!("\n== control plane: {N} services x {} backends", control::BACKENDS);
    let (xvs_secs, ..) = control::full_sync(N);
    let calls = |extra| bpf_syscalls(N, extra);
    let counted = |a: Option<u64>, b: Option<u64>| a.zip(b).map_or("n/a (perf unavailable)".into(), |(a, b)| a.saturating_sub(b).to_string());
    let (load, full, flows) = (bpf_syscalls(0, None), calls(None), calls(Some("flows")));
    let (read, scan) = (calls(Some("read")), calls(Some("scan")));
    let netns = "xvs-bench-ipt";
    let _ = Command::new("ip").args(["netns", "del", netns]).stderr(std::process::Stdio::null()).status();
    let ok = Command::new("ip").args(["netns", "add", netns]).status().is_ok_and(|s| s.success());
    let list: Vec<_> = control::model(N).services().cloned().collect();
    let ipt_secs = ok.then(|| control::iptables_restore(netns, &control::iptables_rules(&list, None), &[]));
    let mut full_inc = control::incremental(N, 200, control::Path::Full);
    let mut event_inc = control::incremental(N, 200, control::Path::Event);
    let mut ipt_inc: Vec<f64> = if ok {
        (0..50)
            .map(|i| {
                let mut changed = list.clone();
                let s = (i * 7919) % changed.len();
                let mut extra = changed[s].backends[0].clone();
                extra.addr = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i as u32));
                changed[s].backends.push(extra);
                control::iptables_restore(netns, &control::iptables_rules(&changed, Some(s)), &["--noflush"]) * 1e6
            })
            .collect()
    } else {
        Vec::new()
    };
    let _ = Command::new("ip").args(["netns", "del", netns]).status();
    let mut s = format!("\n## Control plane: {N} services x {} backends\n\n", control::BACKENDS);
    s.push_str("| measure | xvs (BPF maps) | kube-proxy iptables-restore (baseline) | ratio xvs / baseline |\n|---|---:|---:|---:|\n");
    let ratio = |a: f64, b: Option<f64>| b.map_or("n/a".into(), |b| format!("{:.3}", a / b));
    let _ = writeln!(s, "| full sync, s | {xvs_secs:.3} | {} | {} |", ipt_secs.map_or("n/a".into(), |v| format!("{v:.3}")), ratio(xvs_secs, ipt_secs));
    let _ = writeln!(s, "| full sync, bpf(2) calls | {} | | |", counted(full, load));
    let _ = writeln!(s, "| live read of the maps (list, verify, adoption), bpf(2) calls | {} | | |", counted(read, flows));
    let _ = writeln!(s, "| connection-table scan ({} flows), bpf(2) calls | {} | | |", control::FLOWS, counted(scan, flows));
    let (i50, i99) = if ipt_inc.is_empty() { (None, None) } else { (Some(pct(&mut ipt_inc, 0.5)), Some(pct(&mut ipt_inc, 0.99))) };
    let baseline = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.0}"));
    for (what, v) in [("whole model reconciled (services file)", &mut full_inc), ("patch reconciled (Kubernetes events)", &mut event_inc)] {
        let (x50, x99) = (pct(v, 0.5), pct(v, 0.99));
        let _ = writeln!(s, "| one endpoint added, {what}, p50 µs | {x50:.0} | {} | {} |", baseline(i50), ratio(x50, i50));
        let _ = writeln!(s, "| one endpoint added, {what}, p99 µs | {x99:.0} | {} | {} |", baseline(i99), ratio(x99, i99));
    }
    let mut kube = kube::run(N, 50);
    let (k50, k99) = (pct(&mut kube.change_us, 0.5), pct(&mut kube.change_us, 0.99));
    let _ = writeln!(s, "| one endpoint added through the Kubernetes API, p50 µs | {k50:.0} | {} | {} |", baseline(i50), ratio(k50, i50));
    let _ = writeln!(s, "| one endpoint added through the Kubernetes API, p99 µs | {k99:.0} | {} | {} |", baseline(i99), ratio(k99, i99));
    s.push_str("\nxvs: the agent's reconciler writing the maps: a whole model diffed against the applied one (what a services-file reload does), or the changed service patched in and reconciled alone (what a Kubernetes watch event does); 200 changes each. bpf(2) calls counted with `perf stat -e syscalls:sys_enter_bpf`: the full sync (minus the object load), then a live read of every map (what `xvs list`, `xvs verify` and a restarted agent do) and a scan of the connection table, in batches (BPF_MAP_LOOKUP_BATCH) where the kernel has them. Baseline: kube-proxy's iptables-mode rules for the same services (KUBE-SERVICES / KUBE-SVC-* with statistic random / KUBE-SEP-* DNAT), `iptables-restore` into a private network namespace; incremental = `iptables-restore --noflush` of the changed service's chains (kube-proxy's partial sync), process start included, as kube-proxy pays it. Through the Kubernetes API: the real `xvs run --kubeconfig --debounce-ms 0` following the test API server with the same services as Services and EndpointSlices; from the EndpointSlice update stored in the API server to the agent's \"changes applied\" log line (watch event over HTTP, the Service translated again, the patch reconciled, maps written; polled every 0.2 ms). The baseline leaves out kube-proxy's own watch and translation.\n");
    print!("{s}");
    s.push_str(&kube_scale(kube));
    s
}

/// The event-driven path at 1k, 10k (`at_10k`, measured already) and 100k services: its cost
/// must not grow with the cluster; the whole-model reconcile beside it does.
fn kube_scale(at_10k: kube::KubeRun) -> String {
    println!("\n== Kubernetes at scale: 1k, 10k, 100k services x {}", control::BACKENDS);
    let mut runs: Vec<kube::KubeRun> = vec![kube::run(1_000, 50), at_10k, kube::run(100_000, 50)];
    let mut s = String::from("\n## Kubernetes at scale: the event-driven path\n\n![one change vs services](benchmarks-control.svg)\n\n");
    s.push_str("| services x 10 | first sync (first list -> maps), s | one change through the API p50 µs | p99 µs | patch reconciled p50 µs | whole model reconciled p50 µs | agent peak (VmHWM) MiB | agent RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut points: [Vec<(f64, f64)>; 4] = Default::default();
    for run in &mut runs {
        let n = run.services;
        let (k50, k99) = (pct(&mut run.change_us, 0.5), pct(&mut run.change_us, 0.99));
        let event = pct(&mut control::incremental(n, 50, control::Path::Event), 0.5);
        let whole = pct(&mut control::incremental(n, 50, control::Path::Full), 0.5);
        let mib = |kib: u64| kib as f64 / 1024.0;
        let _ = writeln!(s, "| {n} | {:.3} | {k50:.0} | {k99:.0} | {event:.0} | {whole:.0} | {:.1} | {:.1} |", run.first_sync_s, mib(run.peak_kib), mib(run.rss_kib));
        for (series, v) in points.iter_mut().zip([k50, k99, event, whole]) {
            series.push((f64::from(n), v));
        }
    }
    s.push_str("\nThe same generator as above at each size (services and their EndpointSlices in the test API server, the real agent following it). First sync: from the agent's \"following the Kubernetes API\" log line to its first \"dataplane synced\" (lists over HTTP in pages of 500, translation, the eBPF object loaded, every service written). Patch / whole model reconciled: the agent's reconciler alone, as in the table above, at each size.\n");
    let [k50, k99, event, whole] = points;
    let chart = line_chart(
        "one endpoint change vs number of services (10 endpoints each)",
        "services (log scale)",
        "µs",
        &[
            Series { name: "through the Kubernetes API, p50", color: "#1f77b4", points: k50 },
            Series { name: "through the Kubernetes API, p99", color: "#aec7e8", points: k99 },
            Series { name: "patch reconciled, p50", color: "#2ca02c", points: event },
            Series { name: "whole model reconciled, p50", color: "#d62728", points: whole },
        ],
    );
    let out_dir = PathBuf::from(std::env::var("XVS_BENCH_OUT").unwrap_or_else(|_| "target/bench".into()));
    let _ = std::fs::create_dir_all(&out_dir);
    std::fs::write(out_dir.join("control.svg"), chart).unwrap_or_else(|e| panic!("{e}"));
    print!("{s}");
    s
}

/// Peak RSS of the real agent serving `n` services.
fn agent_rss_kb(topo: &Topology, n: u32) -> (u64, u64) {
    let config = std::env::temp_dir().join(format!("xvs-bench-{n}.toml"));
    let mut text = String::new();
    for svc in control::model(n).services() {
        let eps: Vec<String> = svc.backends.iter().map(|b| format!("{{ endpoint = \"{}\" }}", b.endpoint())).collect();
        let _ = write!(text, "[[service]]\nvip = \"{}\"\nport = {}\nbackends = [{}]\n\n", svc.id.vip, svc.id.port, eps.join(", "));
    }
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let cap = control::capacity(n);
    let flags = [
        "--dataplane".to_owned(),
        "ebpf".to_owned(),
        "--max-services".to_owned(),
        cap.services.to_string(),
        "--max-backends".to_owned(),
        cap.backends.to_string(),
        "--max-slots".to_owned(),
        cap.slots.to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let pin = PathBuf::from(format!("/sys/fs/bpf/xvs-bench-{n}"));
    let agent = Agent::start(&topo.ns("node"), &config, NODE_IFACE, &pin, &flags);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap_or_default();
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
    let out = (field("VmRSS:"), field("VmHWM:"));
    drop(agent);
    let _ = std::fs::remove_file(&config);
    out
}

fn memory() -> String {
    println!("\n== agent memory: `xvs run` with 1 and with 10000 services (x10 backends)");
    let topo = Topology::create("xvs-bench", 0);
    let (one_rss, one_hwm) = agent_rss_kb(&topo, 1);
    let (big_rss, big_hwm) = agent_rss_kb(&topo, 10_000);
    drop(topo);
    let mut s = String::from("\n## Agent memory\n\n| services | VmRSS KiB | VmHWM (peak) KiB |\n|---:|---:|---:|\n");
    let _ = writeln!(s, "| 1 (baseline) | {one_rss} | {one_hwm} |");
    let _ = writeln!(s, "| 10000 | {big_rss} | {big_hwm} |");
    let _ = writeln!(s, "\nRatio 10000 / 1 services: RSS {:.2}x, peak {:.2}x (BPF map memory is kernel memory, not in the agent's RSS).", big_rss as f64 / one_rss.max(1) as f64, big_hwm as f64 / one_hwm.max(1) as f64);
    print!("{s}");
    s
}

/// xvs against the structural floors of the same family (targets: new flow <= 1.1x the insert
/// floor, established <= 1.15x the hit floor).
fn structural(figures: &[datapath::Figure]) -> String {
    let median = |name: String| figures.iter().find(|f| f.name == name).map(|f| f.median_ns).unwrap_or_else(|| panic!("no figure {name}"));
    let mut out = String::from("\nAgainst the structural floors (the same parser and connection table doing only what any NAT load balancer must):\n\n| family | new flow x insert floor (target <= 1.10) | established x hit floor (target <= 1.15) |\n|---|---:|---:|\n");
    for fam in ["IPv4", "IPv6"] {
        let new = median(format!("{}, {fam}", datapath::NEW_FLOW)) / median(format!("{}, {fam}", datapath::FLOOR_INSERT));
        let est = median(format!("{}, {fam}", datapath::ESTABLISHED)) / median(format!("{}, {fam}", datapath::FLOOR_HIT));
        let _ = writeln!(out, "| {fam} | {new:.2} | {est:.2} |");
    }
    out
}
