//! TC through netlink (a `cls_bpf` filter on the clsact qdisc), for kernels without TCX links
//! (before 6.6: Debian 12's 6.1, Ubuntu 22.04's 5.15, RHEL 9's 5.14). Such a filter is no BPF
//! link and cannot be pinned, but it needs no pin: it stays in the kernel, holding its program,
//! when the agent stops or crashes. xvs puts its filters at a fixed priority and handle, so a
//! restarted agent finds them and swaps its program in (a filter change in place: packets see
//! the old program or the new one, never none), and cleanup finds them to remove them.
use aya::{
    programs::{
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        TcAttachType,
    },
    util::KernelVersion,
};

use super::{
    error::DataplaneError,
    loader::{Dataplane, PROG_TC_EGRESS, PROG_TC_INGRESS},
};

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcLinks {
    /// TCX links (kernel 6.6+), pinned like XDP's.
    Tcx,
    /// Netlink filters at [`PRIORITY`] / [`HANDLE`].
    Netlink,
}

impl TcLinks {
    /// TCX where the kernel has it, netlink filters elsewhere.
    pub fn detect() -> Self {
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => Self::Tcx,
            _ => Self::Netlink,
        }
    }
}

/// xvs's filters come first (priority 1, as Cilium's), under a handle of their own.
const PRIORITY: u16 = 1;
const HANDLE: TcHandle = TcHandle::new(0, 0x5856);

impl Dataplane {
    /// Puts this load's TC program `name` into xvs's filter on `iface` (direction `kind`):
    /// in place when the filter is there (a restarted agent), else as a new filter.
    pub fn attach_tc_netlink(&mut self, iface: &str, name: &'static str, kind: TcAttachType) -> Result<(), DataplaneError> {
        let fail = |op: String| move |source| DataplaneError::Program { program: name, op, source: Box::new(source) };
        // Already present is fine; any real problem shows up in the attach below.
        let _ = tc::qdisc_add_clsact(iface);
        let tc = self.tc(name)?;
        let existing = SchedClassifierLink::attached(iface, kind, PRIORITY, HANDLE, None);
        let id = match existing.map(|link| tc.attach_to_link(link)) {
            Ok(Ok(id)) => id,
            // No such filter (first start, or the interface was re-created): a new one.
            _ => tc
                .attach_with_options(iface, kind, TcAttachOptions::Netlink(NlOptions { priority: PRIORITY, handle: HANDLE, classid: None }))
                .map_err(fail(format!("attach to {iface} {kind:?} as a netlink filter (priority {PRIORITY}; needs the clsact qdisc and cls_bpf: modules sch_ingress and cls_bpf)")))?,
        };
        // The filter outlives this process on purpose (the next agent adopts it): the handle
        // would detach it when dropped.
        let link = tc.take_link(id).map_err(fail("take the link".into()))?;
        std::mem::forget(link);
        Ok(())
    }
}

/// Removes xvs's netlink TC filters from every interface (`xvs cleanup`): nothing pins them,
/// so removing the pins does not detach them. Returns the interfaces they were removed from.
pub fn detach_tc_filters() -> Vec<String> {
    let mut detached = Vec::new();
    for iface in interface_names() {
        for (kind, name) in [(TcAttachType::Ingress, PROG_TC_INGRESS), (TcAttachType::Egress, PROG_TC_EGRESS)] {
            let present = tc::qdisc_detach_program(&iface, kind, name).is_ok();
            if present && !detached.contains(&iface) {
                detached.push(iface.clone());
            }
        }
    }
    detached
}

fn interface_names() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return names;
    }
    let mut at = list;
    // SAFETY: walking the array up to its terminator; names are NUL-terminated.
    unsafe {
        while (*at).if_index != 0 {
            names.push(std::ffi::CStr::from_ptr((*at).if_name).to_string_lossy().into_owned());
            at = at.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}
