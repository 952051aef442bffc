//! `DestinationRule`: subsets and the traffic policy for a service once routing has
//! chosen it (load balancing, connection pools, outlier detection, TLS).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{PortSelector, validate_port};
use crate::duration::Duration;
use crate::validate::Validator;

/// Istio's `DestinationRule` spec, unchanged.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    namespaced,
    derive = "PartialEq",
    shortname = "dr",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The service this rule applies to.
    pub host: String,
    /// Policy for all of the host's traffic, unless a port or subset overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named groups of endpoints, selected by labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Namespaces this rule is visible to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Workloads this rule applies to (as clients); all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<crate::common::WorkloadSelector>,
}

/// A traffic policy: top level, per port, or per subset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load-balancing algorithm and locality settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking: eject endpoints that fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Overrides per destination port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel the connection through a proxy (HTTP CONNECT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    /// Send a PROXY protocol header upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// Policy overrides for one port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port these settings apply to.
    pub port: PortSelector,
    /// Load balancing for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// A named subset of a service's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name, used in routes and in the SNI `outbound_.PORT_.SUBSET_.HOST`.
    pub name: String,
    /// Labels an endpoint must carry; `topology.istio.io/cluster` selects by cluster.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Policy for this subset, overriding the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing: a simple algorithm or consistent hashing, plus locality settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A standard algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    /// Session affinity by hashing a request property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-aware routing: failover order, explicit failover, weighted distribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Ramp traffic up to new endpoints over this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
}

/// The simple load-balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// The proxy's default (LEAST_REQUEST, as in Istio).
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    /// Uniformly random.
    Random,
    /// Forward to the address the caller asked for.
    Passthrough,
    /// Rotate through endpoints.
    RoundRobin,
    /// Power of two choices by outstanding requests.
    LeastRequest,
}

/// Consistent hashing by header, cookie, source IP or query parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    /// Hash this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash this cookie, creating it when absent if a TTL is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    /// Hash the client's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// Hash this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// Ring-hash table settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    /// Maglev table settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
    /// Deprecated: use `ringHash.minimumRingSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// The cookie used for consistent hashing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// Ring-hash settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum number of virtual nodes on the ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// Lookup table size (a prime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// Locality-aware load balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// Explicit traffic shares from a source locality to destination localities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Where to go when a region has no healthy endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Ordered labels: endpoints matching the client on more leading labels are
    /// preferred, e.g. `topology.istio.io/network`, `topology.istio.io/cluster`,
    /// `topology.kubernetes.io/region`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Turn locality load balancing on or off for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Traffic shares from one locality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    /// Source locality `region/zone/subzone`, `*` wildcards allowed.
    pub from: String,
    /// Destination localities and their share (summing to 100).
    pub to: BTreeMap<String, u32>,
}

/// Failover from one region to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// Source region.
    pub from: String,
    /// Region to fail over to.
    pub to: String,
}

/// Connection pool limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP-level limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    /// HTTP-level limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// TCP connection pool limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Most connections to the destination (default 2³²−1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,
    /// TCP connect timeout (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Longest lifetime of a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout of a TCP connection (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

impl TcpSettings {
    /// Istio's default connect timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// TCP keepalive settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes before the connection is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// Idle time before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    /// Time between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

/// HTTP connection pool limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Most requests queued while waiting for a connection (default 2³²−1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i32>,
    /// Most concurrent requests to the destination (default 2³²−1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i32>,
    /// Requests per connection before it is closed; 0 = unlimited, 1 = no keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i32>,
    /// Most concurrent retries (default 2³²−1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    /// Close upstream connections idle this long (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Whether HTTP/1.1 should be upgraded to HTTP/2 upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the protocol of the downstream connection upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,
    /// Most concurrent streams per HTTP/2 connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i32>,
}

impl HttpSettings {
    /// Istio's default idle timeout for upstream connections.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
}

/// HTTP/2 upgrade policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// The mesh-wide default.
    Default,
    /// Keep HTTP/1.1.
    DoNotUpgrade,
    /// Upgrade to HTTP/2.
    Upgrade,
}

/// Passive health checking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Count local-origin failures (connect errors) apart from upstream 5xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    /// Local-origin failures before ejection (with the split above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    /// 502, 503, 504 and connect failures before ejection. 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// 5xx responses and connect failures before ejection (default 5). 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// How often ejections are analysed (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Minimum ejection time, multiplied by the number of ejections (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Most endpoints ejected at once, in percent (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i32>,
    /// Ejection stops when fewer than this share of endpoints is healthy (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i32>,
    /// Deprecated alias of `consecutive5xxErrors` that only counted gateway errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i32>,
}

impl OutlierDetection {
    /// Istio's default for `consecutive5xxErrors`.
    pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
    /// Istio's default for `interval`.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    /// Istio's default for `baseEjectionTime`.
    pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
    /// Istio's default for `maxEjectionPercent`.
    pub const DEFAULT_MAX_EJECTION_PERCENT: i32 = 10;

    /// `consecutive5xxErrors` in force (0 = disabled).
    pub fn effective_consecutive_5xx(&self) -> u32 {
        self.consecutive_5xx_errors
            .unwrap_or(Self::DEFAULT_CONSECUTIVE_5XX)
    }
    /// `interval` in force.
    pub fn effective_interval(&self) -> Duration {
        self.interval.unwrap_or(Self::DEFAULT_INTERVAL)
    }
    /// `baseEjectionTime` in force.
    pub fn effective_base_ejection_time(&self) -> Duration {
        self.base_ejection_time
            .unwrap_or(Self::DEFAULT_BASE_EJECTION_TIME)
    }
    /// `maxEjectionPercent` in force.
    pub fn effective_max_ejection_percent(&self) -> i32 {
        self.max_ejection_percent
            .unwrap_or(Self::DEFAULT_MAX_EJECTION_PERCENT)
    }
    /// `minHealthPercent` in force.
    pub fn effective_min_health_percent(&self) -> i32 {
        self.min_health_percent.unwrap_or(0)
    }
}

/// TLS towards the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientTlsMode>,
    /// Client certificate file (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// CA certificates to verify the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Secret holding the client certificate, key and CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Acceptable subject alternative names of the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Skip verifying the server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Certificate revocation list file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

/// Upstream TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    Disable,
    /// TLS, server verified.
    Simple,
    /// mTLS with user-provided certificates.
    Mutual,
    /// mTLS with the mesh's workload certificates.
    IstioMutual,
}

/// HTTP CONNECT tunnel settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Host to tunnel to.
    pub target_host: String,
    /// Port to tunnel to.
    pub target_port: u32,
}

/// PROXY protocol settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    /// `V1` or `V2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl DestinationRuleSpec {
    pub(crate) fn validate(&self, v: &mut Validator) {
        v.required("host", &self.host);
        if let Some(tp) = &self.traffic_policy {
            v.field("trafficPolicy", |v| tp.validate(v));
        }
        let mut seen = std::collections::BTreeSet::new();
        v.each("subsets", &self.subsets, |v, s| {
            v.required("name", &s.name);
            if !s.name.is_empty() && !seen.insert(s.name.clone()) {
                v.field("name", |v| {
                    v.error(format!("subset {:?} is defined twice", s.name))
                });
            }
            if s.name.contains('.') || s.name.contains('_') {
                v.field("name", |v| {
                    v.error("subset names must not contain '.' or '_' (they are part of the SNI)")
                });
            }
            if let Some(tp) = &s.traffic_policy {
                v.field("trafficPolicy", |v| tp.validate(v));
            }
        });
    }
}

impl TrafficPolicy {
    fn validate(&self, v: &mut Validator) {
        validate_policy_parts(
            v,
            self.load_balancer.as_ref(),
            self.connection_pool.as_ref(),
            self.outlier_detection.as_ref(),
            self.tls.as_ref(),
        );
        v.each("portLevelSettings", &self.port_level_settings, |v, p| {
            v.field("port", |v| {
                v.field("number", |v| validate_port(v, p.port.number))
            });
            validate_policy_parts(
                v,
                p.load_balancer.as_ref(),
                p.connection_pool.as_ref(),
                p.outlier_detection.as_ref(),
                p.tls.as_ref(),
            );
        });
    }
}

fn validate_policy_parts(
    v: &mut Validator,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(t) = tls {
        v.field("tls", |v| {
            let originates = matches!(t.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual));
            if t.mode == Some(ClientTlsMode::Mutual)
                && (t.client_certificate.is_none() || t.private_key.is_none())
                && t.credential_name.is_none()
            {
                v.field("mode", |v| {
                    v.error("MUTUAL needs clientCertificate and privateKey (PEM files the proxy can read)")
                });
            }
            if !originates {
                for (name, set) in [
                    ("clientCertificate", t.client_certificate.is_some()),
                    ("privateKey", t.private_key.is_some()),
                    ("caCertificates", t.ca_certificates.is_some()),
                    ("sni", t.sni.is_some()),
                    ("insecureSkipVerify", t.insecure_skip_verify.is_some()),
                ] {
                    if set {
                        v.field(name, |v| {
                            v.error("applies to TLS this proxy opens (mode SIMPLE or MUTUAL) only; between sidecars the mesh's mTLS is used")
                        });
                    }
                }
                if !t.subject_alt_names.is_empty() {
                    v.field("subjectAltNames", |v| {
                        v.error("applies to TLS this proxy opens (mode SIMPLE or MUTUAL) only; mesh peers are verified by their SPIFFE identity")
                    });
                }
            }
        });
    }
    if let Some(lb) = lb {
        v.field("loadBalancer", |v| {
            if lb.simple.is_some() && lb.consistent_hash.is_some() {
                v.error("set only one of simple and consistentHash");
            }
            if let Some(ch) = &lb.consistent_hash {
                v.field("consistentHash", |v| {
                    let keys = [
                        ch.http_header_name.is_some(),
                        ch.http_cookie.is_some(),
                        ch.use_source_ip == Some(true),
                        ch.http_query_parameter_name.is_some(),
                    ];
                    if keys.iter().filter(|k| **k).count() != 1 {
                        v.error(
                            "set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
                        );
                    }
                });
            }
            if let Some(loc) = &lb.locality_lb_setting {
                v.field("localityLbSetting", |v| {
                    if !loc.distribute.is_empty() && !loc.failover.is_empty() {
                        v.error("set only one of distribute and failover");
                    }
                    v.each("distribute", &loc.distribute, |v, d| {
                        let sum: u32 = d.to.values().sum();
                        if sum != 100 {
                            v.field("to", |v| v.error(format!("weights sum to {sum}, not 100")));
                        }
                    });
                    v.each("failover", &loc.failover, |v, f| {
                        if f.from == f.to {
                            v.error(format!("failover from {:?} to itself", f.from));
                        }
                    });
                });
            }
        });
    }
    if let Some(pool) = pool {
        v.field("connectionPool", |v| {
            if let Some(tcp) = &pool.tcp {
                v.field("tcp", |v| {
                    if let Some(c) = &tcp.connect_timeout
                        && c.is_zero()
                    {
                        v.field("connectTimeout", |v| v.error("must be greater than 0"));
                    }
                    non_negative(v, "maxConnections", tcp.max_connections);
                });
            }
            if let Some(http) = &pool.http {
                v.field("http", |v| {
                    non_negative(
                        v,
                        "http1MaxPendingRequests",
                        http.http1_max_pending_requests,
                    );
                    non_negative(v, "http2MaxRequests", http.http2_max_requests);
                    non_negative(
                        v,
                        "maxRequestsPerConnection",
                        http.max_requests_per_connection,
                    );
                    non_negative(v, "maxRetries", http.max_retries);
                });
            }
        });
    }
    if let Some(od) = outlier {
        v.field("outlierDetection", |v| {
            for (name, p) in [
                ("maxEjectionPercent", od.max_ejection_percent),
                ("minHealthPercent", od.min_health_percent),
            ] {
                if let Some(p) = p
                    && !(0..=100).contains(&p)
                {
                    v.field(name, |v| v.error(format!("{p} is not between 0 and 100")));
                }
            }
            if let Some(i) = od.interval
                && i.as_std() < std::time::Duration::from_millis(1)
            {
                v.field("interval", |v| v.error("must be at least 1ms"));
            }
            if let Some(b) = od.base_ejection_time
                && b.as_std() < std::time::Duration::from_millis(1)
            {
                v.field("baseEjectionTime", |v| v.error("must be at least 1ms"));
            }
        });
    }
}

fn non_negative(v: &mut Validator, name: &str, value: Option<i32>) {
    if let Some(n) = value
        && n < 0
    {
        v.field(name, |v| v.error(format!("{n} is negative")));
    }
}
