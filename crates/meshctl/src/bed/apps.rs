//! The sample apps: small HTTP servers on each workload's address. helloworld answers
//! with its version, instance and cluster; chain apps (front page → reviews → ratings)
//! call the next service through their sidecar and pass the trace context on.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;

use super::plan::Workload;

/// Headers a sample app passes on to the service it calls (trace context).
const PROPAGATE: &[&str] = &[
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "b3",
];

/// Lets a scenario make an app fail (503) and recover.
#[derive(Debug, Default)]
pub(crate) struct AppControl {
    pub(crate) failing: AtomicBool,
}

/// Serves `w` until the task is dropped.
pub(crate) async fn serve(
    w: Workload,
    cluster: String,
    control: Arc<AppControl>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((w.ip, w.port)).await?;
    let w = Arc::new(w);
    loop {
        let (tcp, _) = listener.accept().await?;
        let (w, cluster, control) = (w.clone(), cluster.clone(), control.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let (w, cluster, control) = (w.clone(), cluster.clone(), control.clone());
                async move { Ok::<_, Infallible>(answer(&w, &cluster, &control, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn response(status: u16, body: String) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp
}

async fn answer(
    w: &Workload,
    cluster: &str,
    control: &AppControl,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    if control.failing.load(Ordering::SeqCst) {
        return response(503, format!("{} is failing (testbed scenario)\n", w.name));
    }
    let Some(next) = &w.calls else {
        let body = if w.app == "helloworld" {
            format!(
                "Hello version: {}, instance: {}, cluster: {cluster}\n",
                w.version, w.name
            )
        } else {
            format!("{} {} ({cluster})\n", w.app, w.version)
        };
        return response(200, body);
    };
    let mut headers = Vec::new();
    for h in PROPAGATE {
        if let Some(v) = req.headers().get(*h) {
            headers.push((*h, v.clone()));
        }
    }
    match call(w.outbound(), next, "/", &headers).await {
        Ok((status, body)) => response(
            status,
            format!("{} {} ({cluster}) → {body}", w.app, w.version),
        ),
        Err(e) => response(
            502,
            format!("{} ({cluster}) could not call {next}: {e}\n", w.app),
        ),
    }
}

/// One GET through a sidecar's outbound listener, naming the service in Host.
pub(crate) async fn call(
    outbound: std::net::SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, http::HeaderValue)],
) -> Result<(u16, String), String> {
    mesh_proxy::http_util::request(outbound, authority, path, headers)
        .await
        .map(|(status, body)| (status.as_u16(), body))
}
