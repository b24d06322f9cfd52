//! The IPVS generic-netlink wire format (include/uapi/linux/ip_vs.h): command and attribute
//! numbers, and the pure encoding/decoding of services and destinations. No socket here, so
//! the golden-byte tests run anywhere.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use neli::{
    consts::genl::{Cmd, NlAttrType},
    genl::{AttrTypeBuilder, GenlAttrHandle, Genlmsghdr, GenlmsghdrBuilder, Nlattr, NlattrBuilder},
    neli_enum,
    types::{Buffer, GenlBuffer},
    Size, ToBytes,
};

use super::{IpvsDest, IpvsError, IpvsService};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// IP_VS_SVC_F_PERSISTENT.
pub const SVC_F_PERSISTENT: u32 = 0x1;
/// IP_VS_SVC_F_HASHED: set by the kernel on every listed service; ignored on input.
pub const SVC_F_HASHED: u32 = 0x2;
/// IP_VS_SVC_F_SCHED1: `sh-fallback` for sh, `mh-fallback` for mh.
pub const SVC_F_SCHED1: u32 = 0x08;
/// IP_VS_SVC_F_SCHED2: `sh-port` for sh, `mh-port` for mh.
pub const SVC_F_SCHED2: u32 = 0x10;

/// The names ipvsadm gives SCHED1 and SCHED2 for `scheduler` (its print_sched_flags).
pub fn sched_flag_names(scheduler: &str) -> [&'static str; 2] {
    if scheduler == "mh" { ["mh-fallback", "mh-port"] } else { ["sh-fallback", "sh-port"] }
}
/// IP_VS_CONN_F_MASQ.
pub const FWD_MASQ: u32 = 0;

#[neli_enum(serialized_type = "u8")]
pub enum IpvsCmd {
    Unspec = 0,
    NewService = 1,
    SetService = 2,
    DelService = 3,
    GetService = 4,
    NewDest = 5,
    SetDest = 6,
    DelDest = 7,
    GetDest = 8,
    SetInfo = 14,
    GetInfo = 15,
    Flush = 17,
}
impl Cmd for IpvsCmd {}

#[neli_enum(serialized_type = "u16")]
pub enum CmdAttr {
    Unspec = 0,
    /// Also IPVS_INFO_ATTR_VERSION in GET_INFO replies.
    Service = 1,
    /// Also IPVS_INFO_ATTR_CONN_TAB_SIZE in GET_INFO replies.
    Dest = 2,
}
impl NlAttrType for CmdAttr {}

#[neli_enum(serialized_type = "u16")]
pub enum SvcAttr {
    Unspec = 0,
    Af = 1,
    Protocol = 2,
    Addr = 3,
    Port = 4,
    Fwmark = 5,
    SchedName = 6,
    Flags = 7,
    Timeout = 8,
    Netmask = 9,
    Stats = 10,
    PeName = 11,
    Stats64 = 12,
}
impl NlAttrType for SvcAttr {}

#[neli_enum(serialized_type = "u16")]
pub enum DestAttr {
    Unspec = 0,
    Addr = 1,
    Port = 2,
    FwdMethod = 3,
    Weight = 4,
    UThresh = 5,
    LThresh = 6,
    ActiveConns = 7,
    InactConns = 8,
    PersistConns = 9,
    Stats = 10,
    AddrFamily = 11,
    Stats64 = 12,
}
impl NlAttrType for DestAttr {}

fn attr<T: NlAttrType, P: Size + ToBytes>(t: T, payload: P) -> Result<Nlattr<T, Buffer>, IpvsError> {
    let nla_type = AttrTypeBuilder::default().nla_type(t).build().map_err(IpvsError::encode)?;
    NlattrBuilder::default().nla_type(nla_type).nla_payload(payload).build().map_err(IpvsError::encode)
}

fn nest<T: NlAttrType, C: NlAttrType>(t: T, children: Vec<Nlattr<C, Buffer>>) -> Result<Nlattr<T, Buffer>, IpvsError> {
    let mut parent = attr(t, Vec::<u8>::new())?;
    for child in &children {
        parent = parent.nest(child).map_err(IpvsError::encode)?;
    }
    Ok(parent)
}

/// `union nf_inet_addr`: 16 bytes, IPv4 in the first 4.
fn inet_addr(addr: IpAddr) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

pub const fn family(addr: IpAddr) -> u16 {
    if addr.is_ipv6() { AF_INET6 } else { AF_INET }
}

/// The service identity (what every service and destination command needs), plus with `full`
/// the settings NEW/SET_SERVICE require, in ipvsadm's order.
pub fn service_attr(s: &IpvsService, full: bool) -> Result<Nlattr<CmdAttr, Buffer>, IpvsError> {
    let mut children = vec![
        attr(SvcAttr::Af, family(s.addr))?,
        attr(SvcAttr::Protocol, s.protocol)?,
        attr(SvcAttr::Addr, inet_addr(s.addr))?,
        attr(SvcAttr::Port, s.port.to_be())?,
    ];
    if full {
        let flags: Vec<u8> = [s.flags.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat();
        // NETMASK: all-ones network-order mask for IPv4, prefix length 128 for IPv6.
        let netmask = if s.addr.is_ipv6() { 128u32 } else { u32::MAX };
        children.extend([
            attr(SvcAttr::SchedName, s.scheduler.as_str())?,
            attr(SvcAttr::Flags, flags)?,
            attr(SvcAttr::Timeout, s.timeout)?,
            attr(SvcAttr::Netmask, netmask)?,
        ]);
    }
    nest(CmdAttr::Service, children)
}

/// A destination: identity only (DEL_DEST) or everything NEW/SET_DEST require.
pub fn dest_attr(d: &IpvsDest, full: bool) -> Result<Nlattr<CmdAttr, Buffer>, IpvsError> {
    let mut children = vec![attr(DestAttr::Addr, inet_addr(d.addr))?, attr(DestAttr::Port, d.port.to_be())?];
    if full {
        children.extend([
            attr(DestAttr::FwdMethod, d.fwd_method)?,
            attr(DestAttr::Weight, d.weight)?,
            attr(DestAttr::UThresh, 0u32)?,
            attr(DestAttr::LThresh, 0u32)?,
            attr(DestAttr::AddrFamily, family(d.addr))?,
        ]);
    }
    nest(CmdAttr::Dest, children)
}

pub fn message(cmd: IpvsCmd, attrs: Vec<Nlattr<CmdAttr, Buffer>>) -> Result<Genlmsghdr<IpvsCmd, CmdAttr>, IpvsError> {
    GenlmsghdrBuilder::default()
        .cmd(cmd)
        .version(1)
        .attrs(attrs.into_iter().collect::<GenlBuffer<_, _>>())
        .build()
        .map_err(IpvsError::encode)
}

fn decode_addr(raw: &[u8], af: u16) -> Option<IpAddr> {
    match af {
        AF_INET if raw.len() >= 4 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 if raw.len() >= 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&raw[..16]);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn raw<'a, T: NlAttrType>(h: &'a GenlAttrHandle<'a, T>, t: T) -> Option<&'a [u8]> {
    h.get_attribute(t).map(|a| a.nla_payload().as_ref())
}

/// A service from a GET_SERVICE reply. Fwmark services (no address) come back as `None`:
/// xvs never writes them and leaves them alone.
pub fn parse_service(h: &GenlAttrHandle<'_, SvcAttr>) -> Option<IpvsService> {
    let af: u16 = h.get_attr_payload_as(SvcAttr::Af).ok()?;
    let addr = decode_addr(raw(h, SvcAttr::Addr)?, af)?;
    let flags = raw(h, SvcAttr::Flags).and_then(|f| f.get(..4)).map_or(0, |f| u32::from_ne_bytes([f[0], f[1], f[2], f[3]]));
    Some(IpvsService {
        protocol: h.get_attr_payload_as(SvcAttr::Protocol).ok()?,
        addr,
        port: u16::from_be(h.get_attr_payload_as(SvcAttr::Port).ok()?),
        scheduler: h.get_attr_payload_as_with_len::<String>(SvcAttr::SchedName).unwrap_or_default(),
        flags: flags & !SVC_F_HASHED,
        timeout: h.get_attr_payload_as(SvcAttr::Timeout).unwrap_or(0),
    })
}

/// A destination from a GET_DEST reply (`af` is the service's, for kernels without ADDR_FAMILY).
pub fn parse_dest(h: &GenlAttrHandle<'_, DestAttr>, af: u16) -> Option<IpvsDest> {
    let af = h.get_attr_payload_as(DestAttr::AddrFamily).unwrap_or(af);
    Some(IpvsDest {
        addr: decode_addr(raw(h, DestAttr::Addr)?, af)?,
        port: u16::from_be(h.get_attr_payload_as(DestAttr::Port).ok()?),
        fwd_method: h.get_attr_payload_as::<u32>(DestAttr::FwdMethod).unwrap_or(0) & 0x7,
        weight: h.get_attr_payload_as(DestAttr::Weight).unwrap_or(0),
        active_conns: h.get_attr_payload_as(DestAttr::ActiveConns).unwrap_or(0),
        inactive_conns: h.get_attr_payload_as(DestAttr::InactConns).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn bytes(msg: &Genlmsghdr<IpvsCmd, CmdAttr>) -> String {
        let mut c = Cursor::new(Vec::new());
        msg.to_bytes(&mut c).unwrap_or_default();
        c.into_inner().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn web(flags: u32, timeout: u32) -> IpvsService {
        IpvsService { protocol: 6, addr: IpAddr::from([10, 96, 0, 10]), port: 80, scheduler: "rr".into(), flags, timeout }
    }

    /// ../shared/reference/ipvs-netlink.md §10.1, after the 16-byte nlmsghdr.
    #[test]
    fn new_service_golden() {
        let msg = service_attr(&web(0, 0), true).and_then(|a| message(IpvsCmd::NewService, vec![a]));
        let want = concat!(
            "01010000",
            "54000180",
            "0600010002000000",
            "0600020006000000",
            "140003000a60000a000000000000000000000000",
            "0600040000500000",
            "0700060072720000",
            "0c00070000000000ffffffff",
            "0800080000000000",
            "08000900ffffffff",
        );
        assert_eq!(msg.map(|m| bytes(&m)).unwrap_or_default(), want);
    }

    #[test]
    fn persistent_service_carries_flag_and_timeout() {
        let msg = service_attr(&web(SVC_F_PERSISTENT, 10800), true).and_then(|a| message(IpvsCmd::NewService, vec![a]));
        let text = msg.map(|m| bytes(&m)).unwrap_or_default();
        assert!(text.contains("0c00070001000000ffffffff"), "{text}");
        assert!(text.contains("08000800302a0000"), "{text}");
    }

    /// §10.2 (with DEST_ADDR_FAMILY, which the reference lists as optional and sends last).
    #[test]
    fn new_dest_golden() {
        let d = IpvsDest { addr: IpAddr::from([10, 244, 1, 2]), port: 8080, fwd_method: FWD_MASQ, weight: 1, active_conns: 0, inactive_conns: 0 };
        let msg = service_attr(&web(0, 0), false)
            .and_then(|s| Ok((s, dest_attr(&d, true)?)))
            .and_then(|(s, d)| message(IpvsCmd::NewDest, vec![s, d]));
        let want = concat!(
            "05010000",
            "30000180",
            "0600010002000000",
            "0600020006000000",
            "140003000a60000a000000000000000000000000",
            "0600040000500000",
            "48000280",
            "140001000af40102000000000000000000000000",
            "060002001f900000",
            "0800030000000000",
            "0800040001000000",
            "0800050000000000",
            "0800060000000000",
            "06000b0002000000",
        );
        assert_eq!(msg.map(|m| bytes(&m)).unwrap_or_default(), want);
    }

    /// A service as the kernel dumps it: ADDR always 16 bytes, FLAGS with HASHED, STATS nested
    /// and an unknown attribute: decoded back to what was written, HASHED masked.
    #[test]
    fn decodes_a_dumped_service_and_dest() {
        let written = web(SVC_F_PERSISTENT, 10800);
        let dumped = IpvsService { flags: SVC_F_PERSISTENT | SVC_F_HASHED, ..written.clone() };
        let stats = nest(SvcAttr::Stats, vec![attr(DestAttr::Addr, 0u32).unwrap_or_else(|e| panic!("{e}"))]);
        let mut svc = service_attr(&dumped, true).unwrap_or_else(|e| panic!("{e}"));
        for extra in [stats.unwrap_or_else(|e| panic!("{e}")), attr(SvcAttr::Stats64, vec![0u8; 8]).unwrap_or_else(|e| panic!("{e}"))] {
            svc = svc.nest(&extra).unwrap_or_else(|e| panic!("{e}"));
        }
        let handle = svc.get_attr_handle::<SvcAttr>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse_service(&handle), Some(written));

        let d = IpvsDest { addr: "fd00:1::2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), port: 5353, fwd_method: FWD_MASQ, weight: 3, active_conns: 0, inactive_conns: 0 };
        let mut dest = dest_attr(&d, true).unwrap_or_else(|e| panic!("{e}"));
        dest = dest.nest(&attr(DestAttr::ActiveConns, 4u32).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
        let handle = dest.get_attr_handle::<DestAttr>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse_dest(&handle, AF_INET), Some(IpvsDest { active_conns: 4, ..d }), "ADDR_FAMILY wins over the service's");
    }
}
