//! Peering: discovery ⇄ discovery over mTLS (`isthmus.peering.v1`).
//!
//! Server side ([`PeeringService`]): a linked cluster's discovery subscribes and gets
//! everything this cluster exports (local endpoints of services that are not
//! cluster-local nor hidden by `exportTo: ~`), then incremental updates, with
//! heartbeats that renew its lease.
//!
//! The client side, one subscription per link Secret, is [`crate::link_client`]; the
//! status of every link, as `meshctl multicluster status` shows it, is here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_identity::SpiffeId;
use mesh_proto::peering::peering_server::Peering;
use mesh_proto::peering::{ExportUpdate, ExportedService, SubscribeRequest};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::links::Link;
use crate::push::Published;
use crate::registry::{Delta, Output, Registry};
use crate::server::PeerInfo;

/// How often a subscriber gets this cluster's edges (the mesh graph).
pub const EDGES_EVERY: Duration = Duration::from_secs(2);

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
    /// Where refusals are noted.
    links: Arc<Links>,
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
            links: Arc::default(),
        }
    }

    /// Notes refused subscriptions in `links` (shown by `meshctl multicluster status`).
    pub fn with_links(mut self, links: Arc<Links>) -> Self {
        self.links = links;
        self
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
            self.links.refused(Refusal {
                at: mesh_identity::cert::rfc3339(std::time::SystemTime::now()),
                cluster: req.cluster.clone(),
                identity: id.to_string(),
                address: peer.address.to_string(),
                reason: refused.message().to_owned(),
            });
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
                    ..Default::default()
                }
            };
            let all = registry.exports_all();
            let mut generation = all.generation;
            if tx.send(Ok(update(all, true))).await.is_err() {
                return;
            }
            let mut heartbeat = tokio::time::interval(lease / 3);
            heartbeat.tick().await;
            // The graph's edges, every few seconds while there are any (and once more
            // when they end, so the peer stops drawing them).
            let mut edges_tick = tokio::time::interval(EDGES_EVERY);
            let mut sent_edges = false;
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
                    _ = edges_tick.tick() => {
                        let edges = registry.edges().local();
                        if edges.is_empty() && !sent_edges {
                            continue;
                        }
                        sent_edges = !edges.is_empty();
                        ExportUpdate {
                            has_edges: true,
                            edges,
                            ..update(Delta { generation, ..Default::default() }, false)
                        }
                    }
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
    pub(crate) added: Option<Instant>,
    #[serde(skip)]
    pub(crate) synced: bool,
}

/// A subscription this cluster refused, as `meshctl multicluster status` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// When (RFC 3339).
    pub at: String,
    /// The cluster it claimed to be.
    pub cluster: String,
    /// The identity it presented.
    pub identity: String,
    /// Its address.
    pub address: String,
    /// Why it was refused.
    pub reason: String,
}

/// How many refusals are kept.
const REFUSALS_KEPT: usize = 20;

/// Every link's status, by cluster, and the last subscriptions refused here.
#[derive(Debug, Default)]
pub struct Links {
    statuses: Mutex<BTreeMap<String, LinkStatus>>,
    refusals: Mutex<std::collections::VecDeque<Refusal>>,
}

impl Links {
    /// Notes a refused subscription.
    pub(crate) fn refused(&self, r: Refusal) {
        let mut list = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() == REFUSALS_KEPT {
            list.pop_front();
        }
        list.push_back(r);
    }

    /// The last subscriptions refused here, oldest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn update(&self, cluster: &str, f: impl FnOnce(&mut LinkStatus)) {
        if let Some(s) = self
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(cluster)
        {
            f(s);
        }
    }

    /// Starts showing `link` (a new link), or shows its new version.
    pub(crate) fn upsert(&self, link: &Link) {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(link.cluster.clone())
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
    }

    /// Stops showing `cluster`'s link (deleted).
    pub(crate) fn remove(&self, cluster: &str) {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(cluster);
    }

    /// A copy of every status.
    pub fn list(&self) -> Vec<LinkStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// True when every link has synced once, or waited `bound` (those are marked
    /// `timed out`): readiness does not wait longer for a peer.
    pub fn settled(&self, bound: Duration) -> bool {
        let mut map = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
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
