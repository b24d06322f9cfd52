//! Errors of the dataplane layer, each naming the object and what to do.
use std::path::PathBuf;

use aya::{maps::MapError, programs::ProgramError, EbpfError};

use super::tables::TableError;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot read the eBPF object {path} (build it with `cargo xtask build-ebpf` or pass --bpf-object)")]
    ObjectMissing { path: PathBuf, source: std::io::Error },
    #[error("loading the eBPF object {path} failed (needs root or CAP_BPF+CAP_NET_ADMIN, kernel >= 5.12)")]
    Load { path: PathBuf, source: Box<EbpfError> },
    #[error("the eBPF object has no map {0}: object and agent are from different builds")]
    MissingMap(&'static str),
    #[error("the eBPF object has no program {0}: object and agent are from different builds")]
    MissingProgram(&'static str),
    #[error("map {map}: {op} failed")]
    Map { map: &'static str, op: &'static str, source: Box<MapError> },
    #[error("map {map}: batch {op} failed")]
    Batch { map: &'static str, op: &'static str, source: super::batch::BatchError },
    #[error("program {program}: {op} failed")]
    Program { program: &'static str, op: String, source: Box<ProgramError> },
    #[error("service {service}: invalid selection table")]
    Table { service: String, source: TableError },
    #[error("{path}: cannot {what}")]
    Pin { path: PathBuf, what: String, source: std::io::Error },
    #[error("no xvs dataplane pinned at {path} (is `xvs run` running, or was it started with another --pin-dir?)")]
    NotPinned { path: PathBuf, source: Box<MapError> },
    #[error("the pinned map {map} under {dir} has another layout than this build's (left by another xvs version): run `xvs cleanup` to start afresh (drops established flows)")]
    PinnedLayout { dir: PathBuf, map: &'static str, source: Box<MapError> },
    #[error("the pinned map {map} under {} is not this build's: {what}; nothing was loaded or attached (a datapath already there keeps serving). Left by another xvs version, or not xvs's: `xvs cleanup --pin-dir {}` starts afresh (drops established flows)", dir.display(), dir.display())]
    PinnedMismatch { dir: PathBuf, map: &'static str, what: String },
    #[error("link events: {what} failed")]
    LinkEvents { what: &'static str, source: std::io::Error },
    #[error("the {what} link on {iface} cannot be pinned: the kernel attached it without a BPF link")]
    Unpinnable { iface: String, what: &'static str },
    #[error("another xvs agent{} runs on the pin directory {}: stop it first (two agents would overwrite each other's maps), or give this one another --pin-dir", holder.map(|p| format!(" (pid {p})")).unwrap_or_default(), dir.display())]
    Locked { dir: PathBuf, holder: Option<u32> },
    #[error("service {service}: backend id {id} is out of range (1..={max})")]
    BackendId { service: String, id: u32, max: u32 },
}

impl DataplaneError {
    pub(crate) fn map(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> Self {
        move |source| Self::Map { map, op, source: Box::new(source) }
    }
}

/// Whether a map operation failed only because the key is not there (lookups say
/// `KeyNotFound`, deletes say ENOENT).
pub fn is_missing(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
