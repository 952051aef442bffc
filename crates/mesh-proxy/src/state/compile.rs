//! Compiling a config ([`ConfigBundle`]) into a [`ProxyState`]: services and their
//! endpoints, VirtualService routes by host, merged DestinationRules, authorization
//! and peer authentication, and the lookup index.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_api::Resource;

use super::{Index, ProxyState};
use crate::config::{ConfigBundle, INBOUND_PORT, Node, ServiceConfig};
use crate::error::ConfigError;
use crate::model::{Endpoint, Location, Protocol, Service, ServicePort, resolve_host};
use crate::policy::DestinationPolicy;
use crate::routes::{CompiledRoute, CompiledTcpRoute, CompiledTlsRoute};

/// Compiles one service and its endpoints. A pushed service is compiled once, when it
/// arrives, and the compiled service is reused by every later compile of the set
/// until the service itself changes.
pub fn compile_service(svc: &ServiceConfig) -> Arc<Service> {
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
                ports: BTreeMap::new(),
                source_labels: std::sync::OnceLock::new(),
            })
        })
        .collect();
    Arc::new(Service {
        host,
        name: svc.name.clone(),
        namespace: svc.namespace.clone(),
        addresses: svc.addresses.clone(),
        ports,
        endpoints,
        location: Location::Mesh,
        dns: None,
        headless: svc.headless,
        subject_alt_names: vec![],
        source_labels: std::sync::OnceLock::new(),
    })
}

impl ProxyState {
    /// Compiles a config. Every problem is collected; any problem rejects the whole
    /// update.
    pub fn compile(bundle: &ConfigBundle, origin: &str) -> Result<Self, ConfigError> {
        let resources: Vec<&Resource> = bundle.resources.iter().collect();
        Self::compile_parts(
            &bundle.proxy.node,
            &bundle.proxy.version,
            bundle.proxy.services.iter().map(compile_service),
            &resources,
            &Default::default(),
            origin,
        )
    }

    /// Compiles a config from services compiled before ([`compile_service`]) and the
    /// Istio resources: routes, policies, authorization and the index are built here.
    pub fn compile_parts(
        node: &Node,
        version: &str,
        compiled: impl IntoIterator<Item = Arc<Service>>,
        resources: &[&Resource],
        credentials: &super::Credentials,
        origin: &str,
    ) -> Result<Self, ConfigError> {
        let mut node = node.clone();
        let mut errors = Vec::new();
        let mut services = HashMap::new();
        for svc in compiled {
            let host = svc.host.clone();
            if services.insert(host.clone(), svc).is_some() {
                errors.push(format!("service {host} is listed twice"));
            }
        }
        add_service_entries(resources, &mut services, &mut errors);

        let mut routes: HashMap<String, Vec<CompiledRoute>> = HashMap::new();
        let mut tcp_routes: HashMap<String, Vec<CompiledTcpRoute>> = HashMap::new();
        let mut tls_routes: HashMap<String, Vec<CompiledTlsRoute>> = HashMap::new();
        let mut policies = HashMap::new();
        // Istio's precedence: the oldest object first (then name, then namespace).
        let mut ordered: Vec<&Resource> = resources.to_vec();
        ordered.sort_by(|a, b| mesh_api::precedence::older_first(a.metadata(), b.metadata()));
        // The Sidecar in force: services outside its egress hosts are not compiled,
        // and its outbound traffic policy replaces the mesh's.
        let scope = super::scope::Scope::for_node(&ordered, &node);
        if let Some(scope) = &scope {
            services.retain(|_, svc| scope.allows(svc));
            if let Some(policy) = scope.outbound_traffic_policy {
                node.outbound_traffic_policy = policy;
            }
        }
        let mut rules_by_host: BTreeMap<String, Vec<&mesh_api::networking::DestinationRule>> =
            BTreeMap::new();
        let mesh = std::collections::BTreeSet::from([crate::routes::MESH.to_owned()]);
        for r in ordered.iter().copied() {
            let key = r.key();
            let ns = r
                .metadata()
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            match r {
                Resource::VirtualService(vs) => {
                    if !crate::routes::binds(&vs.spec.gateways, &ns, &mesh) {
                        continue; // gateway-only routes do not apply to sidecars
                    }
                    let mut compiled = Vec::new();
                    for (i, route) in vs.spec.http.iter().enumerate() {
                        match CompiledRoute::compile(&key, &ns, i, route, &node, &mesh) {
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
                let policy = DestinationPolicy::compile(
                    merged.rules.join(", "),
                    &merged.spec,
                    crate::policy::Secrets(credentials, &node.namespace),
                );
                for e in &policy.errors {
                    errors.push(format!("DestinationRule {}: spec: tls: {e}", policy.rule));
                }
                policies.insert(fqdn.clone(), Arc::new(policy));
            }
        }
        let ingress = crate::ingress::Ingress::compile(&ordered, &node, credentials)
            .unwrap_or_else(|e| {
                errors.extend(e);
                None
            });
        let (peer_authn, authz) = compile_security(resources, &ordered, &node);
        let jwt = compile_jwt(resources, &node).unwrap_or_else(|e| {
            errors.extend(e);
            Default::default()
        });
        for host in services.keys() {
            routes
                .entry(host.clone())
                .or_insert_with(|| vec![CompiledRoute::default_for(host)]);
        }
        if !errors.is_empty() {
            return Err(ConfigError::many(origin, errors));
        }
        Ok(Self {
            version: version.to_owned(),
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
            jwt,
            peer_authn,
            ingress: ingress.map(Arc::new),
            scope,
            credentials: {
                let mut names: Vec<String> = credentials.keys().cloned().collect();
                names.sort();
                names
            },
            peer_header: std::sync::OnceLock::new(),
            index: Index::build(&services, &node.namespace, &node.network),
            node,
            services,
        })
    }
}

/// Namespace (`default` when unset) and name of an object.
fn namespace_and_name(r: &Resource) -> (String, String) {
    let meta = r.metadata();
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The PeerAuthentication and AuthorizationPolicy among `resources` that apply to
/// `node`, compiled as the node's own proxy compiles them: discovery evaluates a
/// request against a workload's policies with it (`meshctl diagnose`).
pub fn security_for(
    resources: &[&Resource],
    node: &Node,
) -> (crate::peer_authn::PeerAuthn, crate::authz::Authorizer) {
    let mut ordered: Vec<&Resource> = resources.to_vec();
    ordered.sort_by(|a, b| mesh_api::precedence::older_first(a.metadata(), b.metadata()));
    compile_security(resources, &ordered, node)
}

/// PeerAuthentication (`ordered`: oldest first, so that at one level the first policy
/// applies) and AuthorizationPolicy, compiled for `node`.
fn compile_security(
    resources: &[&Resource],
    ordered: &[&Resource],
    node: &Node,
) -> (crate::peer_authn::PeerAuthn, crate::authz::Authorizer) {
    let authz_specs: Vec<_> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::AuthorizationPolicy(ap) => {
                let (ns, name) = namespace_and_name(r);
                Some((ns, name, &ap.spec))
            }
            _ => None,
        })
        .collect();
    let peer_authn_specs: Vec<_> = ordered
        .iter()
        .filter_map(|r| match r {
            Resource::PeerAuthentication(pa) => {
                let (ns, name) = namespace_and_name(r);
                Some((ns, name, &pa.spec))
            }
            _ => None,
        })
        .collect();
    (
        crate::peer_authn::PeerAuthn::compile(&peer_authn_specs, node),
        crate::authz::Authorizer::compile(&authz_specs, node),
    )
}

/// The services ServiceEntries define, added to `services` (a host that is already a
/// service is an error, as is anything an entry asks that cannot be honoured).
fn add_service_entries(
    resources: &[&Resource],
    services: &mut HashMap<String, Arc<Service>>,
    errors: &mut Vec<String>,
) {
    for r in resources {
        let Resource::ServiceEntry(se) = r else {
            continue;
        };
        let key = r.key();
        match super::service_entry::compile(&se.spec, &namespace_and_name(r).0) {
            Ok(list) => {
                for svc in list {
                    let host = svc.host.clone();
                    if services.insert(host.clone(), Arc::new(svc)).is_some() {
                        errors.push(format!(
                            "ServiceEntry {key}: spec.hosts: {host} is already defined by another service"
                        ));
                    }
                }
            }
            Err(reasons) => {
                errors.extend(
                    reasons
                        .into_iter()
                        .map(|e| format!("ServiceEntry {key}: spec.{e}")),
                );
            }
        }
    }
}

/// The JWT rules of the RequestAuthentications that select `node`; a rule that cannot
/// be honoured (keys that do not parse, say) refuses the update.
fn compile_jwt(resources: &[&Resource], node: &Node) -> Result<crate::jwt::JwtAuthn, Vec<String>> {
    let specs: Vec<_> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::RequestAuthentication(ra) => {
                let (ns, name) = namespace_and_name(r);
                Some((ns, name, &ra.spec))
            }
            _ => None,
        })
        .collect();
    crate::jwt::JwtAuthn::compile(&specs, node)
}
