//! Discovery's own metrics, in Prometheus text on the monitoring port (15014).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Push, convergence and CA metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Config pushes sent.
    pub pushes: Counter,
    /// Resources (added, changed or removed) carried by pushes.
    pub pushed_resources: Counter,
    /// Resources refused by proxies.
    pub nacks: Counter,
    /// Proxies with an open config stream.
    pub connected: Gauge,
    /// Config event → proxy ACK, seconds.
    pub convergence: Histogram,
    /// Config event → push sent, seconds (debounce included).
    pub queue_time: Histogram,
    /// Certificates signed.
    pub csr_signed: Counter,
    /// Certificate requests refused.
    pub csr_refused: Counter,
    /// Changed `cacerts` adopted (a new intermediate or root set).
    pub cacerts_reloaded: Counter,
    /// Changed `cacerts` refused (the CA in force stays).
    pub cacerts_refused: Counter,
    /// Objects the validating webhook allowed.
    pub validation_passed: Counter,
    /// Objects the validating webhook refused.
    pub validation_failed: Counter,
    /// Input objects refused now (set at each scrape).
    pub config_refused: Gauge,
    /// Fields in force that are accepted without effect (set at each scrape).
    pub config_warned_fields: Gauge,
    /// Endpoints received per linked cluster, by whether they are stale (set at each
    /// scrape).
    pub remote_endpoints: Family<RemoteLabels, Gauge>,
}

/// Labels of [`Metrics::remote_endpoints`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemoteLabels {
    /// The linked cluster.
    pub cluster: String,
    /// `true` while its control plane is silent and its gateway healthy.
    pub stale: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("isthmus_discovery");
        let m = Self {
            pushes: Counter::default(),
            pushed_resources: Counter::default(),
            nacks: Counter::default(),
            connected: Gauge::default(),
            convergence: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            queue_time: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            csr_signed: Counter::default(),
            csr_refused: Counter::default(),
            cacerts_reloaded: Counter::default(),
            cacerts_refused: Counter::default(),
            validation_passed: Counter::default(),
            validation_failed: Counter::default(),
            config_refused: Gauge::default(),
            config_warned_fields: Gauge::default(),
            remote_endpoints: Family::default(),
            registry: Registry::default(),
        };
        registry.register("pushes", "Config pushes sent", m.pushes.clone());
        registry.register(
            "pushed_resources",
            "Resources carried by config pushes",
            m.pushed_resources.clone(),
        );
        registry.register("nacks", "Resources refused by proxies", m.nacks.clone());
        registry.register(
            "connected_proxies",
            "Proxies with an open config stream",
            m.connected.clone(),
        );
        registry.register(
            "convergence_seconds",
            "Time from a config event to the proxy's ACK",
            m.convergence.clone(),
        );
        registry.register(
            "queue_seconds",
            "Time from a config event to the push being sent",
            m.queue_time.clone(),
        );
        registry.register(
            "csr_signed",
            "Workload certificates signed",
            m.csr_signed.clone(),
        );
        registry.register(
            "csr_refused",
            "Workload certificate requests refused",
            m.csr_refused.clone(),
        );
        registry.register(
            "cacerts_reloaded",
            "Changed cacerts adopted (new intermediate or roots)",
            m.cacerts_reloaded.clone(),
        );
        registry.register(
            "cacerts_refused",
            "Changed cacerts refused; the CA in force stays",
            m.cacerts_refused.clone(),
        );
        registry.register(
            "validation_passed",
            "Istio objects the validating webhook allowed",
            m.validation_passed.clone(),
        );
        registry.register(
            "validation_failed",
            "Istio objects the validating webhook refused",
            m.validation_failed.clone(),
        );
        registry.register(
            "config_refused_objects",
            "Input objects refused (their last good version, if any, stays in force)",
            m.config_refused.clone(),
        );
        registry.register(
            "config_warned_fields",
            "Fields of objects in force that Isthmus accepts without effect (see meshctl analyze)",
            m.config_warned_fields.clone(),
        );
        registry.register(
            "remote_endpoints",
            "Endpoints received from each linked cluster; stale=true while its control plane is silent and its gateway passes its health checks",
            m.remote_endpoints.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
