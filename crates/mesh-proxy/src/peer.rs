//! Who is on each side of a request, for metrics: the calling sidecar tells the
//! receiving one its workload, namespace, cluster, app and version in the
//! `x-isthmus-peer` header (the receiving sidecar strips it before the application sees
//! it), and the callee is known from the endpoint that was chosen.

use std::sync::Arc;

use mesh_telemetry::metrics::PeerLabels;

use crate::config::Node;
use crate::model::{Endpoint, Service};

/// The header carrying the caller's metadata between sidecars.
pub const PEER_HEADER: &str = "x-isthmus-peer";

/// The header value describing `node`.
pub fn encode(node: &Node) -> String {
    let label = |k: &str| node.labels.get(k).map_or("", String::as_str);
    format!(
        "workload={};namespace={};cluster={};app={};version={}",
        node.name,
        node.namespace,
        node.cluster,
        label("app"),
        label("version")
    )
}

/// Fields of a peer header value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Workload.
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// Cluster.
    pub cluster: String,
    /// `app` label.
    pub app: String,
    /// `version` label.
    pub version: String,
}

/// Parses a peer header value; unknown keys are ignored.
pub fn decode(value: &str) -> PeerInfo {
    let mut p = PeerInfo::default();
    for part in value.split(';') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let v = v.to_owned();
        match k.trim() {
            "workload" => p.workload = v,
            "namespace" => p.namespace = v,
            "cluster" => p.cluster = v,
            "app" => p.app = v,
            "version" => p.version = v,
            _ => {}
        }
    }
    p
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_owned()
    }
}

/// Labels seen by the calling side (`reporter="source"`).
pub fn source_report(
    node: &Node,
    own_id: &str,
    service: &Service,
    endpoint: Option<&Endpoint>,
    td: &str,
) -> PeerLabels {
    let ep_label = |k: &str| {
        endpoint
            .and_then(|e| e.labels.get(k))
            .map_or("unknown".to_owned(), Clone::clone)
    };
    PeerLabels {
        destination_workload: ep_label("app"),
        destination_workload_namespace: service.namespace.clone(),
        destination_principal: endpoint
            .and_then(|e| e.service_account.as_ref())
            .map_or("unknown".into(), |sa| {
                format!("spiffe://{td}/ns/{}/sa/{sa}", service.namespace)
            }),
        destination_app: ep_label("app"),
        destination_version: ep_label("version"),
        destination_service: service.host.clone(),
        destination_service_name: service.name.clone(),
        destination_service_namespace: service.namespace.clone(),
        destination_cluster: endpoint.map_or("unknown".into(), |e| or_unknown(&e.cluster)),
        connection_security_policy: "unknown".into(),
        ..source_side(node, own_id)
    }
}

/// The client side of the labels this proxy reports as the source.
fn source_side(node: &Node, own_id: &str) -> PeerLabels {
    PeerLabels {
        reporter: "source".into(),
        source_workload: or_unknown(&node.name),
        source_workload_namespace: or_unknown(&node.namespace),
        source_principal: own_id.to_owned(),
        source_app: or_unknown(node.labels.get("app").map_or("", String::as_str)),
        source_version: or_unknown(node.labels.get("version").map_or("", String::as_str)),
        source_cluster: or_unknown(&node.cluster),
        ..Default::default()
    }
}

/// The labels of a captured connection to an address no service has: its upstream
/// cluster (`PassthroughCluster` or `BlackHoleCluster`) stands for the destination
/// service, as in Istio.
pub fn unregistered_labels(node: &Node, own_id: &str, cluster: &str) -> PeerLabels {
    PeerLabels {
        destination_workload: "unknown".into(),
        destination_workload_namespace: "unknown".into(),
        destination_principal: "unknown".into(),
        destination_app: "unknown".into(),
        destination_version: "unknown".into(),
        destination_service: cluster.to_owned(),
        destination_service_name: cluster.to_owned(),
        destination_service_namespace: "unknown".into(),
        destination_cluster: "unknown".into(),
        connection_security_policy: "unknown".into(),
        ..source_side(node, own_id)
    }
}

/// [`source_report`] made once per endpoint (over mTLS) or once per service (no
/// endpoint chosen yet) of a compiled state, shared by every request after that.
pub fn source_labels(
    node: &Node,
    own_id: &str,
    service: &Service,
    endpoint: Option<&Endpoint>,
    td: &str,
) -> Arc<PeerLabels> {
    match endpoint {
        Some(e) => e
            .source_labels
            .get_or_init(|| {
                let mut labels = source_report(node, own_id, service, Some(e), td);
                labels.connection_security_policy = "mutual_tls".into();
                Arc::new(labels)
            })
            .clone(),
        None => service
            .source_labels
            .get_or_init(|| Arc::new(source_report(node, own_id, service, None, td)))
            .clone(),
    }
}

/// Labels seen by the receiving side (`reporter="destination"`).
pub fn destination_report(
    node: &Node,
    own_id: &str,
    caller: &PeerInfo,
    caller_id: &str,
    service_host: &str,
) -> PeerLabels {
    let label = |k: &str| or_unknown(node.labels.get(k).map_or("", String::as_str));
    let (name, namespace) = service_host
        .split_once('.')
        .map_or((service_host, ""), |(n, rest)| {
            (n, rest.split('.').next().unwrap_or_default())
        });
    PeerLabels {
        reporter: "destination".into(),
        source_workload: or_unknown(&caller.workload),
        source_workload_namespace: or_unknown(&caller.namespace),
        source_principal: or_unknown(caller_id),
        source_app: or_unknown(&caller.app),
        source_version: or_unknown(&caller.version),
        source_cluster: or_unknown(&caller.cluster),
        destination_workload: or_unknown(&node.name),
        destination_workload_namespace: or_unknown(&node.namespace),
        destination_principal: own_id.to_owned(),
        destination_app: label("app"),
        destination_version: label("version"),
        destination_service: or_unknown(service_host),
        destination_service_name: or_unknown(name),
        destination_service_namespace: or_unknown(namespace),
        destination_cluster: or_unknown(&node.cluster),
        connection_security_policy: "mutual_tls".into(),
    }
}

/// The span attributes that name this proxy's workload (Istio's).
pub(crate) fn node_span_attributes(node: &crate::config::Node) -> [(&'static str, String); 3] {
    [
        ("node_id", node.name.clone()),
        ("istio.namespace", node.namespace.clone()),
        (
            "istio.canonical_service",
            node.labels.get("app").cloned().unwrap_or_default(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_header_round_trips() {
        let node = Node {
            name: "productpage-1".into(),
            namespace: "shop".into(),
            cluster: "east".into(),
            labels: [("app".to_owned(), "productpage".to_owned())].into(),
            ..Default::default()
        };
        let p = decode(&encode(&node));
        assert_eq!(
            (p.workload.as_str(), p.cluster.as_str(), p.app.as_str()),
            ("productpage-1", "east", "productpage")
        );
    }
}
