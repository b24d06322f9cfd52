//! `xvs verify`: the live maps against the desired state, every difference listed. Compared by
//! what packets would see (addresses, weights, the backend each slot sends new flows to), not by
//! internal ids, so a restarted agent's maps verify as well as a fresh one's.
use std::{fmt, net::SocketAddr};

use xvs_common::{Scheduler, SERVICE_F_SH_PORT};

use super::live::{LiveService, LiveState};
use crate::{
    dataplane::tables,
    model::{Model, Service, ServiceId},
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
    for svc in model.services() {
        match live.services.get(&svc.id) {
            None => out.push(Drift::MissingService(svc.id)),
            Some(l) => diff_service(svc, l, live, &mut out),
        }
    }
    for id in live.services.keys() {
        if model.get(id).is_none() {
            out.push(Drift::ExtraService(*id));
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

    let weights: Vec<u32> = svc.backends.iter().map(|b| b.effective_weight()).collect();
    let Ok(want) = tables::render(svc.scheduler, &weights) else { return };
    let want: Vec<SocketAddr> = want.into_iter().map(|i| svc.backends[i].endpoint()).collect();
    if want.len() != l.table.len() {
        out.push(Drift::Table { service: id, detail: format!("has {} slots, want {}", l.table.len(), want.len()) });
        return;
    }
    for (slot, (want, have)) in want.iter().zip(&l.table).enumerate() {
        let problem = match have {
            None => Some(format!("slot {slot} is missing (want {want})")),
            Some(bid) => match endpoint_of(*bid) {
                None => Some(format!("slot {slot} names backend id {bid}, which is not a backend of this service (want {want})")),
                Some(ep) if ep != *want => Some(format!("slot {slot} sends to {ep}, want {want}")),
                Some(_) => None,
            },
        };
        if let Some(detail) = problem {
            out.push(Drift::Table { service: id, detail });
        }
    }
}
