//! `ServiceEntry`: services that are not in the Kubernetes registry.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::validate_port;
use crate::networking::gateway::Port;
use crate::validate::Validator;

/// Istio's `ServiceEntry` spec, unchanged.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    namespaced,
    derive = "PartialEq",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names of the service.
    pub hosts: Vec<String>,
    /// Virtual IPs of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Ports of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// MESH_EXTERNAL or MESH_INTERNAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<ServiceEntryLocation>,
    /// How endpoints are found: NONE, STATIC, DNS or DNS_ROUND_ROBIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<ServiceEntryResolution>,
    /// Static endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Select WorkloadEntries and Pods as endpoints instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
    /// Namespaces this entry is visible to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Acceptable SANs of the endpoints' certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// `workloadSelector` of a ServiceEntry (`labels`, unlike the security kinds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels to select.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Whether the service is part of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceEntryLocation {
    /// Outside the mesh: no mTLS.
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// How endpoints of a ServiceEntry are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceEntryResolution {
    /// Forward to the original destination.
    None,
    /// The listed endpoint addresses.
    Static,
    /// Resolve host names, all addresses used.
    Dns,
    /// Resolve host names, one address at a time.
    DnsRoundRobin,
}

/// An endpoint: a ServiceEntry's static endpoint, or the spec of Istio's
/// `WorkloadEntry` kind (a workload that is not a pod, selected by a Service's or a
/// ServiceEntry's selector like a pod).
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    shortname = "we",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP address or host name.
    #[serde(default)]
    pub address: String,
    /// Port name → port number on this endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels of the endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Network the endpoint is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `region/zone/subzone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Load-balancing weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Service account of the workload (its SPIFFE identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl ServiceEntrySpec {
    pub(crate) fn validate(&self, v: &mut Validator) {
        if self.hosts.is_empty() {
            v.field("hosts", |v| v.error("at least one host is required"));
        }
        v.each("hosts", &self.hosts, |v, h| {
            if h.contains('*') {
                v.error(format!(
                    "wildcard host {h:?} is not enforced yet; list each host the entry serves"
                ));
            }
        });
        v.each("addresses", &self.addresses, |v, a| {
            if a.parse::<std::net::IpAddr>().is_err() {
                v.error(format!(
                    "{a:?} is not an IP address (address ranges are not enforced yet)"
                ));
            }
        });
        if matches!(self.resolution, None | Some(ServiceEntryResolution::None))
            && self.workload_selector.is_none()
        {
            // NONE: connections keep the address they were sent to. Without addresses
            // the entry would take every address on its ports, which is not built.
            if self.addresses.is_empty() {
                v.field("resolution", |v| {
                    v.error(
                        "NONE (also when unset) needs the entry's `addresses`, each passed \
                         through as sent; give them, or use STATIC with endpoints, or DNS",
                    )
                });
            }
            if !self.endpoints.is_empty() {
                v.field("endpoints", |v| {
                    v.error("resolution NONE takes no endpoints (connections go to the address they were sent to); use STATIC")
                });
            }
        }
        v.each("ports", &self.ports, |v, p| {
            v.field("number", |v| validate_port(v, p.number));
        });
        let static_res = self.resolution == Some(ServiceEntryResolution::Static);
        v.each("endpoints", &self.endpoints, |v, e| {
            if e.address.is_empty() && self.workload_selector.is_none() {
                v.field("address", |v| v.error("is required"));
            }
            if static_res && !e.address.is_empty() && e.address.parse::<std::net::IpAddr>().is_err()
                && !e.address.starts_with("unix://")
            {
                v.field("address", |v| {
                    v.error(format!(
                        "{:?} is not an IP address, which resolution STATIC needs (use DNS for host names)",
                        e.address
                    ))
                });
            }
            v.each_entry("ports", &e.ports, |v, _, p| validate_port(v, *p));
        });
        if !self.endpoints.is_empty() && self.workload_selector.is_some() {
            v.error("set only one of endpoints and workloadSelector");
        }
        // Checked against the mesh certificate of a MESH_INTERNAL endpoint, which
        // carries a SPIFFE identity only.
        if !self.subject_alt_names.is_empty()
            && self.location != Some(ServiceEntryLocation::MeshInternal)
        {
            v.field("subjectAltNames", |v| {
                v.error("they are checked against mesh endpoints' certificates (location: MESH_INTERNAL); for TLS to an external service set the DestinationRule's tls.subjectAltNames")
            });
        }
        v.each("subjectAltNames", &self.subject_alt_names, |v, san| {
            if !san.starts_with("spiffe://") {
                v.error(format!(
                    "{san:?} is not a SPIFFE ID; mesh certificates name their workload as spiffe://TRUST_DOMAIN/ns/NS/sa/SA"
                ));
            }
        });
        if self.workload_selector.is_some() {
            // The selected workloads run sidecars: they are reached over mesh mTLS, at
            // their pod or WorkloadEntry address.
            if self.location != Some(ServiceEntryLocation::MeshInternal) {
                v.field("location", |v| {
                    v.error(
                        "a workloadSelector selects mesh workloads; set location: MESH_INTERNAL",
                    )
                });
            }
            if !matches!(
                self.resolution,
                Some(ServiceEntryResolution::Static) | None | Some(ServiceEntryResolution::None)
            ) {
                v.field("resolution", |v| {
                    v.error("the selected workloads' addresses are the endpoints; set resolution: STATIC")
                });
            }
        }
    }
}
