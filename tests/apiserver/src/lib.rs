//! A Kubernetes API server for tests, speaking the real list/watch protocol over HTTP or,
//! like a cluster, over HTTPS with a bearer token (`start_secure_on`):
//! lists with a resourceVersion and limit/continue paging, watches that replay from a
//! resourceVersion and stream ADDED/MODIFIED/DELETED/BOOKMARK events, 410 Gone (an ERROR
//! event) for a compacted resourceVersion, timeoutSeconds, and Status bodies for errors.
//! Services, EndpointSlices and Nodes are served for watching; Events can be created and
//! patched (what an agent's event recorder does).
//!
//! The test drives it: `apply`/`delete` objects (JSON as a real cluster returns it; see
//! `fixtures/`), `disconnect_watches` (every open watch ends, as when an API server restarts),
//! `compact` (the history is gone: the next watch from an older resourceVersion gets 410),
//! `set_available(false)` (connections fail), `bookmark`. It runs on its own thread and
//! runtime, so synchronous tests and other processes (a real `xvs run`) can use it alike.
mod http;
pub mod store;
mod tls;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::broadcast;

pub use store::{Change, Resource};
use store::Store;
pub use tls::Credentials;

/// State shared by the connection handlers and the test's controls.
pub struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    disconnects: broadcast::Sender<()>,
    available: AtomicBool,
    requests: Mutex<Vec<String>>,
    /// HTTPS: every request must carry `Authorization: Bearer <token>`.
    token: Option<String>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    fn log(&self, line: String) {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    /// Stores the object and tells the watches, under the store's lock (so a watch that
    /// replays history and subscribes under the same lock misses nothing).
    fn apply_as(&self, resource: Resource, object: Value) -> Result<Value, String> {
        let mut store = self.store();
        let change = store.apply(resource, object)?;
        let object = change.object.clone();
        let _ = self.changes.send(change);
        Ok(object)
    }
}

pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    credentials: Option<Credentials>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Serves on 127.0.0.1, an ephemeral port.
    pub fn start() -> std::io::Result<Self> {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0")?)
    }

    /// Serves plain HTTP on a listener the caller bound (e.g. inside a network namespace).
    pub fn start_on(listener: std::net::TcpListener) -> std::io::Result<Self> {
        Self::serve(listener, None)
    }

    /// Serves HTTPS as a cluster does: a certificate from a CA of its own for the listener's
    /// address, and a bearer token required on every request (401 Unauthorized otherwise).
    /// `credentials()` has what a client needs.
    pub fn start_secure_on(listener: std::net::TcpListener) -> std::io::Result<Self> {
        let (credentials, acceptor) = tls::generate(listener.local_addr()?.ip())?;
        Self::serve(listener, Some((credentials, acceptor)))
    }

    fn serve(listener: std::net::TcpListener, tls: Option<(Credentials, tokio_rustls::TlsAcceptor)>) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (credentials, acceptor) = tls.unzip();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes: broadcast::channel(4096).0,
            disconnects: broadcast::channel(16).0,
            available: AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
            token: credentials.as_ref().map(|c| c.token.clone()),
        });
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let serving = shared.clone();
        let thread = std::thread::Builder::new().name("test-apiserver".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                loop {
                    let conn = tokio::select! {
                        _ = &mut stop => return,
                        conn = listener.accept() => conn,
                    };
                    let Ok((stream, _)) = conn else { continue };
                    // As kube-apiserver's (Go's default): without it, Nagle holds a watch event
                    // back until the previous one is acknowledged, tens of ms with delayed ACKs.
                    let _ = stream.set_nodelay(true);
                    if !serving.available() {
                        // Down: the connection closes at once, as with no process listening.
                        drop(stream);
                        continue;
                    }
                    let shared = serving.clone();
                    let mut gone = serving.disconnects.subscribe();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| http::handle(shared.clone(), req));
                        let served = async move {
                            match acceptor {
                                // A failed handshake (a client that does not trust the CA) just closes.
                                Some(acceptor) => {
                                    if let Ok(stream) = acceptor.accept(stream).await {
                                        drop(http1::Builder::new().serve_connection(TokioIo::new(stream), service).await);
                                    }
                                }
                                None => drop(http1::Builder::new().serve_connection(TokioIo::new(stream), service).await),
                            }
                        };
                        // A disconnect closes the TCP connection too, as a restarting server does.
                        tokio::select! {
                            _ = served => {}
                            _ = gone.recv() => {}
                        }
                    });
                }
            });
        })?;
        Ok(Self { addr, shared, credentials, shutdown: Some(shutdown), thread: Some(thread) })
    }

    pub fn url(&self) -> String {
        let scheme = if self.credentials.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA and token of an HTTPS server; None for plain HTTP.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// A kubeconfig that points kube clients (xvs, kubectl) at this server, with its CA and
    /// token when it serves HTTPS.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        use base64::Engine;
        let (ca, user) = match &self.credentials {
            Some(c) => (
                format!("\n    certificate-authority-data: {}", base64::engine::general_purpose::STANDARD.encode(&c.ca_pem)),
                format!("\n    token: {}", c.token),
            ),
            None => (String::new(), " {}".to_owned()),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}{ca}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user:{user}\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    /// What the kubelet mounts into a pod at /var/run/secrets/kubernetes.io/serviceaccount:
    /// `token`, `ca.crt` and `namespace`, written to `dir` (HTTPS servers only).
    pub fn write_service_account(&self, dir: &Path, namespace: &str) -> std::io::Result<()> {
        let c = self.credentials.as_ref().ok_or_else(|| std::io::Error::other("a service account needs an HTTPS server (start_secure_on)"))?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("token"), &c.token)?;
        std::fs::write(dir.join("ca.crt"), &c.ca_pem)?;
        std::fs::write(dir.join("namespace"), namespace)
    }

    /// Creates or replaces an object (its `kind` says which resource); returns it as stored.
    pub fn apply(&self, object: Value) -> Result<Value, String> {
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let resource = Resource::of_kind(kind).ok_or_else(|| format!("kind {kind:?} is not served"))?;
        self.shared.apply_as(resource, object)
    }

    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let mut store = self.shared.store();
        match store.delete(resource, namespace, name) {
            Some(change) => {
                let _ = self.shared.changes.send(change);
                true
            }
            None => false,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Every open watch (and connection) ends; clients re-watch from their resourceVersion.
    pub fn disconnect_watches(&self) {
        let _ = self.shared.disconnects.send(());
    }

    /// Forgets the change history (etcd compaction): a watch from an older resourceVersion
    /// gets 410 Gone and must relist.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Tells watches that asked for bookmarks the current resourceVersion.
    pub fn bookmark(&self) {
        let rv = self.shared.store().resource_version();
        http::bookmark(&self.shared.changes, rv);
    }

    /// false: an API outage. Open connections close, new ones are closed as soon as they are
    /// accepted (clients see the connection fail, as with the API server process gone).
    pub fn set_available(&self, up: bool) {
        self.shared.available.store(up, Ordering::SeqCst);
        if !up {
            self.disconnect_watches();
        }
    }

    /// Every request so far, as `GET /api/v1/services?...`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The objects of one resource, e.g. the Events an agent created.
    pub fn objects(&self, resource: Resource) -> Vec<Value> {
        self.shared.store().list(resource, None).into_iter().cloned().collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.disconnect_watches();
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fixture from `fixtures/` (objects as `kubectl get -o json` prints them).
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}
