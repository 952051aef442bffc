//! Discovery's monitoring port (15014, as istiod's): readiness, metrics and `/debug`.
//!
//! - `/ready`: 200 once every registry kind has been listed and every link has synced
//!   (or waited its bound).
//! - `/debug/links`: every cluster link (state, services and endpoints received,
//!   heartbeat, lease, trust bundle match).
//! - `/metrics`: Prometheus text.
//! - `/debug/registry`: counts, Istio objects, input errors.
//! - `/debug/syncz`: every proxy's status (versions sent and acked, NACKs, certificate).
//! - `/debug/resource?name=Kind/ns/name`: one compiled resource as proxies receive it.
//! - `/debug/proxy?name=NAME.NAMESPACE`: the resources (name, version) that proxy sees.
//! - `/debug/certs`: discovery's own certificate, its issuer and the roots it trusts.
//! - `/debug/peering-refusals`: the last peering subscriptions refused, with why.

use std::sync::Arc;

use http::StatusCode;
use mesh_net::http::{serve_endpoints, text_response};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::push::Statuses;
use crate::registry::Registry;

/// What the monitoring endpoints read.
#[derive(Debug, Clone)]
pub struct Views {
    /// The registry.
    pub registry: Arc<Registry>,
    /// Per-proxy status.
    pub statuses: Arc<Statuses>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Links.
    pub links: Arc<crate::peering::Links>,
    /// Longest readiness waits for a link.
    pub link_sync_timeout: std::time::Duration,
    /// Discovery's own identity (its certificate and the trust it holds).
    pub identity: mesh_identity::Identity,
}

/// Serves the monitoring endpoints until dropped.
pub async fn serve(listener: TcpListener, views: Views) {
    serve_endpoints(listener, move |req| {
        let Views {
            registry,
            statuses,
            metrics,
            links,
            link_sync_timeout,
            identity,
        } = &views;
        let json = |v: serde_json::Value| {
            text_response(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
            )
        };
        match req.uri().path() {
            "/ready" if registry.is_synced() && links.settled(*link_sync_timeout) => {
                text_response(StatusCode::OK, "text/plain", "ready\n".into())
            }
            "/ready" => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "registry or links not synced yet\n".into(),
            ),
            "/metrics" => {
                let (refused, warned) = registry.input_health();
                metrics.config_refused.set(refused as i64);
                metrics.config_warned_fields.set(warned as i64);
                metrics.remote_endpoints.clear();
                for l in links.list() {
                    let stale = l.state == "stale";
                    for (flag, count) in [(true, if stale { l.endpoints } else { 0 }), (false, if stale { 0 } else { l.endpoints })] {
                        metrics
                            .remote_endpoints
                            .get_or_create(&crate::metrics::RemoteLabels {
                                cluster: l.link.cluster.clone(),
                                stale: flag.to_string(),
                            })
                            .set(count as i64);
                    }
                }
                text_response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    metrics.encode(),
                )
            }
            "/debug/registry" => json(registry.summary()),
            "/debug/links" => json(serde_json::to_value(links.list()).unwrap_or_default()),
            "/debug/certs" => json(identity.report()),
            "/debug/peering-refusals" => {
                json(serde_json::to_value(links.refusals()).unwrap_or_default())
            }
            "/debug/syncz" => {
                let list: Vec<_> = statuses
                    .list()
                    .into_iter()
                    .map(|s| {
                        let mut v = serde_json::to_value(&s).unwrap_or_default();
                        v["state"] = s.state().into();
                        v
                    })
                    .collect();
                json(list.into())
            }
            "/debug/proxy" => {
                let name = query(req, "name");
                let status = statuses.list().into_iter().find(|s| s.proxy == name);
                match status {
                    Some(s) => {
                        let ns = s
                            .identity
                            .split("/ns/")
                            .nth(1)
                            .and_then(|r| r.split('/').next())
                            .unwrap_or_default()
                            .to_owned();
                        let mut visible: Vec<(String, String)> = registry
                            .all()
                            .updated
                            .iter()
                            .filter(|o| o.visible_to(&ns))
                            .map(|o| (o.name.clone(), o.version.clone()))
                            .collect();
                        visible.sort();
                        json(serde_json::json!({
                            "proxy": s.proxy,
                            "namespace": ns,
                            "status": s,
                            "resources": visible
                                .into_iter()
                                .map(|(n, v)| serde_json::json!({"name": n, "version": v}))
                                .collect::<Vec<_>>(),
                        }))
                    }
                    None => text_response(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        format!("no proxy {name:?}; see /debug/syncz\n"),
                    ),
                }
            }
            "/debug/resource" => {
                let name = query(req, "name");
                match registry.output(&name) {
                    Some(o) => text_response(
                        StatusCode::OK,
                        "application/json",
                        String::from_utf8_lossy(&o.body).into_owned(),
                    ),
                    None => text_response(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        format!("no resource {name:?}\n"),
                    ),
                }
            }
            _ => text_response(
                StatusCode::NOT_FOUND,
                "text/plain",
                "endpoints: /ready /metrics /debug/registry /debug/syncz /debug/links /debug/proxy?name= /debug/resource?name=\n"
                    .into(),
            ),
        }
    })
    .await;
}

/// The value of `key` in the request's query string.
fn query(req: &http::Request<hyper::body::Incoming>, key: &str) -> String {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_default()
        .to_owned()
}
