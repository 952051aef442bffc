//! Peering: discovery ⇄ discovery over mTLS (`isthmus.peering.v1`).
//!
//! Server side ([`PeeringService`]): a linked cluster's discovery subscribes and gets
//! everything this cluster exports (local endpoints of services that are not
//! cluster-local nor hidden by `exportTo: ~`), then incremental updates, with
//! heartbeats that renew its lease.
//!
//! Client side ([`run_links`]): one subscription per link Secret. The first full
//! update replaces what was held from that cluster; a changed link connects anew and
//! drops the old connection only once the new one has synced (make before break); a
//! silent peer's endpoints stay until the lease runs out, then are kept as *stale*
//! while the peer's east-west gateway passes a health probe through its data port,
//! and withdrawn when it fails them or after a long bound; a deleted link withdraws
//! them at once. Reconnects back off.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mesh_identity::{Identity, SpiffeId, TrustBundle, TrustConfig};
use mesh_proto::peering::peering_client::PeeringClient;
use mesh_proto::peering::peering_server::Peering;
use mesh_proto::peering::{ExportUpdate, ExportedService, SubscribeRequest};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::links::Link;
use crate::push::Published;
use crate::registry::{Delta, Output, Registry, RemoteCluster};
use crate::server::PeerInfo;

/// How long what a peer sent stays valid without a message.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

fn exported(o: &Output) -> ExportedService {
    let name = o.name.rsplit('/').next().unwrap_or_default().to_owned();
    ExportedService {
        namespace: o.namespace.clone(),
        name,
        export_to: o.export_to.clone(),
        body: o.body.clone(),
        version: o.version.clone(),
    }
}

/// The peering service.
#[derive(Debug, Clone)]
pub struct PeeringService {
    registry: Arc<Registry>,
    published: watch::Receiver<Published>,
    lease: Duration,
    shutdown: watch::Receiver<bool>,
    /// The namespace of the linked clusters' discovery identity.
    peer_namespace: String,
    /// This cluster's trust domain.
    local_trust_domain: Option<mesh_identity::TrustDomain>,
}

impl PeeringService {
    /// Serves `registry`'s exports, following `published`.
    pub fn new(
        registry: Arc<Registry>,
        published: watch::Receiver<Published>,
        lease: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            registry,
            published,
            lease,
            shutdown,
            peer_namespace: crate::NAMESPACE.into(),
            local_trust_domain: None,
        }
    }

    /// This cluster's trust domain: a cluster not linked here yet (its link Secret is
    /// on its way) may subscribe with the discovery identity of this trust domain.
    pub fn with_local_trust_domain(mut self, td: mesh_identity::TrustDomain) -> Self {
        self.local_trust_domain = Some(td);
        self
    }

    /// The namespace the linked clusters' discovery runs in (their identity is
    /// `spiffe://TD/ns/NAMESPACE/sa/isthmus-discovery`).
    pub fn with_peer_namespace(mut self, namespace: &str) -> Self {
        self.peer_namespace = namespace.to_owned();
        self
    }

    /// Whether `id`, subscribing as `cluster`, may read this cluster's exports: `id`
    /// must be the discovery identity the cluster's link here names (its trust domain,
    /// the peers' namespace, the discovery service account); a cluster not linked
    /// here (yet) must present this trust domain's discovery identity.
    fn authorize(&self, id: &SpiffeId, cluster: &str) -> Result<(), Status> {
        let Some(link) = self
            .registry
            .links()
            .into_iter()
            .find(|l| l.cluster == cluster)
        else {
            let own = self.local_trust_domain.as_ref().and_then(|td| {
                SpiffeId::new(td.clone(), &self.peer_namespace, crate::SERVICE_ACCOUNT).ok()
            });
            if own.as_ref() == Some(id) {
                return Ok(());
            }
            return Err(Status::permission_denied(format!(
                "cluster {cluster:?} is not linked to this one, and {id} is not this mesh's discovery identity: apply its link Secret here (meshctl remote-secret)"
            )));
        };
        let expected = link
            .trust_domain
            .parse::<mesh_identity::TrustDomain>()
            .map_err(|e| Status::internal(format!("link {}: {e}", link.secret)))
            .and_then(|td| {
                SpiffeId::new(td, &self.peer_namespace, crate::SERVICE_ACCOUNT)
                    .map_err(|e| Status::internal(e.to_string()))
            })?;
        if *id != expected {
            return Err(Status::permission_denied(format!(
                "{id} may not subscribe as cluster {cluster:?}: its link ({}) names {expected}",
                link.secret
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peering for PeeringService {
    type SubscribeStream = ReceiverStream<Result<ExportUpdate, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no connection info"))?;
        let id = peer.id.ok_or_else(|| {
            Status::unauthenticated("peering needs a discovery certificate (mTLS)")
        })?;
        let req = request.into_inner();
        if let Err(refused) = self.authorize(&id, &req.cluster) {
            tracing::warn!(peer = %req.cluster, identity = %id, address = %peer.address, reason = %refused.message(), "peering refused");
            return Err(refused);
        }
        tracing::info!(peer = %req.cluster, identity = %id, address = %peer.address, "linked cluster subscribed");
        let (tx, rx) = mpsc::channel(8);
        let registry = self.registry.clone();
        let mut published = self.published.clone();
        let mut shutdown = self.shutdown.clone();
        let lease = self.lease;
        tokio::spawn(async move {
            let update = |delta: Delta, full: bool| {
                let mut services: Vec<ExportedService> =
                    delta.updated.iter().map(|o| exported(o)).collect();
                services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
                ExportUpdate {
                    cluster: registry.cluster().to_owned(),
                    network: registry.network().to_owned(),
                    full,
                    services,
                    removed: delta
                        .removed
                        .iter()
                        .filter_map(|n| n.strip_prefix("Service/").map(str::to_owned))
                        .collect(),
                    lease_seconds: lease.as_secs() as u32,
                    generation: delta.generation,
                }
            };
            let all = registry.exports_all();
            let mut generation = all.generation;
            if tx.send(Ok(update(all, true))).await.is_err() {
                return;
            }
            let mut heartbeat = tokio::time::interval(lease / 3);
            heartbeat.tick().await;
            loop {
                let msg = tokio::select! {
                    _ = shutdown.changed() => break,
                    changed = published.changed() => {
                        if changed.is_err() { break }
                        let delta = registry.exports_since(generation);
                        if delta.generation == generation {
                            continue;
                        }
                        generation = delta.generation;
                        if delta.updated.is_empty() && delta.removed.is_empty() {
                            continue;
                        }
                        update(delta, false)
                    }
                    _ = heartbeat.tick() => update(Delta { generation, ..Default::default() }, false),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
            tracing::info!(peer = %req.cluster, "linked cluster unsubscribed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One link as `meshctl multicluster status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// The link.
    pub link: Link,
    /// `connecting`, `syncing`, `connected`, `disconnected`, `timed out` (not synced
    /// within the readiness bound), `stale` (lease expired, endpoints kept while the
    /// peer's gateway passes its health checks) or `withdrawn` (lease expired and the
    /// gateway failed its checks, or stale for longer than the bound).
    pub state: String,
    /// Services received.
    pub services: usize,
    /// Endpoints received.
    pub endpoints: usize,
    /// Last message (RFC 3339).
    pub last_heartbeat: String,
    /// When what was received stops counting without another message (RFC 3339).
    pub lease_expiry: String,
    /// Whether the peer's certificate verified against the link's trust bundle on the
    /// last connection (`None` before any handshake).
    pub trust_bundle_match: Option<bool>,
    /// Since when the peer's endpoints are kept stale (RFC 3339; empty when fresh).
    pub stale_since: String,
    /// The last health probe of the peer's gateway while stale: `ok: ...` or
    /// `failing (N/M): why`.
    pub gateway_probe: String,
    /// Failed gateway probes since the link was added.
    pub gateway_probe_failures: u64,
    /// Last error.
    pub last_error: String,
    #[serde(skip)]
    added: Option<Instant>,
    #[serde(skip)]
    synced: bool,
}

/// Every link's status, by cluster.
#[derive(Debug, Default)]
pub struct Links(Mutex<BTreeMap<String, LinkStatus>>);

impl Links {
    fn update(&self, cluster: &str, f: impl FnOnce(&mut LinkStatus)) {
        if let Some(s) = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(cluster)
        {
            f(s);
        }
    }

    /// A copy of every status.
    pub fn list(&self) -> Vec<LinkStatus> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// True when every link has synced once, or waited `bound` (those are marked
    /// `timed out`): readiness does not wait longer for a peer.
    pub fn settled(&self, bound: Duration) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut settled = true;
        for s in map.values_mut() {
            if s.synced {
                continue;
            }
            if s.added.is_some_and(|a| a.elapsed() >= bound) {
                if s.state != "timed out" {
                    tracing::warn!(peer = %s.link.cluster, "link not synced in {bound:?}; ready without it");
                    s.state = "timed out".into();
                }
            } else {
                settled = false;
            }
        }
        settled
    }
}

/// Options of the link clients.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The namespace of the peers' discovery identity.
    pub namespace: String,
    /// First reconnect delay (doubling to `max_backoff`).
    pub initial_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Where a span per link sync (connect to first full sync) goes.
    pub tracing: mesh_telemetry::trace::Tracing,
    /// How often a stale peer's east-west gateway is probed.
    pub probe_interval: Duration,
    /// Longest wait for one probe's answer.
    pub probe_timeout: Duration,
    /// Consecutive failed probes that withdraw a stale peer's endpoints.
    pub probe_failures: u32,
    /// Longest a peer's endpoints are kept stale, even with a healthy gateway.
    pub stale_bound: Duration,
}

/// Default of [`LinkOptions::stale_bound`]: a day, long enough to ride out any
/// control-plane outage an operator would leave unattended.
pub const DEFAULT_STALE_BOUND: Duration = Duration::from_secs(24 * 3600);

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            namespace: crate::NAMESPACE.into(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            tracing: mesh_telemetry::trace::Tracing::disabled(),
            probe_interval: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(2),
            probe_failures: 3,
            stale_bound: DEFAULT_STALE_BOUND,
        }
    }
}

struct Running {
    link: Link,
    task: tokio::task::JoinHandle<()>,
}

/// Keeps one subscription per link the registry holds, until dropped.
pub async fn run_links(
    registry: Arc<Registry>,
    identity: Identity,
    links: Arc<Links>,
    options: LinkOptions,
) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut changes = registry.subscribe();
    loop {
        let wanted: BTreeMap<String, Link> = registry
            .links()
            .into_iter()
            .map(|l| (l.cluster.clone(), l))
            .collect();
        // Trust every linked cluster's roots, so their discovery can subscribe here.
        trust_links(&identity, wanted.values());
        for (cluster, r) in std::mem::take(&mut running) {
            match wanted.get(&cluster) {
                Some(l) if *l == r.link => {
                    running.insert(cluster, r);
                }
                Some(_) => {
                    // Changed: the new subscription takes over once it has synced.
                    running.insert(cluster, r);
                }
                None => {
                    r.task.abort();
                    registry.set_remote(&cluster, None);
                    links
                        .0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&cluster);
                    tracing::info!(peer = %cluster, "link deleted; its endpoints are withdrawn");
                }
            }
        }
        for (cluster, link) in &wanted {
            if running.get(cluster).is_some_and(|r| r.link == *link) {
                continue;
            }
            let previous = running.remove(cluster).map(|r| r.task);
            links
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(cluster.clone())
                .and_modify(|s| s.link = link.clone())
                .or_insert_with(|| LinkStatus {
                    link: link.clone(),
                    state: "connecting".into(),
                    services: 0,
                    endpoints: 0,
                    last_heartbeat: String::new(),
                    lease_expiry: String::new(),
                    trust_bundle_match: None,
                    stale_since: String::new(),
                    gateway_probe: String::new(),
                    gateway_probe_failures: 0,
                    last_error: String::new(),
                    added: Some(Instant::now()),
                    synced: false,
                });
            let task = tokio::spawn(subscribe_loop(
                link.clone(),
                registry.clone(),
                identity.clone(),
                links.clone(),
                options.clone(),
                previous,
            ));
            running.insert(
                cluster.clone(),
                Running {
                    link: link.clone(),
                    task,
                },
            );
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
    for r in running.values() {
        r.task.abort();
    }
}

fn trust_links<'a>(identity: &Identity, links: impl Iterator<Item = &'a Link>) {
    let current = identity.trust();
    let mut bundle = TrustBundle::new();
    bundle.merge(&current.bundle);
    let mut trust_changed = false;
    let mut federated = current.federated.clone();
    for link in links {
        let Ok(td) = link.trust_domain.parse::<mesh_identity::TrustDomain>() else {
            continue;
        };
        let before = bundle.roots(&td).len();
        if bundle
            .add_pem(td.clone(), link.trust_bundle.as_bytes(), &link.secret)
            .is_ok()
            && bundle.roots(&td).len() != before
        {
            trust_changed = true;
        }
        if td != current.local && federated.insert(td) {
            trust_changed = true;
        }
    }
    if trust_changed {
        let mut trust = TrustConfig::new(current.local.clone(), bundle);
        trust.aliases = current.aliases.clone();
        trust.federated = federated;
        if let Err(e) = identity.update_trust(trust) {
            tracing::warn!(error = %e, "cannot add the linked clusters' roots");
        }
    }
}

async fn subscribe_loop(
    link: Link,
    registry: Arc<Registry>,
    identity: Identity,
    links: Arc<Links>,
    options: LinkOptions,
    mut previous: Option<tokio::task::JoinHandle<()>>,
) {
    let cluster = link.cluster.clone();
    let last_seen: Arc<Mutex<Option<(Instant, Duration)>>> = Arc::default();
    // The lease: when the peer has been silent too long its endpoints turn stale, and
    // stay while its gateway passes its health checks.
    let watchdog = tokio::spawn(lease_watchdog(
        link.clone(),
        registry.clone(),
        identity.clone(),
        links.clone(),
        options.clone(),
        last_seen.clone(),
    ));
    let _watchdog = AbortOnDrop(watchdog);
    let mut backoff =
        mesh_proxy::backoff::Backoff::new(options.initial_backoff, options.max_backoff);
    loop {
        let started = Instant::now();
        let result = subscribe_once(
            &link,
            &registry,
            &identity,
            &links,
            &options,
            &last_seen,
            &mut previous,
        )
        .await;
        if let Err(e) = &result {
            tracing::warn!(peer = %cluster, error = %e, "peering stream closed; retrying");
            links.update(&cluster, |s| {
                if !matches!(s.state.as_str(), "stale" | "withdrawn" | "timed out") {
                    s.state = "disconnected".into();
                }
                s.last_error = e.clone();
            });
        }
        backoff.wait(started).await;
    }
}

/// Watches one link's lease. On expiry the peer's endpoints are kept and marked
/// stale (a control-plane outage must not take down a healthy data plane); while
/// stale, the peer's east-west gateway is probed through its data port, and the
/// endpoints are withdrawn after `probe_failures` failed probes in a row or once
/// stale for `stale_bound`. A fresh full sync ends the stale state.
async fn lease_watchdog(
    link: Link,
    registry: Arc<Registry>,
    identity: Identity,
    links: Arc<Links>,
    options: LinkOptions,
    last_seen: Arc<Mutex<Option<(Instant, Duration)>>>,
) {
    let cluster = link.cluster.clone();
    let probe_tls = link_trust(&link).map(|trust| {
        Arc::new(identity.client_config_with_trust(trust, vec![], &[mesh_proxy::probe::ALPN_PROBE]))
    });
    let withdraw = |reason: String| {
        registry.set_remote(&cluster, None);
        links.update(&cluster, |s| {
            s.state = "withdrawn".into();
            s.services = 0;
            s.endpoints = 0;
            s.stale_since.clear();
            s.last_error = reason.clone();
        });
        tracing::warn!(peer = %cluster, reason = %reason, "the peer's stale endpoints are withdrawn");
    };
    let mut failures = 0u32;
    let mut next_probe = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let expired = last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(at, lease)| at.elapsed() > lease);
        if expired {
            *last_seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if registry.mark_remote_stale(&cluster) {
                let now = SystemTime::now();
                links.update(&cluster, |s| {
                    s.state = "stale".into();
                    s.stale_since = mesh_identity::cert::rfc3339(now);
                });
                tracing::warn!(peer = %cluster, "lease expired; the peer's endpoints are kept as stale while its gateway passes its health checks");
                failures = 0;
                next_probe = Instant::now();
            }
        }
        let Some(since) = registry.remote_stale_since(&cluster) else {
            failures = 0;
            continue;
        };
        if since.elapsed().unwrap_or_default() > options.stale_bound {
            withdraw(format!(
                "stale for longer than the bound ({:?})",
                options.stale_bound
            ));
            continue;
        }
        if Instant::now() < next_probe {
            continue;
        }
        next_probe = Instant::now() + options.probe_interval;
        // Without a gateway (same network) there is nothing to probe: the endpoints
        // stay until the bound, and the proxies' outlier detection judges them.
        let Some(tls) = probe_tls.clone() else {
            continue;
        };
        if link.gateway_address.is_empty() {
            continue;
        }
        let result = match resolve(&link.gateway_address).await {
            Ok(gw) => mesh_proxy::probe::probe_gateway(gw, tls, options.probe_timeout).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(answer) => {
                failures = 0;
                links.update(&cluster, |s| s.gateway_probe = format!("ok: {answer}"));
            }
            Err(e) => {
                failures += 1;
                let n = options.probe_failures;
                links.update(&cluster, |s| {
                    s.gateway_probe = format!("failing ({failures}/{n}): {e}");
                    s.gateway_probe_failures += 1;
                });
                tracing::info!(peer = %cluster, failures, error = %e, "gateway health probe failed");
                if failures >= n {
                    withdraw(format!(
                        "its gateway failed {n} health checks in a row: {e}"
                    ));
                }
            }
        }
    }
}

/// The trust a link names for its peer (the peer's trust domain and roots).
fn link_trust(link: &Link) -> Option<TrustConfig> {
    let td: mesh_identity::TrustDomain = link.trust_domain.parse().ok()?;
    let bundle =
        TrustBundle::from_pem(td.clone(), link.trust_bundle.as_bytes(), &link.secret).ok()?;
    Some(TrustConfig::new(td, bundle))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn resolve(address: &str) -> Result<std::net::SocketAddr, String> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("resolving {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} has no address"))
}

#[allow(clippy::too_many_arguments)]
async fn subscribe_once(
    link: &Link,
    registry: &Registry,
    identity: &Identity,
    links: &Links,
    options: &LinkOptions,
    last_seen: &Mutex<Option<(Instant, Duration)>>,
    previous: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<(), String> {
    let cluster = &link.cluster;
    let td: mesh_identity::TrustDomain = link.trust_domain.parse().map_err(|e| format!("{e}"))?;
    let bundle = TrustBundle::from_pem(td.clone(), link.trust_bundle.as_bytes(), &link.secret)
        .map_err(|e| e.to_string())?;
    let expected = SpiffeId::new(td.clone(), &options.namespace, crate::SERVICE_ACCOUNT)
        .map_err(|e| e.to_string())?;
    let tls =
        identity.client_config_with_trust(TrustConfig::new(td, bundle), vec![expected], &[b"h2"]);
    // One span from connecting to the first full sync (ended early on failure).
    let mut sync_span = Some(options.tracing.start(
        || format!("peering sync {cluster}"),
        false,
        None,
    ));
    if let Some(span) = sync_span.as_mut().filter(|s| s.is_recording()) {
        span.set([
            ("peer.cluster", cluster.clone()),
            ("peer.address", link.discovery_address.clone()),
        ]);
    }
    let address = resolve(&link.discovery_address).await?;
    let gateway = resolve(&link.gateway_address).await.ok();
    links.update(cluster, |s| {
        if !matches!(s.state.as_str(), "stale" | "withdrawn" | "timed out") {
            s.state = "connecting".into();
        }
    });
    let channel = match mesh_proxy::discovery_client::tls_channel(address, Arc::new(tls)).await {
        Ok(c) => c,
        Err(e) => {
            let reason = mesh_proxy::discovery_client::source_chain(&e);
            let mismatch = reason.contains("certificate")
                || reason.contains("identity")
                || reason.contains("issuer");
            links.update(cluster, |s| {
                if mismatch {
                    s.trust_bundle_match = Some(false);
                }
            });
            return Err(format!(
                "connecting to {}: {reason}",
                link.discovery_address
            ));
        }
    };
    let mut client = PeeringClient::new(channel).max_decoding_message_size(256 << 20);
    let mut stream = client
        .subscribe(SubscribeRequest {
            cluster: registry.cluster().to_owned(),
            network: registry.network().to_owned(),
        })
        .await
        .map_err(|s| format!("subscribing: {}", s.message()))?
        .into_inner();
    links.update(cluster, |s| {
        s.trust_bundle_match = Some(true);
        if !matches!(s.state.as_str(), "stale" | "withdrawn" | "timed out") {
            s.state = "syncing".into();
        }
    });
    loop {
        let update = match stream.message().await {
            Ok(Some(u)) => u,
            Ok(None) => return Err("the peer closed the stream".into()),
            Err(s) => return Err(s.message().to_owned()),
        };
        if update.cluster != *cluster {
            return Err(format!(
                "the peer at {} is cluster {:?}, not {cluster:?} as the link says",
                link.discovery_address, update.cluster
            ));
        }
        let lease = Duration::from_secs(u64::from(update.lease_seconds.max(1)));
        *last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), lease));
        let decode = |svc: &ExportedService| {
            serde_json::from_slice::<mesh_proxy::config::ServiceConfig>(&svc.body)
                .map(|cfg| ((svc.namespace.clone(), svc.name.clone()), cfg, svc.export_to.clone()))
                .map_err(|e| tracing::warn!(peer = %cluster, service = %format!("{}/{}", svc.namespace, svc.name), error = %e, "exported service refused"))
                .ok()
        };
        if update.full {
            let services = update
                .services
                .iter()
                .filter_map(decode)
                .map(|(k, cfg, e)| (k, (cfg, e)))
                .collect();
            let network = if update.network.is_empty() {
                link.network.clone()
            } else {
                update.network.clone()
            };
            registry.set_remote(
                cluster,
                Some(RemoteCluster {
                    network,
                    gateway,
                    gateway_quic: link.gateway_quic,
                    services,
                    stale_since: None,
                }),
            );
            if let Some(old) = previous.take() {
                // Make before break: the new link has synced, the old one goes.
                old.abort();
            }
            tracing::info!(peer = %cluster, services = update.services.len(), "linked cluster synced");
            if let Some(mut span) = sync_span.take() {
                span.set([("services", update.services.len().to_string())]);
                span.end(200, "-");
            }
        } else if !registry.mark_remote_fresh(cluster) {
            // What this peer sent was withdrawn while it was silent: only a full sync
            // brings it back.
            return Err("the peer's endpoints were withdrawn while it was silent; resubscribing for a full sync".into());
        } else if !update.services.is_empty() || !update.removed.is_empty() {
            let upserts = update.services.iter().filter_map(decode).collect();
            let removed = update
                .removed
                .iter()
                .filter_map(|r| r.split_once('/').map(|(a, b)| (a.to_owned(), b.to_owned())))
                .collect();
            registry.update_remote(cluster, upserts, removed);
        }
        let (services, endpoints) = registry.remote_counts(cluster);
        let now = SystemTime::now();
        links.update(cluster, |s| {
            s.state = "connected".into();
            s.stale_since.clear();
            s.gateway_probe.clear();
            s.synced = true;
            s.services = services;
            s.endpoints = endpoints;
            s.last_heartbeat = mesh_identity::cert::rfc3339(now);
            s.lease_expiry = mesh_identity::cert::rfc3339(now + lease);
            s.last_error.clear();
        });
    }
}
