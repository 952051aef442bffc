//! The client side of peering: one subscription per link Secret, each link one state
//! machine owned by [`run_links`].
//!
//! - **Added**: a subscription starts; its first full update replaces what was held
//!   from that cluster, and the link's roots join discovery's trust.
//! - **Rotated** (the Secret changed: addresses, trust bundle): a new subscription
//!   starts beside the old one, which keeps serving (and its roots stay trusted) until
//!   the new one has synced, then is stopped (make before break). If the new one does
//!   not sync within [`LinkOptions::rotation_grace`], the old one is stopped anyway and
//!   what it had sent turns stale, as after a lease expiry.
//! - **Deleted**: every subscription of the link stops, what the peer sent is withdrawn
//!   at once, and its roots leave discovery's trust.
//!
//! Every write a subscription makes (registry and status) passes its link's gate, so a
//! replaced or deleted link's subscription can never write again, however late its task
//! stops. A silent peer's endpoints stay until the lease runs out, then are kept as
//! *stale* while the peer's east-west gateway passes a health probe through its data
//! port, and are withdrawn when it fails them or after a long bound. Reconnects back off.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use mesh_identity::{Identity, SpiffeId, TrustBundle, TrustConfig};
use mesh_proto::peering::peering_client::PeeringClient;
use mesh_proto::peering::{ExportUpdate, SubscribeRequest};
use tokio::sync::mpsc;

use crate::links::Link;
use crate::peering::{LinkStatus, Links};
use crate::registry::{Registry, RemoteCluster};
use crate::trust::{LinkRoots, TrustSources};

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
    /// Longest the previous version of a rotated link keeps serving while the new one
    /// has not synced.
    pub rotation_grace: Duration,
    /// The local address peering connections and gateway probes leave from (the
    /// address discovery serves on, when it is a specific one).
    pub source: Option<std::net::IpAddr>,
}

/// Default of [`LinkOptions::stale_bound`]: a day, long enough to ride out any
/// control-plane outage an operator would leave unattended.
pub const DEFAULT_STALE_BOUND: Duration = Duration::from_secs(24 * 3600);

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            namespace: crate::NAMESPACE.into(),
            initial_backoff: Duration::from_millis(200),
            // A peer that is down costs one connection attempt every few seconds;
            // a peer that is back is found within them.
            max_backoff: Duration::from_secs(3),
            tracing: mesh_telemetry::trace::Tracing::disabled(),
            probe_interval: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(2),
            probe_failures: 3,
            stale_bound: DEFAULT_STALE_BOUND,
            rotation_grace: Duration::from_secs(60),
            source: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which subscription of one link may write.
#[derive(Debug, Default)]
struct Gate {
    /// The subscription whose data the registry holds (0: none yet).
    owner: u64,
    /// The subscription of the link version in force.
    newest: u64,
    /// The link is deleted: nothing writes any more.
    closed: bool,
}

/// One subscription's way to the registry and the status table, through its link's
/// gate.
#[derive(Clone)]
struct Writer {
    cluster: String,
    generation: u64,
    gate: Arc<Mutex<Gate>>,
    registry: Arc<Registry>,
    links: Arc<Links>,
    synced: mpsc::UnboundedSender<(String, u64)>,
}

impl Writer {
    /// A full sync: this subscription's data replaces what was held, unless a newer
    /// subscription has synced already or the link is gone. Reports the sync.
    fn replace(&self, remote: RemoteCluster) -> bool {
        let mut gate = lock(&self.gate);
        if gate.closed || gate.owner > self.generation {
            return false;
        }
        gate.owner = self.generation;
        self.registry.set_remote(&self.cluster, Some(remote));
        drop(gate);
        let _ = self.synced.send((self.cluster.clone(), self.generation));
        true
    }

    /// Runs `f` on the registry if this subscription's data is what it holds.
    fn owned<T>(&self, f: impl FnOnce(&Registry, &str) -> T) -> Option<T> {
        let gate = lock(&self.gate);
        (!gate.closed && gate.owner == self.generation).then(|| f(&self.registry, &self.cluster))
    }

    /// Updates the link's status, if this subscription is the link in force or holds
    /// the data.
    fn status(&self, f: impl FnOnce(&mut LinkStatus)) {
        let gate = lock(&self.gate);
        if !gate.closed && (gate.newest == self.generation || gate.owner == self.generation) {
            self.links.update(&self.cluster, f);
        }
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One link: its version in force and its subscription, and earlier versions still
/// serving until the current one has synced.
struct Slot {
    link: Link,
    gate: Arc<Mutex<Gate>>,
    generation: u64,
    started: Instant,
    _current: AbortOnDrop,
    retiring: Vec<(Link, AbortOnDrop)>,
}

impl Slot {
    /// The roots this link makes discovery trust: its version in force and those
    /// still serving.
    fn roots(&self) -> Vec<LinkRoots> {
        let mut roots: Vec<LinkRoots> = Vec::new();
        for link in std::iter::once(&self.link).chain(self.retiring.iter().map(|(l, _)| l)) {
            let r = LinkRoots {
                trust_domain: link.trust_domain.clone(),
                pem: link.trust_bundle.clone(),
                origin: format!("link Secret {}", link.secret),
            };
            if !roots.contains(&r) {
                roots.push(r);
            }
        }
        roots
    }
}

/// Keeps one subscription per link the registry holds, until dropped.
pub async fn run_links(
    registry: Arc<Registry>,
    trust: Arc<TrustSources>,
    links: Arc<Links>,
    options: LinkOptions,
) {
    let identity = trust.identity().clone();
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    let mut generation = 0u64;
    let (synced_tx, mut synced_rx) = mpsc::unbounded_channel::<(String, u64)>();
    let mut changes = registry.subscribe();
    // Links whose roots are to be installed again.
    let mut touched: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut spawn = |link: &Link, gate: &Arc<Mutex<Gate>>| {
        generation += 1;
        lock(gate).newest = generation;
        let writer = Writer {
            cluster: link.cluster.clone(),
            generation,
            gate: gate.clone(),
            registry: registry.clone(),
            links: links.clone(),
            synced: synced_tx.clone(),
        };
        let task = tokio::spawn(subscribe_loop(
            link.clone(),
            writer,
            identity.clone(),
            options.clone(),
        ));
        (generation, AbortOnDrop(task))
    };
    loop {
        let wanted: BTreeMap<String, Link> = registry
            .links()
            .into_iter()
            .map(|l| (l.cluster.clone(), l))
            .collect();
        slots.retain(|cluster, slot| {
            if wanted.contains_key(cluster) {
                return true;
            }
            // Deleted: close the gate first, so no subscription writes after this.
            lock(&slot.gate).closed = true;
            registry.set_remote(cluster, None);
            links.remove(cluster);
            trust.set_link(cluster, Vec::new());
            tracing::info!(peer = %cluster, "link deleted; its endpoints are withdrawn and its roots no longer trusted");
            false
        });
        for (cluster, link) in &wanted {
            match slots.get_mut(cluster) {
                Some(slot) if slot.link == *link => {}
                Some(slot) => {
                    // Rotated: the new version subscribes beside the old one.
                    links.upsert(link);
                    let (generation, task) = spawn(link, &slot.gate);
                    let old_link = std::mem::replace(&mut slot.link, link.clone());
                    let old_task = std::mem::replace(&mut slot._current, task);
                    slot.retiring.push((old_link, old_task));
                    slot.generation = generation;
                    slot.started = Instant::now();
                    touched.insert(cluster.clone());
                    tracing::info!(peer = %cluster, "link changed; the new version takes over once it has synced");
                }
                None => {
                    links.upsert(link);
                    touched.insert(cluster.clone());
                    let gate = Arc::new(Mutex::new(Gate::default()));
                    let (generation, task) = spawn(link, &gate);
                    slots.insert(
                        cluster.clone(),
                        Slot {
                            link: link.clone(),
                            gate,
                            generation,
                            started: Instant::now(),
                            _current: task,
                            retiring: Vec::new(),
                        },
                    );
                }
            }
        }
        // Only links whose versions changed (added, rotated, or a rotation finished):
        // the registry changes with every endpoint, the roots rarely.
        for cluster in std::mem::take(&mut touched) {
            if let Some(slot) = slots.get(&cluster) {
                trust.set_link(&cluster, slot.roots());
            }
        }
        let rotating = slots.values().any(|s| !s.retiring.is_empty());
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some((cluster, generation)) = synced_rx.recv() => {
                if let Some(slot) = slots.get_mut(&cluster).filter(|s| s.generation == generation && !s.retiring.is_empty()) {
                    slot.retiring.clear();
                    touched.insert(cluster.clone());
                    tracing::info!(peer = %cluster, "the new link version has synced; the previous one is stopped");
                }
            }
            () = tokio::time::sleep(Duration::from_millis(500)), if rotating => {
                for (cluster, slot) in &mut slots {
                    if slot.retiring.is_empty() || slot.started.elapsed() < options.rotation_grace {
                        continue;
                    }
                    // The new version did not sync in time: the old one stops, and what
                    // it sent turns stale under the new version's watch.
                    lock(&slot.gate).owner = slot.generation;
                    registry.mark_remote_stale(cluster);
                    slot.retiring.clear();
                    touched.insert(cluster.clone());
                    tracing::warn!(peer = %cluster, grace = ?options.rotation_grace, "the new link version has not synced in time; the previous one is stopped and what it sent is kept as stale");
                }
            }
        }
    }
}

async fn subscribe_loop(link: Link, writer: Writer, identity: Identity, options: LinkOptions) {
    let cluster = link.cluster.clone();
    let last_seen: Arc<Mutex<Option<(Instant, Duration)>>> = Arc::default();
    // The lease: when the peer has been silent too long its endpoints turn stale, and
    // stay while its gateway passes its health checks.
    let _watchdog = AbortOnDrop(tokio::spawn(lease_watchdog(
        link.clone(),
        writer.clone(),
        identity.clone(),
        options.clone(),
        last_seen.clone(),
    )));
    let backoff = mesh_net::backoff::Backoff::new(options.initial_backoff, options.max_backoff);
    mesh_net::watch::reconnecting(
        backoff,
        (link, writer.clone(), identity, options, last_seen),
        |(link, writer, identity, options, last_seen)| async move {
            let result = subscribe_once(&link, &writer, &identity, &options, &last_seen).await;
            ((link, writer, identity, options, last_seen), result)
        },
        |_, error| {
            let Some(e) = error else { return };
            tracing::warn!(peer = %cluster, error = %e, "peering stream closed; retrying");
            writer.status(|s| {
                if !matches!(s.state.as_str(), "stale" | "withdrawn" | "timed out") {
                    s.state = "disconnected".into();
                }
                s.last_error = e.clone();
            });
        },
    )
    .await;
}

/// Watches one link's lease. On expiry the peer's endpoints are kept and marked
/// stale (a control-plane outage must not take down a healthy data plane); while
/// stale, the peer's east-west gateway is probed through its data port, and the
/// endpoints are withdrawn after `probe_failures` failed probes in a row or once
/// stale for `stale_bound`. A fresh full sync ends the stale state.
async fn lease_watchdog(
    link: Link,
    writer: Writer,
    identity: Identity,
    options: LinkOptions,
    last_seen: Arc<Mutex<Option<(Instant, Duration)>>>,
) {
    let cluster = link.cluster.clone();
    let probe_tls = link_trust(&link).map(|trust| {
        Arc::new(identity.client_config_with_trust(trust, vec![], &[mesh_net::probe::ALPN_PROBE]))
    });
    let withdraw = |reason: String| {
        if writer.owned(|r, c| r.set_remote(c, None)).is_none() {
            return;
        }
        writer.status(|s| {
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
        let expired = lock(&last_seen).is_some_and(|(at, lease)| at.elapsed() > lease);
        if expired {
            *lock(&last_seen) = None;
            if writer.owned(|r, c| r.mark_remote_stale(c)) == Some(true) {
                let now = SystemTime::now();
                writer.status(|s| {
                    s.state = "stale".into();
                    s.stale_since = mesh_identity::cert::rfc3339(now);
                });
                tracing::warn!(peer = %cluster, "lease expired; the peer's endpoints are kept as stale while its gateway passes its health checks");
                failures = 0;
                next_probe = Instant::now();
            }
        }
        let Some(since) = writer.owned(|r, c| r.remote_stale_since(c)).flatten() else {
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
            Ok(gw) => {
                mesh_net::probe::probe_gateway(gw, options.source, tls, options.probe_timeout)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(answer) => {
                failures = 0;
                writer.status(|s| s.gateway_probe = format!("ok: {answer}"));
            }
            Err(e) => {
                failures += 1;
                let n = options.probe_failures;
                writer.status(|s| {
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

async fn resolve(address: &str) -> Result<std::net::SocketAddr, String> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("resolving {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} has no address"))
}

async fn subscribe_once(
    link: &Link,
    writer: &Writer,
    identity: &Identity,
    options: &LinkOptions,
    last_seen: &Mutex<Option<(Instant, Duration)>>,
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
    writer.status(|s| {
        if !matches!(s.state.as_str(), "stale" | "withdrawn" | "timed out") {
            s.state = "connecting".into();
        }
    });
    // Pinged every 2 s: a peer behind a path that went dark is noticed in 3 s and
    // reconnected to as soon as the path heals.
    let channel = match mesh_net::channel::tls_channel_from(
        address,
        options.source,
        Duration::from_secs(2),
        Arc::new(tls),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            let reason = mesh_net::channel::source_chain(&e);
            let mismatch = reason.contains("certificate")
                || reason.contains("identity")
                || reason.contains("issuer");
            writer.status(|s| {
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
    let registry = &writer.registry;
    let mut stream = client
        .subscribe(SubscribeRequest {
            cluster: registry.cluster().to_owned(),
            network: registry.network().to_owned(),
        })
        .await
        .map_err(|s| format!("subscribing: {}", s.message()))?
        .into_inner();
    writer.status(|s| {
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
        *lock(last_seen) = Some((Instant::now(), lease));
        if update.full {
            let services = decode_services(cluster, &update)
                .into_iter()
                .map(|(k, cfg, e)| (k, (cfg, e)))
                .collect();
            let network = if update.network.is_empty() {
                link.network.clone()
            } else {
                update.network.clone()
            };
            let replaced = writer.replace(RemoteCluster {
                network,
                gateway,
                gateway_quic: link.gateway_quic,
                services,
                stale_since: None,
            });
            if !replaced {
                return Err("a newer version of this link has taken over".into());
            }
            tracing::info!(peer = %cluster, services = update.services.len(), "linked cluster synced");
            if let Some(mut span) = sync_span.take() {
                span.set([("services", update.services.len().to_string())]);
                span.end(200, "-");
            }
        } else {
            match writer.owned(|r, c| r.mark_remote_fresh(c)) {
                None => return Err("a newer version of this link has taken over".into()),
                // What this peer sent was withdrawn while it was silent: only a full
                // sync brings it back.
                Some(false) => return Err("the peer's endpoints were withdrawn while it was silent; resubscribing for a full sync".into()),
                Some(true) => {}
            }
            if !update.services.is_empty() || !update.removed.is_empty() {
                let upserts = decode_services(cluster, &update);
                let removed = removed_services(&update);
                writer.owned(|r, c| r.update_remote(c, upserts, removed));
            }
        }
        // Taken once the update is (a replaced link version has returned above).
        if update.has_edges {
            writer.registry.edges().set_remote(cluster, update.edges);
        }
        let (services, endpoints) = registry.remote_counts(cluster);
        let now = SystemTime::now();
        writer.status(|s| {
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

/// The services of a peer's update, each body read as the proxy's service form; one
/// that does not read is refused alone (logged) and the rest are taken.
pub fn decode_services(
    peer: &str,
    update: &ExportUpdate,
) -> Vec<(
    (String, String),
    mesh_proto::model::ServiceConfig,
    Vec<String>,
)> {
    update
        .services
        .iter()
        .filter_map(|svc| {
            serde_json::from_slice::<mesh_proto::model::ServiceConfig>(&svc.body)
                .map(|cfg| ((svc.namespace.clone(), svc.name.clone()), cfg, svc.export_to.clone()))
                .map_err(|e| tracing::warn!(peer = %peer, service = %format!("{}/{}", svc.namespace, svc.name), error = %e, "exported service refused"))
                .ok()
        })
        .collect()
}

/// The services a peer's update says are no longer exported (`namespace/name`).
pub fn removed_services(update: &ExportUpdate) -> Vec<(String, String)> {
    update
        .removed
        .iter()
        .filter_map(|r| r.split_once('/').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect()
}

/// Subscribes once to the peering service at `addr` as `cluster`, presenting
/// `identity` and verifying the server under `server_trust`, and waits for the first
/// update: whether that identity would be served, or why not. A check for operators'
/// tools (`meshctl testbed chaos foreign-discovery`), not a link.
pub async fn try_subscribe(
    addr: std::net::SocketAddr,
    identity: &Identity,
    server_trust: TrustConfig,
    cluster: &str,
) -> Result<(), String> {
    let tls = identity.client_config_with_trust(server_trust, vec![], &[b"h2"]);
    let channel = mesh_net::channel::tls_channel(addr, Arc::new(tls))
        .await
        .map_err(|e| mesh_net::channel::source_chain(&e))?;
    let mut stream = PeeringClient::new(channel)
        .subscribe(SubscribeRequest {
            cluster: cluster.into(),
            network: String::new(),
        })
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    stream
        .message()
        .await
        .map(drop)
        .map_err(|s| s.message().to_owned())
}
