//! `security.istio.io`: PeerAuthentication, AuthorizationPolicy, RequestAuthentication.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{PolicyTargetReference, WorkloadSelector, http_header_name, validate_port};
use crate::duration::Duration;
use crate::validate::Validator;

/// Istio's `PeerAuthentication` spec, unchanged: which mTLS mode a workload accepts.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    derive = "PartialEq",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads this applies to; the whole namespace (or mesh, in the root
    /// namespace) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Per-port overrides, keyed by the workload's port number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "port_keyed_map::<PeerMtls>")]
    pub port_level_mtls: BTreeMap<u32, PeerMtls>,
}

/// A map keyed by port number. schemars describes integer keys with
/// `patternProperties`, which CRD schemas forbid; the API server sees string keys.
fn port_keyed_map<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let value = generator.subschema_for::<T>();
    schemars::json_schema!({ "type": "object", "additionalProperties": value })
}

/// `mtls:` of a PeerAuthentication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    /// UNSET, DISABLE, PERMISSIVE or STRICT.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// Inbound mTLS modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh; PERMISSIVE at the top).
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext both accepted.
    Permissive,
    /// mTLS only: plaintext is refused.
    Strict,
}

impl PeerAuthenticationSpec {
    pub(crate) fn validate(&self, v: &mut Validator) {
        if !self.port_level_mtls.is_empty()
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
        {
            v.field("portLevelMtls", |v| {
                v.error("port-level settings need a workload selector (ports belong to workloads)")
            });
        }
        v.each_entry("portLevelMtls", &self.port_level_mtls, |v, port, _| {
            validate_port(v, *port)
        });
    }
}

/// Istio's `AuthorizationPolicy` spec, unchanged.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    derive = "PartialEq",
    shortname = "ap",
    category = "istio-io",
    category = "security-istio-io",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads this applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A resource this applies to (instead of a selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several resources this applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules, ORed. With ALLOW, no rules means deny everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// ALLOW (default), DENY, AUDIT or CUSTOM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AuthorizationAction>,
    /// External authorizer for CUSTOM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// What a matching AuthorizationPolicy does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Allow matching requests; with any ALLOW policy present, others are denied.
    #[default]
    Allow,
    /// Deny matching requests (evaluated before ALLOW).
    Deny,
    /// Record matching requests; no effect on the decision.
    Audit,
    /// Ask an external authorizer.
    Custom,
}

/// External authorizer reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Provider name from the mesh config.
    pub name: String,
}

/// One rule: from, to and when, ANDed; each list ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Extra conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `from:` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source.
    pub source: Source,
}

/// `to:` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation.
    pub operation: Operation,
}

/// Who sends the request. Fields are ANDed; values in a field are ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities (`cluster.local/ns/NS/sa/SA`), `*` wildcards at either end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Peer identities excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// JWT principals (`iss/sub`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// JWT principals excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Peer IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Peer IPs or CIDRs excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs (X-Forwarded-For) or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Original client IPs excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
    /// Service accounts (`NS/SA`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Service accounts excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
}

/// What the request does. Fields are ANDed; values in a field are ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Host header values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Host header values excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports (as strings, per Istio).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Destination ports excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP methods excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Paths, `*` wildcards at either end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A `when:` condition on a request attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute: `request.headers[NAME]`, `source.ip`, `source.principal`, …
    pub key: String,
    /// Accepted values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Rejected values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

impl AuthorizationPolicySpec {
    /// The action in force (ALLOW when unset).
    pub fn effective_action(&self) -> AuthorizationAction {
        self.action.unwrap_or_default()
    }

    pub(crate) fn validate(&self, v: &mut Validator) {
        if self.selector.is_some() && (self.target_ref.is_some() || !self.target_refs.is_empty()) {
            v.error("set only one of selector, targetRef and targetRefs");
        }
        if self.effective_action() == AuthorizationAction::Custom {
            v.field("action", |v| {
                v.error(
                    "CUSTOM is not supported: Isthmus has no external authorizer, so the policy could \
                     not be enforced; express it with ALLOW or DENY rules",
                )
            });
        }
        v.each("rules", &self.rules, |v, rule| {
            v.each("from", &rule.from, |v, f| {
                v.field("source", |v| f.source.validate(v));
            });
            v.each("to", &rule.to, |v, t| {
                v.field("operation", |v| t.operation.validate(v));
            });
            v.each("when", &rule.when, |v, c| c.validate(v));
        });
    }
}

impl Source {
    fn validate(&self, v: &mut Validator) {
        for (name, blocks) in [
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
        ] {
            v.each(name, blocks, |v, b| validate_cidr(v, b));
        }
        if (!self.service_accounts.is_empty() || !self.not_service_accounts.is_empty())
            && (!self.principals.is_empty() || !self.namespaces.is_empty())
        {
            v.field("serviceAccounts", |v| {
                v.error(
                    "cannot be set with principals or namespaces (Istio's rule); use one of them",
                )
            });
        }
        for (name, accounts) in [
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
        ] {
            v.each(name, accounts, |v, sa| {
                if ServiceAccountRef::parse(sa).is_none() {
                    v.error(format!(
                        "{sa:?} is not NAMESPACE/NAME (exact, no wildcards); use principals for patterns"
                    ));
                }
            });
        }
    }
}

impl Operation {
    fn validate(&self, v: &mut Validator) {
        for (name, ports) in [("ports", &self.ports), ("notPorts", &self.not_ports)] {
            v.each(name, ports, |v, p| match p.parse::<u32>() {
                Ok(n) => validate_port(v, n),
                Err(_) => v.error(format!("{p:?} is not a port number")),
            });
        }
        for (name, paths) in [("paths", &self.paths), ("notPaths", &self.not_paths)] {
            v.each(name, paths, |v, p| {
                if let Err(reason) = PathPattern::parse(p) {
                    v.error(reason);
                }
            });
        }
    }
}

impl Condition {
    fn validate(&self, v: &mut Validator) {
        match ConditionKey::parse(&self.key) {
            Ok(key) => {
                for (name, values) in [("values", &self.values), ("notValues", &self.not_values)] {
                    v.each(name, values, |v, value| match key {
                        ConditionKey::SourceIp
                        | ConditionKey::RemoteIp
                        | ConditionKey::DestinationIp => validate_cidr(v, value),
                        ConditionKey::DestinationPort if value.parse::<u16>().is_err() => {
                            v.error(format!("{value:?} is not a port number"));
                        }
                        _ => {}
                    });
                }
            }
            Err(reason) => v.field("key", |v| v.error(reason)),
        }
        if self.values.is_empty() && self.not_values.is_empty() {
            v.error("set values or notValues");
        }
    }
}

/// An attribute a `when:` condition tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    /// `request.headers[NAME]` (name lower-cased).
    RequestHeader(String),
    /// `source.ip`: the peer address.
    SourceIp,
    /// `remote.ip`: the original client address (X-Forwarded-For, trusted proxies).
    RemoteIp,
    /// `source.namespace`: from the peer identity.
    SourceNamespace,
    /// `source.principal`: the peer identity.
    SourcePrincipal,
    /// `destination.ip`: the address the connection was sent to.
    DestinationIp,
    /// `destination.port`: the workload port.
    DestinationPort,
    /// `connection.sni`: the server name of the mTLS connection.
    ConnectionSni,
    /// `request.auth.*`: from the request's verified JWT.
    RequestAuth(AuthAttribute),
}

/// What a `request.auth.*` condition reads from the verified JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthAttribute {
    /// `request.auth.principal`: `iss/sub`.
    Principal,
    /// `request.auth.audiences`: the `aud` claim.
    Audiences,
    /// `request.auth.presenter`: the `azp` claim.
    Presenter,
    /// `request.auth.claims[NAME]` (nested: `[a][b]`): the claim at that path.
    Claim(Vec<String>),
}

impl ConditionKey {
    /// Reads a key, or says why it is refused.
    pub fn parse(key: &str) -> Result<Self, String> {
        if let Some(rest) = key.strip_prefix("request.headers[") {
            let name = rest
                .strip_suffix(']')
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    format!("{key:?}: write request.headers[NAME] with a header name")
                })?;
            if http_header_name(name) {
                return Ok(Self::RequestHeader(name.to_ascii_lowercase()));
            }
            return Err(format!("{key:?}: {name:?} is not an HTTP header name"));
        }
        Ok(match key {
            "source.ip" => Self::SourceIp,
            "remote.ip" => Self::RemoteIp,
            "source.namespace" => Self::SourceNamespace,
            "source.principal" => Self::SourcePrincipal,
            "destination.ip" => Self::DestinationIp,
            "destination.port" => Self::DestinationPort,
            "connection.sni" => Self::ConnectionSni,
            "request.auth.principal" => Self::RequestAuth(AuthAttribute::Principal),
            "request.auth.audiences" => Self::RequestAuth(AuthAttribute::Audiences),
            "request.auth.presenter" => Self::RequestAuth(AuthAttribute::Presenter),
            k if k.starts_with("request.auth.claims[") && k.ends_with(']') => {
                let inner = &k["request.auth.claims[".len()..k.len() - 1];
                let path: Vec<String> = inner.split("][").map(str::to_owned).collect();
                if path.iter().any(|p| p.is_empty() || p.contains(['[', ']'])) {
                    return Err(format!(
                        "{k:?}: write request.auth.claims[NAME], nested request.auth.claims[a][b]"
                    ));
                }
                Self::RequestAuth(AuthAttribute::Claim(path))
            }
            k if k.starts_with("experimental.") => {
                return Err(format!(
                    "{k:?} is an Envoy filter's metadata, which Isthmus does not have; the condition could never be evaluated"
                ));
            }
            other => {
                return Err(format!(
                    "unknown attribute {other:?}; use request.headers[NAME], source.ip, remote.ip, source.namespace, \
                     source.principal, destination.ip, destination.port or connection.sni"
                ));
            }
        })
    }
}

/// `serviceAccounts:` entry `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountRef {
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub name: String,
}

impl ServiceAccountRef {
    /// Reads `NAMESPACE/NAME`; `None` for anything else (wildcards included).
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        (ok(ns) && ok(name)).then(|| Self {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// A `paths:` value: Istio's string match, or a path template with `{*}` (one
/// segment) and `{**}` (one or more segments, last only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// Exact, `prefix*`, `*suffix` or `*`.
    Glob(String),
    /// `/a/{*}/b/{**}`: one entry per segment.
    Template(Vec<TemplateSegment>),
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSegment {
    /// A literal segment.
    Literal(String),
    /// `{*}`: exactly one segment.
    One,
    /// `{**}`: one or more segments.
    Rest,
}

impl PathPattern {
    /// Reads a path value, or says why it is refused.
    pub fn parse(p: &str) -> Result<Self, String> {
        if !p.contains('{') && !p.contains('}') {
            return Ok(Self::Glob(p.to_owned()));
        }
        let body = p
            .strip_prefix('/')
            .ok_or_else(|| format!("{p:?}: a path template must start with '/'"))?;
        let parts: Vec<&str> = body.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "{*}" => TemplateSegment::One,
                "{**}" if i + 1 == parts.len() => TemplateSegment::Rest,
                "{**}" => {
                    return Err(format!(
                        "{p:?}: {{**}} must be the last segment of a path template"
                    ));
                }
                lit if lit.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "{p:?}: segment {lit:?} mixes a template operator with text; use whole segments {{*}} or {{**}}, \
                         and no '*' wildcard in a template"
                    ));
                }
                lit => TemplateSegment::Literal(lit.to_owned()),
            };
            segments.push(segment);
        }
        if segments
            .iter()
            .filter(|s| !matches!(s, TemplateSegment::Literal(_)))
            .count()
            > 5
        {
            return Err(format!("{p:?}: at most 5 template operators"));
        }
        Ok(Self::Template(segments))
    }
}

fn validate_cidr(v: &mut Validator, block: &str) {
    if let Err(e) = IpBlock::parse(block) {
        v.error(e);
    }
}

/// An IP address or CIDR block of `ipBlocks`, `remoteIpBlocks` and the address
/// conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    net: std::net::IpAddr,
    len: u8,
}

impl IpBlock {
    /// Reads `ADDRESS` or `ADDRESS/LENGTH`.
    pub fn parse(block: &str) -> Result<Self, String> {
        let bad = || format!("{block:?} is not an IP address or CIDR");
        let (ip, len) = match block.split_once('/') {
            Some((ip, len)) => (ip, Some(len.parse::<u8>().map_err(|_| bad())?)),
            None => (block, None),
        };
        let net: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Self { net, len })
    }

    /// Whether `ip` is in the block (an IPv4 address seen on an IPv6 socket counts
    /// as that IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(a) & mask == u32::from(n) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(n) & mask
            }
            _ => false,
        }
    }
}

/// Istio's `RequestAuthentication` spec, unchanged: which JWTs a workload accepts.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    namespaced,
    derive = "PartialEq",
    shortname = "ra",
    category = "istio-io",
    category = "security-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads this applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A resource this applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several resources this applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Accepted token issuers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted JWT issuer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where to fetch the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Inline JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers the token may come in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token may come in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies the token may come in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Header to forward the verified payload in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Keep the original token on the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_original_token: Option<bool>,
    /// Copy claims to headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// A header carrying a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Prefix before the token (e.g. `Bearer `).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A claim copied to a header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header name.
    pub header: String,
    /// Claim name.
    pub claim: String,
}

impl RequestAuthenticationSpec {
    pub(crate) fn validate(&self, v: &mut Validator) {
        v.each("jwtRules", &self.jwt_rules, |v, r| {
            v.required("issuer", &r.issuer);
            if r.jwks.is_some() && r.jwks_uri.is_some() {
                v.error("set only one of jwks and jwksUri");
            }
            if let Some(jwks) = &r.jwks
                && serde_json::from_str::<serde_json::Value>(jwks).is_err()
            {
                v.field("jwks", |v| v.error("is not a JSON Web Key Set document"));
            }
            if r.jwks.is_none()
                && r.jwks_uri.is_none()
                && !(r.issuer.starts_with("https://") || r.issuer.starts_with("http://"))
            {
                v.field("issuer", |v| {
                    v.error(format!(
                        "{:?} is not an http(s) URL, so its keys cannot be found by OpenID discovery; \
                         give jwks or jwksUri",
                        r.issuer
                    ))
                });
            }
        });
    }
}
