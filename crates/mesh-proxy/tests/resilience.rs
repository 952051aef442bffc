//! Outlier detection and locality failover with real sidecars: a failing endpoint is
//! ejected and re-admitted; traffic stays in the local cluster, spills over to the
//! remote one without a failed request, and comes back.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh_proxy::Sidecar;
use support::{Mesh, switchable_backend};
use tokio::net::TcpStream;

async fn get(sidecar: SocketAddr) -> (u16, String) {
    let tcp = TcpStream::connect(sidecar).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "reviews:9080")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned(),
    )
}

/// A server sidecar in `cluster` in front of the app at `app`.
async fn server(mesh: &Mesh, app: SocketAddr, cluster: &str) -> Sidecar {
    support::sidecar(
        mesh,
        &format!(
            "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: reviews-{cluster}, namespace: shop, serviceAccount: reviews, cluster: {cluster}}}
services:
- {{name: reviews, namespace: shop, ports: [{{name: http, port: 9080, targetPort: {}}}]}}
",
            app.port()
        ),
        "shop",
        "reviews",
    )
    .await
}

async fn client(
    mesh: &Mesh,
    east: SocketAddr,
    west: SocketAddr,
    traffic_policy: &str,
    extra: &str,
) -> Sidecar {
    support::sidecar(mesh, &format!(
                "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: productpage-1, namespace: shop, serviceAccount: productpage, cluster: east, network: net-east, locality: eu/eu-1}}
services:
- name: reviews
  namespace: shop
  ports: [{{name: http, port: 9080}}]
  endpoints:
  - {{address: 127.0.0.1, inboundPort: {}, cluster: east, network: net-east, locality: eu/eu-1}}
  - {{address: 127.0.0.1, inboundPort: {}, cluster: west, network: net-west, locality: us/us-1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  trafficPolicy:
{traffic_policy}
{extra}",
                east.port(),
                west.port()
            ), "shop", "productpage").await
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_readmits_it() {
    let mesh = Mesh::new();
    let (good_app, _) = switchable_backend("good").await;
    let (bad_app, bad_status) = switchable_backend("bad").await;
    bad_status.store(503, Ordering::SeqCst);
    let (good, bad) = (
        server(&mesh, good_app, "east").await,
        server(&mesh, bad_app, "east").await,
    );
    // No locality here: every endpoint is in the same place; retries off to see each
    // failure.
    let c = client(
        &mesh,
        good.inbound_addr,
        bad.inbound_addr,
        "    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: false}}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}",
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}], retries: {attempts: 0}}]
",
    )
    .await;
    let mut failures = 0;
    for _ in 0..30 {
        if get(c.outbound_addr).await.0 != 200 {
            failures += 1;
        }
    }
    assert!(
        failures <= 2,
        "ejected after 2 consecutive 5xx: {failures} failures"
    );
    // After the ejection time the endpoint is tried again (and fails again).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let mut seen_bad = false;
    for _ in 0..6 {
        if get(c.outbound_addr).await.1 == "bad" {
            seen_bad = true;
        }
    }
    assert!(seen_bad, "re-admitted after baseEjectionTime");
}

/// reviews in east (its status switchable) and in west, each behind a sidecar.
async fn two_clusters() -> (
    Mesh,
    Sidecar,
    Sidecar,
    std::sync::Arc<std::sync::atomic::AtomicU16>,
) {
    let mesh = Mesh::new();
    let (east_app, east_status) = switchable_backend("east").await;
    let (west_app, _) = switchable_backend("west").await;
    let east = server(&mesh, east_app, "east").await;
    let west = server(&mesh, west_app, "west").await;
    (mesh, east, west, east_status)
}

#[tokio::test]
async fn locality_failover_prefers_the_local_cluster_and_spills_over_without_errors() {
    let (mesh, east, west, east_status) = two_clusters().await;
    let c = client(
        &mesh,
        east.inbound_addr,
        west.inbound_addr,
        "    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        failoverPriority: [topology.istio.io/network, topology.istio.io/cluster]
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}",
        "",
    )
    .await;
    for _ in 0..20 {
        assert_eq!(
            get(c.outbound_addr).await,
            (200, "east".to_owned()),
            "local cluster first"
        );
    }
    // The local endpoint starts failing: Istio's default retry moves the failed
    // request to the next priority once the endpoint is ejected. No request fails.
    east_status.store(503, Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(
            get(c.outbound_addr).await,
            (200, "west".to_owned()),
            "spilled over to the remote cluster"
        );
    }
    // Healthy again and past its ejection time: traffic comes home.
    east_status.store(200, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for _ in 0..5 {
        assert_eq!(get(c.outbound_addr).await.1, "east");
    }
}

#[tokio::test]
async fn locality_distribute_splits_traffic_by_share() {
    let (mesh, east, west, _) = two_clusters().await;
    let c = client(
        &mesh,
        east.inbound_addr,
        west.inbound_addr,
        "    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        distribute:
        - from: eu/*
          to: {\"eu/*\": 70, \"us/*\": 30}",
        "",
    )
    .await;
    let mut west_count = 0;
    for _ in 0..400 {
        let (status, body) = get(c.outbound_addr).await;
        assert_eq!(status, 200);
        if body == "west" {
            west_count += 1;
        }
    }
    // 30 % of 400 is 120; the binomial spread is about 9.
    assert!(
        (85..=155).contains(&west_count),
        "{west_count} of 400 went to us/*"
    );
}
