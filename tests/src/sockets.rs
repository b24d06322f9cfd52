//! Clients for the socket-level load balancing tests: a cgroup v2 of the test's own (the
//! socket hooks attach there, so nothing else on the machine is touched), and processes in it,
//! in any network namespace, that open sockets to a service and report where they landed.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

/// A cgroup v2 created for one test under the machine's cgroup v2 mount; removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn create(name: &str) -> Self {
        let root = xvs::dataplane::cgroup2_root().unwrap_or_else(|| panic!("no cgroup v2 is mounted"));
        let path = root.join(name);
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its client processes have exited (each run waits for its own).
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// How a client talks to the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A TCP connection per request.
    Tcp,
    /// A connected UDP socket per request (connect, send, recv).
    UdpConnected,
    /// One unconnected UDP socket for all requests (sendto, recvfrom).
    UdpUnconnected,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::UdpConnected => "udp-connected",
            Self::UdpUnconnected => "udp-unconnected",
        }
    }
}

/// One request's outcome: the backend that answered, and the peer the socket reported
/// (getpeername for connected sockets, recvfrom's source for unconnected ones), as
/// `addr:port` / `[addr]:port`; or the error the call failed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    From { backend: String, peer: String },
    Failed(String),
}

const CLIENT: &str = r#"
import errno, socket, sys
mode, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
def show(peer):
    return f"[{peer[0]}]:{peer[1]}" if fam == socket.AF_INET6 else f"{peer[0]}:{peer[1]}"
shared = None
if mode == "udp-unconnected":
    shared = socket.socket(fam, socket.SOCK_DGRAM)
    shared.settimeout(3)
for _ in range(count):
    try:
        if mode == "tcp":
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect((host, port))
            peer = s.getpeername()
            s.sendall(b"hi")
            name = s.recv(100).decode()
            s.close()
        elif mode == "udp-connected":
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.connect((host, port))
            peer = s.getpeername()
            s.send(b"hi")
            name = s.recv(100).decode()
            s.close()
        else:
            shared.sendto(b"hi", (host, port))
            data, peer = shared.recvfrom(100)
            name = data.decode()
        print("ok", name, show(peer), flush=True)
    except OSError as e:
        print("error", errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__, flush=True)
"#;

/// `args` as a command in network namespace `netns`, from a process in `cgroup` (None: the
/// caller's). The shell moves itself into the cgroup before it becomes the command, so every
/// socket the command opens is under the hooks.
pub fn command_in(cgroup: Option<&TestCgroup>, netns: &str, args: &[&str]) -> Command {
    let join = cgroup.map_or_else(String::new, |c| format!("echo $$ > '{}/cgroup.procs' && ", c.path.display()));
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("{join}exec ip netns exec \"$@\""), "sh", netns]).args(args);
    cmd
}

/// Runs `args` in network namespace `netns` from a process in `cgroup`; its output.
pub fn run_in(cgroup: &TestCgroup, netns: &str, args: &[&str]) -> std::process::Output {
    command_in(Some(cgroup), netns, args).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs `count` requests of `mode` to `host:port` from a process in `cgroup` (None: the
/// caller's) and network namespace `netns`, one after the other.
pub fn requests(cgroup: Option<&TestCgroup>, netns: &str, mode: Mode, host: &str, port: u16, count: usize) -> Vec<Answer> {
    let out = command_in(cgroup, netns, &["python3", "-c", CLIENT, mode.arg(), host, &port.to_string(), &count.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the client: {e}"));
    assert!(out.status.success(), "the client failed: {out:?}");
    let answers: Vec<Answer> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("ok"), Some(backend), Some(peer)) => Answer::From { backend: backend.to_owned(), peer: peer.to_owned() },
                (_, what, _) => Answer::Failed(what.unwrap_or(line).to_owned()),
            }
        })
        .collect();
    assert_eq!(answers.len(), count, "one answer per request: {answers:?}");
    answers
}

/// How many answers each backend gave; panics on a failed request or a peer other than `peer`.
pub fn spread(answers: &[Answer], peer: &str) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for a in answers {
        match a {
            Answer::From { backend, peer: seen } => {
                assert_eq!(seen, peer, "the socket's peer is the VIP, not the backend: {answers:?}");
                *out.entry(backend.clone()).or_insert(0) += 1;
            }
            Answer::Failed(e) => panic!("a request failed ({e}): {answers:?}"),
        }
    }
    out
}
