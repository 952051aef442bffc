//! The `east-west-gateway` binary: flags around [`east_west_gateway::start`], with its
//! identity and config from discovery as a sidecar gets them.

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
    /// Discovery's address (port 15012).
    #[arg(long, env = "ISTHMUS_DISCOVERY_ADDRESS")]
    discovery: String,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mesh_telemetry::init_logging(mesh_telemetry::LogFormat::json(args.json_logs), "info");
    let (identity, renewal) = bootstrap::identity(
        &args.identity,
        Some(&args.discovery),
        "isthmus-eastwest-gateway",
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let store = Arc::new(StateStore::default());
    let stream = bootstrap::follow_discovery(
        &args.discovery,
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
    .map_err(anyhow::Error::msg)?;
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
    stream.abort();
    if let Some(r) = renewal {
        r.abort();
    }
    Ok(())
}
