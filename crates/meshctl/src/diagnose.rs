//! `meshctl diagnose`: what the mesh does with one request and why, asked of the
//! source workload's own sidecar. Its admin endpoint `/debug/diagnose` runs the
//! proxy's planner (the code every request goes through) on its live state, so the
//! answer is the proxy's decision, not a second reading of the config.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;

/// `meshctl diagnose` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct DiagnoseArgs {
    /// The URL the workload would request (its host names the service, as in the pod).
    url: String,
    /// The source workload's sidecar admin address (port 15020). Without it, the curl
    /// workload of the testbed's `--cluster`.
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// The testbed cluster whose curl workload sends (default: the first).
    #[arg(long, conflicts_with = "proxy")]
    cluster: Option<String>,
    /// The request method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// A request header, `NAME: VALUE` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A cluster's discovery monitoring address (port 15014), `CLUSTER=ADDR`
    /// (repeatable): the destination's policies are checked there. The testbed's are
    /// used by default.
    #[arg(long = "discovery")]
    discoveries: Vec<String>,
    /// The proxy's answer as JSON.
    #[arg(long)]
    json: bool,
    /// The testbed's directory.
    #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
    dir: Option<PathBuf>,
}

pub(crate) fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
    let proxy = match args.proxy {
        Some(p) => p,
        None => crate::bed::curl_admin(args.dir.clone(), args.cluster.as_deref()).context(
            "give the source sidecar's admin address with --proxy, or bring the testbed up",
        )?,
    };
    let mut discoveries: BTreeMap<String, SocketAddr> =
        crate::bed::monitors(args.dir.clone()).unwrap_or_default();
    for d in &args.discoveries {
        let (cluster, addr) = d
            .split_once('=')
            .with_context(|| format!("--discovery {d:?}: write CLUSTER=ADDR"))?;
        let addr = addr
            .parse()
            .with_context(|| format!("--discovery {d:?}: {addr:?} is not an address"))?;
        discoveries.insert(cluster.to_owned(), addr);
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("url", &args.url);
    query.append_pair("method", &args.method);
    for h in &args.headers {
        query.append_pair("header", h);
    }
    let path = format!("/debug/diagnose?{}", query.finish());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt
        .block_on(mesh_net::http::get(proxy, &path))
        .map_err(|e| anyhow::anyhow!("asking the sidecar at {proxy}: {e}"))?;
    anyhow::ensure!(
        status.is_success(),
        "the sidecar at {proxy} answered {status}: {body}"
    );
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let mut doc: Value = serde_json::from_str(&body).context("the sidecar's answer is not JSON")?;
    rt.block_on(check_destinations(&mut doc, &discoveries, &args));
    print!("{}", render(&args.method, &args.url, &doc));
    // A request the mesh refuses is an answer, not a failure of the command; the
    // exit status says which it is.
    anyhow::ensure!(!refused_everywhere(&doc), "the request would be refused");
    Ok(())
}

/// Asks each destination endpoint's cluster discovery whether that workload admits
/// the request from the source's identity (its AuthorizationPolicies and mTLS mode,
/// compiled with the proxy's code), recording the answer on the endpoint.
async fn check_destinations(
    doc: &mut Value,
    discoveries: &BTreeMap<String, SocketAddr>,
    args: &DiagnoseArgs,
) {
    let principal = doc["proxy"]["identity"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let uri: http::Uri = args.url.parse().unwrap_or_default();
    let Some(dests) = doc["destinations"].as_array_mut() else {
        return;
    };
    for d in dests {
        let plan = &mut d["decision"];
        let namespace = plan["namespace"].as_str().unwrap_or_default().to_owned();
        let port = plan["target_port"].as_u64().unwrap_or(0);
        let Some(endpoints) = plan["endpoints"].as_array_mut() else {
            continue;
        };
        for e in endpoints {
            let cluster = e["cluster"].as_str().unwrap_or_default().to_owned();
            let Some(discovery) = discoveries.get(&cluster) else {
                e["authorization"] = serde_json::json!({
                    "unknown": format!("give --discovery {cluster}=ADDR to check its policies")
                });
                continue;
            };
            let labels = crate::proxy::label_pairs(&e["labels"]);
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("namespace", &namespace)
                .append_pair("labels", &labels.join(","))
                .append_pair("principal", &principal)
                .append_pair("port", &port.to_string())
                .append_pair("method", &args.method)
                .append_pair("path", uri.path())
                .append_pair("host", uri.authority().map_or("", |a| a.as_str()));
            for h in &args.headers {
                q.append_pair("header", h);
            }
            let path = format!("/debug/authorize?{}", q.finish());
            e["authorization"] = match mesh_net::http::get(*discovery, &path).await {
                Ok((status, body)) if status.is_success() => serde_json::from_str(&body)
                    .unwrap_or_else(|_| serde_json::json!({ "unknown": body })),
                Ok((status, body)) => {
                    serde_json::json!({ "unknown": format!("{status}: {}", body.trim()) })
                }
                Err(e) => serde_json::json!({
                    "unknown": format!("discovery of {cluster} at {discovery}: {e}")
                }),
            };
        }
    }
}

/// Whether the request is refused whatever destination is rolled: refused by the
/// source, or denied by every endpoint whose policies were checked.
fn refused_everywhere(doc: &Value) -> bool {
    if doc.get("refused").is_some() {
        return true;
    }
    let denied = |d: &Value| {
        d["decision"].get("refused").is_some()
            || d["decision"]["endpoints"].as_array().is_some_and(|eps| {
                !eps.is_empty()
                    && eps
                        .iter()
                        .all(|e| e["authorization"]["allowed"].as_bool() == Some(false))
            })
    };
    doc["destinations"]
        .as_array()
        .is_some_and(|d| !d.is_empty() && d.iter().all(denied))
}

fn refusal(r: &Value) -> String {
    format!(
        "refused: {} {} — {}",
        r["status"],
        r["flag"].as_str().unwrap_or_default(),
        r["reason"].as_str().unwrap_or_default()
    )
}

/// A DestinationRule's locality settings, as a clause.
fn locality(l: &Value) -> String {
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.to_string().replace('"', "")).collect())
            .unwrap_or_default()
    };
    let mut out = String::new();
    let priority = list(&l["failover_priority"]);
    if !priority.is_empty() {
        out.push_str(&format!(
            ", endpoints prioritized by {}",
            priority.join(" then ")
        ));
    }
    let failover = list(&l["failover"]);
    if !failover.is_empty() {
        out.push_str(&format!(", failover {}", failover.join(" ")));
    }
    if !list(&l["distribute"]).is_empty() {
        out.push_str(", traffic distributed by locality");
    }
    out
}

/// The proxy's answer as a person reads it.
fn render(method: &str, url: &str, doc: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let p = &doc["proxy"];
    let mut out = format!(
        "{method} {url}\n  from {} (cluster {}, network {}, locality {})\n",
        s(&p["node"]),
        s(&p["cluster"]),
        s(&p["network"]),
        s(&p["locality"])
    );
    if let Some(service) = doc["service"].as_str() {
        out.push_str(&format!("  service {service}, port {}\n", doc["port"]));
    }
    if let Some(routes) = doc["routes"].as_array() {
        out.push_str("routes (the first that matches is used):\n");
        let used = s(&doc["route"]);
        for r in routes {
            let name = s(&r["route"]);
            let mark = if r["matches"].as_bool() == Some(true) {
                "✔"
            } else {
                "✗"
            };
            let note = if name == used { "   ← used" } else { "" };
            out.push_str(&format!("  {mark} {name}{note}\n"));
        }
        if routes.is_empty() {
            out.push_str("  (no VirtualService: the default route to the service)\n");
        }
    }
    if let Some(r) = doc.get("refused") {
        out.push_str(&format!("{}\n", refusal(r)));
        return out;
    }
    if let Some(f) = doc.get("fault") {
        out.push_str(&format!("fault injection on this route: {f}\n"));
    }
    let dests = doc["destinations"].as_array().cloned().unwrap_or_default();
    if !dests.is_empty() {
        out.push_str("destinations:\n");
    }
    let total: u64 = dests.iter().filter_map(|d| d["weight"].as_u64()).sum();
    for d in &dests {
        let share = d["weight"].as_u64().unwrap_or(0) * 100 / total.max(1);
        let subset = match s(&d["subset"]) {
            x if x.is_empty() => String::new(),
            x => format!(" subset {x}"),
        };
        out.push_str(&format!("  {share:>3} % {}{subset}\n", s(&d["host"])));
        let plan = &d["decision"];
        if let Some(r) = plan.get("refused") {
            out.push_str(&format!("        {}\n", refusal(r)));
            continue;
        }
        out.push_str(&format!(
            "        {} (SNI {})\n",
            s(&plan["security"]),
            s(&plan["sni"])
        ));
        if let Some(rule) = plan["destination_rule"].as_str() {
            out.push_str(&format!("        DestinationRule {rule}"));
            if let Some(lb) = plan["load_balancer"].as_str() {
                out.push_str(&format!(", load balancer {lb}"));
            }
            if !plan["outlier_detection"].is_null() {
                out.push_str(", outlier detection on");
            }
            out.push_str(&locality(&plan["locality"]));
            out.push('\n');
        }
        let endpoints = plan["endpoints"].as_array().cloned().unwrap_or_default();
        out.push_str(&format!("        {} endpoint(s):\n", endpoints.len()));
        for e in &endpoints {
            let via = if e["through_gateway"].as_bool() == Some(true) {
                format!(
                    ", through cluster {}'s east-west gateway ({})",
                    s(&e["cluster"]),
                    s(&e["tunnel"])
                )
            } else {
                String::new()
            };
            let stale = if e["stale"].as_bool() == Some(true) {
                " [stale: its cluster has gone silent]"
            } else {
                ""
            };
            out.push_str(&format!(
                "          {} cluster {} locality {}{via}{stale}\n",
                s(&e["address"]),
                s(&e["cluster"]),
                s(&e["locality"])
            ));
            let a = &e["authorization"];
            if let Some(why) = a["undecided"].as_str() {
                out.push_str(&format!(
                    "            UNDECIDED at the destination: {why}; mTLS {} there\n",
                    s(&a["mtls"])
                ));
            } else if let Some(allowed) = a["allowed"].as_bool() {
                let policies = a["policies"].as_array().map_or(0, Vec::len);
                let token = a["requestPrincipal"]
                    .as_str()
                    .map(|p| format!(", its token verified as {p}"))
                    .unwrap_or_default();
                let verdict = if allowed {
                    format!(
                        "admitted by the destination ({policies} AuthorizationPolicy(ies) apply{token})"
                    )
                } else {
                    format!("DENIED by the destination: {}", s(&a["reason"]))
                };
                out.push_str(&format!(
                    "            {verdict}; mTLS {} there\n",
                    s(&a["mtls"])
                ));
            } else if let Some(why) = a["unknown"].as_str() {
                out.push_str(&format!(
                    "            destination policies not checked: {why}\n"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cross_cluster_answer_reads_as_routes_destinations_and_the_gateway_hop() {
        let doc: Value = serde_json::from_str(
            r#"{"proxy": {"node": "curl-east.sample", "cluster": "east", "network": "network-1", "locality": "r1/z1"},
                "service": "helloworld.sample.svc.cluster.local", "port": 5000,
                "routes": [{"route": "sample/helloworld.0", "matches": true}], "route": "sample/helloworld.0",
                "destinations": [{"host": "helloworld.sample.svc.cluster.local", "subset": "", "weight": 100,
                  "decision": {"security": "mutual TLS (ISTIO_MUTUAL)", "sni": "outbound_.5000_._.helloworld.sample.svc.cluster.local",
                    "destination_rule": "sample/helloworld", "load_balancer": null, "outlier_detection": {"consecutive5xx": 1},
                    "locality": {"failover_priority": ["topology.istio.io/network", "topology.istio.io/cluster"], "failover": [], "distribute": []},
                    "endpoints": [{"address": "127.241.0.2:15443", "cluster": "west", "locality": "r2/z1", "through_gateway": true, "tunnel": "quic", "stale": false,
                      "authorization": {"allowed": true, "mtls": "STRICT", "policies": [], "reason": ""}}]}}]}"#,
        )
        .unwrap();
        let text = render("GET", "http://helloworld:5000/hello", &doc);
        assert!(text.contains("✔ sample/helloworld.0   ← used"), "{text}");
        assert!(
            text.contains("100 % helloworld.sample.svc.cluster.local"),
            "{text}"
        );
        assert!(
            text.contains("127.241.0.2:15443 cluster west locality r2/z1, through cluster west's east-west gateway (quic)"),
            "{text}"
        );
        assert!(text.contains("outlier detection on, endpoints prioritized by topology.istio.io/network then topology.istio.io/cluster"), "{text}");
        assert!(
            text.contains(
                "admitted by the destination (0 AuthorizationPolicy(ies) apply); mTLS STRICT there"
            ),
            "{text}"
        );
        assert!(!refused_everywhere(&doc));
        // Denied by the destination's policy on every endpoint: an answer of refusal.
        let mut denied = doc.clone();
        denied["destinations"][0]["decision"]["endpoints"][0]["authorization"] = serde_json::json!(
            {"allowed": false, "mtls": "STRICT", "policies": ["sample/deny"], "reason": "rbac_access_denied_matched_policy[sample/deny]"}
        );
        let text = render("GET", "http://helloworld:5000/hello", &denied);
        assert!(
            text.contains(
                "DENIED by the destination: rbac_access_denied_matched_policy[sample/deny]"
            ),
            "{text}"
        );
        assert!(refused_everywhere(&denied));
        let refused: Value = serde_json::from_str(
            r#"{"refused": {"status": 404, "flag": "NR", "reason": "no service named \"nope\""}}"#,
        )
        .unwrap();
        assert!(refused_everywhere(&refused));
        assert!(
            render("GET", "http://nope/", &refused).contains("refused: 404 NR — no service named")
        );
    }
}
