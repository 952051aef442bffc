//! AuthorizationPolicy, evaluated by the receiving sidecar as Istio does: policies
//! of the workload's namespace (and of the root namespace, mesh-wide) whose selector
//! matches the workload apply; DENY is evaluated before ALLOW; with any ALLOW policy
//! present a request must match one (so an ALLOW policy without rules denies
//! everything); AUDIT only logs.
//!
//! Fail closed. Policies are compiled once per config push; one that cannot be
//! compiled (validation refuses such objects earlier, so this is a second line)
//! denies everything when it is a DENY policy and allows nothing when it is an ALLOW
//! policy. An attribute that cannot be determined for a request (a `remote.ip`
//! behind a malformed `X-Forwarded-For`, say) makes a DENY rule match and an ALLOW
//! rule miss.
//!
//! For TCP, rules are judged on connection attributes: an ALLOW rule that names HTTP
//! fields never matches, and a DENY rule ignores them (the stricter reading, as in
//! Istio).

mod matcher;

use std::net::IpAddr;

use http::HeaderMap;
use mesh_api::security::{
    AuthorizationAction, AuthorizationPolicySpec, Condition, ConditionKey, Operation, Rule, Source,
};

use crate::config::Node;
use matcher::{Field, IpBlock, PathMatcher, ServiceAccountMatcher, StringMatcher};

/// The namespace whose policies apply to the whole mesh.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// What a request or connection looks like to authorization.
#[derive(Debug)]
pub struct Attributes<'a> {
    /// Peer principal without `spiffe://` (`TD/ns/NS/sa/SA`), with a trust-domain
    /// alias already mapped to the local trust domain; empty if none.
    pub principal: &'a str,
    /// The same identity spelled in each trust-domain alias, so that a policy written
    /// for an earlier trust domain name still matches.
    pub principal_aliases: &'a [String],
    /// Peer address.
    pub source_ip: Option<IpAddr>,
    /// The original client address (`remote.ip`, `remoteIpBlocks`): the peer, or
    /// the address the trusted proxies recorded in `X-Forwarded-For`; `None` when it
    /// cannot be determined.
    pub remote_ip: Option<IpAddr>,
    /// The address the connection was sent to; `None` when unknown.
    pub destination_ip: Option<IpAddr>,
    /// Destination (workload) port.
    pub port: u16,
    /// Server name of the mTLS connection; empty for plaintext.
    pub sni: &'a str,
    /// HTTP attributes; `None` for TCP.
    pub http: Option<HttpAttributes<'a>>,
}

/// The HTTP part of [`Attributes`].
#[derive(Debug)]
pub struct HttpAttributes<'a> {
    /// Method.
    pub method: &'a str,
    /// Normalized path without query.
    pub path: &'a str,
    /// Host as the request gave it (authority, possibly with a port).
    pub host: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// `iss/sub` of the request's verified JWT (RequestAuthentication), if any.
    pub request_principal: Option<&'a str>,
    /// The claims of that JWT (`request.auth.*` conditions).
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// Whether a policy of `namespace` with `selector` applies to `node`: the workload's
/// namespace or the root namespace, and every label the selector names.
pub(crate) fn selects(
    namespace: &str,
    selector: Option<&std::collections::BTreeMap<String, String>>,
    node: &Node,
) -> bool {
    (namespace == node.namespace || namespace == ROOT_NAMESPACE)
        && selector.is_none_or(|labels| labels.iter().all(|(k, v)| node.labels.get(k) == Some(v)))
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

/// A policy that applies to this workload.
#[derive(Debug, Clone)]
struct CompiledPolicy {
    /// `namespace/name`.
    name: String,
    action: AuthorizationAction,
    body: Result<Vec<CompiledRule>, String>,
}

/// The policies that apply to a workload.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    policies: Vec<CompiledPolicy>,
}

/// One policy as `/config_dump` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicySummary {
    /// `namespace/name`.
    pub name: String,
    /// ALLOW, DENY or AUDIT.
    pub action: String,
    /// Why the policy could not be compiled and what it does instead, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_closed: Option<String>,
}

impl Authorizer {
    /// The policies in force.
    pub fn policies(&self) -> Vec<PolicySummary> {
        self.policies
            .iter()
            .map(|p| PolicySummary {
                name: p.name.clone(),
                action: format!("{:?}", p.action).to_uppercase(),
                fail_closed: p.body.as_ref().err().map(|e| {
                    let effect = match p.action {
                        AuthorizationAction::Allow => "allows nothing",
                        _ => "matches every request",
                    };
                    format!("{e}; the policy {effect}")
                }),
            })
            .collect()
    }

    /// Selects and compiles the policies that apply to `node`.
    pub(crate) fn compile(
        policies: &[(String, String, &AuthorizationPolicySpec)],
        node: &Node,
    ) -> Self {
        let mut out = Vec::new();
        for (namespace, name, spec) in policies {
            if !selects(
                namespace,
                spec.selector.as_ref().map(|s| &s.match_labels),
                node,
            ) {
                continue;
            }
            let name = format!("{namespace}/{name}");
            // CUSTOM cannot be evaluated here: it is kept as a broken DENY, which
            // denies every request it would have been asked about.
            let action = match spec.effective_action() {
                AuthorizationAction::Custom => AuthorizationAction::Deny,
                a => a,
            };
            let body = compile_policy(spec).map_err(|e| format!("AuthorizationPolicy {name}: {e}"));
            if let Err(e) = &body {
                tracing::warn!(policy = %name, error = %e, "policy cannot be enforced as written; failing closed");
            }
            out.push(CompiledPolicy { name, action, body });
        }
        Self { policies: out }
    }

    /// Decides on one request or connection.
    pub fn decide(&self, attrs: &Attributes<'_>) -> Decision {
        let of = |action| self.policies.iter().filter(move |p| p.action == action);
        for p in of(AuthorizationAction::Deny) {
            match p.matches(attrs) {
                Ok(false) => {}
                Ok(true) => {
                    return Decision::Deny(format!(
                        "rbac_access_denied_matched_policy[{}]",
                        p.name
                    ));
                }
                Err(e) => {
                    return Decision::Deny(format!(
                        "rbac_access_denied_matched_policy[{}]: cannot be evaluated ({e})",
                        p.name
                    ));
                }
            }
        }
        let mut allows = of(AuthorizationAction::Allow).peekable();
        if allows.peek().is_some() && !allows.any(|p| p.matches(attrs) == Ok(true)) {
            return Decision::Deny("rbac_access_denied_matched_policy[none]".into());
        }
        Decision::Allow {
            audited: of(AuthorizationAction::Audit)
                .filter(|p| p.matches(attrs) != Ok(false))
                .map(|p| p.name.clone())
                .collect(),
        }
    }
}

/// An attribute a rule needs that the request or connection does not carry: the
/// rule cannot be evaluated, and the decision fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    /// `ipBlocks` or `source.ip` without the peer's address.
    #[error("source address unknown")]
    SourceAddress,
    /// `remoteIpBlocks` or `remote.ip` without the original client's address.
    #[error("original client address unknown")]
    ClientAddress,
    /// `destination.ip` without the original destination.
    #[error("destination address unknown")]
    DestinationAddress,
    /// `requestPrincipals` on a connection that is not HTTP (no JWT to verify).
    #[error("no request principal outside HTTP")]
    RequestPrincipal,
}

impl CompiledPolicy {
    /// `Err` when an attribute a rule needs cannot be determined.
    fn matches(&self, a: &Attributes<'_>) -> Result<bool, Unknown> {
        let rules = match &self.body {
            Ok(rules) => rules,
            // Fail closed: a broken DENY (or AUDIT) matches, a broken ALLOW does not.
            Err(_) if self.action == AuthorizationAction::Allow => return Ok(false),
            Err(_) => return Ok(true),
        };
        // A policy without rules matches nothing.
        if rules.is_empty() {
            return Ok(false);
        }
        any_of(rules.iter().map(|r| r.matches(a, self.action)))
    }
}

fn compile_policy(spec: &AuthorizationPolicySpec) -> Result<Vec<CompiledRule>, String> {
    if spec.effective_action() == AuthorizationAction::Custom {
        return Err("action CUSTOM is not supported (no external authorizer)".into());
    }
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        return Err("targetRef is not supported; select workloads with `selector`".into());
    }
    each(&spec.rules, "spec.rules", CompiledRule::compile)
}

/// Compiles each item of a list, an error naming the item's path (`field[i].…`).
fn each<T, U>(
    items: &[T],
    field: &str,
    compile: impl Fn(&T) -> Result<U, String>,
) -> Result<Vec<U>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| compile(item).map_err(|e| format!("{field}[{i}].{e}")))
        .collect()
}

#[derive(Debug, Clone)]
struct CompiledRule {
    from: Vec<SourceMatch>,
    to: Vec<OperationMatch>,
    when: Vec<ConditionMatch>,
    /// Names an HTTP-only field (an ALLOW rule then never matches a TCP connection).
    http_only: bool,
}

impl CompiledRule {
    fn compile(r: &Rule) -> Result<Self, String> {
        let from = each(&r.from, "from", |f| {
            SourceMatch::compile(&f.source).map_err(|e| format!("source.{e}"))
        })?;
        let to: Vec<OperationMatch> = each(&r.to, "to", |t| {
            OperationMatch::compile(&t.operation).map_err(|e| format!("operation.{e}"))
        })?;
        let when: Vec<ConditionMatch> = each(&r.when, "when", ConditionMatch::compile)?;
        let http_only = to.iter().any(OperationMatch::has_http_fields)
            || when.iter().any(|c| matches!(c, ConditionMatch::Header(..)));
        Ok(Self {
            from,
            to,
            when,
            http_only,
        })
    }

    fn matches(&self, a: &Attributes<'_>, action: AuthorizationAction) -> Result<bool, Unknown> {
        if a.http.is_none() && self.http_only && action == AuthorizationAction::Allow {
            return Ok(false);
        }
        let from = any_of(self.from.iter().map(|s| s.matches(a)));
        let to = any_of(self.to.iter().map(|o| Ok(o.matches(a))));
        all_of(
            [from, to]
                .into_iter()
                .chain(self.when.iter().map(|c| c.matches(a))),
        )
    }
}

/// One of the checks holds (true when there are none: an empty list sets no
/// condition).
fn any_of(checks: impl ExactSizeIterator<Item = Result<bool, Unknown>>) -> Result<bool, Unknown> {
    if checks.len() == 0 {
        return Ok(true);
    }
    settle(checks, true)
}

/// Every check holds.
fn all_of(checks: impl Iterator<Item = Result<bool, Unknown>>) -> Result<bool, Unknown> {
    settle(checks, false)
}

/// The first check that comes out `decisive` decides; otherwise an undeterminable
/// check leaves the result undeterminable, and with none it is `!decisive`.
fn settle(
    checks: impl Iterator<Item = Result<bool, Unknown>>,
    decisive: bool,
) -> Result<bool, Unknown> {
    let mut unknown = None;
    for c in checks {
        match c {
            Ok(v) if v == decisive => return Ok(decisive),
            Ok(_) => {}
            Err(e) => unknown = Some(e),
        }
    }
    unknown.map_or(Ok(!decisive), Err)
}

fn strings(values: &[String], not_values: &[String]) -> Result<Field<StringMatcher>, String> {
    Field::compile(values, not_values, |v| Ok(StringMatcher::new(v)))
}

fn blocks(values: &[String], not_values: &[String]) -> Result<Field<IpBlock>, String> {
    Field::compile(values, not_values, IpBlock::parse)
}

fn ports(values: &[String], not_values: &[String]) -> Result<Field<u16>, String> {
    Field::compile(values, not_values, |p| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number"))
    })
}

/// A field error with its name: `name: reason`.
fn named<T>(name: &str, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("{name}: {e}"))
}

fn principal_matches(m: &StringMatcher, a: &Attributes<'_>) -> bool {
    m.matches(a.principal.as_bytes()) || a.principal_aliases.iter().any(|p| m.matches(p.as_bytes()))
}

fn source_namespace(principal: &str) -> &str {
    principal
        .split("/ns/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
}

fn ip_field(f: &Field<IpBlock>, ip: Option<IpAddr>, what: Unknown) -> Result<bool, Unknown> {
    if f.is_empty() {
        return Ok(true);
    }
    let ip = ip.ok_or(what)?;
    Ok(f.check(|b| b.contains(ip)))
}

#[derive(Debug, Clone)]
struct SourceMatch {
    principals: Field<StringMatcher>,
    request_principals: Field<StringMatcher>,
    namespaces: Field<StringMatcher>,
    service_accounts: Field<ServiceAccountMatcher>,
    ip_blocks: Field<IpBlock>,
    remote_ip_blocks: Field<IpBlock>,
}

impl SourceMatch {
    fn compile(s: &Source) -> Result<Self, String> {
        Ok(Self {
            principals: named("principals", strings(&s.principals, &s.not_principals))?,
            request_principals: named(
                "requestPrincipals",
                strings(&s.request_principals, &s.not_request_principals),
            )?,
            namespaces: named("namespaces", strings(&s.namespaces, &s.not_namespaces))?,
            service_accounts: named(
                "serviceAccounts",
                Field::compile(
                    &s.service_accounts,
                    &s.not_service_accounts,
                    ServiceAccountMatcher::parse,
                ),
            )?,
            ip_blocks: named("ipBlocks", blocks(&s.ip_blocks, &s.not_ip_blocks))?,
            remote_ip_blocks: named(
                "remoteIpBlocks",
                blocks(&s.remote_ip_blocks, &s.not_remote_ip_blocks),
            )?,
        })
    }

    fn matches(&self, a: &Attributes<'_>) -> Result<bool, Unknown> {
        let identity = self.principals.check(|m| principal_matches(m, a))
            && self
                .namespaces
                .check(|m| m.matches(source_namespace(a.principal).as_bytes()))
            && self.service_accounts.check(|m| m.matches(a.principal));
        if !identity {
            return Ok(false);
        }
        // The `iss/sub` of a verified JWT (RequestAuthentication); none without one.
        if !self.request_principals.is_empty() {
            let http = a.http.as_ref().ok_or(Unknown::RequestPrincipal)?;
            let matched = self.request_principals.check(|m| {
                http.request_principal
                    .is_some_and(|p| m.matches(p.as_bytes()))
            });
            if !matched {
                return Ok(false);
            }
        }
        Ok(
            ip_field(&self.ip_blocks, a.source_ip, Unknown::SourceAddress)?
                && ip_field(&self.remote_ip_blocks, a.remote_ip, Unknown::ClientAddress)?,
        )
    }
}

#[derive(Debug, Clone)]
struct OperationMatch {
    hosts: Field<StringMatcher>,
    ports: Field<u16>,
    methods: Field<StringMatcher>,
    paths: Field<PathMatcher>,
}

impl OperationMatch {
    fn compile(o: &Operation) -> Result<Self, String> {
        Ok(Self {
            hosts: named(
                "hosts",
                Field::compile(&o.hosts, &o.not_hosts, |h| {
                    Ok(StringMatcher::with_case(h, true))
                }),
            )?,
            ports: named("ports", ports(&o.ports, &o.not_ports))?,
            methods: named("methods", strings(&o.methods, &o.not_methods))?,
            paths: named(
                "paths",
                Field::compile(&o.paths, &o.not_paths, PathMatcher::new),
            )?,
        })
    }

    fn has_http_fields(&self) -> bool {
        !(self.hosts.is_empty() && self.methods.is_empty() && self.paths.is_empty())
    }

    fn matches(&self, a: &Attributes<'_>) -> bool {
        if !self.ports.check(|p| *p == a.port) {
            return false;
        }
        // On TCP the HTTP fields are ignored here: ALLOW rules that name them were
        // already ruled out.
        let Some(h) = &a.http else { return true };
        let bare = crate::model::strip_port(h.host);
        self.methods.check(|m| m.matches(h.method.as_bytes()))
            && self.paths.check(|p| p.matches(h.path))
            && self.hosts.check(|m| {
                m.matches_ignore_case(h.host.as_bytes()) || m.matches_ignore_case(bare.as_bytes())
            })
    }
}

#[derive(Debug, Clone)]
enum ConditionMatch {
    Header(http::HeaderName, Field<StringMatcher>),
    SourceIp(Field<IpBlock>),
    RemoteIp(Field<IpBlock>),
    DestinationIp(Field<IpBlock>),
    Namespace(Field<StringMatcher>),
    Principal(Field<StringMatcher>),
    DestinationPort(Field<u16>),
    Sni(Field<StringMatcher>),
    RequestAuth(mesh_api::security::AuthAttribute, Field<StringMatcher>),
}

/// The values a `request.auth.*` condition sees: none without a verified JWT; a
/// string claim, or each string of a list claim.
fn auth_values<'a>(
    attr: &mesh_api::security::AuthAttribute,
    h: &HttpAttributes<'a>,
) -> Vec<&'a str> {
    use mesh_api::security::AuthAttribute;
    let Some(claims) = h.claims else {
        return Vec::new();
    };
    let claim = match attr {
        AuthAttribute::Principal => return h.request_principal.into_iter().collect(),
        AuthAttribute::Audiences => claims.get("aud"),
        AuthAttribute::Presenter => claims.get("azp"),
        AuthAttribute::Claim(path) => path
            .split_first()
            .and_then(|(first, rest)| rest.iter().try_fold(claims.get(first)?, |v, k| v.get(k))),
    };
    match claim {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|i| i.as_str()).collect(),
        _ => Vec::new(),
    }
}

impl ConditionMatch {
    fn compile(c: &Condition) -> Result<Self, String> {
        let key = ConditionKey::parse(&c.key).map_err(|e| format!("key: {e}"))?;
        let (v, n) = (&c.values[..], &c.not_values[..]);
        Ok(match key {
            ConditionKey::RequestHeader(name) => Self::Header(
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("key: {e}"))?,
                strings(v, n)?,
            ),
            ConditionKey::SourceIp => Self::SourceIp(named("values", blocks(v, n))?),
            ConditionKey::RemoteIp => Self::RemoteIp(named("values", blocks(v, n))?),
            ConditionKey::DestinationIp => Self::DestinationIp(named("values", blocks(v, n))?),
            ConditionKey::SourceNamespace => Self::Namespace(strings(v, n)?),
            ConditionKey::SourcePrincipal => Self::Principal(strings(v, n)?),
            ConditionKey::DestinationPort => Self::DestinationPort(named("values", ports(v, n))?),
            ConditionKey::ConnectionSni => Self::Sni(strings(v, n)?),
            ConditionKey::RequestAuth(attr) => Self::RequestAuth(attr, strings(v, n)?),
        })
    }

    fn matches(&self, a: &Attributes<'_>) -> Result<bool, Unknown> {
        Ok(match self {
            Self::Header(name, f) => match &a.http {
                Some(h) => {
                    // Several values of one header are matched as Envoy joins them;
                    // one value (the usual case) is matched where it is.
                    let mut values = h.headers.get_all(name).iter();
                    match (values.next(), values.next()) {
                        (None, _) => f.check(|m| m.matches(b"")),
                        (Some(v), None) => f.check(|m| m.matches(v.as_bytes())),
                        _ => {
                            let joined = h
                                .headers
                                .get_all(name)
                                .iter()
                                .map(http::HeaderValue::as_bytes)
                                .collect::<Vec<_>>()
                                .join(&b","[..]);
                            f.check(|m| m.matches(&joined))
                        }
                    }
                }
                // Only a DENY (or AUDIT) rule gets here on TCP: the condition is ignored.
                None => true,
            },
            Self::SourceIp(f) => ip_field(f, a.source_ip, Unknown::SourceAddress)?,
            Self::RemoteIp(f) => ip_field(f, a.remote_ip, Unknown::ClientAddress)?,
            Self::DestinationIp(f) => ip_field(f, a.destination_ip, Unknown::DestinationAddress)?,
            Self::Namespace(f) => f.check(|m| m.matches(source_namespace(a.principal).as_bytes())),
            Self::Principal(f) => f.check(|m| principal_matches(m, a)),
            Self::DestinationPort(f) => f.check(|p| *p == a.port),
            Self::Sni(f) => f.check(|m| m.matches(a.sni.as_bytes())),
            Self::RequestAuth(attr, f) => match &a.http {
                Some(h) => {
                    let values = auth_values(attr, h);
                    f.check(|m| values.iter().any(|v| m.matches(v.as_bytes())))
                }
                // A TCP connection has no token: unknown, so a DENY matches and an
                // ALLOW misses.
                None => return Err(Unknown::RequestPrincipal),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            name: "reviews-v1".into(),
            namespace: "shop".into(),
            labels: [("app".to_owned(), "reviews".to_owned())].into(),
            ..Default::default()
        }
    }

    /// Policies from YAML specs (`action` and `rules` as users write them), not
    /// validated: the proxy's own handling is under test.
    fn authorizer(specs: &[&str]) -> Authorizer {
        let specs: Vec<AuthorizationPolicySpec> = specs
            .iter()
            .map(|s| serde_saphyr::from_str(s).unwrap())
            .collect();
        let named: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| ("shop".to_owned(), format!("p{i}"), s))
            .collect();
        Authorizer::compile(&named, &node())
    }

    struct Req {
        principal: &'static str,
        aliases: Vec<String>,
        path: &'static str,
        host: &'static str,
        headers: HeaderMap,
        remote: Option<IpAddr>,
        tcp: bool,
        request_principal: Option<&'static str>,
        claims: Option<serde_json::Map<String, serde_json::Value>>,
    }

    fn req(principal: &'static str) -> Req {
        Req {
            principal,
            aliases: Vec::new(),
            path: "/reviews/1",
            host: "reviews.shop.svc.cluster.local:9080",
            headers: HeaderMap::new(),
            remote: Some("10.0.0.9".parse().unwrap()),
            tcp: false,
            request_principal: None,
            claims: None,
        }
    }

    const PRODUCTPAGE: &str = "mesh.example/ns/shop/sa/productpage";

    impl Req {
        fn decide(&self, a: &Authorizer) -> bool {
            matches!(self.decision(a), Decision::Allow { .. })
        }

        fn decision(&self, a: &Authorizer) -> Decision {
            let attrs = Attributes {
                principal: self.principal,
                principal_aliases: &self.aliases,
                source_ip: Some("10.0.0.7".parse().unwrap()),
                remote_ip: self.remote,
                destination_ip: Some("10.0.1.5".parse().unwrap()),
                port: 9080,
                sni: "outbound_.9080_._.reviews.shop.svc.cluster.local",
                http: (!self.tcp).then_some(HttpAttributes {
                    method: "GET",
                    path: self.path,
                    host: self.host,
                    headers: &self.headers,
                    request_principal: self.request_principal,
                    claims: self.claims.as_ref(),
                }),
            };
            a.decide(&attrs)
        }
    }

    #[test]
    fn service_accounts_allow_only_the_named_account() {
        let a = authorizer(&["rules: [{from: [{source: {serviceAccounts: [sample/nobody]}}]}]"]);
        assert!(
            !req(PRODUCTPAGE).decide(&a),
            "productpage is not sample/nobody"
        );
        assert!(req("mesh.example/ns/sample/sa/nobody").decide(&a));
        assert!(!req("").decide(&a), "plaintext has no service account");
        let a = authorizer(&[
            "{action: DENY, rules: [{from: [{source: {notServiceAccounts: [shop/productpage]}}]}]}",
        ]);
        assert!(req(PRODUCTPAGE).decide(&a));
        assert!(!req("mesh.example/ns/shop/sa/mallory").decide(&a));
    }

    #[test]
    fn wrong_principal_is_denied() {
        let a = authorizer(&[
            "rules: [{from: [{source: {principals: [mesh.example/ns/shop/sa/productpage]}}]}]",
        ]);
        assert!(req(PRODUCTPAGE).decide(&a));
        assert!(!req("mesh.example/ns/shop/sa/mallory").decide(&a));
        assert!(
            !req("other.example/ns/shop/sa/productpage").decide(&a),
            "another trust domain"
        );
        let a = authorizer(&[
            "rules: [{from: [{source: {namespaces: [shop], notPrincipals: ['*/sa/mallory']}}]}]",
        ]);
        assert!(req(PRODUCTPAGE).decide(&a));
        assert!(!req("mesh.example/ns/shop/sa/mallory").decide(&a));
        assert!(!req("mesh.example/ns/other/sa/productpage").decide(&a));
    }

    #[test]
    fn negated_source_fields() {
        let a =
            authorizer(&["{action: DENY, rules: [{from: [{source: {notNamespaces: [shop]}}]}]}"]);
        assert!(req(PRODUCTPAGE).decide(&a));
        assert!(!req("mesh.example/ns/other/sa/x").decide(&a));
        let a = authorizer(&[
            "rules: [{from: [{source: {ipBlocks: [10.0.0.0/24], notIpBlocks: [10.0.0.7]}}]}]",
        ]);
        assert!(
            !req(PRODUCTPAGE).decide(&a),
            "the peer 10.0.0.7 is excluded"
        );
        let a = authorizer(&["rules: [{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]"]);
        assert!(req(PRODUCTPAGE).decide(&a));
        let a = authorizer(&["rules: [{from: [{source: {ipBlocks: [192.0.2.0/24]}}]}]"]);
        assert!(!req(PRODUCTPAGE).decide(&a));
    }

    #[test]
    fn negated_operation_fields() {
        for (op, allowed) in [
            ("{notHosts: ['reviews.*']}", false),
            ("{notHosts: ['ratings.*']}", true),
            ("{notPorts: ['9080']}", false),
            ("{notPorts: ['9081']}", true),
            ("{notMethods: [GET]}", false),
            ("{notMethods: [POST]}", true),
            ("{notPaths: ['/reviews/*']}", false),
            ("{notPaths: ['/admin']}", true),
        ] {
            let a = authorizer(&[&format!("rules: [{{to: [{{operation: {op}}}]}}]")]);
            assert_eq!(req(PRODUCTPAGE).decide(&a), allowed, "{op}");
        }
    }

    #[test]
    fn trust_domain_aliases_apply_to_principals() {
        let a = authorizer(&[
            "rules: [{from: [{source: {principals: [old.example/ns/shop/sa/productpage]}}]}]",
        ]);
        assert!(
            !req(PRODUCTPAGE).decide(&a),
            "no alias: the old name is another domain"
        );
        let mut r = req(PRODUCTPAGE);
        r.aliases = vec!["old.example/ns/shop/sa/productpage".into()];
        assert!(r.decide(&a), "old.example is an alias of the local domain");
    }

    #[test]
    fn paths_hosts_and_templates() {
        let a = authorizer(&[
            "{action: DENY, rules: [{to: [{operation: {paths: ['/admin*', '/api/{*}/secret']}}]}]}",
        ]);
        let mut r = req(PRODUCTPAGE);
        assert!(r.decide(&a));
        r.path = "/admin/users";
        assert!(!r.decide(&a));
        r.path = "/api/7/secret";
        assert!(!r.decide(&a));
        r.path = "/api/7/8/secret";
        assert!(r.decide(&a));
        let a = authorizer(&[
            "rules: [{to: [{operation: {hosts: ['REVIEWS.shop.svc.cluster.local']}}]}]",
        ]);
        assert!(
            req(PRODUCTPAGE).decide(&a),
            "hosts: case-insensitive, port ignored"
        );
        let mut r = req(PRODUCTPAGE);
        r.host = "ratings:9080";
        assert!(!r.decide(&a));
    }

    #[test]
    fn connection_conditions_fire() {
        for when in [
            "{key: destination.ip, values: [10.0.1.0/24]}",
            "{key: destination.port, values: ['9080']}",
            "{key: connection.sni, values: ['*.reviews.shop.svc.cluster.local']}",
            "{key: source.ip, values: [10.0.0.7]}",
            "{key: remote.ip, values: [10.0.0.0/24]}",
            "{key: source.namespace, values: [shop]}",
            "{key: source.principal, values: ['*/sa/productpage']}",
            "{key: 'request.headers[x-user]', values: [mallory]}",
        ] {
            let a = authorizer(&[&format!("{{action: DENY, rules: [{{when: [{when}]}}]}}")]);
            let mut r = req(PRODUCTPAGE);
            r.headers.insert("x-user", "mallory".parse().unwrap());
            assert!(!r.decide(&a), "DENY on {when} must fire");
        }
        let a = authorizer(&[
            "{action: DENY, rules: [{when: [{key: destination.port, notValues: ['9080']}]}]}",
        ]);
        assert!(req(PRODUCTPAGE).decide(&a));
    }

    #[test]
    fn header_values_that_are_not_text_still_match() {
        let a = authorizer(&[
            "{action: DENY, rules: [{when: [{key: 'request.headers[x-user]', values: ['mal*']}]}]}",
        ]);
        let mut r = req(PRODUCTPAGE);
        r.headers.insert(
            "x-user",
            http::HeaderValue::from_bytes(b"mal\xfflory").unwrap(),
        );
        assert!(
            !r.decide(&a),
            "a non-UTF-8 value is compared as bytes, not as empty"
        );
        let mut r = req(PRODUCTPAGE);
        r.headers.append("x-user", "alice".parse().unwrap());
        r.headers.append("x-user", "mallory".parse().unwrap());
        let a = authorizer(&[
            "{action: DENY, rules: [{when: [{key: 'request.headers[x-user]', values: ['alice,mal*']}]}]}",
        ]);
        assert!(!r.decide(&a), "several values are matched joined with ','");
    }

    /// `request.auth.*` conditions read the verified token: its principal, `aud`,
    /// `azp` and any claim, a list claim matching on any of its items; without a
    /// token an ALLOW misses and a `notValues` DENY matches.
    #[test]
    fn request_auth_conditions_read_the_verified_claims() {
        let allow = authorizer(&[
            "rules: [{when: [{key: 'request.auth.claims[groups]', values: [admin]}, \
              {key: 'request.auth.audiences', values: [shop]}, \
              {key: 'request.auth.presenter', values: ['web-*']}, \
              {key: 'request.auth.principal', values: ['https://issuer.example/*']}, \
              {key: 'request.auth.claims[org][team]', values: [payments]}]}]",
        ]);
        let claims = |groups: &[&str]| {
            serde_json::json!({"aud": ["shop", "other"], "azp": "web-app", "groups": groups,
                "org": {"team": "payments"}})
            .as_object()
            .cloned()
        };
        let mut r = req(PRODUCTPAGE);
        assert!(!r.decide(&allow), "no token");
        r.request_principal = Some("https://issuer.example/alice");
        r.claims = claims(&["staff", "admin"]);
        assert!(r.decide(&allow));
        r.claims = claims(&["staff"]);
        assert!(!r.decide(&allow), "not in the admin group");
        let deny = authorizer(&[
            "{action: DENY, rules: [{when: [{key: 'request.auth.claims[groups]', notValues: [staff]}]}]}",
        ]);
        let mut r = req(PRODUCTPAGE);
        assert!(!r.decide(&deny), "no token: not in staff, denied");
        r.request_principal = Some("https://issuer.example/alice");
        r.claims = claims(&["staff"]);
        assert!(r.decide(&deny));
        r.tcp = true;
        assert!(
            !r.decide(&deny),
            "TCP: the claim is unknown, the DENY matches"
        );
    }

    #[test]
    fn request_principals_need_a_verified_token() {
        let alice = "https://issuer.example/alice";
        let allow = authorizer(&[&format!(
            "rules: [{{from: [{{source: {{requestPrincipals: ['{alice}']}}}}]}}]"
        )]);
        let mut r = req(PRODUCTPAGE);
        assert!(!r.decide(&allow), "no token, no request principal");
        r.request_principal = Some(alice);
        assert!(r.decide(&allow));
        r.request_principal = Some("https://issuer.example/bob");
        assert!(!r.decide(&allow));
        // Istio's pattern to require a token: deny requests without a principal.
        let deny = authorizer(&[
            "{action: DENY, rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]}",
        ]);
        let mut r = req(PRODUCTPAGE);
        assert!(!r.decide(&deny));
        r.request_principal = Some(alice);
        assert!(r.decide(&deny));
        // A TCP connection has no request principal to check: ALLOW misses.
        let mut r = req(PRODUCTPAGE);
        r.tcp = true;
        assert!(!r.decide(&allow));
    }

    #[test]
    fn fail_closed() {
        // A policy the proxy cannot compile (validation refuses these first).
        let deny = authorizer(&[
            "{action: DENY, rules: [{from: [{source: {ipBlocks: ['not-an-address']}}]}]}",
        ]);
        assert!(
            !req(PRODUCTPAGE).decide(&deny),
            "broken DENY denies everything"
        );
        assert!(deny.policies()[0].fail_closed.is_some());
        let allow = authorizer(&[
            "{rules: [{when: [{key: 'experimental.envoy.filters.x', values: [admin]}]}]}",
        ]);
        assert!(
            !req(PRODUCTPAGE).decide(&allow),
            "broken ALLOW allows nothing"
        );
        let custom = authorizer(&["{action: CUSTOM, provider: {name: opa}, rules: [{}]}"]);
        assert!(
            !req(PRODUCTPAGE).decide(&custom),
            "CUSTOM without an authorizer denies"
        );
        // An attribute that cannot be determined.
        let deny = authorizer(&[
            "{action: DENY, rules: [{from: [{source: {remoteIpBlocks: [192.0.2.0/24]}}]}]}",
        ]);
        let mut r = req(PRODUCTPAGE);
        assert!(r.decide(&deny));
        r.remote = None;
        assert!(!r.decide(&deny), "unknown client address: DENY matches");
        let allow =
            authorizer(&["rules: [{from: [{source: {notRemoteIpBlocks: [192.0.2.0/24]}}]}]"]);
        assert!(!r.decide(&allow), "unknown client address: ALLOW misses");
        r.remote = Some("10.0.0.9".parse().unwrap());
        assert!(r.decide(&allow));
    }

    #[test]
    fn tcp_reads_rules_the_strict_way() {
        let mut r = req(PRODUCTPAGE);
        r.tcp = true;
        let allow = authorizer(&[
            "rules: [{to: [{operation: {ports: ['9080']}}, {operation: {paths: [/x]}}]}]",
        ]);
        assert!(
            !r.decide(&allow),
            "an ALLOW rule naming HTTP fields never matches TCP"
        );
        let allow = authorizer(&["rules: [{to: [{operation: {ports: ['9080']}}]}]"]);
        assert!(r.decide(&allow));
        let deny = authorizer(&[
            "{action: DENY, rules: [{to: [{operation: {ports: ['9080'], paths: [/admin]}}]}]}",
        ]);
        assert!(
            !r.decide(&deny),
            "a DENY rule ignores its HTTP fields on TCP"
        );
    }

    #[test]
    fn empty_rules_and_audit() {
        assert!(
            !req(PRODUCTPAGE).decide(&authorizer(&["{}"])),
            "ALLOW without rules"
        );
        assert!(
            req(PRODUCTPAGE).decide(&authorizer(&["{action: DENY}"])),
            "DENY without rules"
        );
        let a = authorizer(&[
            "{action: AUDIT, rules: [{}]}",
            "{action: AUDIT, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
        ]);
        assert_eq!(
            req(PRODUCTPAGE).decision(&a),
            Decision::Allow {
                audited: vec!["shop/p0".into()]
            },
            "AUDIT never denies; only the matching policy is recorded"
        );
    }
}
