//! Masquerading (SNAT to the node), done where kube-proxy's MASQUERADE rule does it: on the way
//! out, after routing.
//! - TC egress on the interface a DNATed flow's packet leaves by (client -> backend) decides on
//!   the flow's first packet out whether it is masqueraded (`xvs_common::snat::masquerades`,
//!   kube-proxy's rules) and records the answer in a MASQ entry under that packet's key. A
//!   masqueraded flow gets this interface's address and a free SNAT port as its source. The
//!   kernel's routing, MTU checks and ICMP errors before it still see the client's address.
//! - A reply to the masquerade address and port goes on to the flow's client at ingress (the
//!   unmasquerade program, reached by tail call), the destination only: its source becomes the
//!   VIP on the client's egress, as any reply's does, after routing, where a VIP that is a
//!   local address is no martian source.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use xvs_common::{
    snat::{masquerades, port_of, SNAT_TRIES},
    FlowEntry, FlowKey, NatAddrKey, NatConfig, Reason, ServiceKey, FLOW_MASQ, FLOW_REPLY, FLOW_UNMASQ, NAT_F_ENABLED,
};

use crate::{
    clock, conntrack,
    icmp::{self, Way},
    maps::{XVS_CONNTRACK, XVS_NAT, XVS_NAT_ADDRS, XVS_SERVICES},
    nat::{End, Packet},
    parse::{self, PacketMeta},
};

#[inline(always)]
fn config() -> Option<&'static NatConfig> {
    XVS_NAT.get(0).filter(|cfg| cfg.flags & NAT_F_ENABLED != 0)
}

#[inline(always)]
pub fn enabled() -> bool {
    config().is_some()
}

/// TC egress, a packet of a flow whose MASQ entry exists (`entry`, in place): masqueraded to
/// the flow's SNAT source, or left alone when the flow keeps its client's address (port 0).
#[inline(always)]
pub fn masquerade<P: Packet>(packet: &P, meta: &PacketMeta, entry: *mut FlowEntry) -> Result<Reason, Reason> {
    // SAFETY: a live map value for this program run; copied so one version is read.
    let current = unsafe { *entry };
    if current.nat_port == 0 {
        return Err(Reason::NotService);
    }
    packet.rewrite(meta, End::Source, &current.nat_addr, current.nat_port)?;
    Ok(Reason::Masquerade)
}

/// TC egress, a packet no entry knows. If it is a DNATed flow's packet to its backend, which
/// the flow's reply entry mirrors, this is the flow's first packet out: decide and record.
#[inline(always)]
pub fn first_out<P: Packet>(packet: &P, meta: &PacketMeta) -> Result<Reason, Reason> {
    let cfg = config().ok_or(Reason::NotService)?;
    let mirror = FlowKey { saddr: meta.daddr, daddr: meta.saddr, sport: meta.dport, dport: meta.sport, proto: meta.proto, family: meta.family, _pad: [0; 2] };
    let reply = conntrack::lookup(&mirror, FLOW_REPLY).ok_or(Reason::NotService)?;
    let vip = ServiceKey { addr: reply.nat_addr, port: reply.nat_port, proto: meta.proto, family: meta.family };
    // SAFETY: a map value read once, copied.
    let svc_flags = unsafe { XVS_SERVICES.get(&vip) }.map(|svc| svc.flags).ok_or(Reason::NotService)?;
    let mut masq = FlowEntry {
        nat_addr: [0; 4],
        nat_port: 0,
        kind: FLOW_MASQ,
        family: meta.family,
        svc_id: reply.svc_id,
        backend_id: reply.backend_id,
        last_seen: reply.last_seen,
        state: 0,
        _pad: [0; 3],
    };
    let key = conntrack::key_of(meta);
    if !masquerades(cfg, svc_flags, meta.family, &meta.saddr, &meta.daddr) {
        // Recorded too, so the flow's next packets take one lookup here.
        XVS_CONNTRACK.insert(&key, &masq, 0).map_err(|_| Reason::ConntrackFull)?;
        return Err(Reason::NotService);
    }
    let (addr, port) = allocate(cfg, packet, meta, &reply)?;
    masq.nat_addr = addr;
    masq.nat_port = port;
    XVS_CONNTRACK.insert(&key, &masq, 0).map_err(|_| Reason::ConntrackFull)?;
    packet.rewrite(meta, End::Source, &addr, port)?;
    Ok(Reason::Masquerade)
}

/// Takes an SNAT port on the address of the interface the packet leaves by: the UNMASQ entry
/// (backend -> address:port) is inserted only where none exists, so a tuple still in use is
/// never taken again; a collision tries another random port.
#[inline(always)]
fn allocate<P: Packet>(cfg: &NatConfig, packet: &P, meta: &PacketMeta, reply: &FlowEntry) -> Result<([u32; 4], u16), Reason> {
    let iface = NatAddrKey { ifindex: packet.ifindex(), family: meta.family, _pad: [0; 3] };
    // SAFETY: a map value read once, copied.
    let addr = *unsafe { XVS_NAT_ADDRS.get(&iface) }.ok_or(Reason::SnatNoAddress)?;
    let mut key = FlowKey { saddr: meta.daddr, daddr: addr, sport: meta.dport, dport: 0, proto: meta.proto, family: meta.family, _pad: [0; 2] };
    let unmasq = FlowEntry {
        nat_addr: meta.saddr,
        nat_port: meta.sport,
        kind: FLOW_UNMASQ,
        family: meta.family,
        svc_id: reply.svc_id,
        backend_id: reply.backend_id,
        last_seen: clock::now_secs(),
        state: 0,
        _pad: [0; 3],
    };
    for _ in 0..SNAT_TRIES {
        // SAFETY: helper without arguments.
        key.dport = port_of(cfg, unsafe { bpf_get_prandom_u32() }).to_be();
        if XVS_CONNTRACK.insert(&key, &unmasq, u64::from(BPF_NOEXIST)).is_ok() {
            return Ok((addr, key.dport));
        }
    }
    Err(Reason::SnatPortsExhausted)
}

/// Whether a packet to no service is to a port masquerading takes: only those go on to the
/// unmasquerade program (one array read and two comparisons for everything else).
#[inline(always)]
pub fn in_port_range(meta: &PacketMeta) -> bool {
    let port = u16::from_be(meta.dport);
    config().is_some_and(|cfg| port >= cfg.port_min && port <= cfg.port_max)
}

/// The unmasquerade program (reached from ingress by tail call): a reply to a masquerade
/// address and port goes on to the flow's client, and so does an ICMP error about a
/// masqueraded packet (icmp.rs). Anything else is left alone (`NotService`).
#[inline(always)]
pub fn unmasquerade<P: Packet>(packet: &P) -> Result<Reason, Reason> {
    let ip = parse::parse_ip(packet.frame())?;
    if icmp::is_icmp(&ip) {
        return icmp::translate(packet, &ip, Way::Unmasquerade);
    }
    let meta = parse::parse_l4(packet.frame(), ip)?;
    let entry = conntrack::lookup(&conntrack::key_of(&meta), FLOW_UNMASQ).ok_or(Reason::NotService)?;
    packet.rewrite(&meta, End::Destination, &entry.nat_addr, entry.nat_port)?;
    Ok(Reason::Unmasquerade)
}
