//! Validation of a desired state: everything the dataplane would refuse is refused here first,
//! with the service (and backend) it is about.
use std::collections::{HashMap, HashSet};

use xvs_common::{sched::WrrCycle, Scheduler};

use super::{Service, ServiceId};
use crate::dataplane::MAX_TABLE_LEN;

/// Largest weight accepted (IPVS takes any int; 65535 keeps wrr cycles computable).
pub const MAX_WEIGHT: u32 = 65_535;
/// Kubernetes' limit for sessionAffinityConfig.clientIP.timeoutSeconds.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// One problem, about the service at `index` in the list given to `Model::new`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{service}: {issue}")]
pub struct ModelError {
    pub index: usize,
    pub service: String,
    pub issue: ModelIssue,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelIssue {
    #[error("port 0 is not a service port")]
    ZeroPort,
    #[error("the VIP {0} cannot be a service address (unspecified, multicast or broadcast)")]
    BadVip(std::net::IpAddr),
    #[error("defined twice (first as service #{first})")]
    Duplicate { first: usize },
    #[error("backend {backend}: listed twice")]
    DuplicateBackend { backend: String },
    #[error("backend {backend}: address family differs from the VIP's (IPVS Masq cannot translate between IPv4 and IPv6)")]
    FamilyMismatch { backend: String },
    #[error("backend {backend}: port 0 is not a backend port")]
    BackendZeroPort { backend: String },
    #[error("backend {backend}: the address cannot receive traffic (unspecified, multicast or broadcast)")]
    BadBackendAddr { backend: String },
    #[error("backend {backend}: weight {weight} is out of range 0..={MAX_WEIGHT}")]
    Weight { backend: String, weight: u32 },
    #[error("session affinity timeout {0} s is out of range 1..={MAX_AFFINITY_TIMEOUT}")]
    AffinityTimeout(u32),
    #[error("the flag sh-port (mh-port) only applies to the sh and mh schedulers")]
    ShPortWithoutSh,
    #[error("source range {range} is not of the VIP's family")]
    SourceRangeFamily { range: String },
    #[error("a patch holds it under another service's id ({0})")]
    PatchedUnder(ServiceId),
    #[error("wrr weights need a {len}-slot cycle, more than {MAX_TABLE_LEN}: use weights with a larger common divisor")]
    WrrTooLong { len: u64 },
}

fn unusable(addr: std::net::IpAddr) -> bool {
    let broadcast = matches!(addr, std::net::IpAddr::V4(a) if a.is_broadcast());
    addr.is_unspecified() || addr.is_multicast() || broadcast
}

pub(super) fn check(services: &[Service]) -> Vec<ModelError> {
    let mut errors = Vec::new();
    let mut first_seen: HashMap<ServiceId, usize> = HashMap::new();
    for (index, svc) in services.iter().enumerate() {
        let mut err = |issue| errors.push(ModelError { index, service: svc.id.to_string(), issue });
        if let Some(&first) = first_seen.get(&svc.id) {
            err(ModelIssue::Duplicate { first: first + 1 });
        } else {
            first_seen.insert(svc.id, index);
        }
        check_service(svc, &mut err);
    }
    errors
}

/// Everything wrong with one service on its own (all but duplicates, which take the list).
pub(super) fn check_service(svc: &Service, err: &mut impl FnMut(ModelIssue)) {
    if svc.id.port == 0 {
        err(ModelIssue::ZeroPort);
    }
    if unusable(svc.id.vip) {
        err(ModelIssue::BadVip(svc.id.vip));
    }
    if let Some(t) = svc.affinity_timeout
        && !(1..=MAX_AFFINITY_TIMEOUT).contains(&t)
    {
        err(ModelIssue::AffinityTimeout(t));
    }
    if svc.sh_port && !matches!(svc.scheduler, Scheduler::SourceHash | Scheduler::MaglevHash) {
        err(ModelIssue::ShPortWithoutSh);
    }
    for range in svc.source_ranges.iter().filter(|r| r.addr.is_ipv6() != svc.id.vip.is_ipv6()) {
        err(ModelIssue::SourceRangeFamily { range: range.to_string() });
    }
    let mut seen = HashSet::with_capacity(svc.backends.len());
    let mut weights_ok = true;
    for b in &svc.backends {
        // Named only when something is wrong: formatting every endpoint costs more than
        // checking it (100k backends per sync from Kubernetes).
        let backend = || b.endpoint().to_string();
        if !seen.insert((b.addr, b.port)) {
            err(ModelIssue::DuplicateBackend { backend: backend() });
        }
        if b.addr.is_ipv6() != svc.id.vip.is_ipv6() {
            err(ModelIssue::FamilyMismatch { backend: backend() });
        }
        if b.port == 0 {
            err(ModelIssue::BackendZeroPort { backend: backend() });
        }
        if unusable(b.addr) {
            err(ModelIssue::BadBackendAddr { backend: backend() });
        }
        if b.weight > MAX_WEIGHT {
            weights_ok = false;
            err(ModelIssue::Weight { backend: backend(), weight: b.weight });
        }
    }
    if weights_ok && svc.scheduler == Scheduler::WeightedRoundRobin {
        let weights: Vec<u32> = svc.backends.iter().map(|b| b.effective_weight()).collect();
        let len = WrrCycle::len_hint(&weights);
        if len > MAX_TABLE_LEN {
            err(ModelIssue::WrrTooLong { len });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::{Backend, BackendState, Model, Protocol};

    fn svc(vip: &str, port: u16, scheduler: Scheduler, backends: &[(&str, u16, u32)]) -> Service {
        Service {
            id: ServiceId { vip: vip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), port, proto: Protocol::Tcp },
            scheduler,
            affinity_timeout: None,
            sh_port: false,
            source_ranges: Vec::new(),
            reach: crate::model::Reach::Cluster,
            backends: backends
                .iter()
                .map(|&(a, port, weight)| Backend {
                    addr: a.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                    port,
                    weight,
                    state: BackendState::Active,
                })
                .collect(),
        }
    }

    fn issues(services: Vec<Service>) -> Vec<String> {
        match Model::new(services) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(|e| format!("#{} {e}", e.index)).collect(),
        }
    }

    #[test]
    fn valid_model_is_sorted() {
        let model = Model::new(vec![
            svc("10.96.0.20", 80, Scheduler::RoundRobin, &[("10.0.0.2", 80, 1), ("10.0.0.1", 80, 1)]),
            svc("fd00::1", 80, Scheduler::RoundRobin, &[]),
            svc("10.96.0.10", 443, Scheduler::RoundRobin, &[]),
        ])
        .unwrap_or_default();
        let ids: Vec<String> = model.services().map(|s| s.id.to_string()).collect();
        assert_eq!(ids, ["TCP 10.96.0.10:443", "TCP 10.96.0.20:80", "TCP [fd00::1]:80"]);
        let first = model.services().nth(1).map(|s| s.backends[0].addr.to_string());
        assert_eq!(first.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn every_problem_is_named() {
        let mut affinity = svc("10.96.0.11", 80, Scheduler::RoundRobin, &[]);
        affinity.affinity_timeout = Some(0);
        let mut sh_port = svc("10.96.0.12", 80, Scheduler::RoundRobin, &[]);
        sh_port.sh_port = true;
        let got = issues(vec![
            svc("10.96.0.10", 80, Scheduler::RoundRobin, &[("10.0.0.1", 80, 1), ("10.0.0.1", 80, 2)]),
            svc("10.96.0.10", 80, Scheduler::RoundRobin, &[("fd00::1", 0, 70_000)]),
            svc("0.0.0.0", 0, Scheduler::RoundRobin, &[("224.0.0.1", 80, 1)]),
            affinity,
            sh_port,
            svc("10.96.0.13", 80, Scheduler::WeightedRoundRobin, &[("10.0.0.1", 80, 65_535), ("10.0.0.2", 80, 65_534)]),
        ]);
        assert_eq!(
            got,
            [
                "#0 TCP 10.96.0.10:80: backend 10.0.0.1:80: listed twice",
                "#1 TCP 10.96.0.10:80: defined twice (first as service #1)",
                "#1 TCP 10.96.0.10:80: backend [fd00::1]:0: address family differs from the VIP's (IPVS Masq cannot translate between IPv4 and IPv6)",
                "#1 TCP 10.96.0.10:80: backend [fd00::1]:0: port 0 is not a backend port",
                "#1 TCP 10.96.0.10:80: backend [fd00::1]:0: weight 70000 is out of range 0..=65535",
                "#2 TCP 0.0.0.0:0: port 0 is not a service port",
                "#2 TCP 0.0.0.0:0: the VIP 0.0.0.0 cannot be a service address (unspecified, multicast or broadcast)",
                "#2 TCP 0.0.0.0:0: backend 224.0.0.1:80: the address cannot receive traffic (unspecified, multicast or broadcast)",
                "#3 TCP 10.96.0.11:80: session affinity timeout 0 s is out of range 1..=86400",
                "#4 TCP 10.96.0.12:80: the flag sh-port (mh-port) only applies to the sh and mh schedulers",
                "#5 TCP 10.96.0.13:80: wrr weights need a 131069-slot cycle, more than 65536: use weights with a larger common divisor",
            ]
        );
    }

    #[test]
    fn terminating_backends_weigh_nothing() {
        let b = Backend { addr: IpAddr::from([10, 0, 0, 1]), port: 80, weight: 3, state: BackendState::Terminating };
        assert_eq!(b.effective_weight(), 0);
    }
}
