//! Verifying a peer: the chain reaches a root of the bundle for the peer's trust
//! domain, the certificate is valid now, it carries one SPIFFE ID, and its trust domain
//! is accepted here (the local one, an alias of it, or a federated one). Implemented
//! once and used by both rustls verifier traits.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::TrustBundle;
use crate::cert::CertInfo;
use crate::error::{IdentityError, Result};
use crate::spiffe::{SpiffeId, TrustDomain};

/// Which trust domains are accepted, and against which roots.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// Roots per trust domain.
    pub bundle: TrustBundle,
    /// The mesh's own trust domain.
    pub local: TrustDomain,
    /// Earlier names of the local trust domain (Istio's `trustDomainAliases`): peers
    /// in them are verified against the local roots and treated as local.
    pub aliases: BTreeSet<TrustDomain>,
    /// Other trust domains accepted through federation, each verified against its
    /// own roots in the bundle.
    pub federated: BTreeSet<TrustDomain>,
}

impl TrustConfig {
    /// Accepts only `local`, verified against `bundle`.
    pub fn new(local: TrustDomain, bundle: TrustBundle) -> Self {
        Self {
            bundle,
            local,
            aliases: BTreeSet::new(),
            federated: BTreeSet::new(),
        }
    }

    /// Adds a trust domain alias.
    pub fn with_alias(mut self, alias: TrustDomain) -> Self {
        self.aliases.insert(alias);
        self
    }

    /// Accepts a federated trust domain (its roots must be in the bundle).
    pub fn with_federated(mut self, td: TrustDomain) -> Self {
        self.federated.insert(td);
        self
    }

    fn accepted(&self) -> String {
        std::iter::once(&self.local)
            .chain(&self.aliases)
            .chain(&self.federated)
            .map(TrustDomain::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The identity as policies see it: aliases are mapped to the local trust domain.
    pub fn canonical(&self, id: &SpiffeId) -> SpiffeId {
        if self.aliases.contains(id.trust_domain()) {
            id.with_trust_domain(self.local.clone())
        } else {
            id.clone()
        }
    }

    /// Verifies a peer's certificate chain (leaf first) for the given use and returns
    /// its SPIFFE ID. `origin` names the peer in errors.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: SystemTime,
        usage: Usage,
        origin: &str,
    ) -> Result<SpiffeId> {
        let info = CertInfo::parse(end_entity, origin)?;
        let id = info.spiffe_id(origin)?;
        let td = id.trust_domain();
        let anchors = if td == &self.local || self.aliases.contains(td) {
            let mut a = self.bundle.anchors(&self.local);
            if td != &self.local {
                a.extend(self.bundle.anchors(td));
            }
            a
        } else if self.federated.contains(td) {
            self.bundle.anchors(td)
        } else {
            return Err(IdentityError::UnknownTrustDomain {
                origin: origin.to_owned(),
                trust_domain: td.to_string(),
                accepted: self.accepted(),
            });
        };
        if anchors.is_empty() {
            return Err(IdentityError::UntrustedChain {
                origin: origin.to_owned(),
                reason: format!("the trust bundle holds no root for trust domain {td}"),
            });
        }
        info.check_validity(now, origin)?;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
            IdentityError::UntrustedChain {
                origin: origin.to_owned(),
                reason: format!("unreadable certificate: {e:?}"),
            }
        })?;
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let eku = match usage {
            Usage::Client => webpki::KeyUsage::client_auth(),
            Usage::Server => webpki::KeyUsage::server_auth(),
        };
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            UnixTime::since_unix_epoch(Duration::from_secs(secs)),
            eku,
            None,
            None,
        )
        .map_err(|e| IdentityError::UntrustedChain {
            origin: origin.to_owned(),
            reason: match e {
                // A root with the same subject name but another key shows up as a
                // signature mismatch: for the user it is the same problem.
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => format!(
                    "issuer unknown: no root of trust domain {td} signed this chain ({} certificate(s) presented)",
                    1 + intermediates.len()
                ),
                other => format!("{other:?}"),
            },
        })?;
        Ok(id)
    }
}

/// Whether the peer acts as TLS client or server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The peer is a client (we are the server).
    Client,
    /// The peer is a server (we are the client).
    Server,
}

/// The live trust configuration, swapped atomically on bundle updates; verifiers read
/// it per handshake, so open connections are untouched and new handshakes see the
/// new roots at once.
pub type SharedTrust = Arc<ArcSwap<TrustConfig>>;

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn tls_error(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

/// The handshake-signature methods both verifier traits share: checked with the
/// provider's algorithms held in `self.algs`.
macro_rules! handshake_signatures_via_algs {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// rustls client-certificate verifier: mTLS servers (inbound sidecars, discovery).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    trust: SharedTrust,
    algs: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// A verifier reading the live trust configuration; a client certificate is
    /// required.
    pub fn new(trust: SharedTrust) -> Self {
        Self {
            trust,
            algs: algorithms(),
            mandatory: true,
        }
    }

    /// As [`SpiffeClientVerifier::new`], but a client without a certificate may still
    /// connect (one that presents a certificate must present a valid one). For
    /// services where some callers authenticate otherwise, e.g. the CA, which workloads
    /// call with a token before they have a certificate.
    pub fn optional(trust: SharedTrust) -> Self {
        Self {
            mandatory: false,
            ..Self::new(trust)
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        self.trust
            .load()
            .verify(end_entity, intermediates, now, Usage::Client, "client")
            .map(|_| ClientCertVerified::assertion())
            .map_err(tls_error)
    }

    handshake_signatures_via_algs!();
}

/// rustls server-certificate verifier: mTLS clients (outbound sidecars, peering).
/// SPIFFE certificates carry no DNS name, so the SNI is not checked against the
/// certificate; the identity is, when expected identities are given.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    trust: SharedTrust,
    expected: Vec<SpiffeId>,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// A verifier that accepts any identity of an accepted trust domain when
    /// `expected` is empty, and only the listed identities otherwise.
    pub fn new(trust: SharedTrust, expected: Vec<SpiffeId>) -> Self {
        Self {
            trust,
            expected,
            algs: algorithms(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let origin = format!("server {}", server_name.to_str());
        let trust = self.trust.load();
        let id = trust
            .verify(end_entity, intermediates, now, Usage::Server, &origin)
            .map_err(tls_error)?;
        if !self.expected.is_empty() {
            let canonical = trust.canonical(&id);
            if !self
                .expected
                .iter()
                .any(|e| *e == id || trust.canonical(e) == canonical)
            {
                return Err(tls_error(IdentityError::UnexpectedIdentity {
                    origin,
                    actual: id.to_string(),
                    expected: self
                        .expected
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" or "),
                }));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures_via_algs!();
}

/// The SPIFFE ID of a peer after the handshake, from the certificates rustls reports.
pub fn peer_id(certs: Option<&[CertificateDer<'_>]>, origin: &str) -> Result<SpiffeId> {
    let leaf = certs
        .and_then(<[_]>::first)
        .ok_or_else(|| IdentityError::NotSpiffe {
            origin: origin.to_owned(),
            reason: "the peer presented no certificate".into(),
        })?;
    CertInfo::parse(leaf, origin)?.spiffe_id(origin)
}

/// A readable reason for a failed TLS handshake: the identity check that refused the
/// peer when there was one, rustls' own words otherwise.
pub fn explain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
            && let Some(id_err) = other.0.downcast_ref::<IdentityError>()
        {
            return id_err.to_string();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            cur = Some(inner);
            continue;
        }
        cur = e.source();
    }
    err.to_string()
}
