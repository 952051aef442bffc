//! The Isthmus sidecar proxy: a thin binary over `mesh-proxy`. Its config comes from
//! discovery's stream (`--discovery`) or a file (`--config`); its certificate from
//! discovery's CA with a token (`--token-file`) or from files (`--cert-dir`). It
//! serves outbound (explicit or captured) and inbound (mTLS) traffic until SIGTERM or
//! SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_proxy::{Sidecar, SidecarOptions, StateStore, bootstrap};

/// The Isthmus sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "sidecar", version, about)]
struct Args {
    /// Proxy config: a ProxyConfig document and Istio documents (YAML). At start every
    /// document must be valid. Re-read when it changes, document by document: a wrong
    /// one is refused alone and its last good version stays in force.
    #[arg(
        long,
        env = "ISTHMUS_PROXY_CONFIG",
        required_unless_present_any = ["discovery", "capture_only"],
        conflicts_with = "discovery"
    )]
    config: Option<PathBuf>,
    /// Discovery's address (port 15012): the config comes from its stream, and it is
    /// also the CA unless --ca-address says otherwise.
    #[arg(long, env = "ISTHMUS_DISCOVERY_ADDRESS")]
    discovery: Option<String>,
    #[command(flatten)]
    identity: mesh_proxy::bootstrap::IdentityArgs,
    /// Workload (pod) name, as discovery knows it.
    #[arg(long, env = "POD_NAME")]
    name: Option<String>,
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
    /// Run the DNS proxy on this address (UDP and TCP; 127.0.0.1:15053 in a pod), as
    /// Istio's ISTIO_META_DNS_CAPTURE: mesh names (services, ServiceEntry hosts, services
    /// of other clusters) are answered here, the rest forwarded. With --capture the
    /// pod's DNS traffic is sent to it.
    #[arg(long, env = "ISTHMUS_DNS_PROXY")]
    dns_proxy: Option<SocketAddr>,
    /// Resolvers names outside the mesh are forwarded to (default: the name servers of
    /// /etc/resolv.conf). Repeat the flag for several.
    #[arg(long, value_name = "ADDR:PORT")]
    dns_upstream: Vec<SocketAddr>,
    /// With --capture: connections of this user are never captured (the proxy's own,
    /// when it runs as its own user without the capability to mark its sockets, as
    /// injected pods run it).
    #[arg(long, env = "ISTHMUS_PROXY_UID")]
    exclude_uid: Option<u32>,
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
    /// How inbound request paths are normalized before authorization and routing to
    /// the app (Istio's meshConfig.pathNormalization): NONE, BASE, MERGE_SLASHES or
    /// DECODE_AND_MERGE_SLASHES.
    #[arg(long, env = "ISTHMUS_PATH_NORMALIZATION", default_value = "BASE")]
    path_normalization: mesh_proxy::path::PathNormalization,
    /// Proxies in front of this workload whose X-Forwarded-For entries are trusted for
    /// `remote.ip` and `remoteIpBlocks` (Istio's gatewayTopology.numTrustedProxies).
    #[arg(long, env = "ISTHMUS_NUM_TRUSTED_PROXIES", default_value = "0")]
    num_trusted_proxies: usize,
    /// Run as an ingress gateway instead of a sidecar (Istio's `proxy router`): serve
    /// the ports of the Gateways whose selector matches this workload's labels and
    /// route by the VirtualServices bound to them, over mesh mTLS to the services'
    /// sidecars. No capture, no inbound listener.
    #[arg(long, conflicts_with_all = ["capture", "capture_only", "dns_proxy"])]
    ingress: bool,
    /// With --ingress: the address the server ports are bound on.
    #[arg(long, default_value = "0.0.0.0", requires = "ingress")]
    address: IpAddr,
    /// With --ingress: bind a Gateway server port on another port, `SERVER=LOCAL`
    /// (e.g. `80=8080` when the gateway may not bind low ports; its Service maps 80
    /// to 8080). Repeat the flag for several.
    #[arg(long = "port", value_name = "SERVER=LOCAL", value_parser = port_pair, requires = "ingress")]
    ports: Vec<(u16, u16)>,
}

fn port_pair(s: &str) -> Result<(u16, u16), String> {
    let (server, local) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write SERVER=LOCAL, e.g. 80=8080"))?;
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{s:?}: {p:?} is not a port number"))
    };
    Ok((parse(server)?, parse(local)?))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bootstrap::runtime(args.workers)?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    mesh_telemetry::init_logging(mesh_telemetry::LogFormat::json(args.json_logs), "info");

    let dns = args.dns_proxy.map(|addr| mesh_proxy::dns_proxy::DnsListen {
        addr,
        upstreams: if args.dns_upstream.is_empty() {
            mesh_proxy::dns_proxy::nameservers(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            )
        } else {
            args.dns_upstream.clone()
        },
    });
    if args.capture || args.capture_only {
        let mut rules = mesh_proxy::capture::CaptureRules {
            outbound_port: args.outbound.port(),
            inbound_port: args.inbound.port(),
            dns_port: args.dns_proxy.map(|a| a.port()),
            exclude_uid: args.exclude_uid,
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
    if args.identity.cert_dir.is_none() && args.identity.token_file.is_none() {
        anyhow::bail!("give --cert-dir or --token-file");
    }
    let (identity, renewal) =
        bootstrap::identity(&args.identity, args.discovery.as_deref(), "default")
            .await
            .map_err(anyhow::Error::msg)?;
    background.extend(renewal);
    match (&args.config, &args.discovery) {
        (Some(config), _) => {
            // Re-read when it changes, through the stream's intake.
            let task = bootstrap::follow_file(config, store.clone(), Duration::from_secs(1))
                .map_err(anyhow::Error::msg)?;
            background.push(task);
        }
        (None, Some(address)) => {
            let node = bootstrap::NodeInfo {
                name: args
                    .name
                    .clone()
                    .context("--name (or POD_NAME) is needed with --discovery")?,
                ip: args.ip,
                kind: if args.ingress { "ingress" } else { "sidecar" },
                admin: args.admin.first().copied(),
            };
            // The first push names the workload for tracing; listeners start either
            // way (not ready until a config is in force).
            let task = bootstrap::follow_discovery(
                address,
                &args.identity,
                &identity,
                node,
                store.clone(),
                Duration::from_secs(5),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            background.push(task);
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
    if args.ingress {
        if args.config.is_some() && !store.snapshot().node.ingress {
            anyhow::bail!(
                "--ingress with --config: the ProxyConfig's node must say `ingress: true` (and carry the labels the Gateways select)"
            );
        }
        let options = mesh_proxy::ingress::listen::IngressOptions {
            address: args.address,
            port_map: args.ports.iter().copied().collect(),
            connect_timeout: Duration::from_secs(10),
            admin: args.admin.clone(),
            tracing: tracing.clone(),
            requests: mesh_proxy::inbound::RequestOptions {
                path_normalization: args.path_normalization,
                num_trusted_proxies: args.num_trusted_proxies,
            },
        };
        let gateway = mesh_proxy::ingress::listen::IngressGateway::start(
            store.clone(),
            identity.clone(),
            options,
        )
        .await?;
        tracing::info!(id = %identity.cert().id(), version = %store.snapshot().version, "ingress gateway ready");
        wait_for_signal().await?;
        for task in &background {
            task.abort();
        }
        drop(gateway);
        tracing.flush();
        return Ok(());
    }
    let options = SidecarOptions {
        outbound: args.outbound,
        inbound: args.inbound,
        app_ip: args.app_ip,
        connect_timeout: Duration::from_secs(10),
        admin: args.admin.clone(),
        tracing: tracing.clone(),
        requests: mesh_proxy::inbound::RequestOptions {
            path_normalization: args.path_normalization,
            num_trusted_proxies: args.num_trusted_proxies,
        },
        dns,
    };
    let mut sidecar = Sidecar::start(store.clone(), identity.clone(), options).await?;
    tracing::info!(
        id = %identity.cert().id(),
        outbound = %sidecar.outbound_addr,
        inbound = %sidecar.inbound_addr,
        version = %store.snapshot().version,
        "sidecar ready"
    );

    if let Some(dir) = &args.identity.cert_dir {
        background.push(bootstrap::follow_cert_dir(
            dir,
            identity.clone(),
            Duration::from_secs(1),
        ));
    }
    wait_for_signal().await?;
    for task in &background {
        task.abort();
    }
    tracing::info!("draining");
    sidecar.drain(Duration::from_secs(args.drain_seconds)).await;
    tracing.flush();
    Ok(())
}

/// Returns on SIGTERM or SIGINT.
async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
