//! Errors of the IPVS layer, mapped from the kernel's errno for each command (see
//! ../shared/reference/ipvs-netlink.md §4) and naming the object they are about.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("IPVS is not available in this kernel: load ip_vs (`modprobe ip_vs`) or run with --dataplane ebpf")]
    Unavailable,
    #[error("cannot open a generic netlink socket: {0}")]
    Socket(String),
    #[error("{what}: already exists")]
    Exists { what: String },
    #[error("{what}: no such virtual service")]
    NoService { what: String },
    #[error("{what}: scheduler not found (is its module, ip_vs_<name>, available?)")]
    NoScheduler { what: String },
    #[error("{what}: no such real server")]
    NoDest { what: String },
    #[error("{what}: a value is out of range (weight or thresholds)")]
    Range { what: String },
    #[error("{what}: permission denied: IPVS needs CAP_NET_ADMIN")]
    Permission { what: String },
    #[error("{what}: the kernel refused it (errno {errno}: {})", std::io::Error::from_raw_os_error(*errno))]
    Kernel { what: String, errno: i32 },
    #[error("{what}: netlink failure: {detail}")]
    Netlink { what: String, detail: String },
    #[error("{}: the record of xvs's IPVS services cannot be used: {detail}; IPVS is left as it is until the file is fixed or removed (without a record, xvs adopts the services on addresses that only its dummy link has)", path.display())]
    Record { path: std::path::PathBuf, detail: String },
    #[error("{what}: an IPVS service that xvs did not make is in the way; it is left alone (remove it, or move the Service)")]
    Foreign { what: String },
    #[error("encoding an IPVS message failed: {0}")]
    Encode(String),
}

impl IpvsError {
    pub(super) fn encode(e: impl std::fmt::Display) -> Self {
        Self::Encode(e.to_string())
    }

    /// Maps a kernel errno of command `what` (`service_cmd`: the command is about a service, so
    /// ENOENT means an unknown scheduler; otherwise it means an unknown destination).
    pub(super) fn from_errno(what: String, errno: i32, service_cmd: bool) -> Self {
        match errno {
            libc::EEXIST => Self::Exists { what },
            libc::ESRCH => Self::NoService { what },
            libc::ENOENT if service_cmd => Self::NoScheduler { what },
            libc::ENOENT => Self::NoDest { what },
            libc::ERANGE => Self::Range { what },
            libc::EPERM => Self::Permission { what },
            _ => Self::Kernel { what, errno },
        }
    }
}
