//! Every BPF map of the datapath, declared once; layouts and names come from `xvs_common`.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use xvs_common::{
    maglev::{MhWalk, JUMP_ENTRIES},
    reason::REASON_COUNT, AffinityEntry, AffinityKey, Backend, Counters, FlowEntry, FlowKey, NatAddrKey, NatConfig, ServiceKey,
    ServiceValue, SlotKey, SourceRange, MAX_AFFINITY, MAX_BACKENDS, MAX_FLOWS, MAX_NAT_ADDRS, MAX_SERVICES, MAX_SLOTS,
    MAX_SOURCE_RANGES,
    sock::{SockConfig, SockEntry, SockKey, MAX_SOCK_NAT, SOCK_EVENT_COUNT},
};

// Written by the agent only, so entries can be allocated on update (no prealloc): the map
// costs memory for what is configured, not for its capacity.
#[map(name = "XVS_SERVICES")]
pub static XVS_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "XVS_SLOTS")]
pub static XVS_SLOTS: HashMap<SlotKey, u32> =
    HashMap::with_max_entries(MAX_SLOTS, BPF_F_NO_PREALLOC);

#[map(name = "XVS_BACKENDS")]
pub static XVS_BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

// LRU: a full table evicts the least recently used flow instead of refusing new ones.
#[map(name = "XVS_CONNTRACK")]
pub static XVS_CONNTRACK: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);

// LRU: a full table forgets the least recently seen client (it only loses stickiness).
#[map(name = "XVS_AFFINITY")]
pub static XVS_AFFINITY: LruHashMap<AffinityKey, AffinityEntry> =
    LruHashMap::with_max_entries(MAX_AFFINITY, 0);

#[map(name = "XVS_SERVICE_STATS")]
pub static XVS_SERVICE_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "XVS_BACKEND_STATS")]
pub static XVS_BACKEND_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "XVS_CLOCK")]
pub static XVS_CLOCK: Array<u32> = Array::with_max_entries(1, 0);

// The agent's record of when each drain started (the datapath never reads it); declared here
// so it is created and pinned with the rest.
#[map(name = "XVS_DRAINS")]
pub static XVS_DRAINS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_BACKENDS, BPF_F_NO_PREALLOC);

// LPM tries must not be preallocated.
#[map(name = "XVS_SOURCE_RANGES")]
pub static XVS_SOURCE_RANGES: LpmTrie<SourceRange, u8> = LpmTrie::with_max_entries(MAX_SOURCE_RANGES, BPF_F_NO_PREALLOC);

// Masquerading (snat.rs): the configuration, and each served interface's address per family.
#[map(name = "XVS_NAT")]
pub static XVS_NAT: Array<NatConfig> = Array::with_max_entries(1, 0);

#[map(name = "XVS_NAT_ADDRS")]
pub static XVS_NAT_ADDRS: HashMap<NatAddrKey, [u32; 4]> = HashMap::with_max_entries(MAX_NAT_ADDRS, BPF_F_NO_PREALLOC);

// Socket-level load balancing (sock.rs): each socket's translations (LRU: sockets that predate
// the programs are never released through them), what the hooks did, and the agent's settings.
#[map(name = "XVS_SOCK_NAT")]
pub static XVS_SOCK_NAT: LruHashMap<SockKey, SockEntry> = LruHashMap::with_max_entries(MAX_SOCK_NAT, 0);

#[map(name = "XVS_SOCK_EVENTS")]
pub static XVS_SOCK_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SOCK_EVENT_COUNT, 0);

#[map(name = "XVS_SOCK_CONFIG")]
pub static XVS_SOCK_CONFIG: Array<SockConfig> = Array::with_max_entries(1, 0);

// The ABI stamp of the build that created the pins (the datapath never reads it).
#[map(name = "XVS_STAMP")]
pub static XVS_STAMP: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "XVS_REASONS")]
pub static XVS_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

// mh's long walks (maglev.rs): the walker and the ingress program of each program type (a jump
// table serves one type), and each CPU's walk in progress (XDP, TC, socket hooks). Not pinned: set by the
// agent that loaded the programs, they are cleared when it exits, and the datapath then takes
// the precomputed fallback until the next agent loads its own.
#[map(name = "XVS_XDP_JUMP")]
pub static XVS_XDP_JUMP: ProgramArray = ProgramArray::with_max_entries(JUMP_ENTRIES, 0);

#[map(name = "XVS_TC_JUMP")]
pub static XVS_TC_JUMP: ProgramArray = ProgramArray::with_max_entries(JUMP_ENTRIES, 0);

#[map(name = "XVS_MH_WALK")]
pub static XVS_MH_WALK: PerCpuArray<MhWalk> = PerCpuArray::with_max_entries(3, 0);
