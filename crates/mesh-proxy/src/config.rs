//! What a proxy is told: who it is, the services it may call with their endpoints,
//! and the Istio resources that shape its traffic. The same shape arrives from a file
//! (standalone use and tests) or, later, from discovery's push stream.
//!
//! File form: multi-document YAML. One `ProxyConfig` document, plus any number of
//! Istio documents (VirtualService, DestinationRule, PeerAuthentication, …):
//!
//! ```yaml
//! apiVersion: isthmus.dev/v1alpha1
//! kind: ProxyConfig
//! node: {name: frontend-1, namespace: shop, serviceAccount: frontend, cluster: east,
//!        network: net-east, locality: eu-west/zone-a, labels: {app: frontend}}
//! services:
//! - name: reviews
//!   namespace: shop
//!   ports: [{name: http, port: 9080, targetPort: 9080}]
//!   endpoints:
//!   - {address: 10.1.0.7, labels: {version: v1}, serviceAccount: reviews}
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! ...
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The port a sidecar accepts mesh (mTLS) traffic on.
pub const INBOUND_PORT: u16 = 15006;
/// The port a sidecar accepts outbound traffic from its application on.
pub const OUTBOUND_PORT: u16 = 15001;
/// Kubernetes' cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The `ProxyConfig` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Always `isthmus.dev/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `ProxyConfig`.
    #[serde(default)]
    pub kind: String,
    /// Version label of this config (shown in `/config_dump` and logs).
    #[serde(default)]
    pub version: String,
    /// The workload this proxy serves.
    pub node: Node,
    /// Services this proxy can reach.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// The workload a proxy runs beside.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// Workload (pod) name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account: the SPIFFE identity is `spiffe://TD/ns/NAMESPACE/sa/SA`.
    #[serde(default = "default_sa")]
    pub service_account: String,
    /// Cluster name.
    #[serde(default)]
    pub cluster: String,
    /// Network name.
    #[serde(default)]
    pub network: String,
    /// `region/zone/subzone`.
    #[serde(default)]
    pub locality: String,
    /// Workload labels (for `sourceLabels` matches and policy selectors).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_sa() -> String {
    "default".into()
}

/// A service and its endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Virtual IPs (the Kubernetes ClusterIP): captured connections to them are
    /// routed to this service.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePortConfig>,
    /// Endpoints (in any cluster or network).
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

/// A service port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePortConfig {
    /// Port name; its prefix gives the protocol as in Istio (`http-…`, `grpc-…`, `tcp-…`).
    #[serde(default)]
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Port on the workload (defaults to `port`).
    #[serde(default)]
    pub target_port: Option<u16>,
    /// Explicit protocol (`http`, `http2`, `grpc`, `tcp`, …), overriding the name.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    /// IP address of the workload.
    pub address: IpAddr,
    /// Port where the workload's sidecar accepts mesh traffic (default 15006).
    #[serde(default)]
    pub inbound_port: Option<u16>,
    /// Labels of the workload.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Service account of the workload.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Cluster the endpoint runs in.
    #[serde(default)]
    pub cluster: String,
    /// Network the endpoint is on.
    #[serde(default)]
    pub network: String,
    /// `region/zone/subzone`.
    #[serde(default)]
    pub locality: String,
    /// Load-balancing weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// False when the workload is not ready.
    #[serde(default = "yes")]
    pub ready: bool,
    /// `quic` when the endpoint is an east-west gateway that also accepts QUIC tunnels
    /// on the same port (UDP); sidecars then try QUIC first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    /// True when the endpoint's cluster stopped renewing its lease (its control plane
    /// is silent) but its east-west gateway still passes health checks: kept, shown
    /// as stale.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

fn yes() -> bool {
    true
}

/// A full config as read: the ProxyConfig and the Istio resources.
#[derive(Debug, Clone, Default)]
pub struct ConfigBundle {
    /// Node and services.
    pub proxy: ProxyConfig,
    /// Istio resources.
    pub resources: Vec<mesh_api::Resource>,
}

impl ConfigBundle {
    /// Reads a multi-document YAML file body. Any invalid document fails the whole
    /// update (the proxy then keeps its last good state), with every reason listed.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let docs =
            mesh_api::split_documents(text).map_err(|e| ConfigError::new(origin, e.to_string()))?;
        let mut proxy = None;
        let mut resources = Vec::new();
        let mut errors = Vec::new();
        for doc in docs {
            let (api_version, kind) = mesh_api::type_meta(&doc);
            let (api_version, kind) = (api_version.to_owned(), kind.to_owned());
            if kind == "ProxyConfig" {
                if proxy.is_some() {
                    errors.push("more than one ProxyConfig document".to_owned());
                    continue;
                }
                match serde_json::from_value::<ProxyConfig>(doc) {
                    Ok(p) => proxy = Some(p),
                    Err(e) => errors.push(format!("ProxyConfig: {e}")),
                }
            } else if mesh_api::is_istio_kind(&api_version, &kind) {
                match mesh_api::from_value(doc) {
                    Ok(r) => resources.push(r),
                    Err(e) => errors.push(e.to_string()),
                }
            } else {
                errors.push(format!(
                    "document of kind {kind:?} ({api_version}) is not read by the proxy"
                ));
            }
        }
        let Some(proxy) = proxy else {
            errors.push(
                "no ProxyConfig document (apiVersion isthmus.dev/v1alpha1, kind ProxyConfig)"
                    .into(),
            );
            return Err(ConfigError::many(origin, errors));
        };
        if !errors.is_empty() {
            return Err(ConfigError::many(origin, errors));
        }
        Ok(Self { proxy, resources })
    }
}
