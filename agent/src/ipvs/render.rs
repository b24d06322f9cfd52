//! The desired state as kube-proxy's IPVS mode writes it: one virtual service per
//! VIP:port:proto with the service's scheduler, PERSISTENT plus timeout for ClientIP affinity
//! (for sh and mh: `sh-fallback` / `mh-fallback` always, as SCHED1, so that a draining
//! destination's sources move on instead of being refused, which is what the eBPF datapath
//! does; `sh-port` / `mh-port` as SCHED2), and
//! Masq real servers with their weights (terminating ones at weight 0).
use super::{
    wire::{FWD_MASQ, SVC_F_PERSISTENT, SVC_F_SCHED1, SVC_F_SCHED2},
    IpvsDest, IpvsService,
};
use xvs_common::Scheduler;

use crate::model::{Model, Service};

/// One virtual service and its real servers, in (address, port) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredIpvs {
    pub service: IpvsService,
    pub dests: Vec<IpvsDest>,
    /// Real servers the eBPF side still drains (`--dataplane both`): kept at weight 0 while
    /// the kernel has them, so both dataplanes delete them at the same moment and keep one
    /// destination order.
    pub draining: Vec<std::net::SocketAddr>,
}

pub fn service(s: &Service) -> DesiredIpvs {
    let mut flags = 0;
    if s.affinity_timeout.is_some() {
        flags |= SVC_F_PERSISTENT;
    }
    if matches!(s.scheduler, Scheduler::SourceHash | Scheduler::MaglevHash) {
        flags |= SVC_F_SCHED1;
    }
    if s.sh_port {
        flags |= SVC_F_SCHED2;
    }
    DesiredIpvs {
        service: IpvsService {
            protocol: u16::from(s.id.proto.number()),
            addr: s.id.vip,
            port: s.id.port,
            scheduler: s.scheduler.ipvs_name().to_owned(),
            flags,
            timeout: s.affinity_timeout.unwrap_or(0),
        },
        dests: s
            .backends
            .iter()
            .map(|b| IpvsDest {
                addr: b.addr,
                port: b.port,
                fwd_method: FWD_MASQ,
                weight: b.effective_weight(),
                active_conns: 0,
                inactive_conns: 0,
            })
            .collect(),
        draining: Vec::new(),
    }
}

/// Every service of the model, in the model's order.
pub fn render(model: &Model) -> Vec<DesiredIpvs> {
    model.services().map(service).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file;

    #[test]
    fn kube_proxy_shape_golden() {
        let model = file::parse(
            r#"
[[service]]
vip = "10.96.0.10"
port = 80
session_affinity_timeout = 10800
backends = [{ endpoint = "10.244.1.3:8080" }, { endpoint = "10.244.1.2:8080", state = "terminating" }]

[[service]]
vip = "fd00::10"
port = 53
protocol = "udp"
scheduler = "sh"
flags = ["sh-port"]
backends = [{ endpoint = "[fd00:1::2]:5353", weight = 4 }]

[[service]]
vip = "10.96.0.11"
port = 443
scheduler = "mh"
backends = [{ endpoint = "10.244.1.2:8443" }]

[[service]]
vip = "10.96.0.12"
port = 443
scheduler = "mh"
flags = ["mh-port"]
backends = [{ endpoint = "10.244.1.2:8443" }]
"#,
            std::path::Path::new("t.toml"),
        )
        .unwrap_or_default();
        let text: Vec<String> = render(&model)
            .iter()
            .map(|d| {
                let dests: Vec<String> = d.dests.iter().map(|x| format!("{}:{}/fwd{}/w{}", x.addr, x.port, x.fwd_method, x.weight)).collect();
                format!("{} {} flags={:#x} timeout={} [{}]", d.service.name(), d.service.scheduler, d.service.flags, d.service.timeout, dests.join(" "))
            })
            .collect();
        assert_eq!(
            text,
            [
                "TCP 10.96.0.10:80 rr flags=0x1 timeout=10800 [10.244.1.2:8080/fwd0/w0 10.244.1.3:8080/fwd0/w1]",
                // mh-fallback always (SCHED1), mh-port (SCHED2) when asked.
                "TCP 10.96.0.11:443 mh flags=0x8 timeout=0 [10.244.1.2:8443/fwd0/w1]",
                "TCP 10.96.0.12:443 mh flags=0x18 timeout=0 [10.244.1.2:8443/fwd0/w1]",
                "UDP [fd00::10]:53 sh flags=0x18 timeout=0 [fd00:1::2:5353/fwd0/w4]",
            ]
        );
    }
}
