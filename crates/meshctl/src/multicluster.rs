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
    /// Checks, from one cluster's discovery, that a service would fail over to other
    /// clusters: links up, ready endpoints elsewhere (and through which gateway), and
    /// a DestinationRule with outlier detection so failing endpoints are ejected.
    /// Exit status 1 with the reasons and their fixes when it would not.
    VerifyFailover {
        /// Discovery's monitoring address (its port 15014).
        #[arg(long, default_value = "127.0.0.1:15014")]
        discovery: SocketAddr,
        /// The service, `NAME.NAMESPACE`.
        #[arg(long)]
        service: String,
    },
}

/// GETs a JSON document from discovery's monitoring endpoint (`None` on 404).
fn get_json(
    rt: &tokio::runtime::Runtime,
    discovery: SocketAddr,
    path: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let (status, body) = rt
        .block_on(mesh_net::http::get(discovery, path))
        .map_err(|e| anyhow::anyhow!("GET http://{discovery}{path}: {e}"))?;
    if status == http::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    anyhow::ensure!(
        status.is_success(),
        "GET http://{discovery}{path}: {status}"
    );
    Ok(Some(serde_json::from_str(&body).with_context(|| {
        format!("GET http://{discovery}{path}: not JSON")
    })?))
}

fn verify_failover(discovery: SocketAddr, service: &str) -> anyhow::Result<()> {
    let Some((name, ns)) = service.split_once('.') else {
        anyhow::bail!("--service is NAME.NAMESPACE, e.g. helloworld.sample");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let registry =
        get_json(&rt, discovery, "/debug/registry")?.context("discovery has no /debug/registry")?;
    let local = registry["cluster"].as_str().unwrap_or_default().to_owned();
    let mut problems: Vec<String> = Vec::new();
    println!("Failover of {service} from cluster {local} (discovery {discovery}):");

    // 1. Links.
    let links = get_json(&rt, discovery, "/debug/links")?.unwrap_or_default();
    let links = links.as_array().cloned().unwrap_or_default();
    if links.is_empty() {
        problems.push(format!(
            "no cluster is linked to {local}: apply another cluster's `meshctl remote-secret` Secret here"
        ));
    }
    for l in &links {
        let peer = l["link"]["cluster"].as_str().unwrap_or("?");
        let state = l["state"].as_str().unwrap_or("?");
        if state == "connected" {
            println!("  ✔ link to {peer}: connected");
        } else {
            println!("  ✘ link to {peer}: {state}");
            problems.push(format!(
                "the link to {peer} is {state} ({}): see `meshctl multicluster status`",
                l["lastError"].as_str().unwrap_or_default()
            ));
        }
    }

    // 2. Endpoints, as this cluster's proxies receive them.
    let resource = format!("/debug/resource?name=Service/{ns}/{name}");
    let (mut local_ready, mut remote_ready) = (0u64, 0u64);
    match get_json(&rt, discovery, &resource)? {
        None => problems.push(format!(
            "discovery in {local} knows no service {service}: is it deployed (here or in a linked cluster) and exported?"
        )),
        Some(svc) => {
            let mut by_cluster: std::collections::BTreeMap<String, (u64, u64, String)> =
                Default::default();
            for e in svc["endpoints"].as_array().into_iter().flatten() {
                let cluster = e["cluster"].as_str().unwrap_or("?").to_owned();
                let count = e["weight"].as_u64().unwrap_or(1);
                let ready = e["ready"].as_bool().unwrap_or(true);
                let entry = by_cluster.entry(cluster.clone()).or_default();
                entry.1 += count;
                if ready {
                    entry.0 += count;
                }
                if cluster != local && e["inboundPort"].as_u64() == Some(15443) {
                    let via = format!(
                        "gateway {}:15443{}",
                        e["address"].as_str().unwrap_or("?"),
                        if e["tunnel"].as_str() == Some("quic") {
                            " (QUIC)"
                        } else {
                            ""
                        }
                    );
                    entry.2 = via;
                }
            }
            for (cluster, (ready, total, via)) in &by_cluster {
                let via = if via.is_empty() { "direct" } else { via };
                let mark = if *ready > 0 { "✔" } else { "✘" };
                println!("  {mark} endpoints in {cluster}: {ready} ready of {total}, {via}");
                if *cluster == local {
                    local_ready += ready;
                } else {
                    remote_ready += ready;
                }
            }
            if remote_ready == 0 {
                println!("  ✘ no ready endpoint in another cluster");
                problems.push(format!(
                    "no ready endpoint of {service} in another cluster: deploy it there in namespace {ns} (namespace sameness) and keep it exported (not cluster-local, exportTo not `~`)"
                ));
            }
            if local_ready == 0 {
                println!("    (no ready local endpoint: traffic already goes to other clusters)");
            }
        }
    }

    // 3. The DestinationRule: outlier detection ejects failing endpoints; the
    //    locality settings order the failover.
    let hosts = [
        name.to_owned(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
    ];
    let mut rule = None;
    for key in registry["istio"].as_array().into_iter().flatten() {
        let Some(key) = key.as_str().filter(|k| k.starts_with("DestinationRule/")) else {
            continue;
        };
        let Some(dr) = get_json(&rt, discovery, &format!("/debug/resource?name={key}"))? else {
            continue;
        };
        let host = dr["spec"]["host"].as_str().unwrap_or_default();
        let dr_ns = dr["metadata"]["namespace"].as_str().unwrap_or_default();
        let short = !host.contains('.');
        if hosts.iter().any(|h| h == host) && (!short || dr_ns == ns) {
            rule = Some((key.to_owned(), dr));
            break;
        }
    }
    match rule {
        None => {
            println!("  ✘ no DestinationRule for {service}");
            problems.push(format!(
                "no DestinationRule for {service}: without trafficPolicy.outlierDetection failing endpoints are never ejected, so traffic does not fail over (as in Istio)"
            ));
        }
        Some((key, dr)) => {
            let policy = &dr["spec"]["trafficPolicy"];
            if policy["outlierDetection"].is_object() {
                println!("  ✔ {key}: outlierDetection {}", policy["outlierDetection"]);
            } else {
                println!("  ✘ {key}: no outlierDetection");
                problems.push(format!(
                    "{key} has no trafficPolicy.outlierDetection: failing endpoints are never ejected, so traffic does not fail over; add e.g. {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s}}"
                ));
            }
            let locality = &policy["loadBalancer"]["localityLbSetting"];
            if locality["enabled"].as_bool() == Some(false) {
                problems.push(format!(
                    "{key} sets localityLbSetting.enabled: false: endpoints are not ordered by locality, so remote ones take traffic before local ones fail"
                ));
            } else if let Some(p) = locality["failoverPriority"].as_array() {
                let labels: Vec<&str> = p.iter().filter_map(|v| v.as_str()).collect();
                println!("  ✔ failover order by labels: {}", labels.join(", "));
            } else {
                println!("  ✔ failover order: region, zone, subzone (the default)");
            }
        }
    }

    if problems.is_empty() {
        println!(
            "PASS: when {service} fails in {local}, traffic moves to {remote_ready} ready endpoint(s) in other clusters."
        );
        return Ok(());
    }
    for p in &problems {
        println!("  problem: {p}");
    }
    anyhow::bail!("{service} would not fail over from {local}")
}

/// Runs `meshctl multicluster ...`.
pub(crate) fn run(cmd: MulticlusterCommand) -> anyhow::Result<()> {
    match cmd {
        MulticlusterCommand::VerifyFailover { discovery, service } => {
            verify_failover(discovery, &service)
        }
        MulticlusterCommand::Status { discovery } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let list = get_json(&rt, discovery, "/debug/links")?
                .with_context(|| format!("discovery at {discovery} has no /debug/links"))?;
            let list = list.as_array().cloned().unwrap_or_default();
            let s = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            let refusals = get_json(&rt, discovery, "/debug/peering-refusals")?
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            let print_refusals = || {
                if refusals.is_empty() {
                    return;
                }
                println!("\nRefused subscriptions (the last {}):", refusals.len());
                for r in &refusals {
                    println!(
                        "  {} cluster {} as {} from {}: {}",
                        s(&r["at"]),
                        s(&r["cluster"]),
                        s(&r["identity"]),
                        s(&r["address"]),
                        s(&r["reason"]),
                    );
                }
            };
            if list.is_empty() {
                println!(
                    "No cluster is linked to this one. Link one with `meshctl remote-secret` (see docs/federation.md)."
                );
                print_refusals();
                return Ok(());
            }
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
            let mut stale = Vec::new();
            for l in &list {
                if l["state"] == "stale" {
                    stale.push(format!(
                        "  {} stale since {}; gateway probe: {}",
                        s(&l["link"]["cluster"]),
                        s(&l["staleSince"]),
                        s(&l["gatewayProbe"]),
                    ));
                }
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
            if !stale.is_empty() {
                println!(
                    "\nStale: the peer's control plane is silent; its endpoints are kept while its east-west gateway passes its health checks."
                );
                for line in stale {
                    println!("{line}");
                }
            }
            print_refusals();
            Ok(())
        }
    }
}
