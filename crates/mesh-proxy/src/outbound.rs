//! Outbound HTTP in explicit mode: the application sends its request to the sidecar
//! (HTTP/1.1 or h2c), naming the service in the Host/authority. The sidecar routes it
//! by the VirtualService, picks an endpoint of the chosen subset, and forwards it over
//! mTLS to that endpoint's sidecar.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use mesh_telemetry::metrics::{MeshMetrics, PeerLabels, RequestLabels};

use crate::error::ResponseFlag;
use crate::http_util::{Body, boxed, flagged, full};
use crate::policy::DestinationPolicy;
use crate::pool::MeshPool;
use crate::routes::HeaderEdits;
use crate::sni::outbound_sni;
use crate::state::StateStore;

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

/// Where the tries of one request go, from its plan.
#[derive(Clone, Copy)]
struct Sends<'a> {
    target: &'a crate::model::Service,
    candidates: &'a [&'a Arc<crate::model::Endpoint>],
    policy: Option<&'a DestinationPolicy>,
    resolved: Option<&'a crate::policy::ResolvedPolicy>,
    hash: Option<u64>,
    port: &'a crate::model::ServicePort,
    retry: &'a crate::retry::RetryPolicy,
    timeout: Option<std::time::Duration>,
}

/// Looked up on every response: a constant, since a lookup by `&str` parses the name.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// Envoy's count of tries, sent from the second one.
const ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");

/// The request of one try (number `attempt`, from 0) from the request's parts: the
/// last try takes them, with no copy of the headers; the tries before it copy them.
fn try_request(
    template: &mut http::request::Parts,
    body: Body,
    attempt: u32,
    last: bool,
) -> Request<Body> {
    let mut req = Request::new(body);
    *req.version_mut() = template.version;
    if last {
        *req.method_mut() = std::mem::take(&mut template.method);
        *req.uri_mut() = std::mem::take(&mut template.uri);
        *req.headers_mut() = std::mem::take(&mut template.headers);
    } else {
        *req.method_mut() = template.method.clone();
        *req.uri_mut() = template.uri.clone();
        *req.headers_mut() = template.headers.clone();
    }
    if attempt > 0 {
        req.headers_mut()
            .insert(ATTEMPT_COUNT, HeaderValue::from(attempt + 1));
    }
    req
}

/// Largest request body held in memory so that it can be retried.
const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// What happened to one request, for the access log.
#[derive(Debug, Default)]
struct Outcome {
    route: String,
    upstream_host: String,
    upstream_cluster: Arc<str>,
    flag: Option<ResponseFlag>,
    peers: Option<Arc<PeerLabels>>,
    /// The endpoint tried last is another network's, through its east-west gateway.
    via_gateway: bool,
    trace: Option<mesh_telemetry::trace::TraceParent>,
}

impl Outbound {
    /// The outbound side of a proxy with this identity, over `store`.
    pub fn new(
        store: Arc<StateStore>,
        identity: &mesh_identity::Identity,
        metrics: MeshMetrics,
        in_flight: crate::http_util::InFlight,
        tracing: mesh_telemetry::trace::Tracing,
        connect_timeout: std::time::Duration,
    ) -> Self {
        Self {
            store,
            pool: MeshPool::new(identity, connect_timeout),
            metrics,
            own_id: identity.cert().id().to_string(),
            in_flight,
            health: crate::lb::HealthTracker::default(),
            round_robin: Arc::default(),
            tracing,
            limits: crate::lb::PoolLimits::default(),
        }
    }

    /// Handles one request: from the application (explicit or captured) or, on an
    /// ingress gateway, from a client. `peer` is the caller's IP.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        entry: crate::plan::Entry,
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
        let resp = self.route(req, &authority, entry, peer, &mut outcome).await;
        let state = self.store.snapshot();
        let node = &state.node;
        if span.is_recording() {
            span.set(crate::peer::node_span_attributes(node));
            span.set([
                ("http.method", method.to_string()),
                ("http.url", format!("http://{authority}{path}")),
                ("upstream_cluster", outcome.upstream_cluster.to_string()),
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
        let response = mesh_telemetry::metrics::Response {
            grpc,
            code: resp.status().as_u16(),
            grpc_status: resp
                .headers()
                .get(&GRPC_STATUS)
                .and_then(|v| v.to_str().ok()),
            flags: outcome.flag.map_or("-", ResponseFlag::code),
        };
        let (elapsed, response_bytes) = (
            started.elapsed().as_secs_f64() * 1000.0,
            crate::http_util::content_length(resp.headers()),
        );
        match &outcome.peers {
            Some(peers) => {
                self.metrics
                    .record(peers, response, elapsed, request_bytes, response_bytes);
                self.metrics.edges().observe(
                    peers,
                    mesh_telemetry::edges::Call {
                        protocol: if grpc {
                            mesh_telemetry::edges::Protocol::Grpc
                        } else {
                            mesh_telemetry::edges::Protocol::Http
                        },
                        via_gateway: outcome.via_gateway,
                        failed: response.code >= 500,
                        duration_ms: Some(elapsed),
                    },
                );
            }
            // No service was found: the authority asked for names the series.
            None => self.metrics.request(
                &RequestLabels {
                    peers: PeerLabels {
                        reporter: "source".into(),
                        destination_service: authority.clone(),
                        ..Default::default()
                    },
                    request_protocol: if grpc { "grpc" } else { "http" }.into(),
                    response_code: response.code.to_string(),
                    grpc_response_status: response.grpc_status.unwrap_or_default().to_owned(),
                    response_flags: response.flags.to_owned(),
                },
                elapsed,
                request_bytes,
                response_bytes,
            ),
        }
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
        entry: crate::plan::Entry,
        peer: Option<std::net::IpAddr>,
        out: &mut Outcome,
    ) -> Response<Body> {
        let state = self.store.snapshot();
        let (parts, body) = req.into_parts();
        let inputs = crate::plan::Inputs {
            parts: &parts,
            authority,
            entry,
            peer,
        };
        let decision = match crate::plan::plan(&state, inputs, &crate::plan::Rolls::random()) {
            Ok(d) => d,
            Err(refusal) => return self.refused(&state, refusal, out),
        };
        let route = decision.route;
        out.route = route.name.clone();
        if let Some(delay) = decision.delay {
            out.flag = Some(ResponseFlag::DelayInjected);
            tokio::time::sleep(delay).await;
        }
        let plan = match decision.action {
            crate::plan::Action::Forward(plan) => plan,
            crate::plan::Action::Respond(local) => return respond_locally(local, out),
        };
        let crate::plan::Plan {
            target,
            port,
            policy,
            resolved,
            sni,
            hash,
            set_cookie,
            candidates,
            uri,
            http1,
            ..
        } = *plan;
        self.note_upstream(&state, sni, target, out);
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
        *upstream.uri_mut() = uri;
        // The pool writes the Host header for HTTP/1.1.
        *upstream.version_mut() = if http1 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_2
        };
        upstream.headers_mut().remove(http::header::HOST);
        strip_hop_by_hop(upstream.headers_mut());
        apply_edits(upstream.headers_mut(), &route.request_headers);
        // Who calls is told to mesh destinations only, never outside the mesh.
        if target.location == crate::model::Location::Mesh
            && let Some(v) = state.peer_header()
        {
            upstream
                .headers_mut()
                .insert(crate::peer::PEER_HEADER, v.clone());
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
        let (buffered, streaming) =
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
        let sends = Sends {
            target,
            candidates: &candidates,
            policy,
            resolved,
            hash,
            port,
            retry,
            timeout: route.timeout,
        };
        let (last, retried) = self
            .attempts(&state, &sends, template, buffered, streaming, tries, out)
            .await;
        answer(last, retried, route, set_cookie, out)
    }
}

impl Outbound {
    /// Notes the upstream cluster a request goes to, and who is calling whom there, for
    /// its metrics and access log.
    fn note_upstream(
        &self,
        state: &crate::state::ProxyState,
        sni: Arc<str>,
        target: &crate::model::Service,
        out: &mut Outcome,
    ) {
        out.upstream_cluster = sni;
        out.peers = Some(crate::peer::source_labels(
            &state.node,
            &self.own_id,
            target,
            None,
            self.trust_domain(),
        ));
    }

    /// A request that could not be planned: its flag and reason, with the route and
    /// the upstream cluster when they were known.
    fn refused(
        &self,
        state: &crate::state::ProxyState,
        refusal: crate::plan::Refusal,
        out: &mut Outcome,
    ) -> Response<Body> {
        if let Some(route) = refusal.route {
            out.route = route;
        }
        if let Some((sni, target)) = refusal.upstream {
            self.note_upstream(state, sni, &target, out);
        }
        fail(out, refusal.why.flag(), &refusal.why.to_string())
    }

    /// Sends a planned request up to `tries` times (another endpoint each time when
    /// there is a choice), within the route's timeout and each try's: the last
    /// response or failure, and whether the request was retried.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        state: &crate::state::ProxyState,
        sends: &Sends<'_>,
        mut template: http::request::Parts,
        buffered: Option<bytes::Bytes>,
        streaming: Option<Body>,
        tries: u32,
        out: &mut Outcome,
    ) -> (
        Option<Result<Response<crate::pool::UpstreamBody>, (ResponseFlag, String)>>,
        bool,
    ) {
        let Sends {
            target,
            candidates,
            policy,
            resolved,
            hash,
            port,
            retry,
            timeout,
        } = *sends;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut streaming = streaming;
        let mut tried: Vec<std::net::SocketAddr> = Vec::new();
        let mut last: Option<Result<Response<crate::pool::UpstreamBody>, (ResponseFlag, String)>> =
            None;
        for attempt in 0..tries {
            // Healthy first, best locality next, an endpoint not tried yet when there is
            // a choice (Envoy's previous-hosts predicate), then the balancing algorithm.
            let Some(endpoint) = self.health.choose(
                &target.host,
                candidates,
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
            // In the clear to the endpoint's own port: outside the mesh, or a mesh
            // workload without a sidecar (tls.mode DISABLE).
            // Or over TLS this proxy opens (tls.mode SIMPLE or MUTUAL).
            let origination = resolved.and_then(|r| r.origination.as_deref());
            let plaintext = (target.location == crate::model::Location::External
                || resolved.is_some_and(|r| r.plaintext)
                || origination.is_some())
            .then(|| std::net::SocketAddr::new(endpoint.inbound.ip(), endpoint.port_for(port)));
            out.upstream_host = plaintext.unwrap_or(endpoint.inbound).to_string();
            out.peers = Some(self.try_labels(state, target, endpoint, plaintext.is_some()));
            out.via_gateway = endpoint.through_gateway(&state.node);

            let body = match (&buffered, streaming.take()) {
                (Some(b), _) => full(b.clone()),
                (None, Some(s)) => s,
                (None, None) => break,
            };
            let req = try_request(&mut template, body, attempt, attempt + 1 == tries);

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
                plaintext,
                origination: origination.map(|o| (o, target.host.as_str())),
                connect_timeout: resolved.and_then(|r| r.connect_timeout),
                reuse: crate::pool::Reuse::of(resolved),
                http1: req.version() == http::Version::HTTP_11,
                subject_alt_names: &target.subject_alt_names,
            };
            let send = self.pool.send(&upstream, req);
            let result = match per_try {
                Some(t) => tokio::time::timeout(t, send)
                    .await
                    .unwrap_or(Err(crate::pool::UpstreamError::PerTryTimeout(t))),
                None => send.await,
            };
            let out_of_time = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            let observed = match &result {
                Ok(resp) => crate::lb::Outcome::Status(resp.status().as_u16()),
                Err(e) if e.flag() == ResponseFlag::UpstreamConnectionFailure => {
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
                        .get(&GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    let again = retry.retry_response(resp.status().as_u16(), grpc);
                    last = Some(Ok(resp));
                    if !again || out_of_time {
                        break;
                    }
                }
                Err(e) => {
                    let again = retry.retry_failure(e.flag());
                    last = Some(Err((e.flag(), e.to_string())));
                    if !again || out_of_time {
                        break;
                    }
                }
            }
            tracing::debug!(attempt = attempt + 1, upstream = %endpoint.inbound, "retrying");
        }
        (last, tried.len() > 1)
    }

    /// Who calls whom on one try, for its metrics: over mTLS, or in the clear for
    /// `tls.mode: DISABLE`.
    pub(crate) fn try_labels(
        &self,
        state: &crate::state::ProxyState,
        target: &crate::model::Service,
        endpoint: &crate::model::Endpoint,
        plaintext: bool,
    ) -> Arc<PeerLabels> {
        let (node, own, td) = (&state.node, &self.own_id, self.trust_domain());
        if plaintext {
            let mut peers = crate::peer::source_report(node, own, target, Some(endpoint), td);
            peers.connection_security_policy = "none".into();
            Arc::new(peers)
        } else {
            crate::peer::source_labels(node, own, target, Some(endpoint), td)
        }
    }

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
        let Some(service_port) = target
            .port(mirror.port.or(Some(default_port)))
            .or_else(|| target.port(None))
        else {
            return;
        };
        let port = service_port.port;
        let endpoint = self.pick_one(state, &target, &mirror.subset, port, None);
        let Some(endpoint) = endpoint else { return };
        // Outside the mesh, without a sidecar, or over TLS opened here: straight to the
        // endpoint's own port.
        let resolved = state
            .policies
            .get(&mirror.host)
            .and_then(|p| p.resolve(&mirror.subset, port));
        let origination = resolved.and_then(|r| r.origination.clone());
        let plaintext = (target.location == crate::model::Location::External
            || resolved.is_some_and(|r| r.plaintext)
            || origination.is_some())
        .then(|| std::net::SocketAddr::new(endpoint.inbound.ip(), endpoint.port_for(service_port)));
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
                        plaintext,
                        origination: origination.as_deref().map(|o| (o, target.host.as_str())),
                        connect_timeout: None,
                        reuse: crate::pool::Reuse::default(),
                        http1,
                        subject_alt_names: &target.subject_alt_names,
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
        target: &crate::model::Service,
        subset: &str,
        port: u16,
        hash: Option<u64>,
    ) -> Option<Arc<crate::model::Endpoint>> {
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

    pub(crate) fn trust_domain(&self) -> &str {
        self.own_id
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
    }
}

/// The response to the application from the last try: its response with the route's
/// edits (and a made-up hash cookie), or the failure with its flag (`URX` when retries
/// ran out).
fn answer(
    last: Option<Result<Response<crate::pool::UpstreamBody>, (ResponseFlag, String)>>,
    retried: bool,
    route: &crate::routes::CompiledRoute,
    set_cookie: Option<HeaderValue>,
    out: &mut Outcome,
) -> Response<Body> {
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

/// A failure answered with its flag's status, the flag noted for the access log.
fn fail(out: &mut Outcome, flag: ResponseFlag, detail: &str) -> Response<Body> {
    out.flag = Some(flag);
    flagged(flag, detail)
}

/// A redirect, a direct response or an injected abort, answered here.
fn respond_locally(local: crate::plan::Local, out: &mut Outcome) -> Response<Body> {
    if local.flag.is_some() {
        out.flag = local.flag;
    }
    let mut r = Response::new(full(local.body));
    *r.status_mut() = local.status;
    if let Some(location) = local.location {
        r.headers_mut().insert(http::header::LOCATION, location);
    }
    r
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
