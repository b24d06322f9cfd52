//! aya `Pod` impls so the agent can read and write these types in maps.
use crate::{AffinityEntry, AffinityKey, Backend, Counters, FlowEntry, FlowKey, NatAddrKey, NatConfig, ServiceKey, ServiceValue, SlotKey, SourceRange, sock::{SockConfig, SockEntry, SockKey}};

// SAFETY (all): `#[repr(C)]`, only integer fields, no implicit padding (sizes pinned in maps.rs),
// so every bit pattern is a valid value.
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
mod impls {
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityEntry {}
    unsafe impl aya::Pod for SourceRange {}
    unsafe impl aya::Pod for NatConfig {}
    unsafe impl aya::Pod for NatAddrKey {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockEntry {}
    unsafe impl aya::Pod for SockConfig {}
}
