//! Live traffic through sidecars fed by discovery: a VirtualService change reroutes
//! requests in flight, discovery going away and coming back fails no request, and
//! every shape of refused input leaves the last good config in force under traffic.

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

/// reviews v1 and v2 (each an app behind its sidecar) and a frontend client, fed by a
/// file-registry discovery reading `files`, on loopback addresses 127.N.`subnet`.x.
struct Bed {
    pki: Pki,
    dir: tempfile::TempDir,
    discovery: discovery::Discovery,
    client: MeshSidecar,
    _reviews: [MeshSidecar; 2],
}

async fn bed(subnet: u8, files: &[(&str, &str)]) -> Bed {
    // Loopback addresses of this test's workloads (all of 127/8 is local).
    let net = 20 + (std::process::id() % 200) as u8;
    let ip = |host: u8| IpAddr::from([127, net, subnet, host]);
    let pki = Pki::new("east");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "reviews.yaml", SERVICE);
    for (file, text) in files {
        write(dir.path(), file, text);
    }
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
    eventually("client sees both endpoints", T, || {
        endpoints(&client.proxy.store, "reviews.shop.svc.cluster.local").len() == 2
    })
    .await;
    Bed {
        pki,
        dir,
        discovery,
        client,
        _reviews: [v1, v2],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_change_live_and_traffic_survives_a_discovery_restart() {
    let routes = route_to("v1");
    let Bed {
        pki,
        dir,
        discovery,
        client,
        _reviews,
    } = bed(0, &[("routes.yaml", &routes)]).await;
    let addr = discovery.grpc_addr;
    let outbound = client.sidecar.outbound_addr;
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

const GOOD_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v2}}]
";

const GOOD_DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

const GOOD_AP: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]
";

/// Every shape the API refuses, each as a user would apply it (an update of an object
/// in force, or a new object), with the object key and a part of the refusal that
/// names the field.
fn refused_shapes() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let vs = |http: &str| {
        GOOD_VS.replace(
            "  - route: [{destination: {host: reviews, subset: v2}}]",
            http,
        )
    };
    let dr = |extra: &str| format!("{GOOD_DR}{extra}");
    let ap = |spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: shop}}\nspec: {spec}\n"
        )
    };
    vec![
        ("vs.yaml", vs("  - rout: []"), "VirtualService/shop/reviews", "spec.http[0]"),
        ("vs.yaml", vs("  - match: [{uri: {regex: \"(\"}}]\n    route: [{destination: {host: reviews}}]"), "VirtualService/shop/reviews", "spec.http[0].match[0].uri.regex"),
        ("vs.yaml", vs("  - route: [{destination: {host: reviews}, headers: {request: {set: {a: b}}}}]"), "VirtualService/shop/reviews", "spec.http[0].route[0].headers"),
        ("vs.yaml", vs("  - corsPolicy: {allowOrigins: [{exact: x}]}\n    route: [{destination: {host: reviews}}]"), "VirtualService/shop/reviews", "spec.http[0].corsPolicy"),
        ("vs.yaml", GOOD_VS.replace("  hosts: [reviews]", "  hosts: [reviews]\n  gateways: [shop/ingress/x]"), "VirtualService/shop/reviews", "spec.gateways[0]"),
        ("vs.yaml", vs("  - match: [{headers: {\"bad header\": {exact: x}}}]\n    route: [{destination: {host: reviews}}]"), "VirtualService/shop/reviews", "headers[\"bad header\"]"),
        ("vs.yaml", vs("  - match: [{headers: {\"@request.auth.claims.group\": {exact: x}}}]\n    route: [{destination: {host: reviews}}]"), "VirtualService/shop/reviews", "JWT claims"),
        ("dr.yaml", dr("  trafficPolicy: {tls: {mode: MUTUAL}}\n"), "DestinationRule/shop/reviews", "spec.trafficPolicy.tls.mode"),
        ("dr.yaml", dr("  workloadSelector: {matchLabels: {app: frontend}}\n"), "DestinationRule/shop/reviews", "spec.workloadSelector"),
        ("ap.yaml", ap("{action: CUSTOM, provider: {name: ext}, rules: [{}]}"), "AuthorizationPolicy/shop/no-admin", "spec.action"),
        ("ra.yaml", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: shop}\nspec: {jwtRules: [{issuer: issuer.example}]}\n".into(), "RequestAuthentication/shop/jwt", "spec.jwtRules[0].issuer"),
        ("ap.yaml", ap("{action: DENY, rules: [{when: [{key: \"request.auth.claims[]\", values: [x]}]}]}"), "AuthorizationPolicy/shop/no-admin", "request.auth.claims[NAME]"),
        ("ap.yaml", ap("{action: DENY, targetRefs: [{kind: Service, name: reviews}], rules: [{}]}"), "AuthorizationPolicy/shop/no-admin", "spec.targetRefs"),
        ("gw.yaml", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: shop}\nspec: {selector: {istio: ingressgateway}, servers: [{port: {number: 27017, name: mongo, protocol: MONGO}, hosts: ['*']}]}\n".into(), "Gateway/shop/ingress", "MONGO servers are not served"),
        ("se.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: legacy, namespace: shop}\nspec: {hosts: [legacy.example], ports: [{number: 80, name: http, protocol: HTTP}], endpoints: [{address: 10.9.9.9}]}\n".into(), "ServiceEntry/shop/legacy", "spec.resolution: NONE (also when unset) needs the entry's `addresses`"),
        ("sidecar.yaml", "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec: {egress: [{hosts: [\"reviews\"]}]}\n".into(), "Sidecar/shop/default", "namespace/dnsName"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_shape_leaves_the_last_good_config_in_force_under_traffic() {
    let b = bed(
        1,
        &[
            ("vs.yaml", GOOD_VS),
            ("dr.yaml", GOOD_DR),
            ("ap.yaml", GOOD_AP),
        ],
    )
    .await;
    let (dir, discovery, client) = (&b.dir, &b.discovery, &b.client);
    let outbound = client.sidecar.outbound_addr;
    // The good config in force: every request to v2 (VirtualService + subset of the
    // DestinationRule), /admin denied (AuthorizationPolicy).
    let in_force = || async {
        for _ in 0..5 {
            let got = get(outbound, "reviews:9080", "/").await;
            if got != Ok((200, "v2".into())) {
                return Err(format!("/ answered {got:?}"));
            }
        }
        match get(outbound, "reviews:9080", "/admin").await {
            Ok((403, _)) => Ok(()),
            other => Err(format!("/admin answered {other:?}")),
        }
    };
    let start = std::time::Instant::now();
    while let Err(e) = in_force().await {
        assert!(
            start.elapsed() < T,
            "the good config never took effect: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for (file, yaml, key, field) in refused_shapes() {
        let good = std::fs::read_to_string(dir.path().join(file)).ok();
        write(dir.path(), file, &yaml);
        eventually(&format!("{key} refused naming {field}"), T, || {
            discovery
                .registry
                .errors()
                .iter()
                .any(|e| e.object == key && e.reason.contains(field))
        })
        .await;
        let err = discovery
            .registry
            .errors()
            .into_iter()
            .find(|e| e.object == key)
            .unwrap();
        // An update of an object in force keeps the object's last good version.
        assert_eq!(err.last_good_in_force, good.is_some(), "{key}: {err:?}");
        let kind = key.split('/').next().unwrap();
        assert!(err.reason.starts_with(&format!("{kind} shop/")), "{err:?}");
        // Traffic is served exactly as before, with the refusal in place.
        in_force()
            .await
            .unwrap_or_else(|e| panic!("after refusing {key} ({field}): {e}"));
        // The user fixes it (puts the good version back, or removes the new object).
        match good {
            Some(g) => write(dir.path(), file, &g),
            None => std::fs::remove_file(dir.path().join(file)).unwrap(),
        }
        eventually(&format!("{key} no longer refused"), T, || {
            !discovery.registry.errors().iter().any(|e| e.object == key)
        })
        .await;
    }
    in_force().await.unwrap();
    assert!(client.proxy.status.load().rejected.is_empty());

    // A field accepted without effect is not an error: the object is used, and the
    // monitoring port counts the field (meshctl analyze names it).
    write(
        dir.path(),
        "dr.yaml",
        &GOOD_DR.replace(
            "  subsets:",
            "  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 5, interval: 5s}}\n  subsets:",
        ),
    );
    let monitor = discovery.monitor_addr.unwrap();
    let start = std::time::Instant::now();
    loop {
        let (_, metrics) = mesh_net::http::get(monitor, "/metrics").await.unwrap();
        if metrics.contains("isthmus_discovery_config_warned_fields 1") {
            assert!(
                metrics.contains("isthmus_discovery_config_refused_objects 0"),
                "{metrics}"
            );
            break;
        }
        assert!(
            start.elapsed() < T,
            "the warned field is not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    in_force().await.unwrap();
}
