//! The container image (`cargo xtask image`, its OCI archive in `$XVS_IMAGE`) run with podman
//! the way deploy/daemonset.yaml says a node runs it: the node's network namespace as the host
//! network, the container's capabilities, read-only root, no privilege escalation, its seccomp
//! profile, its hostPath mounts and its environment. Read from the manifest, so the test runs
//! what is deployed.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// The image archive under test: `$XVS_IMAGE` (set by `cargo xtask test`).
pub fn image_archive() -> PathBuf {
    std::env::var_os("XVS_IMAGE").map(PathBuf::from).unwrap_or_else(|| panic!("XVS_IMAGE is not set: run these tests with `cargo xtask test`"))
}

/// podman with a store of its own under `dir` (vfs: works on any filesystem, leaves no
/// mounts), removed with everything in it on drop. runc, not crun: crun refuses the hybrid
/// cgroup layout (v1 controllers beside a v2 mount) these machines boot with.
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    pub fn new(dir: &Path) -> Self {
        let podman = Self { dir: dir.to_owned() };
        podman.remove_everything();
        podman
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root").arg(self.dir.join("storage")).arg("--runroot").arg(self.dir.join("run"));
        c.args(["--storage-driver", "vfs", "--runtime", "runc"]);
        c
    }

    /// Loads an OCI archive; returns the image's reference.
    pub fn load(&self, archive: &Path) -> String {
        let out = self.command().args(["load", "-q", "-i"]).arg(archive).output().unwrap_or_else(|e| panic!("podman load: {e}"));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "podman load -i {}: {said}{}", archive.display(), String::from_utf8_lossy(&out.stderr));
        said.lines().find_map(|l| l.strip_prefix("Loaded image: ")).map(|r| r.trim().to_owned()).unwrap_or_else(|| panic!("podman load named no image: {said}"))
    }

    /// Removes the container `name` at once (SIGKILL), if it runs.
    pub fn remove(&self, name: &str) {
        let _ = self.command().args(["rm", "--force", "--time", "0", name]).output();
    }

    fn remove_everything(&self) {
        if self.dir.exists() {
            let _ = self.command().args(["rm", "--all", "--force", "--time", "0"]).output();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.remove_everything();
    }
}

/// `podman run` options that run `container` of `pod` as a kubelet would on the node whose
/// network namespace is `netns`. Each hostPath volume is mounted from `host_paths` where the
/// test gives one (its own state directory, say), else from the path the manifest names.
/// `node_name` is what the downward API's `spec.nodeName` gives.
pub fn run_options(pod: &PodSpec, container: &Container, netns: &str, node_name: &str, host_paths: &[(&str, &Path)]) -> Vec<String> {
    let mut o: Vec<String> = vec!["--rm".into(), "--pull".into(), "never".into(), "--name".into(), container.name.clone()];
    assert_eq!(pod.host_network, Some(true), "the DaemonSet runs in the node's network namespace");
    o.push(format!("--network=ns:/var/run/netns/{netns}"));
    // podman raises a root container's open-file and process limits above what this machine
    // lets root raise them (no CAP_SYS_RESOURCE here); a kubelet leaves the runtime's own.
    o.extend(["--ulimit".into(), format!("nofile={0}:{0}", nofile_limit()), "--ulimit".into(), "nproc=4096:4096".into()]);
    if let Some(sc) = &container.security_context {
        if sc.privileged == Some(true) {
            o.push("--privileged".into());
        }
        for cap in sc.capabilities.iter().flat_map(|c| c.drop.iter().flatten()) {
            o.push(format!("--cap-drop={}", cap.to_lowercase()));
        }
        for cap in sc.capabilities.iter().flat_map(|c| c.add.iter().flatten()) {
            o.push(format!("--cap-add={cap}"));
        }
        if sc.read_only_root_filesystem == Some(true) {
            // Kubernetes adds no tmpfs of its own on a read-only root; podman would.
            o.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        if sc.allow_privilege_escalation == Some(false) {
            o.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        match sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
            Some("Unconfined") => o.extend(["--security-opt".into(), "seccomp=unconfined".into()]),
            Some("RuntimeDefault") | None => {}
            Some(other) => panic!("seccomp profile {other}: not run by this test"),
        }
    }
    for m in container.volume_mounts.iter().flatten() {
        let volume = pod.volumes.iter().flatten().find(|v| v.name == m.name).unwrap_or_else(|| panic!("mount {} names no volume", m.name));
        let host = host_paths
            .iter()
            .find(|(name, _)| *name == m.name)
            .map(|(_, p)| p.to_path_buf())
            .or_else(|| volume.host_path.as_ref().map(|h| PathBuf::from(&h.path)))
            .unwrap_or_else(|| panic!("volume {} is not a hostPath", m.name));
        let mut flags = vec![if m.read_only == Some(true) { "ro" } else { "rw" }];
        match m.mount_propagation.as_deref() {
            Some("HostToContainer") => flags.push("rslave"),
            Some("Bidirectional") => flags.push("rshared"),
            _ => {}
        }
        o.push(format!("--volume={}:{}:{}", host.display(), m.mount_path, flags.join(",")));
    }
    for e in container.env.iter().flatten() {
        let from_node = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).is_some_and(|f| f.field_path == "spec.nodeName");
        match (&e.value, from_node) {
            (Some(v), _) => o.push(format!("--env={}={v}", e.name)),
            (None, true) => o.push(format!("--env={}={node_name}", e.name)),
            (None, false) => panic!("env {}: only values and spec.nodeName are run by this test", e.name),
        }
    }
    if let Some(command) = &container.command {
        let json = serde_json::to_string(command).unwrap_or_else(|e| panic!("{e}"));
        o.push(format!("--entrypoint={json}"));
    }
    o
}

/// This process's open-file limit, which a container may keep.
fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    #[expect(unsafe_code, reason = "getrlimit(2) has no std wrapper")]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    limit.rlim_cur.min(1 << 20)
}
