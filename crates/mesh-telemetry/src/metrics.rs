//! Istio's standard metrics, with Istio's names and labels so that existing dashboards
//! and alerts work unchanged: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`, `istio_tcp_connections_opened_total` and
//! `istio_tcp_connections_closed_total`, each carrying `source_cluster` and
//! `destination_cluster`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

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

/// What a request's response adds to its peers' labels, in the form the data path has
/// it (no strings to build per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Response<'a> {
    /// gRPC rather than plain HTTP.
    pub grpc: bool,
    /// HTTP status.
    pub code: u16,
    /// The `grpc-status` trailer or header value, when there is one.
    pub grpc_status: Option<&'a str>,
    /// Envoy-style flags, `-` for none.
    pub flags: &'static str,
}

/// The four series one request is recorded in.
#[derive(Debug, Clone)]
struct Series {
    /// Keeps the labels alive, so that their address in the key stays theirs.
    _peers: Arc<PeerLabels>,
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// A series is found by the address of its interned peer labels and the small response
/// fields: no label string is hashed or compared on the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    peers: usize,
    grpc: bool,
    code: u16,
    grpc_status: u8,
    flags: &'static str,
}

/// More distinct series than this and the cache starts again (the series themselves
/// stay in the registry): labels of endpoints that went away do not pile up.
const MAX_CACHED_SERIES: usize = 4096;

/// The strings a label set was made from, and the set.
type Interned = (Box<[Box<str>]>, Arc<PeerLabels>);

/// Interned label sets, found by the strings they are made from: the receiving side
/// builds its peers' labels from a header once per distinct caller, not per request.
#[derive(Debug, Clone, Default)]
pub struct LabelCache {
    entries: Arc<Mutex<HashMap<u64, Vec<Interned>>>>,
    hasher: std::hash::RandomState,
}

impl LabelCache {
    /// The labels made by `make` from `parts`, made once per distinct `parts`.
    pub fn get(&self, parts: &[&str], make: impl FnOnce() -> PeerLabels) -> Arc<PeerLabels> {
        let hash = self.hasher.hash_one(parts);
        let same =
            |k: &[Box<str>]| k.len() == parts.len() && k.iter().zip(parts).all(|(a, b)| **a == **b);
        let Ok(mut map) = self.entries.lock() else {
            return Arc::new(make());
        };
        if let Some((_, labels)) = map.get(&hash).and_then(|v| v.iter().find(|(k, _)| same(k))) {
            return labels.clone();
        }
        if map.len() >= MAX_CACHED_SERIES {
            map.clear();
        }
        let labels = Arc::new(make());
        let key = parts.iter().map(|p| Box::from(*p)).collect();
        map.entry(hash).or_default().push((key, labels.clone()));
        labels
    }
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
    series: Arc<Mutex<HashMap<SeriesKey, Series>>>,
    edges: crate::edges::EdgeRecorder,
}

impl Default for MeshMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MeshMetrics {
    /// A fresh registry with every Istio metric registered.
    pub fn new() -> Self {
        Self::with_extra(|_| {})
    }

    /// As [`MeshMetrics::new`], with a component's own metrics registered beside
    /// Istio's by `extra` (one registry, one exposition).
    pub fn with_extra(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        extra(&mut registry);
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
            series: Arc::default(),
            edges: crate::edges::EdgeRecorder::default(),
        }
    }

    /// These metrics, with the calls counted into `edges` (shared with whoever
    /// reports them).
    pub fn with_edges(mut self, edges: crate::edges::EdgeRecorder) -> Self {
        self.edges = edges;
        self
    }

    /// The calls this proxy made, for the mesh graph (recorded once enabled).
    pub fn edges(&self) -> &crate::edges::EdgeRecorder {
        &self.edges
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

    /// Records one finished request between `peers` (interned: the same `Arc` for the
    /// same peers) with `response`'s fields. The same series as [`Self::request`]
    /// with the labels spelled out, found without building or hashing label strings.
    pub fn record(
        &self,
        peers: &Arc<PeerLabels>,
        response: Response<'_>,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        // gRPC statuses are 0-16; anything else takes the long way.
        let grpc_status = match response.grpc_status {
            None => Some(u8::MAX),
            Some(s) => s.parse::<u8>().ok().filter(|c| *c < u8::MAX),
        };
        let (Some(grpc_status), Ok(mut cache)) = (grpc_status, self.series.lock()) else {
            return self.request(
                &Self::labels(peers, response),
                duration_ms,
                request_bytes,
                response_bytes,
            );
        };
        let key = SeriesKey {
            peers: Arc::as_ptr(peers) as usize,
            grpc: response.grpc,
            code: response.code,
            grpc_status,
            flags: response.flags,
        };
        if !cache.contains_key(&key) {
            if cache.len() >= MAX_CACHED_SERIES {
                cache.clear();
            }
            let labels = Self::labels(peers, response);
            cache.insert(
                key,
                Series {
                    _peers: peers.clone(),
                    requests: self.requests.get_or_create(&labels).clone(),
                    duration: self.duration.get_or_create(&labels).clone(),
                    request_bytes: self.request_bytes.get_or_create(&labels).clone(),
                    response_bytes: self.response_bytes.get_or_create(&labels).clone(),
                },
            );
        }
        if let Some(s) = cache.get(&key) {
            s.requests.inc();
            s.duration.observe(duration_ms);
            s.request_bytes.observe(request_bytes as f64);
            s.response_bytes.observe(response_bytes as f64);
        }
    }

    fn labels(peers: &PeerLabels, response: Response<'_>) -> RequestLabels {
        RequestLabels {
            peers: peers.clone(),
            request_protocol: if response.grpc { "grpc" } else { "http" }.into(),
            response_code: response.code.to_string(),
            grpc_response_status: response.grpc_status.unwrap_or_default().to_owned(),
            response_flags: response.flags.to_owned(),
        }
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

/// The sum of every sample of `metric` in a Prometheus text exposition whose labels
/// include each of `labels`, read as a scraper reads it (for checks and status views).
pub fn sum_of(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_of_reads_only_the_named_metric_with_every_label() {
        let text = "# TYPE x counter\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\nx_total_more{a=\"1\"} 100\ny 5\n";
        assert_eq!(sum_of(text, "x_total", &[("a", "1")]), 7.0);
        assert_eq!(sum_of(text, "x_total", &[("b", "3")]), 4.0);
        assert_eq!(sum_of(text, "x_total", &[("a", "2")]), 0.0);
        assert_eq!(sum_of(text, "y", &[]), 5.0);
    }

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

    fn count(text: &str, needle: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("istio_requests_total{") && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn interned_peers_count_into_the_same_series_as_spelled_out_labels() {
        let m = MeshMetrics::new();
        let peers = PeerLabels {
            reporter: "source".into(),
            destination_service: "reviews.shop.svc.cluster.local".into(),
            ..Default::default()
        };
        let ok = Response {
            grpc: false,
            code: 200,
            grpc_status: None,
            flags: "-",
        };
        // Two interned copies of equal labels (say, before and after a config push)
        // and the spelled-out form all land in one series.
        m.record(&Arc::new(peers.clone()), ok, 1.0, 0, 10);
        m.record(&Arc::new(peers.clone()), ok, 1.0, 0, 10);
        m.request(&MeshMetrics::labels(&peers, ok), 1.0, 0, 10);
        let text = m.encode();
        let lines = count(&text, "response_code=\"200\"");
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].ends_with(" 3"), "{}", lines[0]);

        // Each response field is its own series.
        let shared = Arc::new(peers);
        m.record(
            &shared,
            Response {
                code: 503,
                flags: "UF",
                ..ok
            },
            1.0,
            0,
            0,
        );
        m.record(
            &shared,
            Response {
                grpc: true,
                grpc_status: Some("14"),
                ..ok
            },
            1.0,
            0,
            0,
        );
        m.record(
            &shared,
            Response {
                grpc: true,
                grpc_status: Some("odd"),
                ..ok
            },
            1.0,
            0,
            0,
        );
        let text = m.encode();
        assert_eq!(count(&text, "response_flags=\"UF\"").len(), 1, "{text}");
        assert_eq!(
            count(&text, "grpc_response_status=\"14\"").len(),
            1,
            "{text}"
        );
        assert_eq!(
            count(&text, "grpc_response_status=\"odd\"").len(),
            1,
            "{text}"
        );
        assert_eq!(count(&text, "request_protocol=\"grpc\"").len(), 2, "{text}");
    }

    #[test]
    fn label_cache_makes_each_distinct_key_once() {
        let cache = LabelCache::default();
        let made = std::cell::Cell::new(0);
        let make = |name: &str| {
            made.set(made.get() + 1);
            PeerLabels {
                source_workload: name.into(),
                ..Default::default()
            }
        };
        let a = cache.get(&["a", "x"], || make("a"));
        let again = cache.get(&["a", "x"], || make("a"));
        let b = cache.get(&["a", "y"], || make("b"));
        let c = cache.get(&["ax", ""], || make("c"));
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(made.get(), 3);
        assert_eq!(
            (
                a.source_workload.as_str(),
                b.source_workload.as_str(),
                c.source_workload.as_str()
            ),
            ("a", "b", "c")
        );
    }
}
