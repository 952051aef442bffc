//! Fuzz targets: every parser that reads what another cluster, a proxy or the network
//! sends, each a function of arbitrary bytes that must neither panic nor break the
//! property it states. The same functions run three ways:
//!
//! - under libFuzzer with cargo-fuzz on a nightly toolchain (`fuzz/`, coverage guided;
//!   what it finds worth keeping goes into `fuzz/corpus/TARGET/`);
//! - on stable, by [`runner`]: the corpus replayed, then random mutations of it for a
//!   time budget (`cargo test -p mesh-fuzz` runs each target a few seconds on every
//!   test run; `cargo run -p mesh-fuzz --release -- TARGET --seconds 600` for longer);
//! - as regression tests: an input that once failed is kept in the corpus.

pub mod runner;
pub mod seeds;

/// A fuzz target: any bytes in, a panic out when a property breaks.
pub type Target = fn(&[u8]);

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus
/// directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("istio_yaml", istio_yaml),
    ("client_hello", client_hello),
    ("config_stream", config_stream),
    ("peering", peering),
    ("tunnel_header", tunnel_header),
    ("authz_path", authz_path),
];

/// Istio documents as a user or an API server gives them: the multi-document YAML
/// reader, then every kind's parser and validator (`mesh_api::from_value`). A document
/// that is taken must be taken again from its own JSON form, with the same result.
pub fn istio_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = mesh_api::parse_resources(text) else {
        return;
    };
    for resource in docs.into_iter().flatten() {
        let json = resource.to_value().expect("a taken resource serializes");
        let again = mesh_api::from_value(json.clone());
        assert!(
            again.is_ok(),
            "a taken resource is refused from its own JSON: {json} → {again:?}"
        );
    }
}

/// A ClientHello as a sidecar's capture and the east-west gateway read it: the record
/// reader and the server name, then the outbound SNI the gateway routes on. The bytes
/// the reader returns are forwarded unchanged, so they must be a prefix of the input.
pub fn client_hello(data: &[u8]) {
    let mut reader = data;
    let read = futures::executor::block_on(mesh_proxy::sni::read_client_hello(&mut reader));
    if let Ok((raw, sni)) = read {
        assert!(
            data.starts_with(&raw),
            "forwarded bytes are not the input's"
        );
        if let Some(sni) = sni
            && let Some(parsed) = mesh_proxy::sni::parse_outbound_sni(&sni)
        {
            let rebuilt = mesh_proxy::sni::outbound_sni(parsed.port, parsed.subset, parsed.host);
            assert_eq!(
                mesh_proxy::sni::parse_outbound_sni(&rebuilt),
                Some(parsed),
                "an outbound SNI does not survive its own rebuilding"
            );
        }
    }
}

/// A config stream response as discovery (or whoever holds the connection) could send
/// it, decoded and taken through the proxy's one intake into a live store, twice: a
/// response whose resources were all refused must leave the live state as it was.
pub fn config_stream(data: &[u8]) {
    let Ok(response) = <mesh_proto::config::ConfigResponse as prost::Message>::decode(data) else {
        return;
    };
    let store = mesh_proxy::StateStore::default();
    let mut set = mesh_proxy::discovery_client::ResourceSet::default();
    let before = store.snapshot().version.clone();
    let applied = set.apply(&response, &store);
    if !response.resources.is_empty()
        && applied.rejected.len() == response.resources.len()
        && response.removed.is_empty()
    {
        assert_eq!(
            store.snapshot().version,
            before,
            "a response refused whole changed the live config"
        );
    }
    // The same response again (a resend after a reconnect) must be taken the same way.
    let _ = set.apply(&response, &store);
}

/// A peering update as a linked cluster could send it: decoded, its services read as
/// the subscriber reads them, merged into a registry (a full sync, then the same as
/// an incremental update), and the registry's outputs compiled.
pub fn peering(data: &[u8]) {
    let Ok(update) = <mesh_proto::peering::ExportUpdate as prost::Message>::decode(data) else {
        return;
    };
    let registry = discovery::registry::Registry::new("east", "net-east", &[]);
    let services = discovery::link_client::decode_services("west", &update);
    registry.set_remote(
        "west",
        Some(discovery::registry::RemoteCluster {
            network: update.network.clone(),
            gateway: Some(std::net::SocketAddr::from(([10, 0, 0, 1], 15443))),
            gateway_quic: true,
            services: services
                .iter()
                .cloned()
                .map(|(k, cfg, e)| (k, (cfg, e)))
                .collect(),
            stale_since: None,
        }),
    );
    let _ = registry.all();
    registry.update_remote(
        "west",
        services,
        discovery::link_client::removed_services(&update),
    );
    let _ = registry.all();
    let _ = registry.exports_all();
    registry.edges().set_remote("west", update.edges);
    let _ = registry.edges().graph(("east", "net-east"), &[]);
}

/// The first line of a QUIC tunnel stream (target, caller's cluster, traceparent). A
/// cluster that is not a DNS label is never taken as given; a trace position that is
/// taken prints back as a valid one.
pub fn tunnel_header(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let header = mesh_proxy::tunnel::parse_header(line);
    assert!(
        header.source_cluster == "unknown"
            || header
                .source_cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "cluster {:?} taken",
        header.source_cluster
    );
    if let Some(trace) = header.trace {
        let printed = trace.to_w3c();
        assert_eq!(
            mesh_telemetry::trace::TraceParent::parse(&printed),
            Some(trace),
            "a taken traceparent does not survive its own printing: {printed}"
        );
    }
}

/// The policies the authorization target checks every path against.
const POLICIES: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin/*, /admin]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews, namespace: shop}
spec:
  rules: [{to: [{operation: {methods: [GET], paths: ['/reviews/{*}', '/static/{**}']}}]}]
";

fn policies() -> &'static mesh_proxy::authz::Authorizer {
    static AUTHZ: std::sync::OnceLock<mesh_proxy::authz::Authorizer> = std::sync::OnceLock::new();
    AUTHZ.get_or_init(|| {
        let resources: Vec<mesh_api::Resource> = mesh_api::parse_resources(POLICIES)
            .expect("the policies parse")
            .into_iter()
            .map(|r| r.expect("the policies are valid"))
            .collect();
        let refs: Vec<&mesh_api::Resource> = resources.iter().collect();
        let node = mesh_proto::model::Node {
            namespace: "shop".into(),
            ..Default::default()
        };
        mesh_proxy::state::security_for(&refs, &node).1
    })
}

/// A request path as a client sends it: normalized in every mode, then decided by a
/// DENY policy on `/admin` and an ALLOW with path templates. Whatever the client
/// wrote, a path that normalizes (by default) into `/admin` or under it is denied,
/// and normalizing a normalized path changes nothing for the modes that do not decode.
pub fn authz_path(data: &[u8]) {
    use mesh_proxy::path::PathNormalization as N;
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let (method, target) = raw.split_once(' ').unwrap_or(("GET", raw));
    // What the sidecar normalizes is the URI's path, without its query.
    let path = target.split('?').next().unwrap_or_default();
    for mode in [N::None, N::Base, N::MergeSlashes, N::DecodeAndMergeSlashes] {
        let once = mode.apply(path).into_owned();
        if matches!(mode, N::None | N::Base | N::MergeSlashes) {
            assert_eq!(
                mode.apply(&once),
                once,
                "{mode:?} is not idempotent on {path:?}"
            );
        }
    }
    let normalized = N::Base.apply(path).into_owned();
    let headers = http::HeaderMap::new();
    let decision = policies().decide(&mesh_proxy::authz::Attributes {
        principal: "td/ns/shop/sa/web",
        principal_aliases: &[],
        source_ip: None,
        remote_ip: None,
        destination_ip: None,
        port: 9080,
        sni: "",
        http: Some(mesh_proxy::authz::HttpAttributes {
            method,
            path: &normalized,
            host: "reviews",
            headers: &headers,
            request_principal: None,
            claims: None,
        }),
    });
    if normalized == "/admin" || normalized.starts_with("/admin/") {
        assert!(
            matches!(decision, mesh_proxy::authz::Decision::Deny(_)),
            "{raw:?} (normalized {normalized:?}) reached /admin: {decision:?}"
        );
    }
}
