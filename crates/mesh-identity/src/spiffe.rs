//! SPIFFE identities: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::IdentityError;

/// A trust domain: the authority part of a SPIFFE ID (`cluster.local`, `mesh.example`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself, `spiffe://TD`, carried by CA certificates.
    pub fn id_uri(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| IdentityError::InvalidSpiffeId {
            input: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(fail("the trust domain is empty"));
        }
        if s.len() > 255 {
            return Err(fail("the trust domain is longer than 255 characters"));
        }
        // SPIFFE: lowercase letters, digits, '.', '-' and '_' only.
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(fail(
                "a trust domain holds only lowercase letters, digits, '.', '-' and '_'",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> Self {
        td.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workload identity in Istio's form: `spiffe://TD/ns/NS/sa/SA`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an ID, checking each part.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The principal as AuthorizationPolicy writes it: `TD/ns/NS/sa/SA`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The same workload in another trust domain (used for trust domain aliases).
    pub fn with_trust_domain(&self, trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            ..self.clone()
        }
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| IdentityError::InvalidSpiffeId {
            input: s.to_owned(),
            reason,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail("it does not start with spiffe://"))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| fail("it has no path; expected spiffe://TD/ns/NS/sa/SA"))?;
        let trust_domain: TrustDomain = td.parse().map_err(|_| {
            fail("the trust domain holds only lowercase letters, digits, '.', '-' and '_'")
        })?;
        let parts: Vec<&str> = path.split('/').collect();
        let ["ns", ns, "sa", sa] = parts[..] else {
            return Err(fail("the path is not /ns/NAMESPACE/sa/SERVICE_ACCOUNT"));
        };
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if !segment_ok(ns) || !segment_ok(sa) {
            return Err(fail(
                "namespace and service account hold only letters, digits, '.', '-' and '_'",
            ));
        }
        Ok(Self {
            trust_domain,
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        })
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_istio_ids() {
        let id: SpiffeId = "spiffe://cluster.local/ns/bookinfo/sa/reviews"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "bookinfo");
        assert_eq!(id.service_account(), "reviews");
        assert_eq!(id.principal(), "cluster.local/ns/bookinfo/sa/reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/bookinfo/sa/reviews"
        );
    }

    #[test]
    fn refuses_malformed_ids_with_a_reason() {
        for (input, reason) in [
            ("https://cluster.local/ns/a/sa/b", "spiffe://"),
            ("spiffe://cluster.local", "no path"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "lowercase"),
            (
                "spiffe://cluster.local/ns/a/b",
                "/ns/NAMESPACE/sa/SERVICE_ACCOUNT",
            ),
            ("spiffe://cluster.local/ns//sa/b", "letters, digits"),
            ("spiffe://cluster.local/ns/../sa/b", "letters, digits"),
        ] {
            let err = input.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }
}
