//! The `discovery` binary: flags around [`discovery::start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use discovery::{CaAuth, CaCerts, Options, Source};

/// The Isthmus discovery service (control plane) of one cluster.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This cluster's name (as in `topology.istio.io/cluster`).
    #[arg(long)]
    cluster: String,
    /// This cluster's default network.
    #[arg(long, default_value = "")]
    network: String,
    /// What sidecars do with a captured connection to an address no service has
    /// (Istio's meshConfig outboundTrafficPolicy.mode): ALLOW_ANY passes it through,
    /// REGISTRY_ONLY refuses it.
    #[arg(
        long,
        env = "ISTHMUS_OUTBOUND_TRAFFIC_POLICY",
        default_value = "ALLOW_ANY"
    )]
    outbound_traffic_policy: mesh_proto::model::OutboundTrafficPolicy,
    /// Kubeconfig of the cluster to watch (in a pod: the in-cluster config is used
    /// when neither this nor --registry-dir is given).
    #[arg(long, conflicts_with = "registry_dir")]
    kubeconfig: Option<PathBuf>,
    /// Read the registry from this directory of YAML instead of an API server.
    #[arg(long)]
    registry_dir: Option<PathBuf>,
    /// A `cacerts` directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem).
    #[arg(long, conflicts_with = "cacerts_secret")]
    cacerts: Option<PathBuf>,
    /// Read the cluster CA from this Secret in --namespace instead.
    #[arg(long, default_value = "cacerts")]
    cacerts_secret: String,
    /// Namespace discovery runs in (its identity's namespace).
    #[arg(long, default_value = discovery::NAMESPACE)]
    namespace: String,
    /// Config stream and CA (gRPC over TLS).
    #[arg(long, default_value = "0.0.0.0:15012")]
    grpc: SocketAddr,
    /// Monitoring: /ready, /metrics, /debug/*, and the dashboard at /dashboard/.
    #[arg(long, default_value = "0.0.0.0:15014")]
    monitor: SocketAddr,
    /// Jaeger's query API (HOST:PORT, e.g. jaeger-query.observability:16686), for the
    /// dashboard's traces.
    #[arg(long)]
    jaeger_query: Option<String>,
    /// CA: authenticate workloads with this bootstrap token file (`TOKEN NS/SA` per
    /// line) instead of TokenReview.
    #[arg(long)]
    bootstrap_tokens: Option<PathBuf>,
    /// Do not serve the CA.
    #[arg(long)]
    no_ca: bool,
    /// Quiet time that ends a burst of changes before a push.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    debounce_after: Duration,
    /// Longest a change waits for a push.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    debounce_max: Duration,
    /// Lease granted to linked clusters on what this one exports: they keep it fresh
    /// for this long without a message (heartbeats come every third of it).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    peering_lease: Duration,
    /// Longest a linked cluster's endpoints are kept stale after its lease ran out,
    /// even while its east-west gateway passes its health checks.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    stale_endpoint_bound: Duration,
    /// How often a stale linked cluster's east-west gateway is probed (three failures
    /// in a row withdraw its endpoints).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    gateway_probe_interval: Duration,
    /// How often cacerts (directory or Secret) is read again: a changed one (a new
    /// intermediate, or root-cert.pem with two roots during a root rotation) is
    /// adopted without a restart.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    cacerts_poll: Duration,
    /// Longest the previous version of a changed link Secret keeps serving while the
    /// new version has not synced.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    link_rotation_grace: Duration,
    /// NAMESPACE/NAME of a service account granted the gateway view (repeatable;
    /// default: isthmus-eastwest-gateway in --namespace). Proxies of any other
    /// identity get their namespace's view, whatever kind they claim.
    #[arg(long = "gateway-service-account", value_parser = parse_service_account)]
    gateway_service_accounts: Vec<(String, String)>,
    /// Serve the sidecar injection and validation webhooks (HTTPS, /inject and
    /// /validate) on this address (Istio's webhook port is 15017).
    #[arg(long)]
    injector_listen: Option<SocketAddr>,
    /// Image of the injected sidecar and init containers.
    #[arg(long, default_value = concat!("ghcr.io/isthmus-mesh/isthmus:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// The MutatingWebhookConfiguration whose caBundle discovery keeps up to date.
    #[arg(long, default_value = "isthmus-sidecar-injector")]
    webhook_config: String,
    /// The ValidatingWebhookConfiguration whose caBundle discovery keeps up to date
    /// (its webhook calls /validate on the injector's port).
    #[arg(long, default_value = discovery::validate::WEBHOOK_CONFIG)]
    validating_webhook_config: String,
    /// Discovery's address as injected sidecars reach it (default:
    /// isthmus-discovery.NAMESPACE.svc:15012).
    #[arg(long)]
    injected_discovery_address: Option<String>,
    /// Write logs as JSON lines.
    #[arg(long)]
    json_logs: bool,
    /// Export spans (config pushes, certificate requests, link syncs) over
    /// OTLP/gRPC to this collector, e.g. http://jaeger:4317.
    #[arg(long, env = "ISTHMUS_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

fn parse_service_account(s: &str) -> Result<(String, String), String> {
    s.split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .map(|(ns, name)| (ns.to_owned(), name.to_owned()))
        .ok_or_else(|| format!("{s:?}: write NAMESPACE/NAME"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<mesh_api::Duration>()
        .map(std::time::Duration::from)
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mesh_telemetry::init_logging(mesh_telemetry::LogFormat::json(args.json_logs), "info");
    let source = match (&args.registry_dir, &args.kubeconfig) {
        (Some(dir), _) => Source::Files(dir.clone()),
        (None, Some(path)) => Source::Kubernetes(discovery::kube_client(path).await?),
        (None, None) => Source::Kubernetes(
            kube::Client::try_default()
                .await
                .context("no --registry-dir or --kubeconfig, and no in-cluster config")?,
        ),
    };
    let cacerts = match &args.cacerts {
        Some(dir) => CaCerts::Dir(dir.clone()),
        None => CaCerts::Secret(args.cacerts_secret.clone()),
    };
    let mut options = Options::new(&args.cluster, &args.network, source.clone(), cacerts);
    options.outbound_traffic_policy = args.outbound_traffic_policy;
    options.namespace = args.namespace.clone();
    options.grpc = args.grpc;
    options.monitor = Some(args.monitor);
    options.jaeger_query = match &args.jaeger_query {
        Some(a) => Some(
            std::net::ToSocketAddrs::to_socket_addrs(a)
                .with_context(|| format!("--jaeger-query {a}: not HOST:PORT"))?
                .next()
                .with_context(|| format!("--jaeger-query {a}: no address"))?,
        ),
        None => None,
    };
    if let Some(endpoint) = &args.otlp_endpoint {
        options.tracing = mesh_telemetry::trace::Tracing::otlp(
            endpoint,
            &format!("isthmus-discovery.{}", args.namespace),
            vec![opentelemetry::KeyValue::new(
                "istio.cluster_id",
                args.cluster.clone(),
            )],
        )
        .map_err(anyhow::Error::msg)?;
    }
    let tracing = options.tracing.clone();
    options.links.stale_bound = args.stale_endpoint_bound;
    options.gateway_service_accounts = args.gateway_service_accounts.clone();
    options.links.probe_interval = args.gateway_probe_interval;
    options.links.rotation_grace = args.link_rotation_grace;
    options.cacerts_poll = args.cacerts_poll;
    options.lease = args.peering_lease;
    options.debounce = discovery::push::Debounce {
        after: args.debounce_after,
        max: args.debounce_max,
    };
    options.ca_auth = match (&args.bootstrap_tokens, args.no_ca, &source) {
        (_, true, _) => CaAuth::Disabled,
        (Some(path), false, _) => CaAuth::TokenFile(path.clone()),
        (None, false, Source::Kubernetes(_)) => CaAuth::TokenReview,
        (None, false, Source::Files(_) | Source::Api) => CaAuth::Disabled,
    };
    if let Some(listen) = args.injector_listen {
        let service = format!("isthmus-discovery.{}.svc", args.namespace);
        options.inject = Some(discovery::inject::InjectOptions {
            listen,
            config: discovery::inject::InjectConfig {
                image: args.proxy_image.clone(),
                discovery_address: args
                    .injected_discovery_address
                    .clone()
                    .unwrap_or_else(|| format!("{service}:15012")),
                trust_domain: String::new(),
                cluster: args.cluster.clone(),
            },
            webhook_config: Some(args.webhook_config.clone()),
            validating_config: Some(args.validating_webhook_config.clone()),
            dns_names: vec![service.clone(), format!("{service}.cluster.local")],
        });
    }
    let running = discovery::start(options).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("discovery stopping");
    drop(running);
    tracing.flush();
    Ok(())
}
