//! The mesh dashboard: one page that draws every cluster and the calls between them,
//! live, from the mesh's own data (see [`crate::edges`]), and opens an edge's recent
//! traces as a waterfall read from the shared Jaeger's query API.
//!
//! Discovery serves it on its monitoring port under `/dashboard/`; `meshctl
//! dashboard` serves the same page on a local port and asks a discovery for the graph.
//! The page is three files compiled into the binary (no front-end dependencies, no
//! network beyond this server), so it works offline.
//!
//! - `GET /dashboard/` (and `app.js`, `style.css`): the page;
//! - `GET /dashboard/api/graph`: clusters and edges (see [`crate::edges::EdgeBook::graph`]);
//! - `GET /dashboard/api/traces?source=APP.NS&service=HOST&cluster=C`: recent traces from
//!   that source through that service to cluster `C`;
//! - `GET /dashboard/api/trace/ID`: one trace's spans, with service and cluster.

pub mod jaeger;

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh_net::http::{Body, text_response};
use serde_json::{Value, json};

use crate::peering::Links;
use crate::registry::Registry;

const INDEX: &str = include_str!("index.html");
const APP: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// Where the graph comes from.
#[derive(Debug, Clone)]
enum Graph {
    /// This discovery's own book and links.
    Local(Arc<Registry>, Arc<Links>),
    /// A discovery's monitoring port.
    Discovery(SocketAddr),
}

/// The dashboard's answers.
#[derive(Debug, Clone)]
pub struct Dashboard {
    graph: Graph,
    jaeger: Option<SocketAddr>,
}

fn json_response(status: StatusCode, v: &Value) -> http::Response<Body> {
    text_response(
        status,
        "application/json",
        serde_json::to_string(v).unwrap_or_default(),
    )
}

fn error(status: StatusCode, message: impl Into<String>) -> http::Response<Body> {
    json_response(status, &json!({ "error": message.into() }))
}

fn param(query: &str, name: &str) -> String {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl Dashboard {
    /// The dashboard of this discovery (its registry's edges and its links), with
    /// traces from Jaeger's query API at `jaeger` when given.
    pub fn local(registry: Arc<Registry>, links: Arc<Links>, jaeger: Option<SocketAddr>) -> Self {
        Self {
            graph: Graph::Local(registry, links),
            jaeger,
        }
    }

    /// A dashboard that asks the discovery whose monitoring port is `discovery` for
    /// the graph (`meshctl dashboard`).
    pub fn remote(discovery: SocketAddr, jaeger: Option<SocketAddr>) -> Self {
        Self {
            graph: Graph::Discovery(discovery),
            jaeger,
        }
    }

    /// The answer to `path` (with its `query`) when it is the dashboard's: paths under
    /// `/dashboard/`, and with `root`, the same paths at the top (`/`, `/api/graph`).
    pub async fn answer(
        &self,
        path: &str,
        query: &str,
        root: bool,
    ) -> Option<http::Response<Body>> {
        if path == "/dashboard" {
            let mut resp =
                text_response(StatusCode::MOVED_PERMANENTLY, "text/plain", String::new());
            resp.headers_mut().insert(
                http::header::LOCATION,
                http::HeaderValue::from_static("/dashboard/"),
            );
            return Some(resp);
        }
        let rest = match path.strip_prefix("/dashboard") {
            Some(rest) if rest.starts_with('/') => rest,
            _ if root => path,
            _ => return None,
        };
        Some(match rest {
            "/" | "/index.html" => {
                text_response(StatusCode::OK, "text/html; charset=utf-8", INDEX.into())
            }
            "/app.js" => {
                text_response(StatusCode::OK, "text/javascript; charset=utf-8", APP.into())
            }
            "/style.css" => text_response(StatusCode::OK, "text/css; charset=utf-8", STYLE.into()),
            "/api/graph" => match self.graph().await {
                Ok(g) => json_response(StatusCode::OK, &g),
                Err(e) => error(StatusCode::BAD_GATEWAY, e),
            },
            "/api/traces" => self.traces(query).await,
            _ => match rest.strip_prefix("/api/trace/") {
                Some(id) => self.trace(id).await,
                None => error(StatusCode::NOT_FOUND, format!("no page {path}")),
            },
        })
    }

    async fn graph(&self) -> Result<Value, String> {
        match &self.graph {
            Graph::Local(registry, links) => Ok(registry
                .edges()
                .graph((registry.cluster(), registry.network()), &links.list())),
            Graph::Discovery(addr) => jaeger::get_json(*addr, "/dashboard/api/graph")
                .await
                .map_err(|e| format!("discovery: {e}")),
        }
    }

    fn jaeger(&self) -> Result<SocketAddr, Box<http::Response<Body>>> {
        self.jaeger.ok_or_else(|| {
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no Jaeger query address: start discovery with --jaeger-query, or meshctl dashboard with --jaeger",
            ))
        })
    }

    /// The recent traces along one edge: from `source` (the caller's `APP.NS`, its
    /// service name in Jaeger) through `service` to cluster `cluster`.
    async fn traces(&self, query: &str) -> http::Response<Body> {
        let jaeger = match self.jaeger() {
            Ok(j) => j,
            Err(resp) => return *resp,
        };
        let (source, service, cluster) = (
            param(query, "source"),
            param(query, "service"),
            param(query, "cluster"),
        );
        if source.is_empty() || service.is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                "give source=APP.NS and service=HOST",
            );
        }
        let tags = if cluster.is_empty() {
            String::new()
        } else {
            json!({ "destination_cluster": cluster }).to_string()
        };
        let path = format!(
            "/api/traces?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("service", &source)
                .append_pair("limit", "50")
                .append_pair("lookback", "1h")
                .append_pair("tags", &tags)
                .finish()
        );
        let found = match jaeger::query(jaeger, &path).await {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_GATEWAY, e),
        };
        // The upstream cluster names the host last, after the SNI's `_.` (or Envoy's
        // `|`).
        let (sni, envoy) = (format!("_.{service}"), format!("|{service}"));
        let mut list: Vec<Value> = found["data"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|t| {
                let spans = jaeger::spans(t);
                // The edge: a span of the caller that sent the request to the service.
                spans
                    .iter()
                    .any(|s| {
                        s.service == source
                            && (s.upstream.ends_with(&sni) || s.upstream.ends_with(&envoy))
                    })
                    .then(|| summary(t, &spans))
            })
            .collect();
        list.sort_by_key(|t| std::cmp::Reverse(t["startUs"].as_u64().unwrap_or(0)));
        list.truncate(20);
        json_response(StatusCode::OK, &json!({ "traces": list }))
    }

    async fn trace(&self, id: &str) -> http::Response<Body> {
        let jaeger = match self.jaeger() {
            Ok(j) => j,
            Err(resp) => return *resp,
        };
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not a trace id (hex)"),
            );
        }
        match jaeger::query(jaeger, &format!("/api/traces/{id}")).await {
            Ok(v) if v["data"][0].is_object() => {
                let spans = jaeger::spans(&v["data"][0]);
                json_response(StatusCode::OK, &json!({ "traceId": id, "spans": spans }))
            }
            Ok(_) => error(StatusCode::NOT_FOUND, format!("Jaeger has no trace {id}")),
            Err(e) => error(StatusCode::BAD_GATEWAY, e),
        }
    }
}

/// A trace in the edge's list: when, how long, how many spans, which clusters.
fn summary(trace: &Value, spans: &[jaeger::Span]) -> Value {
    let start = spans.iter().map(|s| s.start_us).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.start_us + s.duration_us)
        .max()
        .unwrap_or(start);
    let mut clusters: Vec<&str> = spans.iter().map(|s| s.cluster.as_str()).collect();
    clusters.sort_unstable();
    clusters.dedup();
    json!({
        "traceId": trace["traceID"],
        "startUs": start,
        "durationMs": (end - start) as f64 / 1000.0,
        "spans": spans.len(),
        "clusters": clusters,
        "root": spans.first().map(|s| format!("{}: {}", s.service, s.operation)),
    })
}

/// Serves the dashboard alone on `listener` (`meshctl dashboard`), at `/` and under
/// `/dashboard/`.
pub async fn serve(listener: tokio::net::TcpListener, dashboard: Dashboard) {
    mesh_net::http::serve_endpoints_async(listener, move |req| {
        let dashboard = dashboard.clone();
        async move {
            let (path, query) = (
                req.uri().path().to_owned(),
                req.uri().query().unwrap_or_default().to_owned(),
            );
            match dashboard.answer(&path, &query, true).await {
                Some(resp) => resp,
                None => error(StatusCode::NOT_FOUND, format!("no page {path}")),
            }
        }
    })
    .await;
}
