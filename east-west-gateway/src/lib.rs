//! The Isthmus east-west gateway: TLS passthrough on TCP 15443, routed by the SNI
//! `outbound_.PORT_.SUBSET_.HOST` to a healthy local endpoint of that service and
//! subset, never decrypting. Its config is what the cluster exports (discovery's
//! gateway view), so only exported, non-cluster-local services are reachable; an
//! unknown or forbidden SNI is refused and counted. The server name
//! [`mesh_net::probe::GATEWAY_PROBE_SNI`] is answered by the gateway itself: the
//! health check linked clusters run through this port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proxy::StateStore;
use mesh_proxy::http_util::{serve_endpoints, text_response};
use mesh_proxy::policy::DestinationPolicy;
use mesh_proxy::sni::{parse_outbound_sni, read_client_hello};
use mesh_proxy::state::ProxyState;
use mesh_telemetry::metrics::{MeshMetrics, PeerLabels};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The gateway's port (TCP; QUIC on the same UDP port).
pub const PORT: u16 = 15443;

/// Why a connection was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `not_tls`, `no_sni`, `not_mesh_sni`, `unknown_service`, `unknown_port`,
    /// `unknown_subset`, `no_healthy_endpoint`, `upstream_connect_failed`, `timeout`,
    /// `quic_handshake` (e.g. a caller from a trust domain not accepted),
    /// `bad_tunnel_header`, `probe_refused` (a health probe whose caller the gateway
    /// does not accept), `probe_without_identity`.
    pub reason: String,
}

/// Gateway metrics: Istio's TCP metrics (recorded as every proxy records them) and
/// the gateway's own refusals, QUIC streams and probes, in one registry.
#[derive(Debug)]
pub struct GatewayMetrics {
    mesh: MeshMetrics,
    /// Refused connections by reason.
    pub refused: Family<RefusedLabels, Counter>,
    /// Connections tunnelled over QUIC.
    pub quic_streams: Counter,
    /// Health probes answered (linked clusters checking this gateway).
    pub probes: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let refused = Family::<RefusedLabels, Counter>::default();
        let quic_streams = Counter::default();
        let probes = Counter::default();
        let mesh = MeshMetrics::with_extra(|registry| {
            registry.register(
                "isthmus_gateway_quic_streams",
                "Connections tunnelled over QUIC",
                quic_streams.clone(),
            );
            registry.register(
                "isthmus_gateway_probes",
                "Health probes from linked clusters answered",
                probes.clone(),
            );
            registry.register(
                "isthmus_gateway_refused",
                "Connections refused, by reason",
                refused.clone(),
            );
        });
        Self {
            mesh,
            refused,
            quic_streams,
            probes,
        }
    }
}

impl GatewayMetrics {
    /// Prometheus text.
    pub fn encode(&self) -> String {
        self.mesh.encode()
    }

    /// Refused connections with `reason`.
    pub fn refused(&self, reason: &str) -> u64 {
        self.refused
            .get_or_create(&RefusedLabels {
                reason: reason.into(),
            })
            .get()
    }
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// TLS passthrough listener (15443).
    pub listen: SocketAddr,
    /// Admin: `/healthz/ready`, `/stats/prometheus`.
    pub admin: Option<SocketAddr>,
    /// Connect timeout towards endpoints.
    pub connect_timeout: Duration,
    /// Longest wait for the ClientHello.
    pub hello_timeout: Duration,
    /// Also accept QUIC tunnels on the same port (UDP), from sidecars presenting a
    /// workload certificate the gateway's trust accepts.
    pub quic: bool,
    /// One span per connection setup (its own trace: the requests inside are
    /// encrypted), with source and destination cluster.
    pub tracing: mesh_telemetry::trace::Tracing,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], PORT)),
            admin: Some(SocketAddr::from(([0, 0, 0, 0], 15021))),
            connect_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            quic: false,
            tracing: mesh_telemetry::trace::Tracing::disabled(),
        }
    }
}

/// A running gateway; dropping it stops the listeners.
#[derive(Debug)]
pub struct Gateway {
    /// Bound passthrough address.
    pub addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: Option<SocketAddr>,
    /// Bound QUIC (UDP) address.
    pub quic_addr: Option<SocketAddr>,
    /// Metrics.
    pub metrics: Arc<GatewayMetrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the gateway over `store` (fed by discovery's gateway view); QUIC needs the
/// gateway's `identity`.
pub async fn start(
    store: Arc<StateStore>,
    identity: Option<mesh_identity::Identity>,
    options: GatewayOptions,
) -> std::io::Result<Gateway> {
    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(GatewayMetrics::default());
    let mut tasks = Vec::new();
    {
        let (store, metrics, options) = (store.clone(), metrics.clone(), options.clone());
        // The probe is answered with the gateway's own certificate (mTLS).
        let probe_tls = identity
            .as_ref()
            .map(|i| Arc::new(i.server_config(&[mesh_net::probe::ALPN_PROBE])));
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = conn.set_nodelay(true);
                let (store, metrics, options, probe_tls) = (
                    store.clone(),
                    metrics.clone(),
                    options.clone(),
                    probe_tls.clone(),
                );
                tokio::spawn(async move {
                    handle(conn, peer, &store, &metrics, &options, probe_tls).await
                });
            }
        }));
    }
    let quic_addr = match (&identity, options.quic) {
        (Some(identity), true) => {
            let config =
                mesh_proxy::tunnel::server_config(identity).map_err(std::io::Error::other)?;
            let endpoint = quinn::Endpoint::server(config, addr)?;
            let bound = endpoint.local_addr()?;
            let (store, metrics, options) = (store.clone(), metrics.clone(), options.clone());
            tasks.push(tokio::spawn(serve_quic(endpoint, store, metrics, options)));
            Some(bound)
        }
        _ => None,
    };
    let admin_addr = match options.admin {
        Some(a) => {
            let l = TcpListener::bind(a).await?;
            let bound = l.local_addr()?;
            let (store, metrics, certs_of) = (store.clone(), metrics.clone(), identity.clone());
            tasks.push(tokio::spawn(serve_endpoints(l, move |req| {
                match req.uri().path() {
                    "/certs" => match &certs_of {
                        Some(id) => text_response(
                            http::StatusCode::OK,
                            "application/json",
                            serde_json::to_string_pretty(&id.report()).unwrap_or_default(),
                        ),
                        None => text_response(
                            http::StatusCode::NOT_FOUND,
                            "text/plain",
                            "this gateway has no identity (plain SNI passthrough)\n".into(),
                        ),
                    },
                    "/healthz/ready" if store.is_ready() => {
                        text_response(http::StatusCode::OK, "text/plain", "ready\n".into())
                    }
                    "/healthz/ready" => text_response(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "waiting for the first config\n".into(),
                    ),
                    "/stats/prometheus" => text_response(
                        http::StatusCode::OK,
                        "text/plain; version=0.0.4",
                        metrics.encode(),
                    ),
                    _ => text_response(
                        http::StatusCode::NOT_FOUND,
                        "text/plain",
                        "endpoints: /healthz/ready /stats/prometheus /certs\n".into(),
                    ),
                }
            })));
            Some(bound)
        }
        None => None,
    };
    tracing::info!(listen = %addr, quic = ?quic_addr, "east-west gateway started");
    Ok(Gateway {
        addr,
        admin_addr,
        quic_addr,
        metrics,
        tasks,
    })
}

/// Why the gateway refuses a connection. [`GatewayRefusal::reason`] is the `reason`
/// label of `isthmus_gateway_refused_total`; the text is the access log's detail.
#[derive(Debug, thiserror::Error)]
pub enum GatewayRefusal {
    /// The first bytes are not a TLS ClientHello.
    #[error("not a TLS ClientHello: {0}")]
    NotTls(std::io::Error),
    /// No ClientHello within the hello timeout.
    #[error("no ClientHello in time")]
    Timeout,
    /// The ClientHello names no server.
    #[error("the ClientHello has no server name")]
    NoSni,
    /// The server name is not `outbound_.PORT_.SUBSET_.HOST`.
    #[error("expected outbound_.PORT_.SUBSET_.HOST")]
    NotMeshSni,
    /// Not a service this cluster exports.
    #[error("not a service this cluster exports")]
    UnknownService,
    /// The service has no such port.
    #[error("the service has no such port")]
    UnknownPort,
    /// The subset is not defined for the service.
    #[error(transparent)]
    UnknownSubset(#[from] mesh_proxy::policy::UnknownSubset),
    /// No ready endpoint in this cluster.
    #[error("no ready local endpoint")]
    NoHealthyEndpoint,
    /// No endpoint accepted the connection.
    #[error("no endpoint accepted the connection")]
    UpstreamConnectFailed,
    /// A QUIC caller failed the handshake (e.g. a trust domain not accepted).
    #[error("QUIC handshake: {0}")]
    QuicHandshake(String),
    /// A QUIC stream did not start with its target line.
    #[error("no target line")]
    BadTunnelHeader,
    /// A health probe whose caller the gateway does not accept.
    #[error("probe: {0}")]
    ProbeRefused(mesh_net::probe::AnswerError),
    /// A health probe arrived, but the gateway has no certificate to answer it with.
    #[error("this gateway has no certificate to answer probes with")]
    ProbeWithoutIdentity,
}

impl GatewayRefusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotTls(_) => "not_tls",
            Self::Timeout => "timeout",
            Self::NoSni => "no_sni",
            Self::NotMeshSni => "not_mesh_sni",
            Self::UnknownService => "unknown_service",
            Self::UnknownPort => "unknown_port",
            Self::UnknownSubset(_) => "unknown_subset",
            Self::NoHealthyEndpoint => "no_healthy_endpoint",
            Self::UpstreamConnectFailed => "upstream_connect_failed",
            Self::QuicHandshake(_) => "quic_handshake",
            Self::BadTunnelHeader => "bad_tunnel_header",
            Self::ProbeRefused(_) => "probe_refused",
            Self::ProbeWithoutIdentity => "probe_without_identity",
        }
    }
}

/// The one record of a refused connection: the refusal counter and an access-log line.
fn refuse(metrics: &GatewayMetrics, peer: SocketAddr, sni: Option<&str>, why: GatewayRefusal) {
    let reason = why.reason();
    metrics
        .refused
        .get_or_create(&RefusedLabels {
            reason: reason.into(),
        })
        .inc();
    tracing::info!(target: "access", peer = %peer, sni = sni.unwrap_or("-"), reason, detail = %why, "gateway refused connection");
}

/// Where one hop goes, decided without I/O: the service and port the server name
/// asks for, and the ready endpoints of its subset in this cluster.
#[derive(Debug)]
pub struct HopPlan<'s> {
    /// The destination service.
    pub service: &'s mesh_proxy::model::Service,
    /// Its ready endpoints in this cluster, in the service's order.
    pub endpoints: Vec<&'s Arc<mesh_proxy::model::Endpoint>>,
}

/// Plans the hop a server name (`outbound_.PORT_.SUBSET_.HOST`) asks for.
pub fn plan_hop<'s>(target: &str, state: &'s ProxyState) -> Result<HopPlan<'s>, GatewayRefusal> {
    let parsed = parse_outbound_sni(target).ok_or(GatewayRefusal::NotMeshSni)?;
    let service = state
        .services
        .get(parsed.host)
        .ok_or(GatewayRefusal::UnknownService)?;
    if service.port(Some(parsed.port)).is_none() {
        return Err(GatewayRefusal::UnknownPort);
    }
    let policy = state.policies.get(parsed.host).map(|p| p.as_ref());
    let endpoints: Vec<_> = DestinationPolicy::select(policy, service, parsed.subset)?
        .into_iter()
        .filter(|e| e.cluster == state.node.cluster || e.cluster.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(GatewayRefusal::NoHealthyEndpoint);
    }
    Ok(HopPlan { service, endpoints })
}

/// Executes a hop's plan: connects to one of its endpoints (at random, up to three
/// tried), with the labels of the connection.
async fn route(
    target: &str,
    store: &StateStore,
    options: &GatewayOptions,
) -> Result<(TcpStream, PeerLabels, SocketAddr), GatewayRefusal> {
    let state = store.snapshot();
    let HopPlan { service, endpoints } = plan_hop(target, &state)?;
    // Random order; the first endpoint that accepts the connection gets it.
    let first = rand::random_range(0..endpoints.len());
    for i in 0..endpoints.len().min(3) {
        let ep = endpoints[(first + i) % endpoints.len()];
        match tokio::time::timeout(options.connect_timeout, TcpStream::connect(ep.inbound)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                let labels = PeerLabels {
                    reporter: "gateway".into(),
                    source_cluster: "unknown".into(),
                    destination_workload_namespace: service.namespace.clone(),
                    destination_app: ep.labels.get("app").cloned().unwrap_or_default(),
                    destination_version: ep.labels.get("version").cloned().unwrap_or_default(),
                    destination_service: service.host.clone(),
                    destination_service_name: service.name.clone(),
                    destination_service_namespace: service.namespace.clone(),
                    destination_cluster: state.node.cluster.clone(),
                    connection_security_policy: "mutual_tls".into(),
                    ..Default::default()
                };
                return Ok((s, labels, ep.inbound));
            }
            Ok(Err(e)) => tracing::debug!(endpoint = %ep.inbound, error = %e, "endpoint refused"),
            Err(_) => tracing::debug!(endpoint = %ep.inbound, "endpoint connect timed out"),
        }
    }
    Err(GatewayRefusal::UpstreamConnectFailed)
}

/// One connection through the gateway: who called, for what, how, and the trace
/// position of the request that opened it (QUIC tunnels carry it).
struct Hop<'a> {
    peer: SocketAddr,
    upstream: SocketAddr,
    target: &'a str,
    transport: &'static str,
    trace: Option<mesh_telemetry::trace::TraceParent>,
}

/// Splices `caller` and `upstream` (after writing `first` upstream), counting and
/// logging the connection.
async fn splice<C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut caller: C,
    mut upstream: TcpStream,
    first: &[u8],
    labels: PeerLabels,
    hop: Hop<'_>,
    metrics: &GatewayMetrics,
    tracing: &mesh_telemetry::trace::Tracing,
) {
    let Hop {
        peer,
        upstream: upstream_addr,
        target,
        transport,
        trace,
    } = hop;
    let started = Instant::now();
    metrics.mesh.tcp_opened(&labels);
    let mut span = tracing.start(|| format!("gateway {target}"), true, trace);
    if span.is_recording() {
        span.set([
            ("transport", transport.to_owned()),
            ("source_cluster", labels.source_cluster.clone()),
            ("destination_cluster", labels.destination_cluster.clone()),
            ("istio.cluster_id", labels.destination_cluster.clone()),
            ("destination_service", labels.destination_service.clone()),
            ("upstream", upstream_addr.to_string()),
            ("peer", peer.to_string()),
        ]);
    }
    // The span is the hop's setup (routing done, upstream connected, first bytes
    // relayed): connections are long-lived and pooled, so a span to their close would
    // show up in the trace store only much later.
    let first_write = upstream.write_all(first).await;
    match &first_write {
        Ok(()) => span.end(200, "-"),
        Err(_) => span.end(503, "UF"),
    }
    let result = match first_write {
        Ok(()) => tokio::io::copy_bidirectional(&mut caller, &mut upstream).await,
        Err(e) => Err(e),
    };
    let (from_caller, to_caller) = match &result {
        Ok((a, b)) => (*a + first.len() as u64, *b),
        Err(_) => (first.len() as u64, 0),
    };
    metrics.mesh.tcp_closed(&labels, to_caller, from_caller);
    tracing::info!(
        target: "access",
        peer = %peer,
        sni = %target,
        transport,
        upstream = %upstream_addr,
        source_cluster = %labels.source_cluster,
        destination_cluster = %labels.destination_cluster,
        bytes_received = from_caller,
        bytes_sent = to_caller,
        duration_ms = started.elapsed().as_millis() as u64,
        error = result.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
        "gateway connection"
    );
}

async fn handle(
    mut conn: TcpStream,
    peer: SocketAddr,
    store: &StateStore,
    metrics: &GatewayMetrics,
    options: &GatewayOptions,
    probe_tls: Option<mesh_net::probe::ProbeServerConfig>,
) {
    let (hello, sni) =
        match tokio::time::timeout(options.hello_timeout, read_client_hello(&mut conn)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return refuse(metrics, peer, None, GatewayRefusal::NotTls(e)),
            Err(_) => return refuse(metrics, peer, None, GatewayRefusal::Timeout),
        };
    let Some(sni) = sni else {
        return refuse(metrics, peer, None, GatewayRefusal::NoSni);
    };
    if sni == mesh_net::probe::GATEWAY_PROBE_SNI {
        // A linked cluster checking this gateway: answered here, not routed.
        let Some(tls) = probe_tls else {
            return refuse(
                metrics,
                peer,
                Some(&sni),
                GatewayRefusal::ProbeWithoutIdentity,
            );
        };
        use tokio::io::AsyncReadExt as _;
        let (read, write) = tokio::io::split(conn);
        let replayed = tokio::io::join(std::io::Cursor::new(hello).chain(read), write);
        let cluster = store.snapshot().node.cluster.clone();
        match mesh_net::probe::answer_probe(replayed, tls, store.is_ready(), &cluster).await {
            Ok(()) => {
                metrics.probes.inc();
            }
            Err(e) => refuse(metrics, peer, Some(&sni), GatewayRefusal::ProbeRefused(e)),
        }
        return;
    }
    match route(&sni, store, options).await {
        Ok((upstream, labels, addr)) => {
            splice(
                conn,
                upstream,
                &hello,
                labels,
                Hop {
                    peer,
                    upstream: addr,
                    target: &sni,
                    transport: "tcp",
                    trace: None,
                },
                metrics,
                &options.tracing,
            )
            .await;
        }
        Err(why) => refuse(metrics, peer, Some(&sni), why),
    }
}

/// QUIC: each connection is a sidecar authenticated by its certificate; each stream is
/// one tunnelled connection, its first line the target.
async fn serve_quic(
    endpoint: quinn::Endpoint,
    store: Arc<StateStore>,
    metrics: Arc<GatewayMetrics>,
    options: GatewayOptions,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (store, metrics, options) = (store.clone(), metrics.clone(), options.clone());
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // A caller whose certificate the gateway does not accept ends here.
                    return refuse(
                        &metrics,
                        peer,
                        None,
                        GatewayRefusal::QuicHandshake(e.to_string()),
                    );
                }
            };
            while let Ok((send, mut recv)) = conn.accept_bi().await {
                let (store, metrics, options) = (store.clone(), metrics.clone(), options.clone());
                tokio::spawn(async move {
                    let header = match tokio::time::timeout(
                        options.hello_timeout,
                        mesh_proxy::tunnel::read_header(&mut recv),
                    )
                    .await
                    {
                        Ok(Ok(t)) => t,
                        _ => {
                            return refuse(&metrics, peer, None, GatewayRefusal::BadTunnelHeader);
                        }
                    };
                    let target = header.target;
                    match route(&target, &store, &options).await {
                        Ok((upstream, mut labels, addr)) => {
                            metrics.quic_streams.inc();
                            labels.source_cluster = header.source_cluster;
                            let caller = tokio::io::join(recv, send);
                            let hop = Hop {
                                peer,
                                upstream: addr,
                                target: &target,
                                transport: "quic",
                                trace: header.trace,
                            };
                            splice(
                                caller,
                                upstream,
                                &[],
                                labels,
                                hop,
                                &metrics,
                                &options.tracing,
                            )
                            .await;
                        }
                        Err(why) => refuse(&metrics, peer, Some(&target), why),
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: gateway, namespace: istio-system, cluster: west}
services:
- name: reviews
  namespace: shop
  ports: [{name: http, port: 9080}]
  endpoints:
  - {address: 10.2.0.1, cluster: west, labels: {version: v2}}
  - {address: 10.2.0.2, cluster: west, labels: {version: v3}, ready: false}
  - {address: 10.1.0.1, cluster: east, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
";

    /// Where a server name goes, in one line: the endpoints, or the refusal's label.
    fn outcome(state: &ProxyState, sni: &str) -> String {
        match plan_hop(sni, state) {
            Ok(plan) => plan
                .endpoints
                .iter()
                .map(|e| e.inbound.ip().to_string())
                .collect::<Vec<_>>()
                .join(","),
            Err(why) => format!("{}: {why}", why.reason()),
        }
    }

    #[test]
    fn hops_as_a_table() {
        let bundle = mesh_proxy::ConfigBundle::from_yaml(CONFIG, "test").unwrap();
        let state = ProxyState::compile(&bundle, "test").unwrap();
        let host = "reviews.shop.svc.cluster.local";
        let rows = [
            (format!("outbound_.9080_._.{host}"), "10.2.0.1"),
            (format!("outbound_.9080_.v2_.{host}"), "10.2.0.1"),
            // Only this cluster's ready endpoints: v1 runs in east, v3 is not ready.
            (
                format!("outbound_.9080_.v1_.{host}"),
                "no_healthy_endpoint: no ready local endpoint",
            ),
            (
                format!("outbound_.9080_.v3_.{host}"),
                "no_healthy_endpoint: no ready local endpoint",
            ),
            (
                format!("outbound_.9080_.v9_.{host}"),
                "unknown_subset: subset \"v9\" of reviews.shop.svc.cluster.local is not defined by any DestinationRule",
            ),
            (
                format!("outbound_.7000_._.{host}"),
                "unknown_port: the service has no such port",
            ),
            (
                "outbound_.9080_._.ratings.shop.svc.cluster.local".to_owned(),
                "unknown_service: not a service this cluster exports",
            ),
            (
                "reviews.example".to_owned(),
                "not_mesh_sni: expected outbound_.PORT_.SUBSET_.HOST",
            ),
        ];
        for (sni, want) in rows {
            assert_eq!(outcome(&state, &sni), want, "{sni}");
        }
    }
}
