//! Outbound HTTP in explicit mode: the application sends its request to the sidecar
//! (HTTP/1.1 or h2c), naming the service in the Host/authority. The sidecar routes it
//! by the VirtualService, picks an endpoint of the chosen subset, and forwards it over
//! mTLS to that endpoint's sidecar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use mesh_telemetry::metrics::{MeshMetrics, PeerLabels, RequestLabels};

use crate::error::ResponseFlag;
use crate::http_util::{Body, boxed, flagged, full};
use crate::pool::MeshPool;
use crate::routes::{HeaderEdits, RequestView, RouteAction, pick_weighted};
use crate::sni::outbound_sni;
use crate::state::{DestinationPolicy, StateStore, authority_port};

/// Everything the outbound handler needs, shared by all connections.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Live config.
    pub store: Arc<StateStore>,
    /// Upstream connections.
    pub pool: MeshPool,
    /// Istio-standard metrics.
    pub metrics: MeshMetrics,
    /// This workload's SPIFFE ID.
    pub own_id: String,
    /// Requests in flight (shared with the inbound side), for draining.
    pub in_flight: crate::http_util::InFlight,
    /// Passive health of endpoints, kept across config updates.
    pub health: crate::lb::HealthTracker,
    /// Round-robin position for services without a DestinationRule.
    pub round_robin: Arc<std::sync::atomic::AtomicUsize>,
    /// Span export and trace propagation.
    pub tracing: mesh_telemetry::trace::Tracing,
    /// Connection-pool limits (circuit breaking).
    pub limits: crate::lb::PoolLimits,
}

/// Largest request body held in memory so that it can be retried.
const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// What happened to one request, for the access log.
#[derive(Debug, Default)]
struct Outcome {
    route: String,
    upstream_host: String,
    upstream_cluster: String,
    flag: Option<ResponseFlag>,
    peers: Option<PeerLabels>,
    trace: Option<mesh_telemetry::trace::TraceParent>,
}

impl Outbound {
    /// Handles one request from the application. `captured` is the original
    /// destination of a transparently captured connection; `peer` the caller's IP.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        captured: Option<SocketAddr>,
        peer: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        let _in_flight = self.in_flight.start();
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let authority = authority_of(&req);
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let request_bytes = crate::http_util::content_length(req.headers());
        let parent = mesh_telemetry::trace::TraceParent::from_headers(req.headers());
        let mut span = self
            .tracing
            .start(|| format!("{authority}/*"), false, parent);
        let mut outcome = Outcome {
            trace: Some(span.context()),
            ..Default::default()
        };
        let resp = self
            .route(req, &authority, captured, peer, &mut outcome)
            .await;
        let state = self.store.snapshot();
        let node = &state.node;
        if span.is_recording() {
            span.set(crate::peer::node_span_attributes(node));
            span.set([
                ("http.method", method.to_string()),
                ("http.url", format!("http://{authority}{path}")),
                ("upstream_cluster", outcome.upstream_cluster.clone()),
                ("upstream_host", outcome.upstream_host.clone()),
                ("source_cluster", node.cluster.clone()),
                (
                    "destination_cluster",
                    outcome
                        .peers
                        .as_ref()
                        .map(|p| p.destination_cluster.clone())
                        .unwrap_or_default(),
                ),
            ]);
        }
        self.metrics.request(
            &RequestLabels {
                peers: outcome.peers.clone().unwrap_or_else(|| PeerLabels {
                    reporter: "source".into(),
                    destination_service: authority.clone(),
                    ..Default::default()
                }),
                request_protocol: if grpc { "grpc" } else { "http" }.into(),
                response_code: resp.status().as_u16().to_string(),
                grpc_response_status: resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                response_flags: outcome.flag.map_or("-", ResponseFlag::code).to_owned(),
            },
            started.elapsed().as_secs_f64() * 1000.0,
            request_bytes,
            crate::http_util::content_length(resp.headers()),
        );
        tracing::info!(
            target: "access",
            direction = "outbound",
            method = %method,
            path = %path,
            authority = %authority,
            status = resp.status().as_u16(),
            response_flags = outcome.flag.map_or("-", ResponseFlag::code),
            route = %outcome.route,
            upstream_host = %outcome.upstream_host,
            upstream_cluster = %outcome.upstream_cluster,
            duration_ms = started.elapsed().as_millis() as u64,
        );
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        authority: &str,
        captured: Option<SocketAddr>,
        peer: Option<std::net::IpAddr>,
        out: &mut Outcome,
    ) -> Response<Body> {
        let state = self.store.snapshot();
        let fail = |out: &mut Outcome, flag: ResponseFlag, detail: &str| {
            out.flag = Some(flag);
            flagged(flag, detail)
        };
        let service = match captured {
            Some(dst) => state.service_for_ip(dst.ip()),
            None => state.service_for_authority(authority),
        };
        let Some(service) = service else {
            return fail(
                out,
                ResponseFlag::NoRoute,
                &format!("no service named {authority:?}"),
            );
        };
        let req_port = captured
            .map(|d| d.port())
            .or_else(|| authority_port(authority))
            .or_else(|| service.port(None).map(|p| p.port))
            .unwrap_or(80);
        let routes = state.routes.get(&service.host).cloned().unwrap_or_default();
        let (parts, body) = req.into_parts();
        let view = RequestView {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            authority,
            scheme: parts.uri.scheme_str().unwrap_or("http"),
            headers: &parts.headers,
            port: req_port,
        };
        let Some(route) = routes.iter().find(|r| r.matches(&view)) else {
            return fail(
                out,
                ResponseFlag::NoRoute,
                &format!("no route of {} matches", service.host),
            );
        };
        out.route = route.name.clone();
        let matched_prefix = route
            .matches
            .iter()
            .find(|m| m.matches(&view))
            .and_then(|m| m.uri_prefix())
            .map(str::to_owned);
        if let Some(fault) = &route.fault {
            let roll = |pct: f64| rand::random::<f64>() * 100.0 < pct;
            if let Some((delay, pct)) = fault.delay
                && roll(pct)
            {
                out.flag = Some(ResponseFlag::DelayInjected);
                tokio::time::sleep(delay).await;
            }
            if let Some((status, pct)) = fault.abort
                && roll(pct)
            {
                out.flag = Some(ResponseFlag::FaultInjected);
                let mut r = Response::new(full("fault filter abort"));
                *r.status_mut() = http::StatusCode::from_u16(status)
                    .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
                return r;
            }
        }
        let dests = match &route.action {
            RouteAction::Forward(d) => d,
            RouteAction::Redirect {
                uri,
                authority: new_auth,
                code,
            } => {
                let location = format!(
                    "http://{}{}",
                    new_auth.as_deref().unwrap_or(authority),
                    uri.as_deref().unwrap_or(parts.uri.path())
                );
                let mut r = Response::new(full(""));
                *r.status_mut() = http::StatusCode::from_u16(*code)
                    .unwrap_or(http::StatusCode::MOVED_PERMANENTLY);
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                return r;
            }
            RouteAction::DirectResponse { status, body } => {
                let mut r = Response::new(full(body.clone()));
                *r.status_mut() =
                    http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::OK);
                return r;
            }
        };
        let Some(dest) = pick_weighted(dests, rand::random::<f64>()) else {
            return fail(
                out,
                ResponseFlag::NoHealthyUpstream,
                "every destination has weight 0",
            );
        };
        let Some(target) = state.services.get(&dest.host) else {
            return fail(
                out,
                ResponseFlag::NoHealthyUpstream,
                &format!("unknown service {}", dest.host),
            );
        };
        let Some(port) = target
            .port(dest.port.or(Some(req_port)))
            .or_else(|| target.port(None))
        else {
            return fail(
                out,
                ResponseFlag::NoHealthyUpstream,
                &format!("{} has no port", target.host),
            );
        };
        let policy = state.policies.get(&dest.host).map(Arc::as_ref);
        let resolved = policy.and_then(|p| p.resolve(&dest.subset, port.port));
        let hash_key = resolved.and_then(|r| r.hash_key.as_ref());
        let mut hash = hash_key.and_then(|k| request_hash(k, &parts, peer));
        // httpCookie with a TTL and no cookie yet: make one up, hash on it, and hand it
        // to the client so its next requests stick to the same endpoint.
        let mut set_cookie = None;
        if let (
            None,
            Some(crate::state::HashKey::Cookie {
                name,
                ttl: Some(ttl),
                path,
            }),
        ) = (hash, hash_key)
        {
            let value: String = (0..16)
                .map(|_| format!("{:x}", rand::random_range(0..16u8)))
                .collect();
            hash = Some(crate::lb::hash_of(value.clone()));
            set_cookie = http::HeaderValue::from_str(&format!(
                "{name}={value}; Path={}; Max-Age={}; HttpOnly",
                path.as_deref().unwrap_or("/"),
                ttl.as_secs().max(1)
            ))
            .ok();
        }
        out.upstream_cluster = outbound_sni(port.port, &dest.subset, &target.host);
        out.peers = Some(crate::peer::source_report(
            &state.node,
            &self.own_id,
            target,
            None,
            self.trust_domain(),
        ));
        let candidates = match DestinationPolicy::select(policy, target, &dest.subset) {
            Ok(c) => c,
            Err(e) => return fail(out, ResponseFlag::NoHealthyUpstream, &e),
        };
        if candidates.is_empty() {
            return fail(
                out,
                ResponseFlag::NoHealthyUpstream,
                &format!("no ready endpoint for {}", out.upstream_cluster),
            );
        }

        let _slot = match self
            .limits
            .acquire(
                &out.upstream_cluster,
                resolved.and_then(|r| r.max_requests),
                resolved.and_then(|r| r.max_pending),
            )
            .await
        {
            Ok(slot) => slot,
            Err(crate::lb::Overflow) => {
                return fail(
                    out,
                    ResponseFlag::UpstreamOverflow,
                    &format!("connection pool of {} is full", out.upstream_cluster),
                );
            }
        };
        let mut upstream = Request::from_parts(parts, boxed(body));
        let path_and_query = rewrite_path(
            upstream.uri(),
            route.rewrite_uri.as_deref(),
            matched_prefix.as_deref(),
        );
        let new_authority = route
            .rewrite_authority
            .clone()
            .unwrap_or_else(|| format!("{}:{}", target.host, port.port));
        match Uri::builder()
            .scheme("http")
            .authority(new_authority.as_str())
            .path_and_query(path_and_query)
            .build()
        {
            Ok(uri) => *upstream.uri_mut() = uri,
            Err(e) => {
                return fail(
                    out,
                    ResponseFlag::NoRoute,
                    &format!("cannot build upstream URI: {e}"),
                );
            }
        }
        // Istio's default h2UpgradePolicy: HTTP/1.1 stays HTTP/1.1 between sidecars;
        // HTTP/2 and gRPC (or a port declared http2/grpc) use multiplexed HTTP/2, as
        // does HTTP/1.1 under `h2UpgradePolicy: UPGRADE`. The pool writes the Host
        // header for HTTP/1.1.
        let http1 = upstream.version() <= http::Version::HTTP_11
            && !matches!(
                port.protocol,
                crate::state::Protocol::Http2 | crate::state::Protocol::Grpc
            )
            && !resolved.is_some_and(|r| r.h2_upgrade);
        *upstream.version_mut() = if http1 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_2
        };
        upstream.headers_mut().remove(http::header::HOST);
        strip_hop_by_hop(upstream.headers_mut());
        apply_edits(upstream.headers_mut(), &route.request_headers);
        if let Ok(v) = HeaderValue::from_str(&crate::peer::encode(&state.node)) {
            upstream.headers_mut().insert(crate::peer::PEER_HEADER, v);
        }
        if let Some(t) = out.trace {
            t.inject(upstream.headers_mut());
        }

        // A request can be sent again only if its body is held in memory: small bodies
        // of known length are; others get a single try, as in Envoy.
        let (template, body) = upstream.into_parts();
        // The body's own size hint, not the headers: an HTTP/2 stream has neither
        // content-length nor transfer-encoding.
        let retry = &route.retry;
        let replayable = hyper::body::Body::is_end_stream(&body)
            || hyper::body::Body::size_hint(&body)
                .upper()
                .is_some_and(|u| u <= MAX_REPLAY_BYTES);
        let (buffered, mut streaming) =
            if (retry.attempts > 0 || !route.mirrors.is_empty()) && replayable {
                match body.collect().await {
                    Ok(c) => (Some(c.to_bytes()), None),
                    Err(e) => {
                        return fail(
                            out,
                            ResponseFlag::DownstreamConnectionTermination,
                            &e.to_string(),
                        );
                    }
                }
            } else {
                (None, Some(body))
            };
        if let Some(body) = &buffered {
            for (mirror, pct) in &route.mirrors {
                if rand::random::<f64>() * 100.0 < *pct {
                    self.mirror(&state, mirror, &template, body.clone(), port.port);
                }
            }
        }
        let tries = if buffered.is_some() {
            1 + retry.attempts
        } else {
            1
        };
        let deadline = route.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tried: Vec<std::net::SocketAddr> = Vec::new();
        let mut last: Option<Result<Response<Incoming>, (ResponseFlag, String)>> = None;
        for attempt in 0..tries {
            // Healthy first, best locality next, an endpoint not tried yet when there is
            // a choice (Envoy's previous-hosts predicate), then the balancing algorithm.
            let Some(endpoint) = self.health.choose(
                &target.host,
                &candidates,
                &tried,
                &state.node,
                resolved,
                crate::lb::Balance {
                    counter: policy.map_or(&*self.round_robin, |p| &p.round_robin),
                    hash,
                },
            ) else {
                break;
            };
            tried.push(endpoint.inbound);
            out.upstream_host = endpoint.inbound.to_string();
            let mut peers = crate::peer::source_report(
                &state.node,
                &self.own_id,
                target,
                Some(endpoint),
                self.trust_domain(),
            );
            peers.connection_security_policy = "mutual_tls".into();
            out.peers = Some(peers);

            let mut req = Request::new(match (&buffered, streaming.take()) {
                (Some(b), _) => full(b.clone()),
                (None, Some(s)) => s,
                (None, None) => break,
            });
            *req.method_mut() = template.method.clone();
            *req.uri_mut() = template.uri.clone();
            *req.version_mut() = template.version;
            *req.headers_mut() = template.headers.clone();
            if attempt > 0 {
                req.headers_mut()
                    .insert("x-envoy-attempt-count", HeaderValue::from(attempt + 1));
            }

            let now = tokio::time::Instant::now();
            let overall_left = deadline.map(|d| d.saturating_duration_since(now));
            let per_try = match (retry.per_try_timeout, overall_left) {
                (Some(p), Some(o)) => Some(p.min(o)),
                (p, o) => p.or(o),
            };
            let _active = self.health.start(&target.host, endpoint.inbound);
            let upstream = crate::pool::Upstream {
                endpoint: endpoint.inbound,
                sni: &out.upstream_cluster,
                tunnel: endpoint.quic.then_some(state.node.cluster.as_str()),
                // tls.mode DISABLE: the destination has no sidecar; its own port.
                plaintext: resolved
                    .is_some_and(|r| r.plaintext)
                    .then(|| std::net::SocketAddr::new(endpoint.inbound.ip(), port.target_port)),
                connect_timeout: resolved.and_then(|r| r.connect_timeout),
                reuse: crate::pool::Reuse::of(resolved),
                http1: template.version == http::Version::HTTP_11,
            };
            let send = self.pool.send(&upstream, req);
            let result = match per_try {
                Some(t) => tokio::time::timeout(t, send).await.unwrap_or_else(|_| {
                    Err(crate::pool::UpstreamError {
                        flag: ResponseFlag::UpstreamTimeout,
                        detail: format!("no response within {t:?}"),
                    })
                }),
                None => send.await,
            };
            let out_of_time = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            let observed = match &result {
                Ok(resp) => crate::lb::Outcome::Status(resp.status().as_u16()),
                Err(e) if e.flag == ResponseFlag::UpstreamConnectionFailure => {
                    crate::lb::Outcome::ConnectFailure
                }
                Err(_) => crate::lb::Outcome::Reset,
            };
            self.health.record(
                &target.host,
                endpoint.inbound,
                observed,
                resolved.and_then(|p| p.outlier.as_ref()),
                candidates.len(),
            );
            match result {
                Ok(resp) => {
                    let grpc = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    let again = retry.retry_response(resp.status().as_u16(), grpc);
                    last = Some(Ok(resp));
                    if !again || out_of_time {
                        break;
                    }
                }
                Err(e) => {
                    let again = retry.retry_failure(e.flag);
                    last = Some(Err((e.flag, e.detail)));
                    if !again || out_of_time {
                        break;
                    }
                }
            }
            tracing::debug!(attempt = attempt + 1, upstream = %endpoint.inbound, "retrying");
        }
        let retried = tried.len() > 1;
        match last {
            Some(Ok(resp)) => {
                if retried && resp.status().is_server_error() {
                    out.flag = Some(ResponseFlag::UpstreamRetryLimitExceeded);
                }
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                apply_edits(&mut parts.headers, &route.response_headers);
                if let Some(cookie) = set_cookie {
                    parts.headers.append(http::header::SET_COOKIE, cookie);
                }
                parts.version = http::Version::HTTP_11;
                Response::from_parts(parts, boxed(body))
            }
            Some(Err((flag, detail))) => {
                let resp = fail(out, flag, &detail);
                if retried && flag != ResponseFlag::UpstreamTimeout {
                    out.flag = Some(ResponseFlag::UpstreamRetryLimitExceeded);
                }
                resp
            }
            None => fail(
                out,
                ResponseFlag::NoHealthyUpstream,
                "no endpoint could be tried",
            ),
        }
    }
}

impl Outbound {
    /// Sends a copy of a request to a mirror, fire and forget, with the authority
    /// suffixed `-shadow` as Istio does. Its response and failures are ignored.
    fn mirror(
        &self,
        state: &crate::state::ProxyState,
        mirror: &crate::routes::WeightedDestination,
        template: &http::request::Parts,
        body: bytes::Bytes,
        default_port: u16,
    ) {
        let Some(target) = state.services.get(&mirror.host).cloned() else {
            return;
        };
        let Some(port) = target
            .port(mirror.port.or(Some(default_port)))
            .or_else(|| target.port(None))
            .map(|p| p.port)
        else {
            return;
        };
        let endpoint = self.pick_one(state, &target, &mirror.subset, port, None);
        let Some(endpoint) = endpoint else { return };
        let mut req = Request::new(full(body));
        *req.method_mut() = template.method.clone();
        *req.version_mut() = template.version;
        *req.headers_mut() = template.headers.clone();
        let path = template.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(format!("{}-shadow:{port}", target.host))
            .path_and_query(path)
            .build()
        else {
            return;
        };
        *req.uri_mut() = uri;
        let sni = outbound_sni(port, &mirror.subset, &target.host);
        let pool = self.pool.clone();
        let tunnel = endpoint.quic.then(|| state.node.cluster.clone());
        let http1 = template.version == http::Version::HTTP_11;
        tokio::spawn(async move {
            if let Err(e) = pool
                .send(
                    &crate::pool::Upstream {
                        endpoint: endpoint.inbound,
                        sni: &sni,
                        tunnel: tunnel.as_deref(),
                        plaintext: None,
                        connect_timeout: None,
                        reuse: crate::pool::Reuse::default(),
                        http1,
                    },
                    req,
                )
                .await
            {
                tracing::debug!(error = %e, "mirror request failed");
            }
        });
    }

    /// One endpoint of `target`'s `subset` for a single try (mirrors, TCP streams):
    /// ready, healthy, best locality, then the destination's balancing.
    pub(crate) fn pick_one(
        &self,
        state: &crate::state::ProxyState,
        target: &crate::state::Service,
        subset: &str,
        port: u16,
        hash: Option<u64>,
    ) -> Option<Arc<crate::state::Endpoint>> {
        let policy = state.policies.get(&target.host).map(Arc::as_ref);
        let candidates = DestinationPolicy::select(policy, target, subset).ok()?;
        self.health
            .choose(
                &target.host,
                &candidates,
                &[],
                &state.node,
                policy.and_then(|p| p.resolve(subset, port)),
                crate::lb::Balance {
                    counter: policy.map_or(&*self.round_robin, |p| &p.round_robin),
                    hash,
                },
            )
            .cloned()
    }

    fn trust_domain(&self) -> &str {
        self.own_id
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
    }
}

/// The consistent-hash value of a request, when its key is present.
fn request_hash(
    key: &crate::state::HashKey,
    parts: &http::request::Parts,
    peer: Option<std::net::IpAddr>,
) -> Option<u64> {
    use crate::state::HashKey;
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

fn authority_of(req: &Request<Incoming>) -> String {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Istio's `rewrite.uri`: replaces the matched prefix (or the whole path otherwise).
fn rewrite_path(uri: &Uri, rewrite: Option<&str>, matched_prefix: Option<&str>) -> String {
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

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // `te: trailers` is the one TE value HTTP/2 allows, and gRPC sends it.
    let keep_te = headers
        .get(http::header::TE)
        .is_some_and(|v| v == "trailers");
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
    ] {
        headers.remove(h);
    }
    if keep_te {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
}

pub(crate) fn apply_edits(headers: &mut http::HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    for (k, v) in &edits.set {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(k, v);
        }
    }
    for (k, v) in &edits.add {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
}
