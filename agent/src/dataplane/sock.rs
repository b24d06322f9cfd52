//! Socket-level load balancing: the cgroup programs (ebpf/src/sock.rs) attached to a cgroup v2,
//! the root of the host's by default, so every process of the node and every pod is under it.
//! The links are pinned beside the interface links and adopted by the next agent, which swaps
//! its programs into them (BPF_LINK_UPDATE): a socket never finds the hooks missing.
use std::{
    ffi::CString,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSock, CgroupSockAddr};
use xvs_common::sock::{SockConfig, MAP_SOCK_CONFIG, SOCK_CFG_ENABLED, SOCK_CFG_HOST_NS_ONLY};

use super::{error::DataplaneError, loader::Dataplane, maps::Maps, pin::link_pin};

/// The socket address hooks, by program name and the name of their link pin.
pub const SOCK_ADDR_PROGRAMS: [(&str, &str); 8] = [
    ("xvs_sock_connect4", "connect4"),
    ("xvs_sock_connect6", "connect6"),
    ("xvs_sock_sendmsg4", "sendmsg4"),
    ("xvs_sock_sendmsg6", "sendmsg6"),
    ("xvs_sock_recvmsg4", "recvmsg4"),
    ("xvs_sock_recvmsg6", "recvmsg6"),
    ("xvs_sock_getpeername4", "getpeername4"),
    ("xvs_sock_getpeername6", "getpeername6"),
];
/// The hook that removes a released socket's translations.
pub const PROG_SOCK_RELEASE: (&str, &str) = ("xvs_sock_release", "sock_release");

/// The name the link pins of the socket hooks share (one set per agent: the pin directory).
const LINK_PREFIX: &str = "cgroup";

/// How socket-level load balancing is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketLb {
    /// The cgroup v2 the programs attach to (its descendants are covered too).
    pub cgroup: PathBuf,
    /// Only the host's network namespace is translated (`--socket-lb-hostns-only`).
    pub host_ns_only: bool,
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid hosts), from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape(left.split_whitespace().nth(4)?)))
    })
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: zeroed statfs is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// The cgroup v2 `path` names: itself, or, for a host's /sys/fs/cgroup mounted into a pod
/// from a hybrid host (cgroup v1 controllers with v2 beside them), its `unified` directory.
pub fn resolve_cgroup2(path: &Path) -> Result<PathBuf, String> {
    if is_cgroup2(path) {
        return Ok(path.to_owned());
    }
    let unified = path.join("unified");
    if is_cgroup2(&unified) {
        return Ok(unified);
    }
    Err(format!("{} is not a cgroup v2 (nor a cgroup v1 hierarchy with one at unified/)", path.display()))
}

/// mountinfo's octal escapes (`\040` for a space) in a path.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok()).and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cookie of the network namespace this process runs in (SO_NETNS_COOKIE, kernel 5.14+).
pub fn netns_cookie() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and an out-buffer of the size passed.
    let rc = unsafe { libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &raw mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

impl Maps {
    /// Turns the socket hooks on (with their settings) or off; they read this at every call.
    pub fn set_socket_lb(&mut self, lb: Option<&SocketLb>) -> Result<(), DataplaneError> {
        let config = match lb {
            None => SockConfig::default(),
            Some(lb) => {
                let mut flags = SOCK_CFG_ENABLED;
                let mut host_netns_cookie = 0;
                if lb.host_ns_only {
                    flags |= SOCK_CFG_HOST_NS_ONLY;
                    host_netns_cookie = netns_cookie().map_err(|source| DataplaneError::Pin {
                        path: "/proc/self/ns/net".into(),
                        what: "read the host network namespace's cookie (SO_NETNS_COOKIE, kernel 5.14+) for --socket-lb-hostns-only".into(),
                        source,
                    })?;
                }
                SockConfig { host_netns_cookie, flags, _pad: 0 }
            }
        };
        self.sock_config.set(0, config, 0).map_err(DataplaneError::map(MAP_SOCK_CONFIG, "write"))
    }
}

/// The bpf(2) commands used here, which aya does not offer for cgroup links.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// The link pinned at `path`, opened (BPF_OBJ_GET).
fn open_pinned_link(path: &Path) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let attr = ObjGet { pathname: name.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: bpf(2) with a fully initialised attribute of the size passed; `name` outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &raw const attr, std::mem::size_of::<ObjGet>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of the cgroup a cgroup link is attached to (BPF_OBJ_GET_INFO_BY_FD), which is the
/// inode number of its directory on the cgroup v2 filesystem.
fn link_cgroup_id(link: &OwnedFd) -> std::io::Result<u64> {
    /// `struct bpf_link_info` up to its cgroup member (type, id, prog_id, then the union at 16).
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        kind: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        cgroup_id: u64,
        attach_type: u32,
        _rest: [u32; 9],
    }
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_CGROUP: u32 = 3;
    let mut info = LinkInfo::default();
    let attr = InfoByFd { bpf_fd: link.as_raw_fd() as u32, info_len: std::mem::size_of::<LinkInfo>() as u32, info: (&raw mut info) as u64 };
    // SAFETY: bpf(2) with a fully initialised attribute; the kernel writes at most `info_len`
    // bytes into `info`, which outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &raw const attr, std::mem::size_of::<InfoByFd>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if info.kind != BPF_LINK_TYPE_CGROUP {
        return Err(std::io::Error::other(format!("link type {} is not a cgroup link", info.kind)));
    }
    Ok(info.cgroup_id)
}

/// Swaps `program` into `link` (BPF_LINK_UPDATE): the hook runs the old program or the new
/// one, never none. Fails for a link whose cgroup is gone.
fn update_link(link: &OwnedFd, program: impl AsFd) -> std::io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdate { link_fd: link.as_raw_fd() as u32, new_prog_fd: program.as_fd().as_raw_fd() as u32, flags: 0, old_prog_fd: 0 };
    // SAFETY: bpf(2) with a fully initialised attribute of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, &raw const attr, std::mem::size_of::<LinkUpdate>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

impl Dataplane {
    /// Every socket hook, loaded (the verifier's verdict on this kernel).
    pub fn load_socket_lb(&mut self) -> Result<(), DataplaneError> {
        for (name, _) in SOCK_ADDR_PROGRAMS {
            self.program::<CgroupSockAddr>(name)?;
        }
        self.program::<CgroupSock>(PROG_SOCK_RELEASE.0)?;
        Ok(())
    }

    /// Attaches every socket hook to `cgroup` without pins: the hooks go when this Dataplane is
    /// dropped (the bench's way; the agent pins them).
    pub fn attach_socket_lb(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        let cgroup_fd = open_cgroup(cgroup)?;
        let failed = |name: &'static str| move |source| DataplaneError::Program { program: name, op: format!("attach to the cgroup {}", cgroup.display()), source: Box::new(source) };
        for (name, _) in SOCK_ADDR_PROGRAMS {
            self.program::<CgroupSockAddr>(name)?.attach(&cgroup_fd, CgroupAttachMode::Single).map_err(failed(name))?;
        }
        let (name, _) = PROG_SOCK_RELEASE;
        self.program::<CgroupSock>(name)?.attach(&cgroup_fd, CgroupAttachMode::Single).map_err(failed(name))?;
        Ok(())
    }

    /// Attaches every socket hook to `cgroup` through links pinned under `dir`: a link a
    /// previous agent pinned is adopted (this load's program swapped in), a missing one is
    /// created and pinned. Returns how many were created.
    pub fn attach_socket_lb_pinned(&mut self, cgroup: &Path, dir: &Path) -> Result<usize, DataplaneError> {
        let cgroup_fd = open_cgroup(cgroup)?;
        // `Single` is aya's "no flags": a cgroup BPF link takes none (EINVAL), yet always sits
        // beside the cgroup's other programs, as BPF_F_ALLOW_MULTI would.
        let mut created = 0;
        for (name, hook) in SOCK_ADDR_PROGRAMS {
            let program = self.program::<CgroupSockAddr>(name)?;
            let attach = |p: &mut CgroupSockAddr| p.attach(&cgroup_fd, CgroupAttachMode::Single).and_then(|id| p.take_link(id)).map(|l| FdLink::try_from(l).ok());
            created += usize::from(hook_up(program, CgroupSockAddr::fd, attach, (name, hook), cgroup, dir)?);
        }
        let (name, hook) = PROG_SOCK_RELEASE;
        let program = self.program::<CgroupSock>(name)?;
        let attach = |p: &mut CgroupSock| p.attach(&cgroup_fd, CgroupAttachMode::Single).and_then(|id| p.take_link(id)).map(|l| FdLink::try_from(l).ok());
        created += usize::from(hook_up(program, CgroupSock::fd, attach, (name, hook), cgroup, dir)?);
        Ok(created)
    }
}

fn open_cgroup(cgroup: &Path) -> Result<std::fs::File, DataplaneError> {
    std::fs::File::open(cgroup).map_err(|source| DataplaneError::Pin {
        path: cgroup.to_owned(),
        what: "open the cgroup v2 for socket-level load balancing (--cgroup-root)".into(),
        source,
    })
}

/// One hook: adopts its pinned link, or attaches `program` to `cgroup` and pins the new link
/// (returns true then).
fn hook_up<P>(
    program: &mut P,
    fd: impl Fn(&P) -> Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
    attach: impl FnOnce(&mut P) -> Result<Option<FdLink>, aya::programs::ProgramError>,
    (name, hook): (&'static str, &str),
    cgroup: &Path,
    dir: &Path,
) -> Result<bool, DataplaneError> {
    let path = link_pin(dir, LINK_PREFIX, hook);
    let program_fd = fd(program).map_err(|source| DataplaneError::Program { program: name, op: "take its fd".into(), source: Box::new(source) })?;
    if adopt(&path, program_fd, cgroup)? {
        return Ok(false);
    }
    let link = attach(program).map_err(|source| DataplaneError::Program { program: name, op: format!("attach to the cgroup {}", cgroup.display()), source: Box::new(source) })?;
    let link = link.ok_or_else(|| DataplaneError::Unpinnable { iface: "the cgroup".into(), what: "socket hook (needs BPF links, kernel >= 5.7)" })?;
    link.pin(&path).map_err(|e| DataplaneError::Pin { path: path.clone(), what: format!("pin the {hook} link"), source: std::io::Error::other(e) })?;
    Ok(true)
}

/// Swaps `program` into the link pinned at `path` if it is attached to `cgroup`; false when
/// there is none to adopt (a stale pin, or one on another cgroup after `--cgroup-root`
/// changed, is removed, which detaches it).
fn adopt(path: &Path, program: impl AsFd, cgroup: &Path) -> Result<bool, DataplaneError> {
    let Ok(link) = open_pinned_link(path) else {
        let _ = std::fs::remove_file(path);
        return Ok(false);
    };
    let wanted = std::fs::metadata(cgroup).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    let attached = link_cgroup_id(&link).ok();
    if attached != wanted {
        tracing::info!(pin = %path.display(), cgroup = %cgroup.display(), "the pinned socket hook is on another cgroup: detached, attaching to this one");
        let _ = std::fs::remove_file(path);
        return Ok(false);
    }
    match update_link(&link, program) {
        Ok(()) => Ok(true),
        // Its cgroup is gone (ENOLINK) or the link cannot take this program: attach anew.
        Err(e) => {
            tracing::warn!(pin = %path.display(), error = %e, "the pinned socket hook link could not be adopted; attaching anew");
            let _ = std::fs::remove_file(path);
            Ok(false)
        }
    }
}

/// The link pin of every socket hook under `dir`.
fn hook_pins(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    SOCK_ADDR_PROGRAMS.iter().chain([&PROG_SOCK_RELEASE]).map(move |(_, hook)| link_pin(dir, LINK_PREFIX, hook))
}

/// Whether every socket hook's link is pinned under `dir`.
pub fn socket_lb_pinned(dir: &Path) -> bool {
    hook_pins(dir).all(|pin| pin.exists())
}

/// Detaches the socket hooks a previous agent pinned under `dir` (`--socket-lb off`); returns
/// how many there were.
pub fn detach_socket_lb(dir: &Path) -> usize {
    hook_pins(dir).filter(|pin| std::fs::remove_file(pin).is_ok()).count()
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape("/mnt/my\\040cgroup"), "/mnt/my cgroup");
        assert_eq!(unescape("/odd\\"), "/odd\\");
    }
}
