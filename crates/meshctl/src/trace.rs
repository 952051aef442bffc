//! `meshctl trace [ID | --last]`: one trace from Jaeger's query API, as a waterfall
//! in the terminal, each span with its service and cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use discovery::dashboard::jaeger::{Span, spans};
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
    discovery::dashboard::jaeger::query(jaeger, path)
        .await
        .map_err(anyhow::Error::msg)
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
