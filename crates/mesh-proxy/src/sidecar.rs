//! A whole sidecar in one value: outbound and inbound listeners over one config store
//! and one identity, started on the given addresses (ephemeral ports in tests).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh_identity::Identity;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use mesh_telemetry::metrics::MeshMetrics;

use crate::inbound::Inbound;
use crate::outbound::Outbound;
use crate::plan::Entry;
use crate::state::StateStore;

/// Where a sidecar listens and where its application is.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// Outbound (explicit mode) listener, 15001 in a pod.
    pub outbound: SocketAddr,
    /// Inbound mTLS listener, 15006 in a pod.
    pub inbound: SocketAddr,
    /// Address of the local application.
    pub app_ip: IpAddr,
    /// TCP connect timeout towards other sidecars.
    pub connect_timeout: Duration,
    /// Admin listeners: readiness (15021), agent (15020), Prometheus (15090).
    pub admin: Vec<SocketAddr>,
    /// Span export (propagation only when disabled).
    pub tracing: mesh_telemetry::trace::Tracing,
    /// Path normalization and trusted proxies for inbound requests.
    pub requests: crate::inbound::RequestOptions,
    /// The DNS proxy, when on: where it listens (UDP and TCP) and the resolvers it
    /// forwards other names to.
    pub dns: Option<crate::dns_proxy::DnsListen>,
}

/// A running sidecar. Dropping it stops its listeners.
#[derive(Debug)]
pub struct Sidecar {
    /// The live config.
    pub store: Arc<StateStore>,
    /// The workload identity.
    pub identity: Identity,
    /// Bound outbound address.
    pub outbound_addr: SocketAddr,
    /// Bound inbound address.
    pub inbound_addr: SocketAddr,
    /// Bound admin addresses, in the order given.
    pub admin_addrs: Vec<SocketAddr>,
    /// Bound DNS proxy address (UDP and TCP), when on.
    pub dns_addr: Option<SocketAddr>,
    /// Istio-standard metrics of this sidecar.
    pub metrics: MeshMetrics,
    in_flight: crate::http_util::InFlight,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Sidecar {
    /// Graceful drain: stops accepting connections, then waits until the requests
    /// and TCP streams in flight have finished, or `timeout` has passed. Returns how
    /// many were still in flight at the end.
    pub async fn drain(&mut self, timeout: Duration) -> usize {
        for t in &self.tasks {
            t.abort();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.in_flight.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.in_flight.count();
        tracing::info!(left, "drained");
        left
    }

    /// Binds both listeners and starts serving.
    pub async fn start(
        store: Arc<StateStore>,
        identity: Identity,
        options: SidecarOptions,
    ) -> std::io::Result<Self> {
        let out_listener = TcpListener::bind(options.outbound).await?;
        let in_listener = TcpListener::bind(options.inbound).await?;
        let outbound_addr = out_listener.local_addr()?;
        let inbound_addr = in_listener.local_addr()?;
        let metrics = MeshMetrics::new().with_edges(store.edges().clone());
        let in_flight = crate::http_util::InFlight::default();
        let outbound = Outbound::new(
            store.clone(),
            &identity,
            metrics.clone(),
            in_flight.clone(),
            options.tracing.clone(),
            options.connect_timeout,
        );
        let inbound = Inbound::new(
            store.clone(),
            &identity,
            options.requests,
            options.app_ip,
            metrics.clone(),
            in_flight.clone(),
            options.tracing.clone(),
        );
        let (admin_addrs, mut tasks) =
            start_background(&store, &identity, &metrics, &options.admin).await?;
        tasks.push(tokio::spawn(serve_outbound(
            out_listener,
            Arc::new(outbound),
        )));
        tasks.push(tokio::spawn(Arc::new(inbound).serve(in_listener)));
        let dns_addr = match &options.dns {
            Some(listen) => {
                let (addr, listeners) = crate::dns_proxy::start(listen, store.clone()).await?;
                tasks.extend(listeners);
                Some(addr)
            }
            None => None,
        };
        Ok(Self {
            store,
            identity,
            outbound_addr,
            inbound_addr,
            admin_addrs,
            dns_addr,
            metrics,
            in_flight,
            tasks,
        })
    }
}

/// What every proxy runs beside its data path: the admin listeners on `admin` (their
/// bound addresses are returned), and the background fetches of what the config names
/// without holding (ServiceEntry DNS names, `jwksUri` key sets).
pub(crate) async fn start_background(
    store: &Arc<StateStore>,
    identity: &Identity,
    metrics: &MeshMetrics,
    admin: &[SocketAddr],
) -> std::io::Result<(Vec<SocketAddr>, Vec<JoinHandle<()>>)> {
    let mut tasks = vec![
        tokio::spawn(crate::dns::DnsTable::run(Arc::downgrade(store))),
        tokio::spawn(crate::jwks::JwksCache::run(Arc::downgrade(store))),
    ];
    let endpoints = crate::admin::Admin {
        store: store.clone(),
        metrics: metrics.clone(),
        identity: identity.clone(),
    };
    let mut bound = Vec::new();
    for addr in admin {
        let listener = TcpListener::bind(addr).await?;
        bound.push(listener.local_addr()?);
        tasks.push(tokio::spawn(endpoints.clone().serve(listener)));
    }
    Ok((bound, tasks))
}

async fn serve_outbound(listener: TcpListener, outbound: Arc<Outbound>) {
    let local = listener.local_addr().ok();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "outbound accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // A connection redirected by the capture rules still knows where it was going;
        // one made to the listener itself is explicit mode.
        let captured = crate::capture::original_dst(&tcp)
            .filter(|dst| Some(*dst) != local && dst.port() != local.map_or(0, |l| l.port()));
        let outbound = outbound.clone();
        tokio::spawn(async move {
            if let Some(dst) = captured {
                let service = outbound.store.snapshot().service_for_ip(dst.ip()).cloned();
                match service {
                    None => return outbound.unregistered(tcp, dst).await,
                    Some(svc) if !crate::outbound_tcp::is_http(&tcp, &svc, dst.port()).await => {
                        return outbound.tcp(tcp, dst, svc).await;
                    }
                    Some(_) => {}
                }
            }
            let entry = captured.map_or(Entry::Explicit, Entry::Captured);
            let service = hyper::service::service_fn(move |req| {
                let outbound = outbound.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        outbound.handle(req, entry, Some(peer.ip())).await,
                    )
                }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "outbound connection ended");
            }
        });
    }
}

impl Outbound {
    /// A captured connection to an address no service has: passed through untouched
    /// to where it was going (`ALLOW_ANY`, Istio's default: `PassthroughCluster`), or
    /// closed (`REGISTRY_ONLY`: `BlackHoleCluster`, flag UH), as the node's outbound
    /// traffic policy says. Either way one access-log line and Istio's TCP metrics.
    async fn unregistered(&self, mut downstream: tokio::net::TcpStream, dst: SocketAddr) {
        let node = self.store.snapshot().node.clone();
        let policy = node.outbound_traffic_policy;
        let cluster = policy.cluster();
        let labels = crate::peer::unregistered_labels(&node, &self.own_id, cluster);
        // Counted once as it arrives, whatever becomes of it.
        self.metrics.tcp_opened(&labels);
        let (flag, (sent, received)) = match policy {
            crate::config::OutboundTrafficPolicy::RegistryOnly => {
                (Some(crate::ResponseFlag::NoHealthyUpstream), (0, 0))
            }
            crate::config::OutboundTrafficPolicy::AllowAny => {
                match mesh_net::socket::connect_marked(dst).await {
                    Ok(mut upstream) => {
                        let r = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                        (None, r.unwrap_or_default())
                    }
                    Err(e) => {
                        tracing::debug!(%dst, error = %e, "passthrough connect failed");
                        (Some(crate::ResponseFlag::UpstreamConnectionFailure), (0, 0))
                    }
                }
            }
        };
        self.metrics.tcp_closed(&labels, sent, received);
        tracing::info!(
            target: "access",
            direction = "outbound",
            upstream_host = %dst,
            upstream_cluster = cluster,
            response_flags = flag.map_or("-", crate::ResponseFlag::code),
            bytes_sent = sent,
            bytes_received = received,
            "tcp to an address outside the registry"
        );
    }
}
