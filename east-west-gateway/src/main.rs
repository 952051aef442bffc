//! The `east-west-gateway` binary: flags around [`east_west_gateway::start`], with its
//! identity and config from discovery, or from files, as a sidecar gets them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use mesh_proxy::{StateStore, bootstrap};

/// The Isthmus east-west gateway.
#[derive(Debug, Parser)]
#[command(name = "east-west-gateway", version, about)]
struct Args {
    /// Discovery's address (port 15012): the config comes from its stream, and it is
    /// also the CA unless --ca-address says otherwise.
    #[arg(
        long,
        env = "ISTHMUS_DISCOVERY_ADDRESS",
        required_unless_present = "config"
    )]
    discovery: Option<String>,
    /// Config from a file instead of discovery: a ProxyConfig document whose services
    /// list the local endpoints the gateway may reach, as a sidecar's `--config`
    /// (re-read when it changes). Use with --cert-dir.
    #[arg(long, env = "ISTHMUS_PROXY_CONFIG", conflicts_with = "discovery")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    identity: bootstrap::IdentityArgs,
    /// The gateway's name, as discovery lists it.
    #[arg(long, env = "POD_NAME", default_value = "isthmus-eastwestgateway")]
    name: String,
    /// TLS passthrough listener.
    #[arg(long, default_value = "0.0.0.0:15443")]
    listen: SocketAddr,
    /// Admin: /healthz/ready, /stats/prometheus.
    #[arg(long, default_value = "0.0.0.0:15021")]
    admin: SocketAddr,
    /// Also accept QUIC tunnels on the listener's port (UDP).
    #[arg(long)]
    quic: bool,
    /// Export a span per connection over OTLP/gRPC to this collector.
    #[arg(long, env = "ISTHMUS_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Write logs as JSON lines.
    #[arg(long)]
    json_logs: bool,
    /// Worker threads (default: one per core). 1 runs everything on one thread.
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bootstrap::runtime(args.workers)?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    mesh_telemetry::init_logging(mesh_telemetry::LogFormat::json(args.json_logs), "info");
    let (identity, renewal) = bootstrap::identity(
        &args.identity,
        args.discovery.as_deref(),
        "isthmus-eastwest-gateway",
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let store = Arc::new(StateStore::default());
    let mut background: Vec<_> = renewal.into_iter().collect();
    match (&args.config, &args.discovery) {
        (Some(config), _) => {
            background.push(
                bootstrap::follow_file(config, store.clone(), Duration::from_secs(1))
                    .map_err(anyhow::Error::msg)?,
            );
            if let Some(dir) = &args.identity.cert_dir {
                background.push(bootstrap::follow_cert_dir(
                    dir,
                    identity.clone(),
                    Duration::from_secs(1),
                ));
            }
        }
        (None, Some(discovery)) => background.push(
            bootstrap::follow_discovery(
                discovery,
                &args.identity,
                &identity,
                bootstrap::NodeInfo {
                    name: args.name.clone(),
                    ip: None,
                    kind: "gateway",
                    admin: Some(args.admin),
                },
                store.clone(),
                Duration::from_secs(5),
            )
            .await
            .map_err(anyhow::Error::msg)?,
        ),
        (None, None) => anyhow::bail!("give --config or --discovery"),
    }
    let cluster = store.snapshot().node.cluster.clone();
    let tracing = match &args.otlp_endpoint {
        Some(endpoint) => mesh_telemetry::trace::Tracing::otlp(
            endpoint,
            "isthmus-eastwestgateway.istio-system",
            vec![opentelemetry::KeyValue::new("istio.cluster_id", cluster)],
        )
        .map_err(anyhow::Error::msg)?,
        None => mesh_telemetry::trace::Tracing::disabled(),
    };
    let gateway = east_west_gateway::start(
        store,
        Some(identity.clone()),
        east_west_gateway::GatewayOptions {
            listen: args.listen,
            admin: Some(args.admin),
            quic: args.quic,
            tracing: tracing.clone(),
            ..Default::default()
        },
    )
    .await
    .context("starting the gateway")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(gateway);
    tracing.flush();
    for task in &background {
        task.abort();
    }
    Ok(())
}
