//! Two clusters on two networks, linked: a request from a sidecar in east reaches v2
//! in west through west's east-west gateway (TLS passthrough routed by SNI, the mTLS
//! kept end to end between the sidecars); an unknown SNI is refused and counted; when
//! the local endpoints fail, outlier detection and locality failover move traffic to
//! the other cluster.

#[path = "../../discovery/tests/support/mod.rs"]
mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);
const REVIEWS: &str = "reviews.shop.svc.cluster.local";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
";

fn entry(name: &str, version: &str, ip: IpAddr, inbound: u16, locality: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: shop
  annotations: {{isthmus.dev/inbound-port: \"{inbound}\"}}
spec: {{address: {ip}, labels: {{app: reviews, version: {version}}}, serviceAccount: reviews, locality: {locality}}}
"
    )
}

const RULES: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        failoverPriority: [topology.istio.io/network, topology.istio.io/cluster]
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: in-west, labels: {topology.istio.io/cluster: west}}
";

fn route(subset: Option<&str>) -> String {
    let dest = match subset {
        Some(s) => format!("{{host: reviews, subset: {s}}}"),
        None => "{host: reviews}".into(),
    };
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http: [{{route: [{{destination: {dest}}}], retries: {{attempts: 0}}}}]
"
    )
}

/// An app answering NAME with a status the test can change.
async fn app(addr: std::net::SocketAddr, name: &'static str) -> Arc<std::sync::atomic::AtomicU16> {
    let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let s = status.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        let code = s.load(std::sync::atomic::Ordering::SeqCst);
                        async move {
                            let mut resp = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(name),
                            ));
                            *resp.status_mut() = http::StatusCode::from_u16(code).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_crosses_clusters_through_the_gateway_and_fails_over() {
    let net = 20 + (std::process::id() % 200) as u8;
    let ip = |cluster: u8, host: u8| IpAddr::from([127, net, cluster, host]);
    let east_pki = Pki::new("east");
    let west_pki = east_pki.sibling("west");
    let root = east_pki.root.cert_pem().to_owned();
    let (east_dir, west_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(
        east_dir.path(),
        "rules.yaml",
        &format!("{RULES}{}", route(Some("v2"))),
    );
    write(west_dir.path(), "rules.yaml", RULES);
    write(east_dir.path(), "svc.yaml", SERVICE);
    write(west_dir.path(), "svc.yaml", SERVICE);
    let east = start_files("east", east_dir.path(), &east_pki).await;
    let west = start_files("west", west_dir.path(), &west_pki).await;

    // West: reviews v2 and the east-west gateway.
    let v2_status = app((ip(2, 2), 8080).into(), "v2 in west").await;
    let v2 = sidecar(
        west.grpc_addr,
        &west_pki,
        "reviews-v2",
        "shop",
        "reviews",
        ip(2, 2),
    )
    .await;
    write(
        west_dir.path(),
        "svc.yaml",
        &format!(
            "{SERVICE}{}",
            entry(
                "reviews-v2",
                "v2",
                ip(2, 2),
                v2.sidecar.inbound_addr.port(),
                "us/west"
            )
        ),
    );
    let gw_identity = west_pki.identity("istio-system", "isthmus-eastwest-gateway");
    let gw_proxy = connect_as(west.grpc_addr, gw_identity, "eastwest-gateway", "gateway");
    let gateway = east_west_gateway::start(
        gw_proxy.store.clone(),
        Some(west_pki.identity("istio-system", "isthmus-eastwest-gateway")),
        east_west_gateway::GatewayOptions {
            listen: (ip(2, 100), 0).into(),
            admin: None,
            quic: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // East: reviews v1 and the calling frontend.
    let v1_status = app((ip(1, 2), 8080).into(), "v1 in east").await;
    let v1 = sidecar(
        east.grpc_addr,
        &east_pki,
        "reviews-v1",
        "shop",
        "reviews",
        ip(1, 2),
    )
    .await;
    write(
        east_dir.path(),
        "svc.yaml",
        &format!(
            "{SERVICE}{}",
            entry(
                "reviews-v1",
                "v1",
                ip(1, 2),
                v1.sidecar.inbound_addr.port(),
                "eu/east"
            )
        ),
    );
    let frontend = sidecar(
        east.grpc_addr,
        &east_pki,
        "frontend-1",
        "shop",
        "frontend",
        ip(1, 9),
    )
    .await;

    // Link them.
    write(
        east_dir.path(),
        "link-west.yaml",
        &link_secret("west", west.grpc_addr, gateway.addr, &root, true),
    );
    write(
        west_dir.path(),
        "link-east.yaml",
        &link_secret(
            "east",
            east.grpc_addr,
            std::net::SocketAddr::from((ip(1, 100), 15443)),
            &root,
            false,
        ),
    );
    eventually("east sees west's v2 behind the gateway", T, || {
        endpoints(&frontend.proxy.store, REVIEWS) == [ip(1, 2).to_string(), ip(2, 100).to_string()]
    })
    .await;
    eventually("the gateway knows reviews", T, || {
        gw_proxy.store.snapshot().services.contains_key(REVIEWS)
    })
    .await;

    // Subset v2 exists only in west: the request crosses the gateway.
    let out = frontend.sidecar.outbound_addr;
    for _ in 0..3 {
        assert_eq!(
            get(out, "reviews:9080", "/").await.unwrap(),
            (200, "v2 in west".into())
        );
    }
    assert!(
        opened_to(&gateway.metrics.encode(), REVIEWS) >= 1.0,
        "{}",
        gateway.metrics.encode()
    );
    // The link advertises QUIC: the sidecar tunnelled over UDP, mTLS inside.
    assert!(
        gateway.metrics.quic_streams.get() >= 1,
        "{}",
        gateway.metrics.encode()
    );
    let text = gateway.metrics.encode();
    assert!(
        text.contains("source_cluster=\"east\"") && text.contains("destination_cluster=\"west\""),
        "{text}"
    );

    // A caller whose certificate comes from another root is refused at the QUIC
    // handshake, before any routing, by the gateway's own check of the client: the
    // caller trusts the mesh root (it accepts the gateway's certificate) but holds a
    // certificate for the same identity from a foreign root.
    let target = mesh_proxy::sni::outbound_sni(9080, "v2", REVIEWS);
    let open = |identity: mesh_identity::Identity| {
        let target = target.clone();
        async move {
            let tunnels = mesh_proxy::tunnel::QuicTunnels::new(&identity).unwrap();
            tunnels
                .open(gateway.addr, &target, "east", None, Duration::from_secs(2))
                .await
                .map(drop)
        }
    };
    // Control: the same client with a mesh certificate is let in.
    open(east_pki.identity("shop", "frontend"))
        .await
        .expect("a mesh caller opens a QUIC tunnel");
    let stranger = Pki::new("elsewhere").identity("shop", "frontend");
    let tls = stranger.client_config_with_trust(
        east_pki.trust(),
        vec![],
        &[mesh_proxy::tunnel::ALPN_TUNNEL],
    );
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let refused_before = gateway.metrics.refused("quic_handshake");
    let endpoint = quinn::Endpoint::client((ip(1, 1), 0).into()).unwrap();
    let attempt = async {
        let conn = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(quic)),
                gateway.addr,
                "eastwest-gateway",
            )
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: the server checks the client's certificate after the client has
        // finished, so the refusal arrives as the connection's close reason.
        let stream = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            send.write_all(format!("{target}\n").as_bytes())
                .await
                .ok()?;
            recv.read_to_end(1024).await.ok()
        };
        match stream.await {
            Some(_) => Ok(()),
            None => Err(conn.closed().await.to_string()),
        }
    };
    let err = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .expect("the gateway neither refused nor served the caller")
        .expect_err("a caller with a foreign certificate got a tunnel");
    eventually("foreign caller refused at the QUIC handshake", T, || {
        gateway.metrics.refused("quic_handshake") > refused_before
    })
    .await;
    // The client found nothing wrong with the gateway's certificate: the gateway
    // aborted the handshake over the client's.
    assert!(err.starts_with("aborted by peer"), "{err}");
    assert!(err.contains("origin: \"client\""), "{err}");

    // UDP fails: west's link now names a gateway that serves TCP only while still
    // advertising QUIC. The sidecar falls back to TCP and requests keep working.
    let tcp_only = east_west_gateway::start(
        gw_proxy.store.clone(),
        None,
        east_west_gateway::GatewayOptions {
            listen: (ip(2, 101), 0).into(),
            admin: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    write(
        east_dir.path(),
        "link-west.yaml",
        &link_secret("west", west.grpc_addr, tcp_only.addr, &root, true),
    );
    eventually("the new gateway address", T, || {
        endpoints(&frontend.proxy.store, REVIEWS).contains(&ip(2, 101).to_string())
    })
    .await;
    assert_eq!(
        get(out, "reviews:9080", "/").await.unwrap(),
        (200, "v2 in west".into())
    );
    assert!(
        opened_to(&tcp_only.metrics.encode(), REVIEWS) >= 1.0,
        "{}",
        tcp_only.metrics.encode()
    );

    // An SNI for something west does not export is refused at the gateway and counted.
    let mut raw = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let tls = std::sync::Arc::new(
        east_pki
            .identity("shop", "frontend")
            .client_config(vec![], &[b"h2"]),
    );
    let name =
        rustls_pki_types::ServerName::try_from("outbound_.9080_._.secrets.shop.svc.cluster.local")
            .unwrap();
    let _ = tokio_rustls::TlsConnector::from(tls)
        .connect(name, &mut raw)
        .await;
    eventually("unknown SNI refused", T, || {
        gateway.metrics.refused("unknown_service") == 1
    })
    .await;

    // An explicit cross-cluster split: a subset on the cluster label.
    write(
        east_dir.path(),
        "rules.yaml",
        &format!("{RULES}{}", route(Some("in-west"))),
    );
    let start = std::time::Instant::now();
    while start.elapsed() < T {
        if get(out, "reviews:9080", "/").await.unwrap() == (200, "v2 in west".into())
            && frontend.proxy.store.snapshot().policies[REVIEWS]
                .subsets
                .contains_key("in-west")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert_eq!(
            get(out, "reviews:9080", "/").await.unwrap(),
            (200, "v2 in west".into())
        );
    }

    // Failover: route to the service (no subset). Local (same network) first...
    write(
        east_dir.path(),
        "rules.yaml",
        &format!("{RULES}{}", route(None)),
    );
    let start = std::time::Instant::now();
    loop {
        let (_, body) = get(out, "reviews:9080", "/").await.unwrap();
        if body == "v1 in east" {
            break;
        }
        assert!(
            start.elapsed() < T,
            "traffic never returned to the local cluster"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        assert_eq!(
            get(out, "reviews:9080", "/").await.unwrap(),
            (200, "v1 in east".into())
        );
    }
    // ... then v1 fails: one 5xx ejects it, and traffic moves to west.
    v1_status.store(503, std::sync::atomic::Ordering::SeqCst);
    let (status, _) = get(out, "reviews:9080", "/").await.unwrap();
    assert_eq!(status, 503, "the failure that ejects the local endpoint");
    for _ in 0..10 {
        assert_eq!(
            get(out, "reviews:9080", "/").await.unwrap(),
            (200, "v2 in west".into())
        );
    }
    let _ = v2_status;
}

/// West's discovery dies while west's gateway and workloads keep running: after its
/// lease, east keeps west's endpoints as stale because the gateway passes its health
/// probes, and no request fails; when the gateway dies too, the endpoints are
/// withdrawn and requests fail fast with 503 instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_control_plane_keeps_healthy_cross_cluster_traffic_flowing() {
    let net = 20 + ((std::process::id() + 77) % 200) as u8;
    let ip = |cluster: u8, host: u8| IpAddr::from([127, net, cluster, host]);
    let east_pki = Pki::new("east");
    let west_pki = east_pki.sibling("west");
    let root = east_pki.root.cert_pem().to_owned();
    let (east_dir, west_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // reviews runs only in west.
    write(
        east_dir.path(),
        "rules.yaml",
        &format!("{RULES}{}", route(None)),
    );
    write(west_dir.path(), "rules.yaml", RULES);
    write(east_dir.path(), "svc.yaml", SERVICE);
    let mut east_opts = options(
        "east",
        discovery::Source::Files(east_dir.path().to_owned()),
        &east_pki,
    );
    east_opts.links.probe_interval = Duration::from_millis(200);
    east_opts.links.probe_timeout = Duration::from_millis(500);
    let east = discovery::start(east_opts).await.unwrap();
    let mut west_opts = options(
        "west",
        discovery::Source::Files(west_dir.path().to_owned()),
        &west_pki,
    );
    // The lease west grants its subscribers.
    west_opts.lease = Duration::from_secs(1);
    let west = discovery::start(west_opts).await.unwrap();

    app((ip(2, 2), 8080).into(), "v2 in west").await;
    let v2 = sidecar(
        west.grpc_addr,
        &west_pki,
        "reviews-v2",
        "shop",
        "reviews",
        ip(2, 2),
    )
    .await;
    write(
        west_dir.path(),
        "svc.yaml",
        &format!(
            "{SERVICE}{}",
            entry(
                "reviews-v2",
                "v2",
                ip(2, 2),
                v2.sidecar.inbound_addr.port(),
                "us/west"
            )
        ),
    );
    let gw_identity = west_pki.identity("istio-system", "isthmus-eastwest-gateway");
    let gw_proxy = connect_as(
        west.grpc_addr,
        gw_identity.clone(),
        "eastwest-gateway",
        "gateway",
    );
    let gateway = east_west_gateway::start(
        gw_proxy.store.clone(),
        Some(gw_identity),
        east_west_gateway::GatewayOptions {
            listen: (ip(2, 100), 0).into(),
            admin: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("the gateway knows reviews", T, || {
        gw_proxy.store.snapshot().services.contains_key(REVIEWS)
    })
    .await;
    let frontend = sidecar(
        east.grpc_addr,
        &east_pki,
        "frontend-1",
        "shop",
        "frontend",
        ip(1, 9),
    )
    .await;
    // Peering is authorized both ways: each cluster holds the other's link.
    write(
        east_dir.path(),
        "link-west.yaml",
        &link_secret("west", west.grpc_addr, gateway.addr, &root, false),
    );
    write(
        west_dir.path(),
        "link-east.yaml",
        &link_secret(
            "east",
            east.grpc_addr,
            std::net::SocketAddr::from((ip(1, 100), 15443)),
            &root,
            false,
        ),
    );
    eventually("east sees west's v2 behind the gateway", T, || {
        endpoints(&frontend.proxy.store, REVIEWS) == [ip(2, 100).to_string()]
    })
    .await;
    let out = frontend.sidecar.outbound_addr;
    assert_eq!(
        get(out, "reviews:9080", "/").await.unwrap(),
        (200, "v2 in west".into())
    );

    // Load from east's frontend throughout.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = Arc::new(std::sync::Mutex::new(Vec::<(Duration, u16)>::new()));
    let load = {
        let (stop, results) = (stop.clone(), results.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let start = std::time::Instant::now();
                let status = get(out, "reviews:9080", "/")
                    .await
                    .map(|(s, _)| s)
                    .unwrap_or(0);
                results.lock().unwrap().push((start.elapsed(), status));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // West's control plane goes away for three times its lease.
    drop(west);
    let start = std::time::Instant::now();
    eventually("west's endpoints are stale", T, || {
        frontend
            .proxy
            .store
            .snapshot()
            .services
            .get(REVIEWS)
            .is_some_and(|s| s.endpoints.iter().all(|e| e.stale) && !s.endpoints.is_empty())
    })
    .await;
    while start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let link = east.links.list().remove(0);
    assert_eq!(link.state, "stale", "{link:?}");
    assert!(link.gateway_probe.starts_with("ok: ready west"), "{link:?}");
    assert!(!link.stale_since.is_empty());
    assert!(
        gateway.metrics.probes.get() >= 3,
        "{}",
        gateway.metrics.encode()
    );
    let (_, metrics) = mesh_net::http::get(east.monitor_addr.unwrap(), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("isthmus_discovery_remote_endpoints{cluster=\"west\",stale=\"true\"} 1"),
        "{metrics}"
    );
    {
        let r = results.lock().unwrap();
        let failed: Vec<_> = r.iter().filter(|(_, s)| *s != 200).collect();
        assert!(r.len() > 100, "only {} requests", r.len());
        assert!(
            failed.is_empty(),
            "{} of {} failed while west's discovery was down",
            failed.len(),
            r.len()
        );
        println!("control plane down 3 s: {} requests, 0 failed", r.len());
    }

    // Now the gateway dies too: its probes fail and the endpoints go; requests fail
    // fast (503, no healthy upstream) instead of hanging.
    drop(gateway);
    eventually("west's endpoints withdrawn", T, || {
        endpoints(&frontend.proxy.store, REVIEWS).is_empty()
    })
    .await;
    assert_eq!(east.links.list()[0].state, "withdrawn");
    results.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    let r = results.lock().unwrap();
    assert!(!r.is_empty());
    for (took, status) in r.iter() {
        assert_eq!(*status, 503);
        assert!(*took < Duration::from_secs(1), "a request took {took:?}");
    }
}

/// Connections the gateway opened to `service`, as its `/stats/prometheus` shows them.
fn opened_to(exposition: &str, service: &str) -> f64 {
    mesh_telemetry::metrics::sum_of(
        exposition,
        "istio_tcp_connections_opened_total",
        &[("destination_service", service)],
    )
}
