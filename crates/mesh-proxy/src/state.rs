//! The proxy's compiled state and its store. An update is compiled and validated
//! off the hot path; only a fully valid state is swapped in, atomically, and the
//! data path reads one snapshot per request. A rejected update leaves the last good
//! state in force and is reported.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use mesh_api::Resource;
use mesh_api::networking::SimpleLb;

use crate::config::{CLUSTER_DOMAIN, ConfigBundle, INBOUND_PORT, Node};
use crate::error::ConfigError;
use crate::routes::{CompiledRoute, CompiledTcpRoute, CompiledTlsRoute};

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
    /// The metric labels of requests sent to this endpoint over mTLS, made on first
    /// use (the endpoint belongs to one service of one compiled state).
    #[serde(skip)]
    pub source_labels: std::sync::OnceLock<Arc<mesh_telemetry::metrics::PeerLabels>>,
}

/// A service with its endpoints.
#[derive(Debug, serde::Serialize)]
pub struct Service {
    /// Fully qualified host, `name.namespace.svc.cluster.local`.
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
    /// The metric labels of requests to this service before an endpoint is chosen
    /// (refused or failed ones), made on first use.
    #[serde(skip)]
    pub source_labels: std::sync::OnceLock<Arc<mesh_telemetry::metrics::PeerLabels>>,
}

impl Service {
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

/// What a DestinationRule says about a host, compiled.
#[derive(Debug, Default, serde::Serialize)]
pub struct DestinationPolicy {
    /// Rule that defined it (`namespace/name`).
    pub rule: String,
    /// Subsets: name → labels.
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// Traffic policy in force per (subset, port): top level, then its port-level
    /// settings, then the subset's policy, then the subset's port-level settings.
    #[serde(skip)]
    resolved: HashMap<(String, Option<u16>), ResolvedPolicy>,
    #[serde(skip)]
    pub(crate) round_robin: AtomicUsize,
}

/// The traffic policy that applies to one (subset, port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedPolicy {
    /// Load-balancing algorithm.
    pub lb: Option<SimpleLb>,
    /// Outlier detection, when configured.
    pub outlier: Option<crate::lb::OutlierPolicy>,
    /// Locality priority (on when outlier detection is, unless disabled).
    pub locality: Option<crate::lb::LocalityPolicy>,
    /// TCP connect timeout.
    pub connect_timeout: Option<std::time::Duration>,
    /// Most requests in flight to the destination (`http2MaxRequests`, else
    /// `maxConnections`); unlimited when unset.
    pub max_requests: Option<u32>,
    /// Most requests waiting for a slot (`http1MaxPendingRequests`).
    pub max_pending: Option<u32>,
    /// Consistent-hash key, when the policy asks for session affinity.
    pub hash_key: Option<HashKey>,
    /// Requests per upstream connection before a new one is opened
    /// (`maxRequestsPerConnection`); unlimited when unset.
    pub max_requests_per_connection: Option<u32>,
    /// How long an unused upstream connection is kept (`http.idleTimeout`).
    pub idle_timeout: Option<std::time::Duration>,
    /// `tls.mode: DISABLE`: plain HTTP straight to the workload's port (a destination
    /// without a sidecar), not mTLS to its sidecar.
    pub plaintext: bool,
    /// `h2UpgradePolicy: UPGRADE`: HTTP/1.1 requests travel as HTTP/2 between sidecars
    /// (multiplexed); by default they stay HTTP/1.1, as in Istio.
    pub h2_upgrade: bool,
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header.
    Header(String),
    /// A cookie; when it is absent and `ttl` is set, the proxy makes one up and
    /// returns it in `Set-Cookie` (Istio's `httpCookie` with a TTL).
    Cookie {
        /// Cookie name.
        name: String,
        /// Lifetime of a generated cookie.
        ttl: Option<std::time::Duration>,
        /// Path of a generated cookie.
        path: Option<String>,
    },
    /// The caller's IP address.
    SourceIp,
    /// A query parameter.
    Query(String),
}

/// The parts of a traffic policy this proxy applies, as written (None = not set).
#[derive(Debug, Clone, Default)]
struct PolicyParts<'a> {
    lb: Option<&'a mesh_api::networking::LoadBalancerSettings>,
    outlier: Option<&'a mesh_api::networking::OutlierDetection>,
    pool: Option<&'a mesh_api::networking::ConnectionPoolSettings>,
    tls: Option<&'a mesh_api::networking::ClientTlsSettings>,
}

/// `base` with the port-level settings of `t` for `port` laid over it.
fn with_port<'a>(
    base: &PolicyParts<'a>,
    t: Option<&'a mesh_api::networking::TrafficPolicy>,
    port: u16,
) -> PolicyParts<'a> {
    let mut p = base.clone();
    if let Some(pl) = t.and_then(|t| {
        t.port_level_settings
            .iter()
            .find(|pl| pl.port.number as u16 == port)
    }) {
        p.overlay(
            pl.load_balancer.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.connection_pool.as_ref(),
            pl.tls.as_ref(),
        );
    }
    p
}

impl<'a> PolicyParts<'a> {
    fn overlay(
        &mut self,
        lb: Option<&'a mesh_api::networking::LoadBalancerSettings>,
        outlier: Option<&'a mesh_api::networking::OutlierDetection>,
        pool: Option<&'a mesh_api::networking::ConnectionPoolSettings>,
        tls: Option<&'a mesh_api::networking::ClientTlsSettings>,
    ) {
        self.lb = lb.or(self.lb);
        self.outlier = outlier.or(self.outlier);
        self.pool = pool.or(self.pool);
        self.tls = tls.or(self.tls);
    }

    fn resolve(&self) -> ResolvedPolicy {
        let outlier = self.outlier.map(crate::lb::OutlierPolicy::compile);
        ResolvedPolicy {
            lb: self.lb.and_then(|l| l.simple),
            // As in Istio: failover needs outlier detection (to know an endpoint is
            // gone); weighted `distribute` does not.
            locality: {
                let setting = self.lb.and_then(|l| l.locality_lb_setting.as_ref());
                let distributes = setting.is_some_and(|s| !s.distribute.is_empty());
                if outlier.is_some() || distributes {
                    crate::lb::LocalityPolicy::compile(setting)
                } else {
                    None
                }
            },
            outlier,
            connect_timeout: self
                .pool
                .and_then(|p| p.tcp.as_ref())
                .and_then(|t| t.connect_timeout)
                .map(|d| d.as_std()),
            max_requests: self
                .pool
                .and_then(|p| p.http.as_ref().and_then(|h| h.http2_max_requests))
                .or_else(|| {
                    self.pool
                        .and_then(|p| p.tcp.as_ref())
                        .and_then(|t| t.max_connections)
                })
                .map(|n| n.max(1) as u32),
            hash_key: self
                .lb
                .and_then(|l| l.consistent_hash.as_ref())
                .and_then(|c| {
                    c.http_header_name
                        .clone()
                        .map(|h| HashKey::Header(h.to_ascii_lowercase()))
                        .or_else(|| {
                            c.http_cookie.as_ref().map(|k| HashKey::Cookie {
                                name: k.name.clone(),
                                ttl: k.ttl.map(|d| d.as_std()).filter(|d| !d.is_zero()),
                                path: k.path.clone(),
                            })
                        })
                        .or_else(|| (c.use_source_ip == Some(true)).then_some(HashKey::SourceIp))
                        .or_else(|| c.http_query_parameter_name.clone().map(HashKey::Query))
                }),
            max_pending: self
                .pool
                .and_then(|p| p.http.as_ref())
                .and_then(|h| h.http1_max_pending_requests)
                .map(|n| n.max(0) as u32),
            max_requests_per_connection: self
                .pool
                .and_then(|p| p.http.as_ref())
                .and_then(|h| h.max_requests_per_connection)
                .filter(|n| *n > 0)
                .map(|n| n as u32),
            idle_timeout: self
                .pool
                .and_then(|p| p.http.as_ref())
                .and_then(|h| h.idle_timeout)
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero()),
            plaintext: self.tls.and_then(|t| t.mode)
                == Some(mesh_api::networking::ClientTlsMode::Disable),
            h2_upgrade: self
                .pool
                .and_then(|p| p.http.as_ref())
                .and_then(|h| h.h2_upgrade_policy)
                == Some(mesh_api::networking::H2UpgradePolicy::Upgrade),
        }
    }
}

impl DestinationPolicy {
    fn compile(rule: String, spec: &mesh_api::networking::DestinationRuleSpec) -> Self {
        use mesh_api::networking::TrafficPolicy;
        let mut resolved = HashMap::new();
        let mut top = PolicyParts::default();
        if let Some(t) = &spec.traffic_policy {
            top.overlay(
                t.load_balancer.as_ref(),
                t.outlier_detection.as_ref(),
                t.connection_pool.as_ref(),
                t.tls.as_ref(),
            );
        }
        let ports_of = |t: Option<&TrafficPolicy>| -> Vec<u16> {
            t.map(|t| {
                t.port_level_settings
                    .iter()
                    .map(|p| p.port.number as u16)
                    .collect()
            })
            .unwrap_or_default()
        };
        let mut ports = ports_of(spec.traffic_policy.as_ref());
        for s in &spec.subsets {
            ports.extend(ports_of(s.traffic_policy.as_ref()));
        }
        let subsets = std::iter::once(("", None)).chain(
            spec.subsets
                .iter()
                .map(|s| (s.name.as_str(), s.traffic_policy.as_ref())),
        );
        for (name, subset_policy) in subsets {
            for port in std::iter::once(None).chain(ports.iter().copied().map(Some)) {
                let mut parts = match port {
                    Some(p) => with_port(&top, spec.traffic_policy.as_ref(), p),
                    None => top.clone(),
                };
                if let Some(sp) = subset_policy {
                    parts.overlay(
                        sp.load_balancer.as_ref(),
                        sp.outlier_detection.as_ref(),
                        sp.connection_pool.as_ref(),
                        sp.tls.as_ref(),
                    );
                    if let Some(p) = port {
                        parts = with_port(&parts, Some(sp), p);
                    }
                }
                resolved.insert((name.to_owned(), port), parts.resolve());
            }
        }
        Self {
            rule,
            subsets: spec
                .subsets
                .iter()
                .map(|s| (s.name.clone(), s.labels.clone()))
                .collect(),
            resolved,
            round_robin: AtomicUsize::new(0),
        }
    }

    /// The traffic policy for `subset` ("" for none) on `port`.
    pub fn resolve(&self, subset: &str, port: u16) -> Option<&ResolvedPolicy> {
        self.resolved
            .get(&(subset.to_owned(), Some(port)))
            .or_else(|| self.resolved.get(&(subset.to_owned(), None)))
            .or_else(|| self.resolved.get(&(String::new(), None)))
    }
}

impl DestinationPolicy {
    /// The endpoints of `service` in `subset` that are ready, or why there are none.
    pub fn select<'a>(
        policy: Option<&Self>,
        service: &'a Service,
        subset: &str,
    ) -> Result<Vec<&'a Arc<Endpoint>>, String> {
        let labels = if subset.is_empty() {
            None
        } else {
            match policy.and_then(|p| p.subsets.get(subset)) {
                Some(l) => Some(l),
                None => {
                    return Err(format!(
                        "subset {subset:?} of {} is not defined by any DestinationRule",
                        service.host
                    ));
                }
            }
        };
        Ok(service
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .filter(|e| labels.is_none_or(|l| l.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
            .collect())
    }
}

/// Everything the data path needs, compiled from one config.
#[derive(Debug, Default)]
pub struct ProxyState {
    /// Version of the config this was compiled from.
    pub version: String,
    /// This proxy's workload.
    pub node: Node,
    /// Services by fully qualified host.
    pub services: HashMap<String, Arc<Service>>,
    /// HTTP routes by host; a service without a VirtualService gets a default route.
    pub routes: HashMap<String, Arc<Vec<CompiledRoute>>>,
    /// Destination policies by host.
    pub policies: HashMap<String, Arc<DestinationPolicy>>,
    /// TCP routes by host (VirtualService `tcp`).
    pub tcp_routes: HashMap<String, Arc<Vec<CompiledTcpRoute>>>,
    /// TLS routes by host (VirtualService `tls`, matched on the ClientHello SNI).
    pub tls_routes: HashMap<String, Arc<Vec<CompiledTlsRoute>>>,
    /// AuthorizationPolicies that apply to this workload.
    pub authz: crate::authz::Authorizer,
    /// Inbound mTLS modes from PeerAuthentications.
    pub peer_authn: crate::peer_authn::PeerAuthn,
    /// The `x-isthmus-peer` value naming this node, made on first use.
    peer_header: std::sync::OnceLock<Option<http::HeaderValue>>,
    /// Lookups the request path makes, indexed once per compile.
    index: Index,
}

/// Services by every name a request can give them, by virtual IP, and this node's
/// workload ports by service port: map lookups instead of scans and string building
/// per request.
#[derive(Debug, Default)]
struct Index {
    /// `name` (this node's namespace only), `name.ns`, `name.ns.svc` and the full host,
    /// exactly as [`resolve_host`] resolves them from the node's namespace.
    names: HashMap<String, Arc<Service>>,
    /// Services by virtual IP (the first host in order when two share one).
    ips: HashMap<std::net::IpAddr, Arc<Service>>,
    /// This node's workload port and protocol by service port.
    local_ports: HashMap<u16, (u16, Protocol)>,
}

impl Index {
    fn build(services: &HashMap<String, Arc<Service>>, namespace: &str) -> Self {
        let mut hosts: Vec<&Arc<Service>> = services.values().collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let mut index = Self::default();
        let kube_suffix = format!(".svc.{CLUSTER_DOMAIN}");
        let local_suffix = format!(".{namespace}{kube_suffix}");
        for svc in hosts {
            index.names.insert(svc.host.clone(), svc.clone());
            if let Some(name_ns) = svc.host.strip_suffix(&kube_suffix) {
                index.names.insert(name_ns.to_owned(), svc.clone());
                index.names.insert(format!("{name_ns}.svc"), svc.clone());
            }
            if let Some(name) = svc.host.strip_suffix(&local_suffix)
                && !name.contains('.')
            {
                index.names.insert(name.to_owned(), svc.clone());
            }
            for ip in &svc.addresses {
                index.ips.entry(*ip).or_insert_with(|| svc.clone());
            }
            if svc.namespace == namespace {
                for p in &svc.ports {
                    index
                        .local_ports
                        .entry(p.port)
                        .or_insert((p.target_port, p.protocol));
                }
            }
        }
        index
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

impl ProxyState {
    /// Compiles a config. Every problem is collected; any problem rejects the whole
    /// update.
    pub fn compile(bundle: &ConfigBundle, origin: &str) -> Result<Self, ConfigError> {
        let node = bundle.proxy.node.clone();
        let mut errors = Vec::new();
        let mut services = HashMap::new();
        for svc in &bundle.proxy.services {
            let host = resolve_host(&svc.name, &svc.namespace);
            let ports = svc
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: p.name.clone(),
                    port: p.port,
                    target_port: p.target_port.unwrap_or(p.port),
                    protocol: Protocol::from_port(&p.name, p.app_protocol.as_deref()),
                    sni: Arc::from(crate::sni::outbound_sni(p.port, "", &host)),
                    authority: format!("{host}:{}", p.port).parse().ok(),
                })
                .collect();
            let endpoints = svc
                .endpoints
                .iter()
                .map(|e| {
                    Arc::new(Endpoint {
                        inbound: SocketAddr::new(e.address, e.inbound_port.unwrap_or(INBOUND_PORT)),
                        labels: e.labels.clone(),
                        service_account: e.service_account.clone(),
                        cluster: e.cluster.clone(),
                        network: e.network.clone(),
                        locality: e.locality.clone(),
                        weight: e.weight.unwrap_or(1),
                        ready: e.ready,
                        quic: e.tunnel == Some(crate::config::Tunnel::Quic),
                        stale: e.stale,
                        source_labels: std::sync::OnceLock::new(),
                    })
                })
                .collect();
            if services
                .insert(
                    host.clone(),
                    Arc::new(Service {
                        host: host.clone(),
                        name: svc.name.clone(),
                        namespace: svc.namespace.clone(),
                        addresses: svc.addresses.clone(),
                        ports,
                        endpoints,
                        source_labels: std::sync::OnceLock::new(),
                    }),
                )
                .is_some()
            {
                errors.push(format!("service {host} is listed twice"));
            }
        }

        let mut routes: HashMap<String, Vec<CompiledRoute>> = HashMap::new();
        let mut tcp_routes: HashMap<String, Vec<CompiledTcpRoute>> = HashMap::new();
        let mut tls_routes: HashMap<String, Vec<CompiledTlsRoute>> = HashMap::new();
        let mut policies = HashMap::new();
        // Istio's precedence: the oldest object first (then name, then namespace).
        let mut ordered: Vec<&Resource> = bundle.resources.iter().collect();
        ordered.sort_by(|a, b| mesh_api::precedence::older_first(a.metadata(), b.metadata()));
        let mut rules_by_host: BTreeMap<String, Vec<&mesh_api::networking::DestinationRule>> =
            BTreeMap::new();
        for r in ordered.iter().copied() {
            let key = r.key();
            let ns = r
                .metadata()
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            match r {
                Resource::VirtualService(vs) => {
                    if !vs.spec.gateways.is_empty() && !vs.spec.gateways.iter().any(|g| g == "mesh")
                    {
                        continue; // gateway-only routes do not apply to sidecars
                    }
                    let mut compiled = Vec::new();
                    for (i, route) in vs.spec.http.iter().enumerate() {
                        match CompiledRoute::compile(&key, &ns, i, route, &node) {
                            Ok(Some(c)) => compiled.push(c),
                            Ok(None) => {}
                            Err(e) => errors.push(format!("VirtualService {key}: spec.{e}")),
                        }
                    }
                    let tcp: Vec<_> = vs
                        .spec
                        .tcp
                        .iter()
                        .map(|t| CompiledTcpRoute::compile(t, &ns))
                        .collect();
                    let tls: Vec<_> = vs
                        .spec
                        .tls
                        .iter()
                        .map(|t| CompiledTlsRoute::compile(t, &ns))
                        .collect();
                    for host in &vs.spec.hosts {
                        let fqdn = resolve_host(host, &ns);
                        // As in Istio, the oldest VirtualService for a host wins.
                        if !vs.spec.http.is_empty() {
                            routes
                                .entry(fqdn.clone())
                                .or_insert_with(|| compiled.clone());
                        }
                        if !tls.is_empty() {
                            tls_routes
                                .entry(fqdn.clone())
                                .or_insert_with(|| tls.clone());
                        }
                        if !tcp.is_empty() {
                            tcp_routes.entry(fqdn).or_insert_with(|| tcp.clone());
                        }
                    }
                }
                Resource::DestinationRule(dr) => {
                    let fqdn = resolve_host(&dr.spec.host, &ns);
                    rules_by_host.entry(fqdn).or_default().push(dr);
                }
                _ => {}
            }
        }
        // Several DestinationRules for one host: merged as Istio does (the client's
        // namespace first; subsets of one namespace merged, the older keeps a name).
        for (fqdn, rules) in &rules_by_host {
            if let Some(merged) =
                mesh_api::precedence::merge_destination_rules(fqdn, rules, &node.namespace)
            {
                let policy = DestinationPolicy::compile(merged.rules.join(", "), &merged.spec);
                policies.insert(fqdn.clone(), Arc::new(policy));
            }
        }
        let authz_specs: Vec<_> = bundle
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::AuthorizationPolicy(ap) => Some((
                    ap.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    ap.metadata.name.clone().unwrap_or_default(),
                    &ap.spec,
                )),
                _ => None,
            })
            .collect();
        // Oldest first: at one level, the first policy applies.
        let peer_authn_specs: Vec<_> = ordered
            .iter()
            .filter_map(|r| match r {
                Resource::PeerAuthentication(pa) => Some((
                    pa.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    pa.metadata.name.clone().unwrap_or_default(),
                    &pa.spec,
                )),
                _ => None,
            })
            .collect();
        let peer_authn = crate::peer_authn::PeerAuthn::compile(&peer_authn_specs, &node);
        let authz = crate::authz::Authorizer::compile(&authz_specs, &node);
        for host in services.keys() {
            routes
                .entry(host.clone())
                .or_insert_with(|| vec![CompiledRoute::default_for(host)]);
        }
        if !errors.is_empty() {
            return Err(ConfigError::many(origin, errors));
        }
        Ok(Self {
            version: bundle.proxy.version.clone(),
            routes: routes.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            policies,
            tcp_routes: tcp_routes
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            tls_routes: tls_routes
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            authz,
            peer_authn,
            peer_header: std::sync::OnceLock::new(),
            index: Index::build(&services, &node.namespace),
            node,
            services,
        })
    }

    /// The workload port and protocol behind one of this node's service ports (the
    /// port itself, protocol unknown, when no service of the node declares it).
    pub fn local_port(&self, service_port: u16) -> (u16, Protocol) {
        self.index
            .local_ports
            .get(&service_port)
            .copied()
            .unwrap_or((service_port, Protocol::Unknown))
    }

    /// The `x-isthmus-peer` header value that tells the receiving sidecar who calls.
    pub fn peer_header(&self) -> Option<&http::HeaderValue> {
        self.peer_header
            .get_or_init(|| http::HeaderValue::from_str(&crate::peer::encode(&self.node)).ok())
            .as_ref()
    }

    /// The service whose virtual IP a captured connection was sent to.
    pub fn service_for_ip(&self, ip: std::net::IpAddr) -> Option<&Arc<Service>> {
        self.index.ips.get(&ip)
    }

    /// The service a request's authority names, from the caller's namespace.
    pub fn service_for_authority(&self, authority: &str) -> Option<&Arc<Service>> {
        self.index
            .names
            .get(strip_port(authority).trim_end_matches('.'))
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

/// Holds the live state; see the module documentation.
#[derive(Debug)]
pub struct StateStore {
    current: ArcSwap<ProxyState>,
    last_rejection: ArcSwap<Option<ConfigError>>,
    ready: std::sync::atomic::AtomicBool,
}

impl Default for StateStore {
    fn default() -> Self {
        Self::new(ProxyState::default())
    }
}

impl StateStore {
    /// A store starting with `state`.
    pub fn new(state: ProxyState) -> Self {
        Self {
            current: ArcSwap::from_pointee(state),
            last_rejection: ArcSwap::from_pointee(None),
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<ProxyState> {
        self.current.load_full()
    }

    /// Compiles and installs `bundle`, or keeps the current state and records why not.
    pub fn apply(&self, bundle: &ConfigBundle, origin: &str) -> Result<(), ConfigError> {
        match ProxyState::compile(bundle, origin) {
            Ok(state) => {
                tracing::info!(version = %state.version, services = state.services.len(), "config applied");
                self.current.store(Arc::new(state));
                self.last_rejection.store(Arc::new(None));
                self.ready.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, version = %self.current.load().version, "config rejected; keeping the last good config");
                self.last_rejection.store(Arc::new(Some(e.clone())));
                Err(e)
            }
        }
    }

    /// Reads a YAML config and applies it (see [`StateStore::apply`]).
    pub fn apply_yaml(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let bundle = ConfigBundle::from_yaml(text, origin).inspect_err(|e| {
            tracing::warn!(error = %e, "config rejected; keeping the last good config");
            self.last_rejection.store(Arc::new(Some(e.clone())));
        })?;
        self.apply(&bundle, origin)
    }

    /// True once a config has been applied: a proxy is ready only after its first
    /// config, and stays ready (serving its last good config) afterwards.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Why the last update was refused, if it was.
    pub fn last_rejection(&self) -> Option<ConfigError> {
        self.last_rejection.load().as_ref().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> DestinationPolicy {
        match mesh_api::parse_resource(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: shop}}\nspec: {yaml}\n"
        ))
        .unwrap()
        {
            Resource::DestinationRule(d) => DestinationPolicy::compile("shop/r".into(), &d.spec),
            _ => unreachable!(),
        }
    }

    #[test]
    fn consistent_hash_keys() {
        let key = |lb: &str| {
            policy(&format!(
                "{{host: reviews, trafficPolicy: {{loadBalancer: {{consistentHash: {lb}}}}}}}"
            ))
            .resolve("", 9080)
            .unwrap()
            .hash_key
            .clone()
        };
        assert!(matches!(
            key("{useSourceIp: true}"),
            Some(HashKey::SourceIp)
        ));
        assert!(
            matches!(key("{httpQueryParameterName: user}"), Some(HashKey::Query(q)) if q == "user")
        );
    }

    #[test]
    fn port_level_tls_and_http2_max_requests() {
        let p = policy(
            "{host: reviews, trafficPolicy: {connectionPool: {http: {http2MaxRequests: 7}}, \
              portLevelSettings: [{port: {number: 8080}, tls: {mode: DISABLE}}]}}",
        );
        assert!(
            p.resolve("", 8080).unwrap().plaintext,
            "port-level tls DISABLE"
        );
        assert!(
            !p.resolve("", 9080).unwrap().plaintext,
            "other ports keep mesh mTLS"
        );
        assert_eq!(p.resolve("", 9080).unwrap().max_requests, Some(7));
    }

    #[test]
    fn hosts_resolve_like_kubernetes_dns() {
        assert_eq!(
            resolve_host("reviews", "shop"),
            "reviews.shop.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.other", "shop"),
            "reviews.other.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.other.svc", "shop"),
            "reviews.other.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.other.svc.cluster.local", "shop"),
            "reviews.other.svc.cluster.local"
        );
        assert_eq!(strip_port("reviews:9080"), "reviews");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(authority_port("reviews:9080"), Some(9080));
    }

    #[test]
    fn traffic_policy_resolves_top_port_subset_and_subset_port() {
        let dr = match mesh_api::parse_resource(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {connectTimeout: 2s}}
    portLevelSettings:
    - {port: {number: 9080}, loadBalancer: {simple: RANDOM}}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST}
      outlierDetection: {consecutive5xxErrors: 3}
      portLevelSettings:
      - {port: {number: 9443}, loadBalancer: {simple: ROUND_ROBIN}}
  - {name: v1, labels: {version: v1}}
",
        )
        .unwrap()
        {
            Resource::DestinationRule(d) => d,
            _ => unreachable!(),
        };
        let p = DestinationPolicy::compile("shop/r".into(), &dr.spec);
        let lb = |subset: &str, port: u16| p.resolve(subset, port).unwrap().lb;
        assert_eq!(lb("", 8080), Some(SimpleLb::RoundRobin), "top level");
        assert_eq!(
            lb("", 9080),
            Some(SimpleLb::Random),
            "top-level port setting"
        );
        assert_eq!(
            lb("v1", 9080),
            Some(SimpleLb::Random),
            "a subset without a policy inherits"
        );
        assert_eq!(
            lb("v2", 9080),
            Some(SimpleLb::LeastRequest),
            "the subset policy overrides"
        );
        assert_eq!(
            lb("v2", 9443),
            Some(SimpleLb::RoundRobin),
            "the subset's port setting overrides"
        );
        let v2 = p.resolve("v2", 8080).unwrap();
        assert_eq!(v2.outlier.as_ref().unwrap().consecutive_5xx, 3);
        assert!(v2.locality.is_some(), "locality follows outlier detection");
        assert_eq!(
            v2.connect_timeout,
            Some(std::time::Duration::from_secs(2)),
            "inherited from the top level"
        );
        assert!(p.resolve("", 8080).unwrap().outlier.is_none());
    }

    #[test]
    fn the_oldest_virtual_service_and_peer_authentication_win() {
        let doc = |kind: &str, name: &str, created: &str, spec: &str| {
            let group = if kind == "VirtualService" {
                "networking.istio.io"
            } else {
                "security.istio.io"
            };
            mesh_api::parse_resource(&format!(
                "apiVersion: {group}/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: shop, creationTimestamp: \"{created}\"}}\nspec: {spec}\n"
            ))
            .unwrap()
        };
        let bundle = ConfigBundle {
            proxy: crate::config::ProxyConfig {
                node: crate::config::Node {
                    name: "web-1".into(),
                    namespace: "shop".into(),
                    service_account: "web".into(),
                    cluster: String::new(),
                    network: String::new(),
                    locality: String::new(),
                    labels: BTreeMap::new(),
                },
                ..Default::default()
            },
            // A newer object whose name sorts first must not take over.
            resources: vec![
                doc(
                    "VirtualService",
                    "bad-subset",
                    "2026-05-01T00:00:00Z",
                    "{hosts: [reviews], http: [{name: newer, route: [{destination: {host: reviews, subset: nope}}]}]}",
                ),
                doc(
                    "VirtualService",
                    "helloworld",
                    "2026-01-01T00:00:00Z",
                    "{hosts: [reviews], http: [{name: older, route: [{destination: {host: reviews}}]}]}",
                ),
                doc(
                    "PeerAuthentication",
                    "a-permissive",
                    "2026-05-01T00:00:00Z",
                    "{mtls: {mode: PERMISSIVE}}",
                ),
                doc(
                    "PeerAuthentication",
                    "z-strict",
                    "2026-01-01T00:00:00Z",
                    "{mtls: {mode: STRICT}}",
                ),
            ],
        };
        let state = ProxyState::compile(&bundle, "test").unwrap();
        let routes = &state.routes["reviews.shop.svc.cluster.local"];
        assert_eq!(routes[0].name, "shop/helloworld.older");
        assert_eq!(
            state.peer_authn.default,
            mesh_api::security::MtlsMode::Strict
        );
    }

    #[test]
    fn protocol_follows_istio_port_naming() {
        assert_eq!(Protocol::from_port("http-web", None), Protocol::Http);
        assert_eq!(Protocol::from_port("grpc", None), Protocol::Grpc);
        assert_eq!(Protocol::from_port("tcp-db", None), Protocol::Tcp);
        assert_eq!(Protocol::from_port("web", Some("http2")), Protocol::Http2);
        assert_eq!(Protocol::from_port("web", None), Protocol::Unknown);
    }

    #[test]
    fn indexed_lookups_answer_as_resolving_and_scanning_did() {
        let svc = |name: &str, namespace: &str, ip: &str, port: u16, target: u16| {
            crate::config::ServiceConfig {
                name: name.into(),
                namespace: namespace.into(),
                addresses: vec![ip.parse().unwrap()],
                ports: vec![crate::config::ServicePortConfig {
                    name: "http".into(),
                    port,
                    target_port: Some(target),
                    ..Default::default()
                }],
                endpoints: vec![],
            }
        };
        let mut bundle = ConfigBundle::default();
        bundle.proxy.node.namespace = "shop".into();
        bundle.proxy.services = vec![
            svc("reviews", "shop", "10.0.0.1", 9080, 8080),
            svc("reviews", "other", "10.0.0.2", 9081, 8081),
            svc("ratings", "other", "10.0.0.3", 9082, 8082),
        ];
        let state = ProxyState::compile(&bundle, "test").unwrap();
        // What a lookup used to be: resolve from the node's namespace, then look up.
        let resolved = |authority: &str| {
            state
                .services
                .get(&resolve_host(strip_port(authority), "shop"))
                .map(|s| s.host.clone())
        };
        for authority in [
            "reviews",
            "reviews:9080",
            "reviews.",
            "reviews.shop",
            "reviews.other:9081",
            "reviews.other.svc",
            "reviews.other.svc.cluster.local",
            "reviews.other.svc.cluster.local.:80",
            "ratings",
            "ratings.other",
            "ratings.shop",
            "nope",
            "reviews.shop.svc.cluster",
            "",
        ] {
            assert_eq!(
                state
                    .service_for_authority(authority)
                    .map(|s| s.host.clone()),
                resolved(authority),
                "{authority:?}"
            );
        }
        let by_ip = |ip: &str| {
            state
                .service_for_ip(ip.parse().unwrap())
                .map(|s| s.host.as_str())
        };
        assert_eq!(by_ip("10.0.0.2"), Some("reviews.other.svc.cluster.local"));
        assert_eq!(by_ip("10.0.0.9"), None);
        // Only this node's namespace gives its workload ports.
        assert_eq!(state.local_port(9080), (8080, Protocol::Http));
        assert_eq!(state.local_port(9081), (9081, Protocol::Unknown));
    }
}
