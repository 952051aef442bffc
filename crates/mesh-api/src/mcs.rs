//! The Kubernetes Multi-Cluster Services API (KEP-1645, `multicluster.x-k8s.io`):
//! `ServiceExport` marks a Service of a cluster as part of the clusterset, and
//! `ServiceImport` describes the clusterset service `NAME.NS.svc.clusterset.local` a
//! cluster consumes. Isthmus reads both: a Service with a ServiceExport in any linked
//! cluster is reachable under its `clusterset.local` name, with the endpoints of every
//! cluster that exports it; a ServiceImport's `ips` are that service's virtual IPs.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The MCS API group.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// The MCS API version read.
pub const MCS_VERSION: &str = "v1alpha1";
/// The DNS zone of clusterset services (`NAME.NS.svc.clusterset.local`).
pub const CLUSTERSET_DOMAIN: &str = "clusterset.local";

/// `ServiceExport`: the Service of the same namespace and name is exported to the
/// clusterset. Its spec is empty.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    namespaced,
    derive = "PartialEq",
    shortname = "svcex"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportSpec {}

/// `ServiceImport`: a clusterset service as one cluster consumes it.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    namespaced,
    derive = "PartialEq",
    shortname = "svcim"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// `ClusterSetIP` or `Headless`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The clusterset virtual IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// The ports of the clusterset service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServiceImportPort>,
    /// `ClientIP` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
}

/// One port of a ServiceImport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportPort {
    /// Port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP, UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The application protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Port number.
    pub port: i32,
}

/// `NAME.NS.svc.clusterset.local`.
pub fn clusterset_host(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTERSET_DOMAIN}")
}

/// `(name, namespace)` of a clusterset host.
pub fn parse_clusterset_host(host: &str) -> Option<(&str, &str)> {
    let rest = host
        .trim_end_matches('.')
        .strip_suffix(CLUSTERSET_DOMAIN)?
        .strip_suffix(".svc.")?;
    let (name, namespace) = rest.split_once('.')?;
    (!name.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then_some((name, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusterset_hosts_round_trip() {
        let host = clusterset_host("reviews", "shop");
        assert_eq!(host, "reviews.shop.svc.clusterset.local");
        assert_eq!(parse_clusterset_host(&host), Some(("reviews", "shop")));
        assert_eq!(
            parse_clusterset_host("reviews.shop.svc.clusterset.local."),
            Some(("reviews", "shop"))
        );
        for other in [
            "reviews.shop.svc.cluster.local",
            "shop.svc.clusterset.local",
            "a.b.c.svc.clusterset.local",
        ] {
            assert_eq!(parse_clusterset_host(other), None, "{other}");
        }
    }
}
