//! A workload's live identity: its certificate and key, and the trust it verifies
//! peers with, each held in an atomic cell. rustls configs built from it resolve the
//! certificate and read the trust per handshake, so a renewed certificate or a new
//! bundle applies to the next handshake without restarting listeners and without
//! touching open connections.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::cert::{CertInfo, parse_certs, parse_key};
use crate::error::{IdentityError, Result, io};
use crate::spiffe::SpiffeId;
use crate::verify::{SharedTrust, SpiffeClientVerifier, SpiffeServerVerifier, TrustConfig, Usage};

/// A validated workload certificate chain and its key.
#[derive(Clone)]
pub struct WorkloadCert {
    key: Arc<CertifiedKey>,
    id: SpiffeId,
    info: CertInfo,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("id", &self.id.to_string())
            .field("serial", &self.info.serial)
            .field("not_after", &crate::cert::rfc3339(self.info.not_after))
            .finish()
    }
}

impl WorkloadCert {
    /// Reads a chain (leaf first) and its key from PEM text, refusing a malformed PEM,
    /// a key that does not match, a certificate outside its validity, or one without
    /// a SPIFFE ID. `origin` names the source in errors.
    pub fn from_pem(chain_pem: &str, key_pem: &str, origin: &str) -> Result<Self> {
        let chain = parse_certs(chain_pem.as_bytes(), origin)?;
        let key = parse_key(key_pem.as_bytes(), &format!("key of {origin}"))?;
        let info = CertInfo::parse(&chain[0], origin)?;
        let id = info.spiffe_id(origin)?;
        info.check_validity(SystemTime::now(), origin)?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => IdentityError::KeyMismatch {
                origin: origin.to_owned(),
            },
            other => IdentityError::Pem {
                origin: format!("key of {origin}"),
                reason: other.to_string(),
            },
        })?;
        Ok(Self {
            key: Arc::new(key),
            id,
            info,
        })
    }

    /// Reads `cert_chain` and `key` files.
    pub fn load(cert_chain: &Path, key: &Path) -> Result<Self> {
        let chain = std::fs::read_to_string(cert_chain).map_err(io(cert_chain))?;
        let key_pem = std::fs::read_to_string(key).map_err(io(key))?;
        Self::from_pem(&chain, &key_pem, &cert_chain.display().to_string())
    }

    /// The identity.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// Details of the leaf certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// The chain, leaf first (DER).
    pub fn chain(&self) -> &[rustls_pki_types::CertificateDer<'static>] {
        &self.key.cert
    }

    fn check_trusted(&self, trust: &TrustConfig) -> Result<()> {
        let chain = &self.key.cert;
        trust.verify(
            &chain[0],
            &chain[1..],
            SystemTime::now(),
            Usage::Client,
            &format!("own certificate {}", self.id),
        )?;
        Ok(())
    }
}

/// A workload's identity as it changes over time: the current certificate and the
/// current trust configuration.
#[derive(Debug, Clone)]
pub struct Identity {
    cert: Arc<ArcSwap<WorkloadCert>>,
    trust: SharedTrust,
}

impl Identity {
    /// Starts with `cert` and `trust`; the certificate must verify under that trust,
    /// or peers would refuse it.
    pub fn new(cert: WorkloadCert, trust: TrustConfig) -> Result<Self> {
        cert.check_trusted(&trust)?;
        Ok(Self {
            cert: Arc::new(ArcSwap::from_pointee(cert)),
            trust: Arc::new(ArcSwap::from_pointee(trust)),
        })
    }

    /// The current certificate.
    pub fn cert(&self) -> Arc<WorkloadCert> {
        self.cert.load_full()
    }

    /// The current trust configuration.
    pub fn trust(&self) -> Arc<TrustConfig> {
        self.trust.load_full()
    }

    /// A renewed certificate must be for the identity this workload has.
    fn check_same_id(&self, cert: &WorkloadCert) -> Result<()> {
        let current = self.cert.load();
        if cert.id != current.id {
            return Err(IdentityError::UnexpectedIdentity {
                origin: "renewed certificate".into(),
                actual: cert.id.to_string(),
                expected: current.id.to_string(),
            });
        }
        Ok(())
    }

    /// Installs a renewed certificate for new handshakes. It must be for the same
    /// identity and verify under the current trust; otherwise the current one stays.
    pub fn rotate_cert(&self, cert: WorkloadCert) -> Result<()> {
        self.check_same_id(&cert)?;
        cert.check_trusted(&self.trust.load())?;
        tracing::info!(id = %cert.id, serial = %cert.info.serial, not_after = %crate::cert::rfc3339(cert.info.not_after), "workload certificate rotated");
        self.cert.store(Arc::new(cert));
        Ok(())
    }

    /// Installs a new trust configuration for new handshakes. Refused (keeping the
    /// current one) if it would no longer trust this workload's own certificate, since
    /// peers using it would then refuse this workload.
    pub fn update_trust(&self, trust: TrustConfig) -> Result<()> {
        self.cert.load().check_trusted(&trust).map_err(|e| IdentityError::Bundle {
            origin: "new trust bundle".into(),
            reason: format!(
                "it does not trust this workload's own certificate ({e}); install a certificate from the new root first"
            ),
        })?;
        tracing::info!(domains = ?trust.bundle.trust_domains().collect::<Vec<_>>(), "trust bundle updated");
        self.trust.store(Arc::new(trust));
        Ok(())
    }

    /// Installs a certificate and a trust configuration together (a renewal that
    /// brings new roots, or a root rotation): the certificate must be for the same
    /// identity and verify under the new trust; otherwise both stay as they are.
    pub fn replace(&self, cert: WorkloadCert, trust: TrustConfig) -> Result<()> {
        self.check_same_id(&cert)?;
        cert.check_trusted(&trust)?;
        let trust_changed = !self.trust.load().bundle.same_roots(&trust.bundle);
        if trust_changed {
            tracing::info!(domains = ?trust.bundle.trust_domains().collect::<Vec<_>>(), "trust bundle updated");
        }
        tracing::info!(id = %cert.id, serial = %cert.info.serial, not_after = %crate::cert::rfc3339(cert.info.not_after), "workload certificate rotated");
        // The certificate first: until the trust follows, peers are still verified
        // under the old roots, which is what they were issued under.
        self.cert.store(Arc::new(cert));
        self.trust.store(Arc::new(trust));
        Ok(())
    }

    /// Server config for mTLS: a client certificate is required and verified.
    /// `alpn` lists the protocols offered (e.g. `h2`, `http/1.1`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> ServerConfig {
        let mut cfg =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("ring supports TLS 1.3")
                .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(self.trust.clone())))
                .with_cert_resolver(Arc::new(CertResolver(self.cert.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg
    }

    /// Server config where a client certificate is optional (verified when presented):
    /// the caller's identity, if any, is read from the connection afterwards.
    pub fn server_config_optional_client(&self, alpn: &[&[u8]]) -> ServerConfig {
        let mut cfg =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("ring supports TLS 1.3")
                .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::optional(
                    self.trust.clone(),
                )))
                .with_cert_resolver(Arc::new(CertResolver(self.cert.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg
    }

    /// Client config for mTLS. With `expected` empty any identity of an accepted
    /// trust domain is accepted; otherwise only those identities.
    pub fn client_config(&self, expected: Vec<SpiffeId>, alpn: &[&[u8]]) -> ClientConfig {
        client_config(
            self.trust.clone(),
            expected,
            Some(Arc::new(CertResolver(self.cert.clone()))),
            alpn,
        )
    }
}

impl Identity {
    /// Client config for mTLS towards a peer verified against `trust` instead of this
    /// identity's own (a linked cluster's discovery, whose roots come with the link);
    /// this identity's certificate is presented.
    pub fn client_config_with_trust(
        &self,
        trust: TrustConfig,
        expected: Vec<SpiffeId>,
        alpn: &[&[u8]],
    ) -> ClientConfig {
        client_config(
            Arc::new(ArcSwap::from_pointee(trust)),
            expected,
            Some(Arc::new(CertResolver(self.cert.clone()))),
            alpn,
        )
    }
}

/// Client config for a caller that has no certificate yet (a workload asking the CA
/// for its first one): the server is verified against `trust` and must be one of
/// `expected` (any identity of an accepted trust domain when empty); no client
/// certificate is sent.
pub fn anonymous_client_config(
    trust: TrustConfig,
    expected: Vec<SpiffeId>,
    alpn: &[&[u8]],
) -> ClientConfig {
    client_config(Arc::new(ArcSwap::from_pointee(trust)), expected, None, alpn)
}

/// A TLS 1.3 client config verifying SPIFFE servers against `trust`, presenting the
/// certificate of `resolver` when given.
fn client_config(
    trust: SharedTrust,
    expected: Vec<SpiffeId>,
    resolver: Option<Arc<CertResolver>>,
    alpn: &[&[u8]],
) -> ClientConfig {
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(trust, expected)));
    let mut cfg = match resolver {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// Resolves the current certificate at each handshake.
#[derive(Debug)]
struct CertResolver(Arc<ArcSwap<WorkloadCert>>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().key.clone())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl Identity {
    /// The proxy's certificate and trust as `/certs` shows them (Envoy's admin has the
    /// same endpoint): identity, serial, expiry, the issuing intermediate, and the serials
    /// of the roots trusted per trust domain.
    pub fn report(&self) -> serde_json::Value {
        let identity = self;
        let cert = identity.cert();
        let issuer = cert
            .chain()
            .get(1)
            .and_then(|der| crate::cert::CertInfo::parse(der, "issuer").ok());
        let trust = identity.trust();
        let roots: serde_json::Map<_, _> = trust
            .bundle
            .trust_domains()
            .map(|td| {
                let serials: Vec<String> = trust
                    .bundle
                    .root_infos(td)
                    .iter()
                    .map(|i| i.serial.clone())
                    .collect();
                (td.to_string(), serials.into())
            })
            .collect();
        serde_json::json!({
            "spiffe_id": cert.id().to_string(),
            "serial": cert.info().serial,
            "not_after": crate::cert::rfc3339(cert.info().not_after),
            "issuer": issuer.as_ref().map(|i| i.subject.clone()),
            "issuer_serial": issuer.as_ref().map(|i| i.serial.clone()),
            "trust_roots": roots,
        })
    }
}
