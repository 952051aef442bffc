//! The services and endpoints a proxy knows, as the data path reads them (compiled
//! from the wire's [`ServiceConfig`](crate::config::ServiceConfig)), and how a host
//! name resolves from a namespace. Depends on nothing else of the data path: the
//! policies, balancer, routes and state are built on it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::CLUSTER_DOMAIN;

/// How a port speaks, from its name or `appProtocol` as Istio reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (or h2c if the client speaks it).
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Opaque TCP.
    Tcp,
    /// Not declared: sniffed per connection.
    Unknown,
}

impl Protocol {
    /// Istio's rule: `appProtocol` first, else the port name's prefix before `-`.
    pub fn from_port(name: &str, app_protocol: Option<&str>) -> Self {
        let key = app_protocol.unwrap_or_else(|| name.split('-').next().unwrap_or_default());
        match key.to_ascii_lowercase().as_str() {
            "http" | "http-web" => Self::Http,
            "http2" | "h2c" => Self::Http2,
            "grpc" | "grpc-web" => Self::Grpc,
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Self::Tcp,
            _ => Self::Unknown,
        }
    }

    /// Whether requests on this port are routed as HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }
}

/// A service port.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServicePort {
    /// Name.
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Workload port.
    pub target_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Istio's SNI of the port's upstream cluster with no subset.
    #[serde(skip)]
    pub sni: Arc<str>,
    /// `host:port`, the authority requests to this port carry upstream.
    #[serde(skip)]
    pub authority: Option<http::uri::Authority>,
}

impl ServicePort {
    /// Istio's SNI of this port's upstream cluster for `subset` of `host`.
    pub fn sni(&self, subset: &str, host: &str) -> Arc<str> {
        if subset.is_empty() {
            self.sni.clone()
        } else {
            Arc::from(crate::sni::outbound_sni(self.port, subset, host))
        }
    }
}

/// One endpoint as the data path uses it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoint {
    /// Where the endpoint's sidecar accepts mesh traffic.
    pub inbound: SocketAddr,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: Option<String>,
    /// Cluster.
    pub cluster: String,
    /// Network.
    pub network: String,
    /// Locality.
    pub locality: String,
    /// Weight.
    pub weight: u32,
    /// Ready.
    pub ready: bool,
    /// A gateway that accepts QUIC tunnels (tried before TCP).
    pub quic: bool,
    /// Kept while its cluster's control plane is silent and its gateway healthy.
    pub stale: bool,
    /// This endpoint's own port for a service port, by the port's name, where it
    /// differs from the service's target port (a ServiceEntry endpoint's `ports`).
    pub ports: BTreeMap<String, u16>,
    /// The metric labels of requests sent to this endpoint over mTLS, made on first
    /// use (the endpoint belongs to one service of one compiled state).
    #[serde(skip)]
    pub source_labels: std::sync::OnceLock<Arc<mesh_telemetry::metrics::PeerLabels>>,
}

impl Endpoint {
    /// Whether a proxy on `node` reaches this endpoint through its network's east-west
    /// gateway (another cluster on another network: its address is the gateway's).
    pub fn through_gateway(&self, node: &crate::config::Node) -> bool {
        !self.cluster.is_empty() && self.cluster != node.cluster && self.network != node.network
    }

    /// The port this endpoint serves `port` on: its own mapping for the port's name,
    /// else the service's target port.
    pub fn port_for(&self, port: &ServicePort) -> u16 {
        self.ports
            .get(&port.name)
            .copied()
            .unwrap_or(port.target_port)
    }
}

/// Where a service's endpoints are, in the mesh or outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// Workloads with sidecars: reached over mesh mTLS at their sidecar's inbound port.
    #[default]
    Mesh,
    /// Outside the mesh (a ServiceEntry with `location: MESH_EXTERNAL`): each endpoint
    /// is reached at its own address and port as the application would reach it,
    /// without mesh mTLS or mesh headers.
    External,
}

/// A service with its endpoints.
#[derive(Debug, serde::Serialize)]
pub struct Service {
    /// Fully qualified host: `name.namespace.svc.cluster.local` for a Kubernetes
    /// Service, the host as written for a ServiceEntry.
    pub host: String,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Virtual IPs.
    pub addresses: Vec<std::net::IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// In the mesh, or outside it.
    pub location: Location,
    /// For a ServiceEntry with DNS resolution: the names its endpoints come from (the
    /// endpoints above are their addresses last resolved).
    pub dns: Option<Arc<DnsEndpoints>>,
    /// A headless Service: see [`crate::config::ServiceConfig::headless`].
    pub headless: bool,
    /// The identities its endpoints' certificates may have (a MESH_INTERNAL
    /// ServiceEntry's `subjectAltNames`); any of the mesh's trust when empty.
    pub subject_alt_names: Vec<String>,
    /// The metric labels of requests to this service before an endpoint is chosen
    /// (refused or failed ones), made on first use. They name the calling proxy, so a
    /// compiled service is valid for the node it was compiled under (the config
    /// stream compiles its services again when the node changes).
    #[serde(skip)]
    pub source_labels: std::sync::OnceLock<Arc<mesh_telemetry::metrics::PeerLabels>>,
}

/// The endpoints of a ServiceEntry with `resolution: DNS` or `DNS_ROUND_ROBIN`: names
/// resolved in the background ([`crate::dns`]), each address an endpoint like its
/// template.
#[derive(Debug, serde::Serialize)]
pub struct DnsEndpoints {
    /// DNS_ROUND_ROBIN: only the first address of each name (Envoy's logical DNS).
    pub first_only: bool,
    /// Endpoints listed by address, kept beside the resolved ones.
    pub fixed: Vec<Arc<Endpoint>>,
    /// Each name with the endpoint its addresses stand for (its address unspecified).
    pub names: Vec<(String, Arc<Endpoint>)>,
}

impl DnsEndpoints {
    /// The endpoints for the addresses `lookup` gives each name.
    pub fn endpoints(&self, lookup: impl Fn(&str) -> Vec<std::net::IpAddr>) -> Vec<Arc<Endpoint>> {
        let mut out = self.fixed.clone();
        for (name, template) in &self.names {
            let addresses = lookup(name);
            let take = if self.first_only { 1 } else { addresses.len() };
            for ip in addresses.into_iter().take(take) {
                let mut e = Endpoint::clone(template);
                e.inbound.set_ip(ip);
                e.source_labels = std::sync::OnceLock::new();
                out.push(Arc::new(e));
            }
        }
        out
    }
}

impl Service {
    /// The same service with other endpoints (a DNS answer changed).
    pub fn with_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) -> Self {
        Self {
            host: self.host.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            addresses: self.addresses.clone(),
            ports: self.ports.clone(),
            endpoints,
            location: self.location,
            dns: self.dns.clone(),
            headless: self.headless,
            subject_alt_names: self.subject_alt_names.clone(),
            source_labels: std::sync::OnceLock::new(),
        }
    }

    /// The port a request should use: the one named, else the only one, else the first
    /// HTTP port.
    pub fn port(&self, wanted: Option<u16>) -> Option<&ServicePort> {
        match wanted {
            Some(p) => self.ports.iter().find(|sp| sp.port == p),
            None if self.ports.len() == 1 => self.ports.first(),
            None => self
                .ports
                .iter()
                .find(|sp| sp.protocol.is_http())
                .or(self.ports.first()),
        }
    }
}

/// `name`, `name.ns`, `name.ns.svc` or an FQDN, resolved the way Kubernetes DNS would
/// from `namespace`.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    let host = host.trim_end_matches('.');
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}"),
        1 => format!("{host}.svc.{CLUSTER_DOMAIN}"),
        2 if host.ends_with(".svc") => format!("{host}.{CLUSTER_DOMAIN}"),
        _ => host.to_owned(),
    }
}

/// `host:port` → `host` (IPv6 literals keep their brackets).
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[');
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// The port in an authority, if any.
pub fn authority_port(authority: &str) -> Option<u16> {
    authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}
