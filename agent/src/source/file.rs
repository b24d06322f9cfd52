//! The static services file (TOML): the source used without Kubernetes.
//!
//! ```toml
//! [[service]]
//! vip = "10.96.0.10"
//! port = 80
//! protocol = "tcp"                 # tcp (default) | udp | sctp (IPVS mirror only)
//! scheduler = "rr"                 # rr (default) | wrr | sh | mh
//! session_affinity_timeout = 10800 # optional: ClientIP affinity (IPVS persistent), seconds
//! flags = ["sh-port"]              # optional: sh-port (sh) or mh-port (mh): hash the client port
//! source_ranges = ["10.0.0.0/8"]   # optional: only these clients open flows (eBPF datapath)
//! reach = "cluster"                # cluster (default) | external | external-local: who is
//!                                  # masqueraded (a cluster IP, a NodePort/LB address with
//!                                  # externalTrafficPolicy Cluster, or with Local)
//! backends = [
//!   { endpoint = "10.244.1.2:8080" },                      # weight 1, active
//!   { endpoint = "10.244.1.3:8080", weight = 2 },
//!   { endpoint = "10.244.1.4:8080", state = "terminating" },
//! ]
//! ```
use std::{
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;
use xvs_common::Scheduler;

use crate::model::{Backend, BackendState, Cidr, Model, Protocol, Reach, Service, ServiceId};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read the services file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    /// toml's message already names the line, column and the offending text.
    #[error("services file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("services file {path} is invalid:\n{}", .problems.join("\n"))]
    Invalid { path: PathBuf, problems: Vec<String> },
    /// A 0-byte file is what a watcher sees in the middle of a non-atomic write.
    #[error("services file {path} has no [[service]] (empty, or caught in the middle of a write): not removing every service; to mean that, write `service = []`")]
    NoServices { path: PathBuf },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Absent (an empty file) is refused; `service = []` removes every service.
    service: Option<Vec<Spanned<RawService>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    vip: IpAddr,
    port: u16,
    #[serde(default)]
    protocol: RawProtocol,
    #[serde(default)]
    scheduler: RawScheduler,
    session_affinity_timeout: Option<u32>,
    #[serde(default)]
    flags: Vec<RawFlag>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    /// Clients allowed to open flows (kube-proxy's loadBalancerSourceRanges); absent: all.
    #[serde(default)]
    source_ranges: Vec<RawCidr>,
    /// What kind of address the VIP is, for masquerading; absent: a cluster IP.
    #[serde(default)]
    reach: RawReach,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawReach {
    #[default]
    Cluster,
    External,
    ExternalLocal,
}

/// A CIDR, checked as it is read (a bad one is a syntax error with its line).
struct RawCidr(Cidr);

impl<'de> Deserialize<'de> for RawCidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Self).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawProtocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawScheduler {
    #[default]
    Rr,
    Wrr,
    Sh,
    Mh,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
enum RawFlag {
    #[serde(rename = "sh-port")]
    ShPort,
    #[serde(rename = "mh-port")]
    MhPort,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    endpoint: SocketAddr,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    state: RawState,
}

const fn default_weight() -> u32 {
    1
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawState {
    #[default]
    Active,
    Terminating,
}

/// Reads and validates a services file.
pub fn load(path: &Path) -> Result<Model, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// Parses services-file text (`path` only names it in errors): one `[[service]]` table at a
/// time where the text allows it (see toml_blocks.rs), else whole.
pub fn parse(text: &str, path: &Path) -> Result<Model, FileError> {
    let raw = match super::toml_blocks::split(text).and_then(|blocks| parse_blocks(&blocks)) {
        Some(raw) => raw,
        None => parse_whole(text, path)?,
    };
    validate(raw, text, path)
}

fn validate(raw: Vec<(Range<usize>, RawService)>, text: &str, path: &Path) -> Result<Model, FileError> {
    let spans: Vec<Range<usize>> = raw.iter().map(|(span, _)| span.clone()).collect();
    let services = raw.into_iter().map(|(_, s)| into_service(s)).collect();
    Model::new(services).map_err(|errors| FileError::Invalid {
        path: path.to_owned(),
        problems: errors
            .iter()
            .map(|e| {
                let line = spans.get(e.index).map_or(0, |span| line_of(text, span.start));
                format!("  line {line} ([[service]] #{}): {e}", e.index + 1)
            })
            .collect(),
    })
}

/// Each block alone, spans moved to the whole text's offsets; None if a block does not parse.
fn parse_blocks(blocks: &[(usize, &str)]) -> Option<Vec<(Range<usize>, RawService)>> {
    let mut out = Vec::new();
    for &(offset, block) in blocks {
        let raw: RawFile = toml::from_str(block).ok()?;
        out.extend(raw.service?.into_iter().map(|s| {
            let span = s.span();
            (span.start + offset..span.end + offset, s.into_inner())
        }));
    }
    Some(out)
}

fn parse_whole(text: &str, path: &Path) -> Result<Vec<(Range<usize>, RawService)>, FileError> {
    let raw: RawFile =
        toml::from_str(text).map_err(|e| FileError::Syntax { path: path.to_owned(), message: e.to_string().trim_end().to_owned() })?;
    let raw = raw.service.ok_or_else(|| FileError::NoServices { path: path.to_owned() })?;
    Ok(raw.into_iter().map(|s| (s.span(), s.into_inner())).collect())
}

fn into_service(raw: RawService) -> Service {
    Service {
        id: ServiceId {
            vip: raw.vip,
            port: raw.port,
            proto: match raw.protocol {
                RawProtocol::Tcp => Protocol::Tcp,
                RawProtocol::Udp => Protocol::Udp,
                RawProtocol::Sctp => Protocol::Sctp,
            },
        },
        scheduler: match raw.scheduler {
            RawScheduler::Rr => Scheduler::RoundRobin,
            RawScheduler::Wrr => Scheduler::WeightedRoundRobin,
            RawScheduler::Sh => Scheduler::SourceHash,
            RawScheduler::Mh => Scheduler::MaglevHash,
        },
        affinity_timeout: raw.session_affinity_timeout,
        // One bit in IPVS (SCHED2), as ipvsadm takes either name for it.
        sh_port: raw.flags.contains(&RawFlag::ShPort) || raw.flags.contains(&RawFlag::MhPort),
        reach: match raw.reach {
            RawReach::Cluster => Reach::Cluster,
            RawReach::External => Reach::External,
            RawReach::ExternalLocal => Reach::ExternalLocal,
        },
        source_ranges: {
            let mut ranges: Vec<Cidr> = raw.source_ranges.into_iter().map(|r| r.0).collect();
            ranges.sort();
            ranges.dedup();
            ranges
        },
        backends: raw
            .backends
            .into_iter()
            .map(|b| Backend {
                addr: b.endpoint.ip(),
                port: b.endpoint.port(),
                weight: b.weight,
                state: match b.state {
                    RawState::Active => BackendState::Active,
                    RawState::Terminating => BackendState::Terminating,
                },
            })
            .collect(),
    }
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(text, Path::new("svc.toml")) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    const GOOD: &str = r#"
[[service]]
vip = "10.96.0.10"
port = 80
backends = [
  { endpoint = "10.244.1.3:8080", weight = 2 },
  { endpoint = "10.244.1.2:8080" },
  { endpoint = "10.244.1.4:8080", state = "terminating" },
]

[[service]]
vip = "fd00::10"
port = 53
protocol = "udp"
scheduler = "sh"
flags = ["sh-port"]
session_affinity_timeout = 10800
backends = [{ endpoint = "[fd00::2]:5353" }]
"#;

    /// Table by table or whole, the same model, the same errors and lines.
    #[test]
    fn a_file_parsed_table_by_table_is_the_file_parsed_whole() {
        let whole = |text: &str| parse_whole(text, Path::new("svc.toml")).and_then(|raw| validate(raw, text, Path::new("svc.toml"))).map_err(|e| e.to_string());
        let texts = [
            "# header comment\n\n[[service]]\nvip = \"10.96.0.1\"\nport = 80\nbackends = [{ endpoint = \"10.0.0.1:80\" }]\n\n[[service]]  # udp\nvip = \"10.96.0.2\"\nport = 53\nprotocol = \"udp\"\n[[service.backends]]\nendpoint = \"10.0.0.2:53\"\nweight = 3\n",
            // Semantic errors: the line of the second table must be the same either way.
            "[[service]]\nvip = \"10.96.0.1\"\nport = 80\n\n[[service]]\nvip = \"10.96.0.1\"\nport = 80\n",
            // A header line inside a multi-line string: the whole text is parsed.
            "[[service]]\nvip = \"10.96.0.1\"\nport = 80\nbackends = []\nreach = \"\"\"\n[[service]]\n\"\"\"\n",
            // Syntax error in the second table: the message is the whole parse's.
            "[[service]]\nvip = \"10.96.0.1\"\nport = 80\n[[service]]\nvip = 10.96.0.2\n",
            "[[ service ]]\nvip = \"10.96.0.1\"\nport = 80\n[[service]]\nvip = \"10.96.0.3\"\nport = 81\n",
        ];
        for text in texts {
            assert_eq!(parse(text, Path::new("svc.toml")).map_err(|e| e.to_string()), whole(text), "{text}");
        }
        let blocks = crate::source::toml_blocks::split(texts[0]).unwrap_or_default();
        assert!(parse_blocks(&blocks).is_some_and(|raw| raw.len() == 2), "the first text is parsed table by table");
    }

    #[test]
    fn parses_defaults_and_orders() {
        let model = parse(GOOD, Path::new("svc.toml")).unwrap_or_default();
        assert_eq!(model.len(), 2);
        let web = model.services().next().cloned();
        let web = web.as_ref();
        assert_eq!(web.map(|s| s.scheduler), Some(Scheduler::RoundRobin));
        let backends: Vec<(String, u32, BackendState)> = web
            .map(|s| s.backends.iter().map(|b| (b.endpoint().to_string(), b.weight, b.state)).collect())
            .unwrap_or_default();
        assert_eq!(
            backends,
            [
                ("10.244.1.2:8080".into(), 1, BackendState::Active),
                ("10.244.1.3:8080".into(), 2, BackendState::Active),
                ("10.244.1.4:8080".into(), 1, BackendState::Terminating),
            ]
        );
        let dns = model.services().nth(1);
        assert_eq!(dns.map(|s| (s.id.to_string(), s.affinity_timeout, s.sh_port)), Some(("UDP [fd00::10]:53".into(), Some(10800), true)));
    }

    #[test]
    fn syntax_errors_name_line_and_field() {
        let e = err("[[service]]\nvip = \"10.96.0.300\"\nport = 80\n");
        assert!(e.starts_with("services file svc.toml: TCP parse error at line 2") || e.contains("line 2"), "{e}");
        assert!(e.contains("invalid IP address syntax"), "{e}");
        let e = err("[[service]]\nvip = \"10.96.0.1\"\nport = 80\nschedular = \"rr\"\n");
        assert!(e.contains("line 4") && e.contains("unknown field `schedular`"), "{e}");
        let e = err("[[service]]\nvip = \"10.96.0.1\"\nport = 80\nscheduler = \"lc\"\n");
        assert!(e.contains("line 4") && e.contains("unknown variant `lc`, expected one of `rr`, `wrr`, `sh`"), "{e}");
        let e = err("[[service]]\nvip = \"10.96.0.1\"\nport = 80\nbackends = [{ endpoint = \"10.0.0.1\" }]\n");
        assert!(e.contains("line 4") && e.contains("invalid socket address syntax"), "{e}");
    }

    #[test]
    fn source_ranges_are_cidrs_of_the_vip_s_family() {
        let text = "[[service]]\nvip = \"10.96.0.1\"\nport = 80\nsource_ranges = [\"10.1.2.3/16\", \"192.168.0.0/24\"]\n";
        let model = parse(text, Path::new("svc.toml")).unwrap_or_default();
        let ranges: Vec<String> = model.services().flat_map(|s| s.source_ranges.iter().map(ToString::to_string)).collect();
        assert_eq!(ranges, ["10.1.0.0/16", "192.168.0.0/24"], "host bits cleared");
        let bad = err("[[service]]\nvip = \"10.96.0.1\"\nport = 80\nsource_ranges = [\"10.0.0.0/40\"]\n");
        assert!(bad.contains("line 4") && bad.contains("the prefix must be 0..=32"), "{bad}");
        let family = err("[[service]]\nvip = \"10.96.0.1\"\nport = 80\nsource_ranges = [\"fd00::/8\"]\n");
        assert!(family.contains("source range fd00::/8 is not of the VIP's family"), "{family}");
    }

    #[test]
    fn reach_defaults_to_a_cluster_ip_and_names_kube_proxys_three_cases() {
        let text = |reach: &str| format!("[[service]]\nvip = \"10.96.0.1\"\nport = 80\n{reach}\n");
        let reach_of = |t: String| parse(&t, Path::new("svc.toml")).ok().and_then(|m| m.services().next().map(|s| s.reach));
        assert_eq!(reach_of(text("")), Some(Reach::Cluster));
        assert_eq!(reach_of(text("reach = \"external\"")), Some(Reach::External));
        assert_eq!(reach_of(text("reach = \"external-local\"")), Some(Reach::ExternalLocal));
        let bad = err(&text("reach = \"local\""));
        assert!(bad.contains("line 4") && bad.contains("unknown variant `local`"), "{bad}");
    }

    #[test]
    fn semantic_errors_name_the_service_line() {
        let text = "[[service]]\nvip = \"10.96.0.1\"\nport = 80\n\n[[service]]\nvip = \"10.96.0.1\"\nport = 80\nbackends = [{ endpoint = \"10.0.0.1:80\", weight = 100000 }]\n";
        assert_eq!(
            err(text),
            "services file svc.toml is invalid:\n  line 5 ([[service]] #2): TCP 10.96.0.1:80: defined twice (first as service #1)\n  line 5 ([[service]] #2): TCP 10.96.0.1:80: backend 10.0.0.1:80: weight 100000 is out of range 0..=65535"
        );
    }

    #[test]
    fn an_empty_file_is_refused_and_an_explicit_empty_list_is_an_empty_model() {
        for text in ["", "\n  \n", "# services come later\n"] {
            assert!(matches!(parse(text, Path::new("x")), Err(FileError::NoServices { .. })), "{text:?}");
        }
        assert_eq!(parse("service = []\n", Path::new("x")).map(|m| m.len()).ok(), Some(0));
    }
}

/// What identifies one version of the services file on disk, to notice edits and replacements
/// (mtime, size and inode: a rename-replace changes the inode even within one mtime tick).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp { modified: m.modified().ok(), len: m.len(), inode: m.ino() })
}

/// Follows the services file: `poll` reloads it when it changed on disk and then stayed the
/// same for one more poll, so a file caught in the middle of a non-atomic write (its size or
/// mtime still moving) is not applied half-written.
pub struct FileWatch {
    path: std::path::PathBuf,
    /// The version last loaded.
    stamp: Option<FileStamp>,
    /// A new version seen once, waiting to be seen unchanged.
    settling: Option<Option<FileStamp>>,
}

impl FileWatch {
    /// Loads the file once; an invalid file is an error here (nothing is applied at start).
    pub fn open(path: &Path) -> Result<(Self, Model), FileError> {
        let stamp = stamp(path);
        let model = load(path)?;
        Ok((Self { path: path.to_owned(), stamp, settling: None }, model))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's model if it changed and has settled since the last poll (always when
    /// `force`: SIGHUP, the operator saying the file is ready). An invalid file is an error;
    /// the caller keeps the last good state.
    pub fn poll(&mut self, force: bool) -> Option<Result<Model, FileError>> {
        let now = stamp(&self.path);
        if !force {
            if now == self.stamp {
                self.settling = None;
                return None;
            }
            if self.settling.as_ref() != Some(&now) {
                self.settling = Some(now);
                return None;
            }
        }
        self.settling = None;
        self.stamp = now;
        Some(load(&self.path))
    }
}
