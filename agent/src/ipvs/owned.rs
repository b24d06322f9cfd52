//! Which IPVS virtual services are xvs's: recorded exactly, by protocol, address and port, in a
//! file that outlives the agent (under /run, so it goes at reboot with the IPVS table itself).
//! Ownership is never inferred from an address: a node IP or a VIP can carry services somebody
//! else made (`ipvsadm -A -t <node IP>:22`), and those are never edited or deleted.
//!
//! A service is recorded before it is created and forgotten after it is deleted, so a crash in
//! between leaves at worst a record of a service that does not exist (forgotten at the next
//! sync), never an xvs service without a record. The file is replaced atomically (rename).
use std::{
    collections::BTreeSet,
    fmt,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use super::{IpvsError, IpvsService};

/// Where the records live: tmpfs on every distribution, and a hostPath in the DaemonSet.
pub const STATE_DIR: &str = "/run/xvs";

/// A virtual service's identity (xvs makes no fwmark services).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub protocol: u16,
    pub addr: IpAddr,
    pub port: u16,
}

impl ServiceKey {
    pub fn of(s: &IpvsService) -> Self {
        Self { protocol: s.protocol, addr: s.addr, port: s.port }
    }
}

/// ipvsadm's way of naming a service: `-t 10.96.0.10:80`, `-u [fd00::10]:53`.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = match self.protocol {
            17 => "-u",
            132 => "--sctp-service",
            _ => "-t",
        };
        write!(f, "{flag} {}", SocketAddr::new(self.addr, self.port))
    }
}

impl std::str::FromStr for ServiceKey {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let (flag, addr) = line.split_once(' ').ok_or("expected `-t|-u|--sctp-service <address>:<port>`")?;
        let protocol = match flag {
            "-t" => 6,
            "-u" => 17,
            "--sctp-service" => 132,
            other => return Err(format!("unknown protocol flag {other:?}")),
        };
        let addr: SocketAddr = addr.trim().parse().map_err(|e| format!("{addr:?}: {e}"))?;
        Ok(Self { protocol, addr: addr.ip(), port: addr.port() })
    }
}

/// The record of one mirror (one per dummy link, so two agents with their own links never
/// claim each other's services).
#[derive(Debug)]
pub struct Owned {
    path: PathBuf,
    services: BTreeSet<ServiceKey>,
    /// False when no record existed: the agent that made the services predates records.
    found: bool,
    /// What the file holds, to write only on change.
    saved: BTreeSet<ServiceKey>,
}

impl Owned {
    pub fn path_for(dummy: &str) -> PathBuf {
        Path::new(STATE_DIR).join(format!("ipvs-services-{dummy}"))
    }

    /// Reads the record; a missing file is an empty record that was not `found`. A line that
    /// does not parse is an error naming the file and line: guessing could delete a foreign
    /// service, so the IPVS side is left as it is until the file is fixed or removed.
    pub fn load(path: PathBuf) -> Result<Self, IpvsError> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self { path, services: BTreeSet::new(), found: false, saved: BTreeSet::new() }),
            Err(e) => return Err(IpvsError::Record { path, detail: e.to_string() }),
        };
        let mut services = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.parse().map_err(|e| IpvsError::Record { path: path.clone(), detail: format!("line {}: {e}", n + 1) })?;
            services.insert(key);
        }
        Ok(Self { path, saved: services.clone(), services, found: true })
    }

    pub fn found(&self) -> bool {
        self.found
    }

    pub fn contains(&self, key: &ServiceKey) -> bool {
        self.services.contains(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.iter()
    }

    pub fn insert(&mut self, key: ServiceKey) {
        self.services.insert(key);
    }

    pub fn remove(&mut self, key: &ServiceKey) {
        self.services.remove(key);
    }

    /// Forgets services that no longer exist in the kernel (`exists`).
    pub fn retain(&mut self, exists: impl Fn(&ServiceKey) -> bool) {
        self.services.retain(exists);
    }

    /// Writes the record if it changed since it was read or last written: a temporary file
    /// renamed over the old one, so a crash leaves the old record or the new one.
    pub fn save(&mut self) -> Result<(), IpvsError> {
        if self.found && self.services == self.saved {
            return Ok(());
        }
        let failed = |e: std::io::Error| IpvsError::Record { path: self.path.clone(), detail: e.to_string() };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut text = String::from("# IPVS virtual services made by xvs (one per line); nothing else is touched\n");
        for key in &self.services {
            text.push_str(&format!("{key}\n"));
        }
        let mut file = std::fs::File::create(&tmp).map_err(failed)?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(failed)?;
        std::fs::rename(&tmp, &self.path).map_err(failed)?;
        self.saved = self.services.clone();
        self.found = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_written_and_damage_names_the_line() {
        let dir = std::env::temp_dir().join(format!("xvs-owned-{}", std::process::id()));
        let path = dir.join("ipvs-services-test");
        let mut owned = Owned::load(path.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!owned.found());
        for line in ["-t 10.96.0.10:80", "-u [fd00::10]:53", "--sctp-service 192.168.0.1:3868"] {
            owned.insert(line.parse().unwrap_or_else(|e: String| panic!("{line}: {e}")));
        }
        owned.save().unwrap_or_else(|e| panic!("{e}"));
        let again = Owned::load(path.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.found());
        assert_eq!(again.keys().map(ToString::to_string).collect::<Vec<_>>(), ["-t 10.96.0.10:80", "-u [fd00::10]:53", "--sctp-service 192.168.0.1:3868"]);

        std::fs::write(&path, "-t 10.96.0.10:80\n-x 1.2.3.4:5\n").unwrap_or_else(|e| panic!("{e}"));
        let err = Owned::load(path.clone()).map(|_| ()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("ipvs-services-test") && err.contains("line 2") && err.contains("\"-x\""), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
