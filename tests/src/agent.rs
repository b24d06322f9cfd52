//! The `xvs` binary as a user runs it: `xvs run` as a daemon in the node namespace (entered
//! with nsenter for the network only, so its bpffs pins live in the host's mount namespace and
//! outlive it, as on a real node), and the `xvs list` / `xvs verify` CLI.
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// The `xvs` binary under test: `$XVS_BIN` (set by `cargo xtask test`).
pub fn xvs_bin() -> PathBuf {
    std::env::var_os("XVS_BIN").map(PathBuf::from).unwrap_or_else(|| panic!("XVS_BIN is not set: run these tests with `cargo xtask test`"))
}

/// Runs `xvs <args>` to completion.
pub fn xvs(args: &[&str]) -> Output {
    Command::new(xvs_bin()).args(args).output().unwrap_or_else(|e| panic!("xvs {args:?}: {e}"))
}

/// `xvs list -n <extra>` against `pin_dir`, stdout as text (panics on failure).
pub fn list(pin_dir: &Path, extra: &[&str]) -> String {
    let pin = pin_dir.to_string_lossy();
    let mut args = vec!["list", "-n", "--pin-dir", &pin];
    args.extend_from_slice(extra);
    let out = xvs(&args);
    assert!(out.status.success(), "xvs list failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Retries `check` every 100 ms until it returns true or `secs` pass.
pub fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What deploy/daemonset.yaml's `mount-bpffs` init container does (privileged) before the
/// agent starts: a bpffs on the host's /sys/fs/bpf where none is. An agent with only the
/// DaemonSet's capabilities cannot mount one, and a freshly booted machine may have none.
/// Its own command, run as root in this (the host's) mount namespace.
pub fn run_mount_bpffs_init_container() {
    let pod = crate::kube::daemonset_pod();
    let init = pod.init_containers.unwrap_or_default().into_iter().find(|c| c.name == "mount-bpffs").unwrap_or_else(|| panic!("deploy/daemonset.yaml has no mount-bpffs init container"));
    let command = init.command.unwrap_or_default();
    let (program, args) = command.split_first().unwrap_or_else(|| panic!("the mount-bpffs init container has no command"));
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("mount-bpffs {command:?}: {e}"));
    assert!(out.status.success(), "mount-bpffs {command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// setpriv's `--bounding-set` keeping only `caps` (e.g. `-all,+bpf,+net_admin`).
fn bounding_set(caps: &[String]) -> String {
    std::iter::once("-all".to_owned()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>().join(",")
}

/// Runs `xvs run <args>` in `netns` where it is expected to refuse to start: its output once it
/// exits (panics if it is still running after `secs`).
pub fn run_expecting_exit(netns: &str, args: &[&str], secs: u64) -> Output {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .arg(xvs_bin())
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start xvs run: {e}"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap_or_else(|e| panic!("{e}")).is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
            panic!("xvs run {args:?} kept running; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
}

/// A running `xvs run`.
pub struct Agent {
    child: Option<Child>,
    pub pin_dir: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts `xvs run --config <config> --iface <iface> --pin-dir <pin_dir> <extra>` in network
    /// namespace `netns` and waits until it runs.
    pub fn start(netns: &str, config: &Path, iface: &str, pin_dir: &Path, extra: &[&str]) -> Self {
        let config = config.to_string_lossy();
        Self::start_with(netns, &[], &["--config", &config], iface, pin_dir, extra)
    }

    /// `xvs run --kubeconfig <kubeconfig> --node-name <node> ...`: the Kubernetes source, with
    /// only the capabilities in `caps` (e.g. `["bpf", "net_admin"]`), as a pod would have
    /// (empty: all of root's).
    pub fn start_kube(netns: &str, kubeconfig: &Path, node: &str, caps: &[String], iface: &str, pin_dir: &Path, extra: &[&str]) -> Self {
        let kubeconfig = kubeconfig.to_string_lossy();
        if !caps.is_empty() {
            run_mount_bpffs_init_container();
        }
        let bounding = bounding_set(caps);
        let wrap: &[&str] = if caps.is_empty() { &[] } else { &["setpriv", "--bounding-set", &bounding] };
        Self::start_with(netns, wrap, &["--kubeconfig", &kubeconfig, "--node-name", node], iface, pin_dir, extra)
    }

    fn start_with(netns: &str, wrap: &[&str], source: &[&str], iface: &str, pin_dir: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{netns}")).args(wrap).arg(xvs_bin()).arg("run").args(source);
        cmd.args(["--iface", iface, "--pin-dir"]).arg(pin_dir).args(extra);
        // The socket hooks would attach to the machine's root cgroup and take the test's
        // clients off the packet path these tests watch: only the socket tests turn them on
        // (in a cgroup of their own).
        if !extra.iter().any(|a| a.starts_with("--socket-lb")) {
            cmd.args(["--socket-lb", "off"]);
        }
        Self::spawn(cmd, pin_dir)
    }

    /// `xvs <args>` as a DaemonSet's pod runs it: in `netns`, with only `caps`, the container's
    /// `env`, and in a mount namespace of its own where `service_account` (token, ca.crt,
    /// namespace) is at /var/run/secrets/kubernetes.io/serviceaccount, as the kubelet mounts it.
    /// `/run` is a fresh tmpfs there (the host's is untouched); the bpffs is the host's, so the
    /// pins under `pin_dir` outlive the agent as on a node.
    pub fn start_pod(netns: &str, args: &[String], env: &[(&str, String)], caps: &[String], service_account: &Path, pin_dir: &Path) -> Self {
        const POD: &str = r#"set -e
grep -q ' /sys/fs/bpf bpf ' /proc/mounts || { echo "the host has no bpffs at /sys/fs/bpf" >&2; exit 97; }
mount -t tmpfs -o size=1m,mode=0755 pod-run /run
sa=/var/run/secrets/kubernetes.io/serviceaccount
mkdir -p "$sa"
cp "$XVS_TEST_SA/token" "$XVS_TEST_SA/ca.crt" "$XVS_TEST_SA/namespace" "$sa/"
unset XVS_TEST_SA
exec "$@""#;
        run_mount_bpffs_init_container();
        let bounding = bounding_set(caps);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{netns}"))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c", POD, "pod", "setpriv", "--bounding-set", &bounding])
            .arg(xvs_bin())
            .args(args)
            .env("XVS_TEST_SA", service_account);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, pin_dir)
    }

    /// `xvs run` as `cmd` starts it (a container runtime running the image, say), pinning
    /// under `pin_dir`; waits until it runs.
    pub fn start_command(cmd: Command, pin_dir: &Path) -> Self {
        Self::spawn(cmd, pin_dir)
    }

    fn spawn(mut cmd: Command, pin_dir: &Path) -> Self {
        let name = pin_dir.file_name().map_or_else(|| "xvs".into(), |n| n.to_string_lossy().into_owned());
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = cmd
            .env("XVS_LOG", "debug,aya=info,aya_obj=info,kube=info,hyper=info,tower=info,rustls=info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start xvs run: {e}"));
        let agent = Self { child: Some(child), pin_dir: pin_dir.to_owned(), log };
        // Up to a minute: an agent listing 100k Services (the bench) takes most of one.
        agent.wait_log("running", 60);
        agent
    }

    /// The agent's process id (nsenter and setpriv exec it, so this is the agent itself).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `times` times in all.
    pub fn wait_log_count(&self, needle: &str, times: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= times {
                return;
            }
            assert!(Instant::now() < deadline, "the agent never logged {needle:?} ({times}x); log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_log(&self, needle: &str, secs: u64) {
        self.wait_log_count(needle, 1, secs);
    }

    fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            #[expect(unsafe_code, reason = "kill(2) has no safe std wrapper for signals other than SIGKILL")]
            let rc = unsafe { libc::kill(child.id() as i32, sig) };
            assert_eq!(rc, 0, "kill {sig}: {}", std::io::Error::last_os_error());
        }
    }

    pub fn hup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// SIGKILL: the agent dies without any cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        self.signal(libc::SIGTERM);
        self.child.take().is_some_and(|mut c| c.wait().is_ok_and(|s| s.success()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new(xvs_bin()).args(["cleanup", "--pin-dir"]).arg(&self.pin_dir).output();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A long-lived TCP connection from a namespace, driven line by line: each `send` writes a
/// line and returns the echoed reply.
pub struct Conn {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Conn {
    pub fn open(netns: &str, addr: &str, port: u16) -> Self {
        const CLIENT: &str = r#"
import socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)
f = s.makefile("rwb")
for line in sys.stdin:
    if line.strip() == "RST":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        break
    f.write(line.encode())
    f.flush()
    r = f.readline()
    print(r.decode().strip() if r else "EOF", flush=True)
"#;
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-u", "-c", CLIENT, addr, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the client: {e}"));
        let stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
        let stdout = BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        Self { child, stdin, stdout }
    }

    /// Sends `line`, returns the reply (`backend-<i>:<line>`), or "EOF" if the server closed.
    pub fn send(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap_or_else(|e| panic!("client write: {e}"));
        self.stdin.flush().unwrap_or_else(|e| panic!("client flush: {e}"));
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap_or_else(|e| panic!("client read: {e}"));
        reply.trim().to_owned()
    }

    /// The backend serving this connection, from one round trip.
    pub fn backend(&mut self) -> String {
        let reply = self.send("ping");
        reply.split(':').next().unwrap_or_default().to_owned()
    }

    /// Aborts the connection with a RST.
    pub fn reset(mut self) {
        let _ = writeln!(self.stdin, "RST");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A services file for `vip` over `backends` (`(endpoint, extra TOML fields)`), written to `path`.
pub fn write_services(path: &Path, vip: &str, port: u16, backends: &[(&str, &str)]) {
    let list: Vec<String> = backends
        .iter()
        .map(|(ep, extra)| if extra.is_empty() { format!("{{ endpoint = \"{ep}\" }}") } else { format!("{{ endpoint = \"{ep}\", {extra} }}") })
        .collect();
    let text = format!("[[service]]\nvip = \"{vip}\"\nport = {port}\nbackends = [{}]\n", list.join(", "));
    // Write and rename, as editors and config management do, so the agent never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{e}"));
}
