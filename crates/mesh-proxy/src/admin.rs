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
            "/certs" => (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&certs(&self.identity)).unwrap_or_default(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "endpoints: /healthz/ready /healthz/live /stats/prometheus /config_dump /certs\n"
                    .to_owned(),
            ),
        };
        crate::http_util::text_response(status, content_type, body)
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
            "identity": certs(&self.identity),
            "services": state.services.values().collect::<Vec<_>>(),
            "routes": routes,
            "destination_rules": state.policies,
            "peer_authentication": state.peer_authn,
            "authorization_policies": state.authz.policies(),
            "last_rejection": self.store.last_rejection().map(|e| e.to_string()),
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}

/// The proxy's certificate and trust as `/certs` shows them (Envoy's admin has the
/// same endpoint): identity, serial, expiry, the issuing intermediate, and the serials
/// of the roots trusted per trust domain.
pub fn certs(identity: &Identity) -> serde_json::Value {
    let cert = identity.cert();
    let issuer = cert
        .chain()
        .get(1)
        .and_then(|der| mesh_identity::cert::CertInfo::parse(der, "issuer").ok());
    let trust = identity.trust();
    let roots: serde_json::Map<_, _> = trust
        .bundle
        .trust_domains()
        .map(|td| {
            let serials: Vec<String> = trust
                .bundle
                .root_infos(td)
                .iter()
                .map(|i| i.serial.clone())
                .collect();
            (td.to_string(), serials.into())
        })
        .collect();
    serde_json::json!({
        "spiffe_id": cert.id().to_string(),
        "serial": cert.info().serial,
        "not_after": mesh_identity::cert::rfc3339(cert.info().not_after),
        "issuer": issuer.as_ref().map(|i| i.subject.clone()),
        "issuer_serial": issuer.as_ref().map(|i| i.serial.clone()),
        "trust_roots": roots,
    })
}
