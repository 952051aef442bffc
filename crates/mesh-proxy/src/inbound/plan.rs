//! The inbound planner, decide then do: for one request that arrived over mTLS,
//! `plan(state, request head, caller)` says where the application gets it (its port,
//! the normalized path, HTTP/1.1 or h2c) or why the sidecar answers it itself, without
//! any I/O. The listener executes the plan and records every outcome once.

use std::net::{IpAddr, SocketAddr};

use http::Uri;
use http::request::Parts;

use super::Caller;
use crate::authz::{Attributes, Decision, HttpAttributes};
use crate::error::ResponseFlag;
use crate::model::Protocol;
use crate::state::ProxyState;

/// Where and how the application gets the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InboundPlan {
    /// The request URI towards the application (`http://APP_IP:PORT/normalized?query`).
    pub app_uri: Uri,
    /// HTTP/2 cleartext to the application (gRPC and HTTP/2 ports), else HTTP/1.1.
    pub h2: bool,
    /// AUDIT policies that matched (logged, not enforced).
    pub audited: Vec<String>,
    /// Header edits a verified JWT's rule asks for (`None`: remove the header).
    pub header_edits: Vec<(http::HeaderName, Option<http::HeaderValue>)>,
}

/// Why the sidecar answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InboundRefusal {
    /// The TLS connection named no `outbound_.PORT_...` server name.
    #[error("the connection carried no outbound SNI")]
    NoServicePort,
    /// Path normalization made a path that is not a valid URI.
    #[error("invalid request path")]
    InvalidPath,
    /// An AuthorizationPolicy denied the request (or could not be evaluated).
    #[error("{0}")]
    Denied(String),
    /// The request's JWT failed verification (RequestAuthentication).
    #[error("{0}")]
    Unauthenticated(crate::jwt::JwtError),
    /// The URI towards the application could not be built.
    #[error("cannot build the application URI: {0}")]
    BadAppUri(String),
}

impl InboundRefusal {
    /// The flag it is recorded with (`None`: a malformed request, no proxy failure).
    pub(crate) fn flag(&self) -> Option<ResponseFlag> {
        match self {
            Self::NoServicePort | Self::BadAppUri(_) => Some(ResponseFlag::NoRoute),
            Self::Denied(_) => Some(ResponseFlag::Unauthorized),
            // Refused by the caller's credentials, as Envoy's JWT filter does: no flag.
            Self::InvalidPath | Self::Unauthenticated(_) => None,
        }
    }

    /// The status and body the caller gets.
    pub(crate) fn answer(&self) -> (http::StatusCode, String) {
        match self {
            // Istio's body, which clients and tests recognise.
            Self::Denied(_) => (http::StatusCode::FORBIDDEN, "RBAC: access denied".into()),
            Self::InvalidPath => (http::StatusCode::BAD_REQUEST, "invalid request path".into()),
            // Envoy's JWT filter's status and body.
            Self::Unauthenticated(e) => (http::StatusCode::UNAUTHORIZED, e.to_string()),
            other => {
                let flag = other.flag().unwrap_or(ResponseFlag::NoRoute);
                let status = flag.status();
                let reason = status.canonical_reason().unwrap_or("error");
                (status, format!("{reason}: {other}\n"))
            }
        }
    }
}

/// What the planner reads besides the state and the request head.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inputs<'a> {
    /// The caller as the connection identifies it.
    pub caller: &'a Caller,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The service port from the SNI, when there was one.
    pub service_port: Option<u16>,
    /// The authority as sent (URI authority for HTTP/2, else Host).
    pub authority: &'a str,
    /// Where the application listens.
    pub app_ip: IpAddr,
    /// Path normalization and trusted proxies.
    pub options: super::RequestOptions,
}

/// Plans one inbound request.
pub(super) fn plan(
    state: &ProxyState,
    parts: &Parts,
    input: Inputs<'_>,
) -> Result<InboundPlan, InboundRefusal> {
    let service_port = input.service_port.ok_or(InboundRefusal::NoServicePort)?;
    let (target_port, protocol) = state.local_port(service_port);
    // Policies see the workload port; a Sidecar ingress listener may send it on to
    // another port of the application.
    let (app_port, protocol) = state.app_port(target_port, protocol);
    // Policies and the application see the normalized path.
    let path = input.options.path_normalization.apply(parts.uri.path());
    // Parsed once: an unchanged path reuses the request's own.
    let path_and_query = match (&path, parts.uri.path_and_query()) {
        (std::borrow::Cow::Borrowed(_), Some(pq)) => pq.clone(),
        _ => match parts.uri.query() {
            Some(q) => format!("{path}?{q}").parse(),
            None => path.parse(),
        }
        .map_err(|_| InboundRefusal::InvalidPath)?,
    };
    let admitted = admit(
        state,
        parts,
        &path,
        input.authority,
        Attributes {
            principal: &input.caller.principal,
            principal_aliases: &input.caller.aliases,
            source_ip: Some(input.peer.ip()),
            remote_ip: super::remote_ip(
                &parts.headers,
                input.peer.ip(),
                input.options.num_trusted_proxies,
            ),
            destination_ip: input.caller.destination_ip,
            port: target_port,
            sni: &input.caller.sni,
            http: None,
        },
    )?;
    let app_uri = Uri::builder()
        .scheme("http")
        .authority(SocketAddr::new(input.app_ip, app_port).to_string())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| InboundRefusal::BadAppUri(e.to_string()))?;
    Ok(InboundPlan {
        app_uri,
        // gRPC and HTTP/2 ports get HTTP/2 (cleartext) to the app, so trailers and
        // streams arrive intact; everything else HTTP/1.1.
        h2: matches!(protocol, Protocol::Grpc | Protocol::Http2),
        audited: admitted.audited,
        header_edits: admitted.header_edits,
    })
}

/// What a request that passed [`admit`] carries on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// AUDIT policies that matched (logged, not enforced).
    pub audited: Vec<String>,
    /// Header edits a verified JWT's rule asks for (`None`: remove the header).
    pub header_edits: Vec<(http::HeaderName, Option<http::HeaderValue>)>,
    /// Who the verified JWT names, and its claims.
    pub auth: Option<crate::jwt::RequestAuth>,
}

/// The request checks of a proxy that takes requests in (a sidecar's inbound side, the
/// ingress gateway): a JWT, when the request carries one, verified before any policy
/// (401 when it fails; a verified one names the request principal), then the
/// AuthorizationPolicies on the connection's `attrs` and the request (`path`
/// normalized).
pub(crate) fn admit(
    state: &ProxyState,
    parts: &Parts,
    path: &str,
    host: &str,
    attrs: Attributes<'_>,
) -> Result<Admitted, InboundRefusal> {
    admit_with(&state.jwt, &state.authz, parts, path, host, attrs)
}

/// [`admit`] with the workload's compiled JWT rules and policies.
fn admit_with(
    jwt: &crate::jwt::JwtAuthn,
    authz: &crate::authz::Authorizer,
    parts: &Parts,
    path: &str,
    host: &str,
    attrs: Attributes<'_>,
) -> Result<Admitted, InboundRefusal> {
    let verified = jwt
        .authenticate(parts)
        .map_err(InboundRefusal::Unauthenticated)?;
    let attrs = Attributes {
        http: Some(HttpAttributes {
            method: parts.method.as_str(),
            path,
            host,
            headers: &parts.headers,
            request_principal: verified.as_ref().map(|v| v.auth.principal.as_str()),
            claims: verified.as_ref().map(|v| &v.auth.claims),
        }),
        ..attrs
    };
    match authz.decide(&attrs) {
        Decision::Deny(reason) => Err(InboundRefusal::Denied(reason)),
        Decision::Allow { audited } => {
            let (header_edits, auth) = match verified {
                Some(v) => (v.edits, Some(v.auth)),
                None => (Vec::new(), None),
            };
            Ok(Admitted {
                audited,
                header_edits,
                auth,
            })
        }
    }
}

/// What a workload's sidecar answers one HTTP request that arrives over mTLS from
/// `principal` on workload port `port`: the same checks, in the same order, as every
/// request it takes in ([`admit`]), with the path normalized by default. For `meshctl
/// diagnose`, through discovery, which compiles the workload's rules with
/// [`crate::state::security_for`] and [`crate::jwt::JwtAuthn::compile`].
pub fn verdict(
    jwt: &crate::jwt::JwtAuthn,
    authz: &crate::authz::Authorizer,
    parts: &Parts,
    principal: &str,
    port: u16,
) -> Verdict {
    let path = crate::path::PathNormalization::default().apply(parts.uri.path());
    let host = crate::http_util::request_authority(parts).unwrap_or_default();
    let attrs = Attributes {
        principal,
        principal_aliases: &[],
        source_ip: None,
        remote_ip: None,
        destination_ip: None,
        port,
        sni: "",
        http: None,
    };
    match admit_with(jwt, authz, parts, &path, &host, attrs) {
        Ok(a) => Verdict {
            refusal: None,
            audited: a.audited,
            request_principal: a.auth.map(|a| a.principal),
            keys_missing: false,
        },
        Err(refusal) => {
            let (status, _) = refusal.answer();
            Verdict {
                keys_missing: matches!(
                    refusal,
                    InboundRefusal::Unauthenticated(crate::jwt::JwtError::NoKeys)
                ),
                refusal: Some((status.as_u16(), refusal.to_string())),
                audited: Vec::new(),
                request_principal: None,
            }
        }
    }
}

/// A workload sidecar's answer to one request (see [`verdict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Refused: the status the caller gets (401 for a token that fails, 403 for a
    /// policy) and why; `None` when admitted.
    pub refusal: Option<(u16, String)>,
    /// AUDIT policies that matched.
    pub audited: Vec<String>,
    /// The request principal (`iss/sub`) of the token it verified.
    pub request_principal: Option<String>,
    /// Refused because the keys of the token's issuer (by `jwksUri`) were not at
    /// hand: the answer depends on keys the caller of [`verdict`] does not hold.
    pub keys_missing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node is reviews-1 in shop, behind the service `reviews` (http 9080 → 8080,
    /// grpc 9090).
    const NODE: &str = "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: reviews-1, namespace: shop, serviceAccount: reviews}
services:
- name: reviews
  namespace: shop
  ports: [{name: http, port: 9080, targetPort: 8080}, {name: grpc, port: 9090}]
";

    const DENY_ADMIN: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
";

    const ONLY_FRONTEND: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend, namespace: shop}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]
";

    fn state(istio: &[&str]) -> ProxyState {
        let mut text = NODE.to_owned();
        for doc in istio {
            text.push_str("---\n");
            text.push_str(doc);
        }
        let bundle = crate::config::ConfigBundle::from_yaml(&text, "test").unwrap();
        ProxyState::compile(&bundle, "test").unwrap()
    }

    fn caller(sa: &str) -> Caller {
        Caller {
            id: format!("spiffe://cluster.local/ns/shop/sa/{sa}"),
            principal: format!("cluster.local/ns/shop/sa/{sa}"),
            sni: "outbound_.9080_._.reviews.shop.svc.cluster.local".into(),
            ..Default::default()
        }
    }

    /// The outcome of one request in one line: where it goes, or status and flag.
    fn outcome(state: &ProxyState, sa: &str, port: Option<u16>, uri: &str) -> String {
        let parts = http::Request::get(uri).body(()).unwrap().into_parts().0;
        let from = caller(sa);
        let input = Inputs {
            caller: &from,
            peer: "10.1.0.9:41000".parse().unwrap(),
            service_port: port,
            authority: "reviews:9080",
            app_ip: "127.0.0.1".parse().unwrap(),
            options: super::super::RequestOptions::default(),
        };
        match plan(state, &parts, input) {
            Ok(p) => format!("{} h2={}", p.app_uri, p.h2),
            Err(r) => format!(
                "{} {} {}",
                r.answer().0.as_u16(),
                r.flag().map_or("-", ResponseFlag::code),
                r
            ),
        }
    }

    #[test]
    fn inbound_decisions_as_a_table() {
        let open = state(&[]);
        let guarded = state(&[DENY_ADMIN, ONLY_FRONTEND]);
        let rows: &[(&ProxyState, &str, Option<u16>, &str, &str)] = &[
            (
                &open,
                "frontend",
                Some(9080),
                "/r?x=1",
                "http://127.0.0.1:8080/r?x=1 h2=false",
            ),
            (
                &open,
                "frontend",
                Some(9090),
                "/pkg.Svc/Call",
                "http://127.0.0.1:9090/pkg.Svc/Call h2=true",
            ),
            (
                &open,
                "frontend",
                Some(7000),
                "/",
                "http://127.0.0.1:7000/ h2=false",
            ),
            (
                &open,
                "frontend",
                None,
                "/",
                "404 NR the connection carried no outbound SNI",
            ),
            // Policies see the normalized path, and so does the application.
            (
                &guarded,
                "frontend",
                Some(9080),
                "/a/../r",
                "http://127.0.0.1:8080/r h2=false",
            ),
            (
                &guarded,
                "frontend",
                Some(9080),
                "/a/../admin",
                "403 UAEX rbac_access_denied_matched_policy[shop/no-admin]",
            ),
            (
                &guarded,
                "frontend",
                Some(9080),
                "/admin/x",
                "403 UAEX rbac_access_denied_matched_policy[shop/no-admin]",
            ),
            (
                &guarded,
                "stranger",
                Some(9080),
                "/r",
                "403 UAEX rbac_access_denied_matched_policy[none]",
            ),
        ];
        for (state, sa, port, uri, want) in rows {
            assert_eq!(
                &outcome(state, sa, *port, uri),
                want,
                "{sa} → port {port:?} {uri}"
            );
        }
    }

    #[test]
    fn a_denied_request_gets_istios_body() {
        let refusal = InboundRefusal::Denied("rbac_access_denied_matched_policy[none]".into());
        assert_eq!(
            refusal.answer(),
            (
                http::StatusCode::FORBIDDEN,
                "RBAC: access denied".to_owned()
            )
        );
    }
}
