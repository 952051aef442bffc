//! `meshctl proxy-status`, `proxy-config` and `analyze` against a running discovery
//! and a sidecar fed by it.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery::{CaAuth, CaCerts, Options, Source};
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};
use mesh_identity::{RootCa, SpiffeId, TrustBundle, TrustConfig};
use mesh_proxy::discovery_client::{DiscoveryClientOptions, StreamStatus};

async fn meshctl(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const REGISTRY: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop}
spec: {address: 10.1.0.1, labels: {app: reviews, version: v1}, locality: eu/a}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-dup, namespace: shop}
spec: {host: reviews, subsets: [{name: v1, labels: {version: other}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_config_and_analyze_show_what_proxies_hold() {
    let td = "mesh.example";
    let root = RootCa::generate(&td.parse().unwrap(), ROOT_VALIDITY).unwrap();
    let ca = root.intermediate("east", INTERMEDIATE_VALIDITY).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    ca.write(&tmp.path().join("cacerts")).unwrap();
    let registry = tmp.path().join("registry");
    std::fs::create_dir(&registry).unwrap();
    std::fs::write(registry.join("shop.yaml"), REGISTRY).unwrap();

    let mut options = Options::new(
        "east",
        "net-east",
        Source::Files(registry.clone()),
        CaCerts::Dir(tmp.path().join("cacerts")),
    );
    options.grpc = "127.0.0.1:0".parse().unwrap();
    options.monitor = Some("127.0.0.1:0".parse().unwrap());
    options.ca_auth = CaAuth::Disabled;
    let discovery = discovery::start(options).await.unwrap();
    let monitor = discovery.monitor_addr.unwrap().to_string();

    // A sidecar (admin listener included) whose config comes from discovery.
    let id = SpiffeId::new(td.parse().unwrap(), "shop", "frontend").unwrap();
    let cert = ca
        .issue_workload(&id, Duration::from_secs(3600))
        .unwrap()
        .load("t")
        .unwrap();
    let bundle =
        TrustBundle::from_pem(td.parse().unwrap(), root.cert_pem().as_bytes(), "r").unwrap();
    let identity =
        mesh_identity::Identity::new(cert, TrustConfig::new(td.parse().unwrap(), bundle)).unwrap();
    let store = Arc::new(mesh_proxy::StateStore::default());
    let sidecar = mesh_proxy::Sidecar::start(
        store.clone(),
        identity.clone(),
        mesh_proxy::SidecarOptions {
            outbound: "127.0.0.1:0".parse().unwrap(),
            inbound: "127.0.0.1:0".parse().unwrap(),
            app_ip: "127.0.0.1".parse().unwrap(),
            connect_timeout: Duration::from_secs(1),
            admin: vec!["127.0.0.1:0".parse().unwrap()],
            tracing: mesh_telemetry::trace::Tracing::disabled(),
            requests: Default::default(),
            dns: None,
        },
    )
    .await
    .unwrap();
    let node = mesh_proto::config::Node {
        name: "frontend-1".into(),
        namespace: "shop".into(),
        kind: "sidecar".into(),
        admin_address: sidecar.admin_addrs[0].to_string(),
        ..Default::default()
    };
    let _client = tokio::spawn(mesh_proxy::discovery_client::run(
        DiscoveryClientOptions::new(discovery.grpc_addr, discovery.spiffe_id(), node),
        identity,
        store.clone(),
        Arc::new(arc_swap::ArcSwap::from_pointee(StreamStatus::default())),
    ));
    let start = Instant::now();
    while discovery
        .statuses
        .list()
        .first()
        .is_none_or(|s| s.pending > 0 || s.pushes == 0)
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "proxy never synced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // proxy-status: the proxy and its state (the second rule merged, nothing refused).
    let (ok, out, err) = meshctl(vec![
        "proxy-status".into(),
        "--discovery".into(),
        monitor.clone(),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("NAME") && out.contains("frontend-1.shop"),
        "{out}"
    );
    assert!(out.contains("SYNCED"), "{out}");

    // proxy-config, found through discovery.
    let config = |section: &str| {
        meshctl(vec![
            "proxy-config".into(),
            "frontend-1".into(),
            section.into(),
            "--discovery".into(),
            monitor.clone(),
        ])
    };
    let (ok, out, err) = config("endpoints").await;
    assert!(ok, "{err}");
    assert!(out.contains("reviews.shop.svc.cluster.local"), "{out}");
    assert!(
        out.contains("10.1.0.1:15006") && out.contains("eu/a") && out.contains("version=v1"),
        "{out}"
    );
    let (ok, out, err) = config("routes").await;
    assert!(ok, "{err}");
    assert!(out.contains("shop/reviews"), "{out}");
    let (ok, out, err) = config("policies").await;
    assert!(ok, "{err}");
    assert!(
        out.contains("\"rule\": \"shop/reviews, shop/reviews-dup\""),
        "{out}"
    );
    let (ok, _, err) = meshctl(vec![
        "proxy-config".into(),
        "nobody".into(),
        "routes".into(),
        "--discovery".into(),
        monitor.clone(),
    ])
    .await;
    assert!(!ok && err.contains("knows no proxy \"nobody\""), "{err}");

    // analyze finds the subset nobody defines and what the second rule loses; exit 1.
    let (ok, out, err) = meshctl(vec![
        "analyze".into(),
        "-f".into(),
        registry.display().to_string(),
    ])
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "Error [IST0101] (VirtualService shop/reviews) spec.http[0].route[0].destination.subset"
        ),
        "{out}"
    );
    assert!(
        out.contains("Warning [IST0174] (DestinationRule shop/reviews-dup) spec.subsets[0]: not used: DestinationRule shop/reviews also defines it"),
        "{out}"
    );
    assert!(err.contains("1 error(s), 1 warning(s)"), "{out}{err}");
}
