//! Harness for the root-only kernel tests: loads the real eBPF object, builds packets with an
//! independent implementation (etherparse computes every checksum from scratch), runs programs
//! through BPF_PROG_TEST_RUN and reads counters back.
#![expect(clippy::missing_panics_doc, reason = "test harness: a panic is a test failure")]

pub mod agent;
pub mod bench;
pub mod cluster;
pub mod differential;
pub mod icmp_frames;
pub mod image;
pub mod kube;
pub mod pins;
pub mod sockets;
pub mod topology;

use std::net::{IpAddr, SocketAddr};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{IpHeaders, IpNumber, Ipv4Header, Ipv4Options, PacketBuilder, VlanId};
use xvs::dataplane::{BackendEntry, Dataplane, ObjectSource, ServiceEntry, PROG_TC_EGRESS, PROG_TC_INGRESS};
use xvs_common::{reason::REASON_COUNT, Reason, Scheduler, IPPROTO_TCP, IPPROTO_UDP};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Loads a fresh copy of the datapath (maps start empty). Needs root.
pub fn load() -> Dataplane {
    let object = ObjectSource::resolve(None);
    match object.load() {
        Ok(dp) => dp,
        Err(e) => panic!("{} ({e}) — these tests need root and `cargo xtask build-ebpf`; run them with `cargo xtask test`", object.describe()),
    }
}

/// Parses "1.2.3.4:80" / "[fd00::1]:80".
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad socket address {s}: {e}"))
}

/// Shorthand for a service entry; `backends` in the kernel's list order (head first).
pub fn service(svc_id: u32, vip: &str, proto: u8, scheduler: Scheduler, backends: &[(u32, &str, u32)]) -> ServiceEntry {
    let vip = sa(vip);
    ServiceEntry {
        svc_id,
        vip: vip.ip(),
        port: vip.port(),
        proto,
        scheduler,
        flags: 0,
        affinity_timeout: 0,
        source_ranges: Vec::new(),
        backends: backends
            .iter()
            .enumerate()
            .map(|(i, &(id, addr, weight))| {
                let addr = sa(addr);
                BackendEntry { id, addr: addr.ip(), port: addr.port(), weight, seq: (backends.len() - i) as u32, last_weight: weight }
            })
            .collect(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    TcpSyn,
    TcpAck,
    /// FIN + ACK: the client closes.
    TcpFin,
    /// RST: the client aborts.
    TcpRst,
    Udp,
    /// UDP over IPv4 sent without checksum (0).
    UdpNoChecksum,
}

/// A packet described by its fields; `bytes()` renders it with etherparse.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4: L4,
    pub vlan: Option<u16>,
    /// With `vlan`: an outer 802.1ad service tag in front of it (QinQ).
    pub outer_vlan: Option<u16>,
    /// IPv4 only: 8 bytes of NOP options (IHL 7).
    pub ipv4_options: bool,
    /// IPv6 only: an 8-byte extension header (this next-header value) before the L4 header.
    pub ipv6_ext: Option<u8>,
    /// IPv4 only: set More Fragments.
    pub more_fragments: bool,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn new(l4: L4, src: &str, dst: &str) -> Self {
        Self { src: sa(src), dst: sa(dst), l4, vlan: None, outer_vlan: None, ipv4_options: false, ipv6_ext: None, more_fragments: false, payload: b"xvs-test-payload".to_vec() }
    }

    pub fn with_dst(&self, dst: &str) -> Self {
        Self { dst: sa(dst), ..self.clone() }
    }

    pub fn with_src(&self, src: &str) -> Self {
        Self { src: sa(src), ..self.clone() }
    }

    pub fn proto(&self) -> u8 {
        if matches!(self.l4, L4::TcpSyn | L4::TcpAck | L4::TcpFin | L4::TcpRst) { IPPROTO_TCP } else { IPPROTO_UDP }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC);
        let ip = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header::new(0, 64, IpNumber(self.proto()), s.octets(), d.octets())
                    .unwrap_or_else(|e| panic!("{e}"));
                h.identification = 0x1c46;
                h.dont_fragment = !self.more_fragments;
                h.more_fragments = self.more_fragments;
                if self.ipv4_options {
                    h.options = Ipv4Options::from([1u8; 8]);
                }
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
                etherparse::Ipv6Header { next_header: IpNumber(self.proto()), hop_limit: 64, source: s.octets(), destination: d.octets(), ..Default::default() },
                Default::default(),
            ),
            _ => panic!("mixed address families"),
        };
        let ip_step = match self.vlan {
            Some(id) => eth.single_vlan(VlanId::try_new(id).unwrap_or_else(|e| panic!("{e}"))).ip(ip),
            None => eth.ip(ip),
        };
        let mut out = Vec::new();
        let (sport, dport) = (self.src.port(), self.dst.port());
        let written = match self.l4 {
            L4::TcpSyn => ip_step.tcp(sport, dport, 1000, 64240).syn().write(&mut out, &self.payload),
            L4::TcpAck => ip_step.tcp(sport, dport, 1001, 64240).ack(5000).write(&mut out, &self.payload),
            L4::TcpFin => ip_step.tcp(sport, dport, 1001, 64240).ack(5000).fin().write(&mut out, &self.payload),
            L4::TcpRst => ip_step.tcp(sport, dport, 1001, 64240).rst().write(&mut out, &self.payload),
            L4::Udp | L4::UdpNoChecksum => ip_step.udp(sport, dport).write(&mut out, &self.payload),
        };
        written.unwrap_or_else(|e| panic!("building {self:?}: {e}"));
        if self.l4 == L4::UdpNoChecksum {
            let at = self.l4_offset() + 6;
            out[at..at + 2].copy_from_slice(&[0, 0]);
        }
        if let Some(ext) = self.ipv6_ext {
            out = insert_ipv6_ext(out, self.l3_offset(), ext);
        }
        if let (Some(outer), Some(_)) = (self.outer_vlan, self.vlan) {
            // 802.1ad S-tag (TPID 0x88A8), then the 802.1Q C-tag etherparse wrote.
            let tci = outer.to_be_bytes();
            out.splice(12..12, [0x88, 0xa8, tci[0], tci[1]]);
        }
        out
    }

    pub fn l3_offset(&self) -> usize {
        14 + match (self.vlan, self.outer_vlan) {
            (Some(_), Some(_)) => 8,
            (Some(_), None) => 4,
            _ => 0,
        }
    }

    pub fn l4_offset(&self) -> usize {
        self.l3_offset()
            + match self.src {
                SocketAddr::V4(_) => 20 + if self.ipv4_options { 8 } else { 0 },
                SocketAddr::V6(_) => 40 + if self.ipv6_ext.is_some() { 8 } else { 0 },
            }
    }
}

/// Inserts an 8-byte IPv6 extension header of type `ext` after the IPv6 header: options types
/// carry one PadN option, a Fragment header says "offset 0, more fragments". The L4 checksum
/// does not cover extension headers, so it stays valid.
pub fn insert_ipv6_ext(frame: Vec<u8>, l3: usize, ext: u8) -> Vec<u8> {
    let rest = if ext == 44 { [0, 0, 1, 0, 0, 0, 7] } else { [0, 1, 4, 0, 0, 0, 0] };
    insert_ipv6_header(frame, l3, ext, rest)
}

/// Inserts an 8-byte IPv6 extension header of type `ext` right after the IPv6 header: its
/// next-header byte continues the chain, `rest` is everything after it (length byte first).
pub fn insert_ipv6_header(mut frame: Vec<u8>, l3: usize, ext: u8, rest: [u8; 7]) -> Vec<u8> {
    let next = frame[l3 + 6];
    frame[l3 + 6] = ext;
    let plen = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]) + 8;
    frame[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    let mut header = [next; 8];
    header[1..].copy_from_slice(&rest);
    frame.splice(l3 + 40..l3 + 40, header);
    frame
}

/// Recomputes the IPv4 header checksum of the header at `l3` (after a test edited it).
pub fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let hlen = usize::from(frame[l3] & 0x0f) * 4;
    frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let mut sum: u32 = frame[l3..l3 + hlen].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[l3 + 10..l3 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// What a program did with one packet.
#[derive(Debug)]
pub struct Run {
    pub verdict: u32,
    pub out: Vec<u8>,
    /// The kernel's measurement of the program run.
    pub duration: std::time::Duration,
}

fn run(program: &dyn TestRunDyn, input: &[u8]) -> Result<Run, aya::programs::ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let result = program.run(TestRunOptions { data_in: Some(input), data_out: Some(&mut out), ..Default::default() })?;
    out.truncate(result.data_size_out as usize);
    Ok(Run { verdict: result.return_value, out, duration: result.duration })
}

trait TestRunDyn {
    fn run(&self, opts: TestRunOptions<'_>) -> Result<aya::programs::TestRunResult, aya::programs::ProgramError>;
}

impl<T: TestRun<Result = aya::programs::TestRunResult> + for<'a> TestRun<Opts<'a> = TestRunOptions<'a>>> TestRunDyn for T {
    fn run(&self, opts: TestRunOptions<'_>) -> Result<aya::programs::TestRunResult, aya::programs::ProgramError> {
        self.test_run(opts)
    }
}

/// Runs the XDP program once.
pub fn try_xdp(dp: &mut Dataplane, input: &[u8]) -> Result<Run, aya::programs::ProgramError> {
    let prog = dp.xdp().unwrap_or_else(|e| panic!("{}", xvs::error_chain(&e)));
    run(prog, input)
}

pub fn xdp(dp: &mut Dataplane, input: &[u8]) -> Run {
    try_xdp(dp, input).unwrap_or_else(|e| panic!("xdp test run: {e}"))
}

/// Runs one of the bench's structural floor programs once.
pub fn floor(dp: &mut Dataplane, name: &'static str, input: &[u8]) -> Run {
    let prog = dp.floor(name).unwrap_or_else(|e| panic!("{}", xvs::error_chain(&e)));
    run(prog, input).unwrap_or_else(|e| panic!("floor test run: {e}"))
}

/// Runs the TC egress (reply) program once.
pub fn tc_egress(dp: &mut Dataplane, input: &[u8]) -> Run {
    try_tc_egress(dp, input).unwrap_or_else(|e| panic!("tc test run: {e}"))
}

pub fn try_tc_egress(dp: &mut Dataplane, input: &[u8]) -> Result<Run, aya::programs::ProgramError> {
    let prog = dp.tc(PROG_TC_EGRESS).unwrap_or_else(|e| panic!("{e}"));
    run(prog, input)
}

/// Runs the TC ingress (forward) program once.
pub fn tc_ingress(dp: &mut Dataplane, input: &[u8]) -> Run {
    let prog = dp.tc(PROG_TC_INGRESS).unwrap_or_else(|e| panic!("{e}"));
    run(prog, input).unwrap_or_else(|e| panic!("tc test run: {e}"))
}

/// Reason counters at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Reasons([u64; REASON_COUNT as usize]);

impl Reasons {
    pub fn read(dp: &Dataplane) -> Self {
        Self(dp.maps.reason_counts().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Non-zero changes since `before`.
    pub fn since(&self, before: &Self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .filter_map(|&r| {
                let d = self.0[r as usize] - before.0[r as usize];
                (d != 0).then_some((r, d))
            })
            .collect()
    }
}

/// The addresses and services the packet tables (packets.rs, edges.rs) start from.
pub mod table {
    use xvs::dataplane::Dataplane;
    use xvs_common::{Scheduler, IPPROTO_TCP, IPPROTO_UDP};

    use super::service;

    pub const CLIENT: &str = "10.0.1.2:40000";
    pub const VIP: &str = "10.96.0.10:80";
    pub const BACKEND: &str = "10.0.2.2:8080";
    pub const CLIENT6: &str = "[fd00:1::2]:40000";
    pub const VIP6: &str = "[fd00::10]:80";
    pub const BACKEND6: &str = "[fd00:2::2]:8080";

    /// TCP and UDP on v4 and v6 with one backend each, and a service without backends.
    pub fn standard(dp: &mut Dataplane) {
        for svc in [
            service(1, VIP, IPPROTO_TCP, Scheduler::RoundRobin, &[(1, BACKEND, 1)]),
            service(2, "10.96.0.10:53", IPPROTO_UDP, Scheduler::RoundRobin, &[(2, "10.0.2.2:5353", 1)]),
            service(3, VIP6, IPPROTO_TCP, Scheduler::RoundRobin, &[(3, BACKEND6, 1)]),
            service(4, "[fd00::10]:53", IPPROTO_UDP, Scheduler::RoundRobin, &[(4, "[fd00:2::2]:5353", 1)]),
            service(5, "10.96.0.11:80", IPPROTO_TCP, Scheduler::RoundRobin, &[]),
        ] {
            dp.maps.apply_service(&svc).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
