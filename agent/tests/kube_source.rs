//! The Kubernetes source against an API server that speaks the real list/watch protocol
//! (tests/apiserver): the reflectors list, watch, resume, relist on 410 Gone and ride out
//! outages, and every state they hand over is translated by kube-proxy's rules.
//!
//! Each test follows the source as the daemon does (changed -> snapshot: a whole model, or a
//! patch of what the watch events changed, applied to the last one) and keeps every model it
//! produced, so "never flushed" is checked on the whole history, not on the last state.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};
use xvs::{
    model::{BackendState, Model},
    source::kube::{client, events::EventPublisher, Desired, KubeSource, NodePortAddresses, Snapshot},
};
use xvs_test_apiserver::{fixture, ApiServer, Resource};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Each service as `TCP 10.96.0.10:80 rr [10.244.1.2:8080 1 a, ...]` (weight, a/t: active/terminating).
fn shown(model: &Model) -> Vec<String> {
    model
        .services()
        .map(|s| {
            let b: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{} {} {}", b.endpoint(), b.weight, if b.state == BackendState::Active { "a" } else { "t" }))
                .collect();
            let aff = s.affinity_timeout.map(|t| format!(" persistent {t}")).unwrap_or_default();
            format!("{} {}{aff} [{}]", s.id, s.scheduler.ipvs_name(), b.join(", "))
        })
        .collect()
}

/// What the daemon holds after `snapshot`: its model, replaced by a full one or patched.
fn follow(model: &mut Model, snapshot: Snapshot) -> Vec<String> {
    match snapshot.desired {
        Desired::Full(full) => *model = full,
        Desired::Patch(patch) => {
            if let Err(e) = model.apply(patch) {
                panic!("the source patched in what the model refuses: {e:?}");
            }
        }
    }
    shown(model)
}

/// Everything the stores hold, translated.
fn everything(source: &KubeSource) -> Vec<String> {
    follow(&mut Model::default(), source.snapshot_everything())
}

/// The source, followed like the daemon follows it; every model it produced is kept.
struct Followed {
    source: Arc<KubeSource>,
    history: Arc<Mutex<Vec<Vec<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Followed {
    async fn start(server: &ApiServer, node: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("xvs-kube-test-{}-{node}-{}", std::process::id(), server.url().replace([':', '/', '.'], "")));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        let source = Arc::new(KubeSource::start(client(Some(&kubeconfig)).await?, node.to_owned(), NodePortAddresses::Primary, Arc::new(Vec::new)));
        tokio::time::timeout(Duration::from_secs(10), source.ready()).await??;
        let mut followed = Model::default();
        let history = Arc::new(Mutex::new(vec![follow(&mut followed, source.snapshot())]));
        let (s, h) = (source.clone(), history.clone());
        let task = tokio::spawn(async move {
            loop {
                s.changed().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let model = follow(&mut followed, s.snapshot());
                if let Ok(mut h) = h.lock() {
                    h.push(model);
                }
            }
        });
        Ok(Self { source, history, task })
    }

    fn last(&self) -> Vec<String> {
        self.history.lock().ok().and_then(|h| h.last().cloned()).unwrap_or_default()
    }

    /// Waits until the latest model equals `want`.
    async fn until(&self, want: &[&str]) -> Result {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.last() != want {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("the model stayed {:#?}, wanted {want:#?}", self.last()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn models(&self) -> Vec<Vec<String>> {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn nginx_endpoint(ip: &str, pod: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "default", "uid": format!("uid-{pod}")}
    })
}

fn slice_with(endpoints: Vec<Value>) -> Value {
    let mut s = fixture("endpointslice-service-nginx.json");
    s["endpoints"] = json!(endpoints);
    s
}

fn ready(n: u8) -> Value {
    nginx_endpoint(&format!("10.244.1.{n}"), &format!("nginx-{n}"), if n.is_multiple_of(2) { "node-b" } else { "node-a" }, true, true, false)
}

fn cluster() -> Result<ApiServer> {
    fill(ApiServer::start()?)
}

fn fill(server: ApiServer) -> Result<ApiServer> {
    for name in ["node-a.json", "node-b.json", "service-nginx.json", "endpointslice-service-nginx.json"] {
        server.apply(fixture(name))?;
    }
    Ok(server)
}

const NGINX3: [&str; 1] = ["TCP 10.96.0.10:80 rr [10.244.1.2:8080 1 a, 10.244.1.4:8080 1 a, 10.244.2.3:8080 1 a]"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_nginx_then_scale_terminate_rename_and_affinity_follow_the_watch() -> Result {
    let server = cluster()?;
    let f = Followed::start(&server, "node-a").await?;
    assert_eq!(f.last(), NGINX3, "service-nginx over a 3-replica Deployment");

    server.apply(slice_with((1..=5).map(ready).collect()))?;
    f.until(&["TCP 10.96.0.10:80 rr [10.244.1.1:8080 1 a, 10.244.1.2:8080 1 a, 10.244.1.3:8080 1 a, 10.244.1.4:8080 1 a, 10.244.1.5:8080 1 a]"]).await?;
    server.apply(slice_with(vec![ready(1), ready(2)]))?;
    f.until(&["TCP 10.96.0.10:80 rr [10.244.1.1:8080 1 a, 10.244.1.2:8080 1 a]"]).await?;

    // A pod being deleted: serving+terminating is kept at weight 0 while another is ready...
    server.apply(slice_with(vec![ready(1), nginx_endpoint("10.244.1.2", "nginx-2", "node-b", false, true, true)]))?;
    f.until(&["TCP 10.96.0.10:80 rr [10.244.1.1:8080 1 a, 10.244.1.2:8080 1 t]"]).await?;
    // ...serves alone when nothing is ready, and goes once it stops serving.
    server.apply(slice_with(vec![nginx_endpoint("10.244.1.2", "nginx-2", "node-b", false, true, true)]))?;
    f.until(&["TCP 10.96.0.10:80 rr [10.244.1.2:8080 1 a]"]).await?;
    server.apply(slice_with(vec![nginx_endpoint("10.244.1.2", "nginx-2", "node-b", false, false, true), ready(3)]))?;
    f.until(&["TCP 10.96.0.10:80 rr [10.244.1.3:8080 1 a]"]).await?;

    // Port rename: the Service's port and the slice's port change names together.
    let mut svc = fixture("service-nginx.json");
    svc["spec"]["ports"][0]["name"] = json!("web");
    server.apply(svc.clone())?;
    f.until(&["TCP 10.96.0.10:80 rr []"]).await?;
    let mut slice = slice_with(vec![ready(3)]);
    slice["ports"][0]["name"] = json!("web");
    server.apply(slice)?;
    f.until(&["TCP 10.96.0.10:80 rr [10.244.1.3:8080 1 a]"]).await?;

    // Affinity on, with a timeout; then off. wrr with weights by pod name.
    svc["spec"]["sessionAffinity"] = json!("ClientIP");
    svc["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 600}});
    server.apply(svc.clone())?;
    f.until(&["TCP 10.96.0.10:80 rr persistent 600 [10.244.1.3:8080 1 a]"]).await?;
    svc["spec"]["sessionAffinity"] = json!("None");
    svc["spec"]["sessionAffinityConfig"] = Value::Null;
    svc["metadata"]["annotations"] = json!({"xvs.io/scheduler": "wrr", "xvs.io/weights": "nginx-3=5"});
    server.apply(svc)?;
    f.until(&["TCP 10.96.0.10:80 wrr [10.244.1.3:8080 5 a]"]).await?;

    server.delete(Resource::Services, "default", "service-nginx");
    f.until(&[]).await?;
    Ok(())
}

/// What a cluster serves: HTTPS from a CA of its own, a bearer token on every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_cluster_ca_and_a_bearer_token_and_nothing_without_them() -> Result {
    let server = fill(ApiServer::start_secure_on(std::net::TcpListener::bind("127.0.0.1:0")?)?)?;
    assert!(server.url().starts_with("https://"));
    let f = Followed::start(&server, "node-a").await?;
    assert_eq!(f.last(), NGINX3, "service-nginx over HTTPS");
    server.apply(slice_with(vec![ready(1)]))?;
    f.until(&["TCP 10.96.0.10:80 rr [10.244.1.1:8080 1 a]"]).await?;
    assert!(server.requests().iter().any(|r| r.contains("watch=true")), "the watches run over HTTPS too");

    // Another cluster's CA and token: the TLS handshake fails, and with the right CA a wrong
    // token is 401; either way the source never completes a list (nothing would be applied).
    let dir = std::env::temp_dir().join(format!("xvs-kube-test-{}-https", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let other = ApiServer::start_secure_on(std::net::TcpListener::bind("127.0.0.1:0")?)?;
    let (Some(ours), Some(theirs)) = (server.credentials(), other.credentials()) else { return Err("HTTPS servers have credentials".into()) };
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let text = std::fs::read_to_string(&kubeconfig)?;
    let cases = [
        ("a foreign CA", text.replace(&b64(&ours.ca_pem), &b64(&theirs.ca_pem)), false),
        ("a wrong token", text.replace(&ours.token, &theirs.token), true),
    ];
    for (what, swapped, reaches_http) in cases {
        assert_ne!(swapped, text, "{what}: the kubeconfig was changed");
        std::fs::write(&kubeconfig, swapped)?;
        let before = server.requests().len();
        let source = KubeSource::start(client(Some(&kubeconfig)).await?, "node-a".into(), NodePortAddresses::Primary, Arc::new(Vec::new));
        let listed = tokio::time::timeout(Duration::from_secs(2), source.ready()).await;
        assert!(listed.is_err(), "{what}: the source listed anyway");
        // A foreign CA fails the handshake before any request; a wrong token is refused (401).
        assert_eq!(server.requests().len() > before, reaches_http, "{what}: requests {:?}", &server.requests()[before..]);
    }
    Ok(())
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_policy_local_on_two_nodes_node_port_external_ips_and_load_balancer() -> Result {
    let server = cluster()?;
    let mut svc = fixture("service-nginx.json");
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    svc["spec"]["externalIPs"] = json!(["203.0.113.7"]);
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9", "ipMode": "VIP"}]}});
    server.apply(svc)?;
    let a = Followed::start(&server, "node-a").await?;
    let b = Followed::start(&server, "node-b").await?;
    let all = "[10.244.1.2:8080 1 a, 10.244.1.4:8080 1 a, 10.244.2.3:8080 1 a]";
    a.until(&[
        &format!("TCP 10.96.0.10:80 rr {all}"),
        "TCP 192.168.0.11:30080 rr [10.244.1.2:8080 1 a, 10.244.1.4:8080 1 a]",
        "TCP 198.51.100.9:80 rr [10.244.1.2:8080 1 a, 10.244.1.4:8080 1 a]",
        "TCP 203.0.113.7:80 rr [10.244.1.2:8080 1 a, 10.244.1.4:8080 1 a]",
    ])
    .await?;
    b.until(&[
        &format!("TCP 10.96.0.10:80 rr {all}"),
        "TCP 192.168.0.12:30080 rr [10.244.2.3:8080 1 a]",
        "TCP 198.51.100.9:80 rr [10.244.2.3:8080 1 a]",
        "TCP 203.0.113.7:80 rr [10.244.2.3:8080 1 a]",
    ])
    .await?;
    // A node's address change moves its NodePort.
    let mut node = fixture("node-b.json");
    node["status"]["addresses"][0]["address"] = json!("192.168.0.22");
    server.apply(node)?;
    b.until(&[
        &format!("TCP 10.96.0.10:80 rr {all}"),
        "TCP 192.168.0.22:30080 rr [10.244.2.3:8080 1 a]",
        "TCP 198.51.100.9:80 rr [10.244.2.3:8080 1 a]",
        "TCP 203.0.113.7:80 rr [10.244.2.3:8080 1 a]",
    ])
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_service_takes_each_family_from_its_own_slice() -> Result {
    let server = cluster()?;
    let mut svc = fixture("service-nginx.json");
    svc["spec"]["clusterIPs"] = json!(["10.96.0.10", "fd00:10:96::a"]);
    svc["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    svc["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    server.apply(svc)?;
    let mut v6 = fixture("endpointslice-service-nginx.json");
    v6["metadata"]["name"] = json!("service-nginx-v6q8r");
    v6["addressType"] = json!("IPv6");
    v6["endpoints"] = json!([nginx_endpoint("fd00:10:244:1::2", "nginx-deployment-7c79c4bf97-8xq2v", "node-a", true, true, false)]);
    server.apply(v6)?;
    let f = Followed::start(&server, "node-a").await?;
    f.until(&[NGINX3[0], "TCP [fd00:10:96::a]:80 rr [[fd00:10:244:1::2]:8080 1 a]"]).await?;
    Ok(())
}

/// A watch that ends (server restart, load balancer idle timeout) resumes from its
/// resourceVersion without a relist, and what changed meanwhile arrives as events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_watch_resumes_from_its_resource_version_without_relisting() -> Result {
    let server = cluster()?;
    let f = Followed::start(&server, "node-a").await?;
    let lists = || server.requests().iter().filter(|r| r.starts_with("GET") && !r.contains("watch=")).count();
    let lists_before = lists();
    server.disconnect_watches();
    server.apply(slice_with(vec![ready(1), ready(3)]))?;
    f.until(&["TCP 10.96.0.10:80 rr [10.244.1.1:8080 1 a, 10.244.1.3:8080 1 a]"]).await?;
    assert_eq!(lists(), lists_before, "a resumed watch needs no list: {:#?}", server.requests());
    assert!(f.models().iter().all(|m| m.len() == 1 && !m[0].ends_with("[]")), "never flushed: {:#?}", f.models());
    Ok(())
}

/// 410 Gone (history compacted while the watch was down): the reflector relists, and the
/// store keeps the old state until the new list is complete; a bookmark avoids the relist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_converges_without_a_flush_and_bookmarks_avoid_it() -> Result {
    let server = cluster()?;
    // Enough Services to take several pages (the watcher lists 500 at a time).
    for i in 0..1100u32 {
        let mut svc = fixture("service-nginx.json");
        svc["metadata"]["name"] = json!(format!("svc-{i:04}"));
        svc["spec"]["clusterIP"] = json!(format!("10.97.{}.{}", i / 250, i % 250 + 1));
        svc["spec"]["clusterIPs"] = json!([svc["spec"]["clusterIP"].clone()]);
        server.apply(svc)?;
    }
    let f = Followed::start(&server, "node-a").await?;
    assert_eq!(f.last().len(), 1101);
    assert!(server.requests().iter().any(|r| r.contains("/api/v1/services?") && r.contains("continue=")), "paged list: {:#?}", server.requests());
    let lists = || server.requests().iter().filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=")).count();

    // A bookmark moves the watch's resourceVersion past the compaction: no 410, no relist.
    server.apply(fixture("node-b.json"))?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.bookmark();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lists_before = lists();
    server.compact();
    let watches = || server.requests().iter().filter(|r| r.starts_with("GET /api/v1/services?") && r.contains("watch=")).count();
    let watches_before = watches();
    server.disconnect_watches();
    server.apply(slice_with(vec![ready(1)]))?;
    f.until_len_and_contains(1101, "TCP 10.96.0.10:80 rr [10.244.1.1:8080 1 a]").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while watches() == watches_before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a 410 (if there were one) time to show as a list.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let services_requests = || server.requests().into_iter().filter(|r| r.contains("/services?")).collect::<Vec<_>>();
    assert_eq!(lists(), lists_before, "bookmarked: resumed without a relist {:#?}", services_requests());

    // Without a bookmark: changes, then compaction, while the watch is down -> 410 -> relist.
    server.disconnect_watches();
    server.set_available(false);
    server.apply(slice_with(vec![ready(1), ready(3)]))?;
    server.delete(Resource::Services, "default", "svc-0000");
    server.compact();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.last().len(), 1101, "an outage changes nothing");
    server.set_available(true);
    f.until_len_and_contains(1100, "TCP 10.96.0.10:80 rr [10.244.1.1:8080 1 a, 10.244.1.3:8080 1 a]").await?;
    assert!(lists() > lists_before, "410 Gone made the services watcher relist: {:#?}", server.requests());
    for model in f.models() {
        assert!(model.len() >= 1100, "a model with {} services: the relist flushed", model.len());
        let nginx = model.iter().find(|s| s.starts_with("TCP 10.96.0.10:80")).cloned().unwrap_or_default();
        assert!(!nginx.ends_with("[]"), "service-nginx lost its backends: {nginx}");
    }
    Ok(())
}

impl Followed {
    async fn until_len_and_contains(&self, len: usize, service: &str) -> Result {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let last = self.last();
            if last.len() == len && last.iter().any(|s| s == service) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let nginx: Vec<&String> = last.iter().filter(|s| s.contains("10.96.0.10")).collect();
                return Err(format!("{} services, service-nginx {nginx:?}; wanted {len} and {service}", last.len()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Odd objects are named and skipped, the rest applies, and each problem becomes one Event on
/// the object it is about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_are_named_skipped_and_reported_as_events() -> Result {
    let server = cluster()?;
    let mut bad_ip = fixture("service-nginx.json");
    bad_ip["metadata"]["name"] = json!("broken");
    bad_ip["spec"]["clusterIP"] = json!("10.96.0.300");
    bad_ip["spec"]["clusterIPs"] = json!(["10.96.0.300"]);
    server.apply(bad_ip)?;
    let mut no_spec = fixture("service-nginx.json");
    no_spec["metadata"]["name"] = json!("no-spec");
    no_spec.as_object_mut().map(|o| o.remove("spec"));
    server.apply(no_spec)?;
    let mut bad_annotation = fixture("service-nginx.json");
    bad_annotation["metadata"]["name"] = json!("sticky");
    bad_annotation["metadata"]["annotations"] = json!({"xvs.io/scheduler": "lc"});
    bad_annotation["spec"]["clusterIP"] = json!("10.96.0.11");
    bad_annotation["spec"]["clusterIPs"] = json!(["10.96.0.11"]);
    server.apply(bad_annotation)?;
    let mut bad_slice = slice_with(vec![ready(1), nginx_endpoint("10.244.1.999", "nginx-x", "node-a", true, true, false)]);
    bad_slice["metadata"]["name"] = json!("service-nginx-bad01");
    server.apply(bad_slice)?;
    let mut no_ports = fixture("endpointslice-service-nginx.json");
    no_ports["metadata"]["name"] = json!("service-nginx-noports");
    no_ports.as_object_mut().map(|o| o.remove("ports"));
    server.apply(no_ports)?;

    let f = Followed::start(&server, "node-a").await?;
    assert_eq!(f.last(), ["TCP 10.96.0.10:80 rr [10.244.1.1:8080 1 a, 10.244.1.2:8080 1 a, 10.244.1.4:8080 1 a, 10.244.2.3:8080 1 a]", "TCP 10.96.0.11:80 rr []"]);
    let snapshot = f.source.snapshot_everything();
    let all = snapshot.warnings.unwrap_or_default();
    let warnings: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "EndpointSlice default/service-nginx-bad01: endpoint address \"10.244.1.999\" is not an IP address; skipped",
            "Service default/broken: clusterIP \"10.96.0.300\" is not an IP address; skipped",
            "Service default/no-spec: no spec",
            "Service default/sticky: annotation xvs.io/scheduler=\"lc\" is not rr, wrr, sh or mh; using rr",
        ]
    );

    let dir = std::env::temp_dir().join(format!("xvs-kube-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    server.write_kubeconfig(&dir.join("kubeconfig"))?;
    let mut events = EventPublisher::new(client(Some(&dir.join("kubeconfig"))).await?, "node-a");
    let fresh = events.fresh(&all);
    assert_eq!(fresh.len(), 4);
    events.publish(fresh);
    assert!(events.fresh(&all).is_empty(), "published once");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.objects(Resource::Events).len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got: Vec<String> = server
        .objects(Resource::Events)
        .iter()
        .map(|e| format!("{} {} {}/{} {}: {}", e["type"].as_str().unwrap_or(""), e["reason"].as_str().unwrap_or(""), e["regarding"]["kind"].as_str().unwrap_or(""), e["regarding"]["name"].as_str().unwrap_or(""), e["reportingController"].as_str().unwrap_or(""), e["note"].as_str().unwrap_or("")))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "Warning SkippedByXvs EndpointSlice/service-nginx-bad01 xvs: endpoint address \"10.244.1.999\" is not an IP address; skipped",
            "Warning SkippedByXvs Service/broken xvs: clusterIP \"10.96.0.300\" is not an IP address; skipped",
            "Warning SkippedByXvs Service/no-spec xvs: no spec",
            "Warning SkippedByXvs Service/sticky xvs: annotation xvs.io/scheduler=\"lc\" is not rr, wrr, sh or mh; using rr",
        ]
    );
    Ok(())
}

/// The daemon waits for changes inside `select!`, which drops the wait when another branch
/// fires: a change must stay pending until a snapshot takes it, however often the wait is
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stays_pending_until_a_snapshot_takes_it() -> Result {
    let server = cluster()?;
    let dir = std::env::temp_dir().join(format!("xvs-kube-pending-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    server.write_kubeconfig(&dir.join("kubeconfig"))?;
    let source = KubeSource::start(client(Some(&dir.join("kubeconfig"))).await?, "node-a".into(), NodePortAddresses::Primary, Arc::new(Vec::new));
    tokio::time::timeout(Duration::from_secs(10), source.ready()).await??;
    // The first lists mark "changed" as their watchers report them, which may be just after
    // ready(): take those first.
    while tokio::time::timeout(Duration::from_millis(300), source.changed()).await.is_ok() {
        let _ = source.snapshot();
    }
    server.apply(slice_with(vec![ready(1)]))?;
    let first = tokio::time::timeout(Duration::from_secs(5), source.changed()).await?;
    let again = tokio::time::timeout(Duration::from_millis(200), source.changed()).await.map_err(|_| "a dropped wait lost the change")?;
    assert_eq!(first, again, "the oldest pending change is reported");
    assert_eq!(everything(&source), ["TCP 10.96.0.10:80 rr [10.244.1.1:8080 1 a]"]);
    assert!(tokio::time::timeout(Duration::from_millis(200), source.changed()).await.is_err(), "taken by the snapshot");
    Ok(())
}

/// kube-proxy's IPVS default: NodePorts on every interface address of the node (not the Node
/// object's), following them when they change; CIDRs narrow them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_follow_the_node_s_interface_addresses() -> Result {
    let server = cluster()?;
    let mut svc = fixture("service-nginx.json");
    svc["spec"]["type"] = json!("NodePort");
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    server.apply(svc)?;
    let dir = std::env::temp_dir().join(format!("xvs-kube-nodeports-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    server.write_kubeconfig(&dir.join("kubeconfig"))?;
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let interfaces = Arc::new(Mutex::new(vec![ip("127.0.0.1"), ip("10.0.1.1"), ip("fe80::1"), ip("172.18.0.5")]));
    let read = interfaces.clone();
    let local = Arc::new(move || read.lock().map(|l| l.clone()).unwrap_or_default());
    let node_ports = |source: &KubeSource| -> Vec<String> { everything(source).into_iter().filter(|s| s.contains(":30080 ")).map(|s| s[..s.find(" rr").unwrap_or(0)].to_owned()).collect() };

    let source = KubeSource::start(client(Some(&dir.join("kubeconfig"))).await?, "node-a".into(), NodePortAddresses::All, local.clone());
    tokio::time::timeout(Duration::from_secs(10), source.ready()).await??;
    // Not the Node object's 192.168.0.11; no loopback, no link-local.
    assert_eq!(node_ports(&source), ["TCP 10.0.1.1:30080", "TCP 172.18.0.5:30080"]);
    assert!(!source.local_addresses_changed());
    interfaces.lock().map_err(|_| "poisoned")?.push(ip("192.168.7.7"));
    assert!(source.local_addresses_changed());
    assert_eq!(node_ports(&source), ["TCP 10.0.1.1:30080", "TCP 172.18.0.5:30080", "TCP 192.168.7.7:30080"]);

    let cidrs = NodePortAddresses::parse(&["172.16.0.0/12".into()])?;
    let narrowed = KubeSource::start(client(Some(&dir.join("kubeconfig"))).await?, "node-a".into(), cidrs, local);
    tokio::time::timeout(Duration::from_secs(10), narrowed.ready()).await??;
    assert_eq!(node_ports(&narrowed), ["TCP 172.18.0.5:30080"]);
    Ok(())
}
