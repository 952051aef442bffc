//! Discovery's monitoring port (15014, as istiod's): readiness, metrics and `/debug`.
//!
//! - `/dashboard/`: the mesh dashboard (see [`crate::dashboard`]).
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
//! - `/debug/authorize?namespace=NS&labels=k=v,...&principal=ID&port=P&method=M&path=/p&host=H&header=n:v`:
//!   whether the workload with those labels would admit that request (its
//!   PeerAuthentication mode and its AuthorizationPolicies, compiled with the
//!   proxy's own code): the destination side of `meshctl diagnose`.

use std::sync::Arc;

use http::StatusCode;
use mesh_net::http::{serve_endpoints_async, text_response};
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
    /// Jaeger's query API, for the dashboard's traces.
    pub jaeger: Option<std::net::SocketAddr>,
}

/// Serves the monitoring endpoints and the dashboard until dropped.
pub async fn serve(listener: TcpListener, views: Views) {
    let dashboard = crate::dashboard::Dashboard::local(
        views.registry.clone(),
        views.links.clone(),
        views.jaeger,
    );
    serve_endpoints_async(listener, move |req| {
        let (views, dashboard) = (views.clone(), dashboard.clone());
        async move {
            let query = req.uri().query().unwrap_or_default();
            match dashboard.answer(req.uri().path(), query, false).await {
                Some(resp) => resp,
                None => answer(&views, &req),
            }
        }
    })
    .await;
}

/// The answer of a monitoring endpoint.
fn answer(
    views: &Views,
    req: &http::Request<hyper::body::Incoming>,
) -> http::Response<mesh_net::http::Body> {
    let Views {
        registry,
        statuses,
        metrics,
        links,
        link_sync_timeout,
        identity,
        jaeger: _,
    } = views;
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
        "/debug/authorize" => match authorize(registry, req.uri().query().unwrap_or_default()) {
            Ok(v) => json(v),
            Err(e) => text_response(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        },
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
            "endpoints: /ready /metrics /dashboard/ /debug/registry /debug/syncz /debug/links /debug/proxy?name= /debug/resource?name=\n"
                .into(),
        ),
    }
}

/// `/debug/authorize`: the workload's PeerAuthentication mode on the port and its
/// AuthorizationPolicies' decision on the request, as its sidecar compiles them (the
/// request path normalized as by default).
fn authorize(registry: &Registry, query: &str) -> Result<serde_json::Value, String> {
    let mut node = mesh_proto::model::Node {
        cluster: registry.cluster().to_owned(),
        network: registry.network().to_owned(),
        ..Default::default()
    };
    let (mut principal, mut port, mut method, mut path, mut host) = (
        String::new(),
        0u16,
        "GET".to_owned(),
        "/".to_owned(),
        String::new(),
    );
    let mut headers = http::HeaderMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "namespace" => node.namespace = v.into_owned(),
            "labels" => {
                for kv in v.split(',').filter(|kv| !kv.is_empty()) {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("label {kv:?}: write key=value"))?;
                    node.labels.insert(k.to_owned(), v.to_owned());
                }
            }
            "principal" => principal = v.trim_start_matches("spiffe://").to_owned(),
            "port" => port = v.parse().map_err(|_| format!("port {v:?}"))?,
            "method" => method = v.into_owned(),
            "path" => path = v.into_owned(),
            "host" => host = v.into_owned(),
            "header" => {
                let (n, val) = v
                    .split_once(':')
                    .ok_or_else(|| format!("header {v:?}: write NAME:VALUE"))?;
                let name = http::HeaderName::from_bytes(n.trim().as_bytes())
                    .map_err(|e| format!("header {n:?}: {e}"))?;
                let value = http::HeaderValue::from_str(val.trim())
                    .map_err(|e| format!("header {n:?}: {e}"))?;
                headers.append(name, value);
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if node.namespace.is_empty() {
        return Err("give the workload's namespace".into());
    }
    // The policies its proxy receives: its namespace's and the root namespace's.
    let resources: Vec<mesh_api::Resource> = registry
        .all()
        .updated
        .iter()
        .filter(|o| {
            matches!(
                o.kind.as_str(),
                "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication"
            ) && o.visible_to(&node.namespace)
        })
        .filter_map(|o| serde_json::from_slice(&o.body).ok())
        .filter_map(|v| mesh_api::from_value(v).ok())
        .collect();
    let refs: Vec<&mesh_api::Resource> = resources.iter().collect();
    let (peer_authn, authz) = mesh_proxy::state::security_for(&refs, &node);
    let request_authn: Vec<(
        String,
        String,
        &mesh_api::security::RequestAuthenticationSpec,
    )> = resources
        .iter()
        .filter_map(|r| match r {
            mesh_api::Resource::RequestAuthentication(ra) => Some((
                ra.metadata.namespace.clone().unwrap_or_default(),
                ra.metadata.name.clone().unwrap_or_default(),
                &ra.spec,
            )),
            _ => None,
        })
        .collect();
    // Rules that cannot be compiled refuse the workload's config: its sidecar keeps
    // its last good one, which cannot be known here.
    let jwt = mesh_proxy::jwt::JwtAuthn::compile(&request_authn, &node).map_err(|e| {
        format!(
            "the workload's RequestAuthentications do not compile: {}",
            e.join("; ")
        )
    })?;
    let mut request = http::Request::builder().method(method.as_str()).uri(&path);
    if !host.is_empty() {
        request = request.header(http::header::HOST, &host);
    }
    let (mut parts, ()) = request
        .body(())
        .map_err(|e| format!("request {method} {path}: {e}"))?
        .into_parts();
    parts.headers.extend(headers);
    let verdict = mesh_proxy::inbound::verdict(&jwt, &authz, &parts, &principal, port);
    // Keys named by jwksUri are fetched by the sidecars, not here.
    let keys_elsewhere = verdict.keys_missing;
    let (allowed, reason) = match &verdict.refusal {
        // Undecided: neither admitted nor refused.
        Some(_) if keys_elsewhere => (None, String::new()),
        None => (Some(true), verdict.audited.join(", ")),
        Some((401, why)) => (Some(false), format!("the token: {why} (401)")),
        Some((_, why)) => (Some(false), why.clone()),
    };
    Ok(serde_json::json!({
        "cluster": registry.cluster(),
        "namespace": node.namespace,
        "labels": node.labels,
        // Unset all the way up is Istio's PERMISSIVE.
        "mtls": match peer_authn.mode_for(port) {
            mesh_api::security::MtlsMode::Unset => "PERMISSIVE".to_owned(),
            mode => format!("{mode:?}").to_ascii_uppercase(),
        },
        "policies": authz.policies(),
        "allowed": allowed,
        "reason": reason,
        "jwtRules": !jwt.is_empty(),
        "requestPrincipal": verdict.request_principal,
        "undecided": keys_elsewhere.then(|| format!(
            "the token's keys come from {} (jwksUri), which the workload's sidecar fetches and discovery does not: the token was not checked here",
            jwt.uris().into_iter().collect::<Vec<_>>().join(", ")
        )),
    }))
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
