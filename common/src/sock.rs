//! Socket-level load balancing (east-west): the cgroup programs translate a service VIP to a
//! backend once, when a socket connects (or, for unconnected UDP, when it sends), so the
//! packets of these flows carry the backend's address from the start and never need NAT.
//!
//! What a socket was translated to is kept per socket, keyed by its cookie, so that
//! `getpeername` and `recvmsg` can show the VIP again:
//! - index 0 ([`SOCK_PEER`]): the socket's connected peer (TCP, or connected UDP), and the mask
//!   of the unconnected peers in use;
//! - indexes 1..=[`SOCK_DATAGRAM_PEERS`]: the services an unconnected UDP socket sends to, each
//!   with the backend its datagrams go to. A socket keeps its backend per service while it
//!   keeps sending (IPVS's UDP timeout), as the packet path keeps a client port's flow.
//!
//! The entries of a socket are removed when it is released (`cgroup/sock_release`); the map is
//! an LRU besides, for sockets that predate the programs.

use crate::{AF_INET, AF_INET6};

/// [`SockKey`] -> [`SockEntry`]: what each socket was translated to. LRU hash.
pub const MAP_SOCK_NAT: &str = "XVS_SOCK_NAT";
/// [`SockEvent`] -> count. Per-CPU array.
pub const MAP_SOCK_EVENTS: &str = "XVS_SOCK_EVENTS";
/// 0 -> [`SockConfig`]. Written by the agent only. Array of one.
pub const MAP_SOCK_CONFIG: &str = "XVS_SOCK_CONFIG";
/// Capacity of [`MAP_SOCK_NAT`]: sockets (and unconnected peers) of the node at once.
pub const MAX_SOCK_NAT: u32 = 131_072;

/// The index of a socket's connected peer (and its peer mask).
pub const SOCK_PEER: u32 = 0;
/// How many services one unconnected UDP socket sends to at once with the VIP restored on
/// its replies; a further one takes the place of the one used longest ago.
pub const SOCK_DATAGRAM_PEERS: u32 = 4;

/// Key of [`MAP_SOCK_NAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// [`SOCK_PEER`], or 1..=[`SOCK_DATAGRAM_PEERS`].
    pub index: u32,
    pub _pad: u32,
}

impl SockKey {
    pub const fn new(cookie: u64, index: u32) -> Self {
        Self { cookie, index, _pad: 0 }
    }
}

/// Value of [`MAP_SOCK_NAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEntry {
    /// The service's VIP and port (network order), as the application addressed it.
    pub vip: [u32; 4],
    /// The backend the socket was sent to instead.
    pub backend: [u32; 4],
    pub vport: u16,
    pub backend_port: u16,
    /// The service's family (an IPv4 service reached through an IPv4-mapped IPv6 address is
    /// AF_INET).
    pub family: u8,
    pub proto: u8,
    /// `SOCK_F_*` bits.
    pub flags: u8,
    /// In the [`SOCK_PEER`] entry: bit `i - 1` set when unconnected peer `i` is in use.
    pub datagram_peers: u8,
    pub svc_id: u32,
    pub backend_id: u32,
    /// Datapath-clock second of the socket's last send to this service (unconnected UDP).
    pub last_seen: u32,
    pub _pad: u32,
}

/// The entry holds a translation (a [`SOCK_PEER`] entry may hold only the peer mask).
pub const SOCK_F_TRANSLATED: u8 = 1;

/// Value of [`MAP_SOCK_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockConfig {
    /// The host's network namespace cookie, for [`SOCK_CFG_HOST_NS_ONLY`].
    pub host_netns_cookie: u64,
    /// `SOCK_CFG_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// Socket-level load balancing is on; without it the programs leave every socket alone (an
/// agent that turned it off, while pinned links remain).
pub const SOCK_CFG_ENABLED: u32 = 1;
/// Only sockets of the host's network namespace are translated; pods' connections go to the
/// VIP and through the packet path (for service meshes whose sidecars must see the VIP).
pub const SOCK_CFG_HOST_NS_ONLY: u32 = 2;

/// What the cgroup programs did, counted per CPU in [`MAP_SOCK_EVENTS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockEvent {
    /// A connect to a VIP went to a backend (TCP, or connected UDP).
    Connect = 0,
    /// An unconnected UDP socket's send to a VIP was scheduled to a backend (its first, or the
    /// first after its backend went away or idled out).
    DatagramNew = 1,
    /// An unconnected UDP socket's send to a VIP went to the backend it already had.
    DatagramSticky = 2,
    /// A received datagram's source was shown as the VIP again (recvmsg).
    ReplyRestored = 3,
    /// getpeername showed the VIP.
    PeerRestored = 4,
    /// Refused: the service has no backend that takes new connections (the application sees
    /// ECONNREFUSED, as kube-proxy's REJECT rule gives it).
    NoBackend = 5,
    /// A new connection's backend could not be recorded (no memory): it still went to the
    /// backend, but getpeername and recvmsg show the backend's address.
    TableFull = 6,
    /// Left alone: the socket's network namespace is not the host's (`--socket-lb-hostns-only`).
    OtherNamespace = 7,
}

pub const SOCK_EVENT_COUNT: u32 = 8;

impl SockEvent {
    pub const ALL: [Self; SOCK_EVENT_COUNT as usize] = [
        Self::Connect,
        Self::DatagramNew,
        Self::DatagramSticky,
        Self::ReplyRestored,
        Self::PeerRestored,
        Self::NoBackend,
        Self::TableFull,
        Self::OtherNamespace,
    ];

    /// Stable snake_case name used in metrics and CLI output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::DatagramNew => "datagram_new",
            Self::DatagramSticky => "datagram_sticky",
            Self::ReplyRestored => "reply_restored",
            Self::PeerRestored => "peer_restored",
            Self::NoBackend => "no_backend",
            Self::TableFull => "table_full",
            Self::OtherNamespace => "other_namespace",
        }
    }
}

/// An address as a socket hook sees it, made a service address: IPv4, IPv6, or an IPv4 address
/// an IPv6 socket reaches as `::ffff:a.b.c.d` (dual-stack applications, Java's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockAddr {
    pub family: u8,
    pub addr: [u32; 4],
    /// Came as (and goes back as) an IPv4-mapped IPv6 address.
    pub mapped: bool,
}

/// `::ffff:0:0/96`'s third word, in network order.
const MAPPED_PREFIX_BE: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl SockAddr {
    pub const fn v4(word: u32) -> Self {
        Self { family: AF_INET, addr: [word, 0, 0, 0], mapped: false }
    }

    /// An IPv6 hook's address: IPv4-mapped ones become the IPv4 address they carry.
    pub const fn v6(words: [u32; 4]) -> Self {
        if words[0] == 0 && words[1] == 0 && words[2] == MAPPED_PREFIX_BE {
            Self { family: AF_INET, addr: [words[3], 0, 0, 0], mapped: true }
        } else {
            Self { family: AF_INET6, addr: words, mapped: false }
        }
    }

    /// The four words an IPv6 hook writes back for `addr` of this socket.
    pub const fn v6_words(&self, addr: &[u32; 4]) -> [u32; 4] {
        if self.mapped { [0, 0, MAPPED_PREFIX_BE, addr[0]] } else { *addr }
    }
}

/// Whether entry `e` is the translation of a socket to `backend:port` (family `family`).
pub const fn translated_to(e: &SockEntry, family: u8, backend: &[u32; 4], port_be: u16) -> bool {
    e.flags & SOCK_F_TRANSLATED != 0
        && e.family == family
        && e.backend_port == port_be
        && e.backend[0] == backend[0]
        && e.backend[1] == backend[1]
        && e.backend[2] == backend[2]
        && e.backend[3] == backend[3]
}

/// Whether entry `e` is the translation of a socket's sends to `vip:port` (family, protocol).
pub const fn sent_to(e: &SockEntry, family: u8, proto: u8, vip: &[u32; 4], port_be: u16) -> bool {
    e.flags & SOCK_F_TRANSLATED != 0
        && e.family == family
        && e.proto == proto
        && e.vport == port_be
        && e.vip[0] == vip[0]
        && e.vip[1] == vip[1]
        && e.vip[2] == vip[2]
        && e.vip[3] == vip[3]
}

/// The client a socket stands for in sh and session affinity: its network namespace. A pod has
/// one address, so its namespace is its client address (Cilium keys socket-level affinity by
/// the netns cookie too); the node's own sockets share the host's, as they share its address.
/// At connect time the socket's own address is not chosen yet, so the address itself is not
/// available. Hashed as an IPv6 address (all four words); never equal to a real client's
/// key, as it has its own family value ([`AF_NETNS`]).
pub const fn netns_client(cookie: u64) -> [u32; 4] {
    [cookie as u32, (cookie >> 32) as u32, 0, 0]
}

/// The family of a [`netns_client`] in affinity keys.
pub const AF_NETNS: u8 = 0xfe;

/// The unconnected-peer index to record a new service in: the first free one, else the one
/// used longest ago (`last_seen[i - 1]` of peer `i`).
pub const fn datagram_slot(in_use: u8, last_seen: &[u32; SOCK_DATAGRAM_PEERS as usize]) -> u32 {
    let mut i = 0;
    while i < SOCK_DATAGRAM_PEERS {
        if in_use & (1 << i) == 0 {
            return i + 1;
        }
        i += 1;
    }
    let mut oldest = 0;
    let mut j = 1;
    while j < SOCK_DATAGRAM_PEERS as usize {
        if last_seen[j] < last_seen[oldest] {
            oldest = j;
        }
        j += 1;
    }
    oldest as u32 + 1
}

const _: () = {
    assert!(core::mem::size_of::<SockKey>() == 16);
    assert!(core::mem::size_of::<SockEntry>() == 56);
    assert!(core::mem::size_of::<SockConfig>() == 16);
    assert!(SOCK_DATAGRAM_PEERS <= 8);
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr_v4, addr_v6, IPPROTO_UDP};

    #[test]
    fn ipv4_mapped_addresses_are_ipv4_services_and_go_back_mapped() {
        let mapped = addr_v6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]);
        let a = SockAddr::v6(mapped);
        assert_eq!((a.family, a.addr, a.mapped), (AF_INET, addr_v4([10, 96, 0, 10]), true));
        assert_eq!(a.v6_words(&addr_v4([10, 0, 11, 2])), addr_v6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 11, 2]));
        let v6 = addr_v6([0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        let b = SockAddr::v6(v6);
        assert_eq!((b.family, b.addr, b.mapped), (AF_INET6, v6, false));
        assert_eq!(b.v6_words(&v6), v6);
        // ::ffff:0:0/96 only: an IPv4-compatible address (::a.b.c.d) is an IPv6 address.
        let compat = addr_v6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 96, 0, 10]);
        assert_eq!(SockAddr::v6(compat).family, AF_INET6);
    }

    #[test]
    fn entries_match_on_every_word_and_only_when_translated() {
        let e = SockEntry {
            vip: addr_v4([10, 96, 0, 10]),
            backend: addr_v4([10, 0, 11, 2]),
            vport: 53u16.to_be(),
            backend_port: 5353u16.to_be(),
            family: AF_INET,
            proto: IPPROTO_UDP,
            flags: SOCK_F_TRANSLATED,
            ..SockEntry::default()
        };
        assert!(translated_to(&e, AF_INET, &addr_v4([10, 0, 11, 2]), 5353u16.to_be()));
        assert!(!translated_to(&e, AF_INET, &addr_v4([10, 0, 11, 3]), 5353u16.to_be()));
        assert!(!translated_to(&e, AF_INET, &addr_v4([10, 0, 11, 2]), 53u16.to_be()));
        assert!(!translated_to(&e, AF_INET6, &addr_v4([10, 0, 11, 2]), 5353u16.to_be()));
        assert!(sent_to(&e, AF_INET, IPPROTO_UDP, &addr_v4([10, 96, 0, 10]), 53u16.to_be()));
        assert!(!sent_to(&e, AF_INET, 6, &addr_v4([10, 96, 0, 10]), 53u16.to_be()));
        let mut other = e;
        other.vip[3] = 1;
        assert!(!sent_to(&other, AF_INET, IPPROTO_UDP, &addr_v4([10, 96, 0, 10]), 53u16.to_be()));
        let header = SockEntry { flags: 0, ..e };
        assert!(!translated_to(&header, AF_INET, &addr_v4([10, 0, 11, 2]), 5353u16.to_be()));
        assert!(!sent_to(&header, AF_INET, IPPROTO_UDP, &addr_v4([10, 96, 0, 10]), 53u16.to_be()));
    }

    #[test]
    fn datagram_peers_fill_free_slots_then_replace_the_oldest() {
        assert_eq!(datagram_slot(0, &[0; 4]), 1);
        assert_eq!(datagram_slot(0b0001, &[0; 4]), 2);
        assert_eq!(datagram_slot(0b1011, &[0; 4]), 3);
        assert_eq!(datagram_slot(0b1111, &[50, 20, 30, 40]), 2);
        assert_eq!(datagram_slot(0b1111, &[50, 60, 70, 10]), 4);
    }

    #[test]
    fn namespaces_are_distinct_clients() {
        assert_ne!(netns_client(4096), netns_client(4097));
        assert_eq!(netns_client(0x1_0000_0002), [2, 1, 0, 0]);
    }
}
