//! `VirtualService`: how requests to a host are matched and routed.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Headers, Percent, PortSelector, StringMatch, validate_header_name, validate_port,
};
use crate::duration::Duration;
use crate::validate::Validator;

/// Istio's `VirtualService` spec, unchanged.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    namespaced,
    derive = "PartialEq",
    shortname = "vs",
    category = "istio-io",
    category = "networking-istio-io",
    printcolumn = r#"{"name":"Gateways","type":"string","jsonPath":".spec.gateways"}"#,
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts to which these rules apply (short names, FQDNs or wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Gateways (and `mesh` for sidecars) that apply these routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Ordered HTTP routes; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// Ordered routes for unterminated TLS, matched on SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    /// Ordered routes for opaque TCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces this VirtualService is visible to (`.` = own, `*` = all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// One HTTP route: match conditions and what to do with a matching request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name used in logs and for delegate merging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions, ORed; each one's fields are ANDed. Empty matches everything.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Answer directly with a fixed response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand matching to another VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    /// Rewrite the URI or authority before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Timeout for the whole request, retries included. Unset or 0s disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Fault injection (delays and aborts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    /// Mirror traffic to this destination (fire and forget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// Several mirror destinations, each with its own percentage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Share of traffic mirrored to `mirror` (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,
    /// Cross-origin resource sharing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Header edits for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// Conditions a request must meet for a route to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name of this match, appended to the route name in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Match on the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// Match on the scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// Match on the method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Match on the authority (Host header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Header matches, by lower-case header name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Destination port the request was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Labels the calling workload must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Query parameter matches (`exact` and `regex`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Match the URI without regard to case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    /// Headers that must be absent or not match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace the calling workload must run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Prefix for stats generated for this match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

/// A destination with a relative weight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Relative share of traffic. With one destination it may be omitted (100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Header edits when this destination is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// A service (and optionally subset and port) in the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host name, short (`reviews`) or fully qualified.
    pub host: String,
    /// Subset defined in the host's DestinationRule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Port on the host; needed when the service exposes several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// Where to redirect a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replace the path with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replace the authority with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Replace the port with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Derive the port from the protocol or the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Status code, default 301.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
}

impl HttpRedirect {
    /// Istio's default redirect status.
    pub fn effective_code(&self) -> u32 {
        self.redirect_code.unwrap_or(301)
    }
}

/// How a redirect chooses its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port the request came in on.
    FromRequestPort,
}

/// A fixed response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// Status code.
    pub status: u32,
    /// Body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// A body given as a string or as base64 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// Text body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// Base64-encoded body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

/// A delegate VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    pub name: String,
    /// Its namespace; defaults to the root's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Rewrites applied before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched prefix (or the whole path for exact/regex matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replace the authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Regex-based path rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Replace what `match` matches with `rewrite` (RE2, `\1` captures).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// The regular expression.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The replacement.
    pub rewrite: String,
}

/// Retry policy of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries (not counting the first try).
    #[serde(default)]
    pub attempts: i32,
    /// Timeout per try; defaults to the route timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated conditions: 5xx, gateway-error, connect-failure, reset,
    /// retriable-status-codes, refused-stream, … and bare status codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Whether retries should prefer other localities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
}

impl HttpRetry {
    /// What Istio retries on when `retryOn` is not set.
    pub const DEFAULT_RETRY_ON: &'static str =
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

    /// Conditions in force, Istio's default when unset.
    pub fn effective_retry_on(&self) -> &str {
        self.retry_on.as_deref().unwrap_or(Self::DEFAULT_RETRY_ON)
    }
}

/// The conditions `retryOn` understands.
pub const RETRY_ON_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Fault injection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer with an error instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// An injected delay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// The delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// Not supported by Istio either; accepted for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// Deprecated integer form of `percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
}

/// An injected error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// gRPC status name to return (e.g. `UNAVAILABLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// HTTP/2 error to reset the stream with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// One mirror target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where to mirror.
    pub destination: Destination,
    /// Share of traffic mirrored (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// CORS policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Allowed origins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Allowed methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Headers browsers may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long preflight results may be cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Whether credentials are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// What to do with preflights that match no origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<String>,
}

/// A route for unterminated TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Conditions, ORed.
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// Match on a TLS connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values to match (wildcards allowed).
    pub sni_hosts: Vec<String>,
    /// Destination IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Labels of the calling workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// A route for opaque TCP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions, ORed. Empty matches every connection.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// Match on a TCP connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Source IP or CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<String>,
    /// Labels of the calling workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// A weighted L4 destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Relative share of connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// Gateway names a route may bind to: `mesh` (the sidecars), and a Gateway as `name`
/// (in the VirtualService's namespace) or `namespace/name`.
pub(crate) fn validate_gateways(v: &mut Validator, gateways: &[String]) {
    v.each("gateways", gateways, |v, g| {
        if g == "mesh" {
            return;
        }
        let parts: Vec<&str> = g.split('/').collect();
        let ok = match parts.as_slice() {
            [name] => is_dns_label(name),
            [ns, name] => is_dns_label(ns) && is_dns_label(name),
            _ => false,
        };
        if !ok {
            v.error(format!(
                "gateway {g:?} is not `mesh`, a Gateway name or `namespace/name`"
            ));
        }
    });
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl VirtualServiceSpec {
    pub(crate) fn validate(&self, v: &mut Validator) {
        validate_gateways(v, &self.gateways);
        if self.hosts.is_empty() && self.gateways.is_empty() {
            v.field("hosts", |v| {
                v.error("at least one host is required (the service this VirtualService routes)")
            });
        }
        v.each("hosts", &self.hosts, |v, h| {
            if h.trim().is_empty() {
                v.error("host must not be empty");
            }
        });
        v.each("http", &self.http, |v, r| {
            r.validate(v);
            // Claims are verified where a request enters: the ingress gateway.
            v.each("match", &r.matches, |v, m| {
                let gateways = if m.gateways.is_empty() {
                    &self.gateways
                } else {
                    &m.gateways
                };
                if gateways.iter().all(|g| g == "mesh") {
                    v.each_entry("headers", &m.headers, |v, k, _| {
                        if k.starts_with("@request.auth.claims") {
                            v.error(
                                "JWT claims are matched at the ingress gateway only (as in Istio), \
                                 so on sidecars this match could never be true; bind the route to a Gateway \
                                 with `gateways`",
                            );
                        }
                    });
                }
            });
        });
        v.each("tls", &self.tls, |v, r| {
            if r.matches.is_empty() {
                v.field("match", |v| {
                    v.error("a TLS route needs at least one match with sniHosts")
                });
            }
            v.each("match", &r.matches, |v, m| {
                if m.sni_hosts.is_empty() {
                    v.field("sniHosts", |v| v.error("at least one SNI host is required"));
                }
                validate_gateways(v, &m.gateways);
                if let Some(p) = m.port {
                    v.field("port", |v| validate_port(v, p));
                }
            });
            validate_weights(v, r.route.iter().map(|d| (&d.destination, d.weight)));
        });
        v.each("tcp", &self.tcp, |v, r| {
            v.each("match", &r.matches, |v, m| {
                validate_gateways(v, &m.gateways);
                if let Some(p) = m.port {
                    v.field("port", |v| validate_port(v, p));
                }
            });
            validate_weights(v, r.route.iter().map(|d| (&d.destination, d.weight)));
        });
    }
}

impl HttpRoute {
    fn validate(&self, v: &mut Validator) {
        let actions = [
            !self.route.is_empty(),
            self.redirect.is_some(),
            self.direct_response.is_some(),
            self.delegate.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if actions == 0 {
            v.error("an HTTP route needs one of route, redirect, directResponse or delegate");
        } else if actions > 1 && (self.redirect.is_some() || self.direct_response.is_some()) {
            v.error("redirect and directResponse cannot be combined with route or each other");
        }
        v.each("match", &self.matches, |v, m| m.validate(v));
        if let Some(h) = &self.headers {
            v.field("headers", |v| h.validate(v));
        }
        validate_weights(v, self.route.iter().map(|d| (&d.destination, d.weight)));
        if let Some(rw) = &self.rewrite {
            v.field("rewrite", |v| {
                if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                    v.error("set only one of uri and uriRegexRewrite");
                }
                if let Some(rr) = &rw.uri_regex_rewrite {
                    v.field("uriRegexRewrite", |v| {
                        v.field("match", |v| v.regex(&rr.pattern))
                    });
                }
            });
        }
        if let Some(r) = &self.retries {
            v.field("retries", |v| r.validate(v));
        }
        if let Some(f) = &self.fault {
            v.field("fault", |v| f.validate(v));
        }
        if let Some(p) = &self.mirror_percentage {
            v.field("mirrorPercentage", |v| p.validate(v));
        }
        if let Some(p) = self.mirror_percent
            && p > 100
        {
            v.field("mirrorPercent", |v| {
                v.error(format!("{p} is more than 100"))
            });
        }
        if let Some(m) = &self.mirror {
            v.field("mirror", |v| v.required("host", &m.host));
        }
        v.each("mirrors", &self.mirrors, |v, m| {
            v.field("destination", |v| v.required("host", &m.destination.host));
            if let Some(p) = &m.percentage {
                v.field("percentage", |v| p.validate(v));
            }
        });
        if let Some(rd) = &self.redirect {
            v.field("redirect", |v| {
                if let Some(code) = rd.redirect_code
                    && !(300..=399).contains(&code)
                {
                    v.field("redirectCode", |v| {
                        v.error(format!("{code} is not a 3xx status"))
                    });
                }
                if rd.port.is_some() && rd.derive_port.is_some() {
                    v.error("set only one of port and derivePort");
                }
            });
        }
        if let Some(dr) = &self.direct_response {
            v.field("directResponse", |v| {
                if !(200..=599).contains(&dr.status) {
                    v.field("status", |v| {
                        v.error(format!("{} is not an HTTP status", dr.status))
                    });
                }
            });
        }
        if let Some(c) = &self.cors_policy {
            v.field("corsPolicy", |v| {
                v.each("allowOrigins", &c.allow_origins, |v, m| m.validate(v))
            });
        }
    }
}

/// The claim a `headers` key names when it is `@request.auth.claims.NAME` (nested:
/// `.a.b`, or `[a][b]` for names with dots): its path, or why it is malformed; `None`
/// for an ordinary header.
pub fn jwt_claim_path(key: &str) -> Option<Result<Vec<String>, String>> {
    let rest = key.strip_prefix("@request.auth.claims")?;
    let path: Vec<String> = if let Some(dotted) = rest.strip_prefix('.') {
        dotted.split('.').map(str::to_owned).collect()
    } else if rest.starts_with('[') && rest.ends_with(']') {
        rest[1..rest.len() - 1]
            .split("][")
            .map(str::to_owned)
            .collect()
    } else {
        vec![]
    };
    if path.is_empty() || path.iter().any(|p| p.is_empty() || p.contains(['[', ']'])) {
        return Some(Err(format!(
            "{key:?} names no claim: write @request.auth.claims.NAME (nested: .a.b, or [a][b])"
        )));
    }
    Some(Ok(path))
}

impl HttpMatchRequest {
    fn validate(&self, v: &mut Validator) {
        validate_gateways(v, &self.gateways);
        for (name, m) in [
            ("uri", &self.uri),
            ("scheme", &self.scheme),
            ("method", &self.method),
            ("authority", &self.authority),
        ] {
            if let Some(m) = m {
                v.field(name, |v| m.validate(v));
            }
        }
        v.each_entry("headers", &self.headers, |v, k, m| {
            match jwt_claim_path(k) {
                Some(Err(e)) => v.error(e),
                Some(Ok(_)) => {}
                None => validate_header_name(v, k),
            }
            m.validate(v)
        });
        v.each_entry("withoutHeaders", &self.without_headers, |v, k, m| {
            validate_header_name(v, k);
            m.validate(v)
        });
        v.each_entry("queryParams", &self.query_params, |v, _, m| m.validate(v));
        if let Some(p) = self.port {
            v.field("port", |v| validate_port(v, p));
        }
    }
}

impl HttpRetry {
    fn validate(&self, v: &mut Validator) {
        if self.attempts < 0 {
            v.field("attempts", |v| v.error("must not be negative"));
        }
        if let Some(on) = &self.retry_on {
            v.field("retryOn", |v| {
                for cond in on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    let is_status = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                    if !is_status && !RETRY_ON_CONDITIONS.contains(&cond) {
                        v.error(format!(
                            "unknown retry condition {cond:?}; use status codes or one of: {}",
                            RETRY_ON_CONDITIONS.join(", ")
                        ));
                    }
                }
            });
        }
    }
}

impl HttpFaultInjection {
    fn validate(&self, v: &mut Validator) {
        if self.delay.is_none() && self.abort.is_none() {
            v.error("set delay, abort or both");
        }
        if let Some(d) = &self.delay {
            v.field("delay", |v| {
                if d.fixed_delay.is_none() && d.exponential_delay.is_none() {
                    v.field("fixedDelay", |v| v.error("is required"));
                }
                if let Some(p) = &d.percentage {
                    v.field("percentage", |v| p.validate(v));
                }
                if let Some(p) = d.percent
                    && !(0..=100).contains(&p)
                {
                    v.field("percent", |v| {
                        v.error(format!("{p} is not between 0 and 100"))
                    });
                }
            });
        }
        if let Some(a) = &self.abort {
            v.field("abort", |v| {
                let kinds = [
                    a.http_status.is_some(),
                    a.grpc_status.is_some(),
                    a.http2_error.is_some(),
                ];
                if kinds.iter().filter(|k| **k).count() != 1 {
                    v.error("set exactly one of httpStatus, grpcStatus or http2Error");
                }
                if let Some(s) = a.http_status
                    && !(200..=599).contains(&s)
                {
                    v.field("httpStatus", |v| {
                        v.error(format!("{s} is not an HTTP status"))
                    });
                }
                if let Some(p) = &a.percentage {
                    v.field("percentage", |v| p.validate(v));
                }
            });
        }
    }
}

fn validate_weights<'a>(
    v: &mut Validator,
    dests: impl Iterator<Item = (&'a Destination, Option<i32>)>,
) {
    let dests: Vec<_> = dests.collect();
    v.each("route", &dests, |v, (d, w)| {
        v.field("destination", |v| {
            v.required("host", &d.host);
            if let Some(p) = &d.port {
                v.field("port", |v| {
                    v.field("number", |v| validate_port(v, p.number))
                });
            }
        });
        if let Some(w) = w
            && *w < 0
        {
            v.field("weight", |v| v.error(format!("{w} is negative")));
        }
    });
}

impl Destination {
    /// The subset name, if any, as the SNI and config keys spell it (empty when unset).
    pub fn subset_name(&self) -> &str {
        self.subset.as_deref().unwrap_or("")
    }
}

/// The weight a route destination gets: Istio treats a lone destination without a
/// weight as 100 and unweighted destinations among weighted ones as 0.
pub fn effective_weights(weights: &[Option<i32>]) -> Vec<u32> {
    if weights.len() == 1 {
        return vec![weights[0].map_or(100, |w| w.max(0) as u32)];
    }
    if weights.iter().all(Option::is_none) {
        // Istio spreads evenly when no weight is given at all.
        let n = weights.len() as u32;
        return (0..n).map(|i| 100 / n + u32::from(i < 100 % n)).collect();
    }
    weights
        .iter()
        .map(|w| w.unwrap_or(0).max(0) as u32)
        .collect()
}
