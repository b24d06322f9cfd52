//! The health check node port server (kube-proxy's pkg/proxy/healthcheck): one listener per
//! port, answering 200 while this node has ready endpoints for the Service and 503 when it has
//! none, with kube-proxy's JSON body and headers, so cloud load balancers configured for
//! kube-proxy work unchanged.
use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinHandle,
};

use crate::source::kube::health::HealthCheck;

type Shared = Arc<Mutex<BTreeMap<u16, HealthCheck>>>;

#[derive(Default)]
pub struct HealthServer {
    checks: Shared,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthServer {
    /// Serves exactly `checks`: listeners for new ports, none for ports gone, new counts for
    /// the rest. A port that cannot be bound is logged and tried again on the next update.
    pub fn update(&mut self, checks: BTreeMap<u16, HealthCheck>) {
        self.listeners.retain(|port, task| {
            let keep = checks.contains_key(port);
            if !keep {
                task.abort();
                tracing::info!(port, "health check port closed");
            }
            keep
        });
        for (port, check) in &checks {
            if self.listeners.contains_key(port) {
                continue;
            }
            match listen(*port, self.checks.clone()) {
                Ok(task) => {
                    tracing::info!(port, service = %format!("{}/{}", check.namespace, check.name), "serving the health check node port");
                    self.listeners.insert(*port, task);
                }
                Err(e) => tracing::error!(port, service = %format!("{}/{}", check.namespace, check.name), "cannot serve the health check node port: {e}"),
            }
        }
        if let Ok(mut shared) = self.checks.lock() {
            *shared = checks;
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

/// Binds every address (both families) on `port`, as kube-proxy does by default.
fn listen(port: u16, checks: Shared) -> std::io::Result<JoinHandle<()>> {
    let socket = bind_any(port)?;
    let listener = tokio::net::TcpListener::from_std(socket)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let checks = checks.clone();
            tokio::spawn(async move {
                // One request per connection; its path does not matter (kube-proxy's neither).
                let mut buf = [0u8; 2048];
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
                let check = checks.lock().ok().and_then(|c| c.get(&port).cloned());
                let _ = conn.write_all(response(check.as_ref()).as_bytes()).await;
            });
        }
    }))
}

/// A dual-stack listening socket on `[::]:port` (IPv4 reaches it as mapped addresses).
fn bind_any(port: u16) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// kube-proxy's answer, byte for byte in its body (tab-indented JSON) and headers.
pub fn response(check: Option<&HealthCheck>) -> String {
    let (namespace, name, count) = check.map_or(("", "", 0), |c| (c.namespace.as_str(), c.name.as_str(), c.local_endpoints));
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {namespace:?},\n\t\t\"name\": {name:?}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": true\n}}"
    );
    let status = if count > 0 { "200 OK" } else { "503 Service Unavailable" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {count}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_kube_proxy_does() {
        let check = HealthCheck { namespace: "shop".into(), name: "web".into(), local_endpoints: 2 };
        let ok = response(Some(&check));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: 2\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"), "{ok}");
        let none = response(Some(&HealthCheck { local_endpoints: 0, ..check }));
        assert!(none.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && none.contains("\"localEndpoints\": 0,"), "{none}");
    }
}
