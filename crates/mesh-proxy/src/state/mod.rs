//! The proxy's compiled state and its store. An update is compiled and validated
//! off the hot path ([`compile`]); only a fully valid state is swapped in, atomically,
//! and the data path reads one snapshot per request. A rejected update leaves the last
//! good state in force and is reported.

mod compile;
mod scope;
mod service_entry;

pub use compile::{compile_service, security_for};
pub use scope::Scope;

/// The Secrets `credentialName`s name, delivered by discovery, by `namespace/name`.
pub type Credentials =
    std::collections::HashMap<String, std::sync::Arc<mesh_proto::model::Credential>>;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;

use crate::config::{CLUSTER_DOMAIN, ConfigBundle, Node};
use crate::error::ConfigError;
use crate::model::{Protocol, Service, strip_port};
use crate::policy::DestinationPolicy;
use crate::routes::{CompiledRoute, CompiledTcpRoute, CompiledTlsRoute};

/// Everything the data path needs, compiled from one config.
#[derive(Debug, Default, Clone)]
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
    /// JWT rules of the RequestAuthentications that select this workload.
    pub jwt: crate::jwt::JwtAuthn,
    /// Inbound mTLS modes from PeerAuthentications.
    pub peer_authn: crate::peer_authn::PeerAuthn,
    /// What this workload serves as an ingress gateway: the Gateways whose selector
    /// matches its labels and the VirtualServices bound to them (none for a sidecar).
    pub ingress: Option<Arc<crate::ingress::Ingress>>,
    /// The Secrets (`namespace/name`) whose certificates this proxy holds.
    pub credentials: Vec<String>,
    /// The `Sidecar` resource in force for this proxy, if any.
    pub scope: Option<scope::Scope>,
    /// The `x-isthmus-peer` value naming this node, made on first use.
    peer_header: std::sync::OnceLock<Option<http::HeaderValue>>,
    /// Lookups the request path makes, indexed once per compile.
    index: Index,
}

/// Services by every name a request can give them, by virtual IP, and this node's
/// workload ports by service port: map lookups instead of scans and string building
/// per request.
#[derive(Debug, Default, Clone)]
struct Index {
    /// `name` (this node's namespace only), `name.ns`, `name.ns.svc` and the full host,
    /// exactly as [`resolve_host`] resolves them from the node's namespace.
    names: HashMap<String, Arc<Service>>,
    /// Services by virtual IP (the first host in order when two share one).
    ips: HashMap<std::net::IpAddr, Arc<Service>>,
    /// This node's workload port and protocol by service port.
    local_ports: HashMap<u16, (u16, Protocol)>,
    /// The addresses the DNS proxy answers for each host name: the service's virtual
    /// IPs, else one allocated from [`AUTO_VIPS`].
    dns: HashMap<String, Vec<std::net::IpAddr>>,
}

/// Where addresses are allocated for hosts without an IPv4 address of their own
/// (Istio's range for `ISTIO_META_DNS_AUTO_ALLOCATE`): 240.240.0.0/16.
const AUTO_VIPS: [u8; 2] = [240, 240];

/// The address allocated for `host`: from a hash of the name, so that it stays the
/// same from one config to the next, moved on past addresses already `taken`.
fn auto_vip(host: &str, taken: &HashMap<std::net::IpAddr, Arc<Service>>) -> std::net::IpAddr {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    host.hash(&mut hasher);
    // 1..=65534: neither the network nor the broadcast address.
    let mut n = (hasher.finish() % 65534) as u16 + 1;
    loop {
        let [hi, lo] = n.to_be_bytes();
        let ip = std::net::IpAddr::from([AUTO_VIPS[0], AUTO_VIPS[1], hi, lo]);
        if !taken.contains_key(&ip) {
            return ip;
        }
        n = n % 65534 + 1;
    }
}

impl Index {
    fn build(services: &HashMap<String, Arc<Service>>, namespace: &str, network: &str) -> Self {
        let mut hosts: Vec<&Arc<Service>> = services.values().collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let mut index = Self::default();
        let kube_suffix = format!(".svc.{CLUSTER_DOMAIN}");
        let local_suffix = format!(".{namespace}{kube_suffix}");
        for svc in hosts {
            index.names.insert(svc.host.clone(), svc.clone());
            // A ServiceEntry host as written (a Kubernetes Service name has no dot):
            // `api.example` is keyed as config resolves it, and requested as written.
            if svc.name.contains('.') {
                index.names.insert(svc.name.clone(), svc.clone());
            }
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
            let mut answers = svc.addresses.clone();
            // A headless Service: its name answers the addresses of its ready
            // endpoints this node reaches directly (on its network; the others sit
            // behind their gateway), and a connection to one goes to that endpoint
            // alone, through the service's routes and policies.
            if svc.headless {
                for e in svc.endpoints.iter().filter(|e| {
                    e.ready && !e.quic && (e.network.is_empty() || e.network == network)
                }) {
                    let ip = e.inbound.ip();
                    if !answers.contains(&ip) {
                        answers.push(ip);
                    }
                    // Pinned, over the service itself (a NONE entry's addresses are
                    // its endpoints) but not over another service's address.
                    if index.ips.get(&ip).is_none_or(|cur| Arc::ptr_eq(cur, svc)) {
                        index
                            .ips
                            .insert(ip, Arc::new(svc.with_endpoints(vec![e.clone()])));
                    }
                }
            }
            if !answers.iter().any(std::net::IpAddr::is_ipv4) {
                let vip = auto_vip(&svc.host, &index.ips);
                index.ips.insert(vip, svc.clone());
                answers.push(vip);
            }
            index.dns.insert(svc.host.clone(), answers.clone());
            if svc.name.contains('.') {
                index.dns.insert(svc.name.clone(), answers);
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

impl ProxyState {
    /// This state with what is fetched in the background as it is known now
    /// ([`crate::fetched`]): the endpoints of DNS-resolved services and the keys of
    /// `jwksUri`s. Names and URIs not seen before are fetched right away; those the
    /// state does not name are forgotten.
    fn with_fetched(self, dns: &crate::dns::DnsTable, jwks: &crate::jwks::JwksCache) -> Self {
        let mut state = self.with_dns(dns);
        jwks.retain(&state.jwt.uris());
        state.jwt = state.jwt.with_fetched_keys(jwks);
        state
    }

    /// This state with the endpoints of DNS-resolved services as `table` knows them.
    fn with_dns(mut self, table: &crate::dns::DnsTable) -> Self {
        let mut wanted = std::collections::HashSet::new();
        let mut replaced = false;
        for svc in self.services.values_mut() {
            let Some(dns) = svc.dns.clone() else {
                continue;
            };
            wanted.extend(dns.names.iter().map(|(n, _)| n.clone()));
            let endpoints = dns.endpoints(|name| table.addresses(name));
            let same = endpoints.len() == svc.endpoints.len()
                && endpoints
                    .iter()
                    .zip(&svc.endpoints)
                    .all(|(a, b)| a.inbound == b.inbound);
            if !same {
                *svc = Arc::new(svc.with_endpoints(endpoints));
                replaced = true;
            }
        }
        table.retain(&wanted);
        if replaced {
            self.index = Index::build(&self.services, &self.node.namespace, &self.node.network);
        }
        self
    }

    /// Where the application takes traffic sent to the workload's `port` (a Sidecar
    /// ingress listener's `defaultEndpoint`), and the protocol it is handled as.
    pub fn app_port(&self, port: u16, protocol: Protocol) -> (u16, Protocol) {
        match self.scope.as_ref().and_then(|s| s.ingress_port(port)) {
            Some(l) => (l.forward_to, l.protocol),
            None => (port, protocol),
        }
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

    /// The addresses the DNS proxy answers for `name` (lower case, no trailing dot), if
    /// it names a service: its virtual IPs, else the one allocated for it.
    pub fn dns_addresses(&self, name: &str) -> Option<&[std::net::IpAddr]> {
        self.index.dns.get(name).map(Vec::as_slice)
    }

    /// The service whose virtual IP (or allocated address) a captured connection was
    /// sent to.
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

/// Holds the live state; see the module documentation.
#[derive(Debug)]
pub struct StateStore {
    current: ArcSwap<ProxyState>,
    dns: Arc<crate::dns::DnsTable>,
    jwks: Arc<crate::jwks::JwksCache>,
    last_rejection: ArcSwap<Option<ConfigError>>,
    ready: std::sync::atomic::AtomicBool,
    /// Counts the states swapped in, for what follows the config (listeners).
    installed: tokio::sync::watch::Sender<u64>,
    /// The calls this proxy makes, counted by its listeners and reported to
    /// discovery by the config stream's client.
    edges: mesh_telemetry::edges::EdgeRecorder,
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
            dns: Arc::default(),
            jwks: Arc::default(),
            last_rejection: ArcSwap::from_pointee(None),
            ready: std::sync::atomic::AtomicBool::new(false),
            installed: tokio::sync::watch::Sender::new(0),
            edges: mesh_telemetry::edges::EdgeRecorder::default(),
        }
    }

    /// The calls this proxy makes, for the mesh graph.
    pub fn edges(&self) -> &mesh_telemetry::edges::EdgeRecorder {
        &self.edges
    }

    /// A store starting with `state` whose ServiceEntry names are resolved by
    /// `resolvers` (the system's by default).
    pub fn with_resolvers(state: ProxyState, resolvers: crate::dns::Resolvers) -> Self {
        Self {
            dns: Arc::new(crate::dns::DnsTable::new(resolvers)),
            ..Self::new(state)
        }
    }

    /// The key sets RequestAuthentications name by `jwksUri`.
    pub fn jwks(&self) -> &Arc<crate::jwks::JwksCache> {
        &self.jwks
    }

    /// The names DNS-resolved ServiceEntries ask for and their answers.
    pub fn dns(&self) -> &Arc<crate::dns::DnsTable> {
        &self.dns
    }

    /// Swaps in the current state derived again with what is fetched in the
    /// background (a DNS answer or a key set changed).
    pub fn refresh_fetched(&self) {
        self.current.rcu(|current| {
            Arc::new(ProxyState::clone(current).with_fetched(&self.dns, &self.jwks))
        });
    }

    /// Told each time a state is swapped in.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<ProxyState> {
        self.current.load_full()
    }

    /// Compiles and installs `bundle`, or keeps the current state and records why not.
    pub fn apply(&self, bundle: &ConfigBundle, origin: &str) -> Result<(), ConfigError> {
        match ProxyState::compile(bundle, origin) {
            Ok(state) => {
                self.install(state);
                Ok(())
            }
            Err(e) => {
                self.record_rejection(e.clone());
                Err(e)
            }
        }
    }

    /// Installs a state compiled elsewhere (the config stream compiles each push once,
    /// and installs what it validated).
    pub fn install(&self, state: ProxyState) {
        let state = state.with_fetched(&self.dns, &self.jwks);
        tracing::info!(version = %state.version, services = state.services.len(), "config applied");
        self.current.store(Arc::new(state));
        self.last_rejection.store(Arc::new(None));
        self.ready.store(true, Ordering::Release);
        self.installed.send_modify(|n| *n += 1);
    }

    /// Records why an update was refused; the current state stays.
    pub fn record_rejection(&self, e: ConfigError) {
        tracing::warn!(error = %e, version = %self.current.load().version, "config rejected; keeping the last good config");
        self.last_rejection.store(Arc::new(Some(e)));
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
    use crate::model::{authority_port, resolve_host};

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
                    ..Default::default()
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
    fn a_headless_service_resolves_to_its_endpoints_and_pins_each() {
        let endpoint = |ip: &str, network: &str, ready: bool| crate::config::EndpointConfig {
            address: ip.parse().unwrap(),
            network: network.into(),
            inbound_port: None,
            labels: Default::default(),
            service_account: None,
            cluster: String::new(),
            locality: String::new(),
            weight: None,
            ready,
            tunnel: None,
            stale: false,
        };
        let mut bundle = ConfigBundle::default();
        bundle.proxy.node.namespace = "shop".into();
        bundle.proxy.node.network = "net-1".into();
        bundle.proxy.services = vec![crate::config::ServiceConfig {
            name: "db".into(),
            namespace: "shop".into(),
            ports: vec![crate::config::ServicePortConfig {
                name: "tcp".into(),
                port: 5432,
                ..Default::default()
            }],
            endpoints: vec![
                endpoint("10.0.0.1", "net-1", true),
                endpoint("10.0.0.2", "", true),
                endpoint("10.0.0.3", "net-1", false),
                // Another network's endpoint, behind its gateway.
                endpoint("192.0.2.1", "net-2", true),
            ],
            headless: true,
            ..Default::default()
        }];
        let state = ProxyState::compile(&bundle, "test").unwrap();
        let ips = |v: &[&str]| -> Vec<std::net::IpAddr> {
            v.iter().map(|i| i.parse().unwrap()).collect()
        };
        assert_eq!(
            state.dns_addresses("db.shop.svc.cluster.local"),
            Some(&ips(&["10.0.0.1", "10.0.0.2"])[..])
        );
        // A connection to one endpoint's address goes to that endpoint only.
        for ip in ["10.0.0.1", "10.0.0.2"] {
            let svc = state.service_for_ip(ip.parse().unwrap()).unwrap();
            assert_eq!(svc.host, "db.shop.svc.cluster.local");
            let pinned: Vec<_> = svc.endpoints.iter().map(|e| e.inbound.ip()).collect();
            assert_eq!(pinned, ips(&[ip]));
        }
        assert!(state.service_for_ip("10.0.0.3".parse().unwrap()).is_none());
        assert!(state.service_for_ip("192.0.2.1".parse().unwrap()).is_none());
        // With no endpoint reachable directly, the name gets an allocated address.
        bundle.proxy.services[0].endpoints.truncate(0);
        let state = ProxyState::compile(&bundle, "test").unwrap();
        let answer = state.dns_addresses("db.shop.svc.cluster.local").unwrap();
        assert!(answer[0].to_string().starts_with("240.240."), "{answer:?}");
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
                headless: false,
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
