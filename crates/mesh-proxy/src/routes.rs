//! HTTP routes compiled from VirtualServices: regexes built once, host names resolved,
//! weights summed, and conditions that depend only on this proxy (`sourceLabels`,
//! `sourceNamespace`, `gateways`) decided at compile time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use mesh_api::common::{StringMatch, StringMatchKind};
use mesh_api::networking::{HttpMatchRequest, HttpRoute, HttpRouteDestination};
use regex::Regex;

use crate::config::Node;
use crate::model::resolve_host;

/// A compiled string condition.
#[derive(Debug, Clone)]
pub enum StrMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole value matches (RE2 semantics: anchored at both ends).
    Regex(Regex),
}

impl StrMatch {
    fn compile(m: &StringMatch, ignore_case: bool) -> Result<Self, String> {
        let lower = |s: &str| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_owned()
            }
        };
        match m.kind() {
            Some(StringMatchKind::Exact(s)) => Ok(Self::Exact(lower(s))),
            Some(StringMatchKind::Prefix(s)) => Ok(Self::Prefix(lower(s))),
            Some(StringMatchKind::Regex(r)) => {
                let flags = if ignore_case { "(?i)" } else { "" };
                Regex::new(&format!("{flags}^(?:{r})$"))
                    .map(Self::Regex)
                    .map_err(|e| e.to_string())
            }
            None => Err("set exactly one of exact, prefix or regex".into()),
        }
    }

    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }
}

/// What a request looks like to the router.
#[derive(Debug)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: Option<&'a str>,
    /// Authority (Host), port included if given.
    pub authority: &'a str,
    /// Scheme.
    pub scheme: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Destination port.
    pub port: u16,
    /// The claims of the request's verified JWT (at the ingress gateway), if any.
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// One compiled match block (all fields ANDed).
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    uri: Option<StrMatch>,
    ignore_uri_case: bool,
    scheme: Option<StrMatch>,
    method: Option<StrMatch>,
    authority: Option<StrMatch>,
    headers: Vec<(HeaderName, StrMatch)>,
    without_headers: Vec<(HeaderName, StrMatch)>,
    /// `@request.auth.claims` conditions: the claim's path and the match.
    claims: Vec<(Vec<String>, StrMatch)>,
    query: Vec<(String, StrMatch)>,
    port: Option<u16>,
}

/// Whether the claim at `path` is a string that `m` matches, or a list holding one
/// (Istio's rule for list claims such as groups).
fn claim_matches(
    claims: Option<&serde_json::Map<String, serde_json::Value>>,
    path: &[String],
    m: &StrMatch,
) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let mut value = claims.and_then(|c| c.get(first));
    for key in rest {
        value = value.and_then(|v| v.get(key));
    }
    match value {
        Some(serde_json::Value::String(s)) => m.matches(s),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .any(|i| i.as_str().is_some_and(|s| m.matches(s))),
        _ => false,
    }
}

impl RouteMatch {
    /// The `uri.prefix` of this match, which `rewrite.uri` replaces.
    pub fn uri_prefix(&self) -> Option<&str> {
        match &self.uri {
            Some(StrMatch::Prefix(p)) => Some(p),
            _ => None,
        }
    }

    /// Whether the request meets every condition.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(p) = self.port
            && p != req.port
        {
            return false;
        }
        if let Some(m) = &self.uri {
            let ok = if self.ignore_uri_case {
                m.matches(&req.path.to_ascii_lowercase())
            } else {
                m.matches(req.path)
            };
            if !ok {
                return false;
            }
        }
        let single = |m: &Option<StrMatch>, v: &str| m.as_ref().is_none_or(|m| m.matches(v));
        if !single(&self.scheme, req.scheme)
            || !single(&self.method, req.method)
            || !single(&self.authority, req.authority)
        {
            return false;
        }
        for (name, m) in &self.headers {
            let ok = req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)));
            if !ok {
                return false;
            }
        }
        if !self
            .claims
            .iter()
            .all(|(path, m)| claim_matches(req.claims, path, m))
        {
            return false;
        }
        for (name, m) in &self.without_headers {
            if req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
            {
                return false;
            }
        }
        for (key, m) in &self.query {
            let found = req.query.unwrap_or_default().split('&').any(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                k == key && m.matches(v)
            });
            if !found {
                return false;
            }
        }
        true
    }
}

/// A destination with its share of traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedDestination {
    /// Fully qualified service host.
    pub host: String,
    /// Subset name ("" for none).
    pub subset: String,
    /// Service port, when the route names one.
    pub port: Option<u16>,
    /// Relative weight.
    pub weight: u32,
}

/// What a matching route does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Forward to one of these destinations by weight.
    Forward(Vec<WeightedDestination>),
    /// Answer with a redirect.
    Redirect {
        /// New path, if any.
        uri: Option<String>,
        /// New authority, if any.
        authority: Option<String>,
        /// New scheme, if any.
        scheme: Option<String>,
        /// Status (3xx).
        code: u16,
    },
    /// Answer directly.
    DirectResponse {
        /// Status.
        status: u16,
        /// Body.
        body: String,
    },
}

/// A compiled HTTP route.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Name for logs (`namespace/vs-name[.route-name]`).
    pub name: String,
    /// Match blocks, ORed; empty matches everything.
    pub matches: Vec<RouteMatch>,
    /// The action.
    pub action: RouteAction,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// Prefix or path rewrite.
    pub rewrite_uri: Option<String>,
    /// Authority rewrite.
    pub rewrite_authority: Option<String>,
    /// Request header edits: set, add, remove.
    pub request_headers: HeaderEdits,
    /// Response header edits.
    pub response_headers: HeaderEdits,
    /// Retry policy.
    pub retry: crate::retry::RetryPolicy,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Mirror targets with the percentage of requests copied to each.
    pub mirrors: Vec<(WeightedDestination, f64)>,
}

/// Injected faults of a route: each applies to its share of requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fault {
    /// Delay and the percentage of requests delayed.
    pub delay: Option<(Duration, f64)>,
    /// HTTP status and the percentage of requests aborted.
    pub abort: Option<(u16, f64)>,
}

impl Fault {
    fn compile(f: &mesh_api::networking::HttpFaultInjection) -> Self {
        // Istio: without a percentage, every request gets the fault.
        let pct = |p: Option<mesh_api::common::Percent>, legacy: Option<i32>| {
            p.map(|p| p.value)
                .or(legacy.map(f64::from))
                .unwrap_or(100.0)
        };
        Self {
            delay: f.delay.as_ref().and_then(|d| {
                d.fixed_delay
                    .map(|t| (t.as_std(), pct(d.percentage, d.percent)))
            }),
            abort: f.abort.as_ref().map(|a| {
                let status = a
                    .http_status
                    .map_or_else(|| grpc_abort_status(a.grpc_status.as_deref()), |s| s as u16);
                (status, pct(a.percentage, None))
            }),
        }
    }
}

/// gRPC aborts answer with the HTTP status gRPC maps that code to.
fn grpc_abort_status(code: Option<&str>) -> u16 {
    match code.unwrap_or_default() {
        "UNAVAILABLE" => 503,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" | "UNIMPLEMENTED" => 404,
        "DEADLINE_EXCEEDED" => 504,
        _ => 500,
    }
}

/// Header edits of a route.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    /// Overwrite.
    pub set: Vec<(String, String)>,
    /// Append.
    pub add: Vec<(String, String)>,
    /// Remove.
    pub remove: Vec<String>,
}

impl CompiledRoute {
    /// Whether the request matches this route.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }

    /// The one route of a Gateway server with `tls.httpsRedirect`: a 301 to `https`.
    pub fn https_redirect() -> &'static Self {
        static ROUTE: std::sync::LazyLock<CompiledRoute> =
            std::sync::LazyLock::new(|| CompiledRoute {
                name: "https-redirect".into(),
                action: RouteAction::Redirect {
                    uri: None,
                    authority: None,
                    scheme: Some("https".into()),
                    code: 301,
                },
                ..CompiledRoute::default_for("")
            });
        &ROUTE
    }

    /// The route a service gets when no VirtualService names it: all traffic to it.
    pub fn default_for(host: &str) -> Self {
        Self {
            name: format!("default/{host}"),
            matches: Vec::new(),
            action: RouteAction::Forward(vec![WeightedDestination {
                host: host.to_owned(),
                subset: String::new(),
                port: None,
                weight: 1,
            }]),
            timeout: None,
            rewrite_uri: None,
            rewrite_authority: None,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            retry: crate::retry::RetryPolicy::compile(None),
            fault: None,
            mirrors: Vec::new(),
        }
    }

    /// Compiles one `http` entry of a VirtualService in `namespace` for a proxy that
    /// serves the gateways `serves` ([`MESH`] for a sidecar, `namespace/name` of each
    /// Gateway for a gateway workload). Returns `None` when the route can never apply
    /// to this proxy (source labels, namespace or gateways exclude it).
    pub(crate) fn compile(
        vs_key: &str,
        namespace: &str,
        index: usize,
        route: &HttpRoute,
        node: &Node,
        serves: &BTreeSet<String>,
    ) -> Result<Option<Self>, String> {
        let mut matches = Vec::new();
        for (mi, m) in route.matches.iter().enumerate() {
            if !applies_to_node(m, node, namespace, serves) {
                continue;
            }
            matches.push(compile_match(m).map_err(|e| format!("http[{index}].match[{mi}]: {e}"))?);
        }
        if !route.matches.is_empty() && matches.is_empty() {
            return Ok(None);
        }
        let action = if let Some(r) = &route.redirect {
            RouteAction::Redirect {
                uri: r.uri.clone(),
                authority: r.authority.clone(),
                scheme: r.scheme.clone(),
                code: r.effective_code() as u16,
            }
        } else if let Some(d) = &route.direct_response {
            RouteAction::DirectResponse {
                status: d.status as u16,
                body: d
                    .body
                    .as_ref()
                    .and_then(|b| b.string.clone())
                    .unwrap_or_default(),
            }
        } else {
            RouteAction::Forward(weighted(&route.route, namespace))
        };
        let edits = |ops: Option<&mesh_api::common::HeaderOperations>| {
            ops.map(|o| HeaderEdits {
                set: pairs(&o.set),
                add: pairs(&o.add),
                remove: o.remove.clone(),
            })
            .unwrap_or_default()
        };
        let headers = route.headers.as_ref();
        Ok(Some(Self {
            name: match &route.name {
                Some(n) => format!("{vs_key}.{n}"),
                None => format!("{vs_key}#{index}"),
            },
            matches,
            action,
            timeout: route.timeout.filter(|t| !t.is_zero()).map(|t| t.as_std()),
            rewrite_uri: route.rewrite.as_ref().and_then(|r| r.uri.clone()),
            rewrite_authority: route.rewrite.as_ref().and_then(|r| r.authority.clone()),
            request_headers: edits(headers.and_then(|h| h.request.as_ref())),
            response_headers: edits(headers.and_then(|h| h.response.as_ref())),
            retry: crate::retry::RetryPolicy::compile(route.retries.as_ref()),
            fault: route.fault.as_ref().map(Fault::compile),
            mirrors: compile_mirrors(route, namespace),
        }))
    }
}

/// An Istio `Destination` resolved from `namespace`, with a weight.
fn destination(
    d: &mesh_api::networking::Destination,
    namespace: &str,
    weight: u32,
) -> WeightedDestination {
    WeightedDestination {
        host: resolve_host(&d.host, namespace),
        subset: d.subset_name().to_owned(),
        port: d.port.map(|p| p.number as u16),
        weight,
    }
}

fn compile_mirrors(route: &HttpRoute, namespace: &str) -> Vec<(WeightedDestination, f64)> {
    let target = |d: &mesh_api::networking::Destination| destination(d, namespace, 1);
    let mut out = Vec::new();
    if let Some(m) = &route.mirror {
        // Istio: mirrorPercentage, else the deprecated mirrorPercent, else 100.
        let pct = route
            .mirror_percentage
            .map(|p| p.value)
            .or(route.mirror_percent.map(f64::from))
            .unwrap_or(100.0);
        out.push((target(m), pct));
    }
    for m in &route.mirrors {
        out.push((
            target(&m.destination),
            m.percentage.map_or(100.0, |p| p.value),
        ));
    }
    out
}

fn pairs(m: &BTreeMap<String, String>) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The gateway name of sidecars in `gateways` lists.
pub const MESH: &str = "mesh";

/// The key of a gateway named in a VirtualService of `namespace`: `mesh` stays, a
/// bare name is a Gateway of the VirtualService's namespace, `ns/name` is itself.
pub fn gateway_key(name: &str, namespace: &str) -> String {
    if name == MESH || name.contains('/') {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// Whether a `gateways` list binds to a proxy serving `serves` (an empty list means
/// sidecars only, as in Istio).
pub fn binds(gateways: &[String], namespace: &str, serves: &BTreeSet<String>) -> bool {
    if gateways.is_empty() {
        return serves.contains(MESH);
    }
    gateways
        .iter()
        .any(|g| serves.contains(&gateway_key(g, namespace)))
}

fn applies_to_node(
    m: &HttpMatchRequest,
    node: &Node,
    namespace: &str,
    serves: &BTreeSet<String>,
) -> bool {
    let labels_ok = m
        .source_labels
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let ns_ok = m
        .source_namespace
        .as_ref()
        .is_none_or(|ns| *ns == node.namespace);
    // A match without gateways takes the VirtualService's, already checked.
    let gw_ok = m.gateways.is_empty() || binds(&m.gateways, namespace, serves);
    labels_ok && ns_ok && gw_ok
}

fn compile_match(m: &HttpMatchRequest) -> Result<RouteMatch, String> {
    let one =
        |sm: &Option<StringMatch>, name: &str, ic: bool| -> Result<Option<StrMatch>, String> {
            sm.as_ref()
                .map(|s| StrMatch::compile(s, ic).map_err(|e| format!("{name}: {e}")))
                .transpose()
        };
    let header_list = |map: &BTreeMap<String, StringMatch>,
                       field: &str|
     -> Result<Vec<(HeaderName, StrMatch)>, String> {
        map.iter()
            .filter(|(k, _)| !k.starts_with("@request.auth.claims"))
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("{field}: {k:?} is not a header name"))?;
                Ok((
                    name,
                    StrMatch::compile(v, false).map_err(|e| format!("{field}[{k}]: {e}"))?,
                ))
            })
            .collect()
    };
    Ok(RouteMatch {
        uri: one(&m.uri, "uri", m.ignore_uri_case)?,
        ignore_uri_case: m.ignore_uri_case,
        scheme: one(&m.scheme, "scheme", false)?,
        method: one(&m.method, "method", false)?,
        authority: one(&m.authority, "authority", false)?,
        headers: header_list(&m.headers, "headers")?,
        without_headers: header_list(&m.without_headers, "withoutHeaders")?,
        claims: m
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let path = mesh_api::networking::jwt_claim_path(k)?;
                Some(path.and_then(|p| {
                    Ok((
                        p,
                        StrMatch::compile(v, false).map_err(|e| format!("headers[{k}]: {e}"))?,
                    ))
                }))
            })
            .collect::<Result<_, String>>()?,
        query: m
            .query_params
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    StrMatch::compile(v, false).map_err(|e| format!("queryParams[{k}]: {e}"))?,
                ))
            })
            .collect::<Result<_, String>>()?,
        port: m.port.map(|p| p as u16),
    })
}

fn weighted(dests: &[HttpRouteDestination], namespace: &str) -> Vec<WeightedDestination> {
    let weights: Vec<_> = dests.iter().map(|d| d.weight).collect();
    let effective = mesh_api::networking::effective_weights(&weights);
    dests
        .iter()
        .zip(effective)
        .map(|(d, weight)| destination(&d.destination, namespace, weight))
        .collect()
}

/// Picks a destination by weight; `sample` is uniform in [0, 1).
pub fn pick_weighted(dests: &[WeightedDestination], sample: f64) -> Option<&WeightedDestination> {
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = (sample * total as f64) as u64;
    for d in dests {
        if point < u64::from(d.weight) {
            return Some(d);
        }
        point -= u64::from(d.weight);
    }
    dests.last()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(subset: &str, weight: u32) -> WeightedDestination {
        WeightedDestination {
            host: "r".into(),
            subset: subset.into(),
            port: None,
            weight,
        }
    }

    #[test]
    fn weighted_pick_follows_the_weights() {
        let d = [dest("v1", 90), dest("v3", 10)];
        assert_eq!(pick_weighted(&d, 0.0).unwrap().subset, "v1");
        assert_eq!(pick_weighted(&d, 0.899).unwrap().subset, "v1");
        assert_eq!(pick_weighted(&d, 0.9).unwrap().subset, "v3");
        assert_eq!(pick_weighted(&d, 0.9999).unwrap().subset, "v3");
        assert!(pick_weighted(&[dest("v1", 0)], 0.5).is_none());
    }

    fn route(yaml: &str, node: &Node) -> Option<CompiledRoute> {
        let r: HttpRoute = serde_saphyr::from_str(yaml).unwrap();
        let mesh = BTreeSet::from([MESH.to_owned()]);
        CompiledRoute::compile("shop/reviews", "shop", 0, &r, node, &mesh).unwrap()
    }

    fn view<'a>(path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path,
            query,
            authority: "reviews.shop:9080",
            scheme: "http",
            headers,
            port: 9080,
            claims: None,
        }
    }

    /// Each field of an HTTP match, with a request it accepts and one it refuses.
    #[test]
    fn http_match_fields_select_requests() {
        let node = Node {
            namespace: "shop".into(),
            labels: [("app".to_owned(), "productpage".to_owned())].into(),
            ..Default::default()
        };
        let none = HeaderMap::new();
        let mut jason = HeaderMap::new();
        jason.insert("end-user", "jason".parse().unwrap());
        let cases: &[(&str, RequestView<'_>, RequestView<'_>)] = &[
            (
                "{uri: {exact: /a}}",
                view("/a", None, &none),
                view("/a/b", None, &none),
            ),
            (
                "{uri: {prefix: /a}}",
                view("/a/b", None, &none),
                view("/b", None, &none),
            ),
            (
                "{uri: {regex: '/a/[0-9]+'}}",
                view("/a/12", None, &none),
                view("/a/x", None, &none),
            ),
            (
                "{uri: {exact: /abc}, ignoreUriCase: true}",
                view("/ABC", None, &none),
                view("/ABD", None, &none),
            ),
            (
                "{method: {exact: GET}}",
                view("/", None, &none),
                RequestView {
                    method: "POST",
                    ..view("/", None, &none)
                },
            ),
            (
                "{scheme: {exact: http}}",
                view("/", None, &none),
                RequestView {
                    scheme: "https",
                    ..view("/", None, &none)
                },
            ),
            (
                "{authority: {prefix: reviews}}",
                view("/", None, &none),
                RequestView {
                    authority: "ratings:9080",
                    ..view("/", None, &none)
                },
            ),
            (
                "{headers: {end-user: {exact: jason}}}",
                view("/", None, &jason),
                view("/", None, &none),
            ),
            (
                "{withoutHeaders: {end-user: {exact: jason}}}",
                view("/", None, &none),
                view("/", None, &jason),
            ),
            (
                "{queryParams: {v: {exact: '2'}}}",
                view("/", Some("a=1&v=2"), &none),
                view("/", Some("v=3"), &none),
            ),
            (
                "{port: 9080}",
                view("/", None, &none),
                RequestView {
                    port: 9081,
                    ..view("/", None, &none)
                },
            ),
        ];
        for (m, yes, no) in cases {
            let r = route(
                &format!("{{match: [{m}], route: [{{destination: {{host: reviews}}}}]}}"),
                &node,
            )
            .unwrap();
            assert!(r.matches(yes), "{m} should accept {yes:?}");
            assert!(!r.matches(no), "{m} should refuse {no:?}");
        }
        // Matches on the caller: routes that cannot apply to this proxy are left out.
        for (m, applies) in [
            ("{sourceLabels: {app: productpage}}", true),
            ("{sourceLabels: {app: ratings}}", false),
            ("{sourceNamespace: shop}", true),
            ("{sourceNamespace: other}", false),
            ("{gateways: [mesh]}", true),
            ("{gateways: [shop/ingress]}", false),
        ] {
            let r = route(
                &format!("{{match: [{m}], route: [{{destination: {{host: reviews}}}}]}}"),
                &node,
            );
            assert_eq!(r.is_some(), applies, "{m}");
        }
    }

    /// Each field of an HTTP route that is not a match, as the executor receives it.
    #[test]
    fn http_route_fields_compile_as_written() {
        let node = Node::default();
        let r = route(
            "{name: primary, timeout: 2s, rewrite: {uri: /v2, authority: reviews-v2}, \
              headers: {request: {set: {x-a: '1'}, add: {x-b: '2'}, remove: [x-c]}, response: {set: {x-d: '4'}, remove: [server]}}, \
              retries: {attempts: 4, perTryTimeout: 500ms, retryOn: 'gateway-error,reset'}, \
              mirror: {host: shadow}, mirrorPercent: 30, \
              mirrors: [{destination: {host: shadow2, subset: v9, port: {number: 7070}}, percentage: {value: 12.5}}], \
              route: [{destination: {host: reviews, subset: v1, port: {number: 9080}}, weight: 80}, {destination: {host: reviews, subset: v2}, weight: 20}]}",
            &node,
        )
        .unwrap();
        assert_eq!(r.name, "shop/reviews.primary");
        assert_eq!(r.timeout, Some(Duration::from_secs(2)));
        assert_eq!(r.rewrite_uri.as_deref(), Some("/v2"));
        assert_eq!(r.rewrite_authority.as_deref(), Some("reviews-v2"));
        assert_eq!(r.request_headers.set, [("x-a".to_owned(), "1".to_owned())]);
        assert_eq!(r.request_headers.add, [("x-b".to_owned(), "2".to_owned())]);
        assert_eq!(r.request_headers.remove, ["x-c"]);
        assert_eq!(r.response_headers.set, [("x-d".to_owned(), "4".to_owned())]);
        assert_eq!(r.response_headers.remove, ["server"]);
        assert_eq!(r.retry.attempts, 4);
        assert_eq!(r.retry.per_try_timeout, Some(Duration::from_millis(500)));
        assert_eq!(r.mirrors.len(), 2);
        assert_eq!(
            (r.mirrors[0].0.host.as_str(), r.mirrors[0].1),
            ("shadow.shop.svc.cluster.local", 30.0)
        );
        assert_eq!(
            (
                r.mirrors[1].0.subset.as_str(),
                r.mirrors[1].0.port,
                r.mirrors[1].1
            ),
            ("v9", Some(7070), 12.5)
        );
        let RouteAction::Forward(d) = &r.action else {
            panic!("{:?}", r.action)
        };
        assert_eq!(
            d.iter()
                .map(|d| (d.subset.as_str(), d.port, d.weight))
                .collect::<Vec<_>>(),
            [("v1", Some(9080), 80), ("v2", None, 20)]
        );
        let r = route(
            "{redirect: {uri: /new, authority: new.example, redirectCode: 308}}",
            &node,
        )
        .unwrap();
        let RouteAction::Redirect {
            uri,
            authority,
            code,
            ..
        } = &r.action
        else {
            panic!()
        };
        assert_eq!(
            (uri.as_deref(), authority.as_deref(), *code),
            (Some("/new"), Some("new.example"), 308)
        );
        let r = route(
            "{directResponse: {status: 418, body: {string: teapot}}}",
            &node,
        )
        .unwrap();
        assert!(
            matches!(&r.action, RouteAction::DirectResponse { status: 418, body } if body == "teapot")
        );
    }

    #[test]
    fn fault_percent_and_grpc_abort() {
        let node = Node::default();
        let r = route(
            "{fault: {delay: {percent: 40, fixedDelay: 1s}, abort: {grpcStatus: UNAVAILABLE, percentage: {value: 5}}}, \
              route: [{destination: {host: reviews}}]}",
            &node,
        )
        .unwrap();
        let f = r.fault.unwrap();
        assert_eq!(
            f.delay,
            Some((Duration::from_secs(1), 40.0)),
            "deprecated percent read as percentage"
        );
        assert_eq!(
            f.abort,
            Some((503, 5.0)),
            "grpcStatus UNAVAILABLE answers 503"
        );
    }

    #[test]
    fn tcp_routes_match_ports() {
        let route: mesh_api::networking::TcpRoute = serde_saphyr::from_str(
            "{match: [{port: 5432, gateways: [mesh]}, {port: 5433}], route: [{destination: {host: db, subset: primary, port: {number: 5432}}, weight: 75}, {destination: {host: db-replica}, weight: 25}]}",
        )
        .unwrap();
        let c = CompiledTcpRoute::compile(&route, "shop");
        assert_eq!(c.ports, [5432, 5433]);
        assert_eq!(
            c.destinations
                .iter()
                .map(|d| (d.host.as_str(), d.subset.as_str(), d.port, d.weight))
                .collect::<Vec<_>>(),
            [
                ("db.shop.svc.cluster.local", "primary", Some(5432), 75),
                ("db-replica.shop.svc.cluster.local", "", None, 25)
            ]
        );
    }

    #[test]
    fn regex_matches_the_whole_value() {
        let m = StrMatch::compile(
            &StringMatch {
                regex: Some("/api/v[12]".into()),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        assert!(m.matches("/api/v1"));
        assert!(
            !m.matches("/api/v1/extra"),
            "RE2 semantics in Istio: full match"
        );
    }
}

/// A compiled `tcp` route of a VirtualService.
#[derive(Debug, Clone)]
pub struct CompiledTcpRoute {
    /// Destination ports it applies to (any when empty).
    pub ports: Vec<u16>,
    /// Weighted destinations.
    pub destinations: Vec<WeightedDestination>,
}

/// The weighted destinations of an L4 (`tcp` or `tls`) route.
fn l4_destinations(
    route: &[mesh_api::networking::RouteDestination],
    namespace: &str,
) -> Vec<WeightedDestination> {
    let weights: Vec<_> = route.iter().map(|d| d.weight).collect();
    route
        .iter()
        .zip(mesh_api::networking::effective_weights(&weights))
        .map(|(d, weight)| destination(&d.destination, namespace, weight))
        .collect()
}

impl CompiledTcpRoute {
    pub(crate) fn compile(route: &mesh_api::networking::TcpRoute, namespace: &str) -> Self {
        Self {
            ports: route
                .matches
                .iter()
                .filter_map(|m| m.port.map(|p| p as u16))
                .collect(),
            destinations: l4_destinations(&route.route, namespace),
        }
    }
}

/// A compiled `tls` route of a VirtualService: unterminated TLS routed by the SNI of
/// the client's ClientHello (and the destination port).
#[derive(Debug, Clone)]
pub struct CompiledTlsRoute {
    /// Match blocks, ORed: (SNI patterns, port).
    pub matches: Vec<(Vec<String>, Option<u16>)>,
    /// Weighted destinations.
    pub destinations: Vec<WeightedDestination>,
}

impl CompiledTlsRoute {
    pub(crate) fn compile(route: &mesh_api::networking::TlsRoute, namespace: &str) -> Self {
        Self {
            matches: route
                .matches
                .iter()
                .map(|m| {
                    let hosts = m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
                    (hosts, m.port.map(|p| p as u16))
                })
                .collect(),
            destinations: l4_destinations(&route.route, namespace),
        }
    }

    /// Whether a connection to `port` whose ClientHello names `sni` takes this route.
    pub fn matches(&self, sni: &str, port: u16) -> bool {
        self.matches.iter().any(|(hosts, p)| {
            p.is_none_or(|p| p == port) && hosts.iter().any(|h| sni_matches(h, sni))
        })
    }
}

/// Istio's host pattern rule for `sniHosts`: `*` matches any name, `*.example.com`
/// any name under `example.com`, anything else the name itself (case-insensitive).
pub fn sni_matches(pattern: &str, sni: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            sni.len() > suffix.len()
                && sni
                    .get(sni.len() - suffix.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        }
        None => pattern.eq_ignore_ascii_case(sni),
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn sni_patterns_follow_istio_host_rules() {
        assert!(sni_matches("*", "anything.example"));
        assert!(sni_matches("*.shop.example", "v2.shop.example"));
        assert!(sni_matches("*.shop.example", "a.b.SHOP.example"));
        assert!(!sni_matches("*.shop.example", "shop.example"));
        assert!(!sni_matches("*.shop.example", "evilshop.example"));
        assert!(sni_matches("api.shop.example", "API.shop.example"));
        assert!(!sni_matches("api.shop.example", "api.shop.example.evil"));
    }

    #[test]
    fn a_route_needs_its_port_and_one_of_its_names() {
        let route: mesh_api::networking::TlsRoute = serde_saphyr::from_str(
            "match: [{sniHosts: [v2.shop.example], port: 8443}, {sniHosts: ['*.beta.example']}]
route: [{destination: {host: secure, subset: v2}}]",
        )
        .unwrap();
        let c = CompiledTlsRoute::compile(&route, "shop");
        assert!(c.matches("v2.shop.example", 8443));
        assert!(!c.matches("v2.shop.example", 9443), "port must match");
        assert!(c.matches("x.beta.example", 1));
        assert!(!c.matches("v1.shop.example", 8443));
        assert_eq!(c.destinations[0].host, "secure.shop.svc.cluster.local");
        assert_eq!(c.destinations[0].subset, "v2");
    }
}
