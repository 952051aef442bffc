//! A client app → sidecar A (explicit mode) → mTLS → sidecar B1/B2 → backends v1/v2, all
//! on real loopback sockets, driven by Istio documents as users write them.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use mesh_proxy::{Sidecar, StateStore};
use support::{Mesh, backend, get, opts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The config of a server-side sidecar: its own service with the backend's port.
fn server_config(version: &str, backend_port: u16) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
version: server-{version}
node: {{name: reviews-{version}, namespace: shop, serviceAccount: reviews, cluster: west, labels: {{app: reviews, version: {version}}}}}
services:
- name: reviews
  namespace: shop
  ports: [{{name: http, port: 9080, targetPort: {backend_port}}}]
"
    )
}

struct World {
    mesh: Mesh,
    servers: Vec<Sidecar>,
    client: Sidecar,
    v1_inbound: SocketAddr,
    v2_inbound: SocketAddr,
}

fn client_config(v1: SocketAddr, v2: SocketAddr, extra: &str) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
version: client-1
node: {{name: productpage-1, namespace: shop, serviceAccount: productpage, cluster: east, labels: {{app: productpage}}}}
services:
- name: reviews
  namespace: shop
  ports: [{{name: http, port: 9080}}]
  endpoints:
  - {{address: 127.0.0.1, inboundPort: {}, labels: {{app: reviews, version: v1}}, serviceAccount: reviews, cluster: west}}
  - {{address: 127.0.0.1, inboundPort: {}, labels: {{app: reviews, version: v2}}, serviceAccount: reviews, cluster: west}}
- name: ratings
  namespace: shop
  ports: [{{name: http, port: 9080}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
{extra}",
        v1.port(),
        v2.port()
    )
}

async fn world(extra: &str, v2_delay: Duration) -> World {
    let mesh = Mesh::new();
    let b1 = backend("v1", Duration::ZERO).await;
    let b2 = backend("v2", v2_delay).await;
    let mut servers = Vec::new();
    for (version, port) in [("v1", b1.port()), ("v2", b2.port())] {
        servers
            .push(support::sidecar(&mesh, &server_config(version, port), "shop", "reviews").await);
    }
    let (v1_inbound, v2_inbound) = (servers[0].inbound_addr, servers[1].inbound_addr);
    let client = support::sidecar(
        &mesh,
        &client_config(v1_inbound, v2_inbound, extra),
        "shop",
        "productpage",
    )
    .await;
    World {
        mesh,
        servers,
        client,
        v1_inbound,
        v2_inbound,
    }
}

#[tokio::test]
async fn default_route_reaches_both_versions_over_mtls_with_caller_identity() {
    let w = world("", Duration::ZERO).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, body) = get(w.client.outbound_addr, "reviews:9080", "/reviews/1", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("xfcc=By=spiffe://mesh.example/ns/shop/sa/reviews;URI=spiffe://mesh.example/ns/shop/sa/productpage"), "{body}");
        seen.insert(body.split(' ').next().unwrap().to_owned());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["v1", "v2"],
        "round robin over both endpoints"
    );
}

#[tokio::test]
async fn canary_90_10_split_holds_within_tolerance() {
    let w = world(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
",
        Duration::ZERO,
    )
    .await;
    let n = 400;
    let mut v2 = 0;
    for _ in 0..n {
        let (status, body) = get(
            w.client.outbound_addr,
            "reviews.shop.svc.cluster.local:9080",
            "/",
            &[],
        )
        .await;
        assert_eq!(status, 200);
        if body.starts_with("v2") {
            v2 += 1;
        }
    }
    // Expected 40, standard deviation 6: 4 sigma either side.
    assert!((16..=64).contains(&v2), "v2 got {v2} of {n}");
}

#[tokio::test]
async fn header_match_rewrite_and_edits_route_as_istio_does() {
    let w = world(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
    headers:
      request: {set: {x-user: jason-was-here}}
  - match:
    - uri: {prefix: /api/v1/}
    rewrite: {uri: /}
    route:
    - destination: {host: reviews, subset: v1}
  - match:
    - uri: {exact: /old}
    redirect: {uri: /new, redirectCode: 302}
  - match:
    - uri: {regex: \"/health(z)?\"}
    directResponse: {status: 200, body: {string: healthy}}
  - route:
    - destination: {host: reviews, subset: v1}
",
        Duration::ZERO,
    )
    .await;
    let a = w.client.outbound_addr;
    let (_, body) = get(a, "reviews:9080", "/x", &[("end-user", "jason")]).await;
    assert!(
        body.starts_with("v2") && body.contains("x-user=jason-was-here"),
        "{body}"
    );
    let (_, body) = get(a, "reviews:9080", "/x", &[("end-user", "alice")]).await;
    assert!(
        body.starts_with("v1") && body.contains("x-user=-"),
        "{body}"
    );
    let (_, body) = get(a, "reviews:9080", "/api/v1/reviews/7?full=1", &[]).await;
    assert!(body.contains("path=/reviews/7?full=1"), "{body}");
    let (status, _) = get(a, "reviews:9080", "/old", &[]).await;
    assert_eq!(status, 302);
    let (status, body) = get(a, "reviews:9080", "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "healthy"));
}

#[tokio::test]
async fn failures_never_hang_and_answer_with_the_right_status() {
    let w = world(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /slow}}]
    route: [{destination: {host: reviews, subset: v2}}]
    timeout: 200ms
  - match: [{uri: {prefix: /v3}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - match: [{uri: {prefix: /nosubset}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - match: [{uri: {prefix: /fine}}]
    route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
",
        Duration::from_secs(5),
    )
    .await;
    let a = w.client.outbound_addr;
    let t = std::time::Instant::now();
    assert_eq!(
        get(a, "reviews:9080", "/slow", &[]).await.0,
        504,
        "UT: timeout"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(
        get(a, "reviews:9080", "/other", &[]).await.0,
        404,
        "NR: no route matches"
    );
    assert_eq!(
        get(a, "nosuch:80", "/", &[]).await.0,
        404,
        "NR: unknown service"
    );
    assert_eq!(
        get(a, "reviews:9080", "/v3", &[]).await.0,
        503,
        "UH: subset without endpoints"
    );
    let (status, body) = get(a, "reviews:9080", "/nosubset", &[]).await;
    assert_eq!(status, 503, "UH: undefined subset");
    assert!(body.contains("subset \"v9\""), "{body}");
    assert_eq!(
        get(a, "ratings:9080", "/", &[]).await.0,
        503,
        "UH: service without endpoints"
    );
    assert_eq!(get(a, "reviews:9080", "/fine", &[]).await.0, 200);
    let _ = (w.v1_inbound, w.v2_inbound);
}

#[tokio::test]
async fn connect_failure_is_503() {
    let w = world("", Duration::ZERO).await;
    // Point every endpoint at a closed port.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = client_config(closed, closed, "");
    w.client.store.apply_yaml(&yaml, "test").unwrap();
    let (status, body) = get(w.client.outbound_addr, "reviews:9080", "/", &[]).await;
    assert_eq!(status, 503, "UF");
    assert!(
        body.contains("Connection refused") || body.contains("refused"),
        "{body}"
    );
}

#[tokio::test]
async fn a_bad_config_update_is_rejected_while_traffic_keeps_flowing() {
    let w = world(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
",
        Duration::ZERO,
    )
    .await;
    let a = w.client.outbound_addr;
    let load = tokio::spawn(async move {
        let mut ok = 0;
        for _ in 0..100 {
            let (status, body) = get(a, "reviews:9080", "/", &[]).await;
            assert_eq!(status, 200, "{body}");
            assert!(body.starts_with("v1"), "{body}");
            ok += 1;
        }
        ok
    });
    let bad = client_config(
        w.v1_inbound,
        w.v2_inbound,
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}], timeout: soon}]
",
    );
    let err = w
        .client
        .store
        .apply_yaml(&bad, "reviews.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("VirtualService shop/reviews: spec.http[0].timeout: invalid duration"),
        "{err}"
    );
    assert!(w.client.store.last_rejection().is_some());
    assert_eq!(
        w.client.store.snapshot().version,
        "client-1",
        "the last good config stays"
    );
    assert_eq!(load.await.unwrap(), 100, "no request failed");
}

#[tokio::test]
async fn inbound_refuses_plaintext_and_untrusted_callers() {
    let w = world("", Duration::ZERO).await;
    // Plaintext HTTP straight at a sidecar's inbound port: closed without a response.
    let mut tcp = TcpStream::connect(w.v1_inbound).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("v1"),
        "plaintext must not reach the app"
    );

    // A sidecar with a certificate from another root cannot reach it either.
    let rogue = Mesh::new();
    let intruder = support::sidecar(
        &rogue,
        &client_config(w.v1_inbound, w.v2_inbound, ""),
        "shop",
        "productpage",
    )
    .await;
    let (status, body) = get(intruder.outbound_addr, "reviews:9080", "/", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("does not reach a trusted root"), "{body}");
}

/// The sum of the samples of `metric` whose labels contain every `labels` pair.
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> u64 {
    mesh_telemetry::metrics::sum_of(text, metric, labels) as u64
}

#[tokio::test]
async fn metrics_move_with_istio_names_and_admin_reports_the_state() {
    let w = world("", Duration::ZERO).await;
    let admin = w.client.admin_addrs[0];
    assert_eq!(get(admin, "admin", "/healthz/ready", &[]).await.0, 200);
    for _ in 0..6 {
        assert_eq!(
            get(w.client.outbound_addr, "reviews:9080", "/r", &[])
                .await
                .0,
            200
        );
    }
    assert_eq!(
        get(w.client.outbound_addr, "nosuch:80", "/", &[]).await.0,
        404
    );

    let (_, client_metrics) = get(admin, "admin", "/stats/prometheus", &[]).await;
    let ok = [
        ("reporter", "source"),
        ("source_workload", "productpage-1"),
        ("source_cluster", "east"),
        ("destination_cluster", "west"),
        ("destination_service", "reviews.shop.svc.cluster.local"),
        ("response_code", "200"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        sample(&client_metrics, "istio_requests_total", &ok),
        6,
        "{client_metrics}"
    );
    assert_eq!(
        sample(
            &client_metrics,
            "istio_requests_total",
            &[("response_code", "404"), ("response_flags", "NR")]
        ),
        1
    );
    assert!(client_metrics.contains("istio_request_duration_milliseconds_bucket{"));

    // The server side reports the same requests, knowing the caller's cluster.
    let mut served = 0;
    for server in &w.servers {
        let (_, m) = get(server.admin_addrs[0], "admin", "/stats/prometheus", &[]).await;
        served += sample(
            &m,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("source_workload", "productpage-1"),
                ("source_cluster", "east"),
                (
                    "source_principal",
                    "spiffe://mesh.example/ns/shop/sa/productpage",
                ),
                ("destination_cluster", "west"),
            ],
        );
    }
    assert_eq!(served, 6);

    // config_dump: version, routes, and the last rejection once a bad update came in.
    let (_, dump) = get(admin, "admin", "/config_dump", &[]).await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], "client-1");
    assert_eq!(
        dump["identity"]["spiffe_id"],
        "spiffe://mesh.example/ns/shop/sa/productpage"
    );
    assert!(dump["last_rejection"].is_null());
    let _ = w.client.store.apply_yaml(
        "apiVersion: isthmus.dev/v1alpha1\nkind: ProxyConfig\n",
        "bad.yaml",
    );
    let (_, dump) = get(admin, "admin", "/config_dump", &[]).await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["version"], "client-1",
        "the last good config is still in force"
    );
    assert!(
        dump["last_rejection"]
            .as_str()
            .unwrap()
            .contains("bad.yaml"),
        "{dump}"
    );
}

#[tokio::test]
async fn not_ready_before_the_first_config() {
    let mesh = Mesh::new();
    let sidecar = Sidecar::start(
        Arc::new(StateStore::default()),
        mesh.identity("shop", "a"),
        opts(),
    )
    .await
    .unwrap();
    assert_eq!(
        get(sidecar.admin_addrs[0], "admin", "/healthz/ready", &[])
            .await
            .0,
        503
    );
    sidecar
        .store
        .apply_yaml("apiVersion: isthmus.dev/v1alpha1\nkind: ProxyConfig\nnode: {name: a, namespace: shop}\n", "t")
        .unwrap();
    assert_eq!(
        get(sidecar.admin_addrs[0], "admin", "/healthz/ready", &[])
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn drain_lets_requests_in_flight_finish_and_refuses_new_ones() {
    let mut w = world(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
",
        Duration::from_millis(400),
    )
    .await;
    let out = w.client.outbound_addr;
    let slow = tokio::spawn(async move { get(out, "reviews:9080", "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let left = w.client.drain(Duration::from_secs(5)).await;
    assert_eq!(left, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "drain waited for the request"
    );
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        TcpStream::connect(out).await.is_err(),
        "no new connections after drain"
    );
}

/// Re-applies each server sidecar's config with `policies` added.
fn with_server_policies(w: &World, policies: &str) -> Result<(), String> {
    for (server, version) in w.servers.iter().zip(["v1", "v2"]) {
        let state = server.store.snapshot();
        let port = state.services["reviews.shop.svc.cluster.local"].ports[0].target_port;
        server
            .store
            .apply_yaml(
                &format!("{}{policies}", server_config(version, port)),
                "server",
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::test]
async fn authorization_policy_allows_denies_and_deny_wins() {
    let w = world("", Duration::ZERO).await;
    let a = w.client.outbound_addr;
    with_server_policies(
        &w,
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [\"mesh.example/ns/shop/sa/productpage\"]}}]
    to: [{operation: {methods: [GET], paths: [\"/reviews/*\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block-mallory, namespace: shop}
spec:
  action: DENY
  rules:
  - when: [{key: \"request.headers[x-user]\", values: [mallory]}]
",
    )
    .unwrap();
    assert_eq!(get(a, "reviews:9080", "/reviews/1", &[]).await.0, 200);
    let (status, body) = get(a, "reviews:9080", "/admin", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let (status, _) = get(a, "reviews:9080", "/reviews/1", &[("x-user", "mallory")]).await;
    assert_eq!(status, 403, "DENY is evaluated before ALLOW");
    // Denied requests are recorded where they were denied, as Istio records them.
    let mut denied = 0;
    for server in &w.servers {
        let (_, m) = get(server.admin_addrs[0], "admin", "/stats/prometheus", &[]).await;
        denied += sample(
            &m,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("response_code", "403"),
                ("response_flags", "UAEX"),
            ],
        );
    }
    assert_eq!(denied, 2, "both denials are counted");

    // An ALLOW policy without rules allows nothing.
    with_server_policies(
        &w,
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: shop}
spec: {}
",
    )
    .unwrap();
    assert_eq!(get(a, "reviews:9080", "/reviews/1", &[]).await.0, 403);

    // CUSTOM needs an external authorizer this proxy does not have: refused, and the
    // last good policy set stays.
    let err = with_server_policies(
        &w,
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}
",
    )
    .unwrap_err();
    assert!(
        err.contains("AuthorizationPolicy shop/ext")
            && err.contains("spec.action: CUSTOM is not supported"),
        "{err}"
    );
    assert_eq!(
        get(a, "reviews:9080", "/reviews/1", &[]).await.0,
        403,
        "allow-nothing still in force"
    );
}

#[tokio::test]
async fn authorization_by_service_account_and_normalized_path() {
    let w = world("", Duration::ZERO).await;
    let a = w.client.outbound_addr;
    // The same client config under another identity: shop/mallory.
    let mallory = support::sidecar(
        &w.mesh,
        &client_config(w.v1_inbound, w.v2_inbound, ""),
        "shop",
        "mallory",
    )
    .await;
    let m = mallory.outbound_addr;
    let deny_admin = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]
";
    with_server_policies(
        &w,
        &format!(
            "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: productpage-only, namespace: shop}}
spec:
  rules: [{{from: [{{source: {{serviceAccounts: [shop/productpage]}}}}]}}]
{deny_admin}"
        ),
    )
    .unwrap();
    let (status, body) = get(a, "reviews:9080", "/reviews/./1", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("path=/reviews/1 "),
        "the app sees the normalized path: {body}"
    );
    assert_eq!(
        get(m, "reviews:9080", "/reviews/1", &[]).await.0,
        403,
        "shop/mallory is not shop/productpage"
    );
    for bypass in [
        "/admin",
        "/x/../admin",
        "/%61dmin",
        "/%2e%2e/admin/users",
        "/reviews\\..\\admin",
    ] {
        let (status, body) = get(a, "reviews:9080", bypass, &[]).await;
        assert_eq!(
            status, 403,
            "{bypass} must meet the DENY on /admin*: {body}"
        );
    }

    // Istio's own example of a service account no caller has.
    with_server_policies(
        &w,
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {serviceAccounts: [sample/nobody]}}]}]
",
    )
    .unwrap();
    assert_eq!(get(a, "reviews:9080", "/reviews/1", &[]).await.0, 403);
    assert_eq!(get(m, "reviews:9080", "/reviews/1", &[]).await.0, 403);
}

/// A backend that answers 503 to every other request.
async fn flaky_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async move {
                            let mut resp = http::Response::new(Full::new(Bytes::from(
                                if n.is_multiple_of(2) { "flaky" } else { "fine" },
                            )));
                            if n.is_multiple_of(2) {
                                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn retries_hide_a_flaky_backend() {
    let mesh = Mesh::new();
    let app = flaky_backend().await;
    let server = support::sidecar(&mesh, &server_config("v1", app.port()), "shop", "reviews").await;
    let vs = |retries: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
    retries: {retries}
"
        )
    };
    let inbound = server.inbound_addr;
    let client = support::sidecar(
        &mesh,
        &client_config(
            inbound,
            inbound,
            &vs("{attempts: 3, perTryTimeout: 1s, retryOn: 5xx}"),
        ),
        "shop",
        "productpage",
    )
    .await;
    for _ in 0..20 {
        let (status, body) = get(client.outbound_addr, "reviews:9080", "/", &[]).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "fine"),
            "retries hide every 503"
        );
    }
    // Without retries the flakiness shows.
    client
        .store
        .apply_yaml(
            &client_config(inbound, inbound, &vs("{attempts: 0}")),
            "client",
        )
        .unwrap();
    let mut failed = 0;
    for _ in 0..20 {
        if get(client.outbound_addr, "reviews:9080", "/", &[]).await.0 == 503 {
            failed += 1;
        }
    }
    assert_eq!(failed, 10);
}

#[tokio::test]
async fn fault_injection_delays_and_aborts_by_percentage() {
    let w = world(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault:
      delay: {percentage: {value: 100}, fixedDelay: 300ms}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /half}}]
    fault:
      abort: {percentage: {value: 50}, httpStatus: 418}
    route: [{destination: {host: reviews, subset: v1}}]
  - fault:
      abort: {httpStatus: 500}
    route: [{destination: {host: reviews, subset: v1}}]
",
        Duration::ZERO,
    )
    .await;
    let a = w.client.outbound_addr;
    let t = std::time::Instant::now();
    let (status, body) = get(a, "reviews:9080", "/", &[("end-user", "jason")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "delayed by the fault"
    );

    let (status, body) = get(a, "reviews:9080", "/", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (500, "fault filter abort"),
        "no percentage means every request"
    );

    let mut aborted = 0;
    for _ in 0..200 {
        if get(a, "reviews:9080", "/half", &[]).await.0 == 418 {
            aborted += 1;
        }
    }
    // Expected 100, standard deviation about 7: 4 sigma either side.
    assert!((72..=128).contains(&aborted), "aborted {aborted} of 200");
}

#[tokio::test]
async fn mirroring_copies_the_configured_share_and_answers_from_the_primary() {
    let w = world(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 50.0}
",
        Duration::ZERO,
    )
    .await;
    for _ in 0..200 {
        let (status, body) = get(w.client.outbound_addr, "reviews:9080", "/", &[]).await;
        assert_eq!(status, 200);
        assert!(
            body.starts_with("v1"),
            "answers come from the primary: {body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, m) = get(
        w.servers[1].admin_addrs[0],
        "admin",
        "/stats/prometheus",
        &[],
    )
    .await;
    let mirrored = sample(
        &m,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            (
                "destination_service",
                "reviews.shop.svc.cluster.local-shadow",
            ),
        ],
    );
    // Expected 100, standard deviation about 7: 4 sigma either side.
    assert!(
        (72..=128).contains(&mirrored),
        "mirrored {mirrored} of 200: {m}"
    );
}

#[tokio::test]
async fn connection_pool_limits_trip_the_circuit_breaker() {
    let w = world(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}], retries: {attempts: 0}}]
",
        Duration::from_millis(400),
    )
    .await;
    // The tutorial's limits on the reviews DestinationRule: one request in flight,
    // one waiting.
    let limited = client_config(
        w.v1_inbound,
        w.v2_inbound,
        "  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}], retries: {attempts: 0}}]
",
    );
    w.client.store.apply_yaml(&limited, "client").unwrap();
    let out = w.client.outbound_addr;
    let calls: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(out, "reviews:9080", "/", &[]).await }))
        .collect();
    let (mut ok, mut overflow) = (0, 0);
    for c in calls {
        let (status, body) = c.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert!(body.contains("connection pool"), "{body}");
                overflow += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        (ok, overflow),
        (2, 3),
        "one in flight, one pending, three overflow"
    );
    assert_eq!(
        get(out, "reviews:9080", "/", &[]).await.0,
        200,
        "slots are released"
    );
}

#[tokio::test]
async fn consistent_hash_keeps_a_user_on_one_endpoint() {
    let w = world("", Duration::ZERO).await;
    let sticky = client_config(
        w.v1_inbound,
        w.v2_inbound,
        "  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
",
    );
    w.client.store.apply_yaml(&sticky, "client").unwrap();
    let out = w.client.outbound_addr;
    let mut versions_by_user = std::collections::BTreeMap::new();
    let users: Vec<String> = (0..16).map(|i| format!("user-{i}")).collect();
    for user in &users {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let (status, body) = get(out, "reviews:9080", "/", &[("x-user", user.as_str())]).await;
            assert_eq!(status, 200);
            seen.insert(body.split(' ').next().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 1, "{user} stays on one endpoint: {seen:?}");
        versions_by_user.insert(user.clone(), seen.into_iter().next().unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = versions_by_user.values().collect();
    assert_eq!(
        distinct.len(),
        2,
        "users spread over both endpoints: {versions_by_user:?}"
    );
}

#[tokio::test]
async fn an_http_cookie_with_a_ttl_is_generated_and_keeps_the_client_on_one_endpoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world("", Duration::ZERO).await;
    let sticky = client_config(
        w.v1_inbound,
        w.v2_inbound,
        "  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: session, ttl: 60s, path: /}}
",
    );
    w.client.store.apply_yaml(&sticky, "client").unwrap();
    let out = w.client.outbound_addr;
    // Raw HTTP/1.1, to read the Set-Cookie header.
    let raw = |cookie: Option<String>| async move {
        let mut s = TcpStream::connect(out).await.unwrap();
        let cookie = cookie
            .map(|c| format!("cookie: {c}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!("GET / HTTP/1.1\r\nhost: reviews:9080\r\n{cookie}connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    };
    let mut versions = std::collections::BTreeSet::new();
    // 16 clients: the chance that all land on one endpoint is 2 in 65,536.
    for _ in 0..16 {
        // A client without the cookie gets one ...
        let first = raw(None).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let set = first
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("no Set-Cookie: {first}"));
        assert!(
            set.contains("Max-Age=60") && set.contains("Path=/"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_owned();
        let version = |t: &str| {
            t.split("\r\n\r\n")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        let pinned = version(&first);
        // ... and with it stays where its first request went, without a new cookie.
        for _ in 0..3 {
            let again = raw(Some(cookie.clone())).await;
            assert_eq!(version(&again), pinned, "{cookie} moved");
            assert!(!again.contains("set-cookie"), "{again}");
        }
        versions.insert(pinned);
    }
    assert_eq!(versions.len(), 2, "new clients spread over both endpoints");
}

/// A TCP relay to `to` that counts the connections it accepts.
async fn counting_relay(to: SocketAddr) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn max_requests_per_connection_and_idle_timeout_renew_upstream_connections() {
    use std::sync::atomic::Ordering;
    let w = world("", Duration::ZERO).await;
    let (r1, c1) = counting_relay(w.v1_inbound).await;
    let (r2, c2) = counting_relay(w.v2_inbound).await;
    let connections = || c1.load(Ordering::SeqCst) + c2.load(Ordering::SeqCst);
    let out = w.client.outbound_addr;
    let apply = |pool: &str| {
        let policy = format!(
            "  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
{pool}"
        );
        w.client
            .store
            .apply_yaml(&client_config(r1, r2, &policy), "client")
            .unwrap();
    };
    // Unlimited: one HTTP/2 connection per endpoint carries every request.
    apply("");
    for _ in 0..12 {
        assert_eq!(get(out, "reviews:9080", "/", &[]).await.0, 200);
    }
    assert_eq!(connections(), 2);
    // maxRequestsPerConnection 2: a new connection every second request per endpoint.
    apply("    connectionPool: {http: {maxRequestsPerConnection: 2}}\n");
    let before = connections();
    for _ in 0..12 {
        assert_eq!(get(out, "reviews:9080", "/", &[]).await.0, 200);
    }
    assert!(
        connections() - before >= 5,
        "{} new connections",
        connections() - before
    );
    // idleTimeout: a connection unused for longer is replaced.
    apply("    connectionPool: {http: {idleTimeout: 200ms}}\n");
    for _ in 0..2 {
        assert_eq!(get(out, "reviews:9080", "/", &[]).await.0, 200);
    }
    let before = connections();
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..2 {
        assert_eq!(get(out, "reviews:9080", "/", &[]).await.0, 200);
    }
    assert_eq!(
        connections() - before,
        2,
        "both idle connections were replaced"
    );
}

#[tokio::test]
async fn tls_disable_sends_plain_http_to_a_workload_without_a_sidecar() {
    let w = world("", Duration::ZERO).await;
    // A legacy service: no sidecar, its app listens on its own port.
    let legacy = backend("legacy", Duration::ZERO).await;
    let config = format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: productpage-1, namespace: shop, serviceAccount: productpage}}
services:
- name: legacy
  namespace: shop
  ports: [{{name: http, port: 8000, targetPort: {}}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: legacy, namespace: shop}}
spec:
  host: legacy
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
",
        legacy.port()
    );
    w.client.store.apply_yaml(&config, "client").unwrap();
    let (status, body) = get(w.client.outbound_addr, "legacy:8000", "/old", &[]).await;
    assert_eq!(status, 200, "{body}");
    // Plain HTTP to the app itself: no client certificate reached it.
    assert!(
        body.starts_with("legacy path=/old") && body.ends_with("xfcc=-"),
        "{body}"
    );

    // Without DISABLE the proxy insists on mTLS to a sidecar (there is none): 503.
    w.client
        .store
        .apply_yaml(
            &config.replace("trafficPolicy: {tls: {mode: DISABLE}}", "trafficPolicy: {}"),
            "client",
        )
        .unwrap();
    let (status, _) = get(w.client.outbound_addr, "legacy:8000", "/old", &[]).await;
    assert_eq!(status, 503);
}
