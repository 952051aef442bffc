//! `meshctl trace [ID | --last]`: one trace from Jaeger's query API, as a waterfall
//! in the terminal, each span with its service and cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use serde_json::Value;

/// `meshctl trace` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct TraceArgs {
    /// Trace id (hex).
    id: Option<String>,
    /// The most recent trace.
    #[arg(long, conflicts_with = "id")]
    last: bool,
    /// Only traces that passed through this service (with --last).
    #[arg(long)]
    service: Option<String>,
    /// Jaeger's query address.
    #[arg(long, env = "ISTHMUS_JAEGER", default_value = "127.0.0.1:16686")]
    jaeger: SocketAddr,
}

/// One span, flattened from Jaeger's JSON.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) id: String,
    pub(crate) parent: Option<String>,
    pub(crate) operation: String,
    pub(crate) service: String,
    pub(crate) cluster: String,
    pub(crate) start_us: u64,
    pub(crate) duration_us: u64,
}

fn tag<'a>(tags: &'a Value, key: &str) -> Option<&'a Value> {
    tags.as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The spans of one trace in Jaeger's JSON (`data[0]`).
pub(crate) fn spans(trace: &Value) -> Vec<Span> {
    let processes = &trace["processes"];
    let mut out: Vec<Span> = trace["spans"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let process = &processes[s["processID"].as_str().unwrap_or_default()];
            let cluster = tag(&s["tags"], "istio.cluster_id")
                .or_else(|| tag(&process["tags"], "istio.cluster_id"))
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned();
            Span {
                id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                parent: s["references"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_owned),
                operation: s["operationName"].as_str().unwrap_or_default().to_owned(),
                service: process["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                cluster,
                start_us: s["startTime"].as_u64().unwrap_or(0),
                duration_us: s["duration"].as_u64().unwrap_or(0),
            }
        })
        .collect();
    out.sort_by_key(|s| s.start_us);
    out
}

/// The waterfall: one line per span, children under their parent.
pub(crate) fn waterfall(spans: &[Span]) -> String {
    let Some(t0) = spans.iter().map(|s| s.start_us).min() else {
        return "no spans\n".into();
    };
    let end = spans
        .iter()
        .map(|s| s.start_us + s.duration_us)
        .max()
        .unwrap_or(t0);
    let total = (end - t0).max(1);
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&Span>> = BTreeMap::new();
    for s in spans {
        let parent = s.parent.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(s);
    }
    const WIDTH: u64 = 40;
    let mut out = format!(
        "{:<44} {:<8} {:>9}  {}\n",
        "SPAN (service: operation)", "CLUSTER", "DURATION", "TIMELINE"
    );
    fn walk(
        parent: Option<&str>,
        depth: usize,
        children: &BTreeMap<Option<&str>, Vec<&Span>>,
        t0: u64,
        total: u64,
        out: &mut String,
    ) {
        for s in children.get(&parent).into_iter().flatten() {
            let label = format!("{}{}: {}", "  ".repeat(depth), s.service, s.operation);
            let label: String = label.chars().take(44).collect();
            let from = (s.start_us - t0) * WIDTH / total;
            let len = (s.duration_us * WIDTH / total).max(1);
            let bar = format!(
                "{}{}",
                " ".repeat(from as usize),
                "█".repeat(len.min(WIDTH - from.min(WIDTH - 1)) as usize)
            );
            out.push_str(&format!(
                "{label:<44} {:<8} {:>7.2}ms  |{bar}\n",
                s.cluster,
                s.duration_us as f64 / 1000.0
            ));
            walk(Some(&s.id), depth + 1, children, t0, total, out);
        }
    }
    walk(None, 0, &children, t0, total, &mut out);
    out
}

async fn query(jaeger: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let (status, body) = mesh_net::http::get(jaeger, path)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is Jaeger running? `meshctl testbed up` starts one)"))?;
    anyhow::ensure!(
        status.is_success(),
        "GET http://{jaeger}{path}: {status}: {body}"
    );
    serde_json::from_str(&body).with_context(|| format!("GET http://{jaeger}{path}: not JSON"))
}

/// The trace `id`, or the most recent one (through `service` when given).
pub(crate) async fn fetch(
    jaeger: SocketAddr,
    id: Option<&str>,
    service: Option<&str>,
) -> anyhow::Result<Value> {
    if let Some(id) = id {
        let v = query(jaeger, &format!("/api/traces/{id}")).await?;
        return v["data"][0]
            .as_object()
            .map(|_| v["data"][0].clone())
            .context("no such trace");
    }
    let services: Vec<String> = match service {
        Some(s) => vec![s.to_owned()],
        None => query(jaeger, "/api/services").await?["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .filter(|s| !s.starts_with("jaeger"))
            .collect(),
    };
    let mut best: Option<(u64, Value)> = None;
    for s in services {
        let v = query(
            jaeger,
            &format!("/api/traces?service={s}&limit=1&lookback=1h"),
        )
        .await?;
        for t in v["data"].as_array().cloned().unwrap_or_default() {
            let start = t["spans"]
                .as_array()
                .and_then(|sp| sp.iter().filter_map(|x| x["startTime"].as_u64()).min())
                .unwrap_or(0);
            if best.as_ref().is_none_or(|(b, _)| start > *b) {
                best = Some((start, t));
            }
        }
    }
    best.map(|(_, t)| t)
        .context("Jaeger has no trace yet; send a request first")
}

/// Runs `meshctl trace`.
pub(crate) fn run(args: TraceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.id.is_some() || args.last, "give a trace id or --last");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let trace = rt.block_on(fetch(
        args.jaeger,
        args.id.as_deref(),
        args.service.as_deref(),
    ))?;
    let spans = spans(&trace);
    let clusters: std::collections::BTreeSet<&str> =
        spans.iter().map(|s| s.cluster.as_str()).collect();
    println!(
        "trace {} — {} spans across {} cluster(s): {}",
        trace["traceID"].as_str().unwrap_or_default(),
        spans.len(),
        clusters.len(),
        clusters.into_iter().collect::<Vec<_>>().join(", ")
    );
    print!("{}", waterfall(&spans));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jaeger_trace_becomes_a_waterfall_with_clusters() {
        let trace = serde_json::json!({
            "traceID": "abc",
            "spans": [
                {"spanID": "2", "operationName": "reviews:9080/*", "startTime": 1_000_100u64, "duration": 600u64,
                 "references": [{"refType": "CHILD_OF", "spanID": "1"}], "processID": "p2", "tags": []},
                {"spanID": "1", "operationName": "frontpage:9080/*", "startTime": 1_000_000u64, "duration": 1000u64,
                 "references": [], "processID": "p1", "tags": []},
            ],
            "processes": {
                "p1": {"serviceName": "curl.sample", "tags": [{"key": "istio.cluster_id", "value": "east"}]},
                "p2": {"serviceName": "frontpage.sample", "tags": [{"key": "istio.cluster_id", "value": "west"}]},
            }
        });
        let s = spans(&trace);
        assert_eq!(s[0].id, "1");
        assert_eq!(
            (s[0].cluster.as_str(), s[1].cluster.as_str()),
            ("east", "west")
        );
        assert_eq!(s[1].parent.as_deref(), Some("1"));
        let w = waterfall(&s);
        let lines: Vec<&str> = w.lines().collect();
        assert!(lines[1].starts_with("curl.sample: frontpage:9080/*"), "{w}");
        assert!(
            lines[2].starts_with("  frontpage.sample: reviews:9080/*"),
            "{w}"
        );
        assert!(
            lines[2].contains("west") && lines[2].contains("0.60ms"),
            "{w}"
        );
    }
}
