//! Views of the live dataplane for people: the listing `xvs list` prints, read from the maps.
pub mod ipvsadm;
mod order;

use std::net::SocketAddr;

use xvs_common::{Counters, Scheduler, SERVICE_F_SH_PORT};

use crate::{
    dataplane::{DataplaneError, Maps},
    model::ServiceId,
    sync::{datapath_secs, flows, flows::ConnCounts, LiveState},
};

/// Everything `ipvsadm -L -n` shows, for the services in the maps, in ipvsadm's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// Capacity of the connection table (ipvsadm's "size").
    pub size: u32,
    pub services: Vec<ListedService>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedService {
    pub id: ServiceId,
    pub scheduler: String,
    pub sh_port: bool,
    /// sh or mh moves sources off draining destinations (always so in xvs; IPVS's SCHED1 flag).
    pub sh_fallback: bool,
    pub persistent: Option<u32>,
    pub stats: Counters,
    pub backends: Vec<ListedBackend>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedBackend {
    pub endpoint: SocketAddr,
    pub weight: u32,
    pub conns: ConnCounts,
    pub stats: Counters,
}

/// Per-second rates, IPVS's estimator columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub cps: u64,
    pub in_pps: u64,
    pub out_pps: u64,
    pub in_bps: u64,
    pub out_bps: u64,
}

impl Rate {
    fn between(a: &Counters, b: &Counters, secs: f64) -> Self {
        let per_sec = |x: u64, y: u64| (y.saturating_sub(x) as f64 / secs).round() as u64;
        Self {
            cps: per_sec(a.conns, b.conns),
            in_pps: per_sec(a.in_pkts, b.in_pkts),
            out_pps: per_sec(a.out_pkts, b.out_pkts),
            in_bps: per_sec(a.in_bytes, b.in_bytes),
            out_bps: per_sec(a.out_bytes, b.out_bytes),
        }
    }
}

/// Rates of each service and its backends, in the listing's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    pub services: Vec<(Rate, Vec<Rate>)>,
}

impl Rates {
    /// Rates from two listings taken `secs` apart (matched by service and backend).
    pub fn between(before: &Listing, after: &Listing, secs: f64) -> Self {
        let services = after
            .services
            .iter()
            .map(|s| {
                let old = before.services.iter().find(|o| o.id == s.id);
                let svc = Rate::between(old.map_or(&s.stats, |o| &o.stats), &s.stats, secs);
                let backends = s
                    .backends
                    .iter()
                    .map(|b| {
                        let ob = old.and_then(|o| o.backends.iter().find(|x| x.endpoint == b.endpoint));
                        Rate::between(ob.map_or(&b.stats, |x| &x.stats), &b.stats, secs)
                    })
                    .collect();
                (svc, backends)
            })
            .collect();
        Self { services }
    }
}

impl Listing {
    /// Reads services, backends, counters and live connections from the maps.
    pub fn read(maps: &Maps) -> Result<Self, DataplaneError> {
        let live = LiveState::read(maps)?;
        let scan = flows::scan(maps, datapath_secs(maps)?)?;
        let sockets = flows::socket_conns(maps)?;
        let mut services = Vec::with_capacity(live.services.len());
        for l in live.services.values() {
            let entry = live.entry(l);
            let mut backends = Vec::with_capacity(entry.backends.len());
            for b in &entry.backends {
                backends.push(ListedBackend {
                    endpoint: SocketAddr::new(b.addr, b.port),
                    weight: b.weight,
                    conns: scan.per_backend.get(&b.id).copied().unwrap_or_default().plus(sockets.get(&b.id).copied().unwrap_or_default()),
                    stats: maps.backend_counters(b.id)?,
                });
            }
            services.push(ListedService {
                id: l.id,
                scheduler: Scheduler::from_u8(l.value.scheduler).map_or("?", Scheduler::ipvs_name).to_owned(),
                sh_port: l.value.flags & SERVICE_F_SH_PORT != 0,
                sh_fallback: l.value.scheduler == Scheduler::SourceHash as u8 || l.value.scheduler == Scheduler::MaglevHash as u8,
                persistent: (l.value.affinity_timeout != 0).then_some(l.value.affinity_timeout),
                stats: maps.service_counters(l.value.svc_id)?,
                backends,
            });
        }
        Ok(Self { size: maps.capacity.flows, services }.in_ipvsadm_order())
    }

    /// Services, and servers within each, in ipvsadm's order (see order.rs), from the order
    /// they were read in.
    fn in_ipvsadm_order(mut self) -> Self {
        for s in &mut self.services {
            order::qsort(&mut s.backends, |a, b| order::cmp_dests(&a.endpoint, &b.endpoint));
        }
        order::qsort(&mut self.services, |a, b| order::cmp_services(&a.id, &b.id));
        self
    }
}

impl Listing {
    /// The kernel IPVS table as `ipvsadm -L -n` shows it (address-based TCP/UDP services; the
    /// connection counters are the kernel's).
    pub fn read_ipvs(client: &crate::ipvs::IpvsClient) -> Result<Self, crate::ipvs::IpvsError> {
        use crate::ipvs::wire::{SVC_F_PERSISTENT, SVC_F_SCHED1, SVC_F_SCHED2};
        let info = client.info()?;
        let mut services = Vec::new();
        for s in client.services()? {
            let Some(proto) = u8::try_from(s.protocol).ok().and_then(crate::model::Protocol::from_number) else { continue };
            let backends: Vec<ListedBackend> = client
                .dests(&s)?
                .into_iter()
                .map(|d| ListedBackend {
                    endpoint: SocketAddr::new(d.addr, d.port),
                    weight: d.weight,
                    conns: ConnCounts { active: d.active_conns, inactive: d.inactive_conns },
                    stats: Counters::default(),
                })
                .collect();
            services.push(ListedService {
                id: ServiceId { vip: s.addr, port: s.port, proto },
                sh_port: matches!(s.scheduler.as_str(), "sh" | "mh") && s.flags & SVC_F_SCHED2 != 0,
                sh_fallback: matches!(s.scheduler.as_str(), "sh" | "mh") && s.flags & SVC_F_SCHED1 != 0,
                persistent: (s.flags & SVC_F_PERSISTENT != 0).then_some(s.timeout),
                scheduler: s.scheduler,
                stats: Counters::default(),
                backends,
            });
        }
        // Sorted from the kernel's dump order, as ipvsadm sorts it.
        Ok(Self { size: info.conn_tab_size, services }.in_ipvsadm_order())
    }
}

/// One service's rules (not its counters) as comparable lines.
fn rules(s: &ListedService) -> Vec<String> {
    let head = format!("{} {} persistent={:?} sh-port={} sh-fallback={}", s.id, s.scheduler, s.persistent, s.sh_port, s.sh_fallback);
    std::iter::once(head).chain(s.backends.iter().map(|b| format!("{} -> {} weight {}", s.id, b.endpoint, b.weight))).collect()
}

/// Differences between the eBPF and the IPVS dataplane's rules (not their counters): the
/// services xvs holds in eBPF must be in IPVS with the same scheduler, persistence and weighted
/// backends. IPVS may also hold foreign services; those are not compared.
pub fn cross_check(ebpf: &Listing, ipvs: &Listing) -> Vec<String> {
    let e: Vec<String> = ebpf.services.iter().flat_map(rules).collect();
    let i: Vec<String> = ipvs.services.iter().filter(|s| ebpf.services.iter().any(|x| x.id == s.id)).flat_map(rules).collect();
    let mut out: Vec<String> = e.iter().filter(|r| !i.contains(r)).map(|r| format!("{r}: only in ebpf")).collect();
    out.extend(i.iter().filter(|r| !e.contains(r)).map(|r| format!("{r}: only in ipvs")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn svc(vip: [u8; 4], scheduler: &str, backends: &[([u8; 4], u32)]) -> ListedService {
        ListedService {
            id: ServiceId { vip: vip.into(), port: 80, proto: Protocol::Tcp },
            scheduler: scheduler.into(),
            sh_port: false,
            sh_fallback: false,
            persistent: None,
            stats: Counters { conns: 7, ..Counters::default() },
            backends: backends
                .iter()
                .map(|&(a, weight)| ListedBackend { endpoint: SocketAddr::from((a, 8080)), weight, conns: ConnCounts { active: weight, inactive: 0 }, stats: Counters::default() })
                .collect(),
        }
    }

    #[test]
    fn cross_check_compares_rules_not_counters_and_ignores_foreign_ipvs_services() {
        let ebpf = Listing { size: 262_144, services: vec![svc([10, 96, 0, 10], "rr", &[([10, 0, 0, 1], 1), ([10, 0, 0, 2], 1)])] };
        let mut ipvs = Listing { size: 4096, services: vec![svc([10, 96, 0, 10], "rr", &[([10, 0, 0, 1], 1), ([10, 0, 0, 2], 1)]), svc([192, 168, 0, 1], "wlc", &[])] };
        ipvs.services[0].stats = Counters::default();
        assert_eq!(cross_check(&ebpf, &ipvs), Vec::<String>::new());
        ipvs.services[0].scheduler = "wrr".into();
        ipvs.services[0].backends[1].weight = 0;
        assert_eq!(
            cross_check(&ebpf, &ipvs),
            [
                "TCP 10.96.0.10:80 rr persistent=None sh-port=false sh-fallback=false: only in ebpf",
                "TCP 10.96.0.10:80 -> 10.0.0.2:8080 weight 1: only in ebpf",
                "TCP 10.96.0.10:80 wrr persistent=None sh-port=false sh-fallback=false: only in ipvs",
                "TCP 10.96.0.10:80 -> 10.0.0.2:8080 weight 0: only in ipvs",
            ]
        );
    }
}
