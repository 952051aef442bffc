//! Upstream connections to other sidecars: mTLS with the workload identity, SNI in
//! Istio's format, HTTP/2 multiplexed, one connection per (endpoint, SNI) reused
//! until it closes.

use mesh_telemetry::trace::TraceParent;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_identity::Identity;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::ResponseFlag;
use crate::http_util::Body;

/// Why an upstream request failed, classified for the response flag.
/// Why a connection to, or an exchange with, an upstream failed. [`UpstreamError::flag`]
/// is the one place its response flag is chosen (and with it retries and status).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No TCP connection within the connect timeout.
    #[error("{addr}: connect timed out after {after:?}")]
    ConnectTimeout {
        /// The upstream.
        addr: SocketAddr,
        /// The timeout in force.
        after: Duration,
    },
    /// The TCP connection failed.
    #[error("{addr}: {source}")]
    Connect {
        /// The upstream.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The cluster's SNI is not a DNS name.
    #[error("SNI {sni:?}: {source}")]
    InvalidSni {
        /// The server name.
        sni: String,
        /// Why.
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// No mTLS handshake within the connect timeout.
    #[error("{addr}: mTLS handshake timed out after {after:?}")]
    HandshakeTimeout {
        /// The upstream.
        addr: SocketAddr,
        /// The timeout in force.
        after: Duration,
    },
    /// The mTLS handshake failed (the explanation names the certificate problem).
    #[error("{addr}: mTLS handshake failed: {reason}")]
    Handshake {
        /// The upstream.
        addr: SocketAddr,
        /// What went wrong, explained.
        reason: String,
    },
    /// The HTTP/1.1 or HTTP/2 handshake on a new connection failed.
    #[error("{addr}: {protocol} handshake failed: {source}")]
    HttpHandshake {
        /// The upstream.
        addr: SocketAddr,
        /// `HTTP/1.1` or `HTTP/2`.
        protocol: &'static str,
        /// Why.
        source: hyper::Error,
    },
    /// The TLS this proxy opened to a destination (DestinationRule SIMPLE or MUTUAL)
    /// failed: the server's certificate, or ours.
    #[error("{addr}: TLS error: {source}")]
    OriginationHandshake {
        /// The upstream.
        addr: SocketAddr,
        /// rustls's reason.
        source: std::io::Error,
    },
    /// No response within the route's per-try timeout.
    #[error("no response within {0:?}")]
    PerTryTimeout(Duration),
    /// The connection broke while the request was sent or answered.
    #[error("{addr}: {source}")]
    Reset {
        /// The upstream.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// The response flag: connection failures are UF (retried on `connect-failure`),
    /// a per-try timeout UT, a broken exchange UR (retried on `reset`).
    pub fn flag(&self) -> ResponseFlag {
        match self {
            Self::ConnectTimeout { .. }
            | Self::Connect { .. }
            | Self::InvalidSni { .. }
            | Self::HandshakeTimeout { .. }
            | Self::Handshake { .. }
            | Self::OriginationHandshake { .. }
            | Self::HttpHandshake { .. } => ResponseFlag::UpstreamConnectionFailure,
            Self::PerTryTimeout(_) => ResponseFlag::UpstreamTimeout,
            Self::Reset { .. } => ResponseFlag::UpstreamReset,
        }
    }
}

/// Any byte stream a mesh connection runs over: TCP, or a QUIC tunnel stream.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// An mTLS connection to another sidecar.
pub type MeshStream = TlsStream<Box<dyn Io>>;

/// When an upstream HTTP/2 connection is replaced (DestinationRule
/// `connectionPool.http`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reuse {
    /// Requests per connection (`maxRequestsPerConnection`).
    pub max_requests: Option<u32>,
    /// Longest idle time (`idleTimeout`).
    pub idle: Option<Duration>,
}

impl Reuse {
    /// Whether a connection that has carried `requests` and was last used at
    /// `last_used` must be replaced.
    fn worn(&self, requests: u32, last_used: std::time::Instant) -> bool {
        self.max_requests.is_some_and(|n| requests >= n)
            || self.idle.is_some_and(|t| last_used.elapsed() > t)
    }

    /// The settings of a resolved policy.
    pub fn of(policy: Option<&crate::policy::ResolvedPolicy>) -> Self {
        Self {
            max_requests: policy.and_then(|p| p.max_requests_per_connection),
            idle: policy.and_then(|p| p.idle_timeout),
        }
    }
}

/// Where and how one request goes upstream.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// The endpoint's sidecar (or gateway) address.
    pub endpoint: SocketAddr,
    /// Istio's SNI `outbound_.PORT_.SUBSET_.HOST`.
    pub sni: &'a str,
    /// This proxy's cluster, when the endpoint is a gateway that accepts QUIC tunnels.
    pub tunnel: Option<&'a str>,
    /// `tls.mode: DISABLE`: plain HTTP to this address (the workload's own port).
    pub plaintext: Option<SocketAddr>,
    /// With `plaintext`: TLS opened here to that address (`tls.mode` SIMPLE or
    /// MUTUAL), and the destination host it is for.
    pub origination: Option<(&'a crate::origination::Origination, &'a str)>,
    /// The DestinationRule's connect timeout, else the pool's default.
    pub connect_timeout: Option<Duration>,
    /// When pooled connections are replaced.
    pub reuse: Reuse,
    /// HTTP/1.1 between the sidecars (one request at a time per pooled connection)
    /// rather than HTTP/2 (multiplexed).
    pub http1: bool,
    /// The identities the endpoint's certificate may have (a ServiceEntry's
    /// `subjectAltNames`); any of the mesh's trust when empty.
    pub subject_alt_names: &'a [String],
}

/// One pooled connection and how it has been used.
struct Pooled {
    sender: SendRequest<Body>,
    /// The peer's identity, checked again on reuse against the current
    /// `subjectAltNames` (a narrowed list retires connections it no longer admits).
    peer: Arc<str>,
    requests: u32,
    last_used: std::time::Instant,
}

/// Pooled connections by endpoint, then SNI: found by the request's `&str` without
/// building a key.
type ByEndpoint<T> = HashMap<SocketAddr, HashMap<Arc<str>, T>>;

/// The SPIFFE identity of an mTLS peer (empty when it has none, which the handshake
/// does not let happen).
fn peer_of(tls: &MeshStream) -> Arc<str> {
    mesh_identity::verify::peer_id(tls.get_ref().1.peer_certificates(), "upstream")
        .map(|id| Arc::from(id.to_string()))
        .unwrap_or_else(|_| Arc::from(""))
}

/// Whether `subjectAltNames` admit the peer `id` (any peer when there are none).
fn admits(subject_alt_names: &[String], id: &str) -> Result<(), String> {
    if subject_alt_names.is_empty() || subject_alt_names.iter().any(|san| san == id) {
        Ok(())
    } else {
        Err(format!(
            "the peer is {id}, which is not one of the subjectAltNames {subject_alt_names:?}"
        ))
    }
}

/// Open HTTP/2 connections by (endpoint, SNI).
type Connections = ByEndpoint<Pooled>;

/// How often the pools are swept of closed and long-idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How long an unused pooled connection is kept when no DestinationRule says
/// (`idleTimeout`): Envoy's default for upstream connections.
const MAX_IDLE: Duration = Duration::from_secs(3600);

/// One pooled HTTP/1.1 connection: in the pool while idle, out of it while a request
/// and its response are on it.
struct Pooled1 {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    /// As [`Pooled::peer`].
    peer: Arc<str>,
    requests: u32,
    last_used: std::time::Instant,
    endpoint: SocketAddr,
    sni: Arc<str>,
}

/// Idle HTTP/1.1 connections by (endpoint, SNI), most recently used last.
type Idle1 = ByEndpoint<Vec<Pooled1>>;

/// A response body from upstream. One read over HTTP/1.1 to its end puts its
/// connection back in the pool (read to the end, or ended without a body); dropped
/// before that, the connection is closed with it.
pub struct UpstreamBody {
    inner: hyper::body::Incoming,
    give_back: Option<(Pooled1, Arc<Mutex<Idle1>>)>,
}

impl UpstreamBody {
    fn new(inner: hyper::body::Incoming) -> Self {
        Self {
            inner,
            give_back: None,
        }
    }

    fn returning(inner: hyper::body::Incoming, conn: Pooled1, idle: Arc<Mutex<Idle1>>) -> Self {
        let mut body = Self {
            inner,
            give_back: Some((conn, idle)),
        };
        body.give_back_if_done();
        body
    }

    fn give_back_if_done(&mut self) {
        if !hyper::body::Body::is_end_stream(&self.inner) {
            return;
        }
        if let Some((mut conn, idle)) = self.give_back.take()
            && !conn.sender.is_closed()
            && let Ok(mut m) = idle.lock()
        {
            conn.last_used = std::time::Instant::now();
            m.entry(conn.endpoint)
                .or_default()
                .entry(conn.sni.clone())
                .or_default()
                .push(conn);
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if frame.is_ready() {
            self.give_back_if_done();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.give_back_if_done();
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

/// The pool. Cloning shares it.
#[derive(Clone)]
pub struct MeshPool {
    connector: TlsConnector,
    h1_connector: TlsConnector,
    tcp_connector: TlsConnector,
    connect_timeout: Duration,
    conns: Arc<Mutex<Connections>>,
    idle1: Arc<Mutex<Idle1>>,
    /// When closed connections (to endpoints that went away, say) were last swept out
    /// of both maps.
    swept: Arc<Mutex<std::time::Instant>>,
    tunnels: Option<Arc<crate::tunnel::QuicTunnels>>,
}

impl std::fmt::Debug for MeshPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshPool").finish_non_exhaustive()
    }
}

impl MeshPool {
    /// A pool presenting `identity`'s certificate and verifying peers with its trust.
    pub fn new(identity: &Identity, connect_timeout: Duration) -> Self {
        let config = identity.client_config(vec![], &[b"h2"]);
        let h1_config = identity.client_config(vec![], &[b"http/1.1"]);
        let tcp_config = identity.client_config(vec![], &[crate::inbound::ALPN_TCP]);
        Self {
            connector: TlsConnector::from(Arc::new(config)),
            h1_connector: TlsConnector::from(Arc::new(h1_config)),
            tcp_connector: TlsConnector::from(Arc::new(tcp_config)),
            connect_timeout,
            conns: Arc::default(),
            idle1: Arc::default(),
            swept: Arc::new(Mutex::new(std::time::Instant::now())),
            tunnels: crate::tunnel::QuicTunnels::new(identity)
                .inspect_err(|e| tracing::warn!(error = %e, "no QUIC tunnels: gateways are reached over TCP"))
                .ok()
                .map(Arc::new),
        }
    }

    /// Sends `req` upstream as `up` says: over the pooled mTLS HTTP/2 connection to
    /// the endpoint's sidecar (in a QUIC tunnel first when `up.tunnel` is set), or as
    /// plain HTTP to a workload without a sidecar.
    pub async fn send(
        &self,
        up: &Upstream<'_>,
        req: http::Request<Body>,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        if let Some(addr) = up.plaintext {
            return self
                .send_plain(addr, up.origination, req, up.connect_timeout)
                .await;
        }
        if up.http1 {
            return self.send_http1(up, req).await;
        }
        let Upstream {
            endpoint,
            tunnel,
            sni,
            connect_timeout,
            reuse,
            ..
        } = *up;
        let cached = self.conns.lock().ok().and_then(|mut m| {
            let by_sni = m.get_mut(&endpoint)?;
            let p = by_sni.get_mut(sni)?;
            let worn = reuse.worn(p.requests, p.last_used)
                || p.sender.is_closed()
                || admits(up.subject_alt_names, &p.peer).is_err();
            if worn {
                // Dropping the sender closes the connection once its requests finish.
                by_sni.remove(sni);
                return None;
            }
            p.requests += 1;
            p.last_used = std::time::Instant::now();
            Some(p.sender.clone())
        });
        let mut sender = match cached {
            Some(s) => s,
            None => {
                self.sweep();
                // The request that opens a connection passes its trace position to
                // a gateway tunnel, so the gateway's span joins that trace.
                let trace = tunnel.and_then(|_| TraceParent::from_headers(req.headers()));
                let (s, peer) = self
                    .connect(
                        endpoint,
                        tunnel,
                        sni,
                        connect_timeout,
                        trace,
                        up.subject_alt_names,
                    )
                    .await?;
                if let Ok(mut m) = self.conns.lock() {
                    m.entry(endpoint).or_default().insert(
                        Arc::from(sni),
                        Pooled {
                            sender: s.clone(),
                            peer,
                            requests: 1,
                            last_used: std::time::Instant::now(),
                        },
                    );
                }
                s
            }
        };
        sender
            .ready()
            .await
            .map_err(|source| UpstreamError::Reset {
                addr: endpoint,
                source,
            })?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(resp.map(UpstreamBody::new)),
            Err(source) => {
                if let Ok(mut m) = self.conns.lock()
                    && let Some(by_sni) = m.get_mut(&endpoint)
                {
                    by_sni.remove(sni);
                }
                Err(UpstreamError::Reset {
                    addr: endpoint,
                    source,
                })
            }
        }
    }

    /// At most every [`SWEEP_EVERY`], drops pooled connections that are closed or
    /// idle for longer than [`MAX_IDLE`], whatever their destination: entries for
    /// endpoints no request goes to any more would otherwise stay for good. Called
    /// when a connection is opened (the only time entries are added), not per
    /// request.
    fn sweep(&self) {
        let due = self.swept.lock().is_ok_and(|mut at| {
            let due = at.elapsed() >= SWEEP_EVERY;
            if due {
                *at = std::time::Instant::now();
            }
            due
        });
        if !due {
            return;
        }
        if let Ok(mut m) = self.conns.lock() {
            m.retain(|_, by_sni| {
                by_sni.retain(|_, p| !p.sender.is_closed() && p.last_used.elapsed() < MAX_IDLE);
                !by_sni.is_empty()
            });
        }
        if let Ok(mut m) = self.idle1.lock() {
            m.retain(|_, by_sni| {
                by_sni.retain(|_, list| {
                    list.retain(|p| !p.sender.is_closed() && p.last_used.elapsed() < MAX_IDLE);
                    !list.is_empty()
                });
                !by_sni.is_empty()
            });
        }
    }

    /// Sends `req` as HTTP/1.1 over a pooled mTLS connection to the endpoint's sidecar:
    /// an idle one when there is one (the most recently used), else a new one. The
    /// connection goes back to the pool once its response has been read.
    async fn send_http1(
        &self,
        up: &Upstream<'_>,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        to_http1(&mut req);
        let reuse = up.reuse;
        let mut conn = loop {
            let idle = self.idle1.lock().ok().and_then(|mut m| {
                let list = m.get_mut(&up.endpoint)?.get_mut(up.sni)?;
                // Worn connections are dropped (closing them).
                list.retain(|p| {
                    !p.sender.is_closed()
                        && !reuse.worn(p.requests, p.last_used)
                        && admits(up.subject_alt_names, &p.peer).is_ok()
                });
                list.pop()
            });
            let Some(mut c) = idle else {
                break self.open_http1(up, &req).await?;
            };
            // Back in the pool as soon as its last response was read: ready once its
            // connection has finished with that response, or closed by the server.
            if c.sender.ready().await.is_ok() {
                break c;
            }
        };
        conn.requests += 1;
        let endpoint = up.endpoint;
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Reset {
                addr: endpoint,
                source,
            })?;
        let idle = self.idle1.clone();
        Ok(resp.map(|body| UpstreamBody::returning(body, conn, idle)))
    }

    /// A new mTLS HTTP/1.1 connection for `up`.
    async fn open_http1(
        &self,
        up: &Upstream<'_>,
        req: &http::Request<Body>,
    ) -> Result<Pooled1, UpstreamError> {
        self.sweep();
        let trace = up
            .tunnel
            .and_then(|_| TraceParent::from_headers(req.headers()));
        let tls = self
            .tls(
                &self.h1_connector,
                up.endpoint,
                (up.tunnel, up.sni),
                up.connect_timeout,
                trace,
                up.subject_alt_names,
            )
            .await?;
        let peer = peer_of(&tls);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| UpstreamError::HttpHandshake {
                addr: up.endpoint,
                protocol: "HTTP/1.1",
                source,
            })?;
        tokio::spawn(conn);
        Ok(Pooled1 {
            sender,
            peer,
            requests: 0,
            last_used: std::time::Instant::now(),
            endpoint: up.endpoint,
            sni: Arc::from(up.sni),
        })
    }

    /// Sends `req` as HTTP/1.1 straight to `addr` (a workload without a sidecar, or a
    /// destination outside the mesh): in the clear, or over the TLS `origination` asks
    /// for; over a fresh connection that capture leaves alone.
    async fn send_plain(
        &self,
        addr: SocketAddr,
        origination: Option<(&crate::origination::Origination, &str)>,
        req: http::Request<Body>,
        connect_timeout: Option<Duration>,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let tcp = self.connect_plain(addr, connect_timeout).await?;
        let io: Box<dyn Io> = match origination {
            Some((o, host)) => Box::new(
                o.connect(tcp, host)
                    .await
                    .map_err(|source| UpstreamError::OriginationHandshake { addr, source })?,
            ),
            None => Box::new(tcp),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::HttpHandshake {
                addr,
                protocol: "HTTP/1.1",
                source,
            })?;
        tokio::spawn(conn);
        let mut req = req;
        // Origin-form and a Host header, as any HTTP/1.1 server expects them.
        to_http1(&mut req);
        sender
            .send_request(req)
            .await
            .map(|resp| resp.map(UpstreamBody::new))
            .map_err(|source| UpstreamError::Reset { addr, source })
    }

    /// A plain TCP connection to `addr` (a destination without a sidecar or outside the
    /// mesh), marked so that capture leaves it alone.
    pub async fn connect_plain(
        &self,
        addr: SocketAddr,
        connect_timeout: Option<Duration>,
    ) -> Result<tokio::net::TcpStream, UpstreamError> {
        let timeout = connect_timeout.unwrap_or(self.connect_timeout);
        tokio::time::timeout(timeout, mesh_net::socket::connect_marked(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                addr,
                after: timeout,
            })?
            .map_err(|source| UpstreamError::Connect { addr, source })
    }

    /// Opens an mTLS stream for opaque TCP to the sidecar at `endpoint`.
    pub async fn connect_stream(
        &self,
        endpoint: SocketAddr,
        tunnel: Option<&str>,
        sni: &str,
        connect_timeout: Option<Duration>,
        subject_alt_names: &[String],
    ) -> Result<MeshStream, UpstreamError> {
        self.tls(
            &self.tcp_connector,
            endpoint,
            (tunnel, sni),
            connect_timeout,
            None,
            subject_alt_names,
        )
        .await
    }

    /// The mTLS handshake, then the check of the peer's identity against
    /// `subject_alt_names` (when there are any).
    async fn tls(
        &self,
        connector: &TlsConnector,
        endpoint: SocketAddr,
        (tunnel, sni): (Option<&str>, &str),
        connect_timeout: Option<Duration>,
        trace: Option<TraceParent>,
        subject_alt_names: &[String],
    ) -> Result<MeshStream, UpstreamError> {
        let tls = self
            .handshake(connector, endpoint, tunnel, sni, connect_timeout, trace)
            .await?;
        admits(subject_alt_names, &peer_of(&tls)).map_err(|reason| UpstreamError::Handshake {
            addr: endpoint,
            reason,
        })?;
        Ok(tls)
    }

    async fn handshake(
        &self,
        connector: &TlsConnector,
        endpoint: SocketAddr,
        tunnel: Option<&str>,
        sni: &str,
        connect_timeout: Option<Duration>,
        trace: Option<TraceParent>,
    ) -> Result<MeshStream, UpstreamError> {
        // The DestinationRule's connectTimeout, else the proxy's default.
        let timeout = connect_timeout.unwrap_or(self.connect_timeout);
        let name = rustls_server_name(sni).map_err(|source| UpstreamError::InvalidSni {
            sni: sni.to_owned(),
            source,
        })?;
        let handshake_failed = |e: std::io::Error| UpstreamError::Handshake {
            addr: endpoint,
            reason: mesh_identity::explain(&e),
        };
        if let (Some(tunnels), Some(source)) = (
            self.tunnels
                .as_ref()
                .filter(|t| !t.recently_failed(endpoint)),
            tunnel,
        ) {
            // A gateway that advertises QUIC: a tunnel stream, else TCP below. The
            // bound covers the mTLS handshake too: a cached QUIC connection to a
            // gateway that has just died still opens streams, and only its idle
            // timeout (tens of seconds) would end them.
            let quic_timeout = timeout.min(Duration::from_millis(500));
            let attempt = tokio::time::timeout(quic_timeout, async {
                // A tunnel that fails marks itself failed; so does a handshake
                // inside it that fails, below.
                let Ok(stream) = tunnels
                    .open(endpoint, sni, source, trace, quic_timeout)
                    .await
                else {
                    return None;
                };
                match connector
                    .connect(name.clone(), Box::new(stream) as Box<dyn Io>)
                    .await
                {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        tunnels.mark_failed(endpoint, &mesh_identity::explain(&e));
                        None
                    }
                }
            })
            .await;
            match attempt {
                Ok(Some(tls)) => return Ok(tls),
                Ok(None) => {}
                Err(_) => tunnels.mark_failed(
                    endpoint,
                    &format_args!("no tunnel with mTLS within {quic_timeout:?}"),
                ),
            }
        }
        let tcp: TcpStream =
            tokio::time::timeout(timeout, mesh_net::socket::connect_marked(endpoint))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout {
                    addr: endpoint,
                    after: timeout,
                })?
                .map_err(|source| UpstreamError::Connect {
                    addr: endpoint,
                    source,
                })?;
        tokio::time::timeout(
            timeout,
            connector.connect(name, Box::new(tcp) as Box<dyn Io>),
        )
        .await
        .map_err(|_| UpstreamError::HandshakeTimeout {
            addr: endpoint,
            after: timeout,
        })?
        .map_err(handshake_failed)
    }

    async fn connect(
        &self,
        endpoint: SocketAddr,
        tunnel: Option<&str>,
        sni: &str,
        connect_timeout: Option<Duration>,
        trace: Option<TraceParent>,
        subject_alt_names: &[String],
    ) -> Result<(SendRequest<Body>, Arc<str>), UpstreamError> {
        let tls = self
            .tls(
                &self.connector,
                endpoint,
                (tunnel, sni),
                connect_timeout,
                trace,
                subject_alt_names,
            )
            .await?;
        let peer = peer_of(&tls);
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|source| UpstreamError::HttpHandshake {
                    addr: endpoint,
                    protocol: "HTTP/2",
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "upstream connection closed");
            }
        });
        Ok((sender, peer))
    }
}

fn rustls_server_name(
    sni: &str,
) -> Result<rustls_pki_types::ServerName<'static>, rustls_pki_types::InvalidDnsNameError> {
    rustls_pki_types::ServerName::try_from(sni.to_owned())
}

/// HTTP/1.1 on the wire: version 1.1, the authority in `Host`, an origin-form target.
fn to_http1(req: &mut http::Request<Body>) {
    *req.version_mut() = http::Version::HTTP_11;
    if let Some(authority) = req.uri().authority()
        && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(http::header::HOST, host);
    }
    let target = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = http::Uri::from(target);
}
