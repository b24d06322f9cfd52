//! Translation tests on objects shaped as a real API server returns them (kubectl get -o json):
//! kube-proxy's classic example, service-nginx over a 3-replica Deployment, and its variations.
use serde_json::json;

use super::*;
use crate::model::{BackendState, Reach};

fn service(v: serde_json::Value) -> KubeService {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("fixture: {e}"))
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("fixture: {e}"))
}

fn nginx(spec_extra: serde_json::Value) -> KubeService {
    let mut spec = json!({
        "type": "ClusterIP",
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ipFamilies": ["IPv4"],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"}],
        "selector": {"app": "nginx"},
        "sessionAffinity": "None",
        "internalTrafficPolicy": "Cluster"
    });
    if let (Some(base), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    service(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "service-nginx", "namespace": "default", "resourceVersion": "1234", "uid": "5f0c9b1e-0000-4000-8000-000000000001"},
        "spec": spec,
        "status": {"loadBalancer": {}}
    }))
}

fn endpoint(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> serde_json::Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "name": format!("nginx-{ip}"), "namespace": "default"}
    })
}

fn nginx_slice(family: &str, port_name: &str, endpoints: Vec<serde_json::Value>) -> EndpointSlice {
    slice(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("service-nginx-{}", family.to_lowercase()),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "service-nginx", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{"name": port_name, "port": 8080, "protocol": "TCP"}]
    }))
}

fn three_ready() -> EndpointSlice {
    nginx_slice("IPv4", "http", vec![endpoint("10.244.1.2", "node-a", true, true, false), endpoint("10.244.2.3", "node-b", true, true, false), endpoint("10.244.1.4", "node-a", true, true, false)])
}

fn node_a() -> Node {
    Node { name: "node-a".into(), addresses: vec!["192.168.0.11".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))], zone: None }
}

/// Each service as `TCP 10.96.0.10:80 rr [10.244.1.2:8080 a, ...]` (a = active, t = terminating).
fn shown(model: &Model) -> Vec<String> {
    model
        .services()
        .map(|s| {
            let b: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{} {}", b.endpoint(), if b.state == BackendState::Active { "a" } else { "t" }))
                .collect();
            let aff = s.affinity_timeout.map(|t| format!(" persistent {t}")).unwrap_or_default();
            format!("{} {}{aff} [{}]", s.id, s.scheduler.ipvs_name(), b.join(", "))
        })
        .collect()
}

#[test]
fn classic_service_nginx_three_replicas_rr() {
    let (model, warnings) = translate(&[nginx(json!({}))], &[three_ready()], &node_a());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(shown(&model), ["TCP 10.96.0.10:80 rr [10.244.1.2:8080 a, 10.244.1.4:8080 a, 10.244.2.3:8080 a]"]);
}

#[test]
fn terminating_endpoints_drain_and_serve_only_when_nothing_is_ready() {
    let mixed = nginx_slice("IPv4", "http", vec![endpoint("10.244.1.2", "node-a", true, true, false), endpoint("10.244.2.3", "node-b", false, true, true), endpoint("10.244.1.9", "node-a", false, false, false)]);
    let (model, _) = translate(&[nginx(json!({}))], &[mixed], &node_a());
    assert_eq!(shown(&model), ["TCP 10.96.0.10:80 rr [10.244.1.2:8080 a, 10.244.2.3:8080 t]"]);
    let only_terminating = nginx_slice("IPv4", "http", vec![endpoint("10.244.2.3", "node-b", false, true, true)]);
    let (model, _) = translate(&[nginx(json!({}))], &[only_terminating], &node_a());
    assert_eq!(shown(&model), ["TCP 10.96.0.10:80 rr [10.244.2.3:8080 a]"]);
}

#[test]
fn ports_match_by_name_and_affinity_follows_the_spec() {
    let renamed = nginx(json!({"ports": [{"name": "web", "port": 80, "protocol": "TCP", "targetPort": 8080}], "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}));
    let (model, _) = translate(std::slice::from_ref(&renamed), &[three_ready()], &node_a());
    assert_eq!(shown(&model), ["TCP 10.96.0.10:80 rr persistent 60 []"], "a slice port named http does not serve port web");
    let slice = nginx_slice("IPv4", "web", vec![endpoint("10.244.1.2", "node-a", true, true, false)]);
    let (model, _) = translate(&[renamed], &[slice], &node_a());
    assert_eq!(shown(&model), ["TCP 10.96.0.10:80 rr persistent 60 [10.244.1.2:8080 a]"]);
    let default_timeout = nginx(json!({"sessionAffinity": "ClientIP"}));
    assert_eq!(translate(&[default_timeout], &[] as &[EndpointSlice], &node_a()).0.services().next().and_then(|s| s.affinity_timeout), Some(10800));
}

#[test]
fn node_port_external_ips_and_load_balancer_with_local_traffic_policy() {
    let mut svc = nginx(json!({
        "type": "LoadBalancer",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web", "nodePort": 30080}],
        "externalIPs": ["203.0.113.7"],
        "externalTrafficPolicy": "Local"
    }));
    svc.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}})).ok();
    let (model, warnings) = translate(&[svc], &[three_ready()], &node_a());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        shown(&model),
        [
            "TCP 10.96.0.10:80 rr [10.244.1.2:8080 a, 10.244.1.4:8080 a, 10.244.2.3:8080 a]",
            "TCP 192.168.0.11:30080 rr [10.244.1.2:8080 a, 10.244.1.4:8080 a]",
            "TCP 198.51.100.9:80 rr [10.244.1.2:8080 a, 10.244.1.4:8080 a]",
            "TCP 203.0.113.7:80 rr [10.244.1.2:8080 a, 10.244.1.4:8080 a]",
        ]
    );
    // Masquerading: the cluster IP is reached from the cluster, the other three are external
    // addresses whose policy keeps the client's address.
    let reach: Vec<Reach> = model.services().map(|s| s.reach).collect();
    assert_eq!(reach, [Reach::Cluster, Reach::ExternalLocal, Reach::ExternalLocal, Reach::ExternalLocal]);
    let cluster_policy = nginx(json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web", "nodePort": 30080}]}));
    let (model, _) = translate(&[cluster_policy], &[three_ready()], &node_a());
    let reach: Vec<Reach> = model.services().map(|s| s.reach).collect();
    assert_eq!(reach, [Reach::Cluster, Reach::External]);
    let internal_local = nginx(json!({"internalTrafficPolicy": "Local"}));
    let (model, _) = translate(&[internal_local], &[three_ready()], &Node { name: "node-b".into(), addresses: vec![], zone: None });
    assert_eq!(shown(&model), ["TCP 10.96.0.10:80 rr [10.244.2.3:8080 a]"]);
    assert_eq!(model.services().next().map(|s| s.reach), Some(Reach::Cluster), "internalTrafficPolicy has no say in masquerading");
}

/// kube-proxy's loadBalancerSourceRanges: on the LB IPs only (not the clusterIP, externalIPs or
/// NodePorts), each family's own ranges, and the LB IP itself when a range holds a node
/// address; a bad range is named and skipped.
#[test]
fn load_balancer_source_ranges_apply_to_lb_ips_only() {
    let mut svc = nginx(json!({
        "type": "LoadBalancer",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web", "nodePort": 30080}],
        "externalIPs": ["203.0.113.7"],
        "loadBalancerSourceRanges": ["10.0.0.0/8", " 192.168.0.0/16 ", "10.1.2.3", "2001:db8::/32"]
    }));
    svc.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}})).ok();
    let (model, warnings) = translate(&[svc], &[three_ready()], &node_a());
    let ranges: Vec<(String, Vec<String>)> = model.services().map(|s| (s.id.to_string(), s.source_ranges.iter().map(ToString::to_string).collect())).collect();
    assert_eq!(
        ranges,
        [
            ("TCP 10.96.0.10:80".to_owned(), vec![]),
            ("TCP 192.168.0.11:30080".to_owned(), vec![]),
            ("TCP 198.51.100.9:80".to_owned(), vec!["10.0.0.0/8".to_owned(), "192.168.0.0/16".to_owned(), "198.51.100.9/32".to_owned()]),
            ("TCP 203.0.113.7:80".to_owned(), vec![]),
        ]
    );
    assert_eq!(warnings.iter().map(ToString::to_string).collect::<Vec<_>>(), ["Service default/service-nginx: loadBalancerSourceRanges: \"10.1.2.3\" is not a CIDR (address/prefix); that range is skipped"]);
}

#[test]
fn dual_stack_uses_each_family_s_slice() {
    let svc = nginx(json!({"clusterIPs": ["10.96.0.10", "fd00::10"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack"}));
    let v6 = nginx_slice("IPv6", "http", vec![endpoint("fd00:244::2", "node-a", true, true, false)]);
    let (model, warnings) = translate(&[svc], &[three_ready(), v6], &node_a());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        shown(&model),
        ["TCP 10.96.0.10:80 rr [10.244.1.2:8080 a, 10.244.1.4:8080 a, 10.244.2.3:8080 a]", "TCP [fd00::10]:80 rr [[fd00:244::2]:8080 a]"]
    );
}

#[test]
fn odd_objects_are_named_and_skipped_while_the_rest_applies() {
    let mut bad_ip = nginx(json!({"clusterIP": "10.96.0.300", "clusterIPs": ["10.96.0.300"]}));
    bad_ip.metadata.name = Some("broken".into());
    let mut annotated = nginx(json!({"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11"]}));
    annotated.metadata.name = Some("sticky".into());
    annotated.metadata.annotations = Some([(SCHEDULER_ANNOTATION.to_owned(), "lc".to_owned())].into());
    let headless = {
        let mut s = nginx(json!({"clusterIP": "None", "clusterIPs": ["None"]}));
        s.metadata.name = Some("headless".into());
        s
    };
    let external_name = {
        let mut s = nginx(json!({"type": "ExternalName", "externalName": "example.com", "clusterIP": null, "clusterIPs": null}));
        s.metadata.name = Some("alias".into());
        s
    };
    let mut sh = nginx(json!({"clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"]}));
    sh.metadata.name = Some("hashed".into());
    sh.metadata.annotations = Some([(SCHEDULER_ANNOTATION.to_owned(), "sh".to_owned())].into());
    let bad_endpoint = nginx_slice("IPv4", "http", vec![endpoint("10.244.1.2", "node-a", true, true, false), endpoint("not-an-ip", "node-a", true, true, false)]);
    let (model, warnings) = translate(&[bad_ip, annotated, headless, external_name, nginx(json!({})), sh], &[bad_endpoint], &node_a());
    let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "Service default/broken: clusterIP \"10.96.0.300\" is not an IP address; skipped",
            "Service default/sticky: annotation xvs.io/scheduler=\"lc\" is not rr, wrr, sh or mh; using rr",
            "EndpointSlice default/service-nginx-ipv4: endpoint address \"not-an-ip\" is not an IP address; skipped",
        ]
    );
    assert_eq!(
        shown(&model),
        ["TCP 10.96.0.10:80 rr [10.244.1.2:8080 a]", "TCP 10.96.0.11:80 rr []", "TCP 10.96.0.12:80 sh []"],
        "the slices belong to service-nginx only"
    );
}

#[test]
fn wrr_weights_come_from_the_annotation_by_pod_name_or_address() {
    let weighted = |text: &str| {
        let mut svc = nginx(json!({}));
        svc.metadata.annotations = Some([(SCHEDULER_ANNOTATION.to_owned(), "wrr".to_owned()), (WEIGHTS_ANNOTATION.to_owned(), text.to_owned())].into());
        let (model, warnings) = translate(&[svc], &[three_ready()], &node_a());
        let weights: Vec<(String, u32)> = model.services().flat_map(|s| s.backends.iter().map(|b| (b.endpoint().to_string(), b.weight))).collect();
        (weights, warnings.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let (weights, warnings) = weighted("nginx-10.244.1.2=3, 10.244.2.3=0");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(weights, [("10.244.1.2:8080".to_owned(), 3), ("10.244.1.4:8080".to_owned(), 1), ("10.244.2.3:8080".to_owned(), 0)]);
    for (bad, cause) in [
        ("nginx-10.244.1.2=x", "weight \"x\" of nginx-10.244.1.2 is not a number in 0..=65535"),
        ("nginx-10.244.1.2", "\"nginx-10.244.1.2\" is not name=weight"),
        ("a=1,a=2", "a is listed twice"),
        ("nginx-10.244.1.2=70000", "weight \"70000\" of nginx-10.244.1.2 is not a number in 0..=65535"),
    ] {
        let (weights, warnings) = weighted(bad);
        assert!(weights.iter().all(|(_, w)| *w == 1), "{bad}: a bad annotation leaves the defaults: {weights:?}");
        assert_eq!(warnings, [format!("Service default/service-nginx: annotation xvs.io/weights={bad:?}: {cause}; every endpoint weighs 1")]);
    }
}

#[test]
fn named_target_port_resolves_per_endpoint_and_selectorless_services_use_manual_slices() {
    // Pods of one Service exposing the port named "http" on different numbers: the controller
    // writes one slice per resolved port, and each endpoint keeps its own.
    let mut other = nginx_slice("IPv4", "http", vec![endpoint("10.244.3.5", "node-c", true, true, false)]);
    other.metadata.name = Some("service-nginx-9090".into());
    if let Some(p) = other.ports.as_mut().and_then(|p| p.first_mut()) {
        p.port = Some(9090);
    }
    let (model, warnings) = translate(&[nginx(json!({}))], &[three_ready(), other], &node_a());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(shown(&model), ["TCP 10.96.0.10:80 rr [10.244.1.2:8080 a, 10.244.1.4:8080 a, 10.244.2.3:8080 a, 10.244.3.5:9090 a]"]);

    // No selector: endpoints come from a slice someone else manages, labelled with the name.
    let selectorless = nginx(json!({"selector": null, "ports": [{"name": "db", "port": 5432, "protocol": "TCP", "targetPort": 5432}]}));
    let manual = slice(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "external-db-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "service-nginx", "endpointslice.kubernetes.io/managed-by": "staff"}},
        "endpoints": [{"addresses": ["192.0.2.40"]}],
        "ports": [{"name": "db", "port": 5432, "protocol": "TCP"}]
    }));
    let (model, warnings) = translate(&[selectorless], &[manual], &node_a());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(shown(&model), ["TCP 10.96.0.10:5432 rr [192.0.2.40:5432 a]"], "no conditions: ready (the API's default)");
}
