//! Discovery's own metrics, in Prometheus text on the monitoring port (15014).

use prometheus_client::metrics::counter::Counter;
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
