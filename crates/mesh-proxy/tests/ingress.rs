//! The ingress gateway through real sockets: a client on the host → the gateway's
//! server port → mesh mTLS with the gateway's own identity → the destination's
//! sidecar → its app. The Gateway and VirtualService are the seed tutorials' (port 80,
//! a host, `/api` split 90/10 across two subsets); ports open and close as servers
//! come and go, and a bad update keeps the last good config serving.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proxy::StateStore;
use mesh_proxy::ingress::listen::{IngressGateway, IngressOptions};
use support::{Mesh, get};

/// What the apps report: the Host they got, who called (the identity header) and
/// what the gateway says about the client.
const SEEN: &[&str] = &[
    "host",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-proto",
];

fn server_config(version: &str, app: u16) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: reviews-{version}, namespace: shop, serviceAccount: reviews, labels: {{app: reviews, version: {version}}}}}
services:
- name: reviews
  namespace: shop
  ports: [{{name: http, port: 9080, targetPort: {app}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: from-ingress-only, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [mesh.example/ns/istio-system/sa/ingressgateway]}}}}]
"
    )
}

/// The gateway's config: the node, the reviews service with both sidecars as
/// endpoints, subsets, and the Istio documents `istio`.
fn gateway_config(v1: SocketAddr, v2: SocketAddr, istio: &str) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: ingressgateway-1, namespace: istio-system, serviceAccount: ingressgateway, ingress: true, labels: {{istio: ingressgateway}}}}
services:
- name: reviews
  namespace: shop
  ports: [{{name: http, port: 9080}}]
  endpoints:
  - {{address: 127.0.0.1, inboundPort: {}, labels: {{version: v1}}, serviceAccount: reviews}}
  - {{address: 127.0.0.1, inboundPort: {}, labels: {{version: v2}}, serviceAccount: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin-at-the-edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ['/api/admin*']}}}}]}}]
{istio}",
        v1.port(),
        v2.port()
    )
}

/// The seed tutorials' Gateway and VirtualService, unchanged but for the names.
const SEED: &str = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [shop-gateway]
  http:
  - match: [{uri: {prefix: /api}}]
    route:
    - {destination: {host: reviews, subset: v1, port: {number: 9080}}, weight: 90}
    - {destination: {host: reviews, subset: v2, port: {number: 9080}}, weight: 10}
";

/// The same, with a second server on 8080 that sends everything to https.
const WITH_REDIRECT: &str = "
  - port: {number: 8080, name: http-redirect, protocol: HTTP}
    hosts: ['*']
    tls: {httpsRedirect: true}
";

fn with_redirect() -> String {
    SEED.replace(
        "    hosts: [shop.example.com]\n",
        &format!("    hosts: [shop.example.com]{WITH_REDIRECT}"),
    )
}

fn options() -> IngressOptions {
    IngressOptions {
        address: "127.0.0.1".parse().unwrap(),
        // Free ports for the server ports the test uses.
        port_map: BTreeMap::from([(80, 0), (8080, 0), (9090, 0)]),
        connect_timeout: Duration::from_secs(1),
        admin: vec!["127.0.0.1:0".parse().unwrap()],
        tracing: mesh_telemetry::trace::Tracing::disabled(),
        requests: Default::default(),
    }
}

/// The ingress gateway of `mesh` over `store`: the test listener options, with free
/// ports for `ports` too.
async fn start_gateway(mesh: &Mesh, store: &Arc<StateStore>, ports: &[u16]) -> IngressGateway {
    let mut options = options();
    options.port_map.extend(ports.iter().map(|p| (*p, 0)));
    IngressGateway::start(
        store.clone(),
        mesh.identity("istio-system", "ingressgateway"),
        options,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_ingress_gateway_serves_gateway_ports_to_mesh_services() {
    let mesh = Mesh::new();
    let mut sidecars = Vec::new();
    for version in ["v1", "v2"] {
        let app = support::header_echo(version, "127.0.0.1:0".parse().unwrap(), SEEN).await;
        sidecars.push(
            support::sidecar(
                &mesh,
                &server_config(version, app.port()),
                "shop",
                "reviews",
            )
            .await,
        );
    }
    let (v1, v2) = (sidecars[0].inbound_addr, sidecars[1].inbound_addr);
    // JWTs are verified at the edge; a VirtualService merged into the seed's host
    // (older by name) routes the `beta` group to v2 on its token's claim.
    let key = support::Key::new("edge");
    let claims = format!(
        "---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules: [{{issuer: '{issuer}', jwks: '{jwks}'}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: beta, namespace: shop}}
spec:
  hosts: [shop.example.com]
  gateways: [shop/shop-gateway]
  http:
  - match: [{{uri: {{prefix: /api}}, headers: {{'@request.auth.claims.groups': {{exact: beta}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2, port: {{number: 9080}}}}}}]
",
        issuer = support::ISSUER,
        jwks = serde_json::json!({"keys": [key.jwk()]}),
    );
    let store = Arc::new(StateStore::default());
    store
        .apply_yaml(
            &gateway_config(v1, v2, &format!("{}{claims}", with_redirect())),
            "test",
        )
        .unwrap();
    let gw = start_gateway(&mesh, &store, &[]).await;
    let port80 = gw.wait_bound(80, Duration::from_secs(5)).await.unwrap();
    let port8080 = gw.wait_bound(8080, Duration::from_secs(5)).await.unwrap();

    // The seed's split: /api goes 90/10 to v1/v2, with the client's Host kept, the
    // client's address forwarded, and the gateway's identity at the sidecar (whose
    // policy allows only the gateway).
    let mut counts = BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        let (status, body) = get(port80, "shop.example.com", "/api/items", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(" host=shop.example.com "), "{body}");
        assert!(
            body.contains("URI=spiffe://mesh.example/ns/istio-system/sa/ingressgateway"),
            "{body}"
        );
        assert!(
            body.contains("x-forwarded-for=127.0.0.1 x-forwarded-proto=http"),
            "{body}"
        );
        *counts
            .entry(body.split(' ').next().unwrap().to_owned())
            .or_default() += 1;
    }
    let v2_share = counts.get("v2").copied().unwrap_or(0);
    assert!(
        (6..=40).contains(&v2_share) && counts["v1"] + v2_share == 200,
        "90/10 split: {counts:?}"
    );
    // A verified token of the beta group always reaches v2; one of another group
    // takes the split; a forged token is refused at the edge.
    let beta = format!(
        "Bearer {}",
        key.sign(serde_json::json!({"sub": "ann", "groups": ["staff", "beta"]}))
    );
    let staff = format!(
        "Bearer {}",
        key.sign(serde_json::json!({"sub": "bob", "groups": ["staff"]}))
    );
    let mut staff_seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (status, body) = get(
            port80,
            "shop.example.com",
            "/api",
            &[("authorization", &beta)],
        )
        .await;
        assert!(status == 200 && body.starts_with("v2 "), "{status} {body}");
        let (status, body) = get(
            port80,
            "shop.example.com",
            "/api",
            &[("authorization", &staff)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        staff_seen.insert(body.split(' ').next().unwrap().to_owned());
    }
    assert!(staff_seen.contains("v1"), "{staff_seen:?}");
    let forged =
        support::Key::new("edge").sign(serde_json::json!({"sub": "eve", "groups": ["beta"]}));
    let (status, body) = get(
        port80,
        "shop.example.com",
        "/api",
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // The gateway's own AuthorizationPolicy denies at the edge, on the normalized
    // path (a dot segment does not get around it).
    for path in ["/api/admin/users", "/api/x/../admin"] {
        let (status, body) = get(port80, "shop.example.com", path, &[]).await;
        assert_eq!(
            (status, body.as_str()),
            (403, "RBAC: access denied"),
            "{path}"
        );
    }
    // A path the VirtualService does not route, and a host no server serves: 404.
    let (status, body) = get(port80, "shop.example.com", "/other", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no route of shop.example.com matches"),
        "{body}"
    );
    let (status, body) = get(port80, "evil.example.com", "/api", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no virtual host"), "{body}");
    // A server with `tls.httpsRedirect`: a 301 to the same host and path over https.
    let resp = raw_get(port8080, "shop.example.com:8080", "/api?q=1").await;
    assert!(resp.starts_with("HTTP/1.1 301"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("location: https://shop.example.com:8080/api?q=1"),
        "{resp}"
    );

    // A sidecar caller is not the gateway: the destination's policy refuses it.
    let intruder = support::sidecar(
        &mesh,
        &gateway_config(v1, v2, "").replace(
            "node: {name: ingressgateway-1, namespace: istio-system, serviceAccount: ingressgateway, ingress: true, labels: {istio: ingressgateway}}",
            "node: {name: web-1, namespace: shop, serviceAccount: web}",
        ),
        "shop",
        "web",
    )
    .await;
    let (status, _) = get(intruder.outbound_addr, "reviews.shop:9080", "/api", &[]).await;
    assert_eq!(status, 403, "only the gateway's identity is allowed");

    // A bad update (a regex that does not compile) is refused; the routes stay.
    let bad = SEED.replace("{uri: {prefix: /api}}", "{uri: {regex: '('}}");
    assert!(
        store
            .apply_yaml(&gateway_config(v1, v2, &bad), "test")
            .is_err()
    );
    assert_eq!(get(port80, "shop.example.com", "/api", &[]).await.0, 200);

    // The Gateway's `servers` come and go: 8080 closes when its server is removed,
    // 9090 opens when one is added, and 80 keeps serving throughout.
    let moved = SEED.replace(
        "    hosts: [shop.example.com]\n",
        "    hosts: [shop.example.com]\n  - port: {number: 9090, name: http-alt, protocol: HTTP}\n    hosts: [shop.example.com]\n",
    );
    store
        .apply_yaml(&gateway_config(v1, v2, &moved), "test")
        .unwrap();
    let port9090 = gw.wait_bound(9090, Duration::from_secs(5)).await.unwrap();
    assert_eq!(get(port9090, "shop.example.com", "/api", &[]).await.0, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(port8080).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "8080 is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!gw.bound().contains_key(&8080));
    assert_eq!(get(port80, "shop.example.com", "/api", &[]).await.0, 200);
}

/// One HTTP/1.1 GET written by hand, and the response head as text.
async fn raw_get(addr: SocketAddr, host: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

/// HTTPS servers: TLS terminated with the server's certificate chosen by the
/// ClientHello's name; MUTUAL requires a client certificate of its CA; a Host cannot
/// reach the routes of a server whose TLS the client did not pass; a certificate
/// file that cannot be read refuses the Gateway with the last good one serving.
#[tokio::test]
async fn https_servers_terminate_tls_chosen_by_sni() {
    let mesh = Mesh::new();
    let app = support::header_echo("v1", "127.0.0.1:0".parse().unwrap(), SEEN).await;
    let v1 = support::sidecar(&mesh, &server_config("v1", app.port()), "shop", "reviews").await;
    let tmp = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (support::Ca::new("server CA"), support::Ca::new("client CA"));
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let shop = server_ca.leaf(&["shop.example.com"], None);
    let admin = server_ca.leaf(&["admin.example.com"], None);
    let (shop_cert, shop_key) = (write("shop.pem", &shop.0), write("shop.key", &shop.1));
    let client = client_ca.leaf(&[], Some("partner"));
    // Two HTTPS servers on one port: shop (SIMPLE) and admin (MUTUAL), each with its
    // own VirtualService.
    let gateway = format!(
        "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tls-gateway, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-shop, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {shop_cert}, privateKey: {shop_key}, minProtocolVersion: TLSV1_3}}
  - port: {{number: 443, name: https-admin, protocol: HTTPS}}
    hosts: [admin.example.com]
    tls: {{mode: MUTUAL, credentialName: admin-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: [shop.example.com]
  gateways: [tls-gateway]
  http: [{{route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: admin, namespace: shop}}
spec:
  hosts: [admin.example.com]
  gateways: [tls-gateway]
  http:
  - match: [{{scheme: {{exact: https}}}}]
    route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
    headers: {{request: {{set: {{x-admin: 'yes'}}}}}}
"
    );
    // The admin server's certificate, key and client CA come from a Secret of the
    // gateway's namespace (discovery delivers it; a file config holds it).
    let indent = |pem: &str| pem.trim().replace('\n', "\n      ");
    let secret = |with_key: bool| {
        format!(
            "---
apiVersion: v1
kind: Secret
metadata: {{name: admin-cert, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
      {}
{}  ca.crt: |
      {}
",
            indent(&admin.0),
            if with_key {
                format!("  tls.key: |\n      {}\n", indent(&admin.1))
            } else {
                String::new()
            },
            indent(&client_ca.cert.pem()),
        )
    };
    let config = |gateway: &str, secret: &str| {
        format!(
            "{}{secret}",
            gateway_config(v1.inbound_addr, v1.inbound_addr, gateway)
        )
    };
    let mut intake = mesh_proxy::intake::ResourceSet::default();
    let store = Arc::new(StateStore::default());
    let applied = intake.apply_file(&config(&gateway, &secret(true)), "test", &store);
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    let gw = start_gateway(&mesh, &store, &[443]).await;
    let port443 = gw.wait_bound(443, Duration::from_secs(5)).await.unwrap();
    let ca = server_ca.cert.pem();
    let https = |sni: &'static str, host: &'static str, client: Option<&(String, String)>| {
        let (ca, client) = (ca.clone(), client.cloned());
        async move { support::https_get(port443, sni, host, "/api", &ca, client.as_ref()).await }
    };

    // minProtocolVersion TLSV1_3: a client that speaks TLS 1.2 only is refused.
    use tokio_rustls::rustls::version::{TLS12, TLS13};
    assert!(!handshake_with(&TLS12, port443, "shop.example.com", &ca).await);
    assert!(handshake_with(&TLS13, port443, "shop.example.com", &ca).await);
    // SIMPLE: the shop certificate for its name; the app sees https.
    let (status, body) = https("shop.example.com", "shop.example.com", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-forwarded-proto=https"), "{body}");
    // MUTUAL: no client certificate, no handshake; with one, the admin routes (the
    // scheme match sees https).
    let refused = https("admin.example.com", "admin.example.com", None).await;
    assert!(refused.is_err(), "{refused:?}");
    let (status, body) = https("admin.example.com", "admin.example.com", Some(&client))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // The shop server's TLS does not open the admin routes, whatever the Host says.
    let (status, body) = https("shop.example.com", "admin.example.com", None)
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no virtual host"), "{body}");
    // A name no server has: no handshake.
    assert!(
        https("other.example.com", "other.example.com", None)
            .await
            .is_err()
    );

    // A key file that is not there refuses the Gateway; the last good one serves.
    let applied = intake.apply_file(
        &config(
            &gateway.replace(&shop_key, "/nonexistent/shop.key"),
            &secret(true),
        ),
        "test",
        &store,
    );
    let reasons: Vec<String> = applied.rejected.iter().map(|r| r.reason.clone()).collect();
    assert!(
        reasons.iter().any(|r| r.contains(
            "Gateway shop/tls-gateway: spec.servers[0].tls: privateKey \"/nonexistent/shop.key\" cannot be read"
        )),
        "{reasons:?}"
    );
    let (status, _) = https("shop.example.com", "shop.example.com", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The Secret loses its key: refused with the reason, the last good one serves.
    let applied = intake.apply_file(&config(&gateway, &secret(false)), "test", &store);
    let reasons: Vec<String> = applied.rejected.iter().map(|r| r.reason.clone()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r
                .contains("Secret istio-system/admin-cert has a certificate but no private key")),
        "{reasons:?}"
    );
    // The Secret removed while the Gateway names it: the removal is refused.
    let applied = intake.apply_file(&config(&gateway, ""), "test", &store);
    let reasons: Vec<String> = applied.rejected.iter().map(|r| r.reason.clone()).collect();
    assert!(
        reasons.iter().any(|r| r
            .contains("cannot be removed: Gateway shop/tls-gateway names it in credentialName")),
        "{reasons:?}"
    );
    let (status, _) = https("admin.example.com", "admin.example.com", Some(&client))
        .await
        .unwrap();
    assert_eq!(status, 200, "the last good Secret stays in force");

    // The same MUTUAL server from files: serverCertificate, privateKey and the client
    // CA in caCertificates.
    let files = gateway.replace(
        "tls: {mode: MUTUAL, credentialName: admin-cert}",
        &format!(
            "tls: {{mode: MUTUAL, serverCertificate: {}, privateKey: {}, caCertificates: {}}}",
            write("admin.pem", &admin.0),
            write("admin.key", &admin.1),
            write("client-ca.pem", &client_ca.cert.pem())
        ),
    );
    // And the shop server capped at TLS 1.2 (maxProtocolVersion): a TLS 1.3 client is
    // refused, a TLS 1.2 one served.
    let files = files.replace(
        "minProtocolVersion: TLSV1_3",
        "minProtocolVersion: TLSV1_2, maxProtocolVersion: TLSV1_2",
    );
    let applied = intake.apply_file(&config(&files, ""), "test", &store);
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    assert!(!handshake_with(&TLS13, port443, "shop.example.com", &ca).await);
    assert!(handshake_with(&TLS12, port443, "shop.example.com", &ca).await);
    assert!(store.snapshot().credentials.is_empty());
    assert!(
        https("admin.example.com", "admin.example.com", None)
            .await
            .is_err()
    );
    let (status, _) = https("admin.example.com", "admin.example.com", Some(&client))
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// A TLS server of its own (the app terminates TLS): answers every connection with
/// one HTTP/1.1 response after reading its request head.
async fn tls_app(cert: &(String, String)) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let body = "passthrough ok";
                let _ = tls
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// An echo server: every byte back.
async fn echo_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// PASSTHROUGH and TCP servers: a TLS connection is routed by its ClientHello's name
/// to the service whose app terminates it (the gateway holds no certificate), and a
/// TCP port's bytes reach an echo service and come back; a name no route has is not
/// served.
#[tokio::test]
async fn passthrough_and_tcp_servers_route_connections_to_mesh_services() {
    let mesh = Mesh::new();
    let ca = support::Ca::new("app CA");
    let cert = ca.leaf(&["secure.example.com"], None);
    let tls_app = tls_app(&cert).await;
    let echo_app = echo_app().await;
    let app_sidecar = |name: &'static str, port_name: &'static str, service_port: u16, app: u16| {
        format!(
            "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: {name}-1, namespace: shop, serviceAccount: {name}}}
services:
- {{name: {name}, namespace: shop, ports: [{{name: {port_name}, port: {service_port}, targetPort: {app}}}]}}
"
        )
    };
    let secure = support::sidecar(
        &mesh,
        &app_sidecar("secure", "tls", 8443, tls_app.port()),
        "shop",
        "secure",
    )
    .await;
    let echo = support::sidecar(
        &mesh,
        &app_sidecar("echo", "tcp", 7000, echo_app.port()),
        "shop",
        "echo",
    )
    .await;
    let config = format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: ingressgateway-1, namespace: istio-system, serviceAccount: ingressgateway, ingress: true, labels: {{istio: ingressgateway}}}}
services:
- name: secure
  namespace: shop
  ports: [{{name: tls, port: 8443}}]
  endpoints: [{{address: 127.0.0.1, inboundPort: {}, serviceAccount: secure}}]
- name: echo
  namespace: shop
  ports: [{{name: tcp, port: 7000}}]
  endpoints: [{{address: 127.0.0.1, inboundPort: {}, serviceAccount: echo}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: l4, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [secure.example.com]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure.example.com]
  gateways: [l4]
  tls:
  - match: [{{sniHosts: [secure.example.com], port: 443}}]
    route: [{{destination: {{host: secure, port: {{number: 8443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: ['*']
  gateways: [l4]
  tcp:
  - match: [{{port: 9000}}]
    route: [{{destination: {{host: echo, port: {{number: 7000}}}}}}]
",
        secure.inbound_addr.port(),
        echo.inbound_addr.port()
    );
    let store = Arc::new(StateStore::default());
    store.apply_yaml(&config, "test").unwrap();
    let gw = start_gateway(&mesh, &store, &[443, 9000]).await;
    let port443 = gw.wait_bound(443, Duration::from_secs(5)).await.unwrap();
    let port9000 = gw.wait_bound(9000, Duration::from_secs(5)).await.unwrap();

    // TLS end to end with the app: its certificate, verified by the client.
    let (status, body) = support::https_get(
        port443,
        "secure.example.com",
        "secure.example.com",
        "/",
        &ca.cert.pem(),
        None,
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "passthrough ok"));
    // A name no tls route has: the connection is closed.
    let other = support::https_get(
        port443,
        "other.example.com",
        "other.example.com",
        "/",
        &ca.cert.pem(),
        None,
    )
    .await;
    assert!(other.is_err(), "{other:?}");

    // TCP: the bytes go to the echo service and come back.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(port9000).await.unwrap();
    tcp.write_all(b"ping through the gateway\n").await.unwrap();
    let mut back = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping through the gateway\n");
    drop(tcp);
    // Both connections are counted in Istio's TCP metrics, as the gateway reports them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = gw.metrics.encode();
        let closed = |service: &str| {
            text.lines().any(|l| {
                l.starts_with("istio_tcp_connections_closed_total")
                    && l.contains(&format!("destination_service=\"{service}\""))
                    && l.contains("reporter=\"source\"")
            })
        };
        if closed("secure.shop.svc.cluster.local") && closed("echo.shop.svc.cluster.local") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a client limited to TLS `version` completes a handshake with `addr` for
/// `sni`.
async fn handshake_with(
    version: &'static tokio_rustls::rustls::SupportedProtocolVersion,
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
) -> bool {
    use tokio_rustls::rustls;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(support::roots(ca_pem))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .is_ok()
}
