//! Transparent capture in network namespaces, as in two pods: the client application
//! connects to the service's ClusterIP as if there were no mesh; iptables hands the
//! connection to its sidecar, which routes it over mTLS to the server pod's sidecar.
//! A destination outside the mesh passes through untouched. The pod's DNS queries are
//! captured too: the application's own resolver (libc) gets the address of a service
//! that has none in this cluster from the sidecar, and a connection to it is routed.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use mesh_proxy::capture::CaptureRules;
use mesh_proxy::{Sidecar, SidecarOptions, StateStore};
use support::{Mesh, backend};
use testbed::netns::{Netns, link};

const CLIENT_IP: &str = "10.248.0.1";
const SERVER_IP: &str = "10.248.0.2";
const REVIEWS_VIP: &str = "10.96.0.10";
const DB_VIP: &str = "10.96.0.11";
const SECURE_VIP: &str = "10.96.0.12";

/// The first flight of a real TLS client (rustls) naming `sni`: what an application
/// doing its own TLS sends first.
fn client_hello(sni: &str) -> Vec<u8> {
    use tokio_rustls::rustls;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// A TLS server stand-in: reads the ClientHello it is sent, unterminated, and says
/// which name it carried and how many bytes arrived.
async fn tls_app(port: u16, name: &'static str) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let reply = match mesh_proxy::sni::read_client_hello(&mut c).await {
                    Ok((raw, sni)) => {
                        format!(
                            "{name} got sni={} bytes={}\n",
                            sni.unwrap_or_default(),
                            raw.len()
                        )
                    }
                    Err(e) => format!("{name} got no hello: {e}\n"),
                };
                let _ = c.write_all(reply.as_bytes()).await;
            });
        }
    });
}

fn pod_options() -> SidecarOptions {
    SidecarOptions {
        outbound: "0.0.0.0:15001".parse().unwrap(),
        inbound: "0.0.0.0:15006".parse().unwrap(),
        app_ip: "127.0.0.1".parse().unwrap(),
        connect_timeout: Duration::from_secs(2),
        admin: vec![],
        tracing: mesh_telemetry::trace::Tracing::disabled(),
        requests: Default::default(),
        dns: None,
    }
}

fn install_capture(ns: &Netns, rules: &CaptureRules) {
    for args in rules.iptables_commands() {
        ns.exec("iptables", &args).unwrap();
    }
}

/// Sends `request` over a fresh TCP connection, as any application would, and reads
/// until the server closes it.
fn exchange(addr: &str, request: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A plain HTTP/1.1 GET; returns the raw response.
fn http_get(addr: &str, host: &str) -> std::io::Result<String> {
    exchange(
        addr,
        format!("GET /reviews/1 HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn captured_traffic_crosses_pods_over_mtls_and_the_rest_passes_through() {
    mesh_telemetry::init_logging(mesh_telemetry::LogFormat::Text, "info");
    let client_ns = Netns::create("client").unwrap();
    let server_ns = Netns::create("server").unwrap();
    link(
        &client_ns,
        &format!("{CLIENT_IP}/24"),
        &server_ns,
        &format!("{SERVER_IP}/24"),
    )
    .unwrap();
    install_capture(
        &client_ns,
        &CaptureRules {
            dns_port: Some(15053),
            ..Default::default()
        },
    );
    // Port 9999 of the server pod is left out of the mesh, as Istio's
    // `traffic.sidecar.istio.io/excludeInboundPorts` does.
    let mut server_rules = CaptureRules::default();
    server_rules.exclude_inbound_ports.push(9999);
    install_capture(&server_ns, &server_rules);

    let mesh = Arc::new(Mesh::new());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    // The server pod: the app on 9080, an unmeshed TCP service on 9999, a sidecar.
    let server_mesh = mesh.clone();
    let server = server_ns
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = backend("reviews-v1", Duration::ZERO).await;
                // The backend helper binds 127.0.0.1:0; the pod's app port is 9080.
                let fwd = tokio::net::TcpListener::bind("127.0.0.1:9080")
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    loop {
                        let (mut c, _) = fwd.accept().await.unwrap();
                        tokio::spawn(async move {
                            let mut up = tokio::net::TcpStream::connect(app).await.unwrap();
                            let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                        });
                    }
                });
                // A TCP app that says who connected to it and echoes one line.
                let db = tokio::net::TcpListener::bind("127.0.0.1:5000")
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    loop {
                        let (c, peer) = db.accept().await.unwrap();
                        tokio::spawn(async move {
                            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                            let mut c = tokio::io::BufReader::new(c);
                            let mut line = String::new();
                            let _ = c.read_line(&mut line).await;
                            let _ = c
                                .get_mut()
                                .write_all(
                                    format!("db got {} from {}\n", line.trim(), peer.ip())
                                        .as_bytes(),
                                )
                                .await;
                        });
                    }
                });
                // A legacy port left PERMISSIVE: plaintext from anywhere is fine.
                let legacy = tokio::net::TcpListener::bind("127.0.0.1:7000")
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    loop {
                        let (mut c, _) = legacy.accept().await.unwrap();
                        use tokio::io::AsyncWriteExt;
                        let _ = c.write_all(b"legacy port answers\n").await;
                    }
                });
                tls_app(8443, "secure-a").await;
                tls_app(8444, "secure-b").await;
                let plain = tokio::net::TcpListener::bind("0.0.0.0:9999").await.unwrap();
                tokio::spawn(async move {
                    loop {
                        let (mut c, peer) = plain.accept().await.unwrap();
                        use tokio::io::AsyncWriteExt;
                        let _ = c
                            .write_all(format!("plain service sees {}\n", peer.ip()).as_bytes())
                            .await;
                    }
                });
                let store = Arc::new(StateStore::default());
                store
                    .apply_yaml(
                        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: reviews-v1, namespace: shop, serviceAccount: reviews, labels: {app: reviews}}
services:
- {name: reviews, namespace: shop, ports: [{name: http, port: 9080}]}
- {name: db, namespace: shop, ports: [{name: tcp-db, port: 5000}]}
- {name: secure, namespace: shop, ports: [{name: tls, port: 8443}, {name: https-b, port: 8444}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
  portLevelMtls:
    7000: {mode: PERMISSIVE}
",
                        "server",
                    )
                    .unwrap();
                let _sidecar = Sidecar::start(
                    store,
                    server_mesh.identity("shop", "reviews"),
                    pod_options(),
                )
                .await
                .unwrap();
                ready_tx.send(()).unwrap();
                let _ = stop_rx.await;
                _sidecar.metrics.encode()
            })
        })
        .unwrap();
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // The client pod: a sidecar, and an application that knows nothing of the mesh.
    let client_mesh = mesh.clone();
    let results = client_ns
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = format!(
                    "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: productpage-1, namespace: shop, serviceAccount: productpage}}
services:
- name: reviews
  namespace: shop
  addresses: [{REVIEWS_VIP}]
  ports: [{{name: web, port: 9080}}]
  endpoints: [{{address: {SERVER_IP}, serviceAccount: reviews}}]
- name: ratings
  namespace: shop
  ports: [{{name: http, port: 9080}}]
  endpoints: [{{address: {SERVER_IP}, serviceAccount: reviews, cluster: west}}]
- name: db
  namespace: shop
  addresses: [{DB_VIP}]
  ports: [{{name: tcp-db, port: 5000}}]
  endpoints: [{{address: {SERVER_IP}, serviceAccount: reviews}}]
- name: secure
  namespace: shop
  addresses: [{SECURE_VIP}]
  ports: [{{name: tls, port: 8443}}, {{name: https-b, port: 8444}}]
  endpoints: [{{address: {SERVER_IP}, serviceAccount: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure]
  tls:
  - match: [{{sniHosts: ['*.beta.secure.example'], port: 8443}}]
    route: [{{destination: {{host: secure, port: {{number: 8444}}}}}}]
"
                );
                let store = Arc::new(StateStore::default());
                store.apply_yaml(&config, "client").unwrap();
                let mut options = pod_options();
                options.dns = Some(mesh_proxy::dns_proxy::DnsListen {
                    addr: "127.0.0.1:15053".parse().unwrap(),
                    upstreams: vec![],
                });
                let _sidecar =
                    Sidecar::start(store, client_mesh.identity("shop", "productpage"), options)
                        .await
                        .unwrap();
                // The application's blocking calls run off the runtime thread; the
                // thread pool inherits this namespace.
                let outcome = tokio::task::spawn_blocking(|| {
                    // Port named `web`: no declared protocol, so the sidecar sniffs HTTP.
                    let meshed = http_get(&format!("{REVIEWS_VIP}:9080"), "reviews");
                    let tcp = exchange(
                        &format!("{DB_VIP}:5000"),
                        b"ping
",
                    );
                    let passthrough = exchange(&format!("{SERVER_IP}:9999"), b"");
                    // Plaintext straight to the meshed pod's app port is captured there
                    // and refused (STRICT): the connection closes without an answer.
                    let direct = http_get(&format!("{SERVER_IP}:9080"), "reviews");
                    let permissive = exchange(&format!("{SERVER_IP}:7000"), b"");
                    // The app's own TLS, routed by the SNI of its ClientHello.
                    let secure = format!("{SECURE_VIP}:8443");
                    let tls_default = exchange(&secure, &client_hello("www.secure.example"));
                    let tls_beta = exchange(&secure, &client_hello("api.beta.secure.example"));
                    let tls = (tls_default, tls_beta);
                    // Names through the pod's own resolver (libc), as any application:
                    // a Service's ClusterIP; a service with no address in this cluster
                    // gets one from the sidecar, and a request to it is routed.
                    use std::net::ToSocketAddrs;
                    let resolve = |name: &str| {
                        (name, 9080)
                            .to_socket_addrs()
                            .map(|a| a.map(|a| a.ip()).collect::<Vec<_>>())
                    };
                    let reviews_ips = resolve("reviews.shop.svc.cluster.local");
                    let ratings = resolve("ratings.shop.svc.cluster.local").map(|ips| {
                        let reply = ips
                            .first()
                            .map(|ip| http_get(&format!("{ip}:9080"), "ratings"));
                        (ips, reply)
                    });
                    let dns = (reviews_ips, ratings);
                    (meshed, passthrough, direct, tcp, permissive, tls, dns)
                })
                .await
                .unwrap();
                // REGISTRY_ONLY (the mesh's outboundTrafficPolicy, on the node): an
                // address no service has is refused; services still answer.
                let registry_only = config.replace(
                    "serviceAccount: productpage}",
                    "serviceAccount: productpage, outboundTrafficPolicy: REGISTRY_ONLY}",
                );
                _sidecar.store.apply_yaml(&registry_only, "client").unwrap();
                let closed = tokio::task::spawn_blocking(|| {
                    let refused = exchange(&format!("{SERVER_IP}:9999"), b"");
                    let meshed = http_get(&format!("{REVIEWS_VIP}:9080"), "reviews");
                    (refused, meshed)
                })
                .await
                .unwrap();
                (outcome, closed, _sidecar.metrics.encode())
            })
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = stop_tx.send(());
    let server_metrics = server.join().unwrap();

    let ((meshed, passthrough, direct, tcp, permissive, tls, dns), closed, client_metrics) =
        results;
    let (reviews_ips, ratings) = dns;
    assert_eq!(
        reviews_ips.unwrap(),
        [REVIEWS_VIP.parse::<std::net::IpAddr>().unwrap()],
        "the sidecar answers the pod's DNS query with the ClusterIP"
    );
    let (ratings_ips, ratings_reply) = ratings.unwrap();
    assert!(
        matches!(ratings_ips.as_slice(), [std::net::IpAddr::V4(v4)] if v4.octets()[..2] == [240, 240]),
        "{ratings_ips:?}"
    );
    let ratings_reply = ratings_reply.unwrap().unwrap();
    assert!(
        ratings_reply.contains("reviews-v1 path=/reviews/1"),
        "a request to the allocated address crossed to the other pod: {ratings_reply}"
    );
    // Istio's TCP metrics, on both sides, for the opaque TCP stream to db: the
    // client's sidecar sent the 5 bytes of "ping\n" and got the answer back.
    let db = [("destination_service", "db.shop.svc.cluster.local")];
    let sum = |text: &str, metric: &str, labels: &[(&str, &str)]| {
        mesh_telemetry::metrics::sum_of(text, metric, labels)
    };
    let reply = "db got ping from 127.0.0.1\n".len() as f64;
    assert_eq!(
        sum(
            &client_metrics,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source"), db[0]]
        ),
        1.0,
        "{client_metrics}"
    );
    assert_eq!(
        sum(
            &client_metrics,
            "istio_tcp_connections_closed_total",
            &[("reporter", "source"), db[0]]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &client_metrics,
            "istio_tcp_sent_bytes_total",
            &[("reporter", "source"), db[0]]
        ),
        5.0
    );
    assert_eq!(
        sum(
            &client_metrics,
            "istio_tcp_received_bytes_total",
            &[("reporter", "source"), db[0]]
        ),
        reply
    );
    assert_eq!(
        sum(
            &server_metrics,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination"), db[0]]
        ),
        1.0,
        "{server_metrics}"
    );
    assert_eq!(
        sum(
            &server_metrics,
            "istio_tcp_received_bytes_total",
            &[("reporter", "destination"), db[0]]
        ),
        5.0
    );
    assert_eq!(
        sum(
            &server_metrics,
            "istio_tcp_sent_bytes_total",
            &[("reporter", "destination"), db[0]]
        ),
        reply
    );
    let hello_len = client_hello("www.secure.example").len();
    assert_eq!(
        tls.0.unwrap(),
        format!("secure-a got sni=www.secure.example bytes={hello_len}\n"),
        "no TLS route matches this name: the port's default destination, hello intact"
    );
    let hello_len = client_hello("api.beta.secure.example").len();
    assert_eq!(
        tls.1.unwrap(),
        format!("secure-b got sni=api.beta.secure.example bytes={hello_len}\n"),
        "the tls route on sniHosts '*.beta.secure.example' moved it to port 8444"
    );
    assert_eq!(
        tcp.unwrap(),
        "db got ping from 127.0.0.1\n",
        "TCP crossed both sidecars (the app sees its own sidecar as the peer)"
    );
    let meshed = meshed.unwrap();
    assert!(meshed.starts_with("HTTP/1.1 200"), "{meshed}");
    assert!(meshed.contains("reviews-v1 path=/reviews/1"), "{meshed}");
    assert!(
        meshed.contains("URI=spiffe://mesh.example/ns/shop/sa/productpage"),
        "the request crossed the sidecars over mTLS: {meshed}"
    );
    let passthrough = passthrough.unwrap();
    assert_eq!(
        passthrough,
        format!("plain service sees {CLIENT_IP}\n"),
        "unmeshed traffic passes through"
    );
    // Istio's names for the two outbound traffic policies: three connections went to
    // pod addresses no service has (ports 9999, 9080 and 7000) under ALLOW_ANY, one
    // under REGISTRY_ONLY.
    for (cluster, count) in [("PassthroughCluster", 3.0), ("BlackHoleCluster", 1.0)] {
        assert_eq!(
            sum(
                &client_metrics,
                "istio_tcp_connections_opened_total",
                &[("destination_service", cluster)]
            ),
            count,
            "{cluster}"
        );
    }
    assert!(
        closed.0.unwrap_or_default().is_empty(),
        "REGISTRY_ONLY: nothing outside the registry answers"
    );
    assert!(
        closed.1.unwrap().contains("reviews-v1"),
        "REGISTRY_ONLY: services of the registry still answer"
    );
    let direct = direct.unwrap_or_default();
    assert!(
        !direct.contains("reviews-v1"),
        "plaintext must not reach a meshed app: {direct}"
    );
    assert_eq!(
        permissive.unwrap(),
        "legacy port answers\n",
        "a PERMISSIVE port takes plaintext"
    );
}
