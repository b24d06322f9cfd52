//! The test API server inside a network namespace, and Kubernetes objects for the agent tests
//! and the benchmark.
use std::net::TcpListener;

use serde_json::{json, Value};
use xvs_test_apiserver::ApiServer;

use crate::topology::enter_netns;

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
