//! The config stream, server side: per proxy, only what that proxy may see, pushed
//! incrementally and tracked through ACK and NACK.
//!
//! A proxy holds a generation: everything visible to it as of that registry
//! generation. A push sends what changed after it ([`Registry::since`]), filtered by
//! visibility; an output that changed and is no longer visible is sent as removed. No
//! per-proxy copy of the resources is kept, so a proxy costs a few hundred bytes
//! whatever the mesh's size. On reconnect the proxy lists the versions it holds and
//! gets only what differs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mesh_identity::SpiffeId;
use mesh_proto::config::{
    ConfigRequest, ConfigResponse, Node as WireNode, Resource as WireResource,
    config_discovery_server::ConfigDiscovery,
};
use mesh_proto::model::{KIND_NODE, NODE_RESOURCE};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::registry::{Output, Registry, content_version};
use crate::server::PeerInfo;

/// Debounce of registry changes before a push (as Istio's PILOT_DEBOUNCE_AFTER/MAX).
/// Pushes are incremental (only what changed, to the proxies that see it), so a short
/// quiet time costs little; the maximum bounds the wait under a stream of changes.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// Quiet time that ends a burst of changes.
    pub after: Duration,
    /// Longest a change waits, however busy the registry.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self {
            after: Duration::from_millis(10),
            max: Duration::from_secs(1),
        }
    }
}

/// A published generation and when its oldest change happened.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    /// Registry generation.
    pub generation: u64,
    /// When the oldest change it carries happened.
    pub event_at: Option<Instant>,
}

/// Follows the registry, debounces, and publishes generations to the pushers. With
/// tracing on, each published generation is a span from its first change to its
/// publication (the debounce window).
pub fn publisher(
    registry: Arc<Registry>,
    debounce: Debounce,
    tracing: mesh_telemetry::trace::Tracing,
) -> watch::Receiver<Published> {
    let (tx, rx) = watch::channel(Published {
        generation: registry.generation(),
        event_at: None,
    });
    let mut changes = registry.subscribe();
    tokio::spawn(async move {
        loop {
            if changes.changed().await.is_err() {
                return;
            }
            let first = Instant::now();
            let mut span = tracing.start(|| "config push", false, None);
            let mut changes_seen = 1u64;
            loop {
                let deadline = (first + debounce.max).saturating_duration_since(Instant::now());
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return } else { changes_seen += 1 },
                    () = tokio::time::sleep(debounce.after.min(deadline)) => break,
                }
                if first.elapsed() >= debounce.max {
                    break;
                }
            }
            let generation = registry.generation();
            if span.is_recording() {
                span.set([
                    ("generation", generation.to_string()),
                    ("registry.changes", changes_seen.to_string()),
                    ("debounce_ms", first.elapsed().as_millis().to_string()),
                ]);
            }
            span.end(200, "-");
            if generation != tx.borrow().generation {
                tx.send_replace(Published {
                    generation,
                    event_at: registry.take_pending_since().or(Some(first)),
                });
            }
        }
    });
    rx
}

/// One rejected resource, as the proxy reported it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Nack {
    /// Resource name.
    pub name: String,
    /// Version refused.
    pub version: String,
    /// The proxy's reason.
    pub reason: String,
}

/// What discovery knows of one connected (or recently connected) proxy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// `name.namespace`.
    pub proxy: String,
    /// SPIFFE ID of its certificate.
    pub identity: String,
    /// Remote address.
    pub address: String,
    /// Proxy kind (sidecar, gateway).
    pub kind: String,
    /// Its admin address, if it reported one.
    pub admin_address: String,
    /// Whether its stream is open.
    pub connected: bool,
    /// When the stream opened (RFC 3339).
    pub connected_at: String,
    /// Config version last sent.
    pub sent_version: String,
    /// Config version the proxy last reported applying.
    pub acked_version: String,
    /// When the last push was sent (RFC 3339).
    pub last_push: String,
    /// Pushes sent on this stream.
    pub pushes: u64,
    /// Responses not yet answered.
    pub pending: usize,
    /// Resources the proxy refused, still current.
    pub nacked: Vec<Nack>,
    /// Its certificate's expiry (RFC 3339).
    pub cert_expiry: String,
}

impl ProxyStatus {
    /// `SYNCED`, `STALE` (a push not acknowledged yet) or `NACKED`.
    pub fn state(&self) -> &'static str {
        if !self.nacked.is_empty() {
            "NACKED"
        } else if self.pending > 0 || self.acked_version != self.sent_version {
            "STALE"
        } else {
            "SYNCED"
        }
    }
}

/// Every proxy's status, by `name.namespace`.
#[derive(Debug, Default)]
pub struct Statuses(Mutex<BTreeMap<String, ProxyStatus>>);

impl Statuses {
    fn update(&self, proxy: &str, f: impl FnOnce(&mut ProxyStatus)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(proxy) {
            f(s);
        }
    }

    /// A copy of every status.
    pub fn list(&self) -> Vec<ProxyStatus> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Number of connected proxies.
    pub fn connected(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.connected)
            .count()
    }
}

/// The config stream service.
#[derive(Debug, Clone)]
pub struct ConfigService {
    shutdown: watch::Receiver<bool>,
    registry: Arc<Registry>,
    published: watch::Receiver<Published>,
    statuses: Arc<Statuses>,
    metrics: Arc<Metrics>,
    /// The identities granted the gateway view; any other proxy gets its namespace's
    /// view, whatever kind its node claims.
    gateway_ids: Arc<Vec<SpiffeId>>,
}

impl ConfigService {
    /// A service pushing `registry` as `published` says; every stream ends when
    /// `shutdown` turns true.
    pub fn new(
        registry: Arc<Registry>,
        published: watch::Receiver<Published>,
        statuses: Arc<Statuses>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shutdown,
            registry,
            published,
            statuses,
            metrics,
            gateway_ids: Arc::new(Vec::new()),
        }
    }

    /// Grants the gateway view (everything the cluster exports, bypassing `exportTo`)
    /// to these authenticated identities only.
    pub fn with_gateway_identities(mut self, ids: Vec<SpiffeId>) -> Self {
        self.gateway_ids = Arc::new(ids);
        self
    }
}

fn wire(o: &Output) -> WireResource {
    WireResource {
        name: o.name.clone(),
        version: o.version.clone(),
        kind: o.kind.clone(),
        body: o.body.clone(),
    }
}

/// The proxy's node as the registry knows it (labels, service account, locality,
/// network), falling back to what the proxy said, and its resource.
fn node_resource(
    registry: &Registry,
    node: &WireNode,
    id: &SpiffeId,
) -> (mesh_proto::model::Node, WireResource) {
    let ip = node.ip.parse().ok();
    let workload = registry.workload(&node.namespace, &node.name, ip);
    let n = mesh_proto::model::Node {
        name: node.name.clone(),
        namespace: node.namespace.clone(),
        service_account: id.service_account().to_owned(),
        cluster: registry.cluster().to_owned(),
        network: workload
            .as_ref()
            .map(|w| w.network.clone())
            .unwrap_or_else(|| registry.network().to_owned()),
        locality: workload
            .as_ref()
            .map(|w| w.locality.clone())
            .unwrap_or_default(),
        labels: workload
            .map(|w| w.labels)
            .unwrap_or_else(|| node.labels.clone().into_iter().collect()),
        outbound_traffic_policy: registry.outbound_traffic_policy(),
        ingress: node.kind == "ingress",
    };
    let body = serde_json::to_vec(&n).unwrap_or_default();
    let resource = WireResource {
        name: NODE_RESOURCE.into(),
        version: content_version(&body),
        kind: KIND_NODE.into(),
        body: body.into(),
    };
    (n, resource)
}

struct InFlight {
    nonce: String,
    /// When the oldest change it carries happened.
    event_at: Option<Instant>,
    /// Names it added, changed or removed.
    names: Vec<String>,
}

struct Stream {
    registry: Arc<Registry>,
    statuses: Arc<Statuses>,
    metrics: Arc<Metrics>,
    proxy: String,
    namespace: String,
    /// A gateway sees what the cluster exports (and every DestinationRule, for
    /// subsets), not a namespace's view.
    gateway: bool,
    node: WireNode,
    id: SpiffeId,
    tx: mpsc::Sender<Result<ConfigResponse, Status>>,
    generation: u64,
    node_version: String,
    nonce: u64,
    /// Unanswered responses, oldest first.
    in_flight: VecDeque<InFlight>,
    /// The Sidecar in force for this proxy, chosen as the proxy itself chooses it:
    /// services outside its egress hosts are not sent.
    scope: Option<mesh_proxy::state::Scope>,
    /// What the scope was computed from: the registry's Sidecar counter and the
    /// node's version.
    scope_from: Option<(u64, String)>,
}

impl Stream {
    async fn send(
        &mut self,
        resources: Vec<WireResource>,
        removed: Vec<String>,
        event_at: Option<Instant>,
    ) -> bool {
        self.nonce += 1;
        let nonce = format!("{}-{}", self.generation, self.nonce);
        let version = self.generation.to_string();
        let count = resources.len() + removed.len();
        let names = resources
            .iter()
            .map(|r| r.name.clone())
            .chain(removed.iter().cloned())
            .collect();
        let response = ConfigResponse {
            nonce: nonce.clone(),
            system_version: version.clone(),
            resources,
            removed,
        };
        if let Some(at) = event_at {
            self.metrics.queue_time.observe(at.elapsed().as_secs_f64());
        }
        self.in_flight.push_back(InFlight {
            nonce,
            event_at,
            names,
        });
        if self.in_flight.len() > 64 {
            self.in_flight.pop_front();
        }
        self.metrics.pushes.inc();
        self.metrics.pushed_resources.inc_by(count as u64);
        let pending = self.in_flight.len();
        self.statuses.update(&self.proxy, |s| {
            s.sent_version = version;
            s.last_push = mesh_identity::cert::rfc3339(SystemTime::now());
            s.pushes += 1;
            s.pending = pending;
        });
        self.tx.send(Ok(response)).await.is_ok()
    }

    fn view_all(&self) -> crate::registry::Delta {
        let mut all = self.registry.all();
        if self.gateway {
            let exports = self.registry.exports_all();
            all.updated.retain(|o| o.kind == "DestinationRule");
            all.updated.extend(exports.updated);
        }
        all
    }

    fn view_since(&self, generation: u64) -> crate::registry::Delta {
        let mut delta = self.registry.since(generation);
        if self.gateway {
            let exports = self.registry.exports_since(generation);
            delta.updated.retain(|o| o.kind == "DestinationRule");
            delta.removed.retain(|n| n.starts_with("DestinationRule/"));
            delta.updated.extend(exports.updated);
            delta.removed.extend(exports.removed);
            delta.generation = delta.generation.max(exports.generation);
        }
        delta
    }

    fn visible(&self, o: &Output) -> bool {
        // Certificates go to the proxies of their own namespace only (never by the
        // east-west gateway's cluster-wide view): to its ingress gateways when only
        // Gateways name them.
        if o.kind == mesh_proto::model::KIND_CREDENTIAL {
            let audience = if o.ingress_only {
                self.node.kind == "ingress"
            } else {
                self.node.kind != "gateway"
            };
            return audience && o.visible_to(&self.namespace);
        }
        if self.gateway {
            return true;
        }
        o.visible_to(&self.namespace) && self.in_scope(o)
    }

    /// Whether the proxy's Sidecar admits a service output.
    fn in_scope(&self, o: &Output) -> bool {
        let Some(scope) = &self.scope else {
            return true;
        };
        if o.kind != mesh_proto::model::KIND_SERVICE {
            return true;
        }
        let name = o.name.rsplit('/').next().unwrap_or_default();
        scope.allows_host(
            &o.namespace,
            &mesh_proxy::model::resolve_host(name, &o.namespace),
        )
    }

    /// Recomputes the Sidecar in force when a Sidecar or the node changed; true when
    /// the egress hosts in force changed.
    fn refresh_scope(&mut self, node: &mesh_proto::model::Node, node_version: &str) -> bool {
        if self.gateway {
            return false;
        }
        let (counter, sidecars) = self.registry.sidecars();
        let from = (counter, node_version.to_owned());
        if self.scope_from.as_ref() == Some(&from) {
            return false;
        }
        self.scope_from = Some(from);
        // A proxy receives its namespace's Sidecars and the root namespace's.
        let mut ordered: Vec<&mesh_api::Resource> = sidecars
            .iter()
            .map(AsRef::as_ref)
            .filter(|r| {
                let ns = r.metadata().namespace.as_deref().unwrap_or("default");
                ns == self.namespace || ns == crate::registry::ROOT_NAMESPACE
            })
            .collect();
        ordered.sort_by(|a, b| mesh_api::precedence::older_first(a.metadata(), b.metadata()));
        let scope = mesh_proxy::state::Scope::for_node(&ordered, node);
        let key = |s: &Option<mesh_proxy::state::Scope>| {
            s.as_ref().map(|s| (s.sidecar.clone(), s.hosts.clone()))
        };
        let changed = key(&scope) != key(&self.scope);
        self.scope = scope;
        changed
    }

    /// The first push: everything visible that the proxy does not hold at that version.
    async fn initial(&mut self, held: &HashMap<String, String>) -> bool {
        let (node, node_resource) = node_resource(&self.registry, &self.node, &self.id);
        self.refresh_scope(&node, &node_resource.version);
        let mut all = self.view_all();
        self.generation = all.generation;
        all.updated.sort_by(|a, b| a.name.cmp(&b.name));
        let mut resources = Vec::new();
        let mut visible = std::collections::HashSet::new();
        for o in &all.updated {
            if !self.visible(o) {
                continue;
            }
            visible.insert(o.name.as_str());
            if held.get(&o.name) != Some(&o.version) {
                resources.push(wire(o));
            }
        }
        self.node_version = node_resource.version.clone();
        if held.get(NODE_RESOURCE) != Some(&node_resource.version) {
            resources.push(node_resource);
        }
        let removed = held
            .keys()
            .filter(|k| k.as_str() != NODE_RESOURCE && !visible.contains(k.as_str()))
            .cloned()
            .collect();
        self.send(resources, removed, None).await
    }

    /// A push of what changed after the generation the proxy holds; everything, when
    /// the Sidecar in force changed what it admits.
    async fn update(&mut self, event_at: Option<Instant>) -> bool {
        let (node, node_resource) = node_resource(&self.registry, &self.node, &self.id);
        let delta = self.view_since(self.generation);
        if self.refresh_scope(&node, &node_resource.version) {
            return self.resync(delta.removed, node_resource, event_at).await;
        }
        if delta.generation == self.generation {
            return true;
        }
        self.generation = delta.generation;
        let mut resources = Vec::new();
        let mut removed = delta.removed;
        for o in &delta.updated {
            if self.visible(o) {
                resources.push(wire(o));
            } else {
                removed.push(o.name.clone());
            }
        }
        if node_resource.version != self.node_version {
            self.node_version = node_resource.version.clone();
            resources.push(node_resource);
        }
        if resources.is_empty() && removed.is_empty() {
            return true;
        }
        self.send(resources, removed, event_at).await
    }

    /// Every visible resource and the proxy's node, the removal of every service now
    /// outside the proxy's Sidecar, and `removed` (what was deleted since the last
    /// push).
    async fn resync(
        &mut self,
        removed: Vec<String>,
        node_resource: WireResource,
        event_at: Option<Instant>,
    ) -> bool {
        let all = self.view_all();
        self.generation = all.generation;
        let mut resources = Vec::new();
        let mut removed = removed;
        for o in &all.updated {
            if self.visible(o) {
                resources.push(wire(o));
            } else if o.kind == mesh_proto::model::KIND_SERVICE {
                removed.push(o.name.clone());
            }
        }
        self.node_version = node_resource.version.clone();
        resources.push(node_resource);
        self.send(resources, removed, event_at).await
    }

    fn answer(&mut self, req: &ConfigRequest) {
        let Some(pos) = self
            .in_flight
            .iter()
            .position(|f| f.nonce == req.response_nonce)
        else {
            return; // an answer to a response from before a reconnect, or too old
        };
        // Answers come in order: older unanswered nonces are superseded.
        let answered: Vec<InFlight> = self.in_flight.drain(..=pos).collect();
        let event_at = answered.last().and_then(|f| f.event_at);
        if let Some(at) = event_at {
            self.metrics.convergence.observe(at.elapsed().as_secs_f64());
        }
        let nacks: Vec<Nack> = req
            .rejected
            .iter()
            .map(|r| Nack {
                name: r.name.clone(),
                version: r.version.clone(),
                reason: r.reason.clone(),
            })
            .collect();
        if !nacks.is_empty() {
            self.metrics.nacks.inc_by(nacks.len() as u64);
            for n in &nacks {
                tracing::warn!(proxy = %self.proxy, resource = %n.name, version = %n.version, reason = %n.reason, "proxy refused a resource (NACK)");
            }
        }
        let pending = self.in_flight.len();
        let applied = req.applied_version.clone();
        self.statuses.update(&self.proxy, |s| {
            // A NACK stands until a later version of that resource is accepted (or
            // the resource is removed).
            s.nacked
                .retain(|old| !answered.iter().any(|f| f.names.contains(&old.name)));
            s.nacked.extend(nacks);
            s.acked_version = applied;
            s.pending = pending;
        });
    }
}

#[tonic::async_trait]
impl ConfigDiscovery for ConfigService {
    type StreamStream = ReceiverStream<Result<ConfigResponse, Status>>;

    async fn report_edges(
        &self,
        request: Request<mesh_proto::config::ProxyEdges>,
    ) -> Result<Response<mesh_proto::edges::EdgeReportAck>, Status> {
        /// More edges than this in one report are not one proxy's calls.
        const MAX_EDGES: usize = 4096;
        let id = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.id.clone())
            .ok_or_else(|| Status::unauthenticated("edge reports need a workload certificate"))?;
        let report = request.into_inner();
        if report.edges.len() > MAX_EDGES {
            return Err(Status::invalid_argument(format!(
                "{} edges in one report (at most {MAX_EDGES})",
                report.edges.len()
            )));
        }
        // A proxy speaks for calls from its own namespace, in this cluster.
        let cluster = self.registry.cluster();
        let edges = report
            .edges
            .into_iter()
            .filter(|e| e.source_namespace == id.namespace())
            .map(|mut e| {
                e.source_cluster = cluster.to_owned();
                e
            })
            .collect();
        self.registry
            .edges()
            .report(&format!("{}.{}", report.proxy, id.namespace()), edges);
        Ok(Response::new(mesh_proto::edges::EdgeReportAck {}))
    }

    async fn stream(
        &self,
        request: Request<Streaming<ConfigRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no connection info"))?;
        let id = peer.id.clone().ok_or_else(|| {
            Status::unauthenticated(
                "the config stream needs a workload certificate (mTLS); get one from the CA first",
            )
        })?;
        let mut incoming = request.into_inner();
        let first = incoming.message().await?.ok_or_else(|| {
            Status::invalid_argument("the stream closed before the first request")
        })?;
        let node = first
            .node
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first request must carry the node"))?;
        if node.namespace != id.namespace() {
            return Err(Status::permission_denied(format!(
                "node namespace {:?} does not match the certificate's identity {id}",
                node.namespace
            )));
        }
        if node.name.is_empty() {
            return Err(Status::invalid_argument("node.name is empty"));
        }
        let proxy = format!("{}.{}", node.name, node.namespace);
        // The gateway view goes by authenticated identity, never by what the node
        // says it is.
        let gateway = node.kind == "gateway" && self.gateway_ids.contains(&id);
        if node.kind == "gateway" && !gateway {
            tracing::warn!(proxy = %proxy, identity = %id, "a proxy claims to be a gateway without a gateway identity; it gets its namespace's view");
        }
        self.statuses
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                proxy.clone(),
                ProxyStatus {
                    proxy: proxy.clone(),
                    identity: id.to_string(),
                    address: peer.address.to_string(),
                    kind: if node.kind == "gateway" && !gateway {
                        "sidecar (claimed gateway)".into()
                    } else {
                        node.kind.clone()
                    },
                    admin_address: node.admin_address.clone(),
                    connected: true,
                    connected_at: mesh_identity::cert::rfc3339(SystemTime::now()),
                    sent_version: String::new(),
                    acked_version: first.applied_version.clone(),
                    last_push: String::new(),
                    pushes: 0,
                    pending: 0,
                    nacked: vec![],
                    cert_expiry: peer
                        .cert_expiry
                        .map(mesh_identity::cert::rfc3339)
                        .unwrap_or_default(),
                },
            );
        self.metrics.connected.inc();
        tracing::info!(proxy = %proxy, identity = %id, held = first.initial_resource_versions.len(), "proxy connected");
        let (tx, rx) = mpsc::channel(16);
        let mut stream = Stream {
            registry: self.registry.clone(),
            statuses: self.statuses.clone(),
            metrics: self.metrics.clone(),
            proxy,
            namespace: node.namespace.clone(),
            gateway,
            node,
            id,
            tx,
            generation: 0,
            node_version: String::new(),
            nonce: 0,
            in_flight: VecDeque::new(),
            scope: None,
            scope_from: None,
        };
        let mut published = self.published.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut alive = stream.initial(&first.initial_resource_versions).await;
            while alive && !*shutdown.borrow() {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    changed = published.changed() => {
                        if changed.is_err() { break }
                        let p = *published.borrow_and_update();
                        alive = stream.update(p.event_at).await;
                    }
                    msg = incoming.message() => match msg {
                        Ok(Some(req)) => stream.answer(&req),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(proxy = %stream.proxy, error = %e, "config stream error");
                            break;
                        }
                    },
                }
            }
            tracing::info!(proxy = %stream.proxy, "proxy disconnected");
            stream.metrics.connected.dec();
            stream
                .statuses
                .update(&stream.proxy, |s| s.connected = false);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_tells_each_proxy_the_mesh_outbound_traffic_policy() {
        let id: SpiffeId = "spiffe://mesh.example/ns/shop/sa/web".parse().unwrap();
        let proxy = WireNode {
            name: "web-1".into(),
            namespace: "shop".into(),
            ..Default::default()
        };
        let decode = |registry: &Registry| -> mesh_proto::model::Node {
            serde_json::from_slice(&node_resource(registry, &proxy, &id).1.body).unwrap()
        };
        let default = Registry::new("east", "net", &[]);
        assert_eq!(
            decode(&default).outbound_traffic_policy,
            mesh_proto::model::OutboundTrafficPolicy::AllowAny
        );
        let strict = Registry::new("east", "net", &[])
            .with_outbound_traffic_policy(mesh_proto::model::OutboundTrafficPolicy::RegistryOnly);
        let node = decode(&strict);
        assert_eq!(
            node.outbound_traffic_policy,
            mesh_proto::model::OutboundTrafficPolicy::RegistryOnly
        );
        assert_eq!(node.cluster, "east");
    }
}
