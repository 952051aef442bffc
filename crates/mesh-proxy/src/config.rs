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

use crate::error::ConfigError;

pub use mesh_proto::model::{
    CLUSTER_DOMAIN, EndpointConfig, INBOUND_PORT, Node, OUTBOUND_PORT, OutboundTrafficPolicy,
    ProxyConfig, ServiceConfig, ServicePortConfig, Tunnel,
};

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
