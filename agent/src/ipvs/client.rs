//! A synchronous IPVS client on neli's router: every doit asks for an ACK (success is
//! otherwise silent), dumps are read to their NLMSG_DONE.
use neli::{
    consts::{nl::NlmF, socket::NlFamily},
    err::RouterError,
    genl::{Genlmsghdr, Nlattr},
    nl::NlPayload,
    router::synchronous::NlRouter,
    types::Buffer,
    utils::Groups,
};

use super::{
    wire::{self, CmdAttr, DestAttr, IpvsCmd, SvcAttr},
    IpvsDest, IpvsError, IpvsService,
};

/// What GET_INFO reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpvsInfo {
    /// `IP_VS_VERSION_CODE`, e.g. 0x010201 for 1.2.1.
    pub version: u32,
    /// Connection hash table size (ipvsadm's "size=").
    pub conn_tab_size: u32,
}

impl IpvsInfo {
    pub fn version_string(&self) -> String {
        format!("{}.{}.{}", (self.version >> 16) & 0xff, (self.version >> 8) & 0xff, self.version & 0xff)
    }
}

pub struct IpvsClient {
    router: NlRouter,
    family: u16,
}

type Reply = Genlmsghdr<IpvsCmd, CmdAttr>;

fn errno_of<T, P>(e: &RouterError<T, P>) -> Option<i32> {
    match e {
        RouterError::Nlmsgerr(m) => Some(-*m.error()),
        _ => None,
    }
}

impl IpvsClient {
    /// Opens a generic netlink socket in the caller's network namespace (IPVS tables are per
    /// namespace) and resolves the IPVS family.
    pub fn connect() -> Result<Self, IpvsError> {
        let (router, _) = NlRouter::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| IpvsError::Socket(e.to_string()))?;
        let family = router.resolve_genl_family("IPVS").map_err(|e| match errno_of(&e) {
            Some(libc::ENOENT) | None => IpvsError::Unavailable,
            Some(errno) => IpvsError::from_errno("resolving the IPVS family".into(), errno, false),
        })?;
        Ok(Self { router, family })
    }

    fn doit(&self, cmd: IpvsCmd, attrs: Vec<Nlattr<CmdAttr, Buffer>>, what: String, service_cmd: bool) -> Result<Vec<Reply>, IpvsError> {
        let msg = wire::message(cmd, attrs)?;
        self.collect(self.router.send(self.family, NlmF::ACK, NlPayload::Payload(msg)), what, service_cmd)
    }

    fn dump(&self, cmd: IpvsCmd, attrs: Vec<Nlattr<CmdAttr, Buffer>>, what: String) -> Result<Vec<Reply>, IpvsError> {
        let msg = wire::message(cmd, attrs)?;
        self.collect(self.router.send(self.family, NlmF::DUMP, NlPayload::Payload(msg)), what, false)
    }

    fn collect<E: std::fmt::Display>(
        &self,
        sent: Result<neli::router::synchronous::NlRouterReceiverHandle<u16, Reply>, E>,
        what: String,
        service_cmd: bool,
    ) -> Result<Vec<Reply>, IpvsError> {
        let handle = sent.map_err(|e| IpvsError::Netlink { what: what.clone(), detail: e.to_string() })?;
        let mut out = Vec::new();
        for msg in handle {
            match msg {
                Ok(m) => match m.nl_payload() {
                    NlPayload::Payload(p) => out.push(p.clone()),
                    NlPayload::DumpExtAck(e) if *e.error() != 0 => {
                        return Err(IpvsError::from_errno(what, -*e.error(), service_cmd));
                    }
                    _ => {}
                },
                Err(e) => {
                    return Err(match errno_of(&e) {
                        Some(errno) => IpvsError::from_errno(what, errno, service_cmd),
                        None => IpvsError::Netlink { what, detail: e.to_string() },
                    });
                }
            }
        }
        Ok(out)
    }

    pub fn info(&self) -> Result<IpvsInfo, IpvsError> {
        let replies = self.doit(IpvsCmd::GetInfo, vec![], "GET_INFO".into(), false)?;
        let h = replies.first().ok_or_else(|| IpvsError::Netlink { what: "GET_INFO".into(), detail: "no reply".into() })?;
        let attrs = h.attrs().get_attr_handle();
        Ok(IpvsInfo {
            version: attrs.get_attr_payload_as(CmdAttr::Service).unwrap_or(0),
            conn_tab_size: attrs.get_attr_payload_as(CmdAttr::Dest).unwrap_or(0),
        })
    }

    /// Every address-based virtual service in this namespace (fwmark services are skipped).
    pub fn services(&self) -> Result<Vec<IpvsService>, IpvsError> {
        let replies = self.dump(IpvsCmd::GetService, vec![], "GET_SERVICE dump".into())?;
        Ok(replies
            .iter()
            .filter_map(|r| {
                let h = r.attrs().get_attr_handle();
                let svc = h.get_nested_attributes::<SvcAttr>(CmdAttr::Service).ok()?;
                wire::parse_service(&svc)
            })
            .collect())
    }

    /// The real servers of `svc` (empty if the service does not exist).
    pub fn dests(&self, svc: &IpvsService) -> Result<Vec<IpvsDest>, IpvsError> {
        let what = format!("GET_DEST {}", svc.name());
        let replies = self.dump(IpvsCmd::GetDest, vec![wire::service_attr(svc, false)?], what)?;
        let af = wire::family(svc.addr);
        Ok(replies
            .iter()
            .filter_map(|r| {
                let h = r.attrs().get_attr_handle();
                let d = h.get_nested_attributes::<DestAttr>(CmdAttr::Dest).ok()?;
                wire::parse_dest(&d, af)
            })
            .collect())
    }

    pub fn add_service(&self, svc: &IpvsService) -> Result<(), IpvsError> {
        self.doit(IpvsCmd::NewService, vec![wire::service_attr(svc, true)?], format!("add {}", svc.name()), true).map(drop)
    }

    /// Changes scheduler, flags or timeout in place (the VIP never disappears).
    pub fn edit_service(&self, svc: &IpvsService) -> Result<(), IpvsError> {
        self.doit(IpvsCmd::SetService, vec![wire::service_attr(svc, true)?], format!("edit {}", svc.name()), true).map(drop)
    }

    pub fn del_service(&self, svc: &IpvsService) -> Result<(), IpvsError> {
        self.doit(IpvsCmd::DelService, vec![wire::service_attr(svc, false)?], format!("delete {}", svc.name()), true).map(drop)
    }

    fn dest_cmd(&self, cmd: IpvsCmd, verb: &str, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        let full = !matches!(cmd, IpvsCmd::DelDest);
        let what = format!("{verb} {} -> {}", svc.name(), std::net::SocketAddr::new(dest.addr, dest.port));
        self.doit(cmd, vec![wire::service_attr(svc, false)?, wire::dest_attr(dest, full)?], what, false).map(drop)
    }

    pub fn add_dest(&self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        self.dest_cmd(IpvsCmd::NewDest, "add", svc, dest)
    }

    pub fn edit_dest(&self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        self.dest_cmd(IpvsCmd::SetDest, "edit", svc, dest)
    }

    pub fn del_dest(&self, svc: &IpvsService, dest: &IpvsDest) -> Result<(), IpvsError> {
        self.dest_cmd(IpvsCmd::DelDest, "delete", svc, dest)
    }

    /// Deletes every virtual service in this namespace, xvs's or not.
    pub fn flush(&self) -> Result<(), IpvsError> {
        self.doit(IpvsCmd::Flush, vec![], "FLUSH".into(), false).map(drop)
    }
}
