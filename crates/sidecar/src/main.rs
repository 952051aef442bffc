//! The Isthmus sidecar proxy: a thin binary over `mesh-proxy`. Its config comes from
//! discovery's stream (`--discovery`) or a file (`--config`); its certificate from
//! discovery's CA with a token (`--token-file`) or from files (`--cert-dir`). It
//! serves outbound (explicit or captured) and inbound (mTLS) traffic until SIGTERM or
//! SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Parser;
use mesh_identity::{Identity, SpiffeId, TrustBundle, TrustConfig, WorkloadCert};
use mesh_proxy::{Sidecar, SidecarOptions, StateStore};

/// The Isthmus sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "sidecar", version, about)]
struct Args {
    /// Proxy config: a ProxyConfig document and Istio documents (YAML). Re-read when it
    /// changes; an invalid version is refused and the last good one stays in force.
    #[arg(
        long,
        env = "ISTHMUS_PROXY_CONFIG",
        required_unless_present = "discovery",
        conflicts_with = "discovery"
    )]
    config: Option<PathBuf>,
    /// Discovery's address (port 15012): the config comes from its stream, and it is
    /// also the CA unless --ca-address says otherwise.
    #[arg(long, env = "ISTHMUS_DISCOVERY_ADDRESS")]
    discovery: Option<String>,
    /// Discovery's SPIFFE identity (default: spiffe://TRUST_DOMAIN/ns/istio-system/sa/isthmus-discovery).
    #[arg(long)]
    discovery_id: Option<String>,
    /// Directory with cert-chain.pem, key.pem and root-cert.pem (as written by
    /// `meshctl ca workload`). Re-read when they change.
    #[arg(
        long,
        env = "ISTHMUS_CERT_DIR",
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    cert_dir: Option<PathBuf>,
    /// Get the certificate from discovery's CA with the token in this file (a projected
    /// service-account token with audience isthmus-ca, or a bootstrap token); renewed
    /// at half its lifetime. Needs --root-cert, --namespace and --service-account.
    #[arg(long, env = "ISTHMUS_TOKEN_FILE", requires_all = ["root_cert", "namespace"])]
    token_file: Option<PathBuf>,
    /// The CA's address (default: --discovery).
    #[arg(long)]
    ca_address: Option<String>,
    /// The mesh root (PEM) discovery's certificate chains to; its trust domain is the
    /// workload's.
    #[arg(long, env = "ISTHMUS_ROOT_CERT")]
    root_cert: Option<PathBuf>,
    /// The mesh trust domain (with --token-file).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Workload (pod) name, as discovery knows it.
    #[arg(long, env = "POD_NAME")]
    name: Option<String>,
    /// Workload namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Workload service account.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// Workload IP, as discovery knows it.
    #[arg(long, env = "INSTANCE_IP")]
    ip: Option<IpAddr>,
    /// Outbound listener (explicit mode).
    #[arg(long, default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
    /// Inbound mTLS listener.
    #[arg(long, default_value = "0.0.0.0:15006")]
    inbound: SocketAddr,
    /// Address of the local application.
    #[arg(long, default_value = "127.0.0.1")]
    app_ip: IpAddr,
    /// Admin listeners: readiness (15021), agent with /config_dump (15020) and
    /// Prometheus (15090). Repeat the flag to change them; each serves every endpoint.
    #[arg(long = "admin", default_values = ["0.0.0.0:15021", "127.0.0.1:15020", "0.0.0.0:15090"])]
    admin: Vec<SocketAddr>,
    /// Export spans over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317).
    /// Without it, trace ids are still propagated.
    #[arg(long, env = "ISTHMUS_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// How long SIGTERM waits for requests in flight before exiting.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    drain_seconds: u64,
    /// Install transparent capture (iptables REDIRECT of the pod's TCP to 15001 and
    /// 15006) in the current network namespace before serving, as Istio's init
    /// container does. Needs CAP_NET_ADMIN.
    #[arg(long)]
    capture: bool,
    /// Install the capture rules (as --capture) and exit: the init container of an
    /// injected pod.
    #[arg(long)]
    capture_only: bool,
    /// Inbound ports left out of capture (with --capture), comma separated.
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Worker threads of the data path (default: one per core). 1 runs everything on
    /// one thread.
    #[arg(long)]
    workers: Option<usize>,
    /// Write logs as JSON lines.
    #[arg(long)]
    json_logs: bool,
}

fn load_identity(dir: &Path) -> anyhow::Result<(WorkloadCert, TrustConfig)> {
    let cert = WorkloadCert::load(&dir.join("cert-chain.pem"), &dir.join("key.pem"))?;
    let td = cert.id().trust_domain().clone();
    let root = dir.join("root-cert.pem");
    let pem = std::fs::read(&root).with_context(|| format!("reading {}", root.display()))?;
    let bundle = TrustBundle::from_pem(td.clone(), &pem, &root.display().to_string())?;
    Ok((cert, TrustConfig::new(td, bundle)))
}

/// Resolves `host:port` (a Service name in a pod, an IP elsewhere).
async fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} has no address"))
}

async fn ca_client(
    args: &Args,
    token_file: &Path,
) -> anyhow::Result<mesh_proxy::ca_client::CaClient> {
    let address = args
        .ca_address
        .as_ref()
        .or(args.discovery.as_ref())
        .context("--token-file needs --ca-address or --discovery")?;
    let address = resolve(address).await?;
    let root = args
        .root_cert
        .as_ref()
        .context("--token-file needs --root-cert")?;
    let td: mesh_identity::TrustDomain = args.trust_domain.parse()?;
    let pem = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
    let bundle = TrustBundle::from_pem(td.clone(), &pem, &root.display().to_string())?;
    let discovery_id = match &args.discovery_id {
        Some(d) => d.parse()?,
        None => SpiffeId::new(td.clone(), "istio-system", "isthmus-discovery")?,
    };
    Ok(mesh_proxy::ca_client::CaClient {
        address,
        bootstrap_trust: TrustConfig::new(td, bundle),
        discovery_id,
        token_file: token_file.to_owned(),
        ttl: Duration::from_secs(24 * 3600),
    })
}

fn modified(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let format = if args.json_logs {
        mesh_telemetry::LogFormat::Json
    } else {
        mesh_telemetry::LogFormat::Text
    };
    mesh_telemetry::init_logging(format, "info");

    if args.capture || args.capture_only {
        let mut rules = mesh_proxy::capture::CaptureRules {
            outbound_port: args.outbound.port(),
            inbound_port: args.inbound.port(),
            ..Default::default()
        };
        rules
            .exclude_inbound_ports
            .extend(&args.exclude_inbound_ports);
        rules.install()?;
        tracing::info!(
            outbound = rules.outbound_port,
            inbound = rules.inbound_port,
            "transparent capture installed"
        );
        if args.capture_only {
            return Ok(());
        }
    }
    let store = Arc::new(StateStore::default());
    let mut background = Vec::new();
    let identity = match (&args.cert_dir, &args.token_file) {
        (Some(dir), _) => {
            let (cert, trust) = load_identity(dir)?;
            Identity::new(cert, trust)?
        }
        (None, Some(token_file)) => {
            let ca = ca_client(&args, token_file).await?;
            let id = SpiffeId::new(
                args.trust_domain.parse()?,
                args.namespace.as_deref().unwrap_or_default(),
                &args.service_account,
            )?;
            let issued = loop {
                // Without a certificate nothing can be served: retry until the CA answers.
                match ca.request(&id).await {
                    Ok(issued) => break issued,
                    Err(e) => {
                        tracing::warn!(ca = %ca.address, error = %e, "no certificate yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            tracing::info!(id = %id, not_after = %mesh_identity::cert::rfc3339(issued.cert.info().not_after), "certificate issued by the CA");
            let identity = Identity::new(issued.cert, issued.trust)?;
            background.push(tokio::spawn(mesh_identity::rotation::run_renewal(
                identity.clone(),
                ca,
            )));
            identity
        }
        (None, None) => anyhow::bail!("give --cert-dir or --token-file"),
    };
    let origin = args
        .config
        .as_ref()
        .map(|c| c.display().to_string())
        .unwrap_or_default();
    match (&args.config, &args.discovery) {
        (Some(config), _) => {
            let text =
                std::fs::read_to_string(config).with_context(|| format!("reading {origin}"))?;
            store.apply_yaml(&text, &origin)?;
        }
        (None, Some(address)) => {
            let address = resolve(address).await?;
            let id = identity.cert().id().clone();
            let discovery_id = match &args.discovery_id {
                Some(d) => d.parse()?,
                None => SpiffeId::new(
                    id.trust_domain().clone(),
                    "istio-system",
                    "isthmus-discovery",
                )?,
            };
            let node = mesh_proto::config::Node {
                name: args
                    .name
                    .clone()
                    .context("--name (or POD_NAME) is needed with --discovery")?,
                namespace: id.namespace().to_owned(),
                ip: args.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                kind: "sidecar".into(),
                proxy_version: env!("CARGO_PKG_VERSION").into(),
                admin_address: args
                    .admin
                    .first()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                ..Default::default()
            };
            let status = Arc::new(arc_swap::ArcSwap::from_pointee(
                mesh_proxy::discovery_client::StreamStatus::default(),
            ));
            background.push(tokio::spawn(mesh_proxy::discovery_client::run(
                mesh_proxy::discovery_client::DiscoveryClientOptions::new(
                    address,
                    discovery_id,
                    node,
                ),
                identity.clone(),
                store.clone(),
                status,
            )));
            // The first push names the workload for tracing; listeners start either way
            // (not ready until a config is in force).
            let started = std::time::Instant::now();
            while !store.is_ready() && started.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        (None, None) => anyhow::bail!("give --config or --discovery"),
    }

    let node = store.snapshot().node.clone();
    let tracing = match &args.otlp_endpoint {
        Some(endpoint) => {
            let service = format!(
                "{}.{}",
                node.labels.get("app").unwrap_or(&node.name),
                node.namespace
            );
            let attrs = vec![
                opentelemetry::KeyValue::new("istio.cluster_id", node.cluster.clone()),
                opentelemetry::KeyValue::new("k8s.namespace.name", node.namespace.clone()),
                opentelemetry::KeyValue::new("k8s.pod.name", node.name.clone()),
            ];
            mesh_telemetry::trace::Tracing::otlp(endpoint, &service, attrs)
                .map_err(anyhow::Error::msg)?
        }
        None => mesh_telemetry::trace::Tracing::disabled(),
    };
    let options = SidecarOptions {
        outbound: args.outbound,
        inbound: args.inbound,
        app_ip: args.app_ip,
        connect_timeout: Duration::from_secs(10),
        admin: args.admin.clone(),
        tracing: tracing.clone(),
    };
    let mut sidecar = Sidecar::start(store.clone(), identity.clone(), options).await?;
    tracing::info!(
        id = %identity.cert().id(),
        outbound = %sidecar.outbound_addr,
        inbound = %sidecar.inbound_addr,
        version = %store.snapshot().version,
        "sidecar ready"
    );

    // File mode: re-read the config and certificate files when they change.
    let config_files: Vec<PathBuf> = args.config.iter().cloned().collect();
    let cert_files: Vec<PathBuf> = args
        .cert_dir
        .iter()
        .flat_map(|dir| {
            ["cert-chain.pem", "key.pem", "root-cert.pem"]
                .iter()
                .map(move |f| dir.join(f))
        })
        .collect();
    let (mut config_seen, mut certs_seen) = (modified(&config_files), modified(&cert_files));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        let now = modified(&config_files);
        if let Some(config) = &args.config
            && now != config_seen
        {
            config_seen = now;
            match std::fs::read_to_string(config) {
                // A refusal is logged by the store; the last good config stays.
                Ok(text) => {
                    let _ = store.apply_yaml(&text, &origin);
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = %origin, "cannot read config; keeping the last good one")
                }
            }
        }
        let now = modified(&cert_files);
        if let Some(dir) = &args.cert_dir
            && now != certs_seen
        {
            certs_seen = now;
            let result = load_identity(dir).and_then(|(cert, trust)| {
                // During a root rotation only one order is valid: a certificate from the
                // new root needs the new trust first, and the reverse.
                if identity.rotate_cert(cert.clone()).is_ok() {
                    identity.update_trust(trust)?;
                } else {
                    identity.update_trust(trust)?;
                    identity.rotate_cert(cert)?;
                }
                Ok(())
            });
            if let Err(e) = result {
                tracing::warn!(error = %e, "certificate files refused; keeping the current certificate");
            }
        }
    }
    for task in &background {
        task.abort();
    }
    tracing::info!("draining");
    sidecar.drain(Duration::from_secs(args.drain_seconds)).await;
    tracing.flush();
    Ok(())
}
