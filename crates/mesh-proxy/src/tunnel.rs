//! QUIC tunnels to an east-west gateway (UDP 15443).
//!
//! The calling sidecar authenticates with its workload certificate, so the gateway
//! refuses callers from trust domains it does not accept before any routing. Each
//! bidirectional stream carries one connection: the stream starts with one line, the
//! target in Istio's SNI form `outbound_.PORT_.SUBSET_.HOST` and the caller's cluster
//! (as the caller states it, for metrics and logs), then the bytes of the
//! workload-to-workload mTLS session, which stays end to end inside the stream. A
//! sidecar prefers QUIC for a gateway that advertises it and falls back to TCP when
//! UDP fails, remembering the failure for a while.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_identity::Identity;
use tokio::io::AsyncReadExt;

/// ALPN of the tunnel protocol.
pub const ALPN_TUNNEL: &[u8] = b"isthmus-tunnel";
/// Longest target line.
pub const MAX_HEADER: usize = 512;
/// How long a gateway whose UDP failed is reached over TCP only.
pub const FALLBACK_FOR: Duration = Duration::from_secs(30);

/// One tunnelled connection: the stream's two halves as one byte stream.
pub type TunnelStream = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

/// Keep-alive interval of a tunnel connection.
pub const KEEP_ALIVE: Duration = Duration::from_millis(150);
/// A tunnel connection silent this long is closed, and what it carried fails over to
/// TCP. A gateway that dies sends nothing (UDP has no reset), so this bounds how long
/// requests in flight through it wait: short, at the cost of four keep-alives lost in
/// a row closing a healthy connection (then TCP carries the traffic for a while).
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(600);

/// Why a tunnel through a gateway could not be opened. Each makes the sidecar reach
/// that gateway over TCP for [`FALLBACK_FOR`].
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The TLS config cannot be used for QUIC (no TLS 1.3 suite, say).
    #[error("QUIC TLS config: {0}")]
    Config(String),
    /// The client's UDP socket.
    #[error("QUIC client socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The connection went silent past the idle timeout: the gateway is gone, or UDP
    /// is lost on the way.
    #[error("the QUIC connection to {gateway} went silent ({IDLE_TIMEOUT:?})")]
    Silent {
        /// The gateway.
        gateway: SocketAddr,
    },
    /// The handshake did not finish in time.
    #[error("QUIC handshake with {gateway} timed out after {after:?}")]
    HandshakeTimeout {
        /// The gateway.
        gateway: SocketAddr,
        /// The bound.
        after: Duration,
    },
    /// The connection could not be started.
    #[error("QUIC connection to {gateway}: {source}")]
    Connect {
        /// The gateway.
        gateway: SocketAddr,
        /// Why.
        source: quinn::ConnectError,
    },
    /// The handshake or the connection failed.
    #[error("QUIC connection to {gateway}: {source}")]
    Connection {
        /// The gateway.
        gateway: SocketAddr,
        /// Why.
        source: quinn::ConnectionError,
    },
    /// The stream's first line could not be written.
    #[error("QUIC stream to {gateway}: {source}")]
    Write {
        /// The gateway.
        gateway: SocketAddr,
        /// Why.
        source: quinn::WriteError,
    },
}

/// QUIC client config presenting `identity`.
fn client_config(identity: &Identity) -> Result<quinn::ClientConfig, TunnelError> {
    let tls = identity.client_config(vec![], &[ALPN_TUNNEL]);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TunnelError::Config(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
            .map_err(|e| TunnelError::Config(e.to_string()))?,
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// QUIC server config for a gateway: client certificates required and verified.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, TunnelError> {
    let tls = identity.server_config(&[ALPN_TUNNEL]);
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TunnelError::Config(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// The line at the start of a tunnel stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelHeader {
    /// `outbound_.PORT_.SUBSET_.HOST`.
    pub target: String,
    /// The caller's cluster (`unknown` when absent).
    pub source_cluster: String,
    /// The trace position of the request that opened the stream, when it had one: the
    /// gateway's span for this hop joins that trace.
    pub trace: Option<mesh_telemetry::trace::TraceParent>,
}

/// Reads the line at the start of a tunnel stream: `TARGET [CLUSTER [TRACEPARENT]]`.
pub async fn read_header(recv: &mut quinn::RecvStream) -> std::io::Result<TunnelHeader> {
    let mut line = Vec::with_capacity(96);
    loop {
        let b = recv.read_u8().await?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > MAX_HEADER {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "tunnel header too long",
            ));
        }
    }
    let line = String::from_utf8(line).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "tunnel header not UTF-8")
    })?;
    Ok(parse_header(&line))
}

/// Reads a tunnel stream's first line (without its newline): the target, the caller's
/// cluster (`unknown` unless a DNS label) and the trace position, each optional.
pub fn parse_header(line: &str) -> TunnelHeader {
    let mut parts = line.split_whitespace();
    let target = parts.next().unwrap_or_default().to_owned();
    let source_cluster = parts
        .next()
        .filter(|c| c.len() <= 63 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .unwrap_or("unknown")
        .to_owned();
    let trace = parts
        .next()
        .and_then(mesh_telemetry::trace::TraceParent::parse);
    TunnelHeader {
        target,
        source_cluster,
        trace,
    }
}

/// The line a caller writes first on a tunnel stream.
fn header_line(
    target: &str,
    source_cluster: &str,
    trace: Option<mesh_telemetry::trace::TraceParent>,
) -> String {
    match trace {
        Some(t) => format!("{target} {source_cluster} {}\n", t.to_w3c()),
        None => format!("{target} {source_cluster}\n"),
    }
}

/// The sidecar's QUIC connections to gateways, one per gateway, and which gateways'
/// UDP failed recently.
pub struct QuicTunnels {
    /// Made on first use: a sidecar that never reaches a QUIC gateway has no UDP
    /// socket and no endpoint task.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    identity: Identity,
    connections: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    failed: Mutex<HashMap<SocketAddr, Instant>>,
}

impl std::fmt::Debug for QuicTunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTunnels").finish_non_exhaustive()
    }
}

impl QuicTunnels {
    /// Tunnels with `identity`; the client endpoint (an ephemeral UDP port, IPv4) is
    /// made when the first tunnel is opened.
    pub fn new(identity: &Identity) -> Result<Self, TunnelError> {
        Ok(Self {
            endpoint: Mutex::default(),
            identity: identity.clone(),
            connections: Mutex::default(),
            failed: Mutex::default(),
        })
    }

    fn endpoint(&self) -> Result<quinn::Endpoint, TunnelError> {
        let mut slot = self.endpoint.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let e = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
            .map_err(TunnelError::Socket)?;
        *slot = Some(e.clone());
        Ok(e)
    }

    /// Whether QUIC to `gateway` failed within [`FALLBACK_FOR`].
    pub fn recently_failed(&self, gateway: SocketAddr) -> bool {
        self.failed
            .lock()
            .ok()
            .and_then(|m| m.get(&gateway).copied())
            .is_some_and(|at| at.elapsed() < FALLBACK_FOR)
    }

    /// Notes that a tunnel through `gateway` failed: it is reached over TCP for
    /// [`FALLBACK_FOR`], and its cached connection is dropped.
    pub fn mark_failed(&self, gateway: SocketAddr, error: &dyn std::fmt::Display) {
        tracing::info!(gateway = %gateway, error = %error, "QUIC to the gateway failed; using TCP");
        self.fail(gateway);
    }

    fn fail(&self, gateway: SocketAddr) {
        if let Ok(mut m) = self.failed.lock() {
            m.insert(gateway, Instant::now());
        }
        if let Ok(mut m) = self.connections.lock() {
            m.remove(&gateway);
        }
    }

    async fn connection(
        &self,
        gateway: SocketAddr,
        timeout: Duration,
    ) -> Result<quinn::Connection, TunnelError> {
        let cached = self
            .connections
            .lock()
            .ok()
            .and_then(|m| m.get(&gateway).cloned());
        if let Some(c) = cached {
            match c.close_reason() {
                None => return Ok(c),
                // Silent past the idle timeout: the gateway is gone or UDP is lost;
                // a new handshake would wait out its timeout too.
                Some(quinn::ConnectionError::TimedOut) => {
                    return Err(TunnelError::Silent { gateway });
                }
                Some(_) => {}
            }
        }
        let config = client_config(&self.identity)?;
        // QUIC needs a server name; the gateway's certificate is checked by identity.
        let connecting = self
            .endpoint()?
            .connect_with(config, gateway, "eastwest-gateway")
            .map_err(|source| TunnelError::Connect { gateway, source })?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| TunnelError::HandshakeTimeout {
                gateway,
                after: timeout,
            })?
            .map_err(|source| TunnelError::Connection { gateway, source })?;
        if let Ok(mut m) = self.connections.lock() {
            m.insert(gateway, conn.clone());
        }
        Ok(conn)
    }

    /// Opens a stream to `target` (`outbound_.PORT_.SUBSET_.HOST`) through `gateway`,
    /// saying which cluster it comes from and, when a request opens it, that request's
    /// trace position. On failure the gateway is reached over TCP for a while.
    pub async fn open(
        &self,
        gateway: SocketAddr,
        target: &str,
        source_cluster: &str,
        trace: Option<mesh_telemetry::trace::TraceParent>,
        timeout: Duration,
    ) -> Result<TunnelStream, TunnelError> {
        let result = async {
            let conn = self.connection(gateway, timeout).await?;
            let (mut send, recv) = conn
                .open_bi()
                .await
                .map_err(|source| TunnelError::Connection { gateway, source })?;
            send.write_all(header_line(target, source_cluster, trace).as_bytes())
                .await
                .map_err(|source| TunnelError::Write { gateway, source })?;
            Ok(tokio::io::join(recv, send))
        }
        .await;
        if let Err(e) = &result {
            self.mark_failed(gateway, e);
        }
        result
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn the_header_carries_target_cluster_and_trace() {
        let trace = mesh_telemetry::trace::TraceParent {
            trace_id: [7; 16],
            span_id: [9; 8],
            sampled: true,
        };
        let line = header_line(
            "outbound_.9080_._.reviews.sample.svc.cluster.local",
            "east",
            Some(trace),
        );
        let h = parse_header(line.trim_end());
        assert_eq!(
            h.target,
            "outbound_.9080_._.reviews.sample.svc.cluster.local"
        );
        assert_eq!(h.source_cluster, "east");
        assert_eq!(h.trace, Some(trace));
        // An older caller: target and cluster only; a bad trace is ignored.
        let h = parse_header("outbound_.1_._.a east");
        assert_eq!((h.source_cluster.as_str(), h.trace), ("east", None));
        let h = parse_header("outbound_.1_._.a east 00-zz-yy-01");
        assert_eq!(h.trace, None);
        let h = parse_header("outbound_.1_._.a bad/cluster");
        assert_eq!(h.source_cluster, "unknown");
    }
}
