//! The sample apps: small HTTP servers on each workload's address. helloworld answers
//! with its version, instance and cluster; chain apps (front page → reviews → ratings)
//! call the next service through their sidecar and pass the trace context on.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;

use super::plan::{Cluster, Plan, Workload};

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

/// One running sample app: what it is, where it runs and where it sends its calls.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) workload: Workload,
    pub(crate) cluster: String,
    /// Where it connects for the service it calls (see [`Plan::dial`]).
    pub(crate) next: Option<std::net::SocketAddr>,
    pub(crate) control: Arc<AppControl>,
}

/// Serves `app` until the task is dropped. In a pod it listens on all of the pod's
/// addresses (its sidecar forwards to 127.0.0.1), on loopback on its own address.
pub(crate) async fn serve(app: App) -> anyhow::Result<()> {
    let w = &app.workload;
    let ip = match w.pod {
        Some(_) => std::net::IpAddr::from([0, 0, 0, 0]),
        None => w.ip,
    };
    let listener = tokio::net::TcpListener::bind((ip, w.port)).await?;
    let app = Arc::new(app);
    loop {
        let (tcp, _) = listener.accept().await?;
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(answer(&app, req).await) }
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

async fn answer(app: &App, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    let (w, cluster) = (&app.workload, &app.cluster);
    if app.control.failing.load(Ordering::SeqCst) {
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
    let dial = app.next.unwrap_or_else(|| w.outbound());
    match call(dial, next, "/", &headers).await {
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

/// One GET from workload `w` of cluster `c` to `authority` (a service name, as in a
/// pod), blocking: inside the workload's pod when it has one (through the capture
/// rules), else through its sidecar's outbound listener.
pub(crate) fn get_from(
    plan: &Plan,
    c: &Cluster,
    w: &Workload,
    authority: &str,
    path: &str,
    traceparent: Option<&str>,
) -> Result<(u16, String), String> {
    let dial = plan.dial(c, w, authority);
    // In a pod, a name that has no Service in this cluster (or a clusterset name) is
    // looked up as an app would: through the pod's DNS, which the sidecar's DNS proxy
    // answers (a service of another cluster resolves with no stub Service here).
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(80)),
        None => (authority, 80),
    };
    let short = host.split('.').next().unwrap_or(host);
    let clusterset = mesh_api::mcs::parse_clusterset_host(host).is_some();
    let lookup = (w.pod.is_some() && (clusterset || !c.services.contains_key(short))).then(|| {
        let fqdn = if host.contains('.') {
            host.to_owned()
        } else {
            format!("{host}.{}.svc.cluster.local", super::plan::NAMESPACE)
        };
        (fqdn, port)
    });
    let (authority, path) = (authority.to_owned(), path.to_owned());
    let headers: Vec<(&'static str, http::HeaderValue)> = traceparent
        .and_then(|t| http::HeaderValue::from_str(t).ok())
        .map(|v| ("traceparent", v))
        .into_iter()
        .collect();
    let send = move || {
        let dial = match &lookup {
            Some((name, port)) => std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), *port))
                .map_err(|e| format!("{name}: {e}"))?
                .next()
                .ok_or_else(|| format!("{name}: no address"))?,
            None => dial,
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(call(dial, &authority, &path, &headers))
    };
    match &w.pod {
        Some(pod) => testbed::netns::spawn_in(pod, send)
            .map_err(|e| format!("{e:#}"))?
            .join()
            .map_err(|_| "the request thread panicked".to_owned())?,
        None => send(),
    }
}

/// One GET to `addr` (a sidecar's outbound listener, or a ClusterIP in a pod),
/// naming the service in Host.
pub(crate) async fn call(
    outbound: std::net::SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, http::HeaderValue)],
) -> Result<(u16, String), String> {
    mesh_net::http::request(outbound, authority, path, headers)
        .await
        .map(|(status, body)| (status.as_u16(), body))
        .map_err(String::from)
}
