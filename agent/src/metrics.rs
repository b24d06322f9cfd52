//! The agent's Prometheus metrics and the `--metrics-addr` endpoint that serves them in the
//! text exposition format. Plain atomics: a handful of series, written a few times a second.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::source::kube::Watched;

/// Upper bounds of the sync-latency histogram, in seconds (kube-proxy's
/// network_programming_duration uses a similar spread).
const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct Metrics {
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    syncs: AtomicU64,
    services: AtomicU64,
    backends: AtomicU64,
    warnings: AtomicU64,
    watch_errors: [AtomicU64; Watched::ALL.len()],
    relists: [AtomicU64; Watched::ALL.len()],
}

pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    const fn new() -> Self {
        Self {
            latency_buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len()],
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            services: AtomicU64::new(0),
            backends: AtomicU64::new(0),
            warnings: AtomicU64::new(0),
            watch_errors: [const { AtomicU64::new(0) }; Watched::ALL.len()],
            relists: [const { AtomicU64::new(0) }; Watched::ALL.len()],
        }
    }

    /// One change applied: `latency` from the first API event it contains to the dataplanes
    /// being written.
    pub fn observe_sync_latency(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A desired state was applied: its size and the objects skipped in it.
    pub fn synced(&self, services: usize, backends: usize) {
        self.syncs.fetch_add(1, Relaxed);
        self.services.store(services as u64, Relaxed);
        self.backends.store(backends as u64, Relaxed);
    }

    pub fn warnings(&self, warnings: usize) {
        self.warnings.store(warnings as u64, Relaxed);
    }

    pub fn watch_error(&self, what: Watched) {
        self.watch_errors[what as usize].fetch_add(1, Relaxed);
    }

    pub fn relist(&self, what: Watched) {
        self.relists[what as usize].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let h = "xvs_kube_sync_latency_seconds";
        let _ = writeln!(out, "# HELP {h} Time from a Kubernetes change received to the dataplanes programmed.\n# TYPE {h} histogram");
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(out, "{h}_bucket{{le=\"{bound}\"}} {}", bucket.load(Relaxed));
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "{h}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{h}_sum {}", self.latency_sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{h}_count {count}");
        let simple: [(&str, &str, &str, &AtomicU64); 4] = [
            ("xvs_syncs_total", "counter", "Desired states applied to the dataplanes.", &self.syncs),
            ("xvs_services", "gauge", "Virtual services in the applied desired state.", &self.services),
            ("xvs_backends", "gauge", "Backends in the applied desired state.", &self.backends),
            ("xvs_skipped_objects", "gauge", "Problems with source objects that were skipped in the last sync.", &self.warnings),
        ];
        for (name, kind, help, value) in simple {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", value.load(Relaxed));
        }
        for (name, help, values) in [
            ("xvs_kube_watch_errors_total", "Failed Kubernetes lists and watches (retried with backoff).", &self.watch_errors),
            ("xvs_kube_lists_total", "Complete lists started (first list, watch restarts, 410 Gone).", &self.relists),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for what in Watched::ALL {
                let _ = writeln!(out, "{name}{{resource=\"{}\"}} {}", what.name(), values[what as usize].load(Relaxed));
            }
        }
        out
    }
}

/// Serves `GET /metrics` (any path) until the task is dropped.
pub async fn serve(addr: SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                // One request per connection; the request itself does not matter.
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
                let body = METRICS.render();
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_the_text_parses_line_by_line() {
        let m = Metrics::new();
        m.observe_sync_latency(Duration::from_millis(3));
        m.observe_sync_latency(Duration::from_millis(300));
        m.relist(Watched::Node);
        let text = m.render();
        assert!(text.contains("xvs_kube_sync_latency_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("xvs_kube_sync_latency_seconds_bucket{le=\"0.25\"} 1\n"), "{text}");
        assert!(text.contains("xvs_kube_sync_latency_seconds_bucket{le=\"0.5\"} 2\n"), "{text}");
        assert!(text.contains("xvs_kube_sync_latency_seconds_count 2\n"), "{text}");
        assert!(text.contains("xvs_kube_sync_latency_seconds_sum 0.303\n"), "{text}");
        assert!(text.contains("xvs_kube_lists_total{resource=\"node\"} 1\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
