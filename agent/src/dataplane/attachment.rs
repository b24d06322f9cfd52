//! Where the datapath is attached, kept so the running agent can check and restore it: an
//! interface deleted and re-created (a NIC driver reload, a bond or veth re-created) severs the
//! links on it, and pins removed behind the agent's back (`xvs cleanup --force`) detach them.
//! `ensure` re-creates whatever is missing and says what it did.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::programs::{TcAttachType, XdpMode};

use super::{
    tc_netlink::TcLinks,
    error::DataplaneError,
    loader::{Dataplane, PROG_TC_EGRESS, PROG_TC_INGRESS},
    lock::PinLock,
    pin::{ensure_bpffs, link_pin},
    sock::{socket_lb_pinned, SocketLb},
};

/// Which program takes the interface's ingress.
#[derive(Clone, Copy, Debug)]
pub enum Ingress {
    Xdp(XdpMode),
    Tc,
}

pub struct Attachment {
    pin_dir: PathBuf,
    /// This agent's claim on the pin directory (taken again if the directory is re-created).
    lock: PinLock,
    ingress: Ingress,
    tc: TcLinks,
    /// Each interface with the index it had when the datapath was attached (0: not attached).
    ifaces: Vec<(String, u32)>,
    /// Where the socket hooks attach, when socket-level load balancing is on.
    socket_lb: Option<SocketLb>,
}

impl Attachment {
    /// Claims `pin_dir` (made a directory on a bpffs first) for this agent.
    pub fn claim(pin_dir: &Path, ingress: Ingress, tc: TcLinks, ifaces: &[String]) -> Result<Self, DataplaneError> {
        ensure_bpffs(pin_dir)?;
        let lock = PinLock::acquire(pin_dir)?;
        Ok(Self { pin_dir: pin_dir.to_owned(), lock, ingress, tc, ifaces: ifaces.iter().map(|i| (i.clone(), 0)).collect(), socket_lb: None })
    }

    /// Socket-level load balancing to attach (with `attach_all`) and keep attached.
    pub fn with_socket_lb(mut self, socket_lb: Option<SocketLb>) -> Self {
        self.socket_lb = socket_lb;
        self
    }

    /// The interfaces served, by name.
    pub fn ifaces(&self) -> Vec<String> {
        self.ifaces.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Attaches to every interface (start-up: any failure is the caller's to report).
    pub fn attach_all(&mut self, dataplane: &mut Dataplane) -> Result<(), DataplaneError> {
        for i in 0..self.ifaces.len() {
            let iface = self.ifaces[i].0.clone();
            self.attach(dataplane, &iface)?;
            self.ifaces[i].1 = ifindex(&iface);
            tracing::info!(iface, "datapath attached");
        }
        if let Some(lb) = &self.socket_lb {
            let created = dataplane.attach_socket_lb_pinned(&lb.cgroup, &self.pin_dir)?;
            let how = if created == 0 { "adopted" } else { "attached" };
            tracing::info!(cgroup = %lb.cgroup.display(), host_ns_only = lb.host_ns_only, "socket-level load balancing {how}");
        }
        Ok(())
    }

    /// Restores what went missing since the last check; each entry is one thing done (or
    /// failed), for the log.
    pub fn ensure(&mut self, dataplane: &mut Dataplane) -> Vec<Result<String, DataplaneError>> {
        let mut done = Vec::new();
        if !self.pin_dir.join("links").is_dir() {
            let restored = ensure_bpffs(&self.pin_dir).and_then(|()| PinLock::acquire(&self.pin_dir));
            match restored {
                Ok(lock) => {
                    self.lock = lock;
                    done.push(Ok(format!("the pin directory {} was removed: re-created", self.pin_dir.display())));
                }
                Err(e) => return vec![Err(e)],
            }
        }
        match dataplane.maps.pin_missing(&self.pin_dir) {
            Ok(names) if names.is_empty() => {}
            Ok(names) => done.push(Ok(format!("map pins removed behind the agent: pinned again ({})", names.join(", ")))),
            Err(e) => done.push(Err(e)),
        }
        if let Some(lb) = &self.socket_lb
            && !socket_lb_pinned(&self.pin_dir)
        {
            match dataplane.attach_socket_lb_pinned(&lb.cgroup, &self.pin_dir) {
                Ok(_) => done.push(Ok(format!("socket hook pins removed behind the agent: attached to {} again", lb.cgroup.display()))),
                Err(e) => done.push(Err(e)),
            }
        }
        for i in 0..self.ifaces.len() {
            let (iface, attached) = self.ifaces[i].clone();
            let now = ifindex(&iface);
            if now == 0 {
                if attached != 0 {
                    self.ifaces[i].1 = 0;
                    done.push(Ok(format!("{iface} is gone: the datapath is attached again when it returns")));
                }
                continue;
            }
            let reason = if now != attached {
                if attached == 0 { "the interface is back" } else { "the interface was re-created" }
            } else if !self.links_pinned(&iface) {
                "its link pins were removed"
            } else {
                continue;
            };
            match self.attach(dataplane, &iface) {
                Ok(()) => {
                    self.ifaces[i].1 = now;
                    done.push(Ok(format!("datapath attached to {iface} again ({reason})")));
                }
                Err(e) => done.push(Err(e)),
            }
        }
        done
    }

    fn attach(&self, dataplane: &mut Dataplane, iface: &str) -> Result<(), DataplaneError> {
        match self.ingress {
            Ingress::Xdp(mode) => dataplane.attach_xdp_pinned(iface, mode, &self.pin_dir)?,
            Ingress::Tc => self.attach_tc(dataplane, iface, PROG_TC_INGRESS, TcAttachType::Ingress)?,
        }
        self.attach_tc(dataplane, iface, PROG_TC_EGRESS, TcAttachType::Egress)
    }

    fn attach_tc(&self, dataplane: &mut Dataplane, iface: &str, name: &'static str, kind: TcAttachType) -> Result<(), DataplaneError> {
        match self.tc {
            TcLinks::Tcx => dataplane.attach_tc_pinned(iface, name, kind, &self.pin_dir),
            TcLinks::Netlink => dataplane.attach_tc_netlink(iface, name, kind),
        }
    }

    /// Whether the links that have pins are pinned (netlink TC filters have none: they go only
    /// with their interface, which the index check sees).
    fn links_pinned(&self, iface: &str) -> bool {
        let mut pinned = Vec::new();
        match self.ingress {
            Ingress::Xdp(_) => pinned.push("xdp"),
            Ingress::Tc if self.tc == TcLinks::Tcx => pinned.push("tc_ingress"),
            Ingress::Tc => {}
        }
        if self.tc == TcLinks::Tcx {
            pinned.push("tc_egress");
        }
        pinned.iter().all(|what| link_pin(&self.pin_dir, iface, what).exists())
    }
}

/// The interface's index now, 0 when there is none by that name.
fn ifindex(iface: &str) -> u32 {
    let Ok(name) = CString::new(iface) else { return 0 };
    // SAFETY: NUL-terminated name; the call only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}
