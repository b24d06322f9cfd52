//! Tests against a real IPVS kernel. This machine's kernel has none, so they are ignored here
//! and run inside a VM booting Debian's kernel by `cargo xtask vm-test` (part of
//! `cargo xtask test`), with Debian's ipvsadm as the independent reader.
use std::{net::IpAddr, process::Command};

use xvs::{
    ipvs::{IpvsClient, IpvsDest, IpvsError, IpvsService},
    view::{ipvsadm, Listing},
};

fn ipvsadm(args: &[&str]) -> String {
    let out = Command::new("ipvsadm").args(args).output().unwrap_or_else(|e| panic!("ipvsadm {args:?}: {e}"));
    assert!(out.status.success(), "ipvsadm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn svc(addr: &str, port: u16, scheduler: &str, flags: u32, timeout: u32) -> IpvsService {
    IpvsService { protocol: 6, addr: ip(addr), port, scheduler: scheduler.into(), flags, timeout }
}

fn dest(addr: &str, port: u16, weight: u32) -> IpvsDest {
    IpvsDest { addr: ip(addr), port, fwd_method: 0, weight, active_conns: 0, inactive_conns: 0 }
}

fn client() -> IpvsClient {
    let c = IpvsClient::connect().unwrap_or_else(|e| panic!("{e}"));
    c.flush().unwrap_or_else(|e| panic!("{e}"));
    c
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn client_writes_what_ipvsadm_lists_byte_for_byte() {
    let c = client();
    let info = c.info().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.version_string(), "1.2.1");

    let web = svc("10.96.0.10", 80, "rr", 0, 0);
    c.add_service(&web).unwrap_or_else(|e| panic!("{e}"));
    for (i, a) in ["10.244.1.3", "10.244.1.2", "10.244.2.7"].iter().enumerate() {
        c.add_dest(&web, &dest(a, 8080, 1 + i as u32 % 2)).unwrap_or_else(|e| panic!("{e}"));
    }
    let sticky = svc("10.96.0.11", 443, "sh", wire_flags(true, true), 10800);
    c.add_service(&sticky).unwrap_or_else(|e| panic!("{e}"));
    c.add_dest(&sticky, &dest("10.244.1.2", 8443, 3)).unwrap_or_else(|e| panic!("{e}"));
    let v6 = IpvsService { protocol: 17, ..svc("fd00::10", 53, "wrr", 0, 0) };
    c.add_service(&v6).unwrap_or_else(|e| panic!("{e}"));
    c.add_dest(&v6, &dest("fd00:1::2", 5353, 2)).unwrap_or_else(|e| panic!("{e}"));

    let services = c.services().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(services.len(), 3);
    assert!(services.contains(&sticky), "{services:?}");
    let listing = Listing::read_ipvs(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ipvsadm::list(&listing), ipvsadm(&["-L", "-n"]));

    // Edits land in place; weight 0 drains.
    c.edit_dest(&web, &dest("10.244.1.3", 8080, 0)).unwrap_or_else(|e| panic!("{e}"));
    c.edit_service(&svc("10.96.0.10", 80, "wrr", 0, 0)).unwrap_or_else(|e| panic!("{e}"));
    let text = ipvsadm(&["-L", "-n"]);
    assert!(text.contains("TCP  10.96.0.10:80 wrr\n"), "{text}");
    assert!(text.contains("  -> 10.244.1.3:8080              Masq    0      0          0"), "{text}");
    c.del_dest(&web, &dest("10.244.1.3", 8080, 0)).unwrap_or_else(|e| panic!("{e}"));
    c.del_service(&v6).unwrap_or_else(|e| panic!("{e}"));
    let listing = Listing::read_ipvs(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ipvsadm::list(&listing), ipvsadm(&["-L", "-n"]));
}

fn wire_flags(persistent: bool, sh_port: bool) -> u32 {
    use xvs::ipvs::wire::{SVC_F_PERSISTENT, SVC_F_SCHED2};
    (if persistent { SVC_F_PERSISTENT } else { 0 }) | (if sh_port { SVC_F_SCHED2 } else { 0 })
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask vm-test`"]
fn kernel_errors_map_to_typed_errors_naming_the_object() {
    let c = client();
    let web = svc("10.96.0.10", 80, "rr", 0, 0);
    c.add_service(&web).unwrap_or_else(|e| panic!("{e}"));
    let again = c.add_service(&web);
    assert!(matches!(again, Err(IpvsError::Exists { .. })), "{again:?}");
    let unknown = c.add_service(&svc("10.96.0.12", 80, "nosuch", 0, 0));
    assert!(matches!(unknown, Err(IpvsError::NoScheduler { .. })), "{unknown:?}");
    let missing = c.del_dest(&web, &dest("10.244.9.9", 80, 1));
    assert!(matches!(missing, Err(IpvsError::NoDest { .. })), "{missing:?}");
    let no_service = c.edit_service(&svc("10.96.0.99", 80, "rr", 0, 0));
    let text = no_service.as_ref().map_err(ToString::to_string).err().unwrap_or_default();
    assert!(matches!(no_service, Err(IpvsError::NoService { .. })), "{no_service:?}");
    assert_eq!(text, "edit TCP 10.96.0.99:80: no such virtual service");
    // A dest dump of a service that does not exist is empty, not an error.
    assert_eq!(c.dests(&svc("10.96.0.98", 80, "rr", 0, 0)).map(|d| d.len()).ok(), Some(0));
}
