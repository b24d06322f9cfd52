//! One agent per pin directory: an exclusive flock on the directory itself. bpffs is the host's,
//! so agents in different containers (or a `kubectl exec xvs cleanup`) see the same lock; it
//! goes with the process, kill -9 included. The holder's PID comes from /proc/locks.
use std::{
    fs::File,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use super::error::DataplaneError;

/// Held while the agent runs; dropping it releases the directory.
pub struct PinLock {
    _dir: File,
}

impl PinLock {
    /// Takes the directory's lock, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, DataplaneError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|source| DataplaneError::Pin { path: dir.to_owned(), what: "open the pin directory to lock it".into(), source })?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DataplaneError::Locked { dir: dir.to_owned(), holder: lock_owner_pid(&file) });
            }
            return Err(DataplaneError::Pin { path: dir.to_owned(), what: "lock the pin directory".into(), source });
        }
        Ok(Self { _dir: file })
    }

    /// Who holds `dir`'s lock, if anyone: `Some(holder)` while an agent runs on it (its PID
    /// when /proc/locks tells), `None` when it is free or does not exist.
    pub fn holder(dir: &Path) -> Option<Holder> {
        match Self::acquire(dir) {
            Err(DataplaneError::Locked { holder, dir }) => Some(Holder { dir, pid: holder }),
            _ => None,
        }
    }
}

/// An agent holding a pin directory.
#[derive(Debug)]
pub struct Holder {
    pub dir: PathBuf,
    pub pid: Option<u32>,
}

/// The PID of the flock on `file` in /proc/locks (`1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<ino> 0 EOF`).
fn lock_owner_pid(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts "1: -> FLOCK"; only the holder's is wanted.
        (fields.get(1) == Some(&"FLOCK") && fields.get(5).is_some_and(|f| same_file(f, &want))).then(|| fields.get(4)?.parse().ok()).flatten()
    })
}

/// /proc/locks prints major and minor in at least two hex digits.
fn same_file(field: &str, want: &str) -> bool {
    let norm = |s: &str| -> Option<(u64, u64, u64)> {
        let mut it = s.split(':');
        Some((u64::from_str_radix(it.next()?, 16).ok()?, u64::from_str_radix(it.next()?, 16).ok()?, it.next()?.parse().ok()?))
    };
    norm(field).is_some_and(|f| Some(f) == norm(want))
}
