//! Outbound HTTP in explicit mode: the application sends its request to the sidecar
//! (HTTP/1.1 or h2c), naming the service in the Host/authority. The sidecar routes it
//! by the VirtualService, picks an endpoint of the chosen subset, and forwards it over
//! mTLS to that endpoint's sidecar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response, Uri};
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
}

/// What happened to one request, for the access log.
#[derive(Debug, Default)]
struct Outcome {
    route: String,
    upstream_host: String,
    upstream_cluster: String,
    flag: Option<ResponseFlag>,
    peers: Option<PeerLabels>,
}

impl Outbound {
    /// Handles one request from the application. `captured` is the original
    /// destination of a transparently captured connection.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        captured: Option<SocketAddr>,
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
        let request_bytes = content_length(req.headers());
        let mut outcome = Outcome::default();
        let resp = self.route(req, &authority, captured, &mut outcome).await;
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
            content_length(resp.headers()),
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
        let Some(endpoint) = DestinationPolicy::pick(policy, &candidates) else {
            return fail(
                out,
                ResponseFlag::NoHealthyUpstream,
                &format!("no ready endpoint for {}", out.upstream_cluster),
            );
        };
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
        *upstream.version_mut() = http::Version::HTTP_2;
        upstream.headers_mut().remove(http::header::HOST);
        strip_hop_by_hop(upstream.headers_mut());
        apply_edits(upstream.headers_mut(), &route.request_headers);
        if let Ok(v) = HeaderValue::from_str(&crate::peer::encode(&state.node)) {
            upstream.headers_mut().insert(crate::peer::PEER_HEADER, v);
        }

        let send = self
            .pool
            .send(endpoint.inbound, &out.upstream_cluster, upstream);
        let result = match route.timeout {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r,
                Err(_) => {
                    return fail(
                        out,
                        ResponseFlag::UpstreamTimeout,
                        &format!("no response within {t:?}"),
                    );
                }
            },
            None => send.await,
        };
        match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                apply_edits(&mut parts.headers, &route.response_headers);
                parts.version = http::Version::HTTP_11;
                Response::from_parts(parts, boxed(body))
            }
            Err(e) => fail(out, e.flag, &e.detail),
        }
    }
}

impl Outbound {
    fn trust_domain(&self) -> &str {
        self.own_id
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
    }
}

pub(crate) fn content_length(headers: &http::HeaderMap) -> u64 {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
