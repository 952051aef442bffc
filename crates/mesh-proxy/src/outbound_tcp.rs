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
use crate::policy::{HashKey, ResolvedPolicy};
use crate::routes::pick_weighted;
use crate::sni::{outbound_sni, read_client_hello};
use crate::state::ProxyState;

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

/// Where one captured TCP (or TLS) connection goes, decided without I/O.
#[derive(Debug)]
pub(crate) struct TcpPlan<'s> {
    /// The destination service.
    pub target: &'s Arc<Service>,
    /// Its subset ("" for none).
    pub subset: &'s str,
    /// The destination port.
    pub port: u16,
    /// The upstream cluster's SNI, `outbound_.PORT_.SUBSET_.HOST`.
    pub cluster: String,
    /// The traffic policy in force for (subset, port).
    pub resolved: Option<&'s ResolvedPolicy>,
    /// The policy hashes on the caller's address (`useSourceIp`).
    pub hash_source_ip: bool,
}

/// Why a captured connection has no destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TcpRefusal {
    /// Every destination of the matching route has weight 0.
    #[error("every destination has weight 0")]
    AllWeightsZero,
    /// The route names a host that is not a known service.
    #[error("unknown service {0}")]
    UnknownService(String),
}

impl TcpRefusal {
    /// The flag it is recorded with.
    pub(crate) fn flag(&self) -> ResponseFlag {
        match self {
            Self::AllWeightsZero | Self::UnknownService(_) => ResponseFlag::NoHealthyUpstream,
        }
    }
}

/// Plans a captured connection to `service` on `port`: the `tls` route matching the
/// ClientHello's `server_name` when one was read, else the first `tcp` route for the
/// port, else the service itself; `roll` in [0, 1) picks among weighted destinations.
pub(crate) fn plan_tcp<'s>(
    state: &'s ProxyState,
    service: &'s Arc<Service>,
    port: u16,
    server_name: Option<&str>,
    roll: f64,
) -> Result<TcpPlan<'s>, TcpRefusal> {
    let tls = server_name.and_then(|name| {
        state
            .tls_routes
            .get(&service.host)?
            .iter()
            .find(|r| r.matches(name, port))
    });
    let dests = match tls {
        Some(route) => Some(&route.destinations[..]),
        None => state
            .tcp_routes
            .get(&service.host)
            .and_then(|routes| {
                routes
                    .iter()
                    .find(|r| r.ports.is_empty() || r.ports.contains(&port))
            })
            .map(|r| &r.destinations[..]),
    };
    let (host, subset, dest_port) = match dests {
        Some(dests) => {
            let d = pick_weighted(dests, roll).ok_or(TcpRefusal::AllWeightsZero)?;
            (d.host.as_str(), d.subset.as_str(), d.port)
        }
        None => (service.host.as_str(), "", None),
    };
    let target = state
        .services
        .get(host)
        .ok_or_else(|| TcpRefusal::UnknownService(host.to_owned()))?;
    let port = dest_port.unwrap_or(port);
    let resolved = state
        .policies
        .get(host)
        .and_then(|p| p.resolve(subset, port));
    Ok(TcpPlan {
        target,
        subset,
        port,
        cluster: outbound_sni(port, subset, &target.host),
        resolved,
        hash_source_ip: resolved.and_then(|r| r.hash_key.as_ref()) == Some(&HashKey::SourceIp),
    })
}

/// How a captured connection ended, for its one record.
struct TcpOutcome<'a> {
    flag: Option<ResponseFlag>,
    /// The service the metrics name (the destination once planned).
    service: &'a Service,
    cluster: &'a str,
    endpoint: Option<&'a Arc<crate::model::Endpoint>>,
    /// Bytes to and from the upstream.
    bytes: (u64, u64),
    /// The connection left in the clear or over TLS opened here, not over mesh mTLS.
    plaintext: bool,
    /// Whether the connection was counted as opened when it was (a connection that
    /// never reached an upstream is counted opened and closed at its end).
    counted_open: bool,
}

impl Outbound {
    /// Carries a captured TCP connection to `service`:`port` over mTLS.
    pub async fn tcp(&self, mut downstream: TcpStream, dst: SocketAddr, service: Arc<Service>) {
        let _in_flight = self.in_flight.start();
        let started = Instant::now();
        let state = self.store.snapshot();
        // TLS routes look at the ClientHello's SNI; its bytes are read here and sent
        // upstream first. A hello no route matches falls back to the TCP routes.
        let mut hello = Vec::new();
        let mut server_name = None;
        if state.tls_routes.contains_key(&service.host) && starts_with_tls(&downstream).await {
            match tokio::time::timeout(SNIFF_WAIT * 50, read_client_hello(&mut downstream)).await {
                Ok(Ok((raw, sni))) => {
                    hello = raw;
                    server_name = Some(sni.unwrap_or_default());
                }
                _ => {
                    tracing::info!(target: "access", direction = "outbound", protocol = "tls", original_dst = %dst, response_flags = ResponseFlag::DownstreamConnectionTermination.code(), "no complete ClientHello");
                    return;
                }
            }
        }
        let record = |o: TcpOutcome<'_>| {
            self.record_tcp(
                &state,
                dst,
                server_name.as_deref(),
                !hello.is_empty(),
                started,
                o,
            );
        };
        let plan = match plan_tcp(
            &state,
            &service,
            dst.port(),
            server_name.as_deref(),
            rand::random::<f64>(),
        ) {
            Ok(plan) => plan,
            Err(refusal) => {
                tracing::debug!(reason = %refusal, "TCP connection refused");
                return record(TcpOutcome {
                    flag: Some(refusal.flag()),
                    service: &service,
                    cluster: "-",
                    endpoint: None,
                    bytes: (0, 0),
                    plaintext: false,
                    counted_open: false,
                });
            }
        };
        let hash = plan
            .hash_source_ip
            .then(|| downstream.peer_addr().ok())
            .flatten()
            .map(|a| crate::lb::hash_of(a.ip()));
        let Some(endpoint) = self.pick_one(&state, plan.target, plan.subset, plan.port, hash)
        else {
            return record(TcpOutcome {
                flag: Some(ResponseFlag::NoHealthyUpstream),
                service: plan.target,
                cluster: &plan.cluster,
                endpoint: None,
                bytes: (0, 0),
                plaintext: false,
                counted_open: false,
            });
        };
        let timeout = plan.resolved.and_then(|r| r.connect_timeout);
        // Outside the mesh: the endpoint's own port, in the clear; else mTLS to its
        // sidecar.
        // Or over TLS opened here (tls.mode SIMPLE or MUTUAL), to the endpoint's port.
        let origination = plan.resolved.and_then(|r| r.origination.as_deref());
        let outside = plan
            .target
            .port(Some(plan.port))
            .filter(|_| {
                plan.target.location == crate::model::Location::External || origination.is_some()
            })
            .map(|p| SocketAddr::new(endpoint.inbound.ip(), endpoint.port_for(p)));
        let upstream: Result<Box<dyn crate::pool::Io>, crate::pool::UpstreamError> = match outside {
            Some(addr) => match (self.pool.connect_plain(addr, timeout).await, origination) {
                (Ok(tcp), Some(o)) => o
                    .connect(tcp, &plan.target.host)
                    .await
                    .map(|s| Box::new(s) as _)
                    .map_err(|source| crate::pool::UpstreamError::OriginationHandshake {
                        addr,
                        source,
                    }),
                (tcp, _) => tcp.map(|s| Box::new(s) as _),
            },
            None => self
                .pool
                .connect_stream(
                    endpoint.inbound,
                    endpoint.quic.then_some(state.node.cluster.as_str()),
                    &plan.cluster,
                    timeout,
                    &plan.target.subject_alt_names,
                )
                .await
                .map(|s| Box::new(s) as _),
        };
        let counted_open = upstream.is_ok();
        if counted_open {
            self.metrics.tcp_opened(&self.try_labels(
                &state,
                plan.target,
                &endpoint,
                outside.is_some(),
            ));
        }
        let (flag, bytes) = match upstream {
            Ok(mut upstream) => {
                use tokio::io::AsyncWriteExt;
                if upstream.write_all(&hello).await.is_err() {
                    (Some(ResponseFlag::UpstreamReset), (0, 0))
                } else {
                    let (sent, received) =
                        tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
                            .await
                            .unwrap_or_default();
                    (None, (sent + hello.len() as u64, received))
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "TCP upstream failed");
                (Some(e.flag()), (0, 0))
            }
        };
        record(TcpOutcome {
            flag,
            service: plan.target,
            cluster: &plan.cluster,
            endpoint: Some(&endpoint),
            bytes,
            plaintext: outside.is_some(),
            counted_open,
        });
    }

    /// The one record of a captured connection: access log and Istio's TCP metrics.
    fn record_tcp(
        &self,
        state: &ProxyState,
        dst: SocketAddr,
        server_name: Option<&str>,
        tls: bool,
        started: Instant,
        o: TcpOutcome<'_>,
    ) {
        let host = o
            .endpoint
            .map_or_else(|| "-".to_owned(), |e| e.inbound.to_string());
        tracing::info!(
            target: "access",
            direction = "outbound",
            protocol = if tls { "tls" } else { "tcp" },
            original_dst = %dst,
            requested_server_name = server_name.unwrap_or_default(),
            upstream_cluster = %o.cluster,
            upstream_host = %host,
            response_flags = o.flag.map_or("-", ResponseFlag::code),
            bytes_sent = o.bytes.0,
            bytes_received = o.bytes.1,
            duration_ms = started.elapsed().as_millis() as u64,
        );
        let labels = match o.endpoint {
            Some(e) => self.try_labels(state, o.service, e, o.plaintext),
            None => crate::peer::source_labels(
                &state.node,
                &self.own_id,
                o.service,
                None,
                self.trust_domain(),
            ),
        };
        if !o.counted_open {
            self.metrics.tcp_opened(&labels);
        }
        self.metrics.tcp_closed(&labels, o.bytes.0, o.bytes.1);
        self.metrics.edges().observe(
            &labels,
            mesh_telemetry::edges::Call {
                protocol: mesh_telemetry::edges::Protocol::Tcp,
                via_gateway: o.endpoint.is_some_and(|e| e.through_gateway(&state.node)),
                failed: o.flag.is_some(),
                duration_ms: None,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: web-1, namespace: shop}
services:
- {name: db, namespace: shop, ports: [{name: tcp, port: 5000}, {name: tcp-admin, port: 5001}]}
- {name: db-next, namespace: shop, ports: [{name: tcp, port: 5000}]}
- {name: secure, namespace: shop, ports: [{name: tls, port: 8443}, {name: tls-b, port: 8444}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db]
  tcp:
  - match: [{port: 5001}]
    route: [{destination: {host: db, subset: admin}}]
  - route:
    - {destination: {host: db}, weight: 80}
    - {destination: {host: db-next}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure]
  tls:
  - match: [{sniHosts: ['*.beta.example'], port: 8443}]
    route: [{destination: {host: secure, port: {number: 8444}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db
  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}
  subsets: [{name: admin, labels: {role: admin}}]
";

    /// Where one connection goes, in one line.
    fn outcome(host: &str, port: u16, sni: Option<&str>, roll: f64) -> String {
        let bundle = crate::config::ConfigBundle::from_yaml(CONFIG, "test").unwrap();
        let state = ProxyState::compile(&bundle, "test").unwrap();
        let service = state.services[&format!("{host}.shop.svc.cluster.local")].clone();
        match plan_tcp(&state, &service, port, sni, roll) {
            Ok(p) => format!("{} hash_ip={}", p.cluster, p.hash_source_ip),
            Err(r) => format!("{} {r}", r.flag().code()),
        }
    }

    #[test]
    fn tcp_and_tls_routing_as_a_table() {
        let rows: &[(&str, u16, Option<&str>, f64, &str)] = &[
            (
                "db",
                5000,
                None,
                0.1,
                "outbound_.5000_._.db.shop.svc.cluster.local hash_ip=true",
            ),
            (
                "db",
                5000,
                None,
                0.9,
                "outbound_.5000_._.db-next.shop.svc.cluster.local hash_ip=false",
            ),
            (
                "db",
                5001,
                None,
                0.9,
                "outbound_.5001_.admin_.db.shop.svc.cluster.local hash_ip=true",
            ),
            (
                "secure",
                8443,
                Some("api.beta.example"),
                0.5,
                "outbound_.8444_._.secure.shop.svc.cluster.local hash_ip=false",
            ),
            (
                "secure",
                8443,
                Some("www.example"),
                0.5,
                "outbound_.8443_._.secure.shop.svc.cluster.local hash_ip=false",
            ),
            (
                "secure",
                8443,
                None,
                0.5,
                "outbound_.8443_._.secure.shop.svc.cluster.local hash_ip=false",
            ),
            (
                "db-next",
                5000,
                None,
                0.5,
                "outbound_.5000_._.db-next.shop.svc.cluster.local hash_ip=false",
            ),
        ];
        for (host, port, sni, roll, want) in rows {
            assert_eq!(
                &outcome(host, *port, *sni, *roll),
                want,
                "{host}:{port} sni={sni:?} roll={roll}"
            );
        }
    }
}
