//! Trust bundles: the roots each trust domain is verified against. A bundle may hold
//! several roots per trust domain (root rotation A → A+B → B) and several trust domains
//! (federation), and converts to and from the SPIFFE trust bundle format (a JWKS whose
//! `x509-svid` keys carry the root in `x5c`).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::TrustAnchor;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::ca::pem_block;
use crate::cert::{CertInfo, parse_certs};
use crate::error::{IdentityError, Result};
use crate::spiffe::TrustDomain;

/// Roots per trust domain, with their parsed trust anchors ready for path building.
#[derive(Clone, Default)]
pub struct TrustBundle {
    domains: BTreeMap<TrustDomain, Vec<Root>>,
}

#[derive(Clone)]
struct Root {
    der: CertificateDer<'static>,
    anchor: TrustAnchor<'static>,
    info: CertInfo,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (td, roots) in &self.domains {
            m.entry(
                &td.as_str(),
                &roots
                    .iter()
                    .map(|r| r.info.subject.as_str())
                    .collect::<Vec<_>>(),
            );
        }
        m.finish()
    }
}

impl TrustBundle {
    /// An empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bundle holding the roots in `pem` for `trust_domain`.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8], origin: &str) -> Result<Self> {
        let mut b = Self::new();
        b.add_pem(trust_domain, pem, origin)?;
        Ok(b)
    }

    /// Adds the roots in `pem` to `trust_domain`. Duplicates are kept once.
    pub fn add_pem(&mut self, trust_domain: TrustDomain, pem: &[u8], origin: &str) -> Result<()> {
        for der in parse_certs(pem, origin)? {
            self.add_root(trust_domain.clone(), der, origin)?;
        }
        Ok(())
    }

    /// Adds one root certificate (DER) to `trust_domain`.
    pub fn add_root(
        &mut self,
        trust_domain: TrustDomain,
        der: CertificateDer<'static>,
        origin: &str,
    ) -> Result<()> {
        let info = CertInfo::parse(&der, origin)?;
        if !info.is_ca {
            return Err(IdentityError::Bundle {
                origin: origin.to_owned(),
                reason: format!("{} is not a CA certificate", info.subject),
            });
        }
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| IdentityError::Bundle {
                origin: origin.to_owned(),
                reason: format!("{} cannot be a trust anchor: {e:?}", info.subject),
            })?
            .to_owned();
        let roots = self.domains.entry(trust_domain).or_default();
        if !roots.iter().any(|r| r.der == der) {
            roots.push(Root { der, anchor, info });
        }
        Ok(())
    }

    /// Adds every root of `other`.
    pub fn merge(&mut self, other: &TrustBundle) {
        for (td, roots) in &other.domains {
            let mine = self.domains.entry(td.clone()).or_default();
            for r in roots {
                if !mine.iter().any(|m| m.der == r.der) {
                    mine.push(r.clone());
                }
            }
        }
    }

    /// Whether `other` holds exactly the same roots for the same trust domains.
    pub fn same_roots(&self, other: &TrustBundle) -> bool {
        self.domains.len() == other.domains.len()
            && self.domains.iter().all(|(td, roots)| {
                other.domains.get(td).is_some_and(|o| {
                    o.len() == roots.len() && roots.iter().all(|r| o.iter().any(|x| x.der == r.der))
                })
            })
    }

    /// The trust domains with at least one root.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.domains.keys()
    }

    /// Roots of a trust domain (DER).
    pub fn roots(&self, trust_domain: &TrustDomain) -> Vec<CertificateDer<'static>> {
        self.domains
            .get(trust_domain)
            .map(|r| r.iter().map(|r| r.der.clone()).collect())
            .unwrap_or_default()
    }

    /// Details of the roots of a trust domain.
    pub fn root_infos(&self, trust_domain: &TrustDomain) -> Vec<&CertInfo> {
        self.domains
            .get(trust_domain)
            .map(|r| r.iter().map(|r| &r.info).collect())
            .unwrap_or_default()
    }

    pub(crate) fn anchors(&self, trust_domain: &TrustDomain) -> Vec<TrustAnchor<'static>> {
        self.domains
            .get(trust_domain)
            .map(|r| r.iter().map(|r| r.anchor.clone()).collect())
            .unwrap_or_default()
    }

    /// The roots of a trust domain as PEM.
    pub fn to_pem(&self, trust_domain: &TrustDomain) -> String {
        self.roots(trust_domain)
            .iter()
            .map(|d| pem_block(d))
            .collect()
    }

    /// The SPIFFE trust bundle document of one trust domain.
    pub fn to_spiffe_json(
        &self,
        trust_domain: &TrustDomain,
        sequence: u64,
        refresh_hint_secs: u64,
    ) -> Result<String> {
        let mut keys = Vec::new();
        for der in self.roots(trust_domain) {
            keys.push(jwk_for(&der)?);
        }
        let doc = SpiffeBundleDoc {
            keys,
            spiffe_sequence: Some(sequence),
            spiffe_refresh_hint: Some(refresh_hint_secs),
        };
        Ok(serde_json::to_string_pretty(&doc).unwrap_or_default())
    }

    /// Reads a SPIFFE trust bundle document for `trust_domain`. Only `x509-svid` keys
    /// are used; each must carry exactly one CA certificate in `x5c` whose public key
    /// matches the JWK.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &str, origin: &str) -> Result<Self> {
        let fail = |reason: String| IdentityError::Bundle {
            origin: origin.to_owned(),
            reason,
        };
        let doc: SpiffeBundleDoc = serde_json::from_str(json)
            .map_err(|e| fail(format!("not a SPIFFE bundle document (JWKS): {e}")))?;
        let mut bundle = Self::new();
        for (i, key) in doc.keys.iter().enumerate() {
            if key.key_use.as_deref() != Some("x509-svid") {
                continue;
            }
            let [x5c] = &key.x5c[..] else {
                return Err(fail(format!(
                    "keys[{i}]: an x509-svid key needs exactly one x5c certificate"
                )));
            };
            let der = STANDARD
                .decode(x5c)
                .map_err(|e| fail(format!("keys[{i}].x5c[0]: not base64: {e}")))?;
            let der = CertificateDer::from(der);
            let expected = jwk_for(&der).map_err(|e| fail(format!("keys[{i}]: {e}")))?;
            if expected.kty != key.kty
                || expected.x != key.x
                || expected.y != key.y
                || expected.n != key.n
            {
                return Err(fail(format!(
                    "keys[{i}]: the JWK does not match the public key of its x5c certificate"
                )));
            }
            bundle.add_root(trust_domain.clone(), der, &format!("{origin} keys[{i}]"))?;
        }
        if bundle.domains.is_empty() {
            return Err(fail("the document holds no x509-svid key".into()));
        }
        Ok(bundle)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SpiffeBundleDoc {
    keys: Vec<Jwk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    key_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    x5c: Vec<String>,
}

fn jwk_for(der: &[u8]) -> Result<Jwk> {
    let fail = |reason: String| IdentityError::Bundle {
        origin: "root certificate".into(),
        reason,
    };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| fail(format!("not X.509: {e}")))?;
    let mut jwk = Jwk {
        kty: String::new(),
        key_use: Some("x509-svid".into()),
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
        x5c: vec![STANDARD.encode(der)],
    };
    match cert.public_key().parsed() {
        Ok(PublicKey::EC(point)) => {
            let data = point.data();
            let (crv, len) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                133 => ("P-521", 66),
                n => return Err(fail(format!("unsupported EC point of {n} bytes"))),
            };
            if data[0] != 4 {
                return Err(fail("compressed EC points are not supported".into()));
            }
            jwk.kty = "EC".into();
            jwk.crv = Some(crv.into());
            jwk.x = Some(URL_SAFE_NO_PAD.encode(&data[1..1 + len]));
            jwk.y = Some(URL_SAFE_NO_PAD.encode(&data[1 + len..]));
        }
        Ok(PublicKey::RSA(rsa)) => {
            let trim = |b: &[u8]| -> Vec<u8> {
                let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b[start..].to_vec()
            };
            jwk.kty = "RSA".into();
            jwk.n = Some(URL_SAFE_NO_PAD.encode(trim(rsa.modulus)));
            jwk.e = Some(URL_SAFE_NO_PAD.encode(trim(rsa.exponent)));
        }
        Ok(_) => {
            return Err(fail(
                "unsupported public key type (use ECDSA or RSA)".into(),
            ));
        }
        Err(e) => return Err(fail(format!("unreadable public key: {e}"))),
    }
    Ok(jwk)
}
