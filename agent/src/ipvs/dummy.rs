//! The dummy interface VIPs are bound to (kube-proxy's `kube-ipvs0`): IPVS only sees traffic the
//! node accepts as local, so every VIP xvs mirrors into IPVS is a /32 (/128) address there. The
//! addresses also mark ownership: a virtual service whose address is on this link is xvs's;
//! anything else in the IPVS table is foreign and never touched. Like kube-proxy, the link stays
//! down (the local routes exist all the same) so it never answers ARP for the VIPs. Addresses the
//! node has on other links (its node IPs, where NodePorts are served) are never bound here, as
//! kube-proxy never binds them: they are local already. Which services are xvs's is recorded
//! apart (`owned`), never inferred from these addresses.
use std::{collections::BTreeSet, net::IpAddr};

use neli::{
    consts::{
        nl::NlmF,
        rtnl::{Ifa, Ifla, IflaInfo, RtAddrFamily, RtScope, Rtm},
        socket::NlFamily,
    },
    err::RouterError,
    nl::{NlPayload, Nlmsghdr},
    router::synchronous::NlRouter,
    rtnl::{Ifaddrmsg, IfaddrmsgBuilder, Ifinfomsg, IfinfomsgBuilder, RtattrBuilder},
    types::{Buffer, RtBuffer},
    utils::Groups,
};

use super::IpvsError;

/// The node's addresses, split by where they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// On the dummy link: xvs's VIPs.
    pub bound: BTreeSet<IpAddr>,
    /// On any other link: node addresses, never bound to the dummy link.
    pub elsewhere: BTreeSet<IpAddr>,
}

pub struct DummyLink {
    router: NlRouter,
    pub name: String,
    /// Interface index; 0 when the link does not exist (read-only handles, see `existing`).
    index: i32,
}

fn failed(what: String) -> impl FnOnce(String) -> IpvsError {
    move |detail| IpvsError::Netlink { what, detail }
}

fn errno<T, P>(e: &RouterError<T, P>) -> Option<i32> {
    match e {
        RouterError::Nlmsgerr(m) => Some(-*m.error()),
        _ => None,
    }
}

impl DummyLink {
    /// Finds the link `name`, creating it (type dummy) if it does not exist.
    pub fn ensure(name: &str) -> Result<Self, IpvsError> {
        let mut link = Self::existing(name)?;
        if link.index == 0 {
            link.create()?;
            link.index = link.find()?.ok_or_else(|| IpvsError::Netlink { what: format!("create link {name}"), detail: "created but not found".into() })?;
        }
        Ok(link)
    }

    /// The link `name` for reading only, never created: if it does not exist it has no
    /// addresses (index 0 is no interface), so nothing counts as xvs's.
    pub fn existing(name: &str) -> Result<Self, IpvsError> {
        let (router, _) = NlRouter::connect(NlFamily::Route, None, Groups::empty()).map_err(|e| IpvsError::Socket(e.to_string()))?;
        let mut link = Self { router, name: name.to_owned(), index: 0 };
        link.index = link.find()?.unwrap_or(0);
        Ok(link)
    }

    fn find(&self) -> Result<Option<i32>, IpvsError> {
        let what = format!("find link {}", self.name);
        let msg = IfinfomsgBuilder::default().ifi_family(RtAddrFamily::Unspecified).build().map_err(|e| failed(what.clone())(e.to_string()))?;
        let recv = self
            .router
            .send::<Rtm, Ifinfomsg, Rtm, Ifinfomsg>(Rtm::Getlink, NlmF::DUMP, NlPayload::Payload(msg))
            .map_err(|e| failed(what.clone())(e.to_string()))?;
        // Read the dump to its end even after a match: the router hands replies still in flight
        // for an abandoned request to the next one as "bad sequence number" errors.
        let mut found = None;
        for reply in recv {
            let reply: Nlmsghdr<Rtm, Ifinfomsg> = reply.map_err(|e| failed(what.clone())(e.to_string()))?;
            if let NlPayload::Payload(info) = reply.nl_payload() {
                let name = info.rtattrs().get_attr_handle().get_attr_payload_as_with_len::<String>(Ifla::Ifname).unwrap_or_default();
                if name == self.name {
                    found = Some(*info.ifi_index());
                }
            }
        }
        Ok(found)
    }

    fn create(&self) -> Result<(), IpvsError> {
        let what = format!("create dummy link {}", self.name);
        let build = || -> Result<Ifinfomsg, String> {
            let mut info = RtBuffer::<IflaInfo, Buffer>::new();
            info.push(RtattrBuilder::default().rta_type(IflaInfo::Kind).rta_payload("dummy\0").build().map_err(|e| e.to_string())?);
            let mut attrs = RtBuffer::<Ifla, Buffer>::new();
            attrs.push(RtattrBuilder::default().rta_type(Ifla::Ifname).rta_payload(self.name.as_str()).build().map_err(|e| e.to_string())?);
            attrs.push(RtattrBuilder::default().rta_type(Ifla::Linkinfo).rta_payload(info).build().map_err(|e| e.to_string())?);
            IfinfomsgBuilder::default().ifi_family(RtAddrFamily::Unspecified).rtattrs(attrs).build().map_err(|e| e.to_string())
        };
        let msg = build().map_err(failed(what.clone()))?;
        self.ack(Rtm::Newlink, NlmF::CREATE | NlmF::EXCL, msg, what)
    }

    fn ack<P: neli::Size + neli::ToBytes + std::fmt::Debug + neli::FromBytesWithInput<Input = usize>>(
        &self,
        cmd: Rtm,
        flags: NlmF,
        msg: P,
        what: String,
    ) -> Result<(), IpvsError> {
        let recv = self
            .router
            .send::<Rtm, P, Rtm, P>(cmd, flags | NlmF::ACK, NlPayload::Payload(msg))
            .map_err(|e| failed(what.clone())(e.to_string()))?;
        for reply in recv {
            if let Err(e) = reply {
                return Err(match errno(&e) {
                    Some(n) => IpvsError::from_errno(what, n, false),
                    None => IpvsError::Netlink { what, detail: e.to_string() },
                });
            }
        }
        Ok(())
    }

    /// The node's addresses: those bound to this link, and those on every other link.
    pub fn addresses(&self) -> Result<Addresses, IpvsError> {
        let what = format!("list addresses of {}", self.name);
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Unspecified)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()
            .map_err(|e| failed(what.clone())(e.to_string()))?;
        let recv = self
            .router
            .send::<Rtm, Ifaddrmsg, Rtm, Ifaddrmsg>(Rtm::Getaddr, NlmF::DUMP, NlPayload::Payload(msg))
            .map_err(|e| failed(what.clone())(e.to_string()))?;
        let mut out = Addresses::default();
        for reply in recv {
            let reply: Nlmsghdr<Rtm, Ifaddrmsg> = reply.map_err(|e| failed(what.clone())(e.to_string()))?;
            let NlPayload::Payload(a) = reply.nl_payload() else { continue };
            let set = if *a.ifa_index() as i32 == self.index { &mut out.bound } else { &mut out.elsewhere };
            // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer's on point-to-point
            // links, and the only one IPv6 sends.
            let (mut local, mut address) = (None, None);
            for attr in a.rtattrs().iter() {
                let raw: &[u8] = attr.rta_payload().as_ref();
                let ip = match raw.len() {
                    4 => IpAddr::from([raw[0], raw[1], raw[2], raw[3]]),
                    16 => {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(raw);
                        IpAddr::from(o)
                    }
                    _ => continue,
                };
                match *attr.rta_type() {
                    Ifa::Local => local = Some(ip),
                    Ifa::Address => address = Some(ip),
                    _ => {}
                }
            }
            set.extend(local.or(address));
        }
        Ok(out)
    }

    fn addr_msg(&self, ip: IpAddr) -> Result<Ifaddrmsg, String> {
        let (family, prefix, octets) = match ip {
            IpAddr::V4(a) => (RtAddrFamily::Inet, 32, a.octets().to_vec()),
            IpAddr::V6(a) => (RtAddrFamily::Inet6, 128, a.octets().to_vec()),
        };
        let mut attrs = RtBuffer::<Ifa, Buffer>::new();
        attrs.push(RtattrBuilder::default().rta_type(Ifa::Local).rta_payload(octets.clone()).build().map_err(|e| e.to_string())?);
        attrs.push(RtattrBuilder::default().rta_type(Ifa::Address).rta_payload(octets).build().map_err(|e| e.to_string())?);
        IfaddrmsgBuilder::default()
            .ifa_family(family)
            .ifa_prefixlen(prefix)
            .ifa_scope(RtScope::Universe)
            .ifa_index(self.index as u32)
            .rtattrs(attrs)
            .build()
            .map_err(|e| e.to_string())
    }

    /// Binds `ip` (an existing binding is fine).
    pub fn bind(&self, ip: IpAddr) -> Result<(), IpvsError> {
        let what = format!("bind {ip} to {}", self.name);
        let msg = self.addr_msg(ip).map_err(failed(what.clone()))?;
        match self.ack(Rtm::Newaddr, NlmF::CREATE | NlmF::EXCL, msg, what) {
            Err(IpvsError::Exists { .. }) => Ok(()),
            other => other,
        }
    }

    /// Unbinds `ip` (already gone is fine).
    pub fn unbind(&self, ip: IpAddr) -> Result<(), IpvsError> {
        let what = format!("unbind {ip} from {}", self.name);
        let msg = self.addr_msg(ip).map_err(failed(what.clone()))?;
        match self.ack(Rtm::Deladdr, NlmF::empty(), msg, what) {
            Err(IpvsError::NoDest { .. } | IpvsError::Kernel { errno: libc::EADDRNOTAVAIL, .. }) => Ok(()),
            other => other,
        }
    }
}
