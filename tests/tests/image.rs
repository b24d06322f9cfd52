//! The container image `cargo xtask image` builds, run by podman as deploy/daemonset.yaml runs
//! it on a node (the node being a network namespace here): the mount-bpffs init container, then
//! the agent container with the DaemonSet's args, capabilities, mounts and service account,
//! following the test API server over HTTPS. It must serve the demo scenario: service-nginx
//! (10.96.0.10:80, rr) over three backends, 30 requests spread 10/10/10.
use std::{collections::BTreeMap, path::PathBuf, process::Command};

use xvs_integration::{
    agent::{eventually, list, Agent},
    image::{image_archive, run_options, Podman},
    sockets::TestCgroup,
    kube::{daemonset_pod, ready, secure_api_server_in},
    topology::{Topology, NODE_IFACE},
};
use xvs_test_apiserver::fixture;

/// The agent's container, removed at once when the test ends (also on a panic) so that its
/// agent does not outlive the namespaces; the Agent inside then cleans the pins up.
/// A directory standing in for the node's /sys/fs/bpf, with no bpffs yet (a freshly booted
/// node may have none): a shared mount, as systemd makes every mount of a node and as the
/// kubelet's Bidirectional propagation needs, so the bpffs the init container mounts inside
/// its container lands here. Unmounted on drop.
struct NodeBpffs(PathBuf);

impl NodeBpffs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join("xvs-test-img-bpffs");
        unmount_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        for args in [&["--bind"][..], &["--make-shared"][..]] {
            let mut mount = Command::new("mount");
            mount.args(args).arg(&dir);
            if args == ["--bind"] {
                mount.arg(&dir);
            }
            let out = mount.output().unwrap_or_else(|e| panic!("mount: {e}"));
            assert!(out.status.success(), "mount {args:?} {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        }
        Self(dir)
    }

    fn is_bpffs(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(&*self.0.to_string_lossy()) && l.split_whitespace().nth(2) == Some("bpf"))
    }
}

impl Drop for NodeBpffs {
    fn drop(&mut self) {
        unmount_all(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Unmounts whatever is stacked on `dir` (the bpffs over the bind mount under it), lazily: the
/// container runtime may hold one a moment longer.
fn unmount_all(dir: &std::path::Path) {
    let mounted = || std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| l.split_whitespace().nth(4) == Some(&*dir.to_string_lossy()));
    for _ in 0..4 {
        if !mounted() {
            return;
        }
        let _ = Command::new("umount").args(["--recursive", "--lazy"]).arg(dir).output();
    }
}

struct Running<'p> {
    podman: &'p Podman,
    name: String,
    agent: Agent,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.podman.remove(&self.name);
    }
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it_and_serves_the_demo_scenario() {
    let podman = Podman::new(&std::env::temp_dir().join("xvs-test-podman"));
    let image = podman.load(&image_archive());
    let mut topo = Topology::create("xvs-img", 3);
    topo.start_http_backends();
    let node = topo.ns("node");
    let server = secure_api_server_in(&node);
    for object in [fixture("node-a.json"), fixture("service-nginx.json"), ready(&[1, 2, 3])] {
        server.apply(object).unwrap_or_else(|e| panic!("{e}"));
    }
    let sa = std::env::temp_dir().join("xvs-test-img-serviceaccount");
    server.write_service_account(&sa, "kube-system").unwrap_or_else(|e| panic!("{e}"));
    // The IPVS ownership record goes to a directory of the test's, not the host's /run/xvs.
    let run_xvs = std::env::temp_dir().join("xvs-test-img-run");
    let _ = std::fs::remove_dir_all(&run_xvs);
    std::fs::create_dir_all(&run_xvs).unwrap_or_else(|e| panic!("{e}"));
    // This machine's kernel has no module tree (its IPVS is absent anyway): an empty one
    // stands in, and the agent serves with the eBPF datapath alone, as on such a node.
    let no_modules = std::env::temp_dir().join("xvs-test-img-modules");
    std::fs::create_dir_all(&no_modules).unwrap_or_else(|e| panic!("{e}"));
    let modules = if std::path::Path::new("/lib/modules").is_dir() { PathBuf::from("/lib/modules") } else { no_modules };
    let bpffs = NodeBpffs::new();
    // The socket hooks attach to a cgroup of the test's, not to the machine's root one: the
    // test's client is outside it and takes the packet path this test watches.
    let cgroup = TestCgroup::create("xvs-test-img");
    let host_paths = [("run-xvs", run_xvs.as_path()), ("lib-modules", modules.as_path()), ("bpffs", bpffs.0.as_path()), ("host-cgroup", cgroup.path.as_path())];
    let pod = daemonset_pod();

    // The init container, privileged, with the image's own sh, grep and mount.
    let init = pod.init_containers.iter().flatten().find(|c| c.name == "mount-bpffs").unwrap_or_else(|| panic!("no mount-bpffs init container"));
    let out = podman.command().arg("run").args(run_options(&pod, init, &node, "node-a", &host_paths)).arg(&image).output().unwrap_or_else(|e| panic!("podman run: {e}"));
    assert!(out.status.success(), "the mount-bpffs init container failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(bpffs.is_bpffs(), "the init container mounted no bpffs on the node's {}", bpffs.0.display());

    // The agent's container: the DaemonSet's args with the test's interface and pin directory.
    let xvs = pod.containers.iter().find(|c| c.name == "xvs").unwrap_or_else(|| panic!("no xvs container"));
    // The pins, as the container names them and as the node sees them.
    let pin_inside = "/sys/fs/bpf/xvs-test-img";
    let pin = bpffs.0.join("xvs-test-img");
    let mut args: Vec<String> = xvs.args.clone().unwrap_or_default();
    let iface = args.iter().position(|a| a == "--iface").unwrap_or_else(|| panic!("no --iface in {args:?}"));
    args[iface + 1] = NODE_IFACE.to_owned();
    args.extend(["--pin-dir".to_owned(), pin_inside.to_owned()]);
    let mut cmd = podman.command();
    cmd.arg("run").args(run_options(&pod, xvs, &node, "node-a", &host_paths));
    // What the kubelet adds to every pod: the service account, and the API server's address.
    cmd.arg(format!("--volume={}:/var/run/secrets/kubernetes.io/serviceaccount:ro", sa.display()));
    cmd.args(["--env=KUBERNETES_SERVICE_HOST=127.0.0.1".to_owned(), format!("--env=KUBERNETES_SERVICE_PORT={}", server.addr().port())]);
    cmd.arg(&image).args(&args);
    let mut running = Running { podman: &podman, name: xvs.name.clone(), agent: Agent::start_command(cmd, &pin) };

    eventually(20, "service-nginx with three backends", || list(&pin, &[]).matches("Masq").count() == 3);
    // The DaemonSet's hostPath of the host's cgroups takes the socket hooks.
    running.agent.wait_log("socket-level load balancing attached", 5);
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..30 {
        let body = topo.client_get("http://10.96.0.10/").unwrap_or_else(|e| panic!("request {n}: {e}\n{}", running.agent.log()));
        *served.entry(body).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, usize> = (1..=3).map(|i| (format!("backend-{i}"), 10)).collect();
    assert_eq!(served, expected, "rr over the three backends");

    // The image's own CLI reads the same pins (`kubectl exec ... xvs list -n`).
    let inside = podman.command().args(["exec", &running.name, "xvs", "list", "-n", "--pin-dir", pin_inside]).output().unwrap_or_else(|e| panic!("{e}"));
    assert!(inside.status.success(), "{}", String::from_utf8_lossy(&inside.stderr));
    assert_eq!(String::from_utf8_lossy(&inside.stdout), list(&pin, &[]));
    // SIGTERM (a pod's deletion): the agent exits cleanly and the pinned datapath keeps serving
    // until the next pod adopts it.
    assert!(running.agent.stop(), "the agent did not stop cleanly:\n{}", running.agent.log());
    assert!(topo.client_get("http://10.96.0.10/").is_ok_and(|b| b.starts_with("backend-")), "served after the pod went");
}
