//! Seeds of the targets whose inputs are protobuf: a config stream response and a
//! peering update as discovery sends them, encoded (`mesh-fuzz --write-seeds`). The
//! text targets' seeds are written by hand in `fuzz/corpus/`.

use prost::Message as _;

fn service(name: &str, cluster: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "name": name,
        "namespace": "shop",
        "addresses": ["10.96.0.10"],
        "ports": [{"name": "http", "port": 9080, "targetPort": 8080},
                  {"name": "grpc", "port": 9090, "appProtocol": "grpc"}],
        "endpoints": [
            {"address": "10.1.0.1", "labels": {"app": name, "version": "v1"},
             "serviceAccount": name, "cluster": cluster, "network": format!("net-{cluster}"),
             "locality": "us/a/1", "weight": 1, "ready": true},
            {"address": "10.1.0.2", "inboundPort": 15006, "labels": {"app": name, "version": "v2"},
             "cluster": cluster, "network": format!("net-{cluster}"), "ready": false},
        ],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn istio(kind: &str, api: &str, name: &str, spec: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": api, "kind": kind,
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    }))
    .unwrap_or_default()
}

/// A config stream response: the node, a service, a VirtualService, a DestinationRule
/// and an AuthorizationPolicy, one removal.
pub fn config_response() -> Vec<u8> {
    use mesh_proto::config::{ConfigResponse, Resource};
    let node = serde_json::json!({"name": "web-1", "namespace": "shop", "cluster": "east",
        "network": "net-east", "locality": "us/a/1", "labels": {"app": "web"}});
    let resource = |name: &str, kind: &str, body: Vec<u8>| Resource {
        name: name.into(),
        version: format!("v-{}", body.len()),
        kind: kind.into(),
        body: body.into(),
    };
    ConfigResponse {
        nonce: "1".into(),
        system_version: "7".into(),
        resources: vec![
            resource("Node", "Node", serde_json::to_vec(&node).unwrap_or_default()),
            resource("Service/shop/reviews", "Service", service("reviews", "east")),
            resource(
                "VirtualService/shop/reviews",
                "VirtualService",
                istio("VirtualService", "networking.istio.io/v1", "reviews", serde_json::json!({
                    "hosts": ["reviews"],
                    "http": [{"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                              "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                             {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}],
                              "retries": {"attempts": 3, "perTryTimeout": "2s"}, "timeout": "5s"}]})),
            ),
            resource(
                "DestinationRule/shop/reviews",
                "DestinationRule",
                istio("DestinationRule", "networking.istio.io/v1", "reviews", serde_json::json!({
                    "host": "reviews",
                    "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 3},
                                      "loadBalancer": {"localityLbSetting": {"enabled": true}}},
                    "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                {"name": "v2", "labels": {"version": "v2"}}]})),
            ),
            resource(
                "AuthorizationPolicy/shop/reviews",
                "AuthorizationPolicy",
                istio("AuthorizationPolicy", "security.istio.io/v1", "reviews", serde_json::json!({
                    "selector": {"matchLabels": {"app": "reviews"}},
                    "rules": [{"from": [{"source": {"principals": ["td/ns/shop/sa/web"]}}],
                               "to": [{"operation": {"methods": ["GET"], "paths": ["/reviews/*"]}}]}]})),
            ),
        ],
        removed: vec!["Service/shop/old".into()],
    }
    .encode_to_vec()
}

/// A peering update: a full sync of two services with endpoints, and edges.
pub fn export_update() -> Vec<u8> {
    use mesh_proto::peering::{ExportUpdate, ExportedService};
    let exported = |name: &str| ExportedService {
        namespace: "shop".into(),
        name: name.into(),
        export_to: vec!["*".into()],
        body: service(name, "west").into(),
        version: "1".into(),
    };
    ExportUpdate {
        cluster: "west".into(),
        network: "net-west".into(),
        full: true,
        services: vec![exported("reviews"), exported("ratings")],
        removed: vec!["shop/old".into()],
        lease_seconds: 30,
        generation: 12,
        has_edges: true,
        edges: vec![mesh_proto::edges::Edge {
            source_cluster: "west".into(),
            source_namespace: "shop".into(),
            source_app: "reviews".into(),
            destination_service: "ratings.shop.svc.cluster.local".into(),
            destination_cluster: "east".into(),
            protocol: "http".into(),
            mtls: true,
            via_gateway: true,
            requests: 20,
            errors: 1,
            latency: vec![0, 3, 10, 7],
            window_ms: 2000,
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Writes the encoded seeds into the corpus directories; how many.
pub fn write() -> std::io::Result<usize> {
    let mut n = 0;
    for (target, file, bytes) in [
        ("config_stream", "seed-response", config_response()),
        ("peering", "seed-full-sync", export_update()),
    ] {
        let dir = crate::runner::corpus_dir(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(file), bytes)?;
        n += 1;
    }
    Ok(n)
}
