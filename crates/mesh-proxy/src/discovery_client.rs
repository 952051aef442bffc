//! The proxy end of discovery's config stream (`isthmus.config.v1`, see mesh-proto).
//!
//! Each response goes through the proxy's one intake, [`ResourceSet`] (shared with
//! file mode): a bad resource is refused alone (NACK with its name and reason) while
//! the rest of the response is applied, and what was held before for a refused name
//! stays in force. [`run`] keeps the stream up: it reconnects with backoff, resumes by
//! sending the versions it holds, and never touches the live state while discovery is
//! away (static stability: the last good config keeps serving).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_identity::{Identity, SpiffeId};
use mesh_proto::config::{
    ConfigRequest, Node as WireNode, config_discovery_client::ConfigDiscoveryClient,
};
use tokio::sync::mpsc;

use crate::state::StateStore;

pub use crate::intake::{Applied, ResourceSet};
pub use mesh_proto::model::{KIND_NODE, KIND_SERVICE, NODE_RESOURCE};

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
    /// How often the calls this proxy made are reported (the mesh graph).
    pub edge_report_every: Duration,
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
            edge_report_every: Duration::from_secs(2),
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
    /// Resources held from discovery (a Sidecar's egress hosts keep it small).
    pub held: usize,
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
    store.edges().enable();
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

/// Sends the calls of the window just ended to discovery, on the stream's connection,
/// without holding up the stream; a window that cannot be sent is dropped (the graph
/// shows rates over the last seconds, not totals).
fn report_edges(
    client: &ConfigDiscoveryClient<tonic::transport::Channel>,
    proxy: &str,
    store: &StateStore,
) {
    let edges = store.edges().take();
    if edges.is_empty() {
        return;
    }
    let mut client = client.clone();
    let report = mesh_proto::config::ProxyEdges {
        proxy: proxy.to_owned(),
        edges,
    };
    tokio::spawn(async move {
        if let Err(e) = client.report_edges(report).await {
            tracing::debug!(error = %e.message(), "edge report not taken");
        }
    });
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
    let mut report = tokio::time::interval(options.edge_report_every);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            m = responses.message() => m,
            _ = report.tick() => {
                report_edges(&client, &options.node.name, store);
                continue;
            }
        };
        let response = match message {
            Ok(Some(r)) => r,
            Ok(None) => return Err("discovery closed the stream".into()),
            Err(e) => return Err(format!("config stream: {}", e.message())),
        };
        let applied = set.apply(&response, store);
        status.rcu(|s| StreamStatus {
            responses: s.responses + 1,
            held: set.len(),
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
