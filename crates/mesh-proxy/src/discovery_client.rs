//! The proxy end of discovery's config stream (`isthmus.config.v1`, see mesh-proto).
//!
//! [`ResourceSet`] holds the resources received so far and turns each response into a
//! new [`ProxyState`](crate::ProxyState): every resource is decoded and checked on its
//! own first, so a bad one is refused alone (NACK with its name and reason) while the
//! rest of the response is applied; what was held before for a refused name stays in
//! force. [`run`] keeps the stream up: it reconnects with backoff, resumes by sending
//! the versions it holds, and never touches the live state while discovery is away
//! (static stability: the last good config keeps serving).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::Resource as IstioResource;
use mesh_identity::{Identity, SpiffeId};
use mesh_proto::config::{
    ConfigRequest, ConfigResponse, Node as WireNode, Rejection, Resource as WireResource,
    config_discovery_client::ConfigDiscoveryClient,
};
use tokio::sync::mpsc;

use crate::config::{Node, ServiceConfig};
use crate::error::ConfigError;
use crate::model::Service;
use crate::state::compile_service;
use crate::state::{ProxyState, StateStore};

pub use mesh_proto::model::{KIND_NODE, KIND_SERVICE, NODE_RESOURCE};

#[derive(Debug, Clone)]
enum Item {
    Node(Node),
    /// As sent, and compiled once (again only when the node changes: the compiled
    /// service caches metric labels that name this proxy).
    Service(Arc<ServiceConfig>, Arc<Service>),
    Istio(Arc<IstioResource>),
}

#[derive(Debug, Clone)]
struct Held {
    version: String,
    item: Item,
}

/// Why a pushed resource cannot be taken in (its text is the NACK's reason).
#[derive(Debug, thiserror::Error)]
enum DecodeError {
    /// The node resource does not parse.
    #[error("node: {0}")]
    Node(serde_json::Error),
    /// A service resource does not parse.
    #[error("service: {0}")]
    Service(serde_json::Error),
    /// An Istio resource is not JSON.
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    /// An Istio resource is refused by the API's reader and validator.
    #[error(transparent)]
    Istio(#[from] mesh_api::ResourceError),
}

/// Decodes one resource of the stream.
fn decode(r: &WireResource) -> Result<Item, DecodeError> {
    match r.kind.as_str() {
        KIND_NODE => serde_json::from_slice(&r.body)
            .map(Item::Node)
            .map_err(DecodeError::Node),
        KIND_SERVICE => serde_json::from_slice(&r.body)
            .map(|svc: ServiceConfig| {
                let compiled = compile_service(&svc);
                Item::Service(Arc::new(svc), compiled)
            })
            .map_err(DecodeError::Service),
        _ => {
            let value: serde_json::Value =
                serde_json::from_slice(&r.body).map_err(DecodeError::NotJson)?;
            Ok(Item::Istio(Arc::new(mesh_api::from_value(value)?)))
        }
    }
}

/// The resources a proxy holds, by name.
#[derive(Debug, Default, Clone)]
pub struct ResourceSet {
    held: BTreeMap<String, Held>,
    version: String,
}

/// What applying one response did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Resources refused, each alone; the others were applied.
    pub rejected: Vec<Rejection>,
    /// Whether the live state changed.
    pub changed: bool,
}

impl ResourceSet {
    /// Name → version of everything held (sent on reconnect so discovery resends only
    /// what differs).
    pub fn versions(&self) -> HashMap<String, String> {
        self.held
            .iter()
            .map(|(k, v)| (k.clone(), v.version.clone()))
            .collect()
    }

    /// The config version last applied.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of resources held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The node held, if any.
    fn node(&self) -> Option<&Node> {
        self.held.values().find_map(|h| match &h.item {
            Item::Node(n) => Some(n),
            _ => None,
        })
    }

    /// Compiles the held set from its compiled services and Istio objects; `None`
    /// before the node has arrived.
    fn compile_set(
        held: &BTreeMap<String, Held>,
        version: &str,
        origin: &str,
    ) -> Option<Result<ProxyState, ConfigError>> {
        let mut node = None;
        let mut services = Vec::new();
        let mut resources = Vec::new();
        for h in held.values() {
            match &h.item {
                Item::Node(n) => node = Some(n),
                Item::Service(_, compiled) => services.push(compiled.clone()),
                Item::Istio(r) => resources.push(r.as_ref()),
            }
        }
        Some(ProxyState::compile_parts(
            node?, version, services, &resources, origin,
        ))
    }

    /// Applies one response to `store`, compiling the whole set once. Each added or
    /// changed resource is decoded and validated on its own first (an Istio object
    /// with the node), and refused alone when that fails; a service whose host another
    /// held or newer resource already defines is refused alone too (the one held, or
    /// else the first by name, keeps it), so the set that is compiled is the set that
    /// is installed. Should the set still not compile, every change of this response
    /// is refused together and the last good config stays in force.
    pub fn apply(&mut self, response: &ConfigResponse, store: &StateStore) -> Applied {
        let origin = format!("discovery (version {})", response.system_version);
        let mut rejected = Vec::new();
        // A node in this response that differs from the one held: the services
        // compiled for the old node are compiled again below.
        let new_node = response
            .resources
            .iter()
            .find(|r| r.kind == KIND_NODE)
            .and_then(|r| match decode(r) {
                Ok(Item::Node(n)) => Some(n),
                _ => None,
            })
            .filter(|n| self.node() != Some(n));
        let node_now = new_node.clone().or_else(|| self.node().cloned());

        let mut next = self.held.clone();
        for name in &response.removed {
            next.remove(name);
        }
        // Which resource defines each service host, among those that stay.
        let mut hosts: HashMap<String, String> = next
            .iter()
            .filter_map(|(name, h)| match &h.item {
                Item::Service(_, svc) => Some((svc.host.clone(), name.clone())),
                _ => None,
            })
            .collect();
        // Changed services give their old host up first, so a service may move.
        let changed: std::collections::HashSet<&str> =
            response.resources.iter().map(|r| r.name.as_str()).collect();
        hosts.retain(|_, owner| !changed.contains(owner.as_str()));
        let mut incoming: Vec<&WireResource> = response.resources.iter().collect();
        incoming.sort_by(|a, b| a.name.cmp(&b.name));
        for r in incoming {
            let reject = |reason: String| Rejection {
                name: r.name.clone(),
                version: r.version.clone(),
                reason,
            };
            let item = match decode(r) {
                Ok(item) => item,
                Err(e) => {
                    rejected.push(reject(e.to_string()));
                    continue;
                }
            };
            match (&item, &node_now) {
                (Item::Istio(res), Some(node)) => {
                    let alone = [res.as_ref()];
                    if let Err(e) = ProxyState::compile_parts(node, "", [], &alone, &r.name) {
                        rejected.push(reject(e.reasons.join("; ")));
                        continue;
                    }
                }
                (Item::Service(_, svc), _) => {
                    let host = svc.host.clone();
                    if let Some(owner) = hosts.get(&host).filter(|o| **o != r.name) {
                        rejected.push(reject(format!(
                            "conflicts with the config held: service {host} is listed twice \
                             (already defined by {owner})"
                        )));
                        continue;
                    }
                    hosts.insert(host, r.name.clone());
                }
                _ => {}
            }
            next.insert(
                r.name.clone(),
                Held {
                    version: r.version.clone(),
                    item,
                },
            );
        }

        let version = response.system_version.clone();
        let mut changed = false;
        if new_node.is_some() {
            for h in next.values_mut() {
                if let Item::Service(config, compiled) = &mut h.item {
                    *compiled = compile_service(config);
                }
            }
        }
        match Self::compile_set(&next, &version, &origin) {
            Some(Ok(state)) => {
                store.install(state);
                self.held = next;
                changed = true;
            }
            Some(Err(e)) => {
                // A conflict between resources that no check above knows: nothing of
                // this response is taken, so the proxy keeps a config it knows works.
                let reason = format!("conflicts with the config held: {}", e.reasons.join("; "));
                store.record_rejection(e);
                for r in &response.resources {
                    if !rejected.iter().any(|x| x.name == r.name) {
                        rejected.push(Rejection {
                            name: r.name.clone(),
                            version: r.version.clone(),
                            reason: reason.clone(),
                        });
                    }
                }
            }
            None => {
                // No node yet: hold what was accepted until the node arrives.
                self.held = next;
            }
        }
        if changed {
            self.version = version;
        }
        for r in &rejected {
            tracing::warn!(resource = %r.name, version = %r.version, reason = %r.reason, "resource refused; the last good version stays in force");
        }
        Applied { rejected, changed }
    }
}

/// Where and how to reach discovery.
#[derive(Debug, Clone)]
pub struct DiscoveryClientOptions {
    /// Discovery's address (port 15012).
    pub address: SocketAddr,
    /// Discovery's expected identity (`spiffe://TD/ns/NS/sa/SA`).
    pub discovery_id: SpiffeId,
    /// What the proxy says about itself.
    pub node: WireNode,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
}

impl DiscoveryClientOptions {
    /// Options with the default backoff (0.2 s doubling to 10 s).
    pub fn new(address: SocketAddr, discovery_id: SpiffeId, node: WireNode) -> Self {
        Self {
            address,
            discovery_id,
            node,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// The state of the stream, for the admin endpoint and logs.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StreamStatus {
    /// Whether a stream is open now.
    pub connected: bool,
    /// Responses received over all streams.
    pub responses: u64,
    /// Resources refused by this proxy, still current.
    pub rejected: Vec<String>,
    /// Last error that closed a stream.
    pub last_error: Option<String>,
}

/// Keeps the config stream up for as long as the task runs, applying every response
/// to `store`. Status updates go to `status`.
pub async fn run(
    options: DiscoveryClientOptions,
    identity: Identity,
    store: Arc<StateStore>,
    status: Arc<arc_swap::ArcSwap<StreamStatus>>,
) {
    // What is held outlives each stream: a reconnect sends its versions, so discovery
    // resends only what differs.
    let backoff = mesh_net::backoff::Backoff::new(options.initial_backoff, options.max_backoff);
    let address = options.address;
    let context = (options, identity, store, status.clone());
    mesh_net::watch::reconnecting(
        backoff,
        (context, ResourceSet::default()),
        |((options, identity, store, status), mut set)| async move {
            let result = stream_once(&options, &identity, &store, &mut set, &status).await;
            (((options, identity, store, status), set), result)
        },
        |_, error: Option<String>| {
            if let Some(e) = &error {
                tracing::warn!(discovery = %address, error = %e, "config stream closed; serving the last good config");
            }
            status.rcu(|s| StreamStatus {
                connected: false,
                last_error: error.clone(),
                ..(**s).clone()
            });
        },
    )
    .await;
}

async fn stream_once(
    options: &DiscoveryClientOptions,
    identity: &Identity,
    store: &StateStore,
    set: &mut ResourceSet,
    status: &arc_swap::ArcSwap<StreamStatus>,
) -> Result<(), String> {
    let channel = mesh_net::channel::channel(
        options.address,
        identity,
        vec![options.discovery_id.clone()],
    )
    .await
    .map_err(|e| {
        format!(
            "connecting to discovery at {}: {}",
            options.address,
            mesh_net::channel::source_chain(&e)
        )
    })?;
    let mut client = ConfigDiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel::<ConfigRequest>(4);
    tx.send(ConfigRequest {
        node: Some(options.node.clone()),
        initial_resource_versions: set.versions(),
        applied_version: set.version().to_owned(),
        ..Default::default()
    })
    .await
    .map_err(|_| "request channel closed".to_owned())?;
    let mut responses = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("opening the config stream: {}", e.message()))?
        .into_inner();
    status.rcu(|s| StreamStatus {
        connected: true,
        last_error: None,
        ..(**s).clone()
    });
    tracing::info!(discovery = %options.address, held = set.len(), "config stream open");
    loop {
        let response = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err("discovery closed the stream".into()),
            Err(e) => return Err(format!("config stream: {}", e.message())),
        };
        let applied = set.apply(&response, store);
        status.rcu(|s| StreamStatus {
            responses: s.responses + 1,
            rejected: applied
                .rejected
                .iter()
                .map(|r| format!("{}: {}", r.name, r.reason))
                .collect(),
            ..(**s).clone()
        });
        tx.send(ConfigRequest {
            response_nonce: response.nonce.clone(),
            rejected: applied.rejected,
            applied_version: set.version().to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|_| "request channel closed".to_owned())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(name: &str, kind: &str, version: &str, body: &str) -> WireResource {
        WireResource {
            name: name.into(),
            version: version.into(),
            kind: kind.into(),
            body: body.as_bytes().to_vec().into(),
        }
    }

    fn node() -> WireResource {
        res(
            NODE_RESOURCE,
            KIND_NODE,
            "n1",
            r#"{"name":"fe-1","namespace":"shop","serviceAccount":"fe","cluster":"east"}"#,
        )
    }

    fn vs(name: &str, version: &str, uri_regex: &str) -> WireResource {
        let body = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"hosts": [format!("{name}.shop.svc.cluster.local")],
                     "http": [{"match": [{"uri": {"regex": uri_regex}}],
                               "route": [{"destination": {"host": name}}]}]}
        });
        res(
            &format!("VirtualService/shop/{name}"),
            "VirtualService",
            version,
            &body.to_string(),
        )
    }

    fn response(version: &str, resources: Vec<WireResource>, removed: &[&str]) -> ConfigResponse {
        ConfigResponse {
            nonce: format!("nonce-{version}"),
            system_version: version.into(),
            resources,
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn service(name: &str, version: &str, ip: &str) -> WireResource {
        let body = serde_json::json!({"name": name, "namespace": "shop",
            "ports": [{"name": "http", "port": 9080}],
            "endpoints": [{"address": ip}]});
        res(
            &format!("Service/shop/{name}"),
            KIND_SERVICE,
            version,
            &body.to_string(),
        )
    }

    #[test]
    fn a_bad_resource_is_refused_alone_and_its_last_good_version_stays() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let first = set.apply(
            &response(
                "1",
                vec![
                    node(),
                    service("reviews", "a", "10.0.0.1"),
                    vs("reviews", "a", "^/v1/.*"),
                ],
                &[],
            ),
            &store,
        );
        assert!(first.rejected.is_empty(), "{first:?}");
        assert!(store.is_ready());
        assert_eq!(store.snapshot().version, "1");

        // A broken regex in the VirtualService and a good endpoint change together.
        let second = set.apply(
            &response(
                "2",
                vec![
                    service("reviews", "b", "10.0.0.2"),
                    vs("reviews", "b", "^/v1/(unclosed"),
                ],
                &[],
            ),
            &store,
        );
        assert_eq!(second.rejected.len(), 1, "{second:?}");
        assert_eq!(second.rejected[0].name, "VirtualService/shop/reviews");
        assert!(second.rejected[0].reason.contains("regex"), "{second:?}");
        let state = store.snapshot();
        assert_eq!(state.version, "2");
        let svc = &state.services["reviews.shop.svc.cluster.local"];
        assert_eq!(svc.endpoints[0].inbound.ip().to_string(), "10.0.0.2");
        // The old VirtualService (version a) is still held and in force.
        assert_eq!(set.versions()["VirtualService/shop/reviews"], "a");

        // Malformed JSON is refused alone too.
        let third = set.apply(
            &response(
                "3",
                vec![res("Service/shop/x", KIND_SERVICE, "z", "{nope")],
                &[],
            ),
            &store,
        );
        assert_eq!(third.rejected.len(), 1);
        assert!(!set.versions().contains_key("Service/shop/x"));

        // Removal.
        set.apply(&response("4", vec![], &["Service/shop/reviews"]), &store);
        assert!(store.snapshot().services.is_empty());
    }

    #[test]
    fn nothing_is_served_before_the_node_arrives() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        set.apply(
            &response("1", vec![service("reviews", "a", "10.0.0.1")], &[]),
            &store,
        );
        assert!(!store.is_ready());
        set.apply(&response("2", vec![node()], &[]), &store);
        assert!(store.is_ready());
        assert_eq!(store.snapshot().services.len(), 1);
    }

    #[test]
    fn conflicting_resources_are_refused_and_the_held_config_stays() {
        // Two outputs that describe the same service host cannot both be held.
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let first = service("reviews", "1", "10.0.0.1");
        set.apply(&response("1", vec![node(), first.clone()], &[]), &store);
        let mut copy = service("reviews", "1", "10.0.0.9");
        copy.name = "Service/shop/reviews-copy".into();
        let applied = set.apply(&response("2", vec![copy], &[]), &store);
        assert_eq!(applied.rejected.len(), 1, "{applied:?}");
        assert!(
            applied.rejected[0].reason.contains("listed twice"),
            "{applied:?}"
        );
        let state = store.snapshot();
        assert_eq!(state.version, "2");
        let svc = &state.services["reviews.shop.svc.cluster.local"];
        assert_eq!(svc.endpoints[0].inbound.ip().to_string(), "10.0.0.1");
        assert_eq!(set.versions().len(), 2, "the refused copy is not held");
    }

    #[test]
    fn a_duplicate_in_one_response_is_refused_by_name_and_the_rest_applies() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let mut copy = service("reviews", "1", "10.0.0.9");
        copy.name = "Service/shop/reviews-copy".into();
        let applied = set.apply(
            &response(
                "1",
                vec![
                    copy,
                    vs("reviews", "a", "^/v1/.*"),
                    service("reviews", "1", "10.0.0.1"),
                    node(),
                ],
                &[],
            ),
            &store,
        );
        // The first by name keeps the host, whatever the order sent.
        assert_eq!(applied.rejected.len(), 1, "{applied:?}");
        assert_eq!(applied.rejected[0].name, "Service/shop/reviews-copy");
        assert!(
            applied.rejected[0]
                .reason
                .contains("already defined by Service/shop/reviews"),
            "{applied:?}"
        );
        let state = store.snapshot();
        assert_eq!(state.version, "1");
        let svc = &state.services["reviews.shop.svc.cluster.local"];
        assert_eq!(svc.endpoints[0].inbound.ip().to_string(), "10.0.0.1");
        assert_eq!(
            state.routes["reviews.shop.svc.cluster.local"].len(),
            1,
            "the VirtualService in the same response applied"
        );
        assert!(store.last_rejection().is_none());
    }

    #[test]
    fn a_push_compiles_only_the_services_it_changes_until_the_node_changes() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let host = |n: &str| format!("{n}.shop.svc.cluster.local");
        set.apply(
            &response(
                "1",
                vec![
                    node(),
                    service("reviews", "a", "10.0.0.1"),
                    service("ratings", "a", "10.0.0.2"),
                ],
                &[],
            ),
            &store,
        );
        let before = store.snapshot();
        set.apply(
            &response("2", vec![service("ratings", "b", "10.0.0.3")], &[]),
            &store,
        );
        let after = store.snapshot();
        assert!(
            Arc::ptr_eq(
                &before.services[&host("reviews")],
                &after.services[&host("reviews")]
            ),
            "an unchanged service is reused, not compiled again"
        );
        let ratings = &after.services[&host("ratings")];
        assert_eq!(ratings.endpoints[0].inbound.ip().to_string(), "10.0.0.3");

        let mut moved = node();
        moved.version = "n2".into();
        moved.body =
            br#"{"name":"fe-1","namespace":"shop","serviceAccount":"fe","cluster":"west"}"#
                .to_vec()
                .into();
        set.apply(&response("3", vec![moved], &[]), &store);
        let renamed = store.snapshot();
        assert_eq!(renamed.node.cluster, "west");
        assert!(
            !Arc::ptr_eq(
                &after.services[&host("reviews")],
                &renamed.services[&host("reviews")]
            ),
            "services are compiled again for a new node"
        );
    }

    #[test]
    fn destination_rules_for_one_host_merge_with_the_older_first() {
        let dr = |name: &str, created: &str, subset: &str| {
            let body = serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
                "spec": {"host": "reviews", "subsets": [
                    {"name": subset, "labels": {"version": name}}]}});
            res(
                &format!("DestinationRule/shop/{name}"),
                "DestinationRule",
                "1",
                &body.to_string(),
            )
        };
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        set.apply(
            &response(
                "1",
                vec![node(), dr("b-old", "2026-01-01T00:00:00Z", "v1")],
                &[],
            ),
            &store,
        );
        // A newer rule whose name sorts first: it adds v2, and loses v1.
        let applied = set.apply(
            &response(
                "2",
                vec![
                    dr("a-new", "2026-03-01T00:00:00Z", "v2"),
                    dr("a-newest", "2026-04-01T00:00:00Z", "v1"),
                ],
                &[],
            ),
            &store,
        );
        assert!(applied.rejected.is_empty(), "{applied:?}");
        let state = store.snapshot();
        let policy = &state.policies["reviews.shop.svc.cluster.local"];
        assert_eq!(policy.rule, "shop/b-old, shop/a-new, shop/a-newest");
        let versions: Vec<_> = policy
            .subsets
            .iter()
            .map(|(name, labels)| (name.as_str(), labels["version"].as_str()))
            .collect();
        assert_eq!(versions, [("v1", "b-old"), ("v2", "a-new")]);
    }
}
