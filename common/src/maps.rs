//! Map names, sizes and the key/value layouts of every BPF map xvs uses.
//!
//! Conventions: addresses are stored as four 32-bit words holding the raw network-order bytes
//! (IPv4 in word 0, words 1..3 zero); ports are raw network-order u16. Id 0 is reserved in every
//! id space (service, backend) so that a zeroed value can never look valid.

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Served by the IPVS mirror only: the eBPF datapath passes SCTP to the stack (see README).
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_ICMPV6: u8 = 58;

/// (VIP, port, proto) -> [`ServiceValue`]. Hash map.
pub const MAP_SERVICES: &str = "XVS_SERVICES";
/// ([`SlotKey`]) -> backend id: the per-service selection table. Hash map.
pub const MAP_SLOTS: &str = "XVS_SLOTS";
/// backend id -> [`Backend`]. Array indexed by backend id.
pub const MAP_BACKENDS: &str = "XVS_BACKENDS";
/// [`FlowKey`] -> [`FlowEntry`]: the connection table, forward and reply entries. LRU hash.
pub const MAP_CONNTRACK: &str = "XVS_CONNTRACK";
/// service id -> [`Counters`]. Per-CPU array.
pub const MAP_SERVICE_STATS: &str = "XVS_SERVICE_STATS";
/// backend id -> [`Counters`]. Per-CPU array.
pub const MAP_BACKEND_STATS: &str = "XVS_BACKEND_STATS";
/// [`crate::Reason`] -> packet count. Per-CPU array.
pub const MAP_REASONS: &str = "XVS_REASONS";
/// [`AffinityKey`] -> [`AffinityEntry`]: session affinity (IPVS persistence). LRU hash.
pub const MAP_AFFINITY: &str = "XVS_AFFINITY";
/// 0 -> u32 seconds added to CLOCK_MONOTONIC: the datapath's clock is `monotonic + offset`.
/// Always 0 in service; tests move it forward to age flows and affinity (a machine that booted
/// a minute ago has no "15 minutes ago"). Array of one.
pub const MAP_CLOCK: &str = "XVS_CLOCK";
/// backend id -> u32 datapath-clock second its drain started: kept in the pins so a drain
/// ends on time however often the agent restarts. Written by the agent only. Hash map.
pub const MAP_DRAINS: &str = "XVS_DRAINS";

/// ([`SourceRange`] as an LPM key: service id, then client address) -> 1: the clients allowed
/// to open flows to a service with `SERVICE_F_SOURCE_RANGES` (kube-proxy's
/// `loadBalancerSourceRanges`). LPM trie.
pub const MAP_SOURCE_RANGES: &str = "XVS_SOURCE_RANGES";
/// Capacity of [`MAP_SOURCE_RANGES`] (ranges of all services together).
pub const MAX_SOURCE_RANGES: u32 = 16_384;

/// 0 -> [`ABI_VERSION`] of the build that created the pinned maps: a restart adopts pins only
/// from a build whose maps mean the same (the layout check covers sizes; this covers meaning,
/// such as what a slot value holds). Written by the agent only. Array of one.
pub const MAP_STAMP: &str = "XVS_STAMP";
/// Raised whenever the meaning of a pinned map changes, even with the same layout.
/// 2: Backend.last_weight; mh slots carry their fallback in the high 16 bits.
pub const ABI_VERSION: u64 = 2;

/// 0 -> [`NatConfig`]: how new flows are masqueraded (kube-proxy's `--cluster-cidr`,
/// `--masquerade-all`, the SNAT port range). Written by the agent only. Array of one.
pub const MAP_NAT: &str = "XVS_NAT";
/// [`NatAddrKey`] (interface, family) -> the address flows leaving that interface are
/// masqueraded to, for each interface xvs serves. Written by the agent only. Hash map.
pub const MAP_NAT_ADDRS: &str = "XVS_NAT_ADDRS";
/// Capacity of [`MAP_NAT_ADDRS`].
pub const MAX_NAT_ADDRS: u32 = 1024;

/// Every map, in the order the agent pins and reports them.
pub const ALL_MAPS: [&str; 17] = [
    MAP_SERVICES,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_CONNTRACK,
    MAP_AFFINITY,
    MAP_SERVICE_STATS,
    MAP_BACKEND_STATS,
    MAP_REASONS,
    MAP_CLOCK,
    MAP_DRAINS,
    MAP_STAMP,
    MAP_SOURCE_RANGES,
    MAP_NAT,
    MAP_NAT_ADDRS,
    crate::sock::MAP_SOCK_NAT,
    crate::sock::MAP_SOCK_EVENTS,
    crate::sock::MAP_SOCK_CONFIG,
];

/// Default capacities. The agent may raise them at load time (aya `set_max_entries`).
pub const MAX_SERVICES: u32 = 8192;
pub const MAX_BACKENDS: u32 = 65536;
pub const MAX_SLOTS: u32 = 262_144;
pub const MAX_FLOWS: u32 = 262_144;
pub const MAX_AFFINITY: u32 = 65_536;

/// Scheduler of a service, IPVS names and semantics.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheduler {
    /// Round robin over the active backends.
    RoundRobin = 1,
    /// IPVS weighted round robin (the kernel's exact sequence).
    WeightedRoundRobin = 2,
    /// IPVS source hashing: a 256-bucket table indexed by a hash of the client address.
    SourceHash = 3,
    /// IPVS Maglev hashing: a 4093-bucket consistent-hash table indexed by the kernel's
    /// siphash of the client address (see [`crate::maglev`]).
    MaglevHash = 4,
}

impl Scheduler {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::RoundRobin),
            2 => Some(Self::WeightedRoundRobin),
            3 => Some(Self::SourceHash),
            4 => Some(Self::MaglevHash),
            _ => None,
        }
    }

    /// The name `ipvsadm` prints for this scheduler.
    pub const fn ipvs_name(self) -> &'static str {
        match self {
            Self::RoundRobin => "rr",
            Self::WeightedRoundRobin => "wrr",
            Self::SourceHash => "sh",
            Self::MaglevHash => "mh",
        }
    }
}

/// Key of [`MAP_SERVICES`]: one virtual service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Non-zero service id: indexes the stats arrays and names the slot table.
    pub svc_id: u32,
    /// First slot of the live selection table. The agent writes a new table beside the old one
    /// and then flips this base, so a packet never sees a half-written table.
    pub slot_base: u32,
    /// Number of slots in the live table; 0 means no backend can take new flows.
    pub slot_count: u32,
    /// Round-robin position, advanced with an atomic fetch-add shared by all CPUs.
    pub rr_cursor: u32,
    /// A [`Scheduler`] as u8.
    pub scheduler: u8,
    /// `SERVICE_F_*` bits.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Session affinity (IPVS persistence) timeout in seconds; 0 = no affinity.
    pub affinity_timeout: u32,
    /// `rr_cursor` as the agent wrote it with this table: equal means no flow was scheduled
    /// since, so the kernel's scheduler still stands where `sched_state` says.
    pub sched_mark: u32,
    /// Where IPVS's scheduler stood when this table was written: rr, the list stamp
    /// ([`Backend::seq`]) of the destination it continues after (0: the list head); wrr, its
    /// current weight level `cw`. Read by the agent only, to resume as the kernel does.
    pub sched_state: u32,
}

/// Include the client port in the source hash (IPVS `IP_VS_SVC_F_SCHED_SH_PORT`, or
/// `IP_VS_SVC_F_SCHED_MH_PORT` for mh: the same bit).
pub const SERVICE_F_SH_PORT: u8 = 1;
/// Only clients inside the service's ranges in [`MAP_SOURCE_RANGES`] open new flows.
pub const SERVICE_F_SOURCE_RANGES: u8 = 2;
/// An external VIP (NodePort, externalIP, LoadBalancer ingress): kube-proxy masquerades its
/// traffic unless the service keeps the client's address (see [`crate::snat`]).
pub const SERVICE_F_EXTERNAL: u8 = 4;
/// `externalTrafficPolicy: Local` on an external VIP: the client's address is kept.
pub const SERVICE_F_KEEP_CLIENT: u8 = 8;

/// The data of a [`MAP_SOURCE_RANGES`] key: an LPM key matches bits in memory order, so the
/// service id is big-endian and every prefix length counts its 32 bits first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRange {
    pub svc_id_be: u32,
    pub addr: [u32; 4],
}

impl SourceRange {
    /// The LPM prefix length of a range of `bits` address bits.
    pub const fn prefix_len(bits: u8) -> u32 {
        32 + bits as u32
    }
}

/// Key of [`MAP_SLOTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub svc_id: u32,
    pub slot: u32,
}

/// Value of [`MAP_BACKENDS`] (index = backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u8,
    /// `BACKEND_F_*` bits; an entry without `BACKEND_F_PRESENT` is a removed backend.
    pub flags: u8,
    /// The service this backend belongs to; a flow pinned to a backend of another service
    /// (an id reused after removal) is rescheduled.
    pub svc_id: u32,
    /// Configured weight (what `xvs list -n` shows); the datapath uses the selection table.
    pub weight: u32,
    /// Position in the service's IPVS destination list: IPVS puts every added destination at
    /// the head, so the list runs from the highest stamp to the lowest. Kept in the pins so a
    /// restarted agent knows the order the kernel has.
    pub seq: u32,
    /// IPVS's `last_weight`: the latest non-zero weight (or the weight it was added with),
    /// which mh builds its table from, so a destination drained to weight 0 keeps its buckets.
    pub last_weight: u32,
}

pub const BACKEND_F_PRESENT: u8 = 1;
/// Weight 0 or terminating: no new flows (not even through session affinity); established
/// flows continue.
pub const BACKEND_F_DRAINING: u8 = 2;

/// Key of [`MAP_CONNTRACK`]: a 5-tuple as seen on the wire in the packet's own direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// For a forward key (client -> VIP) DNATed to `backend`, the key replies arrive with
    /// (backend -> client).
    pub const fn reply_of(&self, backend_addr: [u32; 4], backend_port: u16) -> Self {
        Self {
            saddr: backend_addr,
            daddr: self.saddr,
            sport: backend_port,
            dport: self.sport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }

    /// For a reply key (backend -> client) whose flow was addressed to `vip`, the forward key
    /// (client -> VIP).
    pub const fn forward_of(&self, vip_addr: [u32; 4], vip_port: u16) -> Self {
        Self {
            saddr: self.daddr,
            daddr: vip_addr,
            sport: self.dport,
            dport: vip_port,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// Value of [`MAP_CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// Forward entry: the backend address to DNAT to. Reply entry: the VIP to SNAT back to.
    pub nat_addr: [u32; 4],
    pub nat_port: u16,
    /// `FLOW_FORWARD` or `FLOW_REPLY`.
    pub kind: u8,
    pub family: u8,
    pub svc_id: u32,
    pub backend_id: u32,
    /// CLOCK_MONOTONIC seconds of the last packet (forward entries; see [`crate::flow`]).
    pub last_seen: u32,
    /// A [`crate::flow::FlowState`] as u8 (forward entries).
    pub state: u8,
    pub _pad: [u8; 3],
}

/// Key of [`MAP_AFFINITY`]: one client of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: [u32; 4],
    pub svc_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of [`MAP_AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityEntry {
    pub backend_id: u32,
    /// CLOCK_MONOTONIC seconds of the last new flow or packet that used this entry.
    pub last_seen: u32,
}

pub const FLOW_FORWARD: u8 = 1;
pub const FLOW_REPLY: u8 = 2;
/// A flow's packets after DNAT (client -> backend), as TC egress sees them, recorded by the
/// flow's first packet out (snat.rs): `nat_addr`/`nat_port` are the source to masquerade to,
/// or port 0 when the flow keeps its client's address. Lives and dies with its flow.
pub const FLOW_MASQ: u8 = 3;
/// Replies to a masquerade address and port (backend -> node:port), as ingress sees them:
/// `nat_addr`/`nat_port` are the client's address and port to send them on to.
pub const FLOW_UNMASQ: u8 = 4;

/// One cluster CIDR (kube-proxy's `--cluster-cidr`): an address is inside when
/// `addr & mask == net`, word by word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterCidr {
    pub net: [u32; 4],
    pub mask: [u32; 4],
}

impl ClusterCidr {
    pub const fn contains(&self, addr: &[u32; 4]) -> bool {
        let mut w = 0;
        while w < 4 {
            if addr[w] & self.mask[w] != self.net[w] {
                return false;
            }
            w += 1;
        }
        true
    }
}

/// Value of [`MAP_NAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// The pod CIDR of each family: IPv4 at 0, IPv6 at 1, each valid with its `NAT_F_CIDR_*` bit.
    pub cluster_cidr: [ClusterCidr; 2],
    /// The SNAT port range, host order, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    /// `NAT_F_*` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// Masquerading is configured (port range valid); without it no flow is masqueraded.
pub const NAT_F_ENABLED: u8 = 1;
/// kube-proxy's `--masquerade-all`: every flow to a cluster IP is masqueraded.
pub const NAT_F_MASQUERADE_ALL: u8 = 2;
pub const NAT_F_CIDR_V4: u8 = 4;
pub const NAT_F_CIDR_V6: u8 = 8;

/// Key of [`MAP_NAT_ADDRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatAddrKey {
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of the per-CPU stats arrays, shaped like IPVS's per-service/per-destination stats.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// New connections scheduled.
    pub conns: u64,
    /// Client -> service packets and bytes (L3 length).
    pub in_pkts: u64,
    pub in_bytes: u64,
    /// Service -> client (reply) packets and bytes.
    pub out_pkts: u64,
    pub out_bytes: u64,
}

impl Counters {
    /// Sums per-CPU values into one.
    pub fn add(&mut self, other: &Self) {
        self.conns += other.conns;
        self.in_pkts += other.in_pkts;
        self.in_bytes += other.in_bytes;
        self.out_pkts += other.out_pkts;
        self.out_bytes += other.out_bytes;
    }
}

// The layouts are ABI: pin their sizes so an accidental change (or implicit padding) fails the
// build on both sides.
const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 20);
    assert!(core::mem::size_of::<ServiceValue>() == 32);
    assert!(core::mem::size_of::<SlotKey>() == 8);
    assert!(core::mem::size_of::<Backend>() == 36);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowEntry>() == 36);
    assert!(core::mem::size_of::<AffinityKey>() == 24);
    assert!(core::mem::size_of::<AffinityEntry>() == 8);
    assert!(core::mem::size_of::<Counters>() == 40);
    assert!(core::mem::size_of::<NatConfig>() == 72);
    assert!(core::mem::size_of::<NatAddrKey>() == 8);
};

/// Turns an IPv4 address into the map representation.
pub const fn addr_v4(octets: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// Turns an IPv6 address into the map representation.
pub const fn addr_v6(octets: [u8; 16]) -> [u32; 4] {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ]);
        i += 1;
    }
    words
}

/// The raw network-order bytes of a map address (16 bytes; IPv4 uses the first 4).
pub const fn addr_octets(addr: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = addr[i].to_ne_bytes();
        out[4 * i] = b[0];
        out[4 * i + 1] = b[1];
        out[4 * i + 2] = b[2];
        out[4 * i + 3] = b[3];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_and_forward_keys_are_inverse() {
        let fwd = FlowKey { saddr: addr_v4([10, 0, 1, 2]), daddr: addr_v4([10, 96, 0, 10]), sport: 40000u16.to_be(), dport: 80u16.to_be(), proto: IPPROTO_TCP, family: AF_INET, _pad: [0; 2] };
        let backend = addr_v4([10, 0, 11, 2]);
        let reply = fwd.reply_of(backend, 8080u16.to_be());
        assert_eq!((reply.saddr, reply.daddr, u16::from_be(reply.sport), u16::from_be(reply.dport)), (backend, fwd.saddr, 8080, 40000));
        assert_eq!(reply.forward_of(fwd.daddr, fwd.dport), fwd);
    }
}
