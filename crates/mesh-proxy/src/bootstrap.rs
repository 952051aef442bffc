//! How a proxy binary (sidecar, east-west gateway) gets its identity and config:
//! the flags they share and the start-up steps behind them.
//!
//! Identity: certificate files (`--cert-dir`, re-read by the binary), or a key and CSR
//! sent to discovery's CA with a token (`--token-file`), renewed at half life. Config:
//! discovery's stream (`--discovery`) or a file (`--config`), through one intake.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_identity::{Identity, SpiffeId, TrustBundle, TrustConfig, WorkloadCert};

use crate::StateStore;
use crate::ca_client::CaClient;
use crate::discovery_client::{DiscoveryClientOptions, StreamStatus};

/// Identity flags.
#[derive(Debug, Clone, clap::Args)]
pub struct IdentityArgs {
    /// Directory with cert-chain.pem, key.pem and root-cert.pem (as written by
    /// `meshctl ca workload`). Re-read when they change.
    #[arg(long, env = "ISTHMUS_CERT_DIR", conflicts_with = "token_file")]
    pub cert_dir: Option<PathBuf>,
    /// Get the certificate from discovery's CA with the token in this file (a projected
    /// service-account token with audience isthmus-ca, or a bootstrap token); renewed
    /// at half its lifetime. Needs --root-cert and --namespace.
    #[arg(long, env = "ISTHMUS_TOKEN_FILE", requires_all = ["root_cert", "namespace"])]
    pub token_file: Option<PathBuf>,
    /// The CA's address (default: --discovery).
    #[arg(long)]
    pub ca_address: Option<String>,
    /// The mesh root (PEM) discovery's certificate chains to.
    #[arg(long, env = "ISTHMUS_ROOT_CERT")]
    pub root_cert: Option<PathBuf>,
    /// The mesh trust domain (with --token-file).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Workload namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Workload service account.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Lifetime requested for CA-issued certificates (renewed at half of it; the CA
    /// caps it at 24h).
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    pub cert_ttl: Duration,
    /// Discovery's SPIFFE identity (default:
    /// spiffe://TRUST_DOMAIN/ns/istio-system/sa/isthmus-discovery).
    #[arg(long)]
    pub discovery_id: Option<String>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    s.parse::<mesh_api::Duration>()
        .map(Duration::from)
        .map_err(|e| e.to_string())
}

/// Resolves `host:port` (a Service name in a pod, an IP elsewhere).
pub async fn resolve(address: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("resolving {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} has no address"))
}

/// Reads cert-chain.pem, key.pem and root-cert.pem from `dir`.
pub fn load_identity_dir(dir: &Path) -> Result<(WorkloadCert, TrustConfig), String> {
    let cert = WorkloadCert::load(&dir.join("cert-chain.pem"), &dir.join("key.pem"))
        .map_err(|e| e.to_string())?;
    let td = cert.id().trust_domain().clone();
    let root = dir.join("root-cert.pem");
    let pem = std::fs::read(&root).map_err(|e| format!("reading {}: {e}", root.display()))?;
    let bundle = TrustBundle::from_pem(td.clone(), &pem, &root.display().to_string())
        .map_err(|e| e.to_string())?;
    Ok((cert, TrustConfig::new(td, bundle)))
}

fn discovery_id(args: &IdentityArgs, td: &mesh_identity::TrustDomain) -> Result<SpiffeId, String> {
    match &args.discovery_id {
        Some(d) => d.parse().map_err(|e| format!("--discovery-id: {e}")),
        None => SpiffeId::new(td.clone(), "istio-system", "isthmus-discovery")
            .map_err(|e| e.to_string()),
    }
}

/// The workload identity, from files or from the CA (then with its renewal task).
pub async fn identity(
    args: &IdentityArgs,
    discovery: Option<&str>,
    default_service_account: &str,
) -> Result<(Identity, Option<tokio::task::JoinHandle<()>>), String> {
    if let Some(dir) = &args.cert_dir {
        let (cert, trust) = load_identity_dir(dir)?;
        return Identity::new(cert, trust)
            .map(|i| (i, None))
            .map_err(|e| e.to_string());
    }
    let Some(token_file) = &args.token_file else {
        return Err("give --cert-dir or --token-file".into());
    };
    let address = args
        .ca_address
        .as_deref()
        .or(discovery)
        .ok_or("--token-file needs --ca-address or --discovery")?;
    let address = resolve(address).await?;
    let root = args
        .root_cert
        .as_ref()
        .ok_or("--token-file needs --root-cert")?;
    let td: mesh_identity::TrustDomain = args
        .trust_domain
        .parse()
        .map_err(|e| format!("--trust-domain: {e}"))?;
    let pem = std::fs::read(root).map_err(|e| format!("reading {}: {e}", root.display()))?;
    let bundle = TrustBundle::from_pem(td.clone(), &pem, &root.display().to_string())
        .map_err(|e| e.to_string())?;
    let ca = CaClient {
        address,
        bootstrap_trust: TrustConfig::new(td.clone(), bundle),
        discovery_id: discovery_id(args, &td)?,
        token_file: token_file.clone(),
        ttl: args.cert_ttl,
    };
    let id = SpiffeId::new(
        td,
        args.namespace.as_deref().unwrap_or_default(),
        args.service_account
            .as_deref()
            .unwrap_or(default_service_account),
    )
    .map_err(|e| e.to_string())?;
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
    let identity = Identity::new(issued.cert, issued.trust).map_err(|e| e.to_string())?;
    let renewal = tokio::spawn(mesh_identity::rotation::run_renewal(identity.clone(), ca));
    Ok((identity, Some(renewal)))
}

/// What a proxy says about itself on the config stream.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Workload name.
    pub name: String,
    /// Workload IP.
    pub ip: Option<IpAddr>,
    /// `sidecar` or `gateway`.
    pub kind: &'static str,
    /// Admin address (for `meshctl proxy-config`).
    pub admin: Option<SocketAddr>,
}

/// Starts the config stream from discovery at `address` into `store`, then waits up to
/// `wait` for the first config (listeners may start before it; they are not ready).
pub async fn follow_discovery(
    address: &str,
    args: &IdentityArgs,
    identity: &Identity,
    node: NodeInfo,
    store: Arc<StateStore>,
    wait: Duration,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let address = resolve(address).await?;
    let id = identity.cert().id().clone();
    let wire = mesh_proto::config::Node {
        name: node.name,
        namespace: id.namespace().to_owned(),
        ip: node.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        kind: node.kind.into(),
        proxy_version: env!("CARGO_PKG_VERSION").into(),
        admin_address: node.admin.map(|a| a.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    let status = Arc::new(arc_swap::ArcSwap::from_pointee(StreamStatus::default()));
    let task = tokio::spawn(crate::discovery_client::run(
        DiscoveryClientOptions::new(address, discovery_id(args, id.trust_domain())?, wire),
        identity.clone(),
        store.clone(),
        status,
    ));
    let started = std::time::Instant::now();
    while !store.is_ready() && started.elapsed() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(task)
}

/// File mode: takes the config file at `path` into `store` through the same intake as
/// discovery's stream ([`crate::intake::ResourceSet`]), then re-reads it whenever it
/// changes (checked every `every`). At start every document must be taken: a file with
/// any refused document is an error naming each one. Later versions are taken document
/// by document: a wrong one is refused alone and its last good version stays.
pub fn follow_file(
    path: &Path,
    store: Arc<StateStore>,
    every: Duration,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let origin = path.display().to_string();
    let mut set = crate::intake::ResourceSet::default();
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {origin}: {e}"))?;
    let applied = set.apply_file(&text, &origin, &store);
    if !applied.rejected.is_empty() || !store.is_ready() {
        let reasons: Vec<String> = applied
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.name, r.reason))
            .collect();
        return Err(format!(
            "config from {origin} refused: {}",
            reasons.join("; ")
        ));
    }
    let path = path.to_owned();
    Ok(on_change(vec![path.clone()], every, move || {
        match std::fs::read_to_string(&path) {
            // Refusals are logged by the intake; the last good versions stay.
            Ok(text) => {
                set.apply_file(&text, &origin, &store);
            }
            Err(e) => {
                tracing::warn!(error = %e, file = %origin, "cannot read config; keeping the last good one")
            }
        }
    }))
}

/// Certificate files (`--cert-dir`): re-reads them whenever one changes (checked every
/// `every`) and installs what they hold. A set that does not load or verify is refused
/// and the current certificate stays.
pub fn follow_cert_dir(
    dir: &Path,
    identity: Identity,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let files = ["cert-chain.pem", "key.pem", "root-cert.pem"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let dir = dir.to_owned();
    on_change(files, every, move || {
        let result = load_identity_dir(&dir).and_then(|(cert, trust)| {
            // During a root rotation only one order is valid: a certificate from the
            // new root needs the new trust first, and the reverse.
            if identity.rotate_cert(cert.clone()).is_ok() {
                identity.update_trust(trust).map_err(|e| e.to_string())
            } else {
                identity.update_trust(trust).map_err(|e| e.to_string())?;
                identity.rotate_cert(cert).map_err(|e| e.to_string())
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "certificate files refused; keeping the current certificate");
        }
    })
}

/// Calls `changed` whenever the modification time of one of `files` changes (checked
/// every `every`), for as long as the task runs.
fn on_change(
    files: Vec<PathBuf>,
    every: Duration,
    mut changed: impl FnMut() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let modified = move |files: &[PathBuf]| -> Vec<_> {
        files
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut seen = modified(&files);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = modified(&files);
            if now != seen {
                seen = now;
                changed();
            }
        }
    })
}

/// The runtime of a proxy binary: `workers` threads (default one per core); one runs
/// everything on the current thread, with no hand-off between threads.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}
