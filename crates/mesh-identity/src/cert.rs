//! Reading PEM files and inspecting certificates: validity, SPIFFE ID, CA flag.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::error::{IdentityError, Result};
use crate::spiffe::{SpiffeId, TrustDomain};

/// Every certificate in PEM text, in order. `origin` names the file or peer in errors.
pub fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Pem {
            origin: origin.to_owned(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    for (i, der) in certs.iter().enumerate() {
        X509Certificate::from_der(der).map_err(|e| IdentityError::Pem {
            origin: origin.to_owned(),
            reason: format!("certificate #{} is not valid X.509: {e}", i + 1),
        })?;
    }
    Ok(certs)
}

/// The private key in PEM text (PKCS#8, SEC1 or PKCS#1).
pub fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| IdentityError::Pem {
        origin: origin.to_owned(),
        reason: format!("no usable PRIVATE KEY block: {e}"),
    })
}

/// What Isthmus needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// URI subject alternative names.
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Whether it may sign certificates.
    pub is_ca: bool,
    /// Subject, as text.
    pub subject: String,
    /// Serial number, hex.
    pub serial: String,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
}

impl CertInfo {
    /// Inspects a DER certificate.
    pub fn parse(der: &[u8], origin: &str) -> Result<Self> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::Pem {
            origin: origin.to_owned(),
            reason: format!("not valid X.509: {e}"),
        })?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        Ok(Self {
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
            uris,
            dns_names,
            is_ca: cert.is_ca(),
            subject: cert.subject().to_string(),
            serial: cert.raw_serial_as_string(),
            spki: cert.public_key().raw.to_vec(),
        })
    }

    /// The certificate's lifetime.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// The workload SPIFFE ID: exactly one `spiffe://` URI SAN of Istio's form.
    pub fn spiffe_id(&self, origin: &str) -> Result<SpiffeId> {
        let spiffe: Vec<_> = self
            .uris
            .iter()
            .filter(|u| u.starts_with("spiffe://"))
            .collect();
        match spiffe[..] {
            [one] => one
                .parse()
                .map_err(|e: IdentityError| IdentityError::NotSpiffe {
                    origin: origin.to_owned(),
                    reason: format!("URI SAN is not a workload SPIFFE ID: {e}"),
                }),
            [] => Err(IdentityError::NotSpiffe {
                origin: origin.to_owned(),
                reason: format!(
                    "certificate has no SPIFFE ID (URI SANs: {:?}, DNS SANs: {:?}); workload certificates carry spiffe://TD/ns/NS/sa/SA",
                    self.uris, self.dns_names
                ),
            }),
            _ => Err(IdentityError::NotSpiffe {
                origin: origin.to_owned(),
                reason: format!(
                    "certificate has several SPIFFE IDs {spiffe:?}; exactly one is allowed"
                ),
            }),
        }
    }

    /// The trust domain a CA certificate names in its `spiffe://TD` URI SAN, if any.
    pub fn ca_trust_domain(&self) -> Option<TrustDomain> {
        self.uris.iter().find_map(|u| {
            u.strip_prefix("spiffe://")
                .filter(|td| !td.contains('/'))
                .and_then(|td| td.parse().ok())
        })
    }

    /// Refuses the certificate unless `now` lies within its validity.
    pub fn check_validity(&self, now: SystemTime, origin: &str) -> Result<()> {
        if now > self.not_after {
            return Err(IdentityError::Expired {
                origin: origin.to_owned(),
                not_after: rfc3339(self.not_after),
                now: rfc3339(now),
            });
        }
        if now < self.not_before {
            return Err(IdentityError::NotYetValid {
                origin: origin.to_owned(),
                not_before: rfc3339(self.not_before),
                now: rfc3339(now),
            });
        }
        Ok(())
    }
}

/// `2026-11-21T01:02:03Z`, for messages.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{t:?}"))
}
