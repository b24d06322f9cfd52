//! The test API server inside a network namespace, and Kubernetes objects for the agent tests
//! and the benchmark.
use std::net::TcpListener;

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Container, PodSpec},
};
use serde_json::{json, Value};
use xvs_test_apiserver::{fixture, ApiServer};

use crate::topology::{enter_netns, Topology};

/// Binds the API server's listener inside `netns` (a socket stays in the namespace it was
/// made in), so an agent there reaches it on its own loopback.
pub fn api_server_in(netns: &str) -> ApiServer {
    ApiServer::start_on(listener_in(netns)).unwrap_or_else(|e| panic!("api server: {e}"))
}

/// The same over HTTPS with a bearer token, as a cluster serves it.
pub fn secure_api_server_in(netns: &str) -> ApiServer {
    ApiServer::start_secure_on(listener_in(netns)).unwrap_or_else(|e| panic!("api server: {e}"))
}

fn listener_in(netns: &str) -> TcpListener {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        enter_netns(&netns);
        TcpListener::bind("127.0.0.1:0")
    })
    .join()
    .unwrap_or_else(|_| panic!("binding thread panicked"))
    .unwrap_or_else(|e| panic!("bind in the node namespace: {e}"))
}

/// A ClusterIP Service `name` on `vip`:80 (targetPort "http"), as the API returns it.
pub fn cluster_ip_service(name: &str, vip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
            "selector": {"app": name}, "sessionAffinity": "None", "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}
    })
}

/// The EndpointSlice of Service `name`: ready endpoints at `addresses`, port 8080.
pub fn ready_slice(name: &str, addresses: &[String]) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "node-a"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("{name}-abcde"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// The xvs container of deploy/daemonset.yaml.
pub fn daemonset_container() -> Container {
    let pod = daemonset_pod();
    pod.containers.into_iter().find(|c| c.name == "xvs").unwrap_or_else(|| panic!("no xvs container"))
}

/// The pod template of deploy/daemonset.yaml.
pub fn daemonset_pod() -> PodSpec {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let ds: DaemonSet = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    ds.spec.template.spec.unwrap_or_else(|| panic!("no pod spec"))
}

/// The capabilities deploy/daemonset.yaml gives the xvs container, for setpriv.
pub fn daemonset_capabilities() -> Vec<String> {
    let caps = daemonset_container().security_context.and_then(|s| s.capabilities).and_then(|c| c.add).unwrap_or_default();
    assert!(!caps.is_empty());
    caps.iter().map(|c| c.to_lowercase()).collect()
}

/// Endpoint `i` of service-nginx (a topology backend) on `node`, with these conditions.
pub fn endpoint(i: usize, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({
        "addresses": [Topology::backend_addr(i)],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "name": format!("nginx-deployment-7c79c4bf97-{i}"), "namespace": "default"}
    })
}

/// service-nginx's EndpointSlice with `endpoints`.
pub fn slice(endpoints: Vec<Value>) -> Value {
    let mut s = fixture("endpointslice-service-nginx.json");
    s["endpoints"] = json!(endpoints);
    s
}

/// service-nginx's EndpointSlice with topology backends `ids` ready (3 on node-b).
pub fn ready(ids: &[usize]) -> Value {
    slice(ids.iter().map(|&i| endpoint(i, if i == 3 { "node-b" } else { "node-a" }, true, true, false)).collect())
}
