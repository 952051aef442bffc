//! The proxy's view of the mesh as discovery sends it and a config file spells it: who
//! the proxy is ([`Node`]), the services it may call ([`ServiceConfig`]) with their
//! ports and endpoints (in any cluster, network and locality, behind an east-west
//! gateway and its [`Tunnel`] or not). Discovery builds these, the sidecar and the
//! gateways read them; the config stream carries them as JSON.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

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
    /// What happens to a captured connection to an address no service has (Istio's
    /// meshConfig `outboundTrafficPolicy.mode`).
    #[serde(default, skip_serializing_if = "OutboundTrafficPolicy::is_default")]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// The proxy is an ingress gateway: it serves the `Gateway`s whose selector matches
    /// its labels, and the VirtualServices bound to them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ingress: bool,
}

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Passed through to where it was going (`PassthroughCluster`).
    #[default]
    AllowAny,
    /// Refused (`BlackHoleCluster`): only services the mesh knows are reachable.
    RegistryOnly,
}

impl OutboundTrafficPolicy {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The upstream cluster Istio names for such connections.
    pub fn cluster(self) -> &'static str {
        match self {
            Self::AllowAny => "PassthroughCluster",
            Self::RegistryOnly => "BlackHoleCluster",
        }
    }
}

impl std::str::FromStr for OutboundTrafficPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ALLOW_ANY" => Ok(Self::AllowAny),
            "REGISTRY_ONLY" => Ok(Self::RegistryOnly),
            other => Err(format!(
                "outbound traffic policy {other:?}: use ALLOW_ANY or REGISTRY_ONLY"
            )),
        }
    }
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
    /// A headless Service (`clusterIP: None`): its name resolves to its endpoints'
    /// addresses, and a connection to one of them goes to that endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
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
    pub tunnel: Option<Tunnel>,
    /// True when the endpoint's cluster stopped renewing its lease (its control plane
    /// is silent) but its east-west gateway still passes health checks: kept, shown
    /// as stale.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

fn yes() -> bool {
    true
}

/// A tunnel an east-west gateway endpoint accepts besides mTLS over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tunnel {
    /// QUIC on the same port (UDP).
    Quic,
}

/// The kind of the config-stream resource that says who the proxy is (a [`Node`] as
/// JSON); every other kind is an Istio kind, [`KIND_SERVICE`] or [`KIND_CREDENTIAL`].
pub const KIND_NODE: &str = "Node";
/// A service with its ports and endpoints ([`ServiceConfig`] as JSON).
pub const KIND_SERVICE: &str = "Service";
/// The name of the node resource.
pub const NODE_RESOURCE: &str = "Node";
/// Certificates from a Kubernetes Secret that a `credentialName` names ([`Credential`]
/// as JSON), named `Credential/NAMESPACE/NAME`. Held in the proxy's memory only.
pub const KIND_CREDENTIAL: &str = "Credential";

/// A Secret's certificate material, as Istio reads a `credentialName` Secret:
/// `kubernetes.io/tls` keys (`tls.crt`, `tls.key`, `ca.crt`) or the generic ones
/// (`cert`, `key`, `cacert`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credential {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// Certificate chain (PEM), when the Secret has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain: Option<String>,
    /// Private key (PEM) of the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// CA certificates (PEM): the roots to verify peers with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

/// The key material is never printed.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("certificate_chain", &self.certificate_chain.is_some())
            .field("private_key", &self.private_key.is_some())
            .field("ca_certificates", &self.ca_certificates.is_some())
            .finish()
    }
}

impl Credential {
    /// The material of a Secret's `data` (`kubernetes.io/tls` or generic keys), or
    /// why it holds none that can be used.
    pub fn from_data(
        namespace: &str,
        name: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, String> {
        let get = |keys: [&str; 2]| {
            keys.iter()
                .find_map(|k| data.get(*k))
                .map(|v| String::from_utf8_lossy(v).trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let credential = Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            certificate_chain: get(["tls.crt", "cert"]),
            private_key: get(["tls.key", "key"]),
            ca_certificates: get(["ca.crt", "cacert"]),
        };
        match (&credential.certificate_chain, &credential.private_key) {
            (Some(_), None) => Err(format!(
                "Secret {namespace}/{name} has a certificate but no private key (tls.key or key)"
            )),
            (None, Some(_)) => Err(format!(
                "Secret {namespace}/{name} has a private key but no certificate (tls.crt or cert)"
            )),
            (None, None) if credential.ca_certificates.is_none() => Err(format!(
                "Secret {namespace}/{name} holds no certificate, key or CA (tls.crt, tls.key, ca.crt)"
            )),
            _ => Ok(credential),
        }
    }
}
