//! kube-proxy's own test cases, ported: pkg/proxy/ipvs/proxier_test.go (what IPVS mode programs
//! for each Service shape), pkg/proxy/topology_test.go (CategorizeEndpoints),
//! pkg/proxy/servicechangetracker_test.go and endpointslicecache_test.go (which addresses and
//! endpoints count). Each case is Service/EndpointSlice/Node JSON, run through the real
//! translation and the IPVS renderer, against the virtual and real servers kube-proxy's IPVS
//! mode writes (`TCP vip:port sched [persistent T] -> rs:port weight, ...`).
//!
//! Where xvs differs on purpose, `differs` says how and why; the expectation is xvs's.
use serde_json::{json, Value};

use super::translate::{translate, Node};
use crate::ipvs::render::render;

struct Case {
    name: &'static str,
    /// The upstream test it comes from.
    upstream: &'static str,
    services: Vec<Value>,
    slices: Vec<Value>,
    node: Node,
    expected: &'static [&'static str],
    /// Why xvs's expectation differs from kube-proxy's, where it does.
    differs: Option<&'static str>,
}

fn node(zone: Option<&str>, addresses: &[&str]) -> Node {
    Node {
        name: "node-a".into(),
        addresses: addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        zone: zone.map(str::to_owned),
    }
}

/// A Service `ns1/svc1` with `spec` merged over a single-stack IPv4 ClusterIP with port p80.
fn svc(spec: Value) -> Value {
    svc_with(spec, json!({}))
}

fn svc_with(spec: Value, status: Value) -> Value {
    let mut base = json!({
        "type": "ClusterIP",
        "clusterIP": "172.16.55.4",
        "clusterIPs": ["172.16.55.4"],
        "ipFamilies": ["IPv4"],
        "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "targetPort": 80}],
        "sessionAffinity": "None"
    });
    merge(&mut base, spec);
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc1", "namespace": "ns1", "resourceVersion": "1"}, "spec": base, "status": status})
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
}

/// An EndpointSlice of `ns1/svc1`.
fn eps(name: &str, family: &str, ports: Value, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
        "metadata": {"name": name, "namespace": "ns1", "labels": {"kubernetes.io/service-name": "svc1"}},
        "ports": ports, "endpoints": endpoints
    })
}

/// The one IPv4 slice `svc1-1` of `ns1/svc1`, port p80, with these endpoints.
fn v4(endpoints: Value) -> Vec<Value> {
    vec![eps("svc1-1", "IPv4", p80(), endpoints)]
}

fn p80() -> Value {
    json!([{"name": "p80", "port": 80, "protocol": "TCP"}])
}

/// An endpoint with its conditions (`r` ready, `s` serving, `t` terminating), node and hints.
fn ep(ip: &str, conditions: &str, node: &str, zones: &[&str]) -> Value {
    let mut e = json!({
        "addresses": [ip],
        "conditions": {"ready": conditions.contains('r'), "serving": conditions.contains('s'), "terminating": conditions.contains('t')},
        "nodeName": node
    });
    if !zones.is_empty() {
        let for_zones: Vec<Value> = zones.iter().map(|z| json!({"name": z})).collect();
        merge(&mut e, json!({"hints": {"forZones": for_zones}}));
    }
    e
}

/// Four ready endpoints hinted for zones a, b, c, a (topology_test's standard set).
fn zoned_four() -> Value {
    json!([ep("10.1.2.3", "rs", "node-b", &["zone-a"]), ep("10.1.2.4", "rs", "node-b", &["zone-b"]), ep("10.1.2.5", "rs", "node-c", &["zone-c"]), ep("10.1.2.6", "rs", "node-c", &["zone-a"])])
}

/// Each virtual server as kube-proxy's test expectations list it.
fn programmed(case: &Case) -> Vec<String> {
    let services: Vec<k8s_openapi::api::core::v1::Service> =
        case.services.iter().map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{}: service fixture: {e}", case.name))).collect();
    let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> =
        case.slices.iter().map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{}: slice fixture: {e}", case.name))).collect();
    let (model, _) = translate(&services, &slices, &case.node);
    render(&model)
        .iter()
        .map(|d| {
            let s = &d.service;
            let proto = crate::model::Protocol::from_number(s.protocol as u8).map_or("?", crate::model::Protocol::name);
            let vip = std::net::SocketAddr::new(s.addr, s.port);
            let persistent = if s.timeout > 0 { format!(" persistent {}", s.timeout) } else { String::new() };
            let mut dests: Vec<String> = d.dests.iter().map(|r| format!("{} {}", std::net::SocketAddr::new(r.addr, r.port), r.weight)).collect();
            dests.sort();
            format!("{proto} {vip} {}{persistent} -> {}", s.scheduler, dests.join(", "))
        })
        .collect()
}

fn cases() -> Vec<Case> {
    let plain = || node(None, &["10.20.30.41"]);
    vec![
        Case {
            name: "cluster IP service",
            upstream: "ipvs TestClusterIP",
            services: vec![svc(json!({}))],
            slices: v4(json!([ep("10.180.0.1", "rs", "node-b", &[])])),
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> 10.180.0.1:80 1"],
            differs: None,
        },
        Case {
            name: "cluster IP service, IPv6",
            upstream: "ipvs TestClusterIP (IPv6)",
            services: vec![svc(json!({"clusterIP": "2020::1", "clusterIPs": ["2020::1"], "ipFamilies": ["IPv6"]}))],
            slices: vec![eps("svc1-1", "IPv6", p80(), json!([ep("1009:ab8::5:6", "rs", "node-b", &[])]))],
            node: plain(),
            expected: &["TCP [2020::1]:80 rr -> [1009:ab8::5:6]:80 1"],
            differs: None,
        },
        Case {
            name: "cluster IP service with no endpoints",
            upstream: "ipvs TestClusterIPNoEndpoint",
            services: vec![svc(json!({}))],
            slices: vec![],
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> "],
            differs: None,
        },
        Case {
            name: "unnamed service port matches the slice port the API server names \"\"",
            upstream: "endpointslicecache TestEndpointsMapFromESC (unnamed port)",
            services: vec![svc(json!({"ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}))],
            slices: vec![eps("svc1-1", "IPv4", json!([{"name": "", "port": 8080, "protocol": "TCP"}]), json!([ep("10.180.0.1", "rs", "node-b", &[])]))],
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> 10.180.0.1:8080 1"],
            differs: None,
        },
        Case {
            name: "a slice port without a name is ignored",
            upstream: "endpointslicecache endpointInfoByServicePort (nil port name)",
            services: vec![svc(json!({"ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}))],
            slices: vec![eps("svc1-1", "IPv4", json!([{"port": 8080, "protocol": "TCP"}]), json!([ep("10.180.0.1", "rs", "node-b", &[])]))],
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> "],
            differs: None,
        },
        Case {
            name: "node port on the node's addresses",
            upstream: "ipvs TestNodePortIPv4",
            services: vec![svc(json!({"type": "NodePort", "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}))],
            slices: v4(json!([ep("10.180.0.1", "rs", "node-b", &[])])),
            node: plain(),
            expected: &["TCP 10.20.30.41:3001 rr -> 10.180.0.1:80 1", "TCP 172.16.55.4:80 rr -> 10.180.0.1:80 1"],
            differs: None,
        },
        Case {
            name: "single-stack IPv4 service on a dual-stack node: no IPv6 node port",
            upstream: "ipvs TestNodePortIPv4 (dual-stack node addresses)",
            services: vec![svc(json!({"type": "NodePort", "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}))],
            slices: v4(json!([ep("10.180.0.1", "rs", "node-b", &[])])),
            node: node(None, &["10.20.30.41", "2001:db8::1:1"]),
            expected: &["TCP 10.20.30.41:3001 rr -> 10.180.0.1:80 1", "TCP 172.16.55.4:80 rr -> 10.180.0.1:80 1"],
            differs: None,
        },
        Case {
            name: "single-stack IPv6 service on a dual-stack node: no IPv4 node port",
            upstream: "ipvs TestNodePortIPv6",
            services: vec![svc(json!({"type": "NodePort", "clusterIP": "2020::1", "clusterIPs": ["2020::1"], "ipFamilies": ["IPv6"],
                "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}))],
            slices: vec![eps("svc1-1", "IPv6", p80(), json!([ep("1002:ab8::2:1", "rs", "node-b", &[])]))],
            node: node(None, &["10.20.30.41", "2001:db8::1:1"]),
            expected: &["TCP [2001:db8::1:1]:3001 rr -> [1002:ab8::2:1]:80 1", "TCP [2020::1]:80 rr -> [1002:ab8::2:1]:80 1"],
            differs: None,
        },
        Case {
            name: "dual-stack service: each family from its own slices",
            upstream: "servicechangetracker TestServiceToServiceMap (dual-stack)",
            services: vec![svc(json!({"clusterIPs": ["172.16.55.4", "2020::1"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}))],
            slices: vec![
                eps("svc1-v4", "IPv4", p80(), json!([ep("10.180.0.1", "rs", "node-b", &[])])),
                eps("svc1-v6", "IPv6", p80(), json!([ep("1002:ab8::2:1", "rs", "node-b", &[])])),
            ],
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> 10.180.0.1:80 1", "TCP [2020::1]:80 rr -> [1002:ab8::2:1]:80 1"],
            differs: None,
        },
        Case {
            name: "external IPs of the other family are dropped",
            upstream: "servicechangetracker TestServiceToServiceMap (external IPs, wrong family)",
            services: vec![svc(json!({"externalIPs": ["50.60.70.81", "2012::51", "127.0.0.1"]}))],
            slices: v4(json!([ep("10.180.0.1", "rs", "node-b", &[])])),
            node: plain(),
            expected: &["TCP 127.0.0.1:80 rr -> 10.180.0.1:80 1", "TCP 172.16.55.4:80 rr -> 10.180.0.1:80 1", "TCP 50.60.70.81:80 rr -> 10.180.0.1:80 1"],
            differs: None,
        },
        Case {
            name: "load-balancer ingress: VIP mode programmed, Proxy mode and other family not",
            upstream: "ipvs TestLoadBalancerIngressRouteTypeProxy; servicechangetracker (LB IPs, wrong family)",
            services: vec![svc_with(
                json!({"type": "LoadBalancer", "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "VIP"}, {"ip": "1.2.3.5", "ipMode": "Proxy"}, {"ip": "1.2.3.6"}, {"ip": "2000::1"}]}}),
            )],
            slices: v4(json!([ep("10.180.0.1", "rs", "node-b", &[])])),
            node: plain(),
            expected: &[
                "TCP 1.2.3.4:80 rr -> 10.180.0.1:80 1",
                "TCP 1.2.3.6:80 rr -> 10.180.0.1:80 1",
                "TCP 10.20.30.41:3001 rr -> 10.180.0.1:80 1",
                "TCP 172.16.55.4:80 rr -> 10.180.0.1:80 1",
            ],
            differs: None,
        },
        Case {
            name: "an LB ingress IP that is also an external IP is one virtual server",
            upstream: "ipvs syncService (an existing virtual server is updated, not added twice)",
            services: vec![svc_with(json!({"type": "LoadBalancer", "externalIPs": ["1.2.3.4"]}), json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}))],
            slices: v4(json!([ep("10.180.0.1", "rs", "node-b", &[])])),
            node: plain(),
            expected: &["TCP 1.2.3.4:80 rr -> 10.180.0.1:80 1", "TCP 172.16.55.4:80 rr -> 10.180.0.1:80 1"],
            differs: None,
        },
        Case {
            name: "session affinity ClientIP",
            upstream: "ipvs TestSessionAffinity",
            services: vec![svc(json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}}, "externalIPs": ["50.60.70.81"]}))],
            slices: v4(json!([ep("10.180.0.1", "rs", "node-b", &[])])),
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr persistent 10800 -> 10.180.0.1:80 1", "TCP 50.60.70.81:80 rr persistent 10800 -> 10.180.0.1:80 1"],
            differs: None,
        },
        Case {
            name: "externalTrafficPolicy Local: only local endpoints on external addresses",
            upstream: "ipvs TestOnlyLocalNodePorts / TestOnlyLocalExternalIPs",
            services: vec![svc(json!({"type": "NodePort", "externalTrafficPolicy": "Local", "externalIPs": ["50.60.70.81"],
                "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}))],
            slices: v4(json!([ep("10.180.0.1", "rs", "node-b", &[]), ep("10.180.2.1", "rs", "node-a", &[])])),
            node: plain(),
            expected: &[
                "TCP 10.20.30.41:3001 rr -> 10.180.2.1:80 1",
                "TCP 172.16.55.4:80 rr -> 10.180.0.1:80 1, 10.180.2.1:80 1",
                "TCP 50.60.70.81:80 rr -> 10.180.2.1:80 1",
            ],
            differs: None,
        },
        Case {
            name: "internalTrafficPolicy Local with only remote endpoints",
            upstream: "ipvs TestTestInternalTrafficPolicyE2E; topology (iTP Local, all endpoints remote)",
            services: vec![svc(json!({"internalTrafficPolicy": "Local"}))],
            slices: v4(json!([ep("10.0.1.1", "rs", "node-b", &[]), ep("10.0.1.2", "rs", "node-c", &[])])),
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> "],
            differs: None,
        },
        Case {
            name: "ready and terminating endpoints, cluster policy",
            upstream: "ipvs Test_EndpointSliceReadyAndTerminatingCluster",
            services: vec![svc(json!({}))],
            slices: v4(json!([ep("10.0.1.1", "rs", "node-a", &[]), ep("10.0.1.2", "rs", "node-a", &[]), ep("10.0.1.3", "st", "node-a", &[]), ep("10.0.1.4", "t", "node-a", &[]), ep("10.0.1.5", "rs", "node-b", &[])])),
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> 10.0.1.1:80 1, 10.0.1.2:80 1, 10.0.1.3:80 0, 10.0.1.5:80 1"],
            differs: Some(
                "kube-proxy leaves the serving+terminating 10.0.1.3 out while others are ready; xvs keeps it at weight 0 so its \
                 established connections finish there (IPVS's graceful termination does the same for a deleted destination)",
            ),
        },
        Case {
            name: "only terminating endpoints: the serving ones are used",
            upstream: "ipvs Test_EndpointSliceOnlyReadyAndTerminatingCluster",
            services: vec![svc(json!({}))],
            slices: v4(json!([ep("10.0.1.1", "st", "node-a", &[]), ep("10.0.1.2", "st", "node-b", &[]), ep("10.0.1.3", "t", "node-a", &[])])),
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> 10.0.1.1:80 1, 10.0.1.2:80 1"],
            differs: None,
        },
        Case {
            name: "ready and terminating endpoints, local policy",
            upstream: "ipvs Test_EndpointSliceReadyAndTerminatingLocal",
            services: vec![svc(json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}))],
            slices: v4(json!([ep("10.0.1.1", "rs", "node-a", &[]), ep("10.0.1.2", "st", "node-a", &[]), ep("10.0.1.3", "rs", "node-b", &[])])),
            node: plain(),
            expected: &["TCP 10.20.30.41:3001 rr -> 10.0.1.1:80 1, 10.0.1.2:80 0", "TCP 172.16.55.4:80 rr -> 10.0.1.1:80 1, 10.0.1.2:80 0, 10.0.1.3:80 1"],
            differs: Some("serving+terminating endpoints kept at weight 0 for their established connections (see above)"),
        },
        Case {
            name: "only terminating endpoints, local policy: the local serving ones",
            upstream: "ipvs Test_EndpointSliceOnlyReadyAndTerminatingLocal",
            services: vec![svc(json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}))],
            slices: v4(json!([ep("10.0.1.1", "st", "node-a", &[]), ep("10.0.1.2", "t", "node-a", &[]), ep("10.0.1.3", "st", "node-b", &[])])),
            node: plain(),
            expected: &["TCP 10.20.30.41:3001 rr -> 10.0.1.1:80 1", "TCP 172.16.55.4:80 rr -> 10.0.1.1:80 1, 10.0.1.3:80 1"],
            differs: None,
        },
        Case {
            name: "publishNotReadyAddresses: a terminating pod that is still ready serves at full weight",
            upstream: "endpointslicecache (Ready is the ready condition, terminating or not)",
            services: vec![svc(json!({"publishNotReadyAddresses": true}))],
            slices: v4(json!([ep("10.0.1.1", "rs", "node-a", &[]), ep("10.0.1.2", "rst", "node-b", &[]), ep("10.0.1.3", "rt", "node-b", &[])])),
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> 10.0.1.1:80 1, 10.0.1.2:80 1, 10.0.1.3:80 1"],
            differs: None,
        },
        Case {
            name: "an endpoint with several addresses: the first only",
            upstream: "endpointslicecache addEndpoints (endpoint.Addresses[0])",
            services: vec![svc(json!({}))],
            slices: v4(json!([{"addresses": ["10.0.1.1", "10.0.1.9"], "conditions": {"ready": true}}])),
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> 10.0.1.1:80 1"],
            differs: None,
        },
        Case {
            name: "several slices, an endpoint duplicated across two of them counts once",
            upstream: "endpointslicecache TestEndpointInfoByServicePort (overlapping slices)",
            services: vec![svc(json!({}))],
            slices: vec![
                eps("svc1-1", "IPv4", p80(), json!([ep("10.0.1.1", "rs", "node-b", &[]), ep("10.0.1.2", "rs", "node-b", &[])])),
                eps("svc1-2", "IPv4", p80(), json!([ep("10.0.1.2", "rs", "node-b", &[]), ep("10.0.1.3", "rs", "node-c", &[])])),
            ],
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> 10.0.1.1:80 1, 10.0.1.2:80 1, 10.0.1.3:80 1"],
            differs: None,
        },
        Case {
            name: "no conditions at all: ready and serving (the API's defaults)",
            upstream: "endpointslicecache newEndpointSliceInfo (nil conditions)",
            services: vec![svc(json!({}))],
            slices: v4(json!([{"addresses": ["10.0.1.1"]}, {"addresses": ["10.0.1.2"], "conditions": {"ready": false, "terminating": true}}])),
            node: plain(),
            expected: &["TCP 172.16.55.4:80 rr -> 10.0.1.1:80 1, 10.0.1.2:80 0"],
            differs: Some("10.0.1.2 (serving by default, terminating) is kept at weight 0 for its established connections"),
        },
        Case {
            name: "headless and ExternalName services are not programmed",
            upstream: "servicechangetracker TestServiceToServiceMap (headless, external name)",
            services: vec![
                svc(json!({"clusterIP": "None", "clusterIPs": ["None"]})),
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "alias", "namespace": "ns1"},
                    "spec": {"type": "ExternalName", "externalName": "foo2.bar.com", "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}}),
            ],
            slices: v4(json!([ep("10.0.1.1", "rs", "node-b", &[])])),
            node: plain(),
            expected: &[],
            differs: None,
        },
        Case {
            name: "UDP port",
            upstream: "ipvs TestNodePortIPv4 (UDP)",
            services: vec![svc(json!({"ports": [{"name": "p80", "port": 80, "protocol": "UDP"}]}))],
            slices: vec![eps("svc1-1", "IPv4", json!([{"name": "p80", "port": 80, "protocol": "UDP"}]), json!([ep("10.180.0.1", "rs", "node-b", &[])]))],
            node: plain(),
            expected: &["UDP 172.16.55.4:80 rr -> 10.180.0.1:80 1"],
            differs: None,
        },
        Case {
            name: "SCTP NodePort, two endpoints",
            upstream: "ipvs TestNodePortIPv4 (1 SCTP service with node port, has 2 endpoints)",
            services: vec![svc(json!({"type": "NodePort", "ports": [{"name": "p80", "port": 80, "protocol": "SCTP", "nodePort": 3001}]}))],
            slices: vec![eps(
                "svc1-1",
                "IPv4",
                json!([{"name": "p80", "port": 80, "protocol": "SCTP"}]),
                json!([ep("10.180.0.1", "rs", "node-b", &[]), ep("10.180.1.1", "rs", "node-b", &[])]),
            )],
            node: plain(),
            expected: &["SCTP 172.16.55.4:80 rr -> 10.180.0.1:80 1, 10.180.1.1:80 1", "SCTP 10.20.30.41:3001 rr -> 10.180.0.1:80 1, 10.180.1.1:80 1"],
            // The IPVS mirror programs these as kube-proxy does; the eBPF datapath leaves SCTP
            // to the kernel (Protocol::in_ebpf), which the reconciler's tests check.
            differs: None,
        },
        // pkg/proxy/topology_test.go, TestCategorizeEndpoints (hints are honoured whenever every
        // ready endpoint has one, as kube-proxy does since the annotation check was dropped).
        Case {
            name: "zone hints: the node's zone",
            upstream: "topology normal endpoint filtering",
            services: vec![svc(json!({}))],
            slices: vec![eps("svc1-1", "IPv4", p80(), zoned_four())],
            node: node(Some("zone-a"), &[]),
            expected: &["TCP 172.16.55.4:80 rr -> 10.1.2.3:80 1, 10.1.2.6:80 1"],
            differs: None,
        },
        Case {
            name: "zone hints: no zone label, no filtering",
            upstream: "topology empty node labels",
            services: vec![svc(json!({}))],
            slices: vec![eps("svc1-1", "IPv4", p80(), zoned_four())],
            node: node(None, &[]),
            expected: &["TCP 172.16.55.4:80 rr -> 10.1.2.3:80 1, 10.1.2.4:80 1, 10.1.2.5:80 1, 10.1.2.6:80 1"],
            differs: None,
        },
        Case {
            name: "zone hints: node in a zone no endpoint is hinted for, no filtering",
            upstream: "topology node in different zone, no endpoint filtering",
            services: vec![svc(json!({}))],
            slices: v4(json!([ep("10.1.2.3", "rs", "node-b", &["zone-a"])])),
            node: node(Some("zone-b"), &[]),
            expected: &["TCP 172.16.55.4:80 rr -> 10.1.2.3:80 1"],
            differs: None,
        },
        Case {
            name: "zone hints: an unready endpoint in the zone is not used",
            upstream: "topology unready endpoint",
            services: vec![svc(json!({}))],
            slices: v4(json!([ep("10.1.2.3", "rs", "node-b", &["zone-a"]), ep("10.1.2.4", "rs", "node-b", &["zone-b"]), ep("10.1.2.5", "rs", "node-c", &["zone-c"]), ep("10.1.2.6", "", "node-c", &["zone-a"])])),
            node: node(Some("zone-a"), &[]),
            expected: &["TCP 172.16.55.4:80 rr -> 10.1.2.3:80 1"],
            differs: None,
        },
        Case {
            name: "zone hints: only unready endpoints in the zone, no filtering",
            upstream: "topology only unready endpoints in same zone (should not filter)",
            services: vec![svc(json!({}))],
            slices: v4(json!([ep("10.1.2.3", "", "node-b", &["zone-a"]), ep("10.1.2.4", "rs", "node-b", &["zone-b"]), ep("10.1.2.5", "rs", "node-c", &["zone-c"]), ep("10.1.2.6", "", "node-c", &["zone-a"])])),
            node: node(Some("zone-a"), &[]),
            expected: &["TCP 172.16.55.4:80 rr -> 10.1.2.4:80 1, 10.1.2.5:80 1"],
            differs: None,
        },
        Case {
            name: "zone hints: one endpoint without a hint, no filtering",
            upstream: "topology missing hints, no filtering applied",
            services: vec![svc(json!({}))],
            slices: v4(json!([ep("10.1.2.3", "rs", "node-b", &["zone-a"]), ep("10.1.2.4", "rs", "node-b", &["zone-b"]), ep("10.1.2.5", "rs", "node-c", &[]), ep("10.1.2.6", "rs", "node-c", &["zone-a"])])),
            node: node(Some("zone-a"), &[]),
            expected: &["TCP 172.16.55.4:80 rr -> 10.1.2.3:80 1, 10.1.2.4:80 1, 10.1.2.5:80 1, 10.1.2.6:80 1"],
            differs: None,
        },
        Case {
            name: "zone hints: several hints per endpoint",
            upstream: "topology multiple hints per endpoint, filtering includes any endpoint with zone included",
            services: vec![svc(json!({}))],
            slices: v4(json!([
                    ep("10.1.2.3", "rs", "node-b", &["zone-a", "zone-b", "zone-c"]),
                    ep("10.1.2.4", "rs", "node-b", &["zone-b", "zone-c"]),
                    ep("10.1.2.5", "rs", "node-c", &["zone-b", "zone-d"]),
                    ep("10.1.2.6", "rs", "node-c", &["zone-c"])
                ])),
            node: node(Some("zone-c"), &[]),
            expected: &["TCP 172.16.55.4:80 rr -> 10.1.2.3:80 1, 10.1.2.4:80 1, 10.1.2.6:80 1"],
            differs: None,
        },
        Case {
            name: "zone hints with externalTrafficPolicy Local: topology for cluster addresses, locality for external ones",
            upstream: "topology conflicting topology and localness require merging allEndpoints",
            services: vec![svc(json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}))],
            slices: v4(json!([ep("10.0.0.0", "rs", "node-a", &["zone-a"]), ep("10.0.0.1", "rs", "node-a", &["zone-b"]), ep("10.0.0.2", "rs", "node-b", &["zone-a"]), ep("10.0.0.3", "rs", "node-b", &["zone-b"])])),
            node: node(Some("zone-a"), &["10.20.30.41"]),
            expected: &["TCP 10.20.30.41:3001 rr -> 10.0.0.0:80 1, 10.0.0.1:80 1", "TCP 172.16.55.4:80 rr -> 10.0.0.0:80 1, 10.0.0.2:80 1"],
            differs: None,
        },
        Case {
            name: "node hints (trafficDistribution PreferSameNode): this node's endpoints",
            upstream: "topology PreferSameNode, hints for this node",
            services: vec![svc(json!({"trafficDistribution": "PreferSameNode"}))],
            slices: v4(json!([
                    {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "node-a", "hints": {"forNodes": [{"name": "node-a"}], "forZones": [{"name": "zone-a"}]}},
                    {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "nodeName": "node-b", "hints": {"forNodes": [{"name": "node-b"}], "forZones": [{"name": "zone-a"}]}}
                ])),
            node: node(Some("zone-a"), &[]),
            expected: &["TCP 172.16.55.4:80 rr -> 10.0.0.1:80 1"],
            differs: None,
        },
        Case {
            name: "node hints for other nodes only: zone hints decide",
            upstream: "topology PreferSameNode, no hint for this node, falls back to zone",
            services: vec![svc(json!({"trafficDistribution": "PreferSameNode"}))],
            slices: v4(json!([
                    {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "nodeName": "node-b", "hints": {"forNodes": [{"name": "node-b"}], "forZones": [{"name": "zone-a"}]}},
                    {"addresses": ["10.0.0.3"], "conditions": {"ready": true}, "nodeName": "node-c", "hints": {"forNodes": [{"name": "node-c"}], "forZones": [{"name": "zone-b"}]}}
                ])),
            node: node(Some("zone-a"), &[]),
            expected: &["TCP 172.16.55.4:80 rr -> 10.0.0.2:80 1"],
            differs: None,
        },
    ]
}

#[test]
fn kube_proxy_upstream_cases() {
    let mut failures = Vec::new();
    for case in cases() {
        let got = programmed(&case);
        let mut want: Vec<String> = case.expected.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        if got_sorted != want {
            failures.push(format!(
                "{} ({}){}\n  want {want:#?}\n  got  {got_sorted:#?}",
                case.name,
                case.upstream,
                case.differs.map(|d| format!(" [differs on purpose: {d}]")).unwrap_or_default()
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn case_names_are_distinct() {
    let cases = cases();
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
}
