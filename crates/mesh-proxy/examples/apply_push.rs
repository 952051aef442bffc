//! How long a sidecar takes to take in one push of the config stream: a proxy holding
//! S services of E endpoints each (and one VirtualService per ten services) receives
//! a push that changes one service's endpoints, as an endpoint churns. Prints the
//! median and p99 of `ResourceSet::apply` (decode, checks, compile, swap) over N
//! pushes.
//!
//!   cargo run --release -p mesh-proxy --example apply_push -- [SERVICES] [ENDPOINTS] [PUSHES]

use std::time::Instant;

use mesh_proto::config::{ConfigResponse, Resource};
use mesh_proxy::StateStore;
use mesh_proxy::discovery_client::{KIND_NODE, KIND_SERVICE, NODE_RESOURCE, ResourceSet};

fn service(i: usize, endpoints: usize, generation: usize) -> Resource {
    let eps: Vec<_> = (0..endpoints)
        .map(|e| {
            serde_json::json!({
                "address": format!("10.{}.{}.{}", i / 250, i % 250, (e + generation) % 250 + 1),
                "labels": {"app": format!("svc{i}"), "version": if e % 2 == 0 { "v1" } else { "v2" }},
                "serviceAccount": format!("svc{i}"), "cluster": "east", "network": "net-east",
                "locality": "region/zone-a"
            })
        })
        .collect();
    let body = serde_json::json!({"name": format!("svc{i}"), "namespace": "shop",
        "addresses": [format!("172.16.{}.{}", i / 250, i % 250 + 1)],
        "ports": [{"name": "http", "port": 8080}], "endpoints": eps});
    Resource {
        name: format!("Service/shop/svc{i}"),
        version: format!("g{generation}"),
        kind: KIND_SERVICE.into(),
        body: body.to_string().into_bytes().into(),
    }
}

fn virtual_service(i: usize) -> Resource {
    let body = serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": format!("svc{i}"), "namespace": "shop"},
        "spec": {"hosts": [format!("svc{i}")], "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "route": [{"destination": {"host": format!("svc{i}")}}]},
            {"route": [{"destination": {"host": format!("svc{i}")}, "weight": 90},
                       {"destination": {"host": format!("svc{}", i + 1)}, "weight": 10}]}]}
    });
    Resource {
        name: format!("VirtualService/shop/svc{i}"),
        version: "1".into(),
        kind: "VirtualService".into(),
        body: body.to_string().into_bytes().into(),
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let (services, endpoints, pushes) = (
        args.first().copied().unwrap_or(1000),
        args.get(1).copied().unwrap_or(10),
        args.get(2).copied().unwrap_or(200),
    );
    let store = StateStore::default();
    let mut set = ResourceSet::default();
    let mut first = vec![Resource {
        name: NODE_RESOURCE.into(),
        version: "n1".into(),
        kind: KIND_NODE.into(),
        body: br#"{"name":"fe-1","namespace":"shop","serviceAccount":"fe","cluster":"east","network":"net-east","locality":"region/zone-a"}"#.to_vec().into(),
    }];
    first.extend((0..services).map(|i| service(i, endpoints, 0)));
    first.extend((0..services).step_by(10).map(virtual_service));
    let started = Instant::now();
    let applied = set.apply(
        &ConfigResponse {
            system_version: "0".into(),
            resources: first,
            ..Default::default()
        },
        &store,
    );
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    println!(
        "first push: {services} services x {endpoints} endpoints: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut times = Vec::with_capacity(pushes);
    for p in 1..=pushes {
        let response = ConfigResponse {
            system_version: p.to_string(),
            resources: vec![service(p % services, endpoints, p)],
            ..Default::default()
        };
        let t = Instant::now();
        let applied = set.apply(&response, &store);
        times.push(t.elapsed());
        assert!(applied.changed && applied.rejected.is_empty());
    }
    times.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "one service changed: median {:.2} ms, p99 {:.2} ms, max {:.2} ms over {pushes} pushes",
        ms(times[pushes / 2]),
        ms(times[pushes * 99 / 100]),
        ms(times[pushes - 1])
    );
}
