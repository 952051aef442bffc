//! What the scale examples share: registry objects made in bulk, simulated proxies
//! (mTLS, the config stream, an ACK per response) and this process's resident memory.

use std::time::{Duration, Instant};

use discovery::registry::{EXPORT_TO_ANNOTATION, Object};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_proto::config::config_discovery_client::ConfigDiscoveryClient;
use mesh_proto::config::{ConfigRequest, ConfigResponse, Node};

/// This process's resident memory, in bytes.
pub(crate) fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn meta(ns: &str, name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
    let map = |kv: &[(&str, &str)]| {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    };
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        labels: map(labels),
        annotations: map(annotations),
        ..Default::default()
    }
}

/// A Service with one HTTP port, exported to `export_to`.
pub(crate) fn service(ns: &str, name: &str, export_to: &str) -> Object {
    Object::Service(Box::new(Service {
        metadata: meta(ns, name, &[], &[(EXPORT_TO_ANNOTATION, export_to)]),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 9080,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// `count` ready endpoints of `name`, from `first_ip` shifted by `generation`.
pub(crate) fn slice(ns: &str, name: &str, first_ip: u32, count: usize, generation: u32) -> Object {
    let endpoints = (0..count as u32)
        .map(|i| Endpoint {
            addresses: vec![std::net::Ipv4Addr::from(first_ip + i + generation).to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    Object::EndpointSlice(Box::new(EndpointSlice {
        metadata: meta(
            ns,
            &format!("{name}-abc"),
            &[("kubernetes.io/service-name", name)],
            &[],
        ),
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            ..Default::default()
        }]),
    }))
}

/// A simulated proxy named `name` in `ns` on the config stream of the discovery at
/// `addr`: it ACKs
/// every response at once and tells `seen` of each (with when it arrived) before.
pub(crate) fn spawn_proxy(
    addr: std::net::SocketAddr,
    identity: mesh_identity::Identity,
    discovery_id: mesh_identity::SpiffeId,
    name: String,
    ns: String,
    seen: impl Fn(&ConfigResponse, Instant) + Send + 'static,
) {
    tokio::spawn(async move {
        let channel = mesh_net::channel::channel(addr, &identity, vec![discovery_id])
            .await
            .expect("connect");
        let mut client = ConfigDiscoveryClient::new(channel).max_decoding_message_size(256 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(ConfigRequest {
            node: Some(Node {
                name,
                namespace: ns,
                kind: "sidecar".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .ok();
        let mut stream = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            tx.send(ConfigRequest {
                response_nonce: resp.nonce.clone(),
                applied_version: resp.system_version.clone(),
                ..Default::default()
            })
            .await
            .ok();
            seen(&resp, now);
        }
    });
}

/// `p50 …, p90 …, p99 …, max …` of `latencies` (sorted here), and the p99.
pub(crate) fn percentiles(latencies: &mut [Duration]) -> (String, Duration) {
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(
                ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1)) - 1,
            )
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (
        format!(
            "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(pct(0.5)),
            ms(pct(0.9)),
            ms(pct(0.99)),
            ms(latencies.last().copied().unwrap_or_default())
        ),
        pct(0.99),
    )
}
