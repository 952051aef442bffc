//! `meshctl proxy-status` and `meshctl proxy-config`: what discovery pushed to each
//! proxy and whether it was accepted, and what one proxy holds right now.

use std::net::SocketAddr;

use anyhow::Context as _;
use serde_json::Value;

/// `meshctl proxy-status` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ProxyStatusArgs {
    /// Discovery's monitoring address (its port 15014).
    #[arg(long, default_value = "127.0.0.1:15014")]
    discovery: SocketAddr,
}

/// What to show of one proxy.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Section {
    /// Routes per host (from VirtualServices, or the default route).
    Routes,
    /// Services and their endpoints (cluster, network, locality, labels).
    Endpoints,
    /// DestinationRules, PeerAuthentication and AuthorizationPolicies in force.
    Policies,
}

/// `meshctl proxy-config` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ProxyConfigArgs {
    /// The proxy: `name.namespace` (or just `name` when unique), as proxy-status shows.
    proxy: String,
    /// What to show.
    section: Section,
    /// Discovery's monitoring address, to find the proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    discovery: SocketAddr,
    /// The proxy's admin address (its /config_dump), instead of asking discovery.
    #[arg(long)]
    admin: Option<SocketAddr>,
}

async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let (status, body) = mesh_net::http::get(addr, path)
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        status.is_success(),
        "GET http://{addr}{path}: {status}: {body}"
    );
    serde_json::from_str(&body).with_context(|| format!("GET http://{addr}{path}: not JSON"))
}

fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs `meshctl proxy-status`.
pub(crate) fn status(args: ProxyStatusArgs) -> anyhow::Result<()> {
    let list = runtime()?.block_on(get_json(args.discovery, "/debug/syncz"))?;
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("No proxy has connected to discovery at {}.", args.discovery);
        return Ok(());
    }
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|p| {
            [
                s(p, "proxy"),
                s(p, "kind"),
                if p["connected"] == Value::Bool(true) {
                    s(p, "state")
                } else {
                    "DISCONNECTED".into()
                },
                s(p, "sentVersion"),
                s(p, "ackedVersion"),
                s(p, "pushes"),
                s(p, "lastPush"),
                s(p, "certExpiry"),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "KIND",
            "STATE",
            "SENT",
            "ACKED",
            "PUSHES",
            "LAST PUSH",
            "CERT EXPIRES",
        ],
        &rows,
    );
    let nacks: Vec<String> = list
        .iter()
        .flat_map(|p| {
            let proxy = s(p, "proxy");
            p["nacked"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |n| {
                    format!(
                        "  {proxy}: {} (version {}): {}",
                        s(&n, "name"),
                        s(&n, "version"),
                        s(&n, "reason")
                    )
                })
        })
        .collect();
    if !nacks.is_empty() {
        println!("\nRefused by proxies (NACK; each keeps its last good version):");
        for n in nacks {
            println!("{n}");
        }
    }
    Ok(())
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Runs `meshctl proxy-config`.
pub(crate) fn config(args: ProxyConfigArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    let admin = match args.admin {
        Some(a) => a,
        None => {
            let list = rt.block_on(get_json(args.discovery, "/debug/syncz"))?;
            let list = list.as_array().cloned().unwrap_or_default();
            let matches: Vec<&Value> = list
                .iter()
                .filter(|p| {
                    let name = s(p, "proxy");
                    name == args.proxy || name.split('.').next() == Some(args.proxy.as_str())
                })
                .collect();
            let p = match matches.as_slice() {
                [one] => *one,
                [] => anyhow::bail!(
                    "discovery at {} knows no proxy {:?}; see `meshctl proxy-status`",
                    args.discovery,
                    args.proxy
                ),
                _ => anyhow::bail!("{:?} names several proxies; use name.namespace", args.proxy),
            };
            let admin: SocketAddr = s(p, "adminAddress").parse().with_context(|| {
                format!(
                    "proxy {} reported no admin address; pass --admin",
                    s(p, "proxy")
                )
            })?;
            if admin.ip().is_unspecified() {
                // Listening on all addresses: reach it where its stream came from.
                let from: SocketAddr = s(p, "address").parse()?;
                SocketAddr::new(from.ip(), admin.port())
            } else {
                admin
            }
        }
    };
    let dump = rt.block_on(get_json(admin, "/config_dump"))?;
    println!(
        "# {} (config version {})",
        s(&dump["node"], "name"),
        s(&dump, "version")
    );
    match args.section {
        Section::Routes => {
            let mut rows = Vec::new();
            if let Some(routes) = dump["routes"].as_object() {
                let mut hosts: Vec<_> = routes.iter().collect();
                hosts.sort_by(|a, b| a.0.cmp(b.0));
                for (host, names) in hosts {
                    let names: Vec<String> = names
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|n| n.as_str().unwrap_or_default().to_owned())
                        .collect();
                    rows.push([host.clone(), names.join(", ")]);
                }
            }
            print_table(&["HOST", "ROUTES (in order)"], &rows);
        }
        Section::Endpoints => {
            let mut rows = Vec::new();
            let mut services = dump["services"].as_array().cloned().unwrap_or_default();
            services.sort_by_key(|s| s["host"].as_str().unwrap_or_default().to_owned());
            for svc in services {
                for ep in svc["endpoints"].as_array().cloned().unwrap_or_default() {
                    let labels = label_pairs(&ep["labels"]);
                    rows.push([
                        s(&svc, "host"),
                        s(&ep, "inbound"),
                        s(&ep, "cluster"),
                        s(&ep, "network"),
                        s(&ep, "locality"),
                        match (
                            ep["ready"] == Value::Bool(true),
                            ep["stale"] == Value::Bool(true),
                        ) {
                            (true, false) => "ready".into(),
                            // Its cluster's control plane is silent; its gateway is healthy.
                            (true, true) => "ready (stale)".into(),
                            (false, _) => "not ready".into(),
                        },
                        labels.join(","),
                    ]);
                }
            }
            print_table(
                &[
                    "SERVICE", "ENDPOINT", "CLUSTER", "NETWORK", "LOCALITY", "STATUS", "LABELS",
                ],
                &rows,
            );
        }
        Section::Policies => {
            let out = serde_json::json!({
                "destinationRules": dump["destination_rules"],
                "peerAuthentication": dump["peer_authentication"],
                "authorizationPolicies": dump["authorization_policies"],
                "lastRejection": dump["last_rejection"],
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}

/// A labels object as `key=value` strings.
pub(crate) fn label_pairs(labels: &Value) -> Vec<String> {
    labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}
