//! Istio's standard metrics, with Istio's names and labels so that existing dashboards
//! and alerts work unchanged: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`, `istio_tcp_connections_opened_total` and
//! `istio_tcp_connections_closed_total`, each carrying `source_cluster` and
//! `destination_cluster`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Who is on each side of a request or connection.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// `source` (client side) or `destination` (server side).
    pub reporter: String,
    /// Client workload.
    pub source_workload: String,
    /// Client namespace.
    pub source_workload_namespace: String,
    /// Client SPIFFE ID.
    pub source_principal: String,
    /// Client `app` label.
    pub source_app: String,
    /// Client `version` label.
    pub source_version: String,
    /// Client cluster.
    pub source_cluster: String,
    /// Server workload.
    pub destination_workload: String,
    /// Server namespace.
    pub destination_workload_namespace: String,
    /// Server SPIFFE ID.
    pub destination_principal: String,
    /// Server `app` label.
    pub destination_app: String,
    /// Server `version` label.
    pub destination_version: String,
    /// Service host.
    pub destination_service: String,
    /// Service name.
    pub destination_service_name: String,
    /// Service namespace.
    pub destination_service_namespace: String,
    /// Server cluster.
    pub destination_cluster: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
}

/// Labels of one HTTP/gRPC request.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Who talked to whom.
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    /// `http`, `grpc`.
    pub request_protocol: String,
    /// HTTP status.
    pub response_code: String,
    /// gRPC status, when gRPC.
    pub grpc_response_status: String,
    /// Envoy-style flags, `-` for none.
    pub response_flags: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // Istio's buckets, in milliseconds.
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 10.0, 10))
}

/// The metrics of one proxy.
#[derive(Debug, Clone)]
pub struct MeshMetrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RequestLabels>,
    request_bytes: HistogramFamily<RequestLabels>,
    response_bytes: HistogramFamily<RequestLabels>,
    tcp_sent: Family<PeerLabels, Counter>,
    tcp_received: Family<PeerLabels, Counter>,
    tcp_opened: Family<PeerLabels, Counter>,
    tcp_closed: Family<PeerLabels, Counter>,
}

impl Default for MeshMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MeshMetrics {
    /// A fresh registry with every Istio metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = HistogramFamily::<RequestLabels>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let request_bytes = HistogramFamily::<RequestLabels>::new_with_constructor(
            bytes_histogram as fn() -> Histogram,
        );
        let response_bytes = HistogramFamily::<RequestLabels>::new_with_constructor(
            bytes_histogram as fn() -> Histogram,
        );
        let tcp_sent = Family::<PeerLabels, Counter>::default();
        let tcp_received = Family::<PeerLabels, Counter>::default();
        let tcp_opened = Family::<PeerLabels, Counter>::default();
        let tcp_closed = Family::<PeerLabels, Counter>::default();
        registry.register("istio_requests", "Requests handled", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body size",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body size",
            response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the peer on TCP connections",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received on TCP connections",
            tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
        }
    }

    /// Records one finished request.
    pub fn request(
        &self,
        labels: &RequestLabels,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(duration_ms);
        self.request_bytes
            .get_or_create(labels)
            .observe(request_bytes as f64);
        self.response_bytes
            .get_or_create(labels)
            .observe(response_bytes as f64);
    }

    /// Records a TCP connection opening.
    pub fn tcp_opened(&self, labels: &PeerLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// Records a TCP connection closing with its byte counts.
    pub fn tcp_closed(&self, labels: &PeerLabels, sent: u64, received: u64) {
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
        self.tcp_closed.get_or_create(labels).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_names_and_labels_are_exposed() {
        let m = MeshMetrics::new();
        let labels = RequestLabels {
            peers: PeerLabels {
                reporter: "source".into(),
                source_cluster: "east".into(),
                destination_cluster: "west".into(),
                ..Default::default()
            },
            response_code: "200".into(),
            response_flags: "-".into(),
            ..Default::default()
        };
        m.request(&labels, 3.0, 10, 100);
        m.request(&labels, 7.0, 10, 100);
        let text = m.encode();
        assert!(
            text.contains("istio_requests_total{reporter=\"source\""),
            "{text}"
        );
        assert!(text.contains("source_cluster=\"east\""), "{text}");
        assert!(text.contains("destination_cluster=\"west\""), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        assert!(line.ends_with(" 2"), "{line}");
        assert!(
            text.contains("istio_request_duration_milliseconds_bucket{"),
            "{text}"
        );
    }
}
