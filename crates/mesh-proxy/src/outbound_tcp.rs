//! Outbound opaque TCP for captured connections: the port's declared protocol (or,
//! when undeclared, a look at the first bytes) decides between HTTP routing and a TCP
//! stream, which goes over mTLS to an endpoint's sidecar chosen by the VirtualService
//! `tcp` routes and the DestinationRule subsets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::error::ResponseFlag;
use crate::model::{Protocol, Service};
use crate::outbound::Outbound;
use crate::routes::{WeightedDestination, pick_weighted};
use crate::sni::{outbound_sni, read_client_hello};

/// Request-line starts of HTTP/1.x methods, and the HTTP/2 connection preface.
const HTTP_STARTS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2.0",
];

/// How long to wait for a client's first bytes before treating the stream as TCP
/// (server-first protocols such as MySQL send nothing first).
const SNIFF_WAIT: Duration = Duration::from_millis(100);

/// Whether a captured connection to `service`:`port` is routed as HTTP.
pub async fn is_http(stream: &TcpStream, service: &Service, port: u16) -> bool {
    match service.port(Some(port)).map(|p| p.protocol) {
        Some(p) if p.is_http() => true,
        Some(Protocol::Tcp) => false,
        _ => sniff_http(stream).await,
    }
}

/// Whether the client's first byte opens a TLS handshake record (waiting at most
/// the sniffing time for it).
async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(SNIFF_WAIT, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

async fn sniff_http(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    let deadline = Instant::now() + SNIFF_WAIT;
    loop {
        let n = match tokio::time::timeout_at(deadline.into(), stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 {
            return false;
        }
        let seen = &buf[..n];
        let possible = HTTP_STARTS
            .iter()
            .any(|s| s.starts_with(seen) || seen.starts_with(s));
        if !possible {
            return false;
        }
        if HTTP_STARTS.iter().any(|s| seen.starts_with(s)) {
            return true;
        }
        // A prefix of a method: wait for more bytes.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Outbound {
    /// Carries a captured TCP connection to `service`:`port` over mTLS.
    pub async fn tcp(&self, mut downstream: TcpStream, dst: SocketAddr, service: Arc<Service>) {
        let _in_flight = self.in_flight.start();
        let started = Instant::now();
        let state = self.store.snapshot();
        let default = [WeightedDestination {
            host: service.host.clone(),
            subset: String::new(),
            port: None,
            weight: 1,
        }];
        // TLS routes look at the ClientHello's SNI; its bytes are read here and sent
        // upstream first. A hello no route matches falls back to the TCP routes.
        let mut hello = Vec::new();
        let tls_routes = state.tls_routes.get(&service.host).cloned();
        let mut tls_dests = None;
        let mut server_name = String::new();
        if let Some(routes) = tls_routes.as_deref()
            && starts_with_tls(&downstream).await
        {
            match tokio::time::timeout(SNIFF_WAIT * 50, read_client_hello(&mut downstream)).await {
                Ok(Ok((raw, sni))) => {
                    hello = raw;
                    server_name = sni.unwrap_or_default();
                    tls_dests = routes
                        .iter()
                        .find(|r| r.matches(&server_name, dst.port()))
                        .map(|r| &r.destinations[..]);
                }
                _ => {
                    tracing::info!(target: "access", direction = "outbound", protocol = "tls", original_dst = %dst, response_flags = ResponseFlag::DownstreamConnectionTermination.code(), "no complete ClientHello");
                    return;
                }
            }
        }
        let routes = state.tcp_routes.get(&service.host).cloned();
        let dests = tls_dests.unwrap_or_else(|| {
            routes
                .as_deref()
                .and_then(|r| {
                    r.iter()
                        .find(|r| r.ports.is_empty() || r.ports.contains(&dst.port()))
                })
                .map_or(&default[..], |r| &r.destinations[..])
        });
        let log = |flag: &str, cluster: &str, host: &str, bytes: (u64, u64)| {
            tracing::info!(
                target: "access",
                direction = "outbound",
                protocol = if hello.is_empty() { "tcp" } else { "tls" },
                original_dst = %dst,
                requested_server_name = %server_name,
                upstream_cluster = %cluster,
                upstream_host = %host,
                response_flags = flag,
                bytes_sent = bytes.0,
                bytes_received = bytes.1,
                duration_ms = started.elapsed().as_millis() as u64,
            );
        };
        let Some(dest) = pick_weighted(dests, rand::random::<f64>()) else {
            return log(ResponseFlag::NoHealthyUpstream.code(), "-", "-", (0, 0));
        };
        let Some(target) = state.services.get(&dest.host) else {
            return log(
                ResponseFlag::NoHealthyUpstream.code(),
                &dest.host,
                "-",
                (0, 0),
            );
        };
        let port = dest.port.unwrap_or(dst.port());
        let cluster = outbound_sni(port, &dest.subset, &target.host);
        let policy = state.policies.get(&dest.host).map(Arc::as_ref);
        let resolved = policy.and_then(|p| p.resolve(&dest.subset, port));
        let hash = (resolved.and_then(|r| r.hash_key.as_ref())
            == Some(&crate::policy::HashKey::SourceIp))
        .then(|| downstream.peer_addr().ok())
        .flatten()
        .map(|a| crate::lb::hash_of(a.ip()));
        let endpoint = self.pick_one(&state, target, &dest.subset, port, hash);
        let Some(endpoint) = endpoint else {
            return log(
                ResponseFlag::NoHealthyUpstream.code(),
                &cluster,
                "-",
                (0, 0),
            );
        };
        match self
            .pool
            .connect_stream(
                endpoint.inbound,
                endpoint.quic.then_some(state.node.cluster.as_str()),
                &cluster,
                resolved.and_then(|r| r.connect_timeout),
            )
            .await
        {
            Ok(mut upstream) => {
                use tokio::io::AsyncWriteExt;
                if upstream.write_all(&hello).await.is_err() {
                    let flag = ResponseFlag::UpstreamReset.code();
                    return log(flag, &cluster, &endpoint.inbound.to_string(), (0, 0));
                }
                let (sent, received) =
                    tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
                        .await
                        .unwrap_or_default();
                let bytes = (sent + hello.len() as u64, received);
                log("-", &cluster, &endpoint.inbound.to_string(), bytes);
            }
            Err(e) => {
                tracing::debug!(error = %e.detail, "TCP upstream failed");
                log(
                    e.flag.code(),
                    &cluster,
                    &endpoint.inbound.to_string(),
                    (0, 0),
                );
            }
        }
    }
}
