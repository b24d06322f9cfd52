//! Socket-level load balancing (east-west): the cgroup hooks translate a cluster IP to a
//! backend when a socket connects (TCP, connected UDP) or sends (unconnected UDP), with the
//! packet path's service, slot and backend maps and schedulers, and show the VIP again where
//! the application asks for its peer (getpeername) or a datagram's source (recvmsg). The
//! packets of these connections carry the backend's address from the first one, so the packet
//! path never sees them. What each socket was translated to lives in `XVS_SOCK_NAT` (layout in
//! `xvs_common::sock`) until the socket is released.
//!
//! Only cluster IPs are translated: external VIPs (NodePort, externalIPs, load balancers) keep
//! their packet path, with its source ranges, traffic policies and masquerading.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::{SockAddrContext, SockContext},
    EbpfContext,
};
use xvs_common::{
    flow::{expired, FlowState},
    sock::{
        datagram_slot, netns_client, sent_to, translated_to, SockAddr, SockConfig, SockEntry, SockEvent, SockKey, AF_NETNS,
        SOCK_CFG_ENABLED, SOCK_CFG_HOST_NS_ONLY, SOCK_DATAGRAM_PEERS, SOCK_F_TRANSLATED, SOCK_PEER,
    },
    Backend, Reason, ServiceKey, ServiceValue, IPPROTO_TCP, IPPROTO_UDP, SERVICE_F_EXTERNAL,
};

use crate::{
    affinity, clock,
    maglev::Jump,
    maps::{XVS_SERVICES, XVS_SOCK_CONFIG, XVS_SOCK_EVENTS, XVS_SOCK_NAT},
    parse::PacketMeta,
    select, service, stats,
};

/// What a cgroup sock_addr program returns to let the call go on.
pub const PROCEED: i32 = 1;
/// ... and to refuse it (with the error set by `bpf_set_retval`).
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// mh's long walk needs a tail call, which a socket hook has no jump table for: the walk stops
/// after the inline hops and takes the precomputed next live bucket (counted as
/// `mh_walk_exhausted`). Its own walk entry keeps it off the packet programs' entries.
impl Jump for SockAddrContext {
    const WALK: u32 = 2;
    fn jump(&self, _index: u32) {}
}

/// The address family a hook serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

fn count(event: SockEvent) {
    if let Some(c) = XVS_SOCK_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// The destination (connect, sendmsg) or peer (recvmsg, getpeername) the hook holds.
#[inline(always)]
fn read_addr(ctx: &SockAddrContext, family: Family) -> (SockAddr, u16) {
    let sa = ctx.sock_addr;
    // SAFETY: the context of a sock_addr program; each field is read with one 4-byte load,
    // the width every kernel accepts for these fields.
    unsafe {
        let port = core::ptr::read_volatile(&raw const (*sa).user_port) as u16;
        let addr = match family {
            Family::V4 => SockAddr::v4(core::ptr::read_volatile(&raw const (*sa).user_ip4)),
            Family::V6 => {
                let ip6 = &raw const (*sa).user_ip6;
                SockAddr::v6([
                    core::ptr::read_volatile(&raw const (*ip6)[0]),
                    core::ptr::read_volatile(&raw const (*ip6)[1]),
                    core::ptr::read_volatile(&raw const (*ip6)[2]),
                    core::ptr::read_volatile(&raw const (*ip6)[3]),
                ])
            }
        };
        (addr, port)
    }
}

/// Replaces the hook's address with `addr:port_be` (of `like`'s kind: mapped or not).
#[inline(always)]
fn write_addr(ctx: &SockAddrContext, family: Family, like: &SockAddr, addr: &[u32; 4], port_be: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: as in `read_addr`; these fields are writable in every hook that calls this.
    unsafe {
        match family {
            Family::V4 => core::ptr::write_volatile(&raw mut (*sa).user_ip4, addr[0]),
            Family::V6 => {
                let words = like.v6_words(addr);
                let ip6 = &raw mut (*sa).user_ip6;
                core::ptr::write_volatile(&raw mut (*ip6)[0], words[0]);
                core::ptr::write_volatile(&raw mut (*ip6)[1], words[1]);
                core::ptr::write_volatile(&raw mut (*ip6)[2], words[2]);
                core::ptr::write_volatile(&raw mut (*ip6)[3], words[3]);
            }
        }
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(port_be));
    }
}

fn protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: the context's protocol field, readable in every sock_addr hook.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).protocol) as u8 }
}

fn cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: a helper taking the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The service a socket addresses at `dest:port`, when socket-level load balancing is on, it
/// is a cluster IP, and the socket's namespace is served; with its client (the namespace).
#[inline(always)]
fn service_of(ctx: &SockAddrContext, dest: &SockAddr, port_be: u16, proto: u8) -> Option<(*mut ServiceValue, [u32; 4])> {
    let config: SockConfig = XVS_SOCK_CONFIG.get(0).copied()?;
    if config.flags & SOCK_CFG_ENABLED == 0 {
        return None;
    }
    let key = ServiceKey { addr: dest.addr, port: port_be, proto, family: dest.family };
    let svc = XVS_SERVICES.get_ptr_mut(&key)?;
    // SAFETY: a live map value; one field read.
    if unsafe { (*svc).flags } & SERVICE_F_EXTERNAL != 0 {
        return None;
    }
    // SAFETY: a helper taking the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if config.flags & SOCK_CFG_HOST_NS_ONLY != 0 && netns != config.host_netns_cookie {
        count(SockEvent::OtherNamespace);
        return None;
    }
    Some((svc, netns_client(netns)))
}

/// A new connection's backend: the client's affinity binding if it holds, else the
/// service's scheduler, as the packet path picks for a new flow.
#[inline(always)]
fn schedule(ctx: &SockAddrContext, svc: *mut ServiceValue, client: [u32; 4], dest: &SockAddr, port_be: u16, proto: u8, now: u32) -> Result<(u32, Backend), Reason> {
    // SAFETY: a live map value, copied so the scheduler's cursor update stays in select.
    let value = unsafe { *svc };
    // The scheduler and affinity see the namespace as the client (sh hashes it, affinity keys
    // it under its own family); the client port is not chosen yet, so sh-port hashes 0.
    let meta = PacketMeta {
        l3_off: 0,
        l4_off: 0,
        family: AF_NETNS,
        proto,
        saddr: client,
        daddr: dest.addr,
        sport: 0,
        dport: port_be,
        tcp_flags: 0,
        l3_len: 0,
    };
    let bound = match affinity::find(&value, &meta, now) {
        Some(bound) => bound,
        None => {
            let id = select::select(ctx, svc, &meta)?;
            (id, service::backend(id).ok_or(Reason::BackendMissing)?)
        }
    };
    if value.affinity_timeout != 0 {
        affinity::remember(&value, &meta, bound.0, now);
    }
    Ok(bound)
}

/// Refuses the call as kube-proxy's REJECT rule does for a service without endpoints.
fn refuse() -> i32 {
    count(SockEvent::NoBackend);
    // SAFETY: plain helper; sets the error the refused syscall returns.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}

#[inline(always)]
fn entry_of(svc_id: u32, dest: &SockAddr, port_be: u16, proto: u8, backend_id: u32, backend: &Backend, now: u32) -> SockEntry {
    SockEntry {
        vip: dest.addr,
        backend: backend.addr,
        vport: port_be,
        backend_port: backend.port,
        family: dest.family,
        proto,
        flags: SOCK_F_TRANSLATED,
        datagram_peers: 0,
        svc_id,
        backend_id,
        last_seen: now,
        _pad: 0,
    }
}

/// connect4/connect6: a TCP or UDP socket connecting to a cluster IP is connected to a backend.
#[inline(always)]
pub fn connect(ctx: &SockAddrContext, family: Family) -> i32 {
    let proto = protocol(ctx);
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return PROCEED;
    }
    let (dest, port_be) = read_addr(ctx, family);
    let Some((svc, client)) = service_of(ctx, &dest, port_be, proto) else { return PROCEED };
    let now = clock::now_secs();
    let Ok((backend_id, backend)) = schedule(ctx, svc, client, &dest, port_be, proto, now) else { return refuse() };
    // SAFETY: a live map value; one field read.
    let svc_id = unsafe { (*svc).svc_id };
    let key = SockKey::new(cookie(ctx), SOCK_PEER);
    let mut entry = entry_of(svc_id, &dest, port_be, proto, backend_id, &backend, now);
    // A UDP socket may have sent unconnected before: its peers stay listed.
    // SAFETY: the value is copied out at once.
    entry.datagram_peers = unsafe { XVS_SOCK_NAT.get(&key) }.map_or(0, |e| e.datagram_peers);
    if XVS_SOCK_NAT.insert(&key, &entry, 0).is_err() {
        count(SockEvent::TableFull);
    }
    write_addr(ctx, family, &dest, &backend.addr, backend.port);
    stats::count_socket_conn(svc_id, backend_id);
    count(SockEvent::Connect);
    PROCEED
}

/// sendmsg4/sendmsg6: an unconnected UDP socket's datagram to a cluster IP goes to the backend
/// the socket has for that service while it keeps sending (IPVS's UDP timeout), else to a newly
/// scheduled one.
#[inline(always)]
pub fn sendmsg(ctx: &SockAddrContext, family: Family) -> i32 {
    let proto = protocol(ctx);
    if proto != IPPROTO_UDP {
        return PROCEED;
    }
    let (dest, port_be) = read_addr(ctx, family);
    let Some((svc, client)) = service_of(ctx, &dest, port_be, proto) else { return PROCEED };
    // SAFETY: a live map value, copied.
    let svc_id = unsafe { (*svc).svc_id };
    let now = clock::now_secs();
    let cookie = cookie(ctx);
    let header_key = SockKey::new(cookie, SOCK_PEER);
    // Read into a zeroed value rather than through an Option: LLVM once left part of the
    // `None` case's copy uninitialised, which the verifier refuses (sendmsg6: "!read_ok").
    let mut head = SockEntry::default();
    if let Some(found) = XVS_SOCK_NAT.get_ptr(&header_key) {
        // SAFETY: a live map value, copied.
        head = unsafe { *found };
    }
    let mut in_use = head.datagram_peers;
    let mut last_seen = [0u32; SOCK_DATAGRAM_PEERS as usize];
    let mut reuse = 0;
    for i in 0..SOCK_DATAGRAM_PEERS {
        if in_use & (1 << i) == 0 {
            continue;
        }
        let key = SockKey::new(cookie, i + 1);
        let Some(peer) = XVS_SOCK_NAT.get_ptr_mut(&key) else {
            // Evicted: free again.
            in_use &= !(1 << i);
            continue;
        };
        // SAFETY: a live map value, copied so the checks read one version.
        let e = unsafe { *peer };
        last_seen[i as usize] = e.last_seen;
        if !sent_to(&e, dest.family, proto, &dest.addr, port_be) {
            continue;
        }
        let held = !expired(FlowState::Datagram, e.last_seen, now) && e.svc_id == svc_id;
        if let Some(backend) = service::backend(e.backend_id).filter(|b| held && b.svc_id == svc_id) {
            if e.last_seen != now {
                // SAFETY: as above; racing sends write the same kind of value.
                unsafe { (*peer).last_seen = now };
            }
            write_addr(ctx, family, &dest, &backend.addr, backend.port);
            count(SockEvent::DatagramSticky);
            return PROCEED;
        }
        // Its backend went away or idled out: schedule again in the same place.
        reuse = i + 1;
    }
    let Ok((backend_id, backend)) = schedule(ctx, svc, client, &dest, port_be, proto, now) else { return refuse() };
    let index = if reuse != 0 { reuse } else { datagram_slot(in_use, &last_seen) };
    let entry = entry_of(svc_id, &dest, port_be, proto, backend_id, &backend, now);
    head.datagram_peers = in_use | 1 << (index - 1);
    let recorded = XVS_SOCK_NAT.insert(&SockKey::new(cookie, index), &entry, 0).is_ok()
        && XVS_SOCK_NAT.insert(&header_key, &head, 0).is_ok();
    if !recorded {
        count(SockEvent::TableFull);
    }
    write_addr(ctx, family, &dest, &backend.addr, backend.port);
    stats::count_socket_conn(svc_id, backend_id);
    count(SockEvent::DatagramNew);
    PROCEED
}

/// The VIP a socket's translation to `peer:port_be` stands for, looking at its connected peer
/// and, with `datagrams`, at its unconnected ones.
#[inline(always)]
fn restore(ctx: &SockAddrContext, family: Family, datagrams: bool) -> Option<()> {
    let (peer, port_be) = read_addr(ctx, family);
    let cookie = cookie(ctx);
    // SAFETY: copied out at once.
    let header = unsafe { XVS_SOCK_NAT.get(&SockKey::new(cookie, SOCK_PEER)) }.copied()?;
    if translated_to(&header, peer.family, &peer.addr, port_be) {
        write_addr(ctx, family, &peer, &header.vip, header.vport);
        return Some(());
    }
    if !datagrams {
        return None;
    }
    for i in 0..SOCK_DATAGRAM_PEERS {
        if header.datagram_peers & (1 << i) == 0 {
            continue;
        }
        // SAFETY: copied out at once.
        let Some(e) = (unsafe { XVS_SOCK_NAT.get(&SockKey::new(cookie, i + 1)) }).copied() else { continue };
        if translated_to(&e, peer.family, &peer.addr, port_be) {
            write_addr(ctx, family, &peer, &e.vip, e.vport);
            return Some(());
        }
    }
    None
}

/// recvmsg4/recvmsg6: a datagram from a backend a socket was sent to shows the VIP as source.
#[inline(always)]
pub fn recvmsg(ctx: &SockAddrContext, family: Family) -> i32 {
    if restore(ctx, family, true).is_some() {
        count(SockEvent::ReplyRestored);
    }
    PROCEED
}

/// getpeername4/getpeername6: a socket connected through a VIP has the VIP as its peer.
#[inline(always)]
pub fn getpeername(ctx: &SockAddrContext, family: Family) -> i32 {
    if restore(ctx, family, false).is_some() {
        count(SockEvent::PeerRestored);
    }
    PROCEED
}

/// sock_release: a socket's translations go with it.
#[inline(always)]
pub fn release(ctx: &SockContext) -> i32 {
    let cookie = cookie(ctx);
    let key = SockKey::new(cookie, SOCK_PEER);
    // SAFETY: copied out at once.
    let Some(header) = (unsafe { XVS_SOCK_NAT.get(&key) }).copied() else { return PROCEED };
    for i in 0..SOCK_DATAGRAM_PEERS {
        if header.datagram_peers & (1 << i) != 0 {
            let _ = XVS_SOCK_NAT.remove(&SockKey::new(cookie, i + 1));
        }
    }
    let _ = XVS_SOCK_NAT.remove(&key);
    PROCEED
}
