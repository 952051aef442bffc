//! ServiceEntry through real sidecars: a STATIC entry outside the mesh is routed by
//! VirtualService and DestinationRule as a Service is (subsets, faults, the endpoint's
//! own ports), reached in the clear without mesh headers; a MESH_INTERNAL entry goes
//! over mesh mTLS to its endpoint's sidecar; a DNS entry follows its name's answers
//! (served by a DNS server of the test) and keeps the last one when lookups fail;
//! what the entry asks that cannot be honoured is refused with the last good config
//! kept.

mod support;

use std::net::{IpAddr, SocketAddr};

use support::Mesh;
use tokio::net::TcpListener;

/// What the test backends report: the Host they were asked for, the mesh's peer
/// header and the caller identity header (`-` when absent).
const SEEN: &[&str] = &["host", "x-isthmus-peer", "x-forwarded-client-cert"];

/// A backend outside the mesh, reporting [`SEEN`]; its port.
async fn echo(name: &'static str) -> u16 {
    support::header_echo(name, "127.0.0.1:0".parse().unwrap(), SEEN)
        .await
        .port()
}

async fn get(sidecar: SocketAddr, host: &str, path: &str) -> (u16, String) {
    support::get(sidecar, host, path, &[]).await
}

const NODE: &str = "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: productpage-1, namespace: shop, serviceAccount: productpage}
";

#[tokio::test]
async fn a_static_entry_routes_outside_the_mesh_with_subsets_and_faults() {
    let mesh = Mesh::new();
    let (a, b) = (echo("legacy-a").await, echo("legacy-b").await);
    // Two endpoints with their own port for `http`; `http-alt` has none, so its
    // targetPort (b's) is used on either endpoint.
    let entry = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy, namespace: shop}}
spec:
  hosts: [legacy.internal.example]
  addresses: [240.0.0.10]
  location: MESH_EXTERNAL
  ports:
  - {{number: 5000, name: http, protocol: HTTP}}
  - {{number: 5001, name: http-alt, protocol: HTTP, targetPort: {b}}}
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {a}}}, labels: {{version: a}}}}
  - {{address: 127.0.0.1, ports: {{http: {b}}}, labels: {{version: b}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: legacy, namespace: shop}}
spec:
  host: legacy.internal.example
  subsets:
  - {{name: a, labels: {{version: a}}}}
  - {{name: b, labels: {{version: b}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: legacy, namespace: shop}}
spec:
  hosts: [legacy.internal.example]
  http:
  - match: [{{uri: {{prefix: /teapot}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: legacy.internal.example, subset: a}}}}]
  - match: [{{uri: {{prefix: /b}}}}]
    route: [{{destination: {{host: legacy.internal.example, subset: b}}}}]
  - route: [{{destination: {{host: legacy.internal.example, subset: a}}}}]
"
    );
    let config = format!("{NODE}{entry}");
    let client = support::sidecar(&mesh, &config, "shop", "productpage").await;
    let out = client.outbound_addr;

    // The default route: subset a, in the clear, with the host as the app asked for it
    // and no mesh header or caller identity leaving the mesh.
    for _ in 0..5 {
        let (status, body) = get(out, "legacy.internal.example:5000", "/").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            "legacy-a host=legacy.internal.example:5000 x-isthmus-peer=- x-forwarded-client-cert=-"
        );
    }
    // A header-free match picks subset b; a fault answers for the entry's host.
    let (_, body) = get(out, "legacy.internal.example:5000", "/b/1").await;
    assert!(body.starts_with("legacy-b "), "{body}");
    let (status, _) = get(out, "legacy.internal.example:5000", "/teapot").await;
    assert_eq!(status, 418);
    // Port 5001 has no port of its own on endpoint a: its targetPort is used.
    let (_, body) = get(out, "legacy.internal.example:5001", "/").await;
    assert!(body.starts_with("legacy-b "), "{body}");
    // Captured connections find the entry by its address.
    let state = client.store.snapshot();
    let by_ip = state.service_for_ip("240.0.0.10".parse::<IpAddr>().unwrap());
    assert_eq!(
        by_ip.map(|s| s.name.as_str()),
        Some("legacy.internal.example")
    );
    // A host no entry lists is still unknown.
    let (status, _) = get(out, "nothing.internal.example:5000", "/").await;
    assert_eq!(status, 404);

    // An entry that cannot be honoured (resolution NONE with endpoints) is refused by
    // field, and the last good config keeps routing.
    let refused = client
        .store
        .apply_yaml(
            &config.replace("resolution: STATIC", "resolution: NONE"),
            "edit",
        )
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("spec.endpoints: resolution NONE takes no endpoints"),
        "{refused}"
    );
    let (status, _) = get(out, "legacy.internal.example:5000", "/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_mesh_internal_entry_goes_over_mtls_to_its_sidecar() {
    let mesh = Mesh::new();
    let app = echo("vm").await;
    // The endpoint's sidecar takes mesh traffic on 15006 of its own address: a
    // loopback address of this test's own.
    let ip: IpAddr = format!("127.0.{}.{}", rand_octet(), rand_octet())
        .parse()
        .unwrap();
    let entry = |target: u16| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: vm, namespace: shop}}
spec:
  hosts: [vm.mesh.example]
  location: MESH_INTERNAL
  ports: [{{number: 5000, name: http, protocol: HTTP, targetPort: {target}}}]
  resolution: STATIC
  endpoints: [{{address: {ip}, serviceAccount: legacy}}]
"
        )
    };
    let server_config = format!(
        "apiVersion: isthmus.dev/v1alpha1\nkind: ProxyConfig\nnode: {{name: vm-1, namespace: shop, serviceAccount: legacy}}\n{}",
        entry(app)
    );
    let store = std::sync::Arc::new(mesh_proxy::StateStore::default());
    store.apply_yaml(&server_config, "test").unwrap();
    let mut options = support::opts();
    options.inbound = SocketAddr::new(ip, mesh_proxy::config::INBOUND_PORT);
    let _server = mesh_proxy::Sidecar::start(store, mesh.identity("shop", "legacy"), options)
        .await
        .unwrap();
    let client = support::sidecar(
        &mesh,
        &format!("{NODE}{}", entry(5000)),
        "shop",
        "productpage",
    )
    .await;

    let (status, body) = get(client.outbound_addr, "vm.mesh.example:5000", "/").await;
    assert_eq!(status, 200, "{body}");
    // The sidecar in front of the VM verified the caller's certificate and names it.
    assert!(
        body.contains(
            "x-forwarded-client-cert=By=spiffe://mesh.example/ns/shop/sa/legacy;URI=spiffe://mesh.example/ns/shop/sa/productpage"
        ),
        "{body}"
    );

    // subjectAltNames: the endpoint must present one of these identities. Its
    // own is accepted; one it does not have fails the connection, naming both.
    let client_config = |sans: &str| format!("{NODE}{}  subjectAltNames: [{sans}]\n", entry(5000));
    client
        .store
        .apply_yaml(
            &client_config("spiffe://mesh.example/ns/shop/sa/legacy"),
            "sans",
        )
        .unwrap();
    let (status, body) = get(client.outbound_addr, "vm.mesh.example:5000", "/").await;
    assert_eq!(status, 200, "{body}");
    client
        .store
        .apply_yaml(
            &client_config("spiffe://mesh.example/ns/shop/sa/db"),
            "sans",
        )
        .unwrap();
    // The connection pooled under the old names is not reused: the next one fails.
    let (status, body) = get(client.outbound_addr, "vm.mesh.example:5000", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("the peer is spiffe://mesh.example/ns/shop/sa/legacy, which is not one of the subjectAltNames"),
        "{body}"
    );
}

#[tokio::test]
async fn a_dns_entry_follows_its_name_and_keeps_the_last_answer() {
    let mesh = Mesh::new();
    // Two backends on one port of two loopback addresses: the name's answer decides.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let octet = rand_octet();
    let (first, second) = (
        std::net::Ipv4Addr::new(127, 0, octet, 1),
        std::net::Ipv4Addr::new(127, 0, octet, 2),
    );
    support::header_echo("first", SocketAddr::from((first, port)), &[]).await;
    support::header_echo("second", SocketAddr::from((second, port)), &[]).await;
    let answer: support::Answer = std::sync::Arc::new(std::sync::Mutex::new(Some(first)));
    let dns = support::dns_server(answer.clone()).await;

    // No endpoints listed: the host itself is resolved.
    let config = format!(
        "{NODE}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: shop}}
spec:
  hosts: [api.test.example]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: DNS
"
    );
    let (store, sidecar) = resolving_sidecar(&mesh, dns, &config).await;
    let out = sidecar.outbound_addr;
    let answers = |want: &'static str| async move {
        for _ in 0..100 {
            let (status, body) = get(out, "api.test.example", "/").await;
            if status == 200 && body == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{want} never answered");
    };
    answers("first").await;

    // The name moves: once its 1 s TTL runs out, requests follow it.
    *answer.lock().unwrap() = Some(second);
    answers("second").await;

    // The DNS server fails: the last answer stays in use, and the failure is reported.
    *answer.lock().unwrap() = None;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    for _ in 0..5 {
        assert_eq!(
            get(out, "api.test.example", "/").await,
            (200, "second".to_owned())
        );
    }
    let report = store.dns().report();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].0, "api.test.example");
    assert_eq!(report[0].1, [IpAddr::from(second)]);
    assert!(
        report[0].2.is_some(),
        "the failed lookup is reported: {report:?}"
    );
}

/// The productpage sidecar running `config`, its ServiceEntry names resolved by the
/// test's DNS server `dns`; and its store.
async fn resolving_sidecar(
    mesh: &Mesh,
    dns: SocketAddr,
    config: &str,
) -> (std::sync::Arc<mesh_proxy::StateStore>, mesh_proxy::Sidecar) {
    let store = std::sync::Arc::new(mesh_proxy::StateStore::with_resolvers(
        Default::default(),
        mesh_proxy::dns::Resolvers::Servers(vec![dns]),
    ));
    store.apply_yaml(config, "test").unwrap();
    let sidecar = mesh_proxy::Sidecar::start(
        store.clone(),
        mesh.identity("shop", "productpage"),
        support::opts(),
    )
    .await
    .unwrap();
    (store, sidecar)
}

fn rand_octet() -> u8 {
    rand::random_range(2..250)
}

/// A backend on `addr` that answers 503 to every other request and 200 `ok` to the
/// rest.
async fn flaky(addr: SocketAddr) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = TcpListener::bind(addr).await.unwrap();
    let count = std::sync::Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        ));
                        if n.is_multiple_of(2) {
                            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

/// A DNS-resolved entry is routed by its VirtualService like any service: a backend
/// that fails every other request is answered 200 every time with retries, and half
/// the time without.
#[tokio::test]
async fn a_dns_entry_is_routed_with_its_virtual_service_retries() {
    let mesh = Mesh::new();
    let ip = std::net::Ipv4Addr::new(127, 0, rand_octet(), 3);
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    flaky(SocketAddr::from((ip, port))).await;
    let dns = support::dns_server(std::sync::Arc::new(std::sync::Mutex::new(Some(ip)))).await;
    let entry = format!(
        "{NODE}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: shop}}
spec:
  hosts: [flaky.test.example]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: DNS
"
    );
    let retries = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: shop}
spec:
  hosts: [flaky.test.example]
  http:
  - route: [{destination: {host: flaky.test.example}}]
    retries: {attempts: 2, retryOn: 5xx}
";
    let (store, sidecar) = resolving_sidecar(&mesh, dns, &format!("{entry}{retries}")).await;
    let out = sidecar.outbound_addr;
    // Wait for the name's first answer.
    for _ in 0..100 {
        if store.dns().report().iter().any(|(_, a, _)| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        assert_eq!(
            get(out, "flaky.test.example", "/").await,
            (200, "ok".into())
        );
    }
    // Without retries (attempts 0), the failures reach the application.
    store
        .apply_yaml(
            &format!("{entry}{}", retries.replace("attempts: 2", "attempts: 0")),
            "test",
        )
        .unwrap();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(get(out, "flaky.test.example", "/").await.0);
        }
        v
    };
    assert!(
        statuses.contains(&503) && statuses.contains(&200),
        "{statuses:?}"
    );
}
