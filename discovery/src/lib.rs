//! The Isthmus discovery service (control plane): Kubernetes and file registries,
//! per-proxy config push over gRPC/mTLS on 15012, the workload CA on the same port,
//! and its monitoring port (15014).
//!
//! [`start`] runs everything in the current Tokio runtime and returns a handle that
//! stops it when dropped; the binary is a thin `main` around it.

pub mod ca;
pub mod dashboard;
pub mod edges;
pub mod files;
pub mod inject;
pub mod kube_registry;
pub mod link_client;
pub mod links;
pub mod metrics;
pub mod monitor;
pub mod peering;
pub mod push;
pub mod registry;
pub mod server;
pub mod trust;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh_identity::{Identity, SpiffeId, TrustBundle, TrustConfig};
use mesh_proto::ca::certificates_server::CertificatesServer;
use mesh_proto::config::config_discovery_server::ConfigDiscoveryServer;

pub use registry::Registry;

/// A client for the cluster of the kubeconfig file at `path` (its current context).
pub async fn kube_client(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("using kubeconfig {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// The service account discovery runs as; proxies expect this identity.
pub const SERVICE_ACCOUNT: &str = "isthmus-discovery";
/// The east-west gateway's service account: the only identity granted the gateway
/// view by default.
pub const GATEWAY_SERVICE_ACCOUNT: &str = "isthmus-eastwest-gateway";
/// The namespace discovery runs in by default.
pub const NAMESPACE: &str = "istio-system";

/// Where the registry comes from.
#[derive(Clone)]
pub enum Source {
    /// The cluster's API server.
    Kubernetes(kube::Client),
    /// A directory of YAML.
    Files(PathBuf),
    /// Nothing watched: the embedding program applies objects to
    /// [`Discovery::registry`] itself (benchmarks, tests, other front ends).
    Api,
}

/// Where the cluster CA (`cacerts`) comes from.
#[derive(Debug, Clone)]
pub enum CaCerts {
    /// A directory with the four `cacerts` files.
    Dir(PathBuf),
    /// A Secret (keys `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`)
    /// in discovery's namespace.
    Secret(String),
}

/// How callers of the CA authenticate.
#[derive(Debug, Clone)]
pub enum CaAuth {
    /// TokenReview of an audience-bound service-account token (Kubernetes).
    TokenReview,
    /// A bootstrap token file.
    TokenFile(PathBuf),
    /// The CA is off.
    Disabled,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kubernetes(_) => f.write_str("Kubernetes"),
            Self::Files(dir) => write!(f, "Files({})", dir.display()),
            Self::Api => f.write_str("Api"),
        }
    }
}

/// Discovery's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster name.
    pub cluster: String,
    /// The cluster's default network.
    pub network: String,
    /// Namespace discovery runs in (its identity's namespace).
    pub namespace: String,
    /// gRPC listen address (config stream and CA).
    pub grpc: SocketAddr,
    /// Monitoring listen address.
    pub monitor: Option<SocketAddr>,
    /// Registry source.
    pub source: Source,
    /// Cluster CA.
    pub cacerts: CaCerts,
    /// CA authentication.
    pub ca_auth: CaAuth,
    /// Push debounce.
    pub debounce: push::Debounce,
    /// File registry polling interval.
    pub file_poll: Duration,
    /// Lifetime of discovery's own certificate.
    pub own_cert_ttl: Duration,
    /// How often `cacerts` is read again for changes (a new intermediate or root set).
    pub cacerts_poll: Duration,
    /// The sidecar injection webhook, if served.
    pub inject: Option<inject::InjectOptions>,
    /// Lease granted to linked clusters on what this one exports.
    pub lease: Duration,
    /// Longest readiness waits for a link to sync.
    pub link_sync_timeout: Duration,
    /// Link client settings.
    pub links: link_client::LinkOptions,
    /// Spans (config pushes, certificate requests, link syncs), when exported.
    pub tracing: mesh_telemetry::trace::Tracing,
    /// (namespace, service account) of the east-west gateways, granted the gateway
    /// view; empty: [`GATEWAY_SERVICE_ACCOUNT`] in discovery's namespace.
    pub gateway_service_accounts: Vec<(String, String)>,
    /// The mesh's outbound traffic policy, told to every proxy.
    pub outbound_traffic_policy: mesh_proto::model::OutboundTrafficPolicy,
    /// Jaeger's query API, for the dashboard's traces (none: the dashboard draws the
    /// graph and says traces are not configured).
    pub jaeger_query: Option<SocketAddr>,
}

impl Options {
    /// Defaults for `cluster` on `network` reading `source`, signing with `cacerts`.
    pub fn new(cluster: &str, network: &str, source: Source, cacerts: CaCerts) -> Self {
        Self {
            cluster: cluster.to_owned(),
            network: network.to_owned(),
            namespace: NAMESPACE.into(),
            grpc: SocketAddr::from(([0, 0, 0, 0], mesh_proto::DISCOVERY_PORT)),
            monitor: Some(SocketAddr::from(([0, 0, 0, 0], 15014))),
            source,
            cacerts,
            ca_auth: CaAuth::Disabled,
            debounce: push::Debounce::default(),
            file_poll: Duration::from_millis(500),
            own_cert_ttl: Duration::from_secs(24 * 3600),
            cacerts_poll: Duration::from_secs(10),
            inject: None,
            lease: peering::DEFAULT_LEASE,
            link_sync_timeout: Duration::from_secs(10),
            links: link_client::LinkOptions::default(),
            tracing: mesh_telemetry::trace::Tracing::disabled(),
            gateway_service_accounts: Vec::new(),
            outbound_traffic_policy: Default::default(),
            jaeger_query: None,
        }
    }
}

/// Writes the webhook CA into the caBundle of webhook configuration `name`
/// (validating or mutating), retrying until it exists: it may be applied after
/// discovery starts.
async fn keep_ca_bundle(client: kube::Client, name: String, pem: String, validating: bool) {
    loop {
        let written = if validating {
            validate::patch_ca_bundle(&client, &name, &pem).await
        } else {
            inject::patch_ca_bundle(&client, &name, &pem).await
        };
        match written {
            Ok(()) => {
                tracing::info!(webhook = %name, "caBundle written");
                return;
            }
            Err(e) => tracing::debug!(webhook = %name, error = %e, "caBundle not written yet"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A running discovery service; everything stops when it is dropped.
#[derive(Debug)]
pub struct Discovery {
    /// The registry.
    pub registry: Arc<Registry>,
    /// Per-proxy status.
    pub statuses: Arc<push::Statuses>,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Where the gRPC port listens.
    pub grpc_addr: SocketAddr,
    /// Where the monitoring port listens.
    pub monitor_addr: Option<SocketAddr>,
    /// Discovery's own identity.
    pub identity: Identity,
    /// The cluster CA (replaced when `cacerts` changes).
    pub ca: ca::SharedCa,
    /// Where the injection webhook listens, and the CA of its certificate.
    pub webhook: Option<(SocketAddr, String)>,
    /// Linked clusters.
    pub links: Arc<peering::Links>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        // Ends every config stream; then the listeners and tasks.
        self.shutdown.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Discovery {
    /// The identity proxies must see on discovery's certificate.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.identity.cert().id().clone()
    }
}

/// Starts discovery: loads the CA, issues its own certificate, starts the registry,
/// the publisher, the gRPC server and the monitoring port.
pub async fn start(options: Options) -> anyhow::Result<Discovery> {
    let loaded = ca::load_cacerts(&options.cacerts, &options.source, &options.namespace).await?;
    let td = loaded.trust_domain().clone();
    let issuer = ca::LocalIssuer {
        ca: Arc::new(arc_swap::ArcSwap::from_pointee(loaded)),
        ttl: options.own_cert_ttl,
    };
    let own_id = SpiffeId::new(td.clone(), &options.namespace, SERVICE_ACCOUNT)?;
    let own = issuer.issue(&own_id)?;
    let root_pem = issuer.ca.load().root_pem().to_owned();
    let bundle = TrustBundle::from_pem(td.clone(), root_pem.as_bytes(), "cacerts root")?;
    let identity = Identity::new(own, TrustConfig::new(td.clone(), bundle))?;
    let trust = Arc::new(trust::TrustSources::new(
        identity.clone(),
        td.clone(),
        &root_pem,
    ));

    let kinds = match &options.source {
        Source::Kubernetes(_) | Source::Files(_) => registry::InputKind::ALL,
        Source::Api => &[],
    };
    let registry = Arc::new(
        Registry::new(&options.cluster, &options.network, kinds)
            .with_outbound_traffic_policy(options.outbound_traffic_policy),
    );
    let metrics = Arc::new(metrics::Metrics::default());
    let statuses = Arc::new(push::Statuses::default());
    let mut tasks = Vec::new();
    match &options.source {
        Source::Kubernetes(client) => {
            tasks.extend(kube_registry::start(
                client.clone(),
                registry.clone(),
                &options.namespace,
            ));
        }
        Source::Files(dir) => {
            if !dir.is_dir() {
                anyhow::bail!(
                    "registry directory {} does not exist; create it or pass another with --registry-dir",
                    dir.display()
                );
            }
            tasks.push(tokio::spawn(files::watch(
                dir.clone(),
                registry.clone(),
                options.file_poll,
            )));
        }
        Source::Api => {}
    }

    let published = push::publisher(registry.clone(), options.debounce, options.tracing.clone());
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let gateway_ids = if options.gateway_service_accounts.is_empty() {
        vec![(
            options.namespace.clone(),
            GATEWAY_SERVICE_ACCOUNT.to_owned(),
        )]
    } else {
        options.gateway_service_accounts.clone()
    }
    .into_iter()
    .map(|(ns, sa)| SpiffeId::new(td.clone(), &ns, &sa))
    .collect::<Result<Vec<_>, _>>()
    .context("a gateway service account is not a valid identity")?;
    let config = push::ConfigService::new(
        registry.clone(),
        published.clone(),
        statuses.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    )
    .with_gateway_identities(gateway_ids);
    let links = Arc::new(peering::Links::default());
    let peering_service =
        peering::PeeringService::new(registry.clone(), published, options.lease, shutdown_rx)
            .with_peer_namespace(&options.links.namespace)
            .with_local_trust_domain(td.clone())
            .with_links(links.clone());
    let listener = tokio::net::TcpListener::bind(options.grpc)
        .await
        .with_context(|| format!("binding the gRPC port {}", options.grpc))?;
    let grpc_addr = listener.local_addr()?;
    let mut router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .add_service(ConfigDiscoveryServer::new(config).max_decoding_message_size(64 << 20))
        .add_service(
            mesh_proto::peering::peering_server::PeeringServer::new(peering_service)
                .max_encoding_message_size(256 << 20),
        );
    let auth = match &options.ca_auth {
        CaAuth::TokenReview => match &options.source {
            Source::Kubernetes(client) => Some(ca::Authenticator::Kubernetes {
                client: client.clone(),
                audience: ca::TOKEN_AUDIENCE.into(),
            }),
            Source::Files(_) | Source::Api => {
                anyhow::bail!("TokenReview needs the Kubernetes registry")
            }
        },
        CaAuth::TokenFile(path) => Some(ca::Authenticator::from_token_file(path)?),
        CaAuth::Disabled => None,
    };
    if let Some(auth) = auth {
        router = router.add_service(CertificatesServer::new(
            ca::CaService::new(issuer.ca.clone(), auth, identity.clone(), metrics.clone())
                .with_tracing(options.tracing.clone()),
        ));
    }
    let incoming = server::incoming(listener, &identity);
    tasks.push(tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    }));
    tasks.push(tokio::spawn(mesh_identity::rotation::run_renewal(
        identity.clone(),
        issuer.clone(),
    )));
    tasks.push(tokio::spawn(ca::follow_cacerts(
        options.cacerts.clone(),
        options.source.clone(),
        options.namespace.clone(),
        issuer.clone(),
        trust.clone(),
        metrics.clone(),
        options.cacerts_poll,
    )));
    tasks.push(tokio::spawn(link_client::run_links(
        registry.clone(),
        trust.clone(),
        links.clone(),
        link_client::LinkOptions {
            tracing: options.tracing.clone(),
            // Connections to peers leave from the address discovery serves on.
            source: options
                .links
                .source
                .or_else(|| Some(grpc_addr.ip()).filter(|ip| !ip.is_unspecified())),
            ..options.links.clone()
        },
    )));
    let monitor_addr = match options.monitor {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the monitoring port {addr}"))?;
            let a = l.local_addr()?;
            tasks.push(tokio::spawn(monitor::serve(
                l,
                monitor::Views {
                    registry: registry.clone(),
                    statuses: statuses.clone(),
                    metrics: metrics.clone(),
                    links: links.clone(),
                    link_sync_timeout: options.link_sync_timeout,
                    identity: identity.clone(),
                    jaeger: options.jaeger_query,
                },
            )));
            Some(a)
        }
        None => None,
    };
    if let Source::Kubernetes(client) = &options.source {
        tasks.push(tokio::spawn(inject::publish_root(
            client.clone(),
            registry.clone(),
            issuer.ca.clone(),
            Duration::from_secs(10),
        )));
    }
    let webhook = match &options.inject {
        Some(inj) => {
            let cert = inject::WebhookCert::generate(&inj.dns_names)?;
            let l = tokio::net::TcpListener::bind(inj.listen)
                .await
                .with_context(|| format!("binding the injection webhook {}", inj.listen))?;
            let addr = l.local_addr()?;
            let ca_pem = cert.ca_pem.clone();
            let mut config = inj.config.clone();
            config.trust_domain = td.to_string();
            config.cluster = options.cluster.clone();
            let (reg, m) = (registry.clone(), metrics.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = inject::serve(l, cert, config, reg, m).await {
                    tracing::error!(error = %e, "webhook server stopped");
                }
            }));
            if let Source::Kubernetes(client) = &options.source {
                if let Some(name) = &inj.webhook_config {
                    tasks.push(tokio::spawn(keep_ca_bundle(
                        client.clone(),
                        name.clone(),
                        ca_pem.clone(),
                        false,
                    )));
                }
                if let Some(name) = &inj.validating_config {
                    tasks.push(tokio::spawn(keep_ca_bundle(
                        client.clone(),
                        name.clone(),
                        ca_pem.clone(),
                        true,
                    )));
                }
            }
            Some((addr, ca_pem))
        }
        None => None,
    };
    tracing::info!(cluster = %options.cluster, grpc = %grpc_addr, monitor = ?monitor_addr, identity = %own_id, "discovery started");
    Ok(Discovery {
        registry,
        statuses,
        metrics,
        grpc_addr,
        monitor_addr,
        identity,
        ca: issuer.ca,
        webhook,
        links,
        tasks,
        shutdown,
    })
}
