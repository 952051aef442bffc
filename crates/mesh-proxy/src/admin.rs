//! Admin endpoints, on Istio's ports:
//! - 15021 `/healthz/ready`: 200 once the first config is in force, 503 before.
//! - 15020 `/healthz/ready`, `/healthz/live`, `/stats/prometheus`, `/config_dump`.
//! - 15090 `/stats/prometheus`: Istio's standard metrics.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use mesh_identity::Identity;
use mesh_telemetry::metrics::MeshMetrics;
use tokio::net::TcpListener;

use crate::http_util::Body;
use crate::state::StateStore;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Live config.
    pub store: Arc<StateStore>,
    /// Metrics.
    pub metrics: MeshMetrics,
    /// Workload identity.
    pub identity: Identity,
}

impl Admin {
    /// Serves the admin endpoints on `listener` until dropped.
    pub async fn serve(self, listener: TcpListener) {
        crate::http_util::serve_endpoints(listener, move |req| self.handle(req)).await;
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Body> {
        let (status, content_type, body) = match req.uri().path() {
            "/healthz/ready" => {
                if self.store.is_ready() {
                    (StatusCode::OK, "text/plain", "ready\n".to_owned())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "waiting for the first config\n".to_owned(),
                    )
                }
            }
            "/healthz/live" => (StatusCode::OK, "text/plain", "live\n".to_owned()),
            "/stats/prometheus" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.encode(),
            ),
            "/config_dump" => (StatusCode::OK, "application/json", self.config_dump()),
            "/debug/diagnose" => match self.diagnose(req.uri().query().unwrap_or_default()) {
                Ok(doc) => (StatusCode::OK, "application/json", doc),
                Err(e) => (StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
            },
            "/certs" => (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&self.identity.report()).unwrap_or_default(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "endpoints: /healthz/ready /healthz/live /stats/prometheus /config_dump /certs /debug/diagnose?url=URL[&method=M][&header=NAME:VALUE]\n"
                    .to_owned(),
            ),
        };
        crate::http_util::text_response(status, content_type, body)
    }

    /// `/debug/diagnose?url=URL&method=M&header=NAME:VALUE...`: what this proxy does
    /// with that request, from its live state ([`crate::plan::explain`]).
    fn diagnose(&self, query: &str) -> Result<String, String> {
        let mut builder = http::Request::builder();
        let mut url = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "url" => url = Some(v.into_owned()),
                "method" => builder = builder.method(&*v),
                "header" => {
                    let (name, value) = v
                        .split_once(':')
                        .ok_or_else(|| format!("header {v:?}: write NAME:VALUE"))?;
                    builder = builder.header(name.trim(), value.trim());
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; use url, method, header"
                    ));
                }
            }
        }
        let url = url.ok_or("give the request's url, e.g. ?url=http://reviews:9080/")?;
        let (parts, ()) = builder
            .uri(&url)
            .body(())
            .map_err(|e| format!("{url}: {e}"))?
            .into_parts();
        let authority =
            crate::http_util::request_authority(&parts).ok_or_else(|| format!("{url}: no host"))?;
        let state = self.store.snapshot();
        let mut doc = crate::plan::explain(&state, &parts, &authority);
        doc["proxy"] = serde_json::json!({
            "node": format!("{}.{}", state.node.name, state.node.namespace),
            "cluster": state.node.cluster,
            "network": state.node.network,
            "locality": state.node.locality,
            "identity": self.identity.cert().id().to_string(),
        });
        serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())
    }

    fn config_dump(&self) -> String {
        let state = self.store.snapshot();
        let routes: serde_json::Map<_, _> = state
            .routes
            .iter()
            .map(|(host, r)| {
                (
                    host.clone(),
                    r.iter().map(|r| r.name.clone()).collect::<Vec<_>>().into(),
                )
            })
            .collect();
        let doc = serde_json::json!({
            "version": state.version,
            "node": state.node,
            "identity": self.identity.report(),
            "services": state.services.values().collect::<Vec<_>>(),
            "routes": routes,
            "destination_rules": state.policies,
            "peer_authentication": state.peer_authn,
            "authorization_policies": state.authz.policies(),
            // An ingress gateway's Gateways, server ports, servers and virtual hosts.
            "ingress": state.ingress,
            // The Sidecar resource in force: its egress hosts and outbound policy.
            "sidecar_scope": state.scope,
            // The Secrets whose certificates are held (in memory; never the material).
            "credentials": state.credentials,
            "last_rejection": self.store.last_rejection().map(|e| e.to_string()),
            // ServiceEntry names resolved by DNS: their last answer, and the last
            // lookup's failure while that answer stays in use.
            // RequestAuthentication key sets by jwksUri: held or not, the last failure.
            "jwks": self.store.jwks().report().into_iter().map(|(uri, held, error)| {
                serde_json::json!({"uri": uri, "keys_held": held, "error": error})
            }).collect::<Vec<_>>(),
            "dns": self.store.dns().report().into_iter().map(|(name, addresses, error)| {
                serde_json::json!({"name": name, "addresses": addresses, "error": error})
            }).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}
