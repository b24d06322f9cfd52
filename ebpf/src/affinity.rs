//! Session affinity (IPVS persistence, kube-proxy `sessionAffinity: ClientIP`): new flows of a
//! client go to the backend its previous flows used, while that backend is still in service and
//! the client was seen within the service's timeout.
use xvs_common::{flow::affinity_holds, AffinityEntry, AffinityKey, Backend, ServiceValue, BACKEND_F_DRAINING};

use crate::{maps::XVS_AFFINITY, parse::PacketMeta, service};

#[inline(always)]
fn key_of(svc: &ServiceValue, meta: &PacketMeta) -> AffinityKey {
    AffinityKey { client: meta.saddr, svc_id: svc.svc_id, family: meta.family, _pad: [0; 3] }
}

/// The backend this client is bound to, if the binding holds and the backend takes new flows.
#[inline(always)]
pub fn find(svc: &ServiceValue, meta: &PacketMeta, now: u32) -> Option<(u32, Backend)> {
    // Most services have no affinity: no lookup for them.
    if svc.affinity_timeout == 0 {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let entry = unsafe { XVS_AFFINITY.get(&key_of(svc, meta)) }.copied()?;
    if !affinity_holds(svc.affinity_timeout, entry.last_seen, now) {
        return None;
    }
    let backend = service::backend(entry.backend_id)?;
    let usable = backend.svc_id == svc.svc_id && backend.flags & BACKEND_F_DRAINING == 0;
    usable.then_some((entry.backend_id, backend))
}

/// Binds the client to `backend_id` (new flow) or refreshes the binding (any later packet), so
/// the affinity lasts `timeout` seconds after the client's last packet, like IPVS's templates.
/// A failed insert only loses stickiness, never the packet.
#[inline(always)]
pub fn remember(svc: &ServiceValue, meta: &PacketMeta, backend_id: u32, now: u32) {
    let key = key_of(svc, meta);
    if let Some(entry) = XVS_AFFINITY.get_ptr_mut(&key) {
        // SAFETY: live map value; racing CPUs write the same kind of value.
        let entry = unsafe { &mut *entry };
        if entry.backend_id == backend_id {
            if entry.last_seen != now {
                entry.last_seen = now;
            }
            return;
        }
    }
    let _ = XVS_AFFINITY.insert(&key, &AffinityEntry { backend_id, last_seen: now }, 0);
}
