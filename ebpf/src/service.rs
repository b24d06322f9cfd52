//! Looks up the service a packet is addressed to and the backends its tables name.
use xvs_common::{Backend, Reason, ServiceKey, ServiceValue, SlotKey, BACKEND_F_PRESENT};

use crate::{
    maps::{XVS_BACKENDS, XVS_SERVICES, XVS_SLOTS},
    parse::PacketMeta,
};

/// The service for the packet's (daddr, dport, proto), as a pointer into the map value so the
/// scheduler can advance its cursor in place.
#[inline(always)]
pub fn lookup(meta: &PacketMeta) -> Option<*mut ServiceValue> {
    let key = ServiceKey {
        addr: meta.daddr,
        port: meta.dport,
        proto: meta.proto,
        family: meta.family,
    };
    XVS_SERVICES.get_ptr_mut(&key)
}

/// The backend behind `id`, if it is still present (id 0 is never a backend).
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    if id == 0 {
        return None;
    }
    let b = *XVS_BACKENDS.get(id)?;
    (b.flags & BACKEND_F_PRESENT != 0).then_some(b)
}

/// Slot `slot` of service `svc_id`'s selection table: a backend id (mh's with its fallback).
#[inline(always)]
pub fn slot(svc_id: u32, slot: u32) -> Result<u32, Reason> {
    // SAFETY: plain lookup of a u32 value.
    unsafe { XVS_SLOTS.get(&SlotKey { svc_id, slot }) }.copied().ok_or(Reason::BackendMissing)
}
