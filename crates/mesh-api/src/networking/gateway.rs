//! `Gateway` (the Istio kind, not Gateway API): ports and hosts a gateway proxy serves.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::validate_port;
use crate::validate::Validator;

/// Istio's `Gateway` spec, unchanged.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    derive = "PartialEq",
    shortname = "gw",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Servers: port, hosts and TLS settings.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Labels of the gateway workloads this applies to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One listener of a gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port and its protocol.
    pub port: Port,
    /// Address to bind to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Hosts served, optionally `namespace/host`.
    pub hosts: Vec<String>,
    /// TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Default endpoint for traffic that matches no host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    /// Name of the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A port with its protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Port number.
    pub number: u32,
    /// HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS.
    pub protocol: String,
    /// Port name.
    #[serde(default)]
    pub name: String,
    /// Port on the workload the traffic goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// TLS settings of a gateway server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Redirect plain HTTP to HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL or OPTIONAL_MUTUAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTlsMode>,
    /// Server certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    /// Server key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// CA certificates to verify clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Certificate revocation list file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    /// Secret holding the certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Several secrets (e.g. RSA and ECDSA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// Acceptable client SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Pinned client SPKI hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    /// Pinned client certificate hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    /// Lowest TLS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<String>,
    /// Highest TLS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<String>,
    /// Allowed cipher suites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

/// Gateway TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Route by SNI without terminating.
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate mTLS with user certificates.
    Mutual,
    /// Route by the SNI `outbound_.PORT_.SUBSET_.HOST` without terminating: east-west.
    AutoPassthrough,
    /// Terminate mTLS with mesh certificates.
    IstioMutual,
    /// mTLS when the client presents a certificate.
    OptionalMutual,
}

/// The server protocols the ingress gateway serves.
pub const SERVED: &[&str] = &["HTTP", "HTTP2", "GRPC", "HTTPS", "TLS", "TCP"];

impl GatewaySpec {
    pub(crate) fn validate(&self, v: &mut Validator) {
        if self.servers.is_empty() {
            v.field("servers", |v| v.error("at least one server is required"));
        }
        v.each("servers", &self.servers, |v, s| {
            v.field("port", |v| {
                v.field("number", |v| validate_port(v, s.port.number));
                const PROTOCOLS: &[&str] = &[
                    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS",
                ];
                let protocol = s.port.protocol.to_ascii_uppercase();
                let east_west = s
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.mode == Some(ServerTlsMode::AutoPassthrough));
                if east_west {
                    // Istio's cross-network gateway: Isthmus needs no Gateway for it.
                    v.field("protocol", |v| {
                        v.error(
                            "an AUTO_PASSTHROUGH server is Istio's east-west gateway; Isthmus's east-west gateway \
                             is configured by discovery (from the link Secrets), so this Gateway is not needed: remove it",
                        )
                    });
                } else if !PROTOCOLS.contains(&protocol.as_str()) {
                    v.field("protocol", |v| {
                        v.error(format!(
                            "unknown protocol {:?}; use one of {}",
                            s.port.protocol,
                            PROTOCOLS.join(", ")
                        ))
                    });
                } else if !SERVED.contains(&protocol.as_str()) {
                    v.field("protocol", |v| {
                        v.error(format!(
                            "{protocol} servers are not served by the Isthmus ingress gateway yet; \
                             serve {} (route TCP and TLS from sidecars)",
                            SERVED.join(", ")
                        ))
                    });
                }
                if s.port.target_port.is_some() {
                    v.field("targetPort", |v| {
                        v.error(
                            "targetPort applies to ServiceEntry ports only; \
                             the gateway binds a server port on another port with its --port flag",
                        )
                    });
                }
            });
            let https = s.port.protocol.eq_ignore_ascii_case("HTTPS");
            let tls_protocol = s.port.protocol.eq_ignore_ascii_case("TLS");
            let mode = s.tls.as_ref().and_then(|t| t.mode);
            if tls_protocol && mode != Some(ServerTlsMode::Passthrough) {
                v.field("tls", |v| {
                    v.field("mode", |v| {
                        v.error(
                            "a TLS server is served with mode PASSTHROUGH (routed by the ClientHello's name \
                             to a VirtualService's tls route); terminate TLS with protocol HTTPS",
                        )
                    })
                });
                return;
            }
            match (https || tls_protocol, mode) {
                (true, Some(ServerTlsMode::Passthrough)) => {}
                (true, Some(ServerTlsMode::Simple | ServerTlsMode::Mutual)) => {
                    let t = s.tls.as_ref().expect("mode is set");
                    if t.credential_name.is_none()
                        && (t.server_certificate.is_none() || t.private_key.is_none())
                    {
                        v.field("tls", |v| {
                            v.error("give serverCertificate and privateKey (PEM files the gateway can read)")
                        });
                    }
                    if mode == Some(ServerTlsMode::Mutual) && t.ca_certificates.is_none() && t.credential_name.is_none() {
                        v.field("tls", |v| {
                            v.field("caCertificates", |v| {
                                v.error("MUTUAL needs the CA that signs client certificates")
                            })
                        });
                    }
                }
                (true, Some(other)) => v.field("tls", |v| {
                    v.field("mode", |v| {
                        v.error(format!(
                            "{other:?} is not served by the Isthmus ingress gateway yet; use SIMPLE, MUTUAL or PASSTHROUGH"
                        ))
                    })
                }),
                (true, None) => v.field("tls", |v| {
                    v.error("an HTTPS server needs tls with mode SIMPLE or MUTUAL")
                }),
                (false, Some(m)) if m != ServerTlsMode::AutoPassthrough => v.field("tls", |v| {
                    v.field("mode", |v| {
                        v.error(format!(
                            "{m:?} terminates TLS, which needs protocol HTTPS; for a plaintext server keep only httpsRedirect"
                        ))
                    })
                }),
                _ => {}
            }
            if let Some(t) = &s.tls {
                v.field("tls", |v| {
                    for (name, value) in [
                        ("minProtocolVersion", &t.min_protocol_version),
                        ("maxProtocolVersion", &t.max_protocol_version),
                    ] {
                        if let Some(version) = value
                            && !matches!(version.as_str(), "TLS_AUTO" | "TLSV1_2" | "TLSV1_3")
                        {
                            v.field(name, |v| {
                                v.error(format!(
                                    "{version:?}: TLS 1.2 and 1.3 are served (TLSV1_2, TLSV1_3, TLS_AUTO); TLS 1.0 and 1.1 are not"
                                ))
                            });
                        }
                    }
                    if t.min_protocol_version.as_deref() == Some("TLSV1_3")
                        && t.max_protocol_version.as_deref() == Some("TLSV1_2")
                    {
                        v.field("maxProtocolVersion", |v| {
                            v.error("is below minProtocolVersion")
                        });
                    }
                });
            }
            if s.hosts.is_empty() {
                v.field("hosts", |v| {
                    v.error("at least one host is required (use \"*\" for all)")
                });
            }
        });
    }
}
