//! Keeps the kernel IPVS table equal to the desired state, as kube-proxy's IPVS proxier does,
//! but touching only xvs's own services (those recorded in `owned` when xvs made them):
//! foreign virtual services are left alone, whatever address they are on. Planning is pure
//! (golden-tested); applying runs the plan through the client, one operation at a time,
//! collecting errors per operation.
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
};

use super::{
    dummy::DummyLink,
    owned::{Owned, ServiceKey},
    render::{render, DesiredIpvs},
    wire::SVC_F_PERSISTENT,
    IpvsClient, IpvsDest, IpvsError, IpvsService,
};
use crate::{
    dataplane::ipvs_list::{dest_ops, DestOp},
    model::{Model, Protocol, ServiceId},
};

/// One change to the kernel, shown as the ipvsadm command that would make it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Bind(IpAddr),
    AddService(IpvsService),
    EditService(IpvsService),
    AddDest(IpvsService, IpvsDest),
    EditDest(IpvsService, IpvsDest),
    DelDest(IpvsService, IpvsDest),
    DelService(IpvsService),
    Unbind(IpAddr),
    /// A desired service exists but xvs did not make it: nothing is done, and it is reported.
    Foreign(IpvsService),
}

fn svc_args(s: &IpvsService) -> String {
    let flag = match s.protocol {
        17 => "-u",
        132 => "--sctp-service",
        _ => "-t",
    };
    format!("{flag} {}", SocketAddr::new(s.addr, s.port))
}

fn svc_opts(s: &IpvsService) -> String {
    let mut out = format!(" -s {}", s.scheduler);
    if s.flags & SVC_F_PERSISTENT != 0 {
        out.push_str(&format!(" -p {}", s.timeout));
    }
    let names = super::wire::sched_flag_names(&s.scheduler);
    let sched_flags: Vec<&str> = [(super::wire::SVC_F_SCHED1, names[0]), (super::wire::SVC_F_SCHED2, names[1])]
        .into_iter()
        .filter(|&(bit, _)| s.flags & bit != 0)
        .map(|(_, name)| name)
        .collect();
    if !sched_flags.is_empty() {
        out.push_str(&format!(" -b {}", sched_flags.join(",")));
    }
    out
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dest = |d: &IpvsDest| SocketAddr::new(d.addr, d.port);
        match self {
            Self::Bind(ip) => write!(f, "bind {ip}"),
            Self::Unbind(ip) => write!(f, "unbind {ip}"),
            Self::AddService(s) => write!(f, "-A {}{}", svc_args(s), svc_opts(s)),
            Self::EditService(s) => write!(f, "-E {}{}", svc_args(s), svc_opts(s)),
            Self::DelService(s) => write!(f, "-D {}", svc_args(s)),
            Self::AddDest(s, d) => write!(f, "-a {} -r {} -m -w {}", svc_args(s), dest(d), d.weight),
            Self::EditDest(s, d) => write!(f, "-e {} -r {} -m -w {}", svc_args(s), dest(d), d.weight),
            Self::DelDest(s, d) => write!(f, "-d {} -r {}", svc_args(s), dest(d)),
            Self::Foreign(s) => write!(f, "-E {}{} (left alone: not made by xvs)", svc_args(s), svc_opts(s)),
        }
    }
}

/// What the kernel holds now: every address-based service with its dests (only needed for
/// services that are desired or owned), which of them are xvs's, the addresses on the dummy
/// link, and the node's addresses on other links (never bound).
#[derive(Clone, Debug, Default)]
pub struct Current {
    pub services: Vec<(IpvsService, Vec<IpvsDest>)>,
    pub owned: BTreeSet<ServiceKey>,
    pub bound: BTreeSet<IpAddr>,
    pub node: BTreeSet<IpAddr>,
}

fn same_id(a: &IpvsService, b: &IpvsService) -> bool {
    (a.protocol, a.addr, a.port) == (b.protocol, b.addr, b.port)
}

/// Each dest's endpoint and weight, as `dest_ops` takes them.
fn endpoints(dests: &[IpvsDest]) -> Vec<(SocketAddr, u32)> {
    dests.iter().map(|d| (SocketAddr::new(d.addr, d.port), d.weight)).collect()
}

/// The operations that turn `current` into `desired`, make-before-break: VIPs are bound
/// before their services exist (node addresses never: they are local already), services are
/// edited in place (never deleted and re-added), dests that leave drain at weight 0 while the
/// kernel still counts connections to them (TCP; UDP dests go at once, as in kube-proxy), and
/// VIPs are unbound last. Only xvs's own services are edited or deleted; a foreign one where a
/// desired service should be is reported as `Op::Foreign`.
pub fn plan(desired: &[DesiredIpvs], current: &Current) -> Vec<Op> {
    let mut ops = Vec::new();
    let vips: BTreeSet<IpAddr> = desired.iter().map(|d| d.service.addr).filter(|a| !current.node.contains(a)).collect();
    for vip in vips.difference(&current.bound) {
        ops.push(Op::Bind(*vip));
    }
    for want in desired {
        let have = current.services.iter().find(|(s, _)| same_id(s, &want.service));
        if have.is_some_and(|(s, _)| !current.owned.contains(&ServiceKey::of(s))) {
            ops.push(Op::Foreign(want.service.clone()));
            continue;
        }
        let Some((svc, dests)) = have else {
            ops.push(Op::AddService(want.service.clone()));
            for op in dest_ops(&[], &endpoints(&want.dests)) {
                if let DestOp::Add(j) = op {
                    ops.push(Op::AddDest(want.service.clone(), want.dests[j].clone()));
                }
            }
            continue;
        };
        if (svc.scheduler.as_str(), svc.flags, svc.timeout) != (want.service.scheduler.as_str(), want.service.flags, want.service.timeout) {
            ops.push(Op::EditService(want.service.clone()));
        }
        // Dests that leave stay at weight 0 while the kernel still counts connections to them
        // (TCP; UDP ones go at once, as in kube-proxy), or while the eBPF side drains them.
        let mut keep = want.dests.clone();
        for x in dests {
            let wanted = want.dests.iter().any(|d| (d.addr, d.port) == (x.addr, x.port));
            let busy = x.active_conns + x.inactive_conns > 0 && want.service.protocol != 17;
            if !wanted && (busy || want.draining.contains(&SocketAddr::new(x.addr, x.port))) {
                keep.push(IpvsDest { weight: 0, ..x.clone() });
            }
        }
        // In the order the eBPF side replays them (ipvs_list), so both keep one list order.
        for op in dest_ops(&endpoints(dests), &endpoints(&keep)) {
            ops.push(match op {
                DestOp::Del(i) => Op::DelDest(want.service.clone(), dests[i].clone()),
                DestOp::Edit(_, j) => Op::EditDest(want.service.clone(), keep[j].clone()),
                DestOp::Add(j) => Op::AddDest(want.service.clone(), keep[j].clone()),
            });
        }
        // A forwarding method changed behind our back (same weight): put it back.
        for d in &keep {
            if dests.iter().any(|x| (x.addr, x.port, x.weight) == (d.addr, d.port, d.weight) && x.fwd_method != d.fwd_method) {
                ops.push(Op::EditDest(want.service.clone(), d.clone()));
            }
        }
    }
    for (svc, _) in &current.services {
        let owned = current.owned.contains(&ServiceKey::of(svc));
        if owned && !desired.iter().any(|d| same_id(&d.service, svc)) {
            ops.push(Op::DelService(svc.clone()));
        }
    }
    for vip in current.bound.difference(&vips) {
        ops.push(Op::Unbind(*vip));
    }
    ops
}

/// `modprobe -a` the IPVS modules; whether it succeeded (a kernel without them, or no
/// modprobe, leaves IPVS unavailable, which the caller reports).
fn load_modules() -> bool {
    let loaded = std::process::Command::new("modprobe").arg("-a").args(IPVS_MODULES).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status();
    match loaded {
        Ok(status) if status.success() => {
            tracing::info!(modules = ?IPVS_MODULES, "loaded the IPVS modules");
            true
        }
        _ => false,
    }
}

/// The IPVS side of the agent: the client, the dummy link, and the record of xvs's services.
pub struct IpvsMirror {
    pub client: IpvsClient,
    pub link: DummyLink,
    owned: Owned,
}

/// The modules IPVS needs: the core and xvs's schedulers (kube-proxy loads the same).
const IPVS_MODULES: [&str; 5] = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs_mh"];

impl IpvsMirror {
    /// Opens the mirror, loading the IPVS modules first if the kernel has not (as kube-proxy
    /// does; in a pod this needs the host's /lib/modules and CAP_SYS_MODULE).
    pub fn open(dummy: &str) -> Result<Self, IpvsError> {
        let client = match IpvsClient::connect() {
            Err(IpvsError::Unavailable) if load_modules() => IpvsClient::connect()?,
            other => other?,
        };
        let link = DummyLink::ensure(dummy)?;
        let owned = Owned::load(Owned::path_for(dummy))?;
        Ok(Self { client, link, owned })
    }

    /// For reading only (`xvs verify`): the dummy link is not created if it is missing.
    pub fn inspect(dummy: &str) -> Result<Self, IpvsError> {
        let client = IpvsClient::connect()?;
        let link = DummyLink::existing(dummy)?;
        let owned = Owned::load(Owned::path_for(dummy))?;
        Ok(Self { client, link, owned })
    }

    /// Reads what the plan needs: dests only of services that are desired or owned. Recorded
    /// services the kernel no longer has are forgotten (in memory; `apply` writes the record).
    /// Without any record (services made by an xvs that kept none), the services on addresses
    /// that only the dummy link has are adopted: never one on a node address.
    pub fn current(&mut self, desired: &[DesiredIpvs]) -> Result<Current, IpvsError> {
        let addrs = self.link.addresses()?;
        let listed = self.client.services()?;
        if !self.owned.found() {
            for svc in &listed {
                if addrs.bound.contains(&svc.addr) && !addrs.elsewhere.contains(&svc.addr) {
                    self.owned.insert(ServiceKey::of(svc));
                }
            }
        }
        self.owned.retain(|k| listed.iter().any(|s| ServiceKey::of(s) == *k));
        let owned: BTreeSet<ServiceKey> = self.owned.keys().copied().collect();
        let mut services = Vec::new();
        for svc in listed {
            let relevant = owned.contains(&ServiceKey::of(&svc)) || desired.iter().any(|d| same_id(&d.service, &svc));
            let dests = if relevant { self.client.dests(&svc)? } else { Vec::new() };
            services.push((svc, dests));
        }
        Ok(Current { services, owned, bound: addrs.bound, node: addrs.elsewhere })
    }

    /// Every difference between the kernel table and `model`, as the operation that would fix it
    /// (`xvs verify --source ipvs`). Dests draining at weight 0 are not differences.
    pub fn drift(&mut self, model: &Model) -> Result<Vec<Op>, IpvsError> {
        self.drift_draining(model, &[])
    }

    /// As [`Self::drift`], with the real servers the eBPF side drains kept at weight 0.
    pub fn drift_draining(&mut self, model: &Model, draining: &[(ServiceId, SocketAddr)]) -> Result<Vec<Op>, IpvsError> {
        let mut desired = render(model);
        for d in &mut desired {
            let id = ServiceId { vip: d.service.addr, port: d.service.port, proto: Protocol::from_number(d.service.protocol as u8).unwrap_or(Protocol::Tcp) };
            d.draining = draining.iter().filter(|(s, _)| *s == id).map(|&(_, ep)| ep).collect();
        }
        Ok(plan(&desired, &self.current(&desired)?))
    }

    /// Brings IPVS to `model`; returns the operations applied and the errors of those that
    /// failed (the rest still ran).
    pub fn sync(&mut self, model: &Model) -> Result<(Vec<Op>, Vec<IpvsError>), IpvsError> {
        let ops = self.drift(model)?;
        Ok(self.apply(ops))
    }

    /// Runs operations from `drift` (or `plan`), one at a time, collecting the errors. Services
    /// about to be made are recorded first (nothing is made if the record cannot be written);
    /// deleted ones, and ones that could not be made, are forgotten after.
    pub fn apply(&mut self, ops: Vec<Op>) -> (Vec<Op>, Vec<IpvsError>) {
        for op in &ops {
            if let Op::AddService(s) = op {
                self.owned.insert(ServiceKey::of(s));
            }
        }
        if let Err(e) = self.owned.save() {
            return (Vec::new(), vec![e]);
        }
        let mut errors = Vec::new();
        let mut done = Vec::new();
        for op in ops {
            let result = match &op {
                Op::Bind(ip) => self.link.bind(*ip),
                Op::Unbind(ip) => self.link.unbind(*ip),
                Op::AddService(s) => self.client.add_service(s),
                Op::EditService(s) => self.client.edit_service(s),
                Op::DelService(s) => self.client.del_service(s),
                Op::AddDest(s, d) => self.client.add_dest(s, d),
                Op::EditDest(s, d) => self.client.edit_dest(s, d),
                Op::DelDest(s, d) => self.client.del_dest(s, d),
                Op::Foreign(s) => Err(IpvsError::Foreign { what: s.name() }),
            };
            match (&op, &result) {
                (Op::DelService(s), Ok(())) | (Op::AddService(s), Err(_)) => self.owned.remove(&ServiceKey::of(s)),
                _ => {}
            }
            match result {
                Ok(()) => done.push(op),
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = self.owned.save() {
            errors.push(e);
        }
        (done, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file;

    fn desired(text: &str) -> Vec<DesiredIpvs> {
        render(&file::parse(text, std::path::Path::new("t.toml")).unwrap_or_default())
    }

    const WEB: &str = "[[service]]\nvip = \"10.96.0.10\"\nport = 80\nbackends = [{ endpoint = \"10.244.1.2:8080\" }, { endpoint = \"10.244.1.3:8080\" }]\n";

    fn shown(ops: &[Op]) -> Vec<String> {
        ops.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn fresh_table_binds_then_adds() {
        let foreign = (IpvsService { protocol: 6, addr: "192.168.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), port: 22, scheduler: "wlc".into(), flags: 0, timeout: 0 }, vec![]);
        let current = Current { services: vec![foreign], ..Current::default() };
        assert_eq!(
            shown(&plan(&desired(WEB), &current)),
            ["bind 10.96.0.10", "-A -t 10.96.0.10:80 -s rr", "-a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1", "-a -t 10.96.0.10:80 -r 10.244.1.3:8080 -m -w 1"]
        );
    }

    fn applied(text: &str) -> Current {
        let mut current = Current::default();
        for d in desired(text) {
            current.bound.insert(d.service.addr);
            current.owned.insert(ServiceKey::of(&d.service));
            current.services.push((d.service, d.dests));
        }
        current
    }

    #[test]
    fn in_sync_means_no_op_and_edits_are_in_place() {
        assert!(plan(&desired(WEB), &applied(WEB)).is_empty());
        let changed = WEB.replace("port = 80\n", "port = 80\nscheduler = \"wrr\"\nsession_affinity_timeout = 60\n").replace("\"10.244.1.3:8080\" }", "\"10.244.1.3:8080\", weight = 5 }");
        assert_eq!(
            shown(&plan(&desired(&changed), &applied(WEB))),
            ["-E -t 10.96.0.10:80 -s wrr -p 60", "-e -t 10.96.0.10:80 -r 10.244.1.3:8080 -m -w 5"]
        );
    }

    #[test]
    fn leaving_dests_drain_while_busy_and_owned_services_go_with_their_vip() {
        let mut current = applied(WEB);
        current.services[0].1[1].active_conns = 2;
        let one = WEB.replace(", { endpoint = \"10.244.1.3:8080\" }", "");
        assert_eq!(shown(&plan(&desired(&one), &current)), ["-e -t 10.96.0.10:80 -r 10.244.1.3:8080 -m -w 0"]);
        current.services[0].1[1].weight = 0;
        assert!(plan(&desired(&one), &current).is_empty(), "still draining");
        current.services[0].1[1].active_conns = 0;
        assert_eq!(shown(&plan(&desired(&one), &current)), ["-d -t 10.96.0.10:80 -r 10.244.1.3:8080"]);
        assert_eq!(shown(&plan(&[], &applied(WEB))), ["-D -t 10.96.0.10:80", "unbind 10.96.0.10"]);
    }

    fn foreign(addr: &str, port: u16) -> (IpvsService, Vec<IpvsDest>) {
        let addr = addr.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        (IpvsService { protocol: 6, addr, port, scheduler: "wlc".into(), flags: 0, timeout: 0 }, vec![])
    }

    #[test]
    fn only_recorded_services_are_edited_or_deleted_whatever_their_address() {
        // A NodePort on the node's own address, and an operator's services beside xvs's: one on
        // the node address, one on a VIP xvs binds (another port), one on xvs's very VIP:port.
        let node_port = "[[service]]\nvip = \"192.168.50.10\"\nport = 30080\nbackends = [{ endpoint = \"10.244.1.2:8080\" }]\n";
        let mut current = applied(WEB);
        current.node.insert("192.168.50.10".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])));
        current.services.push(foreign("192.168.50.10", 22));
        current.services.push(foreign("10.96.0.10", 8443));
        let both = format!("{WEB}{node_port}");
        // The node address is local already: never bound; the NodePort service is made.
        assert_eq!(
            shown(&plan(&desired(&both), &current)),
            ["-A -t 192.168.50.10:30080 -s rr", "-a -t 192.168.50.10:30080 -r 10.244.1.2:8080 -m -w 1"]
        );
        // Nothing desired: xvs's service and VIP go, the foreign ones stay.
        assert_eq!(shown(&plan(&[], &current)), ["-D -t 10.96.0.10:80", "unbind 10.96.0.10"]);
        // A foreign service where a desired one should be is reported, never taken over.
        let mut taken = current.clone();
        taken.owned.clear();
        taken.services[0].1.clear();
        assert_eq!(plan(&desired(WEB), &taken), [Op::Foreign(desired(WEB)[0].service.clone())]);
        // An address an older xvs bound that is a node address now is unbound from the dummy.
        current.bound.insert("192.168.50.10".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])));
        assert_eq!(shown(&plan(&desired(WEB), &current)), ["unbind 192.168.50.10"]);
    }
}
