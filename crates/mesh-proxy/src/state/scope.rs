//! The `Sidecar` resource that applies to this proxy: the egress hosts it can reach
//! (services outside them are not compiled, so they are unknown here: a request
//! naming one is a 404, a captured connection to one follows the outbound traffic
//! policy, and the DNS proxy does not answer for it) and its `outboundTrafficPolicy`.
//!
//! Istio's selection: a Sidecar of the workload's namespace whose `workloadSelector`
//! matches its labels, else the namespace's Sidecar without one, else the root
//! namespace's (`istio-system`) without one; the oldest at each level.

use mesh_api::Resource;
use mesh_api::networking::{EgressHost, OutboundTrafficMode, Sidecar};

use crate::authz::ROOT_NAMESPACE;
use crate::config::{Node, OutboundTrafficPolicy};
use crate::model::Service;

/// The Sidecar in force for a proxy, compiled.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scope {
    /// The Sidecar, `namespace/name`.
    pub sidecar: String,
    /// Its egress hosts as written.
    pub hosts: Vec<String>,
    #[serde(skip)]
    parsed: Vec<EgressHost>,
    #[serde(skip)]
    namespace: String,
    /// Its outbound traffic policy, when it sets one.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Its ingress listeners.
    pub ingress: Vec<IngressPort>,
}

/// A Sidecar ingress listener: traffic to the workload's `port` goes to the
/// application's `forward_to` port (its `defaultEndpoint`), handled as `protocol`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct IngressPort {
    /// The workload port the listener takes.
    pub port: u16,
    /// The application's port.
    pub forward_to: u16,
    /// The listener's protocol.
    pub protocol: crate::model::Protocol,
}

impl Scope {
    /// The Sidecar for `node` among `ordered` (oldest first), if any. Discovery calls
    /// it too, to send a proxy only the services its Sidecar admits.
    pub fn for_node(ordered: &[&Resource], node: &Node) -> Option<Self> {
        let sidecars: Vec<(&Resource, &Sidecar, String)> = ordered
            .iter()
            .filter_map(|r| match r {
                Resource::Sidecar(s) => Some((
                    *r,
                    s.as_ref(),
                    r.metadata()
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                )),
                _ => None,
            })
            .collect();
        let selects = |s: &Sidecar| {
            s.spec
                .workload_selector
                .as_ref()
                .is_some_and(|w| w.labels.iter().all(|(k, v)| node.labels.get(k) == Some(v)))
        };
        let (r, s, ns) = sidecars
            .iter()
            .find(|(_, s, ns)| *ns == node.namespace && selects(s))
            .or_else(|| {
                sidecars
                    .iter()
                    .find(|(_, s, ns)| *ns == node.namespace && s.spec.workload_selector.is_none())
            })
            .or_else(|| {
                sidecars
                    .iter()
                    .find(|(_, s, ns)| ns == ROOT_NAMESPACE && s.spec.workload_selector.is_none())
            })?;
        let hosts: Vec<String> = s.spec.egress.iter().flat_map(|e| e.hosts.clone()).collect();
        // Validation has read every listener; one that does not parse is left out.
        let ingress = s
            .spec
            .ingress
            .iter()
            .filter_map(|l| {
                let port = u16::try_from(l.port.number).ok()?;
                let forward_to = match &l.default_endpoint {
                    Some(e) => mesh_api::networking::sidecar::default_endpoint_port(e).ok()?,
                    None => port,
                };
                Some(IngressPort {
                    port,
                    forward_to,
                    protocol: crate::model::Protocol::from_port(
                        &l.port.name,
                        Some(&l.port.protocol),
                    ),
                })
            })
            .collect();
        Some(Self {
            sidecar: r.key(),
            // Validation has read every host; one that does not parse admits nothing.
            parsed: hosts
                .iter()
                .filter_map(|h| EgressHost::parse(h).ok())
                .collect(),
            hosts,
            ingress,
            namespace: ns.clone(),
            outbound_traffic_policy: s
                .spec
                .outbound_traffic_policy
                .as_ref()
                .and_then(|p| p.mode)
                .map(|m| match m {
                    OutboundTrafficMode::AllowAny => OutboundTrafficPolicy::AllowAny,
                    OutboundTrafficMode::RegistryOnly => OutboundTrafficPolicy::RegistryOnly,
                }),
        })
    }

    /// The ingress listener taking the workload port `port`, if any.
    pub fn ingress_port(&self, port: u16) -> Option<&IngressPort> {
        self.ingress.iter().find(|l| l.port == port)
    }

    /// Whether the egress hosts admit `svc` (by its namespace and host). A Sidecar
    /// with no egress listener admits every service.
    pub(super) fn allows(&self, svc: &Service) -> bool {
        self.allows_host(&svc.namespace, &svc.host)
    }

    /// Whether the egress hosts admit the service `host` (fully qualified) of
    /// `namespace`.
    pub fn allows_host(&self, namespace: &str, host: &str) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        self.parsed.iter().any(|h| {
            let in_namespace = match h.namespace.as_str() {
                "*" => true,
                "~" => false,
                "." => namespace == self.namespace,
                ns => namespace == ns,
            };
            in_namespace
                && (h.name == "*"
                    || h.name.eq_ignore_ascii_case(host)
                    || crate::routes::sni_matches(&h.name, host))
        })
    }
}
