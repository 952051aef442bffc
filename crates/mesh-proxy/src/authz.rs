//! AuthorizationPolicy, evaluated by the receiving sidecar as Istio does: policies
//! of the workload's namespace (and of the root namespace, mesh-wide) whose selector
//! matches the workload apply; CUSTOM is not supported and is refused at compile time;
//! DENY is evaluated before ALLOW; with any ALLOW policy present a request must match
//! one (so an ALLOW policy without rules denies everything); AUDIT only logs.
//!
//! For TCP, rules are judged on connection attributes: an ALLOW rule that names HTTP
//! fields never matches, and a DENY rule ignores them (the stricter reading, as in
//! Istio).

use std::net::IpAddr;

use http::HeaderMap;
use mesh_api::security::{
    AuthorizationAction, AuthorizationPolicySpec, Condition, Operation, Rule, Source,
};

use crate::config::Node;

/// The namespace whose policies apply to the whole mesh.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// A policy that applies to this workload.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// `namespace/name`.
    pub name: String,
    action: AuthorizationAction,
    rules: Vec<Rule>,
}

/// What a request or connection looks like to authorization.
#[derive(Debug)]
pub struct Attributes<'a> {
    /// Peer principal without `spiffe://` (`TD/ns/NS/sa/SA`), empty if none.
    pub principal: &'a str,
    /// Peer address.
    pub source_ip: Option<IpAddr>,
    /// Destination (workload) port.
    pub port: u16,
    /// HTTP attributes; `None` for TCP.
    pub http: Option<HttpAttributes<'a>>,
}

/// The HTTP part of [`Attributes`].
#[derive(Debug)]
pub struct HttpAttributes<'a> {
    /// Method.
    pub method: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Host (authority without port).
    pub host: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the names of AUDIT policies that matched, if any.
    Allow {
        /// AUDIT policies that matched.
        audited: Vec<String>,
    },
    /// Denied, with the reason for the access log.
    Deny(String),
}

/// The policies that apply to a workload.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    policies: Vec<CompiledPolicy>,
}

impl Authorizer {
    /// The policies in force: (`namespace/name`, action).
    pub fn policies(&self) -> Vec<(String, String)> {
        self.policies
            .iter()
            .map(|p| (p.name.clone(), format!("{:?}", p.action).to_uppercase()))
            .collect()
    }

    /// Selects and checks the policies that apply to `node`.
    pub(crate) fn compile(
        policies: &[(String, String, &AuthorizationPolicySpec)],
        node: &Node,
    ) -> Result<Self, Vec<String>> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (namespace, name, spec) in policies {
            if namespace != &node.namespace && namespace != ROOT_NAMESPACE {
                continue;
            }
            let selected = spec.selector.as_ref().is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| node.labels.get(k) == Some(v))
            });
            if !selected {
                continue;
            }
            let action = spec.effective_action();
            if action == AuthorizationAction::Custom {
                errors.push(format!(
                    "AuthorizationPolicy {namespace}/{name}: action CUSTOM is not supported; use ALLOW or DENY"
                ));
                continue;
            }
            out.push(CompiledPolicy {
                name: format!("{namespace}/{name}"),
                action,
                rules: spec.rules.clone(),
            });
        }
        if errors.is_empty() {
            Ok(Self { policies: out })
        } else {
            Err(errors)
        }
    }

    /// Decides on one request or connection.
    pub fn decide(&self, attrs: &Attributes<'_>) -> Decision {
        let matching = |action| {
            self.policies
                .iter()
                .filter(move |p| p.action == action)
                .filter(move |p| p.rules.iter().any(|r| rule_matches(r, attrs, action)))
        };
        if let Some(p) = matching(AuthorizationAction::Deny).next() {
            return Decision::Deny(format!("rbac_access_denied_matched_policy[{}]", p.name));
        }
        let has_allow = self
            .policies
            .iter()
            .any(|p| p.action == AuthorizationAction::Allow);
        if has_allow && matching(AuthorizationAction::Allow).next().is_none() {
            return Decision::Deny("rbac_access_denied_matched_policy[none]".into());
        }
        Decision::Allow {
            audited: matching(AuthorizationAction::Audit)
                .map(|p| p.name.clone())
                .collect(),
        }
    }
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` for presence.
fn value_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// `values` empty = no constraint; else one must match. `not_values`: none may match.
fn field(values: &[String], not_values: &[String], value: &str) -> bool {
    (values.is_empty() || values.iter().any(|p| value_matches(p, value)))
        && !not_values.iter().any(|p| value_matches(p, value))
}

fn in_blocks(blocks: &[String], ip: Option<IpAddr>) -> bool {
    let Some(ip) = ip else { return false };
    blocks.iter().any(|b| {
        let (net, len) = b
            .split_once('/')
            .unwrap_or((b, if b.contains(':') { "128" } else { "32" }));
        match (net.parse::<IpAddr>(), len.parse::<u32>()) {
            (Ok(IpAddr::V4(n)), Ok(l)) if ip.is_ipv4() => {
                let IpAddr::V4(ip) = ip else { return false };
                let mask = if l == 0 {
                    0
                } else {
                    u32::MAX << (32 - l.min(32))
                };
                u32::from(ip) & mask == u32::from(n) & mask
            }
            (Ok(IpAddr::V6(n)), Ok(l)) if ip.is_ipv6() => {
                let IpAddr::V6(ip) = ip else { return false };
                let mask = if l == 0 {
                    0
                } else {
                    u128::MAX << (128 - l.min(128))
                };
                u128::from(ip) & mask == u128::from(n) & mask
            }
            _ => false,
        }
    })
}

fn source_namespace(principal: &str) -> &str {
    principal
        .split("/ns/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
}

fn source_matches(s: &Source, a: &Attributes<'_>) -> bool {
    // Request principals come from JWTs, which this proxy does not validate yet: a
    // rule that needs one cannot match.
    if !s.request_principals.is_empty() {
        return false;
    }
    let ns = source_namespace(a.principal);
    field(&s.principals, &s.not_principals, a.principal)
        && field(&s.namespaces, &s.not_namespaces, ns)
        && (s.ip_blocks.is_empty() || in_blocks(&s.ip_blocks, a.source_ip))
        && !in_blocks(&s.not_ip_blocks, a.source_ip)
        && (s.remote_ip_blocks.is_empty() || in_blocks(&s.remote_ip_blocks, a.source_ip))
        && !in_blocks(&s.not_remote_ip_blocks, a.source_ip)
}

fn has_http_fields(o: &Operation) -> bool {
    !(o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty()
        && o.hosts.is_empty()
        && o.not_hosts.is_empty())
}

fn operation_matches(o: &Operation, a: &Attributes<'_>, action: AuthorizationAction) -> bool {
    let port = a.port.to_string();
    if !field(&o.ports, &o.not_ports, &port) {
        return false;
    }
    match &a.http {
        Some(h) => {
            field(&o.methods, &o.not_methods, h.method)
                && field(&o.paths, &o.not_paths, h.path)
                && field(&o.hosts, &o.not_hosts, h.host)
        }
        None => action != AuthorizationAction::Allow || !has_http_fields(o),
    }
}

fn condition_matches(c: &Condition, a: &Attributes<'_>, action: AuthorizationAction) -> bool {
    let value: Option<String> = if let Some(name) = c
        .key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        match &a.http {
            Some(h) => Some(
                h.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            ),
            // A header condition on TCP: an ALLOW rule cannot match, a DENY rule
            // ignores it.
            None => return action != AuthorizationAction::Allow,
        }
    } else {
        match c.key.as_str() {
            "source.principal" => Some(a.principal.to_owned()),
            "source.namespace" => Some(source_namespace(a.principal).to_owned()),
            "destination.port" => Some(a.port.to_string()),
            "source.ip" | "remote.ip" => {
                return (c.values.is_empty() || in_blocks(&c.values, a.source_ip))
                    && !in_blocks(&c.not_values, a.source_ip);
            }
            _ => None,
        }
    };
    match value {
        Some(v) => field(&c.values, &c.not_values, &v),
        // Attributes this proxy does not know (JWT claims, …) never match.
        None => false,
    }
}

fn rule_matches(r: &Rule, a: &Attributes<'_>, action: AuthorizationAction) -> bool {
    (r.from.is_empty() || r.from.iter().any(|f| source_matches(&f.source, a)))
        && (r.to.is_empty()
            || r.to
                .iter()
                .any(|t| operation_matches(&t.operation, a, action)))
        && r.when.iter().all(|c| condition_matches(c, a, action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_string_matching() {
        assert!(value_matches("/reviews/*", "/reviews/1"));
        assert!(value_matches("*.example", "api.example"));
        assert!(value_matches("*", "x"));
        assert!(!value_matches("*", ""));
        assert!(!value_matches("GET", "POST"));
    }

    #[test]
    fn cidr_blocks() {
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(in_blocks(&["10.1.0.0/16".into()], ip("10.1.200.3")));
        assert!(!in_blocks(&["10.1.0.0/16".into()], ip("10.2.0.1")));
        assert!(in_blocks(&["127.0.0.1".into()], ip("127.0.0.1")));
    }
}
