//! Live traffic through sidecars fed by discovery: a VirtualService change reroutes
//! requests in flight, and discovery going away and coming back fails no request.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);

fn entry(name: &str, version: &str, ip: IpAddr, inbound_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: shop
  annotations: {{isthmus.dev/inbound-port: \"{inbound_port}\"}}
spec: {{address: {ip}, labels: {{app: reviews, version: {version}}}, serviceAccount: reviews}}
"
    )
}

fn route_to(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"
    )
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_change_live_and_traffic_survives_a_discovery_restart() {
    // Loopback addresses of this test's workloads (all of 127/8 is local).
    let net = 20 + (std::process::id() % 200) as u8;
    let ip = |host: u8| IpAddr::from([127, net, 0, host]);
    let pki = Pki::new("east");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "reviews.yaml", SERVICE);
    write(dir.path(), "routes.yaml", &route_to("v1"));
    let discovery = start_files("east", dir.path(), &pki).await;
    let addr = discovery.grpc_addr;

    app((ip(2), 8080).into(), "v1").await;
    app((ip(3), 8080).into(), "v2").await;
    let v1 = sidecar(addr, &pki, "reviews-v1", "shop", "reviews", ip(2)).await;
    let v2 = sidecar(addr, &pki, "reviews-v2", "shop", "reviews", ip(3)).await;
    write(
        dir.path(),
        "entries.yaml",
        &format!(
            "{}---\n{}",
            entry("reviews-v1", "v1", ip(2), v1.sidecar.inbound_addr.port()),
            entry("reviews-v2", "v2", ip(3), v2.sidecar.inbound_addr.port())
        ),
    );
    let client = sidecar(addr, &pki, "frontend-1", "shop", "frontend", ip(9)).await;
    let outbound = client.sidecar.outbound_addr;
    eventually("client sees both endpoints", T, || {
        endpoints(&client.proxy.store, "reviews.shop.svc.cluster.local").len() == 2
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            get(outbound, "reviews:9080", "/").await.unwrap(),
            (200, "v1".into())
        );
    }

    // A VirtualService change reroutes live traffic.
    write(dir.path(), "routes.yaml", &route_to("v2"));
    let start = std::time::Instant::now();
    loop {
        let (status, body) = get(outbound, "reviews:9080", "/").await.unwrap();
        assert_eq!(status, 200);
        if body == "v2" {
            break;
        }
        assert!(start.elapsed() < T, "traffic never moved to v2");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        assert_eq!(
            get(outbound, "reviews:9080", "/").await.unwrap(),
            (200, "v2".into())
        );
    }

    // Discovery stops and comes back while requests flow: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(outbound, "reviews:9080", "/").await {
                    Ok((200, body)) if body == "v2" => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failed.lock().unwrap().push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(discovery);
    eventually("client stream closed", T, || {
        !client.proxy.status.load().connected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut options = options(
        "east",
        discovery::Source::Files(dir.path().to_owned()),
        &pki,
    );
    options.grpc = addr;
    let mut restarted = None;
    for _ in 0..50 {
        if let Ok(d) = discovery::start(options.clone()).await {
            restarted = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarted = restarted.expect("discovery restarts on the same address");
    eventually("all three proxies reconnect", T, || {
        restarted.statuses.connected() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "only {} requests",
        ok.load(Ordering::Relaxed)
    );
}
