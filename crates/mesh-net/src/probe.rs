//! The east-west gateway's data-plane health check, as a linked cluster's discovery
//! sends it: a TLS connection to the gateway's own port (15443, the path every
//! cross-cluster request takes) with the server name [`GATEWAY_PROBE_SNI`], which the
//! gateway answers itself instead of routing it. Mutual TLS both ways: the prober
//! shows a mesh certificate, the gateway its own. The answer is `200` when the
//! gateway holds its config (it can route), `503` before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// The server name that asks the gateway about itself (never a mesh service: the
/// `.invalid` top-level domain cannot be one).
pub const GATEWAY_PROBE_SNI: &str = "gateway-probe.isthmus.invalid";

/// The gateway's TLS for answering probes (its identity's mTLS server config).
pub type ProbeServerConfig = Arc<tokio_rustls::rustls::ServerConfig>;

/// ALPN of the probe.
pub const ALPN_PROBE: &[u8] = b"isthmus-probe";

/// Why a probe failed or was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No TCP connection to the gateway.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The gateway.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (either side refused the other's certificate).
    #[error("TLS with {addr}: {source}")]
    Handshake {
        /// The gateway.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke while the probe was asked or answered.
    #[error("probe exchange with {addr}: {source}")]
    Exchange {
        /// The gateway.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gateway closed the connection without an answer.
    #[error("{addr} closed the probe without an answer")]
    NoAnswer {
        /// The gateway.
        addr: SocketAddr,
    },
    /// The gateway answered that it cannot route (it holds no config yet).
    #[error("{addr} answered {status:?}: {body}")]
    NotReady {
        /// The gateway.
        addr: SocketAddr,
        /// Its status line.
        status: String,
        /// Its body.
        body: String,
    },
    /// No answer in time.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The gateway.
        addr: SocketAddr,
        /// How long the prober waited.
        timeout: Duration,
    },
}

/// Why a probe could not be answered (on the gateway's side).
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The prober's handshake failed.
    #[error("probe handshake: {0}")]
    Handshake(std::io::Error),
    /// The connection broke.
    #[error("probe connection: {0}")]
    Io(std::io::Error),
    /// The request head did not end within 4 KiB.
    #[error("incomplete probe request")]
    Incomplete,
}

/// Probes the gateway at `addr` with `tls` (the prober's identity, the gateway's
/// trust): `Ok` with the gateway's answer when it is ready, else why not.
pub async fn probe_gateway(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let attempt = async {
        let tcp = crate::socket::connect_marked_from(addr, source)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let name = rustls_pki_types::ServerName::try_from(GATEWAY_PROBE_SNI)
            .expect("the probe name is a valid DNS name");
        let mut tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| ProbeError::Handshake { addr, source })?;
        let exchange = |source| ProbeError::Exchange { addr, source };
        tls.write_all(b"GET /ready HTTP/1.1\r\nhost: gateway-probe\r\nconnection: close\r\n\r\n")
            .await
            .map_err(exchange)?;
        let mut lines = BufReader::new(tls).lines();
        let status = lines
            .next_line()
            .await
            .map_err(exchange)?
            .ok_or(ProbeError::NoAnswer { addr })?;
        let mut body = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            body = line;
        }
        if status.starts_with("HTTP/1.1 200") {
            Ok(body)
        } else {
            Err(ProbeError::NotReady { addr, status, body })
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout { addr, timeout })?
}

/// Answers one probe on `stream` (the TLS connection whose ClientHello named
/// [`GATEWAY_PROBE_SNI`], replayed from its start): `ready` says whether the gateway
/// can route; `about` is the answer's body (e.g. the cluster).
pub async fn answer_probe<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    tls: ProbeServerConfig,
    ready: bool,
    about: &str,
) -> Result<(), AnswerError> {
    let mut tls = tokio_rustls::TlsAcceptor::from(tls)
        .accept(stream)
        .await
        .map_err(AnswerError::Handshake)?;
    // The request head, at most a few lines.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::io::AsyncReadExt::read(&mut tls, &mut buf)
            .await
            .map_err(AnswerError::Io)?;
        if n == 0 || head.len() > 4096 {
            return Err(AnswerError::Incomplete);
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if ready {
        ("200 OK", format!("ready {about}"))
    } else {
        ("503 Service Unavailable", format!("not ready {about}"))
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}\n",
        body.len() + 1
    );
    tls.write_all(answer.as_bytes())
        .await
        .map_err(AnswerError::Io)?;
    let _ = tls.shutdown().await;
    Ok(())
}
