//! `xvs verify`: the live maps against the desired state, every difference listed. Compared by
//! what packets would see (addresses, weights, the backend each slot sends new flows to), not by
//! internal ids, so a restarted agent's maps verify as well as a fresh one's.
use std::{fmt, net::SocketAddr};

use xvs_common::{maglev::MH_SLOT_ID_MASK, Scheduler, SERVICE_F_EXTERNAL, SERVICE_F_KEEP_CLIENT, SERVICE_F_SH_PORT, SERVICE_F_SOURCE_RANGES};

use super::live::{LiveService, LiveState};
use crate::{
    model::{Model, Reach, Service, ServiceId},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    MissingService(ServiceId),
    ExtraService(ServiceId),
    UnreadableService(String),
    Setting { service: ServiceId, what: &'static str, want: String, have: String },
    MissingBackend { service: ServiceId, backend: SocketAddr },
    ExtraBackend { service: ServiceId, backend: SocketAddr, weight: u32 },
    Weight { service: ServiceId, backend: SocketAddr, want: u32, have: u32 },
    Table { service: ServiceId, detail: String },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingService(s) => write!(f, "{s}: missing from the dataplane"),
            Self::ExtraService(s) => write!(f, "{s}: in the dataplane but not desired"),
            Self::UnreadableService(k) => write!(f, "service entry {k}: cannot be decoded (not written by xvs)"),
            Self::Setting { service, what, want, have } => write!(f, "{service}: {what} is {have}, want {want}"),
            Self::MissingBackend { service, backend } => write!(f, "{service}: backend {backend} missing"),
            Self::ExtraBackend { service, backend, weight } => {
                write!(f, "{service}: backend {backend} (weight {weight}) is not desired")
            }
            Self::Weight { service, backend, want, have } => {
                write!(f, "{service}: backend {backend} has weight {have}, want {want}")
            }
            Self::Table { service, detail } => write!(f, "{service}: selection table {detail}"),
        }
    }
}

/// Every difference between `model` and `live`, in service order. Backends present with
/// weight 0 that the model no longer has are draining, not drift.
pub fn diff(model: &Model, live: &LiveState) -> Vec<Drift> {
    let mut out = Vec::new();
    for key in &live.unreadable {
        out.push(Drift::UnreadableService(format!("{key:?}")));
    }
    for svc in model.in_ebpf() {
        match live.services.get(&svc.id) {
            None => out.push(Drift::MissingService(svc.id)),
            Some(l) => diff_service(svc, l, live, &mut out),
        }
    }
    for id in live.services.keys() {
        if model.get_in_ebpf(id).is_none() {
            out.push(Drift::ExtraService(*id));
        }
    }
    out
}

/// The backends the maps keep draining: weight 0 and no longer in the model's service.
pub fn draining(model: &Model, live: &LiveState) -> Vec<(ServiceId, SocketAddr)> {
    let mut out = Vec::new();
    for (id, l) in &live.services {
        let wanted = |ep: SocketAddr| model.get(id).is_some_and(|s| s.backends.iter().any(|b| b.endpoint() == ep));
        for b in live.entry(l).backends {
            let ep = SocketAddr::new(b.addr, b.port);
            if b.weight == 0 && !wanted(ep) {
                out.push((*id, ep));
            }
        }
    }
    out
}

fn diff_service(svc: &Service, l: &LiveService, live: &LiveState, out: &mut Vec<Drift>) {
    let id = svc.id;
    let mut setting = |what, want: String, have: String| {
        if want != have {
            out.push(Drift::Setting { service: id, what, want, have });
        }
    };
    let have_sched = Scheduler::from_u8(l.value.scheduler).map_or_else(|| format!("unknown ({})", l.value.scheduler), |s| s.ipvs_name().into());
    setting("scheduler", svc.scheduler.ipvs_name().into(), have_sched);
    setting("session affinity timeout", svc.affinity_timeout.unwrap_or(0).to_string(), l.value.affinity_timeout.to_string());
    setting("sh-port", svc.sh_port.to_string(), (l.value.flags & SERVICE_F_SH_PORT != 0).to_string());
    let reach_bits = SERVICE_F_EXTERNAL | SERVICE_F_KEEP_CLIENT;
    let have_reach = [Reach::Cluster, Reach::External, Reach::ExternalLocal].into_iter().find(|r| r.flags() == l.value.flags & reach_bits);
    setting("reach", svc.reach.name().into(), have_reach.map_or_else(|| format!("flags {:#x}", l.value.flags & reach_bits), |r| r.name().into()));
    let ranges = |list: Vec<String>, on: bool| if on { list.join(",") } else { "all clients".to_owned() };
    setting(
        "source ranges",
        ranges(svc.source_ranges.iter().map(ToString::to_string).collect(), !svc.source_ranges.is_empty()),
        ranges(live.source_ranges_of(l).iter().map(|(a, bits)| format!("{a}/{bits}")).collect(), l.value.flags & SERVICE_F_SOURCE_RANGES != 0),
    );

    let entry = live.entry(l);
    let endpoint_of = |bid: u32| entry.backends.iter().find(|b| b.id == bid).map(|b| SocketAddr::new(b.addr, b.port));
    for b in &svc.backends {
        match entry.backends.iter().find(|lb| lb.addr == b.addr && lb.port == b.port) {
            None => out.push(Drift::MissingBackend { service: id, backend: b.endpoint() }),
            Some(lb) if lb.weight != b.effective_weight() => {
                out.push(Drift::Weight { service: id, backend: b.endpoint(), want: b.effective_weight(), have: lb.weight })
            }
            Some(_) => {}
        }
    }
    for lb in &entry.backends {
        let desired = svc.backends.iter().any(|b| b.addr == lb.addr && b.port == lb.port);
        if !desired && lb.weight != 0 {
            out.push(Drift::ExtraBackend { service: id, backend: SocketAddr::new(lb.addr, lb.port), weight: lb.weight });
        }
    }

    // The table the live destination list (the kernel's order, draining backends included:
    // sh gives them buckets) should have.
    // Slot values, not only endpoints: mh's also carry each draining bucket's fallback.
    let Ok(want) = entry.table() else { return };
    if want.len() != l.table.len() {
        out.push(Drift::Table { service: id, detail: format!("has {} slots, want {}", l.table.len(), want.len()) });
        return;
    }
    let id_of = |value: u32| if svc.scheduler == Scheduler::MaglevHash { value & MH_SLOT_ID_MASK } else { value };
    for (slot, (&want, have)) in want.iter().zip(&l.table).enumerate() {
        let want_ep = endpoint_of(id_of(want)).map_or_else(|| format!("backend id {want}"), |ep| ep.to_string());
        let problem = match have {
            None => Some(format!("slot {slot} is missing (want {want_ep})")),
            Some(v) => match endpoint_of(id_of(*v)) {
                None => Some(format!("slot {slot} names backend id {v}, which is not a backend of this service (want {want_ep})")),
                Some(ep) if ep.to_string() != want_ep => Some(format!("slot {slot} sends to {ep}, want {want_ep}")),
                Some(_) if *v != want => Some(format!("slot {slot} holds {v:#x}, want {want:#x} (its fallback differs)")),
                Some(_) => None,
            },
        };
        if let Some(detail) = problem {
            out.push(Drift::Table { service: id, detail });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use xvs_common::{Backend, ServiceValue, BACKEND_F_PRESENT};

    use super::*;
    use crate::{dataplane::to_map_addr, source::file, sync::live::LiveService};

    fn backend(ep: &str, svc_id: u32, weight: u32) -> Backend {
        let ep: SocketAddr = ep.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let (addr, family) = to_map_addr(ep.ip());
        Backend { addr, port: ep.port().to_be(), family, flags: BACKEND_F_PRESENT, svc_id, weight, seq: 0, last_weight: weight }
    }

    /// The maps as the agent writes `TCP 10.96.0.10:80 rr` over .1 and .2 (ids 1, 2), plus a
    /// draining .9 (id 3).
    fn live() -> LiveState {
        let id = ServiceId { vip: IpAddr::from([10, 96, 0, 10]), port: 80, proto: crate::model::Protocol::Tcp };
        let value = ServiceValue { svc_id: 7, slot_base: 0, slot_count: 2, scheduler: Scheduler::RoundRobin as u8, ..Default::default() };
        let mut state = LiveState::default();
        state.services.insert(id, LiveService { id, value, table: vec![Some(1), Some(2)] });
        state.backends.insert((7, 1), backend("10.0.0.1:80", 7, 1));
        state.backends.insert((7, 2), backend("10.0.0.2:80", 7, 1));
        state.backends.insert((7, 3), backend("10.0.0.9:80", 7, 0));
        state
    }

    fn model(text: &str) -> Model {
        file::parse(text, std::path::Path::new("t.toml")).unwrap_or_default()
    }

    const WANT: &str = "[[service]]\nvip = \"10.96.0.10\"\nport = 80\nbackends = [{ endpoint = \"10.0.0.1:80\" }, { endpoint = \"10.0.0.2:80\" }]\n";

    fn diff_text(model: &Model, live: &LiveState) -> Vec<String> {
        diff(model, live).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn source_ranges_are_compared() {
        let with_ranges = WANT.replace("port = 80\n", "port = 80\nsource_ranges = [\"10.1.0.0/16\"]\n");
        let missing = diff_text(&model(&with_ranges), &live());
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].contains("source ranges") && missing[0].contains("10.1.0.0/16") && missing[0].contains("all clients"), "{missing:?}");
        let mut l = live();
        if let Some(s) = l.services.values_mut().next() {
            s.value.flags |= SERVICE_F_SOURCE_RANGES;
        }
        l.ranges.insert(7, vec![(to_map_addr(IpAddr::from([10, 1, 0, 0])).0, 16)]);
        assert_eq!(diff_text(&model(&with_ranges), &l), Vec::<String>::new());
        l.ranges.insert(7, vec![(to_map_addr(IpAddr::from([10, 2, 0, 0])).0, 16)]);
        assert!(diff_text(&model(&with_ranges), &l).iter().any(|d| d.contains("10.2.0.0/16")));
    }

    #[test]
    fn sctp_services_are_not_expected_in_the_maps_and_are_extra_there() {
        let sctp = "[[service]]\nvip = \"10.96.0.99\"\nport = 3868\nprotocol = \"sctp\"\nbackends = [{ endpoint = \"10.0.0.1:3868\" }]\n";
        assert_eq!(diff_text(&model(&format!("{WANT}{sctp}")), &live()), Vec::<String>::new());
        let mut l = live();
        let Some(mut stray) = l.services.values().next().cloned() else { panic!("live() has a service") };
        // Even the desired SCTP service is drift in the maps: the datapath would not serve it.
        stray.id = ServiceId { vip: IpAddr::from([10, 96, 0, 99]), port: 3868, proto: crate::model::Protocol::Sctp };
        l.services.insert(stray.id, stray);
        assert_eq!(diff_text(&model(&format!("{WANT}{sctp}")), &l), ["SCTP 10.96.0.99:3868: in the dataplane but not desired"]);
    }

    #[test]
    fn matching_maps_have_no_drift_and_draining_backends_are_not_drift() {
        assert_eq!(diff_text(&model(WANT), &live()), Vec::<String>::new());
        let drains: Vec<String> = draining(&model(WANT), &live()).iter().map(|(s, ep)| format!("{s} {ep}")).collect();
        assert_eq!(drains, ["TCP 10.96.0.10:80 10.0.0.9:80"]);
    }

    #[test]
    fn every_kind_of_drift_is_named() {
        let mut l = live();
        if let Some(s) = l.services.values_mut().next() {
            s.table[1] = None;
        }
        let missing = diff_text(&model(WANT), &l);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("TCP 10.96.0.10:80: selection table slot 1 is missing (want 10.0.0."), "{missing:?}");
        let mut l = live();
        if let Some(s) = l.services.values_mut().next() {
            s.table[1] = None;
            s.value.affinity_timeout = 30;
        }
        l.backends.insert((7, 2), backend("10.0.0.2:80", 7, 5));
        l.backends.insert((7, 4), backend("10.0.0.4:80", 7, 1));
        let want = format!("{WANT}\n[[service]]\nvip = \"10.96.0.11\"\nport = 80\n");
        assert_eq!(
            diff_text(&model(&want), &l),
            [
                "TCP 10.96.0.10:80: session affinity timeout is 30, want 0",
                "TCP 10.96.0.10:80: backend 10.0.0.2:80 has weight 5, want 1",
                "TCP 10.96.0.10:80: backend 10.0.0.4:80 (weight 1) is not desired",
                "TCP 10.96.0.10:80: selection table has 2 slots, want 3",
                "TCP 10.96.0.11:80: missing from the dataplane",
            ]
        );
        assert_eq!(diff_text(&Model::default(), &live()), ["TCP 10.96.0.10:80: in the dataplane but not desired"]);
    }

    #[test]
    fn a_slot_pointing_elsewhere_is_drift() {
        let mut l = live();
        if let Some(s) = l.services.values_mut().next() {
            s.table = vec![Some(2), Some(99)];
        }
        assert_eq!(
            diff_text(&model(WANT), &l),
            [
                "TCP 10.96.0.10:80: selection table slot 0 sends to 10.0.0.2:80, want 10.0.0.1:80",
                "TCP 10.96.0.10:80: selection table slot 1 names backend id 99, which is not a backend of this service (want 10.0.0.2:80)",
            ]
        );
    }
}
