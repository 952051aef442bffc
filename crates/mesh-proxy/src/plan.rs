//! The outbound planner: what the sidecar does with one HTTP request, decided from
//! the config snapshot and the request's head alone, before any I/O. A [`Decision`]
//! is plain data: the route, an injected delay, and either a local answer (redirect,
//! direct response, injected abort) or a [`Plan`] to forward (destination service,
//! port, subset, policy, ready endpoints, hash, rewritten path and authority, the HTTP
//! version upstream). A [`Refusal`] carries its response flag and why. The executor in
//! [`crate::outbound`] does the I/O the plan describes: pool limits, the connection,
//! retries, mirrors and response edits.
//!
//! Randomness (fault percentages, weighted destinations, a made-up hash cookie) comes
//! in as [`Rolls`], so a plan is a pure function of its inputs and routing semantics
//! are tested as tables.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode, Uri};

use crate::error::ResponseFlag;
use crate::model::{Endpoint, Protocol, Service, ServicePort, authority_port};
use crate::policy::{DestinationPolicy, HashKey, ResolvedPolicy};
use crate::routes::{CompiledRoute, RequestView, RouteAction, pick_weighted};
use crate::state::ProxyState;

/// The request as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'r> {
    /// The request head.
    pub parts: &'r http::request::Parts,
    /// Its authority (the URI's, else the Host header).
    pub authority: &'r str,
    /// How it reached the proxy.
    pub entry: Entry,
    /// The caller's address.
    pub peer: Option<IpAddr>,
}

/// How a request reached the proxy, which decides how its routes are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Sent to the outbound listener, naming the service in its Host: the service's
    /// routes.
    Explicit,
    /// Captured on its way to this original destination: the routes of the service
    /// with that address.
    Captured(SocketAddr),
    /// On the ingress gateway's server port with this number: the routes of the
    /// virtual host its Host picks among the VirtualServices bound to the Gateways.
    Gateway(u16),
    /// On a TLS port of the ingress gateway, through the HTTPS server the handshake
    /// chose (its id): the virtual hosts of that server only.
    GatewayServer {
        /// The server port.
        port: u16,
        /// The server's id.
        server: u64,
    },
}

impl Entry {
    /// The original destination of a captured connection.
    pub fn captured(self) -> Option<SocketAddr> {
        match self {
            Self::Captured(dst) => Some(dst),
            _ => None,
        }
    }
}

/// The random samples a plan depends on, each in `[0, 1)`.
#[derive(Debug, Clone, Copy)]
pub struct Rolls {
    /// Against a fault's delay percentage.
    pub delay: f64,
    /// Against a fault's abort percentage.
    pub abort: f64,
    /// Picks among weighted destinations.
    pub destination: f64,
    /// Makes up a hash cookie's value when the client has none.
    pub cookie: fn() -> String,
}

impl Rolls {
    /// Fresh samples.
    pub fn random() -> Self {
        Self {
            delay: rand::random(),
            abort: rand::random(),
            destination: rand::random(),
            cookie: || {
                (0..16)
                    .map(|_| format!("{:x}", rand::random_range(0..16u8)))
                    .collect()
            },
        }
    }
}

/// What to do with a request.
#[derive(Debug)]
pub struct Decision<'s> {
    /// The route that matched.
    pub route: &'s CompiledRoute,
    /// A delay injected before anything else.
    pub delay: Option<Duration>,
    /// Then: answer here, or forward.
    pub action: Action<'s>,
}

/// The second half of a [`Decision`].
#[derive(Debug)]
pub enum Action<'s> {
    /// Answer without an upstream.
    Respond(Local),
    /// Send upstream.
    Forward(Box<Plan<'s>>),
}

/// A local answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    /// Status.
    pub status: StatusCode,
    /// `Location` of a redirect.
    pub location: Option<HeaderValue>,
    /// Body.
    pub body: String,
    /// The flag it is logged with (an injected abort).
    pub flag: Option<ResponseFlag>,
}

/// Where and how to forward a request.
#[derive(Debug)]
pub struct Plan<'s> {
    /// The destination service.
    pub target: &'s Arc<Service>,
    /// Its port the request goes to.
    pub port: &'s ServicePort,
    /// The subset (empty: all endpoints).
    pub subset: &'s str,
    /// The destination's DestinationRule, compiled.
    pub policy: Option<&'s DestinationPolicy>,
    /// Its traffic policy for this subset and port.
    pub resolved: Option<&'s ResolvedPolicy>,
    /// Istio's SNI of the upstream cluster (`outbound_.PORT_.SUBSET_.HOST`).
    pub sni: Arc<str>,
    /// The consistent-hash value, when the policy hashes and the key is present.
    pub hash: Option<u64>,
    /// A `Set-Cookie` for a hash cookie made up for this client.
    pub set_cookie: Option<HeaderValue>,
    /// The ready endpoints of the subset.
    pub candidates: Vec<&'s Arc<Endpoint>>,
    /// The upstream URI (path rewritten, authority rewritten or the target's).
    pub uri: Uri,
    /// HTTP/1.1 upstream (else multiplexed HTTP/2).
    pub http1: bool,
}

/// Why a request cannot be planned.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Why: it decides the flag and status ([`Why::flag`]), and its text is the
    /// response body and the access log's detail.
    pub why: Why,
    /// The route that matched, when one did.
    pub route: Option<String>,
    /// The upstream cluster's SNI and service, when the destination was known.
    pub upstream: Option<(Arc<str>, Arc<Service>)>,
}

/// The reasons a request has no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    /// Neither the captured address nor the Host names a known service.
    #[error("no service named {0:?}")]
    NoService(String),
    /// No Gateway server on the port serves the Host.
    #[error("no virtual host for {host:?} on gateway port {port}")]
    NoVirtualHost {
        /// The request's Host.
        host: String,
        /// The server port.
        port: u16,
    },
    /// The service's routes (its VirtualService) match nothing in the request.
    #[error("no route of {0} matches")]
    NoRouteMatches(String),
    /// Every destination of the route has weight 0.
    #[error("every destination has weight 0")]
    AllWeightsZero,
    /// A route names a host that is not a known service.
    #[error("unknown service {0}")]
    UnknownService(String),
    /// The destination service has no port the request can use.
    #[error("{0} has no port")]
    NoPort(String),
    /// A route names a subset no DestinationRule defines.
    #[error(transparent)]
    UnknownSubset(#[from] crate::policy::UnknownSubset),
    /// The destination (subset) has no ready endpoint.
    #[error("no ready endpoint for {0}")]
    NoReadyEndpoint(Arc<str>),
    /// A rewrite made a URI that is not valid.
    #[error("cannot build upstream URI: {0}")]
    BadUpstreamUri(String),
}

impl Why {
    /// The one place a refusal's flag is chosen (and with it the status).
    pub fn flag(&self) -> ResponseFlag {
        match self {
            Self::NoService(_)
            | Self::NoVirtualHost { .. }
            | Self::NoRouteMatches(_)
            | Self::BadUpstreamUri(_) => ResponseFlag::NoRoute,
            Self::AllWeightsZero
            | Self::UnknownService(_)
            | Self::NoPort(_)
            | Self::UnknownSubset(_)
            | Self::NoReadyEndpoint(_) => ResponseFlag::NoHealthyUpstream,
        }
    }
}

impl Refusal {
    fn new(why: Why) -> Self {
        Self {
            why,
            route: None,
            upstream: None,
        }
    }

    /// The flag and status the request is answered with.
    pub fn flag(&self) -> ResponseFlag {
        self.why.flag()
    }
}

/// Plans one request.
pub fn plan<'s>(
    state: &'s ProxyState,
    req: Inputs<'_>,
    rolls: &Rolls,
) -> Result<Decision<'s>, Refusal> {
    let Inputs {
        parts,
        authority,
        entry,
        peer,
    } = req;
    let (routes, owner, req_port, gateway, captured) = routes_for(state, entry, authority)?;
    let view = request_view(parts, authority, req_port);
    let route = routes
        .iter()
        .find(|r| r.matches(&view))
        .ok_or_else(|| Refusal::new(Why::NoRouteMatches(owner.to_owned())))?;
    let refuse = |why: Why| Refusal {
        route: Some(route.name.clone()),
        ..Refusal::new(why)
    };
    let fault = route.fault.as_ref();
    let delay = fault
        .and_then(|f| f.delay)
        .filter(|(_, pct)| rolls.delay * 100.0 < *pct)
        .map(|(d, _)| d);
    let decided = |action| Decision {
        route,
        delay,
        action,
    };
    if let Some((status, _)) = fault
        .and_then(|f| f.abort)
        .filter(|(_, pct)| rolls.abort * 100.0 < *pct)
    {
        return Ok(decided(Action::Respond(Local {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            location: None,
            body: "fault filter abort".into(),
            flag: Some(ResponseFlag::FaultInjected),
        })));
    }
    let dests = match &route.action {
        RouteAction::Forward(d) => d,
        RouteAction::Redirect {
            uri,
            authority: new_auth,
            scheme,
            code,
        } => {
            let location = redirect_location(
                request_scheme(parts),
                scheme.as_deref(),
                new_auth.as_deref().unwrap_or(authority),
                uri.as_deref(),
                &parts.uri,
            );
            return Ok(decided(Action::Respond(Local {
                status: StatusCode::from_u16(*code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                location: HeaderValue::from_str(&location).ok(),
                body: String::new(),
                flag: None,
            })));
        }
        RouteAction::DirectResponse { status, body } => {
            return Ok(decided(Action::Respond(Local {
                status: StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                location: None,
                body: body.clone(),
                flag: None,
            })));
        }
    };
    let dest =
        pick_weighted(dests, rolls.destination).ok_or_else(|| refuse(Why::AllWeightsZero))?;
    // A captured connection to one endpoint of a headless service (or one address of
    // a ServiceEntry with resolution NONE) goes to that endpoint.
    let pinned = captured.filter(|s| s.headless && s.host == dest.host);
    let target = pinned
        .or_else(|| state.services.get(&dest.host))
        .ok_or_else(|| refuse(Why::UnknownService(dest.host.clone())))?;
    let port = target
        .port(dest.port.or(Some(req_port)))
        .or_else(|| target.port(None))
        .ok_or_else(|| refuse(Why::NoPort(target.host.clone())))?;
    let sni = port.sni(&dest.subset, &target.host);
    let refuse_at = |why: Why| Refusal {
        upstream: Some((sni.clone(), target.clone())),
        ..refuse(why)
    };
    let policy = state.policies.get(&dest.host).map(Arc::as_ref);
    let resolved = policy.and_then(|p| p.resolve(&dest.subset, port.port));
    let (hash, set_cookie) = hashing(resolved, parts, peer, rolls);
    let candidates =
        DestinationPolicy::select(policy, target, &dest.subset).map_err(|e| refuse_at(e.into()))?;
    if candidates.is_empty() {
        return Err(refuse_at(Why::NoReadyEndpoint(sni.clone())));
    }
    let matched_prefix = route
        .matches
        .iter()
        .find(|m| m.matches(&view))
        .and_then(|m| m.uri_prefix());
    // A gateway forwards the Host the client sent, as Istio's gateways do; a sidecar
    // names the destination service.
    let keep = gateway.then_some(authority);
    let uri = upstream_uri(route, port, keep, &parts.uri, matched_prefix)
        .map_err(|e| refuse_at(Why::BadUpstreamUri(e.to_string())))?;
    // Istio's default h2UpgradePolicy: HTTP/1.1 stays HTTP/1.1 between sidecars;
    // HTTP/2 and gRPC (or a port declared http2/grpc) use multiplexed HTTP/2, as does
    // HTTP/1.1 under `h2UpgradePolicy: UPGRADE`.
    let http1 = parts.version <= http::Version::HTTP_11
        && !matches!(port.protocol, Protocol::Http2 | Protocol::Grpc)
        && !resolved.is_some_and(|r| r.h2_upgrade);
    Ok(decided(Action::Forward(Box::new(Plan {
        target,
        port,
        subset: &dest.subset,
        policy,
        resolved,
        sni,
        hash,
        set_cookie,
        candidates,
        uri,
        http1,
    }))))
}

/// What [`routes_for`] finds: the routes, who owns them, the port matches see,
/// whether the request came through the ingress gateway, and the service a captured
/// connection was sent to.
type Found<'s> = (
    &'s [CompiledRoute],
    &'s str,
    u16,
    bool,
    Option<&'s Arc<Service>>,
);

/// The routes a request is matched against, who owns them (for a refusal), the port
/// its matches see, whether it came through the ingress gateway, and the service the
/// captured connection was sent to (pinned to one endpoint for a headless service).
fn routes_for<'s>(
    state: &'s ProxyState,
    entry: Entry,
    authority: &str,
) -> Result<Found<'s>, Refusal> {
    let gateway = match entry {
        Entry::Gateway(port) => Some((port, None)),
        Entry::GatewayServer { port, server } => Some((port, Some(server))),
        _ => None,
    };
    if let Some((port, server)) = gateway {
        let no_host = || {
            Refusal::new(Why::NoVirtualHost {
                host: authority.to_owned(),
                port,
            })
        };
        let (server, vh) = state
            .ingress
            .as_deref()
            .and_then(|i| i.listeners.get(&port))
            .and_then(|l| l.virtual_host(authority, server))
            .ok_or_else(no_host)?;
        let routes: &[CompiledRoute] = if server.https_redirect {
            std::slice::from_ref(CompiledRoute::https_redirect())
        } else {
            &vh.routes
        };
        return Ok((routes, &vh.domain, port, true, None));
    }
    let captured = entry.captured();
    let by_ip = captured.and_then(|dst| state.service_for_ip(dst.ip()));
    let service = match captured {
        Some(_) => by_ip,
        None => state.service_for_authority(authority),
    }
    .ok_or_else(|| Refusal::new(Why::NoService(authority.to_owned())))?;
    let req_port = captured
        .map(|d| d.port())
        .or_else(|| authority_port(authority))
        .or_else(|| service.port(None).map(|p| p.port))
        .unwrap_or(80);
    let routes = state
        .routes
        .get(&service.host)
        .map_or(&[][..], |r| r.as_slice());
    Ok((routes, &service.host, req_port, false, by_ip))
}

/// What route matches see of a request.
fn request_view<'r>(
    parts: &'r http::request::Parts,
    authority: &'r str,
    port: u16,
) -> RequestView<'r> {
    RequestView {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        authority,
        scheme: request_scheme(parts),
        headers: &parts.headers,
        port,
        // Set by the ingress gateway when the request's JWT was verified.
        claims: parts
            .extensions
            .get::<Arc<crate::jwt::RequestAuth>>()
            .map(|a| &a.claims),
    }
}

/// What this proxy does with a request and why, from its live state (`meshctl
/// diagnose`): the service the request names and each of its routes, whether it
/// matches (the first that does is used), then, for each destination of that route
/// with its weight, the decision [`plan`] makes, the same planner every request goes
/// through: the service, port, subset, DestinationRule policy, the endpoints it
/// chooses among (cluster, locality, through a gateway or not) and the mTLS SNI, or
/// why the request is refused. Faults are listed, not rolled.
pub fn explain(
    state: &ProxyState,
    parts: &http::request::Parts,
    authority: &str,
) -> serde_json::Value {
    use serde_json::json;
    let entry = Entry::Explicit;
    let refused = |r: &Refusal| {
        json!({
            "flag": r.flag().code(),
            "status": r.why.flag().status().as_u16(),
            "reason": r.why.to_string(),
            "route": r.route,
        })
    };
    let (routes, owner, port, _, _) = match routes_for(state, entry, authority) {
        Ok(found) => found,
        Err(r) => return json!({ "authority": authority, "refused": refused(&r) }),
    };
    let view = request_view(parts, authority, port);
    let tried: Vec<_> = routes
        .iter()
        .map(|r| json!({ "route": r.name, "matches": r.matches(&view) }))
        .collect();
    let mut out = json!({
        "authority": authority,
        "service": owner,
        "port": port,
        "routes": tried,
    });
    let Some(route) = routes.iter().find(|r| r.matches(&view)) else {
        out["refused"] = refused(&Refusal::new(Why::NoRouteMatches(owner.to_owned())));
        return out;
    };
    out["route"] = json!(route.name);
    if let Some(f) = &route.fault {
        out["fault"] = json!({
            "delay": f.delay.map(|(d, pct)| json!({ "delay": format!("{d:?}"), "percent": pct })),
            "abort": f.abort.map(|(status, pct)| json!({ "status": status, "percent": pct })),
        });
    }
    let no_fault = |destination: f64| Rolls {
        delay: 1.0,
        abort: 1.0,
        destination,
        cookie: || "diagnose".into(),
    };
    let inputs = || Inputs {
        parts,
        authority,
        entry,
        peer: None,
    };
    let RouteAction::Forward(dests) = &route.action else {
        out["decision"] = match plan(state, inputs(), &no_fault(0.0)) {
            Ok(Decision {
                action: Action::Respond(l),
                ..
            }) => {
                json!({ "respond": l.status.as_u16(), "location": l.location.and_then(|v| v.to_str().ok().map(str::to_owned)) })
            }
            Ok(_) => json!(null),
            Err(r) => json!({ "refused": refused(&r) }),
        };
        return out;
    };
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    let mut before = 0u64;
    let mut decisions = Vec::new();
    for d in dests {
        // The roll that lands on this destination.
        let roll = (before as f64 + f64::from(d.weight) / 2.0) / total.max(1) as f64;
        before += u64::from(d.weight);
        let decided = match plan(state, inputs(), &no_fault(roll)) {
            Err(r) => json!({ "refused": refused(&r) }),
            Ok(Decision {
                action: Action::Respond(l),
                ..
            }) => json!({ "respond": l.status.as_u16() }),
            Ok(Decision {
                action: Action::Forward(p),
                ..
            }) => {
                let endpoints: Vec<_> = p
                    .candidates
                    .iter()
                    .map(|e| {
                        json!({
                            "address": e.inbound.to_string(),
                            "cluster": e.cluster,
                            "network": e.network,
                            "locality": e.locality,
                            "labels": e.labels,
                            "weight": e.weight,
                            "stale": e.stale,
                            "through_gateway": e.through_gateway(&state.node),
                            "tunnel": if e.quic { "quic" } else { "tcp" },
                        })
                    })
                    .collect();
                let security = match p.resolved {
                    Some(r) if r.plaintext => "plaintext (DestinationRule tls DISABLE)",
                    Some(r) if r.origination.is_some() => {
                        "TLS originated by this proxy (DestinationRule tls)"
                    }
                    _ if p.target.location == crate::model::Location::External => {
                        "plaintext (MESH_EXTERNAL)"
                    }
                    _ => "mutual TLS (ISTIO_MUTUAL)",
                };
                json!({
                    "service": p.target.host,
                    "namespace": p.target.namespace,
                    "port": p.port.port,
                    "target_port": p.port.target_port,
                    "subset": p.subset,
                    "destination_rule": p.policy.map(|pol| pol.rule.clone()),
                    "load_balancer": p.resolved.and_then(|r| r.lb).map(|lb| format!("{lb:?}")),
                    "outlier_detection": p.resolved.and_then(|r| r.outlier.clone()),
                    "locality": p.resolved.and_then(|r| r.locality.clone()),
                    "sni": &*p.sni,
                    "security": security,
                    "endpoints": endpoints,
                })
            }
        };
        decisions.push(json!({
            "host": d.host,
            "subset": d.subset,
            "weight": d.weight,
            "decision": decided,
        }));
    }
    out["destinations"] = json!(decisions);
    out
}

/// How a request arrived at the proxy when the gateway terminated TLS for it (a
/// request extension; origin-form requests carry no scheme of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme(pub &'static str);

/// The request's scheme: its URI's, else what the gateway recorded, else `http`.
fn request_scheme(parts: &http::request::Parts) -> &str {
    parts
        .uri
        .scheme_str()
        .or_else(|| parts.extensions.get::<Scheme>().map(|s| s.0))
        .unwrap_or("http")
}

/// A redirect's `Location`: the scheme (the request's unless changed), the authority
/// (a default port dropped when the scheme changes), and the new path or the
/// request's path and query.
fn redirect_location(
    current: &str,
    scheme: Option<&str>,
    authority: &str,
    path: Option<&str>,
    uri: &Uri,
) -> String {
    let authority = match scheme {
        Some(s) if s != current => authority
            .strip_suffix(":80")
            .or_else(|| authority.strip_suffix(":443"))
            .unwrap_or(authority),
        _ => authority,
    };
    let path = path.unwrap_or_else(|| uri.path_and_query().map_or("/", |pq| pq.as_str()));
    format!("{}://{authority}{path}", scheme.unwrap_or(current))
}

/// The URI a request goes upstream with: the route's authority rewrite or the port's
/// `host:port`, and the path as sent or as the route rewrites it.
fn upstream_uri(
    route: &CompiledRoute,
    port: &ServicePort,
    keep: Option<&str>,
    uri: &Uri,
    matched_prefix: Option<&str>,
) -> Result<Uri, http::Error> {
    let authority = match (&route.rewrite_authority, keep, &port.authority) {
        (Some(a), _, _) => http::uri::Authority::try_from(a.as_str())?,
        (None, Some(a), _) => http::uri::Authority::try_from(a)?,
        (None, None, Some(a)) => a.clone(),
        // A host that makes no authority: the builder says why.
        (None, None, None) => http::uri::Authority::try_from("")?,
    };
    let path_and_query = match (&route.rewrite_uri, uri.path_and_query()) {
        (None, Some(pq)) => pq.clone(),
        (rewrite, _) => http::uri::PathAndQuery::try_from(rewrite_path(
            uri,
            rewrite.as_deref(),
            matched_prefix,
        ))?,
    };
    Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
}

/// The consistent-hash value of a request and, for an `httpCookie` with a TTL that
/// the client does not have yet, the cookie made up for it (hashed on, and handed to
/// the client so that its next requests stick to the same endpoint).
fn hashing(
    resolved: Option<&ResolvedPolicy>,
    parts: &http::request::Parts,
    peer: Option<IpAddr>,
    rolls: &Rolls,
) -> (Option<u64>, Option<HeaderValue>) {
    let Some(key) = resolved.and_then(|r| r.hash_key.as_ref()) else {
        return (None, None);
    };
    if let Some(hash) = request_hash(key, parts, peer) {
        return (Some(hash), None);
    }
    let HashKey::Cookie {
        name,
        ttl: Some(ttl),
        path,
    } = key
    else {
        return (None, None);
    };
    let value = (rolls.cookie)();
    let cookie = HeaderValue::from_str(&format!(
        "{name}={value}; Path={}; Max-Age={}; HttpOnly",
        path.as_deref().unwrap_or("/"),
        ttl.as_secs().max(1)
    ))
    .ok();
    (Some(crate::lb::hash_of(value)), cookie)
}

/// The consistent-hash value of a request, when its key is present.
fn request_hash(key: &HashKey, parts: &http::request::Parts, peer: Option<IpAddr>) -> Option<u64> {
    let value: String = match key {
        HashKey::Header(name) => parts.headers.get(name.as_str())?.to_str().ok()?.to_owned(),
        HashKey::Cookie { name, .. } => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.to_owned())
            })?,
        HashKey::Query(name) => parts.uri.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_owned())
        })?,
        HashKey::SourceIp => peer?.to_string(),
    };
    Some(crate::lb::hash_of(value))
}

/// Istio's `rewrite.uri`: replaces the matched prefix (or the whole path otherwise).
pub(crate) fn rewrite_path(
    uri: &Uri,
    rewrite: Option<&str>,
    matched_prefix: Option<&str>,
) -> String {
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let Some(new) = rewrite else {
        return format!("{path}{query}");
    };
    let rewritten = match matched_prefix {
        Some(prefix) if path.starts_with(prefix) => {
            let rest = &path[prefix.len()..];
            if new.ends_with('/') && rest.starts_with('/') {
                format!("{new}{}", &rest[1..])
            } else {
                format!("{new}{rest}")
            }
        }
        _ => new.to_owned(),
    };
    let rewritten = if rewritten.is_empty() {
        "/".to_owned()
    } else {
        rewritten
    };
    format!("{rewritten}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: web-1, namespace: shop, serviceAccount: web}
services:
- name: reviews
  namespace: shop
  addresses: [10.96.0.7]
  ports: [{name: http, port: 9080}, {name: grpc, port: 9090}]
  endpoints:
  - {address: 10.1.0.1, inboundPort: 15006, labels: {version: v1}}
  - {address: 10.1.0.2, inboundPort: 15006, labels: {version: v2}}
  - {address: 10.1.0.3, inboundPort: 15006, labels: {version: v2}, ready: false}
- name: ratings
  namespace: shop
  ports: [{name: http, port: 9080}]
  endpoints: []
";

    fn state(istio: &str) -> ProxyState {
        let text = if istio.is_empty() {
            NODE.to_owned()
        } else {
            format!("{NODE}---\n{istio}")
        };
        let bundle = crate::config::ConfigBundle::from_yaml(&text, "test").unwrap();
        ProxyState::compile(&bundle, "test").unwrap()
    }

    fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn rolls(sample: f64) -> Rolls {
        Rolls {
            delay: sample,
            abort: sample,
            destination: sample,
            cookie: || "c0ffee".into(),
        }
    }

    /// What one request is planned to: the outcome in one line.
    fn outcome(state: &ProxyState, uri: &str, headers: &[(&str, &str)], sample: f64) -> String {
        outcome_at(state, Entry::Explicit, uri, headers, sample)
    }

    /// As [`outcome`], for a request that entered as `entry`.
    fn outcome_at(
        state: &ProxyState,
        entry: Entry,
        uri: &str,
        headers: &[(&str, &str)],
        sample: f64,
    ) -> String {
        let parts = head("GET", uri, headers);
        let authority = parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let inputs = Inputs {
            parts: &parts,
            authority: &authority,
            entry,
            peer: Some("10.0.0.9".parse().unwrap()),
        };
        match plan(state, inputs, &rolls(sample)) {
            Err(r) => format!("refused {} {}", r.flag().code(), r.why),
            Ok(d) => {
                let delay = d.delay.map(|d| format!(" after {d:?}")).unwrap_or_default();
                match d.action {
                    Action::Respond(l) => format!(
                        "respond {}{}{delay}",
                        l.status.as_u16(),
                        l.location
                            .map(|v| format!(" {}", v.to_str().unwrap()))
                            .unwrap_or_default()
                    ),
                    Action::Forward(p) => {
                        let mut eps: Vec<String> = p
                            .candidates
                            .iter()
                            .map(|e| e.inbound.ip().to_string())
                            .collect();
                        eps.sort();
                        format!(
                            "{} {} [{}] {}{}{delay}",
                            p.sni,
                            p.uri,
                            eps.join(" "),
                            if p.http1 { "h1" } else { "h2" },
                            p.hash.map(|_| " hashed").unwrap_or_default(),
                        )
                    }
                }
            }
        }
    }

    /// A table row: state, URI, headers, roll, the outcome wanted.
    type Row<'a> = (
        &'a ProxyState,
        &'a str,
        &'a [(&'a str, &'a str)],
        f64,
        &'a str,
    );

    const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

    #[test]
    fn routing_decisions_as_a_table() {
        let base = state("");
        let routed = state(&format!(
            "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - match: [{{uri: {{prefix: /old/}}}}]
    rewrite: {{uri: /new/}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - match: [{{uri: {{prefix: /moved}}}}]
    redirect: {{uri: /elsewhere, authority: ratings}}
  - match: [{{uri: {{prefix: /secure}}}}]
    redirect: {{scheme: https}}
  - match: [{{uri: {{exact: /teapot}}}}]
    directResponse: {{status: 418, body: {{string: short and stout}}}}
  - match: [{{uri: {{prefix: /split}}}}]
    route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 80}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 20}}
  - match: [{{uri: {{prefix: /faulty}}}}]
    fault: {{delay: {{fixedDelay: 2s, percentage: {{value: 50}}}}, abort: {{httpStatus: 503, percentage: {{value: 10}}}}}}
    route: [{{destination: {{host: reviews}}}}]
  - match: [{{uri: {{prefix: /nowhere}}}}]
    route: [{{destination: {{host: reviews, subset: v9}}}}]
  - match: [{{uri: {{prefix: /empty}}}}]
    route: [{{destination: {{host: ratings}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
"
        ));
        let rows: &[Row<'_>] = &[
            // No VirtualService: every ready endpoint, HTTP/1.1 kept.
            (
                &base,
                "http://reviews:9080/a?b=1",
                &[],
                0.5,
                "outbound_.9080_._.reviews.shop.svc.cluster.local http://reviews.shop.svc.cluster.local:9080/a?b=1 [10.1.0.1 10.1.0.2] h1",
            ),
            (
                &base,
                "http://unknown:80/",
                &[],
                0.5,
                "refused NR no service named \"unknown:80\"",
            ),
            // A gRPC port is multiplexed HTTP/2 upstream.
            (
                &base,
                "http://reviews:9090/",
                &[],
                0.5,
                "outbound_.9090_._.reviews.shop.svc.cluster.local http://reviews.shop.svc.cluster.local:9090/ [10.1.0.1 10.1.0.2] h2",
            ),
            // Header match first.
            (
                &routed,
                "http://reviews:9080/x",
                &[("end-user", "jason")],
                0.5,
                "outbound_.9080_.v2_.reviews.shop.svc.cluster.local http://reviews.shop.svc.cluster.local:9080/x [10.1.0.2] h1",
            ),
            // Prefix rewrite keeps the rest of the path and the query.
            (
                &routed,
                "http://reviews:9080/old/page?q=1",
                &[],
                0.5,
                "outbound_.9080_.v1_.reviews.shop.svc.cluster.local http://reviews.shop.svc.cluster.local:9080/new/page?q=1 [10.1.0.1] h1",
            ),
            (
                &routed,
                "http://reviews:9080/moved/x",
                &[],
                0.5,
                "respond 301 http://ratings/elsewhere",
            ),
            // A scheme redirect keeps the host, a port that is not the default, the
            // path and the query.
            (
                &routed,
                "http://reviews:9080/secure/a?b=1",
                &[],
                0.5,
                "respond 301 https://reviews:9080/secure/a?b=1",
            ),
            (
                &routed,
                "http://reviews:9080/teapot",
                &[],
                0.5,
                "respond 418",
            ),
            // Weighted destinations by the roll: 80/20.
            (
                &routed,
                "http://reviews:9080/split",
                &[],
                0.1,
                "outbound_.9080_.v1_.reviews.shop.svc.cluster.local http://reviews.shop.svc.cluster.local:9080/split [10.1.0.1] h1",
            ),
            (
                &routed,
                "http://reviews:9080/split",
                &[],
                0.9,
                "outbound_.9080_.v2_.reviews.shop.svc.cluster.local http://reviews.shop.svc.cluster.local:9080/split [10.1.0.2] h1",
            ),
            // Faults by their percentages: delayed and aborted, delayed only, neither.
            (
                &routed,
                "http://reviews:9080/faulty",
                &[],
                0.05,
                "respond 503 after 2s",
            ),
            (
                &routed,
                "http://reviews:9080/faulty",
                &[],
                0.3,
                "outbound_.9080_._.reviews.shop.svc.cluster.local http://reviews.shop.svc.cluster.local:9080/faulty [10.1.0.1 10.1.0.2] h1 after 2s",
            ),
            (
                &routed,
                "http://reviews:9080/faulty",
                &[],
                0.7,
                "outbound_.9080_._.reviews.shop.svc.cluster.local http://reviews.shop.svc.cluster.local:9080/faulty [10.1.0.1 10.1.0.2] h1",
            ),
            // Refusals carry their flag.
            (
                &routed,
                "http://reviews:9080/nowhere",
                &[],
                0.5,
                "refused UH subset \"v9\" of reviews.shop.svc.cluster.local is not defined by any DestinationRule",
            ),
            (
                &routed,
                "http://reviews:9080/empty",
                &[],
                0.5,
                "refused UH no ready endpoint for outbound_.9080_._.ratings.shop.svc.cluster.local",
            ),
            (
                &routed,
                "http://reviews:9080/else",
                &[],
                0.5,
                "outbound_.9080_.v1_.reviews.shop.svc.cluster.local http://reviews.shop.svc.cluster.local:9080/else [10.1.0.1] h1",
            ),
        ];
        for (state, uri, headers, sample, want) in rows {
            assert_eq!(
                outcome(state, uri, headers, *sample),
                *want,
                "{uri} {headers:?} roll {sample}"
            );
        }
    }

    #[test]
    fn consistent_hashing_and_the_made_up_cookie() {
        let s = state(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: sticky, ttl: 60s}}
",
        );
        let plan_of = |headers: &[(&str, &str)]| {
            let parts = head("GET", "http://reviews:9080/", headers);
            let inputs = Inputs {
                parts: &parts,
                authority: "reviews:9080",
                entry: Entry::Explicit,
                peer: None,
            };
            match plan(&s, inputs, &rolls(0.5)).unwrap().action {
                Action::Forward(p) => (p.hash, p.set_cookie),
                Action::Respond(l) => panic!("{l:?}"),
            }
        };
        // With the cookie: hashed on it, nothing to set.
        let (with, none) = plan_of(&[("cookie", "a=1; sticky=abc")]);
        assert_eq!(with, Some(crate::lb::hash_of("abc".to_owned())));
        assert!(none.is_none());
        // Without: one is made up, hashed on, and handed to the client.
        let (made, cookie) = plan_of(&[]);
        assert_eq!(made, Some(crate::lb::hash_of("c0ffee".to_owned())));
        assert_eq!(
            cookie.unwrap().to_str().unwrap(),
            "sticky=c0ffee; Path=/; Max-Age=60; HttpOnly"
        );
    }

    /// An ingress gateway routes by its Gateway servers' virtual hosts: the Host picks
    /// the VirtualService bound to the Gateway, the port picks the server, and the
    /// client's Host goes upstream.
    #[test]
    fn a_gateway_routes_by_server_port_and_host() {
        let text = NODE.replace(
            "node: {name: web-1, namespace: shop, serviceAccount: web}",
            "node: {name: ingress-1, namespace: istio-system, serviceAccount: ingress, ingress: true, labels: {istio: ingressgateway}}",
        );
        let istio = format!(
            "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: public, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ['shop.example.com']
  - port: {{number: 8080, name: to-https, protocol: HTTP}}
    hosts: ['*']
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: front, namespace: shop}}
spec:
  hosts: ['shop.example.com']
  gateways: [public]
  http:
  - match: [{{uri: {{prefix: /api}}, port: 80}}]
    route:
    - {{destination: {{host: reviews, subset: v1, port: {{number: 9080}}}}, weight: 90}}
    - {{destination: {{host: reviews, subset: v2, port: {{number: 9080}}}}, weight: 10}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mesh-only, namespace: shop}}
spec:
  hosts: ['shop.example.com']
  http:
  - route: [{{destination: {{host: ratings}}}}]
"
        );
        let bundle =
            crate::config::ConfigBundle::from_yaml(&format!("{text}---\n{istio}"), "test").unwrap();
        let gw = ProxyState::compile(&bundle, "test").unwrap();
        let rows: &[(Entry, &str, f64, &str)] = &[
            (
                Entry::Gateway(80),
                "http://shop.example.com/api/items",
                0.5,
                "outbound_.9080_.v1_.reviews.shop.svc.cluster.local http://shop.example.com/api/items [10.1.0.1] h1",
            ),
            (
                Entry::Gateway(80),
                "http://shop.example.com:80/api",
                0.95,
                "outbound_.9080_.v2_.reviews.shop.svc.cluster.local http://shop.example.com:80/api [10.1.0.2] h1",
            ),
            (
                Entry::Gateway(80),
                "http://shop.example.com/other",
                0.5,
                "refused NR no route of shop.example.com matches",
            ),
            (
                Entry::Gateway(80),
                "http://elsewhere.example.com/api",
                0.5,
                "refused NR no virtual host for \"elsewhere.example.com\" on gateway port 80",
            ),
            (
                Entry::Gateway(8080),
                "http://shop.example.com:8080/api?x=1",
                0.5,
                "respond 301 https://shop.example.com:8080/api?x=1",
            ),
            (
                Entry::Gateway(443),
                "http://shop.example.com/api",
                0.5,
                "refused NR no virtual host for \"shop.example.com\" on gateway port 443",
            ),
            // The same proxy's sidecar routes are not the gateway's.
            (
                Entry::Explicit,
                "http://shop.example.com/api",
                0.5,
                "refused NR no service named \"shop.example.com\"",
            ),
        ];
        for (entry, uri, roll, want) in rows {
            assert_eq!(
                outcome_at(&gw, *entry, uri, &[], *roll),
                *want,
                "{entry:?} {uri}"
            );
        }
        // A sidecar serves no Gateway, even one whose selector its labels match.
        let sidecar = state(&istio.replace("istio: ingressgateway", "app: web"));
        assert!(sidecar.ingress.is_none());
        assert!(
            outcome_at(
                &sidecar,
                Entry::Gateway(80),
                "http://shop.example.com/api",
                &[],
                0.5
            )
            .starts_with("refused NR no virtual host")
        );
    }

    #[test]
    fn a_captured_connection_is_planned_by_its_original_destination() {
        let s = state("");
        let parts = head("GET", "/", &[("host", "whatever")]);
        let inputs = Inputs {
            parts: &parts,
            authority: "whatever",
            entry: Entry::Captured("10.96.0.7:9090".parse().unwrap()),
            peer: None,
        };
        let Action::Forward(p) = plan(&s, inputs, &rolls(0.5)).unwrap().action else {
            panic!("not forwarded");
        };
        assert_eq!(&*p.sni, "outbound_.9090_._.reviews.shop.svc.cluster.local");
    }

    #[test]
    fn explain_lists_the_routes_tried_and_plans_each_destination() {
        let s = state(&format!(
            "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - name: testers
    match: [{{headers: {{x-tester: {{exact: 'on'}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - name: split
    route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 80}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 20}}
"
        ));
        let explained = |headers: &[(&str, &str)]| {
            let parts = head("GET", "http://reviews:9080/x", headers);
            explain(&s, &parts, "reviews:9080")
        };
        // The first route does not match; the split does, and each of its
        // destinations is planned with its own endpoints.
        let e = explained(&[]);
        assert_eq!(e["service"], "reviews.shop.svc.cluster.local");
        assert_eq!(e["routes"][0]["matches"], false);
        assert_eq!(e["routes"][1]["matches"], true);
        assert_eq!(e["route"], e["routes"][1]["route"]);
        let d = &e["destinations"];
        assert_eq!(
            (d[0]["subset"].as_str(), d[0]["weight"].as_u64()),
            (Some("v1"), Some(80))
        );
        assert_eq!(
            (d[1]["subset"].as_str(), d[1]["weight"].as_u64()),
            (Some("v2"), Some(20))
        );
        let addresses = |i: usize| -> Vec<String> {
            d[i]["decision"]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["address"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(addresses(0), ["10.1.0.1:15006"]);
        assert_eq!(addresses(1), ["10.1.0.2:15006"]);
        assert_eq!(
            d[1]["decision"]["sni"],
            "outbound_.9080_.v2_.reviews.shop.svc.cluster.local"
        );
        assert_eq!(d[1]["decision"]["security"], "mutual TLS (ISTIO_MUTUAL)");
        // With the header, the first route matches.
        let e = explained(&[("x-tester", "on")]);
        assert_eq!(e["routes"][0]["matches"], true);
        assert_eq!(e["destinations"].as_array().unwrap().len(), 1);
        // A name the proxy does not know is refused, as the request would be.
        let parts = head("GET", "http://nope:80/", &[]);
        let e = explain(&s, &parts, "nope:80");
        assert_eq!(e["refused"]["status"], 404, "{e}");
        assert!(
            e["refused"]["reason"].as_str().unwrap().contains("nope"),
            "{e}"
        );
    }

    #[test]
    fn a_none_entry_sends_each_connection_to_the_address_it_was_sent_to() {
        let s = state(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.example]
  addresses: [192.0.2.10, 192.0.2.11]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 8080, name: http, protocol: HTTP}]
",
        );
        // Captured: the address it was sent to, and only it (resolution NONE).
        for ip in ["192.0.2.10", "192.0.2.11"] {
            let got = outcome_at(
                &s,
                Entry::Captured(format!("{ip}:8080").parse().unwrap()),
                "http://legacy.example:8080/",
                &[],
                0.5,
            );
            assert!(got.contains(&format!("[{ip}]")), "{got}");
        }
        // By name (explicit mode): one of the entry's addresses.
        let got = outcome(&s, "http://legacy.example:8080/", &[], 0.5);
        assert!(got.contains("[192.0.2.10 192.0.2.11]"), "{got}");
    }
}
