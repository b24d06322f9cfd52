//! Pinning under bpffs, so the datapath outlives the agent: maps (services, flows, counters) and
//! program links stay in the kernel when the agent stops or crashes, traffic keeps flowing, and
//! the next agent adopts them: it reuses the pinned maps and swaps its programs into the pinned
//! links atomically (bpf_link_update), so established flows keep their backends.
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData},
    programs::{links::{FdLink, PinnedLink}, tc::SchedClassifierLink, xdp::XdpLink, TcAttachType, XdpMode},
};
use xvs_common::ALL_MAPS;

use super::{error::DataplaneError, loader::Dataplane, maps::Maps, PROG_XDP};

/// Where the agent pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xvs";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin path of map `name` under `dir`.
pub fn map_pin(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

pub(super) fn link_pin(dir: &Path, iface: &str, what: &str) -> PathBuf {
    dir.join("links").join(format!("{iface}_{what}"))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: zeroed statfs is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// Marks a bpffs that xvs mounted, so that cleanup takes it down again: a directory, as a bpffs
/// holds no regular files (and no names with a dot).
const MOUNTED_MARK: &str = "xvs-mounted-it";

/// Makes `dir` a directory on a bpffs: if its parent is not on one, a bpffs is mounted on the
/// parent (as Cilium does for /sys/fs/bpf on hosts that do not mount it), and marked as xvs's.
pub fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let err = |what: String, source: std::io::Error| DataplaneError::Pin { path: dir.to_owned(), what, source };
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
        std::fs::create_dir_all(parent).map_err(|e| err(format!("create {}", parent.display()), e))?;
        let target = CString::new(parent.as_os_str().as_bytes())
            .map_err(|_| err("use the path".into(), std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(err(format!("mount bpffs on {} (mount -t bpf bpf {0})", parent.display()), std::io::Error::last_os_error()));
        }
        std::fs::create_dir_all(parent.join(MOUNTED_MARK)).map_err(|e| err(format!("mark the bpffs on {} as xvs's", parent.display()), e))?;
    }
    std::fs::create_dir_all(dir.join("links")).map_err(|e| err("create the pin directory".into(), e))
}

impl Maps {
    /// Pins again every map whose pin is gone (removed behind the agent's back); returns their
    /// names. The maps themselves live on in this process and its programs.
    pub fn pin_missing(&self, dir: &Path) -> Result<Vec<&'static str>, DataplaneError> {
        let mut pinned = Vec::new();
        for (name, map) in self.all() {
            let path = map_pin(dir, name);
            if path.exists() {
                continue;
            }
            map.pin(&path).map_err(|e| DataplaneError::Pin { path: path.clone(), what: "pin the map again".into(), source: std::io::Error::other(e) })?;
            pinned.push(name);
        }
        Ok(pinned)
    }

    /// Every map with its name, in `ALL_MAPS`' order. The array is as long as `ALL_MAPS`, so a
    /// map added there and not here fails the build (a map missing here was once never pinned
    /// again after its pin was removed).
    fn all(&self) -> [(&'static str, &MapData); xvs_common::ALL_MAPS.len()] {
        use aya::maps::IterableMap as _;
        let all = [
            (xvs_common::MAP_SERVICES, self.services.map()),
            (xvs_common::MAP_SLOTS, self.slots.map()),
            (xvs_common::MAP_BACKENDS, self.backends.map()),
            (xvs_common::MAP_CONNTRACK, self.conntrack.map()),
            (xvs_common::MAP_AFFINITY, self.affinity.map()),
            (xvs_common::MAP_SERVICE_STATS, self.service_stats.map()),
            (xvs_common::MAP_BACKEND_STATS, self.backend_stats.map()),
            (xvs_common::MAP_REASONS, self.reasons.map()),
            (xvs_common::MAP_CLOCK, self.clock.map()),
            (xvs_common::MAP_DRAINS, self.drains.map()),
            (xvs_common::MAP_STAMP, self.stamp.map()),
            (xvs_common::MAP_SOURCE_RANGES, self.source_ranges.map()),
            (xvs_common::MAP_NAT, self.nat.map()),
            (xvs_common::MAP_NAT_ADDRS, self.nat_addrs.map()),
            (xvs_common::sock::MAP_SOCK_NAT, self.sock_nat.map()),
            (xvs_common::sock::MAP_SOCK_EVENTS, self.sock_events.map()),
            (xvs_common::sock::MAP_SOCK_CONFIG, self.sock_config.map()),
        ];
        debug_assert!(all.iter().map(|(name, _)| *name).eq(xvs_common::ALL_MAPS), "Maps::all and ALL_MAPS disagree");
        all
    }

    /// Opens the maps a running (or stopped) agent pinned under `dir`, without loading programs:
    /// what `xvs list` and `xvs verify` read.
    pub fn open_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        let mut maps = std::collections::HashMap::new();
        for name in ALL_MAPS {
            let path = map_pin(dir, name);
            if path.exists() {
                super::layout::check_pinned(name, &path, dir)?;
            }
            let data = MapData::from_pin(&path).map_err(|source| DataplaneError::NotPinned { path: path.clone(), source: Box::new(source) })?;
            let map = Map::from_map_data(data).map_err(DataplaneError::map(name, "open"))?;
            maps.insert(name, map);
        }
        Maps::from_maps(&mut |name| maps.remove(name))
    }
}

/// Removes everything pinned under `dir` (links first, which detaches the programs once no
/// process holds them).
/// When the bpffs under `dir` was mounted by xvs and holds nothing else now, it is unmounted
/// too; its mount point is returned then.
pub fn unpin_all(dir: &Path) -> Result<Option<PathBuf>, DataplaneError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DataplaneError::Pin { path: dir.to_owned(), what: "remove".into(), source: e });
        }
        _ => {}
    }
    let Some(parent) = dir.parent() else { return Ok(None) };
    let mark = parent.join(MOUNTED_MARK);
    // Anything pinned there besides (another agent's pin directory) keeps it mounted. Names with
    // a dot are the kernel's own (maps.debug, progs.debug): pins cannot have one.
    let pinned = |name: &std::ffi::OsStr| name != MOUNTED_MARK && !name.as_bytes().contains(&b'.');
    let others = std::fs::read_dir(parent).map(|d| d.flatten().filter(|e| pinned(&e.file_name())).count()).unwrap_or(1);
    if !mark.is_dir() || others > 0 {
        return Ok(None);
    }
    let err = |what: String, source: std::io::Error| DataplaneError::Pin { path: parent.to_owned(), what, source };
    std::fs::remove_dir(&mark).map_err(|e| err("remove the mark of xvs's bpffs".into(), e))?;
    let target = CString::new(parent.as_os_str().as_bytes()).map_err(|_| err("use the path".into(), std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
        return Err(err("unmount the bpffs xvs mounted".into(), std::io::Error::last_os_error()));
    }
    Ok(Some(parent.to_owned()))
}

/// Whether updating a link failed because its interface is gone (ENOLINK: "Link has been
/// severed").
fn is_severed(error: &aya::programs::ProgramError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::ENOLINK)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// An existing pinned link, or None (absent, or defunct: its interface is gone).
fn pinned_link(path: &Path) -> Option<FdLink> {
    let link = PinnedLink::from_pin(path).ok()?;
    let fd: FdLink = link.into();
    match fd.info() {
        Ok(_) => Some(fd),
        Err(_) => {
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

impl Dataplane {
    /// Attaches XDP to `iface` through a link pinned under `dir`: adopts (and updates to this
    /// object's program) a link a previous agent left, or creates and pins a new one.
    pub fn attach_xdp_pinned(&mut self, iface: &str, mode: XdpMode, dir: &Path) -> Result<(), DataplaneError> {
        let path = link_pin(dir, iface, "xdp");
        let fail = |op: String| move |source| DataplaneError::Program { program: PROG_XDP, op, source: Box::new(source) };
        let xdp = self.xdp()?;
        if let Some(fd) = pinned_link(&path)
            && let Ok(link) = XdpLink::try_from(fd)
        {
            match xdp.attach_to_link(link) {
                // The pin alone keeps the link: removing it detaches (and the agent's check
                // then attaches anew), as for a link this agent created.
                Ok(id) => {
                    drop(xdp.take_link(id));
                    return Ok(());
                }
                // The interface was deleted (and maybe re-created) under the link: replace it.
                Err(e) if is_severed(&e) => tracing::warn!(iface, "the pinned XDP link was severed (interface re-created); attaching anew"),
                Err(e) => return Err(fail(format!("replace the program in the pinned link {}", path.display()))(e)),
            }
        }
        let _ = std::fs::remove_file(&path);
        let id = xdp.attach(iface, mode).map_err(fail(format!("attach to {iface} in {mode:?} mode (try another --xdp-mode, or --attach tc)")))?;
        let link = xdp.take_link(id).map_err(fail("take the link".into()))?;
        let fd = FdLink::try_from(link).map_err(|_| DataplaneError::Unpinnable { iface: iface.into(), what: "XDP" })?;
        fd.pin(&path).map_err(|e| DataplaneError::Pin { path: path.clone(), what: "pin the XDP link".into(), source: std::io::Error::other(e) })?;
        Ok(())
    }

    /// The same for a TC program (`name`) in direction `kind`, through a TCX link.
    pub fn attach_tc_pinned(&mut self, iface: &str, name: &'static str, kind: TcAttachType, dir: &Path) -> Result<(), DataplaneError> {
        let what = match kind {
            TcAttachType::Ingress => "tc_ingress",
            _ => "tc_egress",
        };
        let path = link_pin(dir, iface, what);
        let fail = |op: String| move |source| DataplaneError::Program { program: name, op, source: Box::new(source) };
        let tc = self.tc(name)?;
        if let Some(fd) = pinned_link(&path)
            && let Ok(link) = SchedClassifierLink::try_from(fd)
        {
            match tc.attach_to_link(link) {
                Ok(id) => {
                    drop(tc.take_link(id));
                    return Ok(());
                }
                Err(e) if is_severed(&e) => tracing::warn!(iface, what, "the pinned TC link was severed (interface re-created); attaching anew"),
                Err(e) => return Err(fail(format!("replace the program in the pinned link {}", path.display()))(e)),
            }
        }
        let _ = std::fs::remove_file(&path);
        let id = tc.attach(iface, kind).map_err(fail(format!("attach to {iface} {kind:?}")))?;
        let link = tc.take_link(id).map_err(fail("take the link".into()))?;
        let fd = FdLink::try_from(link).map_err(|_| DataplaneError::Unpinnable { iface: iface.into(), what: "TC (needs TCX, kernel >= 6.6)" })?;
        fd.pin(&path).map_err(|e| DataplaneError::Pin { path: path.clone(), what: format!("pin the {what} link"), source: std::io::Error::other(e) })?;
        Ok(())
    }
}
