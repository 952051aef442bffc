//! `Sidecar`: what a workload's sidecar can reach (egress hosts) and what it does with
//! traffic to anything else (`outboundTrafficPolicy`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::networking::{
    ConnectionPoolSettings, Destination, LabelSelector, Port, ServerTlsSettings,
};
use crate::validate::Validator;

/// Istio's `Sidecar` spec, unchanged.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Sidecar",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// The workloads of the namespace this applies to (none: every workload of the
    /// namespace, or of the mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
    /// Inbound listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound listeners: the hosts the workload can reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    /// What happens to traffic to hosts outside the egress hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Connection pool of inbound connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
}

/// An inbound listener of a Sidecar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// The port.
    pub port: Port,
    /// Address to bind to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// DEFAULT, IPTABLES or NONE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<String>,
    /// Where traffic goes (`127.0.0.1:PORT`, `unix://...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    /// TLS for the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// An outbound listener of a Sidecar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// The port (none: every port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Address to bind to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// DEFAULT, IPTABLES or NONE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<String>,
    /// `namespace/dnsName`: `*` any namespace, `.` the Sidecar's, `~` none; the name
    /// may be `*` or `*.domain`.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// A Sidecar's `outboundTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// ALLOW_ANY or REGISTRY_ONLY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficMode>,
    /// Where ALLOW_ANY traffic is sent instead of its destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

/// Istio's outbound traffic modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficMode {
    /// Unknown destinations are passed through.
    AllowAny,
    /// Unknown destinations are refused.
    RegistryOnly,
}

/// One egress host `namespace/dnsName`, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressHost {
    /// `*`, `.`, `~` or a namespace.
    pub namespace: String,
    /// `*`, `*.domain` or a name.
    pub name: String,
}

impl EgressHost {
    /// Reads `namespace/dnsName`, or says why it cannot be.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ns, name) = s
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| {
                format!("{s:?}: write namespace/dnsName (`./*` for the Sidecar's namespace, `*/NAME` for any)")
            })?;
        Ok(Self {
            namespace: ns.to_owned(),
            name: name.to_ascii_lowercase(),
        })
    }
}

/// The application port an ingress listener's `defaultEndpoint` names
/// (`127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT` or `[::]:PORT`: the workload's own
/// address), or why it cannot be honoured.
pub fn default_endpoint_port(endpoint: &str) -> Result<u16, String> {
    if endpoint.starts_with("unix://") {
        return Err(format!(
            "{endpoint:?}: Unix domain sockets are not built; give 127.0.0.1:PORT"
        ));
    }
    let addr: std::net::SocketAddr = endpoint
        .parse()
        .map_err(|_| format!("{endpoint:?}: write 127.0.0.1:PORT (or 0.0.0.0:PORT)"))?;
    if !(addr.ip().is_loopback() || addr.ip().is_unspecified()) {
        return Err(format!(
            "{endpoint:?}: the endpoint is the workload itself: give 127.0.0.1:PORT or 0.0.0.0:PORT"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("{endpoint:?}: port 0"));
    }
    Ok(addr.port())
}

impl SidecarSpec {
    pub(crate) fn validate(&self, v: &mut Validator) {
        let mut seen = std::collections::BTreeSet::new();
        v.each("ingress", &self.ingress, |v, l| {
            v.field("port", |v| {
                v.field("number", |v| crate::common::validate_port(v, l.port.number));
                if !seen.insert(l.port.number) {
                    v.error(format!("port {} has two ingress listeners", l.port.number));
                }
            });
            if let Some(e) = &l.default_endpoint
                && let Err(reason) = default_endpoint_port(e)
            {
                v.field("defaultEndpoint", |v| v.error(reason));
            }
        });
        if self.egress.is_empty()
            && self.outbound_traffic_policy.is_none()
            && self.ingress.is_empty()
        {
            v.field("egress", |v| {
                v.error("give at least one egress listener with hosts (e.g. `./*` and `istio-system/*`)")
            });
        }
        v.each("egress", &self.egress, |v, e| {
            if e.hosts.is_empty() {
                v.field("hosts", |v| v.error("at least one host is required"));
            }
            v.each("hosts", &e.hosts, |v, h| {
                if let Err(e) = EgressHost::parse(h) {
                    v.error(e);
                }
            });
        });
        if let Some(selector) = &self.workload_selector
            && selector.labels.is_empty()
        {
            v.field("workloadSelector", |v| {
                v.field("labels", |v| v.error("at least one label is required"))
            });
        }
    }
}
