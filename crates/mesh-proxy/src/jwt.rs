//! RequestAuthentication: JWTs verified on the inbound side, as Istio's sidecars do.
//!
//! The rules of every RequestAuthentication that selects this workload are compiled
//! once per config (keys from the inline `jwks`). Per request, a token is looked for
//! in every rule's locations (`Authorization: Bearer` and the `access_token` query
//! parameter when a rule names none). No token: the request goes on unauthenticated
//! (an AuthorizationPolicy decides whether that is enough). A token: the rule of its
//! issuer verifies it (signature with the issuer's keys, `exp` and `nbf` with 60 s of
//! clock skew, `aud` against `audiences` when listed); any failure, an issuer no rule
//! names included, answers 401. A verified token gives the request principal
//! `iss/sub`, and the rule's header outputs.

use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mesh_api::security::{JwtRule, RequestAuthenticationSpec};

use crate::config::Node;

/// Clock skew allowed on `exp` and `nbf`, Envoy's default.
const LEEWAY_SECONDS: u64 = 60;

/// An issuer's verification keys: by `kid` (keys without one under `None`), with
/// their algorithm.
pub type Keys = Vec<(Option<String>, Algorithm, DecodingKey)>;

/// Where an issuer's keys come from.
#[derive(Clone)]
enum KeySource {
    /// The rule's inline `jwks`.
    Inline(std::sync::Arc<Keys>),
    /// Its `jwksUri`, fetched in the background ([`crate::jwks`]), with the keys the
    /// state was derived with (none before the first fetch).
    Remote(String, Option<std::sync::Arc<Keys>>),
}

/// Where a token may be.
#[derive(Debug, Clone)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

/// One issuer's rule, compiled.
#[derive(Clone)]
struct CompiledRule {
    /// `namespace/name` of the RequestAuthentication, for logs.
    policy: String,
    issuer: String,
    audiences: Vec<String>,
    keys: KeySource,
    locations: Vec<Location>,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, String)>,
    forward_original_token: bool,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("policy", &self.policy)
            .field("issuer", &self.issuer)
            .field(
                "keys",
                &match &self.keys {
                    KeySource::Inline(k) => format!("{} inline", k.len()),
                    KeySource::Remote(uri, _) => uri.clone(),
                },
            )
            .finish_non_exhaustive()
    }
}

/// The JWT rules that apply to one workload.
#[derive(Debug, Clone, Default)]
pub struct JwtAuthn {
    rules: Vec<CompiledRule>,
}

/// Who a verified token says is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    /// `iss/sub`, the request principal.
    pub principal: String,
    /// The token's claims.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// A verified request: who, and the header edits the rule asks for.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The principal and claims.
    pub auth: RequestAuth,
    /// Headers to set on the request to the application (`None`: remove it).
    pub edits: Vec<(HeaderName, Option<HeaderValue>)>,
}

/// Why a token was refused (the request is answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with JSON inside.
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    /// No rule names the token's issuer.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// No key of the issuer verifies the signature.
    #[error("Jwt verification fails")]
    Signature,
    /// The issuer's `jwksUri` has not been fetched (yet).
    #[error("Jwks remote fetch is failed")]
    NoKeys,
    /// Expired.
    #[error("Jwt is expired")]
    Expired,
    /// Not valid yet.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// No accepted audience.
    #[error("Audiences in Jwt are not allowed")]
    Audience,
}

impl JwtAuthn {
    /// Compiles the rules of the RequestAuthentications (namespace, name, spec) that
    /// select `node`; every problem is returned.
    pub fn compile(
        specs: &[(String, String, &RequestAuthenticationSpec)],
        node: &Node,
    ) -> Result<Self, Vec<String>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (namespace, name, spec) in specs {
            let selector = spec.selector.as_ref().map(|s| &s.match_labels);
            if !crate::authz::selects(namespace, selector, node) {
                continue;
            }
            for (i, rule) in spec.jwt_rules.iter().enumerate() {
                match compile_rule(rule) {
                    Ok(mut c) => {
                        c.policy = format!("{namespace}/{name}");
                        rules.push(c);
                    }
                    Err(e) => errors.push(format!(
                        "RequestAuthentication {namespace}/{name}: spec.jwtRules[{i}].{e}"
                    )),
                }
            }
        }
        if errors.is_empty() {
            Ok(Self { rules })
        } else {
            Err(errors)
        }
    }

    /// True when no rule applies (nothing to check).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The `jwksUri`s the rules fetch their keys from.
    pub fn uris(&self) -> std::collections::HashSet<String> {
        self.rules
            .iter()
            .filter_map(|r| match &r.keys {
                KeySource::Remote(uri, _) => Some(uri.clone()),
                KeySource::Inline(_) => None,
            })
            .collect()
    }

    /// The same rules with the keys `jwks` holds now for each `jwksUri`.
    pub fn with_fetched_keys(&self, jwks: &crate::jwks::JwksCache) -> Self {
        let mut rules = self.rules.clone();
        for r in &mut rules {
            if let KeySource::Remote(uri, keys) = &mut r.keys {
                *keys = jwks.keys(uri);
            }
        }
        Self { rules }
    }

    /// Checks the token of a request, if it carries one: `Ok(None)` without a token.
    pub fn authenticate(&self, parts: &http::request::Parts) -> Result<Option<Verified>, JwtError> {
        let Some((token, found)) = self.rules.iter().find_map(|r| {
            r.locations
                .iter()
                .find_map(|l| extract(parts, l).map(|t| (t, l.clone())))
        }) else {
            return Ok(None);
        };
        let unverified: serde_json::Map<String, serde_json::Value> =
            jsonwebtoken::dangerous::insecure_decode_claims(&token)
                .map_err(|_| JwtError::Malformed)?;
        let issuer = unverified
            .get("iss")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let rule = self
            .rules
            .iter()
            .find(|r| r.issuer == issuer)
            .ok_or(JwtError::UnknownIssuer)?;
        let keys = match &rule.keys {
            KeySource::Inline(k) => k.clone(),
            KeySource::Remote(_, keys) => keys.clone().ok_or(JwtError::NoKeys)?,
        };
        let claims = rule.verify(&token, &keys)?;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let principal = format!("{issuer}/{sub}");
        let mut edits = Vec::new();
        if !rule.forward_original_token
            && let Location::Header { name, .. } = &found
        {
            edits.push((name.clone(), None));
        }
        if let Some(h) = &rule.payload_header
            && let Some(payload) = token.split('.').nth(1)
            && let Ok(v) = HeaderValue::from_str(payload)
        {
            edits.push((h.clone(), Some(v)));
        }
        for (h, claim) in &rule.claim_headers {
            let value = match claims.get(claim) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => continue,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                edits.push((h.clone(), Some(v)));
            }
        }
        Ok(Some(Verified {
            auth: RequestAuth { principal, claims },
            edits,
        }))
    }
}

impl CompiledRule {
    /// The claims of `token` if one of the issuer's keys verifies it.
    fn verify(
        &self,
        token: &str,
        keys: &Keys,
    ) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let mut last = JwtError::Signature;
        for (kid, alg, key) in keys {
            if *alg != header.alg || (header.kid.is_some() && kid.is_some() && *kid != header.kid) {
                continue;
            }
            let mut validation = Validation::new(*alg);
            validation.leeway = LEEWAY_SECONDS;
            validation.set_required_spec_claims::<&str>(&[]);
            validation.validate_nbf = true;
            validation.set_issuer(&[&self.issuer]);
            if self.audiences.is_empty() {
                validation.validate_aud = false;
            } else {
                validation.set_audience(&self.audiences);
            }
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                key,
                &validation,
            ) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(JwtError::Expired),
                        ErrorKind::ImmatureSignature => return Err(JwtError::NotYetValid),
                        ErrorKind::InvalidAudience => return Err(JwtError::Audience),
                        _ => JwtError::Signature,
                    };
                }
            }
        }
        Err(last)
    }
}

/// The token at `location`, if the request has one there.
fn extract(parts: &http::request::Parts, location: &Location) -> Option<String> {
    match location {
        Location::Header { name, prefix } => parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix(prefix.as_str()))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
        Location::Param(p) => parts.uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k == p)
                .map(|(_, v)| v.to_owned())
        }),
        Location::Cookie(c) => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == c)
            .map(|(_, v)| v.to_owned()),
    }
}

/// One rule compiled; `Err` names the field (under `jwtRules[i].`) and why.
fn compile_rule(rule: &JwtRule) -> Result<CompiledRule, String> {
    let keys = match (&rule.jwks, &rule.jwks_uri) {
        (Some(jwks), _) => KeySource::Inline(std::sync::Arc::new(
            parse_jwks(jwks).map_err(|e| format!("jwks: {e}"))?,
        )),
        (None, Some(uri)) => {
            uri.parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("https" | "http")))
                .ok_or_else(|| format!("jwksUri: {uri:?} is not an http(s) URL"))?;
            KeySource::Remote(uri.clone(), None)
        }
        // OpenID discovery: the issuer's configuration names its key set.
        (None, None) => {
            let base = rule.issuer.trim_end_matches('/');
            let uri = format!("{base}{}", crate::jwks::OPENID_CONFIGURATION);
            uri.parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("https" | "http")))
                .ok_or_else(|| {
                    format!(
                        "issuer: {:?} is not an http(s) URL, so its keys cannot be found by OpenID discovery; give jwks or jwksUri",
                        rule.issuer
                    )
                })?;
            KeySource::Remote(uri, None)
        }
    };
    let header = |name: &str, what: &str| {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{what}: {name:?} is not a header name"))
    };
    let mut locations = Vec::new();
    for h in &rule.from_headers {
        locations.push(Location::Header {
            name: header(&h.name, "fromHeaders")?,
            prefix: h.prefix.clone().unwrap_or_default(),
        });
    }
    locations.extend(rule.from_params.iter().cloned().map(Location::Param));
    locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        locations = vec![
            Location::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            Location::Param("access_token".into()),
        ];
    }
    let payload_header = rule
        .output_payload_to_header
        .as_deref()
        .map(|h| header(h, "outputPayloadToHeader"))
        .transpose()?;
    let claim_headers = rule
        .output_claim_to_headers
        .iter()
        .map(|c| Ok((header(&c.header, "outputClaimToHeaders")?, c.claim.clone())))
        .collect::<Result<_, String>>()?;
    Ok(CompiledRule {
        policy: String::new(),
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        keys,
        locations,
        payload_header,
        claim_headers,
        forward_original_token: rule.forward_original_token.unwrap_or(false),
    })
}

/// A key set (JWKS document) read into keys.
pub fn parse_jwks(text: &str) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
        let alg = match jwk.common.key_algorithm {
            Some(a) => algorithm_of(a)?,
            None => default_algorithm(&jwk.algorithm)
                .ok_or_else(|| format!("key {i}: no `alg` and no default for its key type"))?,
        };
        keys.push((jwk.common.key_id.clone(), alg, key));
    }
    if keys.is_empty() {
        return Err("no keys".into());
    }
    Ok(keys)
}

/// The algorithm a key without `alg` is used with.
fn default_algorithm(params: &jsonwebtoken::jwk::AlgorithmParameters) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match params {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// The JWT algorithm a JWK's `alg` names.
fn algorithm_of(a: jsonwebtoken::jwk::KeyAlgorithm) -> Result<Algorithm, String> {
    a.to_string()
        .parse()
        .map_err(|_| format!("algorithm {a} cannot verify a JWT"))
}
