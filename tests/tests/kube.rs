//! `xvs run --kubeconfig` serving real traffic from Kubernetes objects: the agent in the node
//! namespace follows the test API server (tests/apiserver, bound inside that namespace) and
//! keeps serving through watch disconnects, an API outage and a 410 relist.
use std::{collections::BTreeMap, path::PathBuf, process::Command};

use serde_json::json;
use xvs_integration::{
    agent::{eventually, list, xvs_bin, Agent},
    kube::{api_server_in, daemonset_capabilities, daemonset_container, endpoint, ready, secure_api_server_in},
    topology::{Topology, NODE_IFACE},
};
use xvs_test_apiserver::{fixture, Resource};

fn spread(topo: &Topology, requests: usize) -> BTreeMap<String, usize> {
    spread_at(topo, "http://10.96.0.10/", requests)
}

fn spread_at(topo: &Topology, url: &str, requests: usize) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for n in 0..requests {
        let body = topo.client_get(url).unwrap_or_else(|e| panic!("request {n} to {url} failed: {e}"));
        *served.entry(body).or_insert(0) += 1;
    }
    served
}

/// `curl http://127.0.0.1:<port>/metrics` from the node namespace.
fn metrics(topo: &Topology, port: u16) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.ns("node"), "curl", "-sS", "--max-time", "5", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(-1.0)
}

/// The backends `xvs list` shows taking new flows (weight > 0; removed ones drain at 0).
fn backends_listed(pin: &std::path::Path) -> Vec<String> {
    list(pin, &[])
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.first() == Some(&"->") && w.get(1).is_some_and(|a| a.starts_with("10.")) && w.get(3).is_some_and(|&weight| weight != "0"))
        .map(|w| w[1..3].join(" "))
        .collect()
}

#[test]
fn kubernetes_service_serves_scales_and_survives_disconnects_outage_and_410_without_flush() {
    let mut topo = Topology::create("xvs-kb1", 3);
    topo.start_http_backends();
    let server = api_server_in(&topo.ns("node"));
    for name in ["node-a.json", "node-b.json", "service-nginx.json"] {
        server.apply(fixture(name)).unwrap_or_else(|e| panic!("{e}"));
    }
    server.apply(ready(&[1, 2, 3])).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = std::env::temp_dir().join("xvs-test-kb1.kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    let pin = PathBuf::from("/sys/fs/bpf/xvs-test-kb1");
    let metrics_port = 19470;
    // With only the DaemonSet's capabilities: the manifest's least privilege, tried for real.
    let agent = Agent::start_kube(&topo.ns("node"), &kubeconfig, "node-a", &daemonset_capabilities(), NODE_IFACE, &pin, &["--debounce-ms", "50", "--metrics-addr", &format!("127.0.0.1:{metrics_port}"), "--flow-interval", "1"]);

    // The classic: service-nginx over three pods, round robin.
    let served = spread(&topo, 30);
    assert_eq!(served.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{served:?}");
    let expected = "IP Virtual Server version 1.2.1 (size=262144)\n\
        Prot LocalAddress:Port Scheduler Flags\n  \
        -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
        TCP  10.96.0.10:80 rr\n  \
        -> 10.0.11.2:8080               Masq    1      0          10        \n  \
        -> 10.0.12.2:8080               Masq    1      0          10        \n  \
        -> 10.0.13.2:8080               Masq    1      0          10        \n";
    assert_eq!(list(&pin, &[]), expected);

    // Scale down to two: new requests reach only those.
    server.apply(ready(&[1, 2])).unwrap_or_else(|e| panic!("{e}"));
    eventually(10, "backend 3 leaves (drains at weight 0)", || backends_listed(&pin).len() == 2);
    assert_eq!(spread(&topo, 10).len(), 2);

    // Watches drop (API server restart): they resume; a change made meanwhile arrives.
    server.disconnect_watches();
    server.apply(ready(&[1, 2, 3])).unwrap_or_else(|e| panic!("{e}"));
    eventually(10, "backend 3 is back", || backends_listed(&pin).len() == 3);

    // An outage with compaction behind it: the dataplane keeps serving the last state, then
    // the 410 relist converges on what changed, with no flush on the way.
    let synced_before = agent.log().matches("dataplane synced").count();
    server.set_available(false);
    server.apply(ready(&[1, 3])).unwrap_or_else(|e| panic!("{e}"));
    server.compact();
    agent.wait_log("the dataplane keeps its state, retrying", 30);
    let during = spread(&topo, 9);
    assert_eq!(during.len(), 3, "the outage changes nothing: {during:?}");
    server.set_available(true);
    eventually(30, "the relist converges", || backends_listed(&pin).len() == 2);
    assert_eq!(backends_listed(&pin), ["10.0.11.2:8080 Masq", "10.0.13.2:8080 Masq"]);
    let log = agent.log();
    assert!(log.contains("resourceVersion expired (410 Gone): relisting"), "{log}");
    let syncs: Vec<&str> = log.lines().filter(|l| l.contains("dataplane synced")).skip(synced_before).collect();
    assert!(!syncs.is_empty());
    for line in &syncs {
        assert!(line.contains("created=0") && line.contains("removed=0"), "a sync during the relist rebuilt services: {line}\n{log}");
    }

    // Sync latency and watch health are exported.
    let text = metrics(&topo, metrics_port);
    assert!(metric(&text, "xvs_kube_sync_latency_seconds_count") >= 3.0, "{text}");
    assert!(metric(&text, "xvs_kube_watch_errors_total{resource=\"services\"}") >= 1.0, "{text}");
    assert!(metric(&text, "xvs_kube_lists_total{resource=\"endpointslices\"}") >= 2.0, "{text}");
    assert_eq!(metric(&text, "xvs_services"), 1.0, "{text}");
    assert_eq!(metric(&text, "xvs_backends"), 2.0, "{text}");

    // `xvs verify` against what Kubernetes says now (run in the node namespace, where the API
    // server listens).
    let verify = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", topo.ns("node")))
        .arg(xvs_bin())
        .args(["verify", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--node-name", "node-a", "--pin-dir"])
        .arg(&pin)
        .output()
        .unwrap_or_else(|e| panic!("xvs verify: {e}"));
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{said}{}", String::from_utf8_lossy(&verify.stderr));
    assert_eq!(said.trim(), "ok: ebpf (checked) match Kubernetes (node node-a) (1 services)");

    // A malformed Service beside it is skipped, named, and reported as an Event on it.
    let mut broken = fixture("service-nginx.json");
    broken["metadata"]["name"] = json!("broken");
    broken["spec"]["clusterIP"] = json!("10.96.0.300");
    broken["spec"]["clusterIPs"] = json!(["10.96.0.300"]);
    server.apply(broken).unwrap_or_else(|e| panic!("{e}"));
    agent.wait_log("Service default/broken", 10);
    eventually(10, "the Event is created", || server.objects(Resource::Events).iter().any(|e| e["regarding"]["name"] == "broken"));
    assert_eq!(spread(&topo, 4).len(), 2, "service-nginx still serves");
}

/// externalTrafficPolicy Local with a NodePort: the node serves its own endpoints only, on its
/// interface addresses (kube-proxy's IPVS default), not on the Node object's address.
#[test]
fn node_port_with_local_traffic_policy_serves_this_node_s_endpoints() {
    let mut topo = Topology::create("xvs-kb2", 3);
    topo.start_http_backends();
    let server = api_server_in(&topo.ns("node"));
    let mut node = fixture("node-a.json");
    node["status"]["addresses"][0]["address"] = json!("10.96.1.1");
    server.apply(node).unwrap_or_else(|e| panic!("{e}"));
    let mut svc = fixture("service-nginx.json");
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["spec"]["healthCheckNodePort"] = json!(32000);
    server.apply(svc).unwrap_or_else(|e| panic!("{e}"));
    server.apply(ready(&[1, 2, 3])).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = std::env::temp_dir().join("xvs-test-kb2.kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    let pin = PathBuf::from("/sys/fs/bpf/xvs-test-kb2");
    let _agent = Agent::start_kube(&topo.ns("node"), &kubeconfig, "node-a", &daemonset_capabilities(), NODE_IFACE, &pin, &["--debounce-ms", "50"]);

    // n0's 10.0.1.1 is an interface address of the node; the Node object's 10.96.1.1 is not.
    eventually(10, "the NodePort is programmed", || list(&pin, &[]).contains("TCP  10.0.1.1:30080 rr"));
    assert!(!list(&pin, &[]).contains("10.96.1.1:30080"), "{}", list(&pin, &[]));
    let mut served = BTreeMap::new();
    for _ in 0..10 {
        let body = topo.client_get("http://10.0.1.1:30080/").unwrap_or_else(|e| panic!("{e}"));
        *served.entry(body).or_insert(0) += 1;
    }
    assert_eq!(served.keys().cloned().collect::<Vec<_>>(), ["backend-1", "backend-2"], "only node-a's endpoints");
    // The ClusterIP (internal policy Cluster) still reaches all three.
    assert_eq!(spread(&topo, 9).len(), 3);

    // The most common Service of all: one unnamed port (`kubectl expose --port 80
    // --target-port 8080`), whose slice port the API server names "".
    server.apply(fixture("service-hello.json")).unwrap_or_else(|e| panic!("{e}"));
    let mut hello = fixture("endpointslice-service-hello.json");
    hello["endpoints"] = json!((1..=3).map(|i| endpoint(i, "node-a", true, true, false)).collect::<Vec<_>>());
    server.apply(hello).unwrap_or_else(|e| panic!("{e}"));
    let hello_backends = || {
        let listed = list(&pin, &[]);
        let block = listed.split("TCP  10.96.0.20:80 rr\n").nth(1).unwrap_or("").split("TCP ").next().unwrap_or("").to_owned();
        block.lines().filter(|l| l.trim_start().starts_with("->")).count()
    };
    eventually(10, "the unnamed-port Service has its three backends", || hello_backends() == 3);
    let served = spread_at(&topo, "http://10.96.0.20/", 30);
    assert_eq!(served.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{served:?}");

    // The load balancer's health check node port (on the node's own address): 200 with the
    // number of node-a's ready endpoints, 503 once it has none (kube-proxy's answer).
    let probe = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &topo.ns("client"), "curl", "-sS", "-i", "--max-time", "5", "http://10.0.1.1:32000/healthz"])
            .output()
            .unwrap_or_else(|e| panic!("curl: {e}"));
        String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
    };
    let answer = probe();
    assert!(answer.starts_with("HTTP/1.1 200 OK\n") && answer.contains("\t\"localEndpoints\": 2,") && answer.contains("\"name\": \"service-nginx\""), "{answer}");
    server.apply(ready(&[3])).unwrap_or_else(|e| panic!("{e}"));
    eventually(10, "the health check reports no local endpoint", || probe().starts_with("HTTP/1.1 503 Service Unavailable\n"));
    assert!(probe().contains("\"localEndpoints\": 0,"));
}

/// The DaemonSet's own container as its pod runs it: its args (the interface and pin
/// directory swapped for the test's), NODE_NAME from the downward API, its capabilities, and
/// the in-cluster service account (token and CA as the kubelet mounts them, the API server's
/// address from KUBERNETES_SERVICE_HOST/PORT) against an HTTPS API server that requires the
/// token: no --kubeconfig, and a stray $KUBECONFIG in the environment ignored.
#[test]
fn the_daemonset_s_container_follows_the_api_over_https_with_its_service_account() {
    let mut topo = Topology::create("xvs-kb3", 3);
    topo.start_http_backends();
    let server = secure_api_server_in(&topo.ns("node"));
    for object in [fixture("node-a.json"), fixture("service-nginx.json"), ready(&[1, 2, 3])] {
        server.apply(object).unwrap_or_else(|e| panic!("{e}"));
    }
    let sa = std::env::temp_dir().join("xvs-test-kb3-serviceaccount");
    server.write_service_account(&sa, "kube-system").unwrap_or_else(|e| panic!("{e}"));
    let pin = PathBuf::from("/sys/fs/bpf/xvs-test-kb3");

    let container = daemonset_container();
    let mut args: Vec<String> = container.args.unwrap_or_default();
    assert!(args.iter().any(|a| a == "--kubernetes") && !args.iter().any(|a| a.starts_with("--kubeconfig")), "in-cluster config: {args:?}");
    let iface = args.iter().position(|a| a == "--iface").unwrap_or_else(|| panic!("no --iface in {args:?}"));
    args[iface + 1] = NODE_IFACE.to_owned();
    args.extend(["--pin-dir".to_owned(), pin.to_string_lossy().into_owned(), "--debounce-ms".to_owned(), "50".to_owned()]);
    let node_name = container.env.unwrap_or_default().into_iter().find(|v| v.name == "NODE_NAME").unwrap_or_else(|| panic!("the container has no NODE_NAME"));
    let from = node_name.value_from.and_then(|v| v.field_ref).map(|f| f.field_path);
    assert_eq!(from.as_deref(), Some("spec.nodeName"), "NODE_NAME comes from the downward API");
    let mut env: Vec<(&str, String)> = vec![
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT", server.addr().port().to_string()),
        ("NODE_NAME", "node-a".to_owned()),
    ];
    // A kubeconfig the environment happens to carry (root's on a node, one baked into an
    // image) must not win over the pod's service account: this one leads nowhere.
    let stray = std::env::temp_dir().join("xvs-test-kb3.kubeconfig");
    let nowhere = "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: x\n    user: x\ncurrent-context: x\nusers:\n- name: x\n  user: {}\n";
    std::fs::write(&stray, nowhere).unwrap_or_else(|e| panic!("{e}"));
    env.push(("KUBECONFIG", stray.to_string_lossy().into_owned()));

    let agent = Agent::start_pod(&topo.ns("node"), &args, &env, &daemonset_capabilities(), &sa, &pin);
    eventually(10, "service-nginx with three backends", || backends_listed(&pin).len() == 3);
    assert_eq!(spread(&topo, 9).len(), 3, "served by all three backends");
    // The watches run over HTTPS with the token too: a scale-down arrives.
    server.apply(ready(&[1])).unwrap_or_else(|e| panic!("{e}"));
    eventually(10, "scaled to one backend", || backends_listed(&pin).len() == 1);
    assert_eq!(spread(&topo, 3).keys().cloned().collect::<Vec<_>>(), ["backend-1"]);
    assert!(server.requests().iter().any(|r| r.contains("watch=true")), "watched");
    assert!(!agent.log().contains("Unauthorized"), "the token was accepted: {}", agent.log());
}

/// Watch events become patches; one the maps cannot hold is refused whole (the last good state
/// stays, as a whole model over capacity is), and once the cluster fits again the event-driven
/// sync goes on from the full translation the refusal asked for.
#[test]
fn a_change_the_maps_cannot_hold_is_refused_and_the_sync_goes_on_once_it_fits() {
    use xvs_integration::kube::{cluster_ip_service, ready_slice};
    let topo = Topology::create("xvs-kb4", 0);
    let server = api_server_in(&topo.ns("node"));
    let ips = |ips: &[&str]| ips.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    server.apply(cluster_ip_service("first", "10.96.0.21")).unwrap_or_else(|e| panic!("{e}"));
    server.apply(ready_slice("first", &ips(&["10.0.21.1", "10.0.21.2"]))).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = std::env::temp_dir().join("xvs-test-kb4.kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    let pin = PathBuf::from("/sys/fs/bpf/xvs-test-kb4");
    let agent = Agent::start_kube(&topo.ns("node"), &kubeconfig, "node-a", &[], NODE_IFACE, &pin, &["--debounce-ms", "0", "--max-services", "2", "--max-backends", "4"]);
    let services = || list(&pin, &[]).lines().filter(|l| l.starts_with("TCP")).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned()).collect::<Vec<_>>();
    assert_eq!(services(), ["10.96.0.21:80"]);

    // A second Service fits (2 services, 3 backends): applied as a patch.
    server.apply(cluster_ip_service("second", "10.96.0.22")).unwrap_or_else(|e| panic!("{e}"));
    server.apply(ready_slice("second", &ips(&["10.0.22.1"]))).unwrap_or_else(|e| panic!("{e}"));
    eventually(10, "the second Service is programmed", || services() == ["10.96.0.21:80", "10.96.0.22:80"]);

    // A third does not: refused, named, and the two stay.
    server.apply(cluster_ip_service("third", "10.96.0.23")).unwrap_or_else(|e| panic!("{e}"));
    agent.wait_log("the desired state needs 3 services, the eBPF maps hold 2: raise --max-services", 10);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(services(), ["10.96.0.21:80", "10.96.0.22:80"], "the last good state stays");

    // It goes; an endpoint change that fits is applied again.
    assert!(server.delete(Resource::Services, "default", "third"));
    server.apply(ready_slice("first", &ips(&["10.0.21.1", "10.0.21.3"]))).unwrap_or_else(|e| panic!("{e}"));
    eventually(10, "first's new endpoint is programmed", || backends_listed(&pin).contains(&"10.0.21.3:8080 Masq".to_owned()));
    assert!(!backends_listed(&pin).iter().any(|b| b.starts_with("10.0.21.2:")), "{:?}", backends_listed(&pin));
    assert!(agent.log().contains("Kubernetes changes applied"), "{}", agent.log());
}
