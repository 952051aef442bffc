//! The ingress gateway's runtime: one listener per Gateway server port, opened and
//! closed as the config changes, each serving HTTP/1.1 and h2c to the outbound
//! executor with the request's [`Entry::Gateway`] port. Requests go on over mesh mTLS
//! to the destination's sidecars, in this cluster or through an east-west gateway.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use mesh_identity::Identity;
use mesh_telemetry::metrics::MeshMetrics;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::outbound::Outbound;
use crate::plan::Entry;
use crate::state::StateStore;

/// Where an ingress gateway listens.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// The address every server port is bound on (`0.0.0.0` in a pod).
    pub address: IpAddr,
    /// A server port bound on another port: `80 → 8080` when the gateway may not bind
    /// low ports (Istio's gateway Service maps them the same way); `0` picks a free
    /// port (tests).
    pub port_map: BTreeMap<u16, u16>,
    /// TCP connect timeout towards sidecars.
    pub connect_timeout: Duration,
    /// Admin listeners: readiness (15021), agent (15020), Prometheus (15090).
    pub admin: Vec<SocketAddr>,
    /// Span export (propagation only when disabled).
    pub tracing: mesh_telemetry::trace::Tracing,
    /// Path normalization and trusted proxies in front of the gateway, for its own
    /// RequestAuthentication and AuthorizationPolicy checks.
    pub requests: crate::inbound::RequestOptions,
}

/// A running ingress gateway. Dropping it stops its listeners.
#[derive(Debug)]
pub struct IngressGateway {
    /// The live config.
    pub store: Arc<StateStore>,
    /// Bound admin addresses, in the order given.
    pub admin_addrs: Vec<SocketAddr>,
    /// Istio-standard metrics (reported as the source of each request).
    pub metrics: MeshMetrics,
    listeners: Arc<Mutex<BTreeMap<u16, Bound>>>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Bound {
    addr: SocketAddr,
    /// How it serves connections.
    mode: super::Mode,
    task: JoinHandle<()>,
}

impl Drop for IngressGateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for b in self.lock().values() {
            b.task.abort();
        }
    }
}

/// How often ports that could not be bound are tried again.
const REBIND_EVERY: Duration = Duration::from_secs(5);

impl IngressGateway {
    /// Starts the admin listeners and follows the config: a listener for each server
    /// port of the Gateways that select this workload.
    pub async fn start(
        store: Arc<StateStore>,
        identity: Identity,
        options: IngressOptions,
    ) -> std::io::Result<Self> {
        let metrics = MeshMetrics::new().with_edges(store.edges().clone());
        let outbound = Arc::new(Outbound::new(
            store.clone(),
            &identity,
            metrics.clone(),
            crate::http_util::InFlight::default(),
            options.tracing.clone(),
            options.connect_timeout,
        ));
        let (admin_addrs, mut tasks) =
            crate::sidecar::start_background(&store, &identity, &metrics, &options.admin).await?;
        let listeners = Arc::new(Mutex::new(BTreeMap::new()));
        tasks.push(tokio::spawn(follow(
            outbound,
            options,
            Arc::downgrade(&listeners),
        )));
        Ok(Self {
            store,
            admin_addrs,
            metrics,
            listeners,
            tasks,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, Bound>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address each server port is bound on now.
    pub fn bound(&self) -> BTreeMap<u16, SocketAddr> {
        self.lock().iter().map(|(p, b)| (*p, b.addr)).collect()
    }

    /// Waits until server port `port` is bound, up to `timeout`.
    pub async fn wait_bound(&self, port: u16, timeout: Duration) -> Option<SocketAddr> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(addr) = self.bound().get(&port) {
                return Some(*addr);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Opens and closes listeners as the config changes, until the gateway is dropped.
async fn follow(
    outbound: Arc<Outbound>,
    options: IngressOptions,
    listeners: std::sync::Weak<Mutex<BTreeMap<u16, Bound>>>,
) {
    let mut changes = outbound.store.subscribe();
    loop {
        let Some(listeners) = listeners.upgrade() else {
            return;
        };
        let complete = reconcile(&outbound, &options, &listeners).await;
        drop(listeners);
        let wait = async {
            if complete {
                changes.changed().await.ok();
            } else {
                tokio::time::sleep(REBIND_EVERY).await;
            }
        };
        wait.await;
    }
}

/// Binds the ports the config wants and closes the others; false when a port could
/// not be bound (it is tried again later).
async fn reconcile(
    outbound: &Arc<Outbound>,
    options: &IngressOptions,
    listeners: &Mutex<BTreeMap<u16, Bound>>,
) -> bool {
    let state = outbound.store.snapshot();
    let wanted: BTreeMap<u16, super::Mode> = state
        .ingress
        .as_ref()
        .map(|i| i.listeners.iter().map(|(p, l)| (*p, l.mode())).collect())
        .unwrap_or_default();
    let lock = || listeners.lock().unwrap_or_else(|p| p.into_inner());
    lock().retain(|port, bound| {
        // A port whose mode changes (HTTP to HTTPS, say) is opened again.
        let keep = wanted.get(port) == Some(&bound.mode);
        if !keep {
            tracing::info!(port, addr = %bound.addr, "gateway port closed: no server uses it any more, or its TLS changed");
            bound.task.abort();
        }
        keep
    });
    let mut complete = true;
    for (port, mode) in wanted {
        if lock().contains_key(&port) {
            continue;
        }
        let local = options.port_map.get(&port).copied().unwrap_or(port);
        let addr = SocketAddr::new(options.address, local);
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                let addr = listener.local_addr().unwrap_or(addr);
                tracing::info!(port, %addr, "gateway port open");
                let task = tokio::spawn(serve(listener, port, outbound.clone(), options.requests));
                lock().insert(port, Bound { addr, mode, task });
            }
            Err(e) => {
                complete = false;
                tracing::error!(
                    port,
                    %addr,
                    error = %e,
                    "cannot open the Gateway server port; map it to a port this gateway may bind (--port {port}=8080 and a Service targetPort), tried again in {}s",
                    REBIND_EVERY.as_secs()
                );
            }
        }
    }
    complete
}

/// Serves one gateway port: each request is checked as the gateway's own inbound
/// side ([`admit`]), then goes to the outbound executor as [`Entry::Gateway`], with
/// the client's address appended to `x-forwarded-for`.
async fn serve(
    listener: TcpListener,
    port: u16,
    outbound: Arc<Outbound>,
    requests: crate::inbound::RequestOptions,
) {
    let local = listener.local_addr().ok();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(port, error = %e, "gateway accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let outbound = outbound.clone();
        let local = tcp.local_addr().ok().or(local);
        tokio::spawn(async move {
            let mode = outbound
                .store
                .snapshot()
                .ingress
                .as_ref()
                .and_then(|i| i.listeners.get(&port))
                .map_or(super::Mode::Http, super::Listener::mode);
            if matches!(mode, super::Mode::Passthrough | super::Mode::Tcp) {
                return forward_l4(&outbound, port, tcp, peer, mode == super::Mode::Passthrough)
                    .await;
            }
            if mode == super::Mode::Http {
                let conn = Conn {
                    outbound,
                    entry: Entry::Gateway(port),
                    peer,
                    local,
                    requests,
                    scheme: "http",
                };
                return conn.serve(tcp).await;
            }
            match handshake(&outbound, port, tcp).await {
                Ok((stream, server)) => {
                    let conn = Conn {
                        outbound,
                        entry: Entry::GatewayServer { port, server },
                        peer,
                        local,
                        requests,
                        scheme: "https",
                    };
                    conn.serve(stream).await;
                }
                Err(e) => tracing::debug!(%peer, port, error = %e, "gateway TLS handshake failed"),
            }
        });
    }
}

/// A connection to a PASSTHROUGH (`passthrough`) or TCP server port: routed by the
/// `tls` route matching its ClientHello's name (the hello is read, not terminated,
/// and sent on first) or by the first `tcp` route for the port, to an endpoint of the
/// destination over mesh mTLS; the bytes are then copied both ways.
async fn forward_l4(
    outbound: &Outbound,
    port: u16,
    mut tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    passthrough: bool,
) {
    use tokio::io::AsyncWriteExt;
    let state = outbound.store.snapshot();
    let log = |outcome: &str, detail: &str| {
        tracing::info!(target: "access", direction = "gateway", protocol = if passthrough { "tls" } else { "tcp" }, port, %peer, outcome, detail);
    };
    let (hello, sni) = if passthrough {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, crate::sni::read_client_hello(&mut tcp)).await
        {
            Ok(Ok((raw, sni))) => (raw, sni.unwrap_or_default()),
            _ => return log("DC", "no complete ClientHello"),
        }
    } else {
        (Vec::new(), String::new())
    };
    let Some(listener) = state.ingress.as_ref().and_then(|i| i.listeners.get(&port)) else {
        return log("NR", "no server on this port");
    };
    let destinations = if passthrough {
        listener
            .servers
            .iter()
            .flat_map(|s| &s.tls_routes)
            .find(|r| r.matches(&sni, port))
            .map(|r| &r.destinations)
    } else {
        listener
            .servers
            .iter()
            .flat_map(|s| &s.tcp_routes)
            .find(|r| r.ports.is_empty() || r.ports.contains(&port))
            .map(|r| &r.destinations)
    };
    let Some(dest) = destinations.and_then(|d| crate::routes::pick_weighted(d, rand::random()))
    else {
        return log("NR", &format!("no route for {sni:?}"));
    };
    let Some(target) = state.services.get(&dest.host) else {
        return log("UH", &format!("unknown service {}", dest.host));
    };
    let Some(service_port) = dest
        .port
        .and_then(|p| target.port(Some(p)))
        .or_else(|| target.port(None))
    else {
        return log("UH", &format!("{} has no port", target.host));
    };
    let Some(endpoint) = outbound.pick_one(&state, target, &dest.subset, service_port.port, None)
    else {
        return log("UH", &format!("no ready endpoint for {}", target.host));
    };
    let sni_mesh = crate::sni::outbound_sni(service_port.port, &dest.subset, &target.host);
    let upstream = outbound
        .pool
        .connect_stream(
            endpoint.inbound,
            endpoint.quic.then_some(state.node.cluster.as_str()),
            &sni_mesh,
            None,
            &target.subject_alt_names,
        )
        .await;
    // Istio's TCP metrics, reported as the source: opened now, closed with the bytes.
    let labels = crate::peer::source_labels(
        &state.node,
        &outbound.own_id,
        target,
        Some(&endpoint),
        outbound.trust_domain(),
    );
    outbound.metrics.tcp_opened(&labels);
    let mut upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            outbound.metrics.tcp_closed(&labels, 0, 0);
            return log("UF", &e.to_string());
        }
    };
    let hello_sent = upstream.write_all(&hello).await.is_ok();
    let copied = if hello_sent {
        tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await
    } else {
        Err(std::io::Error::other("the upstream closed"))
    };
    let (sent, received) = copied
        .as_ref()
        .map_or((0, 0), |(up, down)| (*up + hello.len() as u64, *down));
    outbound.metrics.tcp_closed(&labels, sent, received);
    log("-", &format!("{sni_mesh} {copied:?}"));
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS handshake of an HTTPS port: the ClientHello's server name picks the server
/// (and so its certificate and whether a client certificate is required).
async fn handshake(
    outbound: &Outbound,
    port: u16,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, u64)> {
    let fail = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(
        tokio_rustls::rustls::server::Acceptor::default(),
        tcp,
    );
    let start = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor)
        .await
        .map_err(|_| fail("no ClientHello in time".into()))??;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let state = outbound.store.snapshot();
    let server = state
        .ingress
        .as_ref()
        .and_then(|i| i.listeners.get(&port))
        .and_then(|l| l.server_for_sni(sni.as_deref()))
        .and_then(|s| Some((s.id, s.tls.clone()?)))
        .ok_or_else(|| {
            fail(format!(
                "no HTTPS server on port {port} for the name {sni:?}"
            ))
        })?;
    let stream = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        start.into_stream(server.1.config.clone()),
    )
    .await
    .map_err(|_| fail("handshake timed out".into()))??;
    Ok((stream, server.0))
}

/// One client connection to a gateway port, plain or after its TLS handshake.
struct Conn {
    outbound: Arc<Outbound>,
    entry: Entry,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    requests: crate::inbound::RequestOptions,
    scheme: &'static str,
}

impl Conn {
    /// Serves HTTP/1.1 and HTTP/2 on `io` until the client closes it.
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let conn = Arc::new(self);
        let service = hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move {
                let state = conn.outbound.store.snapshot();
                let resp = match admit(&state, req, conn.peer, conn.local, conn.requests) {
                    Ok(mut req) => {
                        forwarded(req.headers_mut(), conn.peer.ip(), conn.scheme);
                        req.extensions_mut()
                            .insert(crate::plan::Scheme(conn.scheme));
                        conn.outbound
                            .handle(req, conn.entry, Some(conn.peer.ip()))
                            .await
                    }
                    Err(resp) => *resp,
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        if let Err(e) = builder
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .await
        {
            tracing::debug!(%peer, error = %e, "gateway connection ended");
        }
    }
}

/// The gateway's own checks of a request from a client, as a sidecar makes them
/// inbound: the path normalized (and forwarded so), a JWT verified when one is sent
/// (RequestAuthentication), then the AuthorizationPolicies that select the gateway
/// (the client has no mesh identity; `source.ip`/`remote.ip` are its address, the
/// destination port the one bound). Returns the request to forward, or the answer.
fn admit(
    state: &crate::state::ProxyState,
    req: http::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    options: crate::inbound::RequestOptions,
) -> Result<http::Request<hyper::body::Incoming>, Box<http::Response<crate::http_util::Body>>> {
    let (mut parts, body) = req.into_parts();
    let refuse = |refusal: crate::inbound::InboundRefusal, parts: &http::request::Parts| {
        let (status, text) = refusal.answer();
        tracing::info!(
            target: "access",
            direction = "gateway",
            method = %parts.method,
            path = %parts.uri.path(),
            status = status.as_u16(),
            response_flags = refusal.flag().map_or("-", crate::ResponseFlag::code),
            detail = %text,
        );
        Box::new(crate::http_util::text_response(status, "text/plain", text))
    };
    let normalized = match options.path_normalization.apply(parts.uri.path()) {
        std::borrow::Cow::Owned(p) => Some(p),
        std::borrow::Cow::Borrowed(_) => None,
    };
    if let Some(normal) = &normalized {
        let pq = match parts.uri.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal.clone(),
        };
        let mut uri = http::uri::Parts::from(parts.uri.clone());
        match pq.parse() {
            Ok(pq) => uri.path_and_query = Some(pq),
            Err(_) => return Err(refuse(crate::inbound::InboundRefusal::InvalidPath, &parts)),
        }
        match http::Uri::from_parts(uri) {
            Ok(u) => parts.uri = u,
            Err(_) => return Err(refuse(crate::inbound::InboundRefusal::InvalidPath, &parts)),
        }
    }
    let path = normalized.unwrap_or_else(|| parts.uri.path().to_owned());
    let host = crate::http_util::request_authority(&parts).unwrap_or_default();
    let attrs = crate::authz::Attributes {
        principal: "",
        principal_aliases: &[],
        source_ip: Some(peer.ip()),
        remote_ip: crate::inbound::remote_ip(
            &parts.headers,
            peer.ip(),
            options.num_trusted_proxies,
        ),
        destination_ip: local.map(|l| l.ip()),
        port: local.map_or(0, |l| l.port()),
        sni: "",
        http: None,
    };
    match crate::inbound::admit(state, &parts, &path, &host, attrs) {
        Ok(admitted) => {
            for policy in &admitted.audited {
                tracing::info!(target: "access", direction = "gateway", policy = %policy, path = %path, "audited");
            }
            for (name, value) in admitted.header_edits {
                match value {
                    Some(v) => {
                        parts.headers.insert(name, v);
                    }
                    None => {
                        parts.headers.remove(name);
                    }
                }
            }
            // The claims, for the routes that match on them.
            if let Some(auth) = admitted.auth {
                parts.extensions.insert(Arc::new(auth));
            }
            Ok(http::Request::from_parts(parts, body))
        }
        Err(refusal) => Err(refuse(refusal, &parts)),
    }
}

const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const XFP: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// What an edge proxy tells the services behind it, as Envoy's gateways do: the
/// client's address appended to `x-forwarded-for`, and the scheme it used in
/// `x-forwarded-proto`.
fn forwarded(headers: &mut http::HeaderMap, client: IpAddr, scheme: &'static str) {
    let list = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {client}"),
        _ => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&list) {
        headers.insert(XFF, v);
    }
    headers.insert(XFP, HeaderValue::from_static(scheme));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_appended_to_forwarded_for() {
        let mut h = http::HeaderMap::new();
        forwarded(&mut h, "203.0.113.7".parse().unwrap(), "http");
        assert_eq!(h[&XFF], "203.0.113.7");
        assert_eq!(h[&XFP], "http");
        h.insert(XFF, HeaderValue::from_static("198.51.100.1"));
        h.insert(XFP, HeaderValue::from_static("https"));
        forwarded(&mut h, "203.0.113.7".parse().unwrap(), "http");
        assert_eq!(h[&XFF], "198.51.100.1, 203.0.113.7");
        assert_eq!(
            h[&XFP], "http",
            "the gateway says what it saw, not what it was told"
        );
    }
}
