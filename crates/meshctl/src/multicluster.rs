//! `meshctl remote-secret` (the link Secret) and `meshctl multicluster status`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use discovery::links::{
    Link, bundle_trust_domain, check_address, check_cluster_name, render_secret,
};

/// `meshctl remote-secret` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct RemoteSecretArgs {
    /// The cluster the Secret links to (a DNS-1123 label).
    #[arg(long)]
    name: String,
    /// That cluster's network.
    #[arg(long)]
    network: String,
    /// That cluster's discovery address (HOST:PORT, port 15012), as the other
    /// clusters reach it.
    #[arg(long)]
    discovery_address: String,
    /// That cluster's east-west gateway (HOST:PORT, port 15443).
    #[arg(long)]
    gateway_address: String,
    /// The roots that cluster's discovery certificate chains to (PEM; the federated
    /// root, `meshctl ca init`'s root-cert.pem).
    #[arg(long)]
    trust_bundle: PathBuf,
    /// The gateway also accepts QUIC tunnels (UDP, same port): sidecars try QUIC first.
    #[arg(long)]
    gateway_quic: bool,
    /// Namespace the Secret goes in (discovery's).
    #[arg(long, default_value = discovery::NAMESPACE)]
    namespace: String,
    /// Accept loopback addresses (clusters on one machine).
    #[arg(long)]
    allow_loopback: bool,
}

/// Runs `meshctl remote-secret`: prints the Secret.
pub(crate) fn remote_secret(args: RemoteSecretArgs) -> anyhow::Result<()> {
    check_cluster_name(&args.name).map_err(anyhow::Error::msg)?;
    check_address(
        "--discovery-address",
        &args.discovery_address,
        args.allow_loopback,
    )
    .map_err(anyhow::Error::msg)?;
    check_address(
        "--gateway-address",
        &args.gateway_address,
        args.allow_loopback,
    )
    .map_err(anyhow::Error::msg)?;
    let origin = args.trust_bundle.display().to_string();
    let pem = std::fs::read_to_string(&args.trust_bundle)
        .with_context(|| format!("reading --trust-bundle {origin}"))?;
    let td = bundle_trust_domain(&pem, &origin).map_err(anyhow::Error::msg)?;
    let link = Link {
        secret: String::new(),
        cluster: args.name,
        network: args.network,
        discovery_address: args.discovery_address,
        gateway_address: args.gateway_address,
        gateway_quic: args.gateway_quic,
        trust_bundle: pem,
        trust_domain: td.to_string(),
    };
    print!("{}", render_secret(&link, &args.namespace));
    Ok(())
}

/// `meshctl multicluster` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum MulticlusterCommand {
    /// Per link: the peer, its state, services and endpoints received, last heartbeat,
    /// lease expiry and whether the trust bundle matched.
    Status {
        /// Discovery's monitoring address (its port 15014).
        #[arg(long, default_value = "127.0.0.1:15014")]
        discovery: SocketAddr,
    },
}

/// Runs `meshctl multicluster ...`.
pub(crate) fn run(cmd: MulticlusterCommand) -> anyhow::Result<()> {
    match cmd {
        MulticlusterCommand::Status { discovery } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (status, body) = rt
                .block_on(mesh_proxy::http_util::get(discovery, "/debug/links"))
                .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                status.is_success(),
                "GET http://{discovery}/debug/links: {status}"
            );
            let list: Vec<serde_json::Value> = serde_json::from_str(&body)?;
            if list.is_empty() {
                println!(
                    "No cluster is linked to this one. Link one with `meshctl remote-secret` (see docs/federation.md)."
                );
                return Ok(());
            }
            let s = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!(
                "{:<12} {:<14} {:<22} {:>8} {:>9}  {:<21} {:<21} {:<6} ERROR",
                "PEER",
                "STATE",
                "DISCOVERY",
                "SERVICES",
                "ENDPOINTS",
                "LAST HEARTBEAT",
                "LEASE EXPIRES",
                "TRUST",
            );
            for l in &list {
                let trust = match l["trustBundleMatch"] {
                    serde_json::Value::Bool(true) => "ok",
                    serde_json::Value::Bool(false) => "BAD",
                    _ => "-",
                };
                println!(
                    "{:<12} {:<14} {:<22} {:>8} {:>9}  {:<21} {:<21} {:<6} {}",
                    s(&l["link"]["cluster"]),
                    s(&l["state"]),
                    s(&l["link"]["discoveryAddress"]),
                    s(&l["services"]),
                    s(&l["endpoints"]),
                    s(&l["lastHeartbeat"]),
                    s(&l["leaseExpiry"]),
                    trust,
                    s(&l["lastError"]),
                );
            }
            Ok(())
        }
    }
}
