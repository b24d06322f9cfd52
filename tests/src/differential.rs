//! Differential test of the schedulers against the kernel's: the same services go into IPVS
//! (through the mirror) and into the eBPF maps (through the reconciler); the same packets go
//! to IPVS (injected on a veth) and through the XDP program (BPF_PROG_TEST_RUN); the kernel's
//! choices are read from /proc/net/ip_vs_conn and compared flow by flow.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use xvs::dataplane::Dataplane;

use crate::xdp;

/// Writes Ethernet frames onto an interface (AF_PACKET): they arrive on its veth peer as if
/// from the wire, whatever their source addresses.
pub struct Injector {
    fd: i32,
    ifindex: i32,
}

impl Injector {
    pub fn open(iface: &str) -> Self {
        let name = std::ffi::CString::new(iface).unwrap_or_default();
        // SAFETY: plain libc calls with valid arguments; the results are checked.
        let (fd, ifindex) = unsafe { (libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0), libc::if_nametoindex(name.as_ptr()) as i32) };
        assert!(fd >= 0 && ifindex > 0, "AF_PACKET socket on {iface}: {}", std::io::Error::last_os_error());
        Self { fd, ifindex }
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `to` outlive the call; the length is theirs.
        let sent = unsafe {
            libc::sendto(self.fd, frame.as_ptr().cast(), frame.len(), 0, (&raw const to).cast(), size_of::<libc::sockaddr_ll>() as u32)
        };
        assert_eq!(sent, frame.len() as isize, "AF_PACKET send: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours.
        unsafe { libc::close(self.fd) };
    }
}

fn conn_addr(field: &str) -> Option<IpAddr> {
    if field.contains(':') {
        field.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        u32::from_str_radix(field, 16).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v)))
    }
}

/// The kernel's choices: (client, virtual service) -> real server, from /proc/net/ip_vs_conn
/// (`Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires`, IPv4 in hex, IPv6 written out).
pub fn kernel_choices() -> HashMap<(SocketAddr, SocketAddr), SocketAddr> {
    let text = std::fs::read_to_string("/proc/net/ip_vs_conn").unwrap_or_else(|e| panic!("/proc/net/ip_vs_conn: {e}"));
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 {
            continue;
        }
        let port = |s: &str| u16::from_str_radix(s, 16).ok();
        let parsed = (|| {
            let from = SocketAddr::new(conn_addr(f[1])?, port(f[2])?);
            let to = SocketAddr::new(conn_addr(f[3])?, port(f[4])?);
            let dest = SocketAddr::new(conn_addr(f[5])?, port(f[6])?);
            Some(((from, to), dest))
        })();
        if let Some((key, dest)) = parsed {
            out.insert(key, dest);
        }
    }
    out
}

/// Where the XDP program sent a new flow's first packet: the destination it NATed to, or
/// `None` if it passed the packet unchanged or dropped it.
pub fn ebpf_choice(dp: &mut Dataplane, frame: &[u8]) -> Option<SocketAddr> {
    let run = xdp(dp, frame);
    if run.out == frame {
        return None;
    }
    let packet = SlicedPacket::from_ethernet(&run.out).ok()?;
    let addr = match packet.net? {
        NetSlice::Ipv4(ip) => IpAddr::V4(ip.header().destination_addr()),
        NetSlice::Ipv6(ip) => IpAddr::V6(ip.header().destination_addr()),
    };
    let port = match packet.transport? {
        TransportSlice::Tcp(t) => t.destination_port(),
        TransportSlice::Udp(u) => u.destination_port(),
        TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_) => return None,
    };
    Some(SocketAddr::new(addr, port))
}
