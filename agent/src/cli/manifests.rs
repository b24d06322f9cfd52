//! deploy/ checked offline: every manifest parses into its k8s-openapi type without losing a
//! field (a misspelled or misplaced field would be dropped, and the round trip shows it), and
//! the pieces agree with each other and with this binary: the DaemonSet's arguments parse as
//! `xvs run`, the RBAC grants what the Kubernetes source calls, the mounts are where the agent
//! pins and loads modules. (No published schemas offline: kubeconform cannot run here.)
use std::path::PathBuf;

use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    serde::{de::DeserializeOwned, Serialize},
};
use serde_json::Value;

use super::{Cli, Command};

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

fn documents(file: &str) -> Vec<Value> {
    let path = deploy(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The document as its typed object; panics if any field did not survive the round trip.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(&object).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&back, doc, "{} {}: fields were lost or changed parsing it (a typo, or the wrong place)", doc["kind"], doc["metadata"]["name"]);
    object
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

#[test]
fn rbac_grants_exactly_what_the_kubernetes_source_uses() {
    let docs = documents("rbac.yaml");
    assert_eq!(docs.len(), 3);
    let sa: ServiceAccount = typed(of_kind(&docs, "ServiceAccount"));
    let role: ClusterRole = typed(of_kind(&docs, "ClusterRole"));
    let binding: ClusterRoleBinding = typed(of_kind(&docs, "ClusterRoleBinding"));

    let mut grants: Vec<String> = Vec::new();
    for rule in role.rules.iter().flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    grants.push(format!("{group}/{resource} {verb}"));
                }
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        [
            "/nodes get", "/nodes list", "/nodes watch", "/services get", "/services list", "/services watch",
            "discovery.k8s.io/endpointslices get", "discovery.k8s.io/endpointslices list", "discovery.k8s.io/endpointslices watch",
            "events.k8s.io/events create", "events.k8s.io/events patch",
        ]
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subject = binding.subjects.iter().flatten().next().unwrap_or_else(|| panic!("no subject"));
    assert_eq!((subject.kind.as_str(), Some(&subject.name), subject.namespace.as_ref()), ("ServiceAccount", sa.metadata.name.as_ref(), sa.metadata.namespace.as_ref()));
}

#[test]
fn daemonset_runs_xvs_run_from_kubernetes_with_host_network_mounts_and_least_capabilities() {
    let docs = documents("daemonset.yaml");
    let ds: DaemonSet = typed(of_kind(&docs, "DaemonSet"));
    let sa_docs = documents("rbac.yaml");
    let sa: ServiceAccount = typed(of_kind(&sa_docs, "ServiceAccount"));
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    let spec = ds.spec.template.spec.as_ref().unwrap_or_else(|| panic!("no pod spec"));
    assert_eq!(spec.service_account_name, sa.metadata.name);
    assert_eq!(spec.host_network, Some(true), "VIPs are served on the node's own interfaces");
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));

    let xvs: &Container = spec.containers.iter().find(|c| c.name == "xvs").unwrap_or_else(|| panic!("no xvs container"));
    let args: Vec<String> = std::iter::once("xvs".to_owned()).chain(xvs.args.iter().flatten().cloned()).collect();
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("the DaemonSet's args are not a valid xvs command line: {e}"));
    let Command::Run(run) = cli.command else { panic!("the DaemonSet must run `xvs run`") };
    assert!(run.source.kubernetes && run.source.config.is_none(), "the Kubernetes source, in-cluster");
    assert!(!run.ifaces.is_empty());
    let node_name = xvs.env.iter().flatten().find(|e| e.name == "NODE_NAME").and_then(|e| e.value_from.as_ref()).and_then(|v| v.field_ref.as_ref());
    assert_eq!(node_name.map(|f| f.field_path.as_str()), Some("spec.nodeName"), "NODE_NAME from the downward API");

    // Metrics: the port the agent serves is the declared one and the liveness probe's.
    let metrics = run.kube.metrics_addr.unwrap_or_else(|| panic!("--metrics-addr"));
    let port = xvs.ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics")).map(|p| p.container_port);
    assert_eq!(port, Some(i32::from(metrics.port())));
    let probe = xvs.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.port.clone());
    assert_eq!(probe, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(metrics.port()))));

    // Least privilege: not privileged; exactly the capabilities the agent needs.
    let security = xvs.security_context.as_ref().unwrap_or_else(|| panic!("securityContext"));
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    // bpf(2) under a runtime's default seccomp profile needs CAP_SYS_ADMIN (tests/tests/image.rs).
    assert_eq!(security.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("Unconfined"));
    let caps = security.capabilities.as_ref().unwrap_or_else(|| panic!("capabilities"));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(caps.add.as_deref(), Some(&["BPF", "NET_ADMIN", "PERFMON", "SYS_MODULE"].map(String::from)[..]));

    // Mounts: the pin directory is inside the host's bpffs; modules are read-only; IPVS
    // ownership is recorded on the host.
    let mount = |path: &str| xvs.volume_mounts.iter().flatten().find(|m| m.mount_path == path).cloned().unwrap_or_else(|| panic!("no mount at {path}"));
    let host_path = |volume: &str| {
        spec.volumes.iter().flatten().find(|v| v.name == volume).and_then(|v| v.host_path.as_ref()).map(|h| h.path.clone()).unwrap_or_else(|| panic!("volume {volume} is not a hostPath"))
    };
    let bpffs = mount("/sys/fs/bpf");
    assert!(run.pin_dir.starts_with("/sys/fs/bpf"), "pins live in the mounted bpffs");
    assert_eq!(host_path(&bpffs.name), "/sys/fs/bpf");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("HostToContainer"));
    let modules = mount("/lib/modules");
    assert_eq!((modules.read_only, host_path(&modules.name).as_str()), (Some(true), "/lib/modules"));
    // The record of xvs's IPVS services outlives the pod (in the host's /run, as the table).
    let state = mount(xvs::ipvs::owned::STATE_DIR);
    assert_eq!((state.read_only, host_path(&state.name).as_str()), (None, xvs::ipvs::owned::STATE_DIR));

    // The init container mounts a bpffs on the host where none is.
    let init = spec.init_containers.iter().flatten().find(|c| c.name == "mount-bpffs").unwrap_or_else(|| panic!("no mount-bpffs init container"));
    assert!(init.command.iter().flatten().any(|c| c.contains("mount -t bpf bpf /sys/fs/bpf")));
    assert!(init.volume_mounts.iter().flatten().any(|m| m.mount_path == "/sys/fs/bpf" && m.mount_propagation.as_deref() == Some("Bidirectional")));
}

#[test]
fn the_dockerfile_is_the_image_xtask_builds_from_scratch_with_the_agent_as_entrypoint() {
    let path = deploy("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let steps: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.is_empty()).collect();
    assert_eq!(steps.first(), Some(&"FROM scratch"), "no base image to pull: {text}");
    assert!(steps.contains(&"COPY . /"), "the root filesystem `cargo xtask image` fills: {text}");
    assert!(steps.iter().any(|l| l.starts_with("ENTRYPOINT [\"/usr/bin/xvs\"]")), "{text}");
    let version = format!("org.opencontainers.image.version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&version), "the label names this version: {text}");
    // The DaemonSet runs the image this version builds.
    let ds = std::fs::read_to_string(deploy("daemonset.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(ds.contains(&format!("image: xvs:{}", env!("CARGO_PKG_VERSION"))), "{ds}");
}
