//! The mesh graph: the calls this cluster's proxies report
//! (`ConfigDiscovery.ReportEdges`, every few seconds), kept for the last seconds, and
//! those of each linked cluster, received in its peering stream. [`EdgeBook::graph`]
//! is what the dashboard draws: every cluster, its link state, and every edge with
//! its rate, error rate, p50/p99, mTLS and gateway hop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mesh_proto::edges::Edge;
use mesh_telemetry::edges::{BUCKETS, quantile};
use serde_json::{Value, json};

/// How far back the rates look.
pub const WINDOW: Duration = Duration::from_secs(10);

/// What a linked cluster's edges are worth after its last message: a little more than
/// the window, so one missed update does not blank the graph.
const REMOTE_KEPT: Duration = Duration::from_secs(15);

/// Most proxies one book keeps reports for (a bound on what reporters can make it
/// hold); past it the oldest reporter is forgotten.
const MAX_REPORTERS: usize = 20_000;

/// How long a computed aggregate of this cluster's edges serves: every linked
/// cluster's stream sends it every few seconds, and they share one computation.
const LOCAL_FRESH: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct Book {
    /// By proxy (`name.namespace`): its reports of the window, oldest first.
    local: HashMap<String, VecDeque<(Instant, Vec<Edge>)>>,
    /// The last aggregate of `local` and when it was made (cleared by a report).
    aggregate: Option<(Instant, Vec<Edge>)>,
    /// By linked cluster: its edges and when they came.
    remote: BTreeMap<String, (Instant, Vec<Edge>)>,
}

/// The edges of this cluster and of its linked clusters.
#[derive(Debug, Default)]
pub struct EdgeBook {
    inner: Mutex<Book>,
}

fn identity(e: &Edge) -> Edge {
    Edge {
        requests: 0,
        errors: 0,
        latency: Vec::new(),
        window_ms: 0,
        ..e.clone()
    }
}

fn add(into: &mut Edge, e: &Edge) {
    into.requests += e.requests;
    into.errors += e.errors;
    if into.latency.len() < e.latency.len() {
        into.latency.resize(e.latency.len(), 0);
    }
    for (sum, n) in into.latency.iter_mut().zip(&e.latency) {
        *sum += n;
    }
}

impl EdgeBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `proxy`'s report of the window it just ended.
    pub fn report(&self, proxy: &str, mut edges: Vec<Edge>) {
        for e in &mut edges {
            // A histogram longer than the buckets is a reporter's mistake, not memory
            // it may make this book hold.
            e.latency.truncate(BUCKETS);
        }
        let now = Instant::now();
        let mut book = self.lock();
        if !book.local.contains_key(proxy) && book.local.len() >= MAX_REPORTERS {
            let oldest = book
                .local
                .iter()
                .min_by_key(|(_, r)| r.back().map(|(t, _)| *t))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                book.local.remove(&k);
            }
        }
        book.aggregate = None;
        let reports = book.local.entry(proxy.to_owned()).or_default();
        reports.push_back((now, edges));
        while reports
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            reports.pop_front();
        }
    }

    /// This cluster's edges over the window: each proxy's reports summed over the time
    /// they span (from the start of its oldest report kept to now, so idle seconds
    /// count), proxies calling along the same edge added together. `window_ms` is set
    /// so that `requests / window_ms` is the edge's rate, the sum of its callers'.
    pub fn local(&self) -> Vec<Edge> {
        let now = Instant::now();
        let mut book = self.lock();
        if let Some((at, edges)) = &book.aggregate
            && now.duration_since(*at) < LOCAL_FRESH
        {
            return edges.clone();
        }
        book.local.retain(|_, reports| {
            while reports
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
            {
                reports.pop_front();
            }
            !reports.is_empty()
        });
        // Per edge: the sum, and the rate (per millisecond) of every caller.
        let mut merged: HashMap<Edge, (Edge, f64)> = HashMap::new();
        for reports in book.local.values() {
            let Some((oldest_at, oldest)) = reports.front() else {
                continue;
            };
            let oldest_window = oldest.iter().map(|e| e.window_ms).max().unwrap_or(0);
            let span_ms = (now.duration_since(*oldest_at).as_millis() as f64
                + f64::from(oldest_window))
            .max(1.0);
            let mut mine: HashMap<Edge, Edge> = HashMap::new();
            for (_, edges) in reports {
                for e in edges {
                    add(mine.entry(identity(e)).or_insert_with(|| identity(e)), e);
                }
            }
            for (k, e) in mine {
                let (slot, rate) = merged.entry(k.clone()).or_insert((k, 0.0));
                add(slot, &e);
                *rate += e.requests as f64 / span_ms;
            }
        }
        let mut out: Vec<Edge> = merged
            .into_values()
            .map(|(mut e, rate)| {
                e.window_ms = if rate > 0.0 {
                    (e.requests as f64 / rate)
                        .round()
                        .clamp(1.0, f64::from(u32::MAX)) as u32
                } else {
                    WINDOW.as_millis() as u32
                };
                e
            })
            .collect();
        out.sort_by(|a, b| key(a).cmp(&key(b)));
        book.aggregate = Some((now, out.clone()));
        out
    }

    /// Replaces what linked cluster `cluster` last sent. A linked cluster speaks for
    /// its own proxies only: edges from other clusters' callers are dropped.
    pub fn set_remote(&self, cluster: &str, mut edges: Vec<Edge>) {
        edges.retain(|e| e.source_cluster == cluster);
        for e in &mut edges {
            e.latency.truncate(BUCKETS);
        }
        self.lock()
            .remote
            .insert(cluster.to_owned(), (Instant::now(), edges));
    }

    /// Each linked cluster's edges still worth drawing, with how old they are.
    pub fn remote(&self) -> Vec<(String, Duration, Vec<Edge>)> {
        let now = Instant::now();
        let mut book = self.lock();
        book.remote
            .retain(|_, (t, _)| now.duration_since(*t) <= REMOTE_KEPT);
        book.remote
            .iter()
            .map(|(c, (t, e))| (c.clone(), now.duration_since(*t), e.clone()))
            .collect()
    }

    /// The whole mesh as this discovery knows it: `local` is this cluster (name and
    /// network), `links` the link of each linked cluster with its state.
    pub fn graph(&self, local: (&str, &str), links: &[crate::peering::LinkStatus]) -> Value {
        let (cluster, network) = local;
        let mut clusters = vec![json!({
            "name": cluster,
            "network": network,
            "state": "local",
            "stale": false,
            "reportedBy": cluster,
        })];
        let mut unhealthy = Vec::new();
        for l in links {
            let stale = matches!(l.state.as_str(), "stale" | "withdrawn");
            if stale {
                unhealthy.push(l.link.cluster.clone());
            }
            clusters.push(json!({
                "name": l.link.cluster,
                "network": l.link.network,
                "gateway": l.link.gateway_address,
                "state": l.state,
                "stale": stale,
                "endpoints": l.endpoints,
                "staleSince": l.stale_since,
            }));
        }
        let mut edges: Vec<Value> = self
            .local()
            .iter()
            .map(|e| edge_json(e, cluster, None, &unhealthy))
            .collect();
        for (from, age, remote) in self.remote() {
            if let Some(c) = clusters.iter_mut().find(|c| c["name"] == from) {
                c["edgesAgeMs"] = json!(age.as_millis() as u64);
            }
            edges.extend(
                remote
                    .iter()
                    .map(|e| edge_json(e, &from, Some(age), &unhealthy)),
            );
        }
        json!({
            "cluster": cluster,
            "windowSeconds": WINDOW.as_secs(),
            "clusters": clusters,
            "edges": edges,
        })
    }
}

fn key(e: &Edge) -> (&str, &str, &str, &str, &str, &str) {
    (
        &e.source_cluster,
        &e.source_app,
        &e.destination_service,
        &e.destination_cluster,
        &e.destination_app,
        &e.destination_version,
    )
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// One edge as the page reads it.
fn edge_json(e: &Edge, reported_by: &str, age: Option<Duration>, unhealthy: &[String]) -> Value {
    let seconds = f64::from(e.window_ms.max(1)) / 1000.0;
    let ms = |q| quantile(&e.latency, q).map(|v| round(v, 2));
    json!({
        "source": {
            "cluster": e.source_cluster,
            "namespace": e.source_namespace,
            "app": e.source_app,
            "version": e.source_version,
        },
        "destination": {
            "service": e.destination_service,
            "cluster": e.destination_cluster,
            "namespace": e.destination_namespace,
            "app": e.destination_app,
            "version": e.destination_version,
        },
        "protocol": e.protocol,
        "mtls": e.mtls,
        "viaGateway": e.via_gateway,
        "requests": e.requests,
        "errors": e.errors,
        "rps": round(e.requests as f64 / seconds, 2),
        "errorRate": if e.requests == 0 { 0.0 } else { round(e.errors as f64 / e.requests as f64, 4) },
        "p50Ms": ms(0.5),
        "p99Ms": ms(0.99),
        "reportedBy": reported_by,
        "ageMs": age.map(|a| a.as_millis() as u64),
        "stale": unhealthy.contains(&e.destination_cluster),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(app: &str, dst_cluster: &str, requests: u64, ms: f64, window_ms: u32) -> Edge {
        let mut latency = vec![0; BUCKETS];
        latency[mesh_telemetry::edges::bucket_of(ms)] = requests;
        Edge {
            source_cluster: "east".into(),
            source_namespace: "sample".into(),
            source_app: app.into(),
            destination_service: "reviews.sample.svc.cluster.local".into(),
            destination_cluster: dst_cluster.into(),
            destination_app: "reviews".into(),
            destination_version: "v2".into(),
            protocol: "http".into(),
            mtls: true,
            via_gateway: dst_cluster != "east",
            requests,
            errors: requests / 10,
            latency,
            window_ms,
            ..Default::default()
        }
    }

    #[test]
    fn reports_add_up_across_a_proxys_windows_and_across_proxies() {
        let book = EdgeBook::default();
        // One replica: two windows of 2 s, 20 requests each, just reported (so they
        // span about 2 s: 20 per second).
        book.report(
            "frontpage-a.sample",
            vec![edge("frontpage", "west", 20, 4.0, 2000)],
        );
        book.report(
            "frontpage-a.sample",
            vec![edge("frontpage", "west", 20, 4.0, 2000)],
        );
        // Another replica along the same edge (10 per second), and a different edge.
        book.report(
            "frontpage-b.sample",
            vec![
                edge("frontpage", "west", 40, 4.0, 4000),
                edge("frontpage", "east", 5, 1.0, 4000),
            ],
        );
        let local = book.local();
        assert_eq!(local.len(), 2, "{local:?}");
        let cross = local
            .iter()
            .find(|e| e.destination_cluster == "west")
            .unwrap();
        assert_eq!((cross.requests, cross.errors), (80, 8));
        let g = book.graph(("east", "net-east"), &[]);
        let cross = g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["destination"]["cluster"] == "west")
            .unwrap();
        // The replicas' rates add up (a few milliseconds pass between report and read).
        let rps = cross["rps"].as_f64().unwrap();
        assert!((29.0..=30.0).contains(&rps), "{cross}");
        assert_eq!(cross["errorRate"], 0.1);
        assert_eq!(cross["viaGateway"], true);
        assert!(cross["p99Ms"].as_f64().unwrap() <= 4.0, "{cross}");
    }

    #[test]
    fn a_linked_cluster_speaks_only_for_its_own_proxies() {
        let book = EdgeBook::default();
        let mut theirs = edge("productpage", "west", 10, 2.0, 2000);
        theirs.source_cluster = "west".into();
        // A claim about east's proxies from west is not drawn.
        let forged = edge("frontpage", "west", 1000, 2.0, 2000);
        book.set_remote("west", vec![theirs, forged]);
        let g = book.graph(("east", "net-east"), &[]);
        let edges = g["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 1, "{g}");
        assert_eq!(edges[0]["source"]["app"], "productpage");
        assert_eq!(edges[0]["reportedBy"], "west");
    }
}
