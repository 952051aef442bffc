//! The ingress gateway (north-south traffic): the Istio `Gateway`s whose selector
//! matches this workload, compiled into listeners, and the VirtualServices bound to
//! them by `gateways`, compiled into virtual hosts chosen by the request's Host.
//!
//! Istio's rules, kept:
//! - a Gateway selects gateway workloads by labels, in any namespace;
//! - a server's `hosts` entry `ns/host` admits VirtualServices of `ns` only (`.` the
//!   Gateway's own namespace, `*` or no prefix any namespace);
//! - a VirtualService binds when its `gateways` names the Gateway (`name` in its own
//!   namespace, or `namespace/name`), and each of its hosts that intersects a server
//!   host becomes a virtual host named by the more specific of the two;
//! - several VirtualServices for one host on one gateway are merged, the oldest's
//!   routes first (Istio merges gateway-bound VirtualServices; sidecars do not);
//! - a request's Host picks the exact name first, then the longest wildcard, then `*`;
//! - `tls.httpsRedirect` answers every request of a plaintext server with a 301 to
//!   `https`.
//!
//! [`listen`] binds a socket per server port and serves it.

pub mod listen;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mesh_api::Resource;
use mesh_api::networking::Gateway;

use crate::config::Node;
use crate::routes::{CompiledRoute, sni_matches};

/// What an ingress gateway serves.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Ingress {
    /// The Gateways that select this workload, `namespace/name`.
    pub gateways: BTreeSet<String>,
    /// Listeners by server port number.
    pub listeners: BTreeMap<u16, Listener>,
    /// Servers not served and why (a `credentialName` Secret not delivered yet): each
    /// is served once its Secret arrives.
    pub waiting: Vec<String>,
}

/// One port of the gateway and the servers on it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listener {
    /// The port number the Gateway servers name.
    pub port: u16,
    /// Servers on the port, oldest Gateway first.
    pub servers: Vec<Server>,
}

/// One Gateway server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Server {
    /// `namespace/name` of its Gateway, then its `name`, else its port's name, else its
    /// index in `servers`.
    pub name: String,
    /// The Gateway, `namespace/name`.
    pub gateway: String,
    /// Its hosts as written.
    pub hosts: Vec<String>,
    /// Every request is answered with a redirect to `https`.
    pub https_redirect: bool,
    /// Its id in a request's [`crate::plan::Entry::GatewayServer`].
    pub id: u64,
    /// TLS terminated here (HTTPS servers).
    pub tls: Option<Arc<ServerTls>>,
    /// How its port serves connections.
    pub mode: Mode,
    /// The virtual hosts of the VirtualServices bound to it.
    pub virtual_hosts: Vec<VirtualHost>,
    /// `tls` routes (PASSTHROUGH servers) of the VirtualServices bound to it.
    #[serde(skip)]
    pub tls_routes: Vec<crate::routes::CompiledTlsRoute>,
    /// `tcp` routes (TCP servers) of the VirtualServices bound to it.
    #[serde(skip)]
    pub tcp_routes: Vec<crate::routes::CompiledTcpRoute>,
}

/// How a gateway port serves connections (all servers of a port alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// HTTP (HTTP, HTTP2, GRPC servers).
    Http,
    /// TLS terminated here, then HTTP (HTTPS with SIMPLE or MUTUAL).
    Https,
    /// TLS passed through, routed by the ClientHello's name (PASSTHROUGH).
    Passthrough,
    /// Opaque TCP (TCP servers).
    Tcp,
}

impl Mode {
    fn of(s: &mesh_api::networking::Server) -> Self {
        use mesh_api::networking::ServerTlsMode;
        let protocol = s.port.protocol.to_ascii_uppercase();
        match (protocol.as_str(), s.tls.as_ref().and_then(|t| t.mode)) {
            (_, Some(ServerTlsMode::Passthrough)) => Self::Passthrough,
            ("TCP", _) => Self::Tcp,
            (_, Some(ServerTlsMode::Simple | ServerTlsMode::Mutual)) => Self::Https,
            _ => Self::Http,
        }
    }
}

/// An HTTPS server's TLS: SIMPLE, or MUTUAL (a client certificate signed by its
/// `caCertificates` required).
#[derive(Clone, serde::Serialize)]
pub struct ServerTls {
    /// MUTUAL.
    pub mutual: bool,
    /// The certificate file, for `/config_dump`.
    pub certificate: String,
    /// The handshake's config.
    #[serde(skip)]
    pub config: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            if self.mutual { "MUTUAL" } else { "SIMPLE" },
            self.certificate
        )
    }
}

impl ServerTls {
    /// The TLS a server's settings ask for: from the Secret `credentialName` names (in
    /// the gateway's own namespace, as Istio reads it, delivered by discovery), or
    /// from the files it names.
    fn compile(
        t: &mesh_api::networking::ServerTlsSettings,
        credentials: &crate::state::Credentials,
        namespace: &str,
    ) -> Result<Self, String> {
        use crate::origination::{Material, certs, provider};
        use mesh_api::networking::ServerTlsMode;
        use tokio_rustls::rustls;
        let mutual = t.mode == Some(ServerTlsMode::Mutual);
        let material = Material::of(
            t.credential_name.as_deref(),
            [
                ("serverCertificate", t.server_certificate.as_deref()),
                ("privateKey", t.private_key.as_deref()),
                ("caCertificates", t.ca_certificates.as_deref()),
            ],
            credentials,
            namespace,
        )?;
        let (chain, private) = material.chain_and_key()?;
        // minProtocolVersion/maxProtocolVersion: TLS 1.2 and 1.3 (validation refuses
        // the older ones); TLS_AUTO or unset leaves both.
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
            (&rustls::version::TLS12, "TLSV1_2"),
            (&rustls::version::TLS13, "TLSV1_3"),
        ]
        .into_iter()
        .filter(|(_, name)| {
            let rank = |v: &str| if v == "TLSV1_3" { 3 } else { 2 };
            let min = t
                .min_protocol_version
                .as_deref()
                .filter(|v| *v != "TLS_AUTO");
            let max = t
                .max_protocol_version
                .as_deref()
                .filter(|v| *v != "TLS_AUTO");
            min.is_none_or(|m| rank(name) >= rank(m)) && max.is_none_or(|m| rank(name) <= rank(m))
        })
        .map(|(v, _)| v)
        .collect();
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("minProtocolVersion/maxProtocolVersion: {e}"))?;
        let builder = if mutual {
            let (pem, what) = material.ca.as_ref().ok_or_else(|| {
                format!(
                    "MUTUAL needs the CA of client certificates ({})",
                    material.ca_hint
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(pem, what)? {
                roots.add(c).map_err(|e| format!("{what}: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| format!("{what}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(chain, private)
            .map_err(|e| format!("{}: {e}", material.source))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            mutual,
            certificate: material.source.clone(),
            config: Arc::new(config),
        })
    }
}

/// A server's id: a hash of its name, stable within the process.
fn server_id(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// A host name (or wildcard) and its routes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VirtualHost {
    /// `bookinfo.example.com`, `*.example.com` or `*`.
    pub domain: String,
    /// The VirtualServices whose routes these are, oldest first.
    pub virtual_services: Vec<String>,
    /// Routes, in order.
    #[serde(skip)]
    pub routes: Vec<CompiledRoute>,
}

impl Listener {
    /// How the port serves connections.
    pub fn mode(&self) -> Mode {
        self.servers.first().map_or(Mode::Http, |s| s.mode)
    }

    /// The HTTPS server a ClientHello's server name picks: one of its hosts equal to
    /// the name, else the longest wildcard matching it, else (no name sent) a server
    /// for `*`.
    pub fn server_for_sni(&self, sni: Option<&str>) -> Option<&Server> {
        let mut best: Option<(usize, &Server)> = None;
        for server in self.servers.iter().filter(|s| s.tls.is_some()) {
            for host in &server.hosts {
                let host = host.split_once('/').map_or(host.as_str(), |(_, h)| h);
                let rank = match sni {
                    Some(name) if host.eq_ignore_ascii_case(name) => usize::MAX,
                    Some(name) if sni_matches(host, name) => host.len(),
                    None if host == "*" => 1,
                    _ => continue,
                };
                if best.is_none_or(|(r, _)| rank > r) {
                    best = Some((rank, server));
                }
            }
        }
        best.map(|(_, s)| s)
    }

    /// The server and virtual host a request for `host` (port stripped, any case)
    /// takes: an exact name, else the longest matching wildcard, else `*`; on a TLS
    /// port, among the virtual hosts of the server the handshake chose (`server`)
    /// only, so a Host cannot reach a server whose TLS the client did not pass.
    pub fn virtual_host(&self, host: &str, server: Option<u64>) -> Option<(&Server, &VirtualHost)> {
        let host = crate::model::strip_port(host);
        let mut best: Option<(usize, &Server, &VirtualHost)> = None;
        for server in self
            .servers
            .iter()
            .filter(|s| server.is_none_or(|id| s.id == id))
        {
            for vh in &server.virtual_hosts {
                let rank = if vh.domain.eq_ignore_ascii_case(host) {
                    usize::MAX
                } else if sni_matches(&vh.domain, host) {
                    // `*` ranks 1, `*.example.com` by its length.
                    vh.domain.len()
                } else {
                    continue;
                };
                if best.is_none_or(|(r, _, _)| rank > r) {
                    best = Some((rank, server, vh));
                }
            }
        }
        best.map(|(_, s, v)| (s, v))
    }
}

/// The more specific of two host patterns when they overlap (`*` overlaps all,
/// `*.example.com` any name under it), else `None`.
fn intersect(a: &str, b: &str) -> Option<String> {
    if a.eq_ignore_ascii_case(b) {
        Some(a.to_ascii_lowercase())
    } else if sni_matches(a, b) {
        Some(b.to_ascii_lowercase())
    } else if sni_matches(b, a) {
        Some(a.to_ascii_lowercase())
    } else {
        None
    }
}

/// Whether a server host `ns/host` admits a VirtualService of `vs_namespace`, and the
/// host part.
fn admits<'h>(
    server_host: &'h str,
    gateway_namespace: &str,
    vs_namespace: &str,
) -> Option<&'h str> {
    match server_host.split_once('/') {
        None => Some(server_host),
        Some(("*", host)) => Some(host),
        Some((".", host)) => (vs_namespace == gateway_namespace).then_some(host),
        Some((ns, host)) => (vs_namespace == ns).then_some(host),
    }
}

fn namespace_of(r: &Resource) -> String {
    r.metadata()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

impl Ingress {
    /// Compiles what `node` serves from `ordered` (oldest first), or `None` when the
    /// node is not an ingress gateway or no Gateway selects it. A route that does not
    /// compile is an error naming its VirtualService.
    pub fn compile(
        ordered: &[&Resource],
        node: &Node,
        credentials: &crate::state::Credentials,
    ) -> Result<Option<Self>, Vec<String>> {
        if !node.ingress {
            return Ok(None);
        }
        let gateways: Vec<(String, String, &Gateway)> = ordered
            .iter()
            .filter_map(|r| match r {
                Resource::Gateway(g)
                    if g.spec
                        .selector
                        .iter()
                        .all(|(k, v)| node.labels.get(k) == Some(v)) =>
                {
                    Some((r.key(), namespace_of(r), g.as_ref()))
                }
                _ => None,
            })
            .collect();
        let mut ingress = Self {
            gateways: gateways.iter().map(|(k, _, _)| k.clone()).collect(),
            listeners: BTreeMap::new(),
            waiting: Vec::new(),
        };
        let mut errors = Vec::new();
        for (key, gw_ns, gw) in &gateways {
            // Each VirtualService bound to this Gateway, compiled for it alone.
            let serves = BTreeSet::from([key.clone()]);
            let mut bound = Vec::new();
            for r in ordered {
                let Resource::VirtualService(vs) = r else {
                    continue;
                };
                let vs_ns = namespace_of(r);
                if !crate::routes::binds(&vs.spec.gateways, &vs_ns, &serves) {
                    continue;
                }
                let mut routes = Vec::new();
                for (i, route) in vs.spec.http.iter().enumerate() {
                    match CompiledRoute::compile(&r.key(), &vs_ns, i, route, node, &serves) {
                        Ok(Some(c)) => routes.push(c),
                        Ok(None) => {}
                        Err(e) => errors.push(format!("VirtualService {}: spec.{e}", r.key())),
                    }
                }
                // L4 routes, with the matches that name other gateways left out.
                let tls: Vec<_> = vs
                    .spec
                    .tls
                    .iter()
                    .filter_map(|t| {
                        let mut t = t.clone();
                        t.matches.retain(|m| {
                            m.gateways.is_empty()
                                || crate::routes::binds(&m.gateways, &vs_ns, &serves)
                        });
                        (!t.matches.is_empty())
                            .then(|| crate::routes::CompiledTlsRoute::compile(&t, &vs_ns))
                    })
                    .collect();
                let tcp: Vec<_> = vs
                    .spec
                    .tcp
                    .iter()
                    .filter(|t| {
                        t.matches.is_empty()
                            || t.matches.iter().any(|m| {
                                m.gateways.is_empty()
                                    || crate::routes::binds(&m.gateways, &vs_ns, &serves)
                            })
                    })
                    .map(|t| crate::routes::CompiledTcpRoute::compile(t, &vs_ns))
                    .collect();
                bound.push((r.key(), vs_ns, &vs.spec.hosts, routes, tls, tcp));
            }
            for (i, s) in gw.spec.servers.iter().enumerate() {
                let port = s.port.number as u16;
                let tls = match s.tls.as_ref().filter(|t| {
                    matches!(
                        t.mode,
                        Some(
                            mesh_api::networking::ServerTlsMode::Simple
                                | mesh_api::networking::ServerTlsMode::Mutual
                        )
                    )
                }) {
                    Some(t)
                        if t.credential_name.as_ref().is_some_and(|c| {
                            !credentials.contains_key(&format!("{}/{c}", node.namespace))
                        }) =>
                    {
                        let why = format!(
                            "Gateway {key}: spec.servers[{i}].tls.credentialName: no Secret {}/{} with a certificate yet; \
                             the server is served once it arrives",
                            node.namespace,
                            t.credential_name.as_deref().unwrap_or_default()
                        );
                        tracing::warn!(reason = %why, "Gateway server not served");
                        ingress.waiting.push(why);
                        continue;
                    }
                    Some(t) => match ServerTls::compile(t, credentials, &node.namespace) {
                        Ok(t) => Some(Arc::new(t)),
                        Err(e) => {
                            errors.push(format!("Gateway {key}: spec.servers[{i}].tls: {e}"));
                            continue;
                        }
                    },
                    None => None,
                };
                let mut server = Server {
                    id: 0,
                    tls,
                    mode: Mode::of(s),
                    tls_routes: Vec::new(),
                    tcp_routes: Vec::new(),
                    name: format!(
                        "{key}.{}",
                        s.name
                            .clone()
                            .filter(|n| !n.is_empty())
                            .or_else(|| Some(s.port.name.clone()).filter(|n| !n.is_empty()))
                            .unwrap_or_else(|| i.to_string())
                    ),
                    gateway: key.clone(),
                    hosts: s.hosts.clone(),
                    https_redirect: s.tls.as_ref().is_some_and(|t| t.https_redirect),
                    virtual_hosts: Vec::new(),
                };
                for (vs_key, vs_ns, hosts, routes, tls, tcp) in &bound {
                    // L4 servers take the tls or tcp routes of the VirtualServices
                    // whose hosts they admit.
                    if matches!(server.mode, Mode::Passthrough | Mode::Tcp) {
                        let admitted = hosts.iter().any(|h| {
                            s.hosts.iter().any(|sh| {
                                admits(sh, gw_ns, vs_ns)
                                    .and_then(|sh| intersect(h, sh))
                                    .is_some()
                            })
                        });
                        if admitted {
                            server.tls_routes.extend(tls.iter().cloned());
                            server.tcp_routes.extend(tcp.iter().cloned());
                        }
                        continue;
                    }
                    for host in hosts.iter() {
                        for server_host in &s.hosts {
                            let Some(domain) = admits(server_host, gw_ns, vs_ns)
                                .and_then(|sh| intersect(host, sh))
                            else {
                                continue;
                            };
                            match server.virtual_hosts.iter_mut().find(|v| v.domain == domain) {
                                Some(vh) => {
                                    if !vh.virtual_services.contains(vs_key) {
                                        vh.virtual_services.push(vs_key.clone());
                                        vh.routes.extend(routes.iter().cloned());
                                    }
                                }
                                None => server.virtual_hosts.push(VirtualHost {
                                    domain,
                                    virtual_services: vec![vs_key.clone()],
                                    routes: routes.clone(),
                                }),
                            }
                        }
                    }
                }
                server.id = server_id(&server.name);
                let listener = ingress.listeners.entry(port).or_insert_with(|| Listener {
                    port,
                    servers: Vec::new(),
                });
                if !listener.servers.is_empty() && listener.mode() != server.mode {
                    errors.push(format!(
                        "Gateway {key}: spec.servers[{i}].port: port {port} already has {:?} servers, and this one is {:?}; \
                         serve them on different ports",
                        listener.mode(),
                        server.mode
                    ));
                    continue;
                }
                // As in Istio, a host already served on the port by an older server
                // stays with it.
                server.virtual_hosts.retain(|vh| {
                    let taken = listener
                        .servers
                        .iter()
                        .any(|o| o.virtual_hosts.iter().any(|v| v.domain == vh.domain));
                    if taken {
                        tracing::warn!(server = %server.name, host = %vh.domain, port, "host already served on this port by an older Gateway server; ignored here");
                    }
                    !taken
                });
                listener.servers.push(server);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Some(ingress))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(yaml: &str, labels: &[(&str, &str)]) -> Ingress {
        let docs = mesh_api::parse_resources(yaml).unwrap();
        let resources: Vec<Resource> = docs.into_iter().map(|d| d.unwrap()).collect();
        let mut ordered: Vec<&Resource> = resources.iter().collect();
        ordered.sort_by(|a, b| mesh_api::precedence::older_first(a.metadata(), b.metadata()));
        let node = Node {
            name: "ingress-1".into(),
            namespace: "istio-system".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ingress: true,
            ..Default::default()
        };
        Ingress::compile(&ordered, &node, &Default::default())
            .unwrap()
            .unwrap()
    }

    const GATEWAYS: &str = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: shop, creationTimestamp: '2026-01-01T00:00:00Z'}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['./shop.example.com', '*/*.example.org', 'team-a/api.example.net']
  - port: {number: 8080, name: redirect, protocol: HTTP}
    hosts: ['*']
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: internal, namespace: ops}
spec:
  selector: {istio: other-gateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
";

    fn vs(name: &str, ns: &str, created: &str, gateways: &str, hosts: &str, body: &str) -> String {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '{created}'}}
spec:
  hosts: {hosts}
  gateways: {gateways}
  http:
  - route: [{{destination: {{host: {body}}}}}]
"
        )
    }

    fn listing(i: &Ingress) -> Vec<String> {
        let mut out = Vec::new();
        for (port, l) in &i.listeners {
            for s in &l.servers {
                for vh in &s.virtual_hosts {
                    out.push(format!(
                        "{port} {} {} <- {}",
                        s.name,
                        vh.domain,
                        vh.virtual_services.join("+")
                    ));
                }
            }
        }
        out
    }

    /// Which VirtualServices bind where, by Istio's host and namespace rules.
    #[test]
    fn gateways_bind_virtual_services_by_name_namespace_and_host() {
        let yaml = [
            GATEWAYS.to_owned(),
            // In `gateways`, a bare name is a Gateway of the VirtualService's namespace.
            vs(
                "front",
                "shop",
                "2026-01-02T00:00:00Z",
                "[public]",
                "[shop.example.com]",
                "web",
            ),
            // Same host, newer: merged after the older one's routes.
            vs(
                "front-extra",
                "shop",
                "2026-01-03T00:00:00Z",
                "[shop/public]",
                "['*']",
                "extra",
            ),
            // Another namespace may not take `./` hosts, but may take `*/` ones.
            vs(
                "docs",
                "team-b",
                "2026-01-02T00:00:00Z",
                "[shop/public]",
                "[shop.example.com, docs.example.org]",
                "docs",
            ),
            // `team-a/` hosts admit team-a only.
            vs(
                "api",
                "team-a",
                "2026-01-02T00:00:00Z",
                "[shop/public]",
                "['*.example.net']",
                "api",
            ),
            vs(
                "api-b",
                "team-b",
                "2026-01-02T00:00:00Z",
                "[shop/public]",
                "[api.example.net]",
                "api",
            ),
            // Not bound: a sidecar route, and a route for a Gateway of another namespace.
            vs(
                "mesh-only",
                "shop",
                "2026-01-02T00:00:00Z",
                "[mesh]",
                "[shop.example.com]",
                "x",
            ),
            vs(
                "wrong-ns",
                "team-b",
                "2026-01-02T00:00:00Z",
                "[public]",
                "[shop.example.com]",
                "x",
            ),
        ]
        .concat();
        let i = ingress(&yaml, &[("istio", "ingressgateway"), ("app", "gw")]);
        assert_eq!(i.gateways, BTreeSet::from(["shop/public".to_owned()]));
        assert_eq!(
            listing(&i),
            [
                "80 shop/public.http api.example.net <- team-a/api",
                "80 shop/public.http docs.example.org <- team-b/docs",
                "80 shop/public.http shop.example.com <- shop/front+shop/front-extra",
                "80 shop/public.http *.example.org <- shop/front-extra",
                "8080 shop/public.redirect *.example.net <- team-a/api",
                "8080 shop/public.redirect api.example.net <- team-b/api-b",
                "8080 shop/public.redirect shop.example.com <- team-b/docs+shop/front",
                "8080 shop/public.redirect docs.example.org <- team-b/docs",
                "8080 shop/public.redirect * <- shop/front-extra",
            ]
        );
        // A listener per server `port`; the Host picks the virtual host.
        let l80 = &i.listeners[&80];
        let pick = |h: &str| l80.virtual_host(h, None).map(|(_, v)| v.domain.clone());
        assert_eq!(
            pick("SHOP.example.com:80").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            pick("docs.example.org").as_deref(),
            Some("docs.example.org")
        );
        assert_eq!(pick("www.example.org").as_deref(), Some("*.example.org"));
        assert_eq!(pick("example.org"), None);
        assert_eq!(pick("elsewhere.test"), None);
        let first = &l80.virtual_host("shop.example.com", None).unwrap().1.routes;
        assert_eq!(
            first.len(),
            2,
            "merged: the older VirtualService's route first"
        );
        assert!(first[0].name.starts_with("shop/front#"));
        let l8080 = &i.listeners[&8080];
        assert!(l8080.servers[0].https_redirect);
        assert_eq!(
            l8080.virtual_host("other.test", None).unwrap().1.domain,
            "*",
            "a wildcard server takes any host"
        );
        // A workload the selector does not match serves nothing.
        let none = ingress(&yaml, &[("istio", "egressgateway")]);
        assert!(none.gateways.is_empty() && none.listeners.is_empty());
    }
}
