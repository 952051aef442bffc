//! Inbound mesh traffic: mTLS terminated with the workload identity (STRICT: a
//! plaintext connection is refused), the service port read from the SNI
//! `outbound_.PORT_.SUBSET_.HOST`, and each request forwarded to the local application
//! with the caller's identity in `x-forwarded-client-cert`. [`plan`] decides what
//! happens to a request; this module does it and records it once.

mod plan;

pub(crate) use plan::{InboundRefusal, admit};
pub use plan::{Verdict, verdict};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_identity::Identity;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use mesh_telemetry::metrics::{LabelCache, MeshMetrics};

use crate::authz::{Attributes, Decision};
use crate::error::ResponseFlag;
use crate::http_util::{Body, boxed, flagged};
use crate::sni::parse_outbound_sni;
use crate::state::StateStore;

/// The inbound side of a sidecar.
#[derive(Clone)]
pub struct Inbound {
    /// Live config (to map service ports to workload ports).
    pub store: Arc<StateStore>,
    /// Where the application listens.
    pub app_ip: IpAddr,
    local_id: String,
    identity: Identity,
    requests: RequestOptions,
    metrics: MeshMetrics,
    labels: LabelCache,
    in_flight: crate::http_util::InFlight,
    tracing: mesh_telemetry::trace::Tracing,
    acceptor: TlsAcceptor,
    client: Client<HttpConnector, Body>,
    h2c_client: Client<HttpConnector, Body>,
}

/// How the inbound side reads requests before authorization (Istio's
/// `meshConfig.pathNormalization` and `gatewayTopology.numTrustedProxies`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// Path normalization applied before policies and forwarded to the app.
    pub path_normalization: crate::path::PathNormalization,
    /// Proxies in front of this workload whose `X-Forwarded-For` entries are
    /// trusted; 0 makes `remote.ip` the peer address.
    pub num_trusted_proxies: usize,
}

/// What one request's record needs, read before the request is handed on.
struct Facts<'a> {
    peer: SocketAddr,
    caller: &'a Caller,
    /// The caller's `x-isthmus-peer` value (empty when absent).
    peer_value: &'a str,
    /// The service host as sent, without its port.
    service_host: &'a str,
    grpc: bool,
    request_bytes: u64,
    method: http::Method,
    started: Instant,
}

/// Who is calling, as authorization reads it from the connection.
#[derive(Debug, Default)]
struct Caller {
    /// `spiffe://…` as presented (empty for plaintext).
    id: String,
    /// `TD/ns/NS/sa/SA` with a trust-domain alias mapped to the local domain.
    principal: String,
    /// The same identity in each trust-domain alias.
    aliases: Vec<String>,
    /// Server name of the TLS connection.
    sni: String,
    /// Where the connection was sent.
    destination_ip: Option<IpAddr>,
    /// The `x-forwarded-client-cert` value the application gets with each request.
    xfcc: Option<HeaderValue>,
}

/// The original client address: the entry `num_trusted` hops from the right of
/// `X-Forwarded-For` (each trusted proxy appended the address it saw), or the peer
/// when no proxy is trusted or none left an entry. `None` when the header is
/// malformed or shorter than the trusted hops (the address cannot be known).
pub(crate) fn remote_ip(
    headers: &http::HeaderMap,
    peer: IpAddr,
    num_trusted: usize,
) -> Option<IpAddr> {
    if num_trusted == 0 {
        return Some(peer);
    }
    let mut entries = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for entry in value.to_str().ok()?.split(',') {
            entries.push(entry.trim());
        }
    }
    // No proxy recorded anything: the peer is the client.
    if entries.is_empty() {
        return Some(peer);
    }
    let entry = entries.len().checked_sub(num_trusted).map(|i| entries[i])?;
    entry.parse().ok()
}

/// ALPN a client sidecar offers for an opaque TCP stream inside mTLS.
pub const ALPN_TCP: &[u8] = b"isthmus-tcp";

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("app_ip", &self.app_ip)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// An inbound side serving `identity` and forwarding to the app at `app_ip`.
    pub fn new(
        store: Arc<StateStore>,
        identity: &Identity,
        requests: RequestOptions,
        app_ip: IpAddr,
        metrics: MeshMetrics,
        in_flight: crate::http_util::InFlight,
        tracing: mesh_telemetry::trace::Tracing,
    ) -> Self {
        let config = identity.server_config(&[b"h2", b"http/1.1", ALPN_TCP]);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            store,
            app_ip,
            local_id: identity.cert().id().to_string(),
            identity: identity.clone(),
            requests,
            metrics,
            labels: LabelCache::default(),
            in_flight,
            tracing,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            client: Client::builder(TokioExecutor::new()).build(connector.clone()),
            h2c_client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move { this.connection(tcp, peer).await });
        }
    }

    async fn connection(self: Arc<Self>, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        // TLS starts with a handshake record (0x16); anything else, or silence (a
        // server-first protocol), is plaintext.
        let mut first = [0u8; 1];
        let is_tls =
            match tokio::time::timeout(std::time::Duration::from_millis(100), tcp.peek(&mut first))
                .await
            {
                Ok(Ok(1)) => first[0] == 0x16,
                Ok(_) => return,
                Err(_) => false,
            };
        if !is_tls {
            self.plaintext(tcp, peer).await;
            return;
        }
        let tls = match self.acceptor.accept(tcp).await {
            Ok(tls) => tls,
            Err(e) => {
                // Plaintext, an untrusted peer or a foreign trust domain all end here:
                // the connection is closed without a response.
                tracing::info!(target: "access", direction = "inbound", %peer, response_flags = "UAEX", reason = %mesh_identity::explain(&e), "connection refused");
                return;
            }
        };
        let (_, conn) = tls.get_ref();
        let presented = mesh_identity::peer_id(conn.peer_certificates(), &peer.to_string()).ok();
        let trust = self.identity.trust();
        let (principal, aliases) = match &presented {
            Some(id) => {
                let canonical = trust.canonical(id);
                let aliases = trust
                    .aliases
                    .iter()
                    .map(|td| canonical.with_trust_domain(td.clone()).principal())
                    .collect();
                (canonical.principal(), aliases)
            }
            None => (String::new(), Vec::new()),
        };
        let id = presented.map(|id| id.to_string()).unwrap_or_default();
        let caller = Arc::new(Caller {
            xfcc: HeaderValue::from_str(&format!("By={};URI={id}", self.local_id)).ok(),
            id,
            principal,
            aliases,
            sni: conn.server_name().unwrap_or_default().to_owned(),
            destination_ip: crate::capture::original_dst(tls.get_ref().0)
                .or_else(|| tls.get_ref().0.local_addr().ok())
                .map(|a| a.ip()),
        });
        let target = conn
            .server_name()
            .and_then(parse_outbound_sni)
            .map(|s| s.port);
        if conn.alpn_protocol() == Some(ALPN_TCP) {
            self.tcp(tls, peer, &caller, target).await;
            return;
        }
        let service = hyper::service::service_fn(move |req| {
            let this = self.clone();
            let caller = caller.clone();
            async move {
                Ok::<_, std::convert::Infallible>(this.forward(req, peer, &caller, target).await)
            }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
            tracing::debug!(%peer, error = %e, "inbound connection ended");
        }
    }

    /// Plaintext reaches the workload only on a captured connection to a port whose
    /// PeerAuthentication mode is PERMISSIVE or DISABLE; STRICT refuses it.
    async fn plaintext(&self, mut tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let local = tcp.local_addr().ok();
        let original = crate::capture::original_dst(&tcp);
        let port = original.filter(|d| Some(*d) != local).map(|d| d.port());
        let state = self.store.snapshot();
        let refuse = |reason: &str| {
            tracing::info!(target: "access", direction = "inbound", protocol = "plaintext", %peer, response_flags = ResponseFlag::Unauthorized.code(), reason, "connection refused");
        };
        let Some(port) = port else {
            return refuse("plaintext sent to the mesh port itself; mesh traffic must be mTLS");
        };
        if !state.peer_authn.plaintext_allowed(port) {
            return refuse("PeerAuthentication STRICT: plaintext refused");
        }
        if let Decision::Deny(reason) = state.authz.decide(&Attributes {
            principal: "",
            principal_aliases: &[],
            source_ip: Some(peer.ip()),
            remote_ip: Some(peer.ip()),
            destination_ip: original.map(|d| d.ip()),
            port,
            sni: "",
            http: None,
        }) {
            return refuse(&reason);
        }
        let app = SocketAddr::new(
            self.app_ip,
            state.app_port(port, crate::model::Protocol::Unknown).0,
        );
        match tokio::net::TcpStream::connect(app).await {
            Ok(mut upstream) => {
                let bytes = tokio::io::copy_bidirectional(&mut tcp, &mut upstream)
                    .await
                    .unwrap_or_default();
                tracing::info!(target: "access", direction = "inbound", protocol = "plaintext", %peer, upstream_host = %app, connection_security_policy = "none", bytes_received = bytes.0, bytes_sent = bytes.1, "plaintext connection");
            }
            Err(e) => refuse(&format!("application on port {port}: {e}")),
        }
    }

    fn client_for(&self, h2: bool) -> &Client<HttpConnector, Body> {
        if h2 { &self.h2c_client } else { &self.client }
    }

    /// An opaque TCP stream: spliced to the application's port.
    async fn tcp<S>(
        &self,
        mut stream: S,
        peer: SocketAddr,
        caller: &Caller,
        service_port: Option<u16>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let _in_flight = self.in_flight.start();
        let started = Instant::now();
        let state = self.store.snapshot();
        let service_host = parse_outbound_sni(&caller.sni).map_or("unknown", |s| s.host);
        let own = state.peer_header().and_then(|v| v.to_str().ok());
        let labels = self.labels.get(
            &["", &caller.id, service_host, own.unwrap_or_default()],
            || {
                crate::peer::destination_report(
                    &state.node,
                    &self.local_id,
                    &crate::peer::PeerInfo::default(),
                    &caller.id,
                    service_host,
                )
            },
        );
        // Counted as opened when it is, closed with its bytes when it ends.
        self.metrics.tcp_opened(&labels);
        let (flag, app, bytes, reason) = match service_port {
            None => (
                Some(ResponseFlag::NoRoute),
                None,
                (0, 0),
                "TCP stream without outbound SNI".to_owned(),
            ),
            Some(service_port) => {
                let (target_port, protocol) = state.local_port(service_port);
                let app = SocketAddr::new(self.app_ip, state.app_port(target_port, protocol).0);
                let decision = state.authz.decide(&Attributes {
                    principal: &caller.principal,
                    principal_aliases: &caller.aliases,
                    source_ip: Some(peer.ip()),
                    remote_ip: Some(peer.ip()),
                    destination_ip: caller.destination_ip,
                    port: target_port,
                    sni: &caller.sni,
                    http: None,
                });
                match decision {
                    // A denied TCP connection is closed without a byte.
                    Decision::Deny(reason) => {
                        (Some(ResponseFlag::Unauthorized), Some(app), (0, 0), reason)
                    }
                    Decision::Allow { .. } => match tokio::net::TcpStream::connect(app).await {
                        Ok(mut upstream) => {
                            let r = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                            (None, Some(app), r.unwrap_or_default(), String::new())
                        }
                        Err(e) => (
                            Some(ResponseFlag::UpstreamConnectionFailure),
                            Some(app),
                            (0, 0),
                            e.to_string(),
                        ),
                    },
                }
            }
        };
        // The one record of the connection: access log and Istio's TCP metrics.
        tracing::info!(
            target: "access",
            direction = "inbound",
            protocol = "tcp",
            %peer,
            upstream_host = %app.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            source_principal = %caller.id,
            response_flags = flag.map_or("-", ResponseFlag::code),
            bytes_received = bytes.0,
            bytes_sent = bytes.1,
            duration_ms = started.elapsed().as_millis() as u64,
            reason,
        );
        // Sent is towards the caller, received from it.
        self.metrics.tcp_closed(&labels, bytes.1, bytes.0);
    }

    /// An HTTP request: planned, sent to the application, recorded once.
    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        from: &Caller,
        service_port: Option<u16>,
    ) -> Response<Body> {
        let _in_flight = self.in_flight.start();
        let started = Instant::now();
        let state = self.store.snapshot();
        let (mut parts, body) = req.into_parts();
        let peer_header = parts.headers.remove(crate::peer::PEER_HEADER);
        // HTTP/2 carries the service in the URI's authority, HTTP/1.1 in Host; policies
        // match it as sent (with the port), spans name the host alone.
        let authority_sent = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or_default()
            .to_owned();
        let facts = Facts {
            peer,
            caller: from,
            peer_value: peer_header
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
            service_host: crate::model::strip_port(&authority_sent),
            grpc: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            request_bytes: crate::http_util::content_length(&parts.headers),
            method: parts.method.clone(),
            started,
        };
        let parent = mesh_telemetry::trace::TraceParent::from_headers(&parts.headers);
        let span = self.tracing.start(
            || {
                let port = service_port.map_or_else(|| "-".to_owned(), |p| p.to_string());
                format!("{}:{port}/*", facts.service_host)
            },
            true,
            parent,
        );
        span.context().inject(&mut parts.headers);
        let decided = plan::plan(
            &state,
            &parts,
            plan::Inputs {
                caller: from,
                peer,
                service_port,
                authority: &authority_sent,
                app_ip: self.app_ip,
                options: self.requests,
            },
        );
        let (resp, flag, path, refusal) = match decided {
            Ok(plan) => {
                if !plan.audited.is_empty() {
                    tracing::info!(target: "access", direction = "inbound", %peer, method = %parts.method, path = %parts.uri.path(), source_principal = %from.id, audit = ?plan.audited, "audited");
                }
                let path = plan
                    .app_uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let (resp, flag) = self.send(parts, body, plan, from).await;
                (resp, flag, path, None)
            }
            Err(refusal) => {
                let (status, text) = refusal.answer();
                let mut resp = Response::new(crate::http_util::full(text));
                *resp.status_mut() = status;
                let path = parts.uri.path().to_owned();
                (resp, refusal.flag(), path, Some(refusal))
            }
        };
        self.record(&state, &facts, &path, &resp, flag, refusal.as_ref(), span);
        resp
    }

    /// Executes a plan: the request goes to the application.
    async fn send(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        plan: plan::InboundPlan,
        from: &Caller,
    ) -> (Response<Body>, Option<ResponseFlag>) {
        // An HTTP/2 request's authority becomes the Host the application sees.
        let authority = parts.uri.authority().map(|a| a.to_string());
        let target = plan.app_uri.authority().map(|a| a.to_string());
        parts.uri = plan.app_uri;
        parts.version = if plan.h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            parts.headers.insert(http::header::HOST, v);
        }
        if let Some(v) = &from.xfcc {
            parts.headers.insert("x-forwarded-client-cert", v.clone());
        }
        // A verified JWT's outputs, and its token removed unless kept.
        for (name, value) in plan.header_edits {
            match value {
                Some(v) => {
                    parts.headers.insert(name, v);
                }
                None => {
                    parts.headers.remove(name);
                }
            }
        }
        match self
            .client_for(plan.h2)
            .request(Request::from_parts(parts, boxed(body)))
            .await
        {
            Ok(r) => {
                let (parts, body) = r.into_parts();
                (Response::from_parts(parts, boxed(body)), None)
            }
            Err(e) => (
                flagged(
                    ResponseFlag::UpstreamConnectionFailure,
                    &format!("local application at {}: {e}", target.unwrap_or_default()),
                ),
                Some(ResponseFlag::UpstreamConnectionFailure),
            ),
        }
    }

    /// The one record of a request, whatever its outcome: access log, span, metrics.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        state: &crate::state::ProxyState,
        facts: &Facts<'_>,
        path: &str,
        resp: &Response<Body>,
        flag: Option<ResponseFlag>,
        refusal: Option<&plan::InboundRefusal>,
        mut span: mesh_telemetry::trace::HopSpan,
    ) {
        let caller: &str = &facts.caller.id;
        // Decoded only for what is written out (a log line, a span, a new series).
        let caller_info = || crate::peer::decode(facts.peer_value);
        let flags = flag.map_or("-", ResponseFlag::code);
        let status = resp.status().as_u16();
        tracing::info!(
            target: "access",
            direction = "inbound",
            peer = %facts.peer,
            method = %facts.method,
            path = %path,
            status,
            response_flags = flags,
            source_principal = %caller,
            source_cluster = %caller_info().cluster,
            duration_ms = facts.started.elapsed().as_millis() as u64,
            reason = refusal.map(ToString::to_string).unwrap_or_default(),
        );
        let node = &state.node;
        if span.is_recording() {
            span.set(crate::peer::node_span_attributes(node));
            span.set([
                ("http.url", format!("http://{}{path}", facts.service_host)),
                ("source_principal", caller.to_owned()),
                ("source_cluster", caller_info().cluster),
                ("destination_cluster", node.cluster.clone()),
            ]);
        }
        span.end(status, flags);
        // The labels depend on the caller's header and identity, the service and this
        // node (whose own header value stands for it).
        let own = state.peer_header().and_then(|v| v.to_str().ok());
        let peers = self.labels.get(
            &[
                facts.peer_value,
                caller,
                facts.service_host,
                own.unwrap_or_default(),
            ],
            || {
                crate::peer::destination_report(
                    node,
                    &self.local_id,
                    &caller_info(),
                    caller,
                    facts.service_host,
                )
            },
        );
        self.metrics.record(
            &peers,
            mesh_telemetry::metrics::Response {
                grpc: facts.grpc,
                code: status,
                grpc_status: None,
                flags,
            },
            facts.started.elapsed().as_secs_f64() * 1000.0,
            facts.request_bytes,
            crate::http_util::content_length(resp.headers()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::remote_ip;

    #[test]
    fn remote_ip_trusts_only_the_configured_hops() {
        let mut h = http::HeaderMap::new();
        let peer = "10.0.0.7".parse().unwrap();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.2".parse().unwrap(),
        );
        assert_eq!(
            remote_ip(&h, peer, 0),
            Some(peer),
            "no trusted proxy: the peer"
        );
        assert_eq!(remote_ip(&h, peer, 1), "198.51.100.2".parse().ok());
        assert_eq!(remote_ip(&h, peer, 2), "203.0.113.9".parse().ok());
        assert_eq!(
            remote_ip(&h, peer, 3),
            None,
            "fewer entries than trusted hops"
        );
        h.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(remote_ip(&h, peer, 1), None);
        assert_eq!(remote_ip(&http::HeaderMap::new(), peer, 1), Some(peer));
    }
}
