//! TLS origination: a DestinationRule's `tls` with mode SIMPLE or MUTUAL makes the
//! proxy open TLS itself to the destination's own address and port (a service outside
//! the mesh, or a workload without a sidecar), instead of mesh mTLS to a sidecar.
//!
//! As Istio's sidecars do it:
//! - the server is verified against `caCertificates` (a PEM file), else the system's
//!   roots; `insecureSkipVerify: true` verifies nothing (analyze warns);
//! - the name sent and checked is `sni`, else the destination host; with
//!   `subjectAltNames` the certificate must be valid for one of them instead;
//! - MUTUAL presents `clientCertificate` and `privateKey` (PEM files);
//! - a file that cannot be read or parsed refuses the DestinationRule (the last good
//!   config stays), never a request.
//!
//! Everything is compiled once per config into a `rustls` client config; a handshake
//! that fails is the request's `UF` with rustls's reason.

use std::sync::{Arc, LazyLock};

use mesh_api::networking::{ClientTlsMode, ClientTlsSettings};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// How TLS is opened to a destination.
pub struct Origination {
    /// SIMPLE or MUTUAL.
    pub mutual: bool,
    /// The server name sent (`sni`); the destination host when `None`.
    pub sni: Option<String>,
    /// What `/config_dump` shows.
    pub summary: String,
    /// The TLS config, or why this TLS cannot be opened yet (its `credentialName`
    /// Secret has not arrived): then every connection fails with it (fail closed)
    /// until the Secret comes and the config is compiled again.
    connector: Result<tokio_rustls::TlsConnector, String>,
}

/// Two originations are the same when they say the same (the config is compared, not
/// the key material).
impl PartialEq for Origination {
    fn eq(&self, other: &Self) -> bool {
        self.summary == other.summary
    }
}

impl Eq for Origination {}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

pub(crate) fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// The system's roots, read once.
static SYSTEM_ROOTS: LazyLock<Arc<tokio_rustls::rustls::RootCertStore>> = LazyLock::new(|| {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "a system root certificate could not be read");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, "system roots loaded for TLS origination");
    Arc::new(roots)
});

pub(crate) fn read(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {path:?} cannot be read: {e}"))
}

pub(crate) fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let list: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if list.is_empty() {
        return Err(format!("{what} holds no certificate"));
    }
    Ok(list)
}

/// Why a `credentialName` has no material here.
pub(crate) fn missing(name: &str, namespace: &str) -> String {
    format!(
        "credentialName {name:?}: no Secret {namespace}/{name} with a certificate has been delivered \
         (create it in this workload's namespace: kubernetes.io/tls with tls.crt and tls.key, plus ca.crt for MUTUAL)"
    )
}

/// Certificate material, from files the proxy reads or from the Secret a
/// `credentialName` names: each part as PEM with what to call it in an error.
pub(crate) struct Material {
    /// Where it came from: `Secret NS/NAME` or the certificate file.
    pub source: String,
    /// The certificate chain.
    pub chain: Option<(Vec<u8>, String)>,
    /// Its private key.
    pub key: Option<(Vec<u8>, String)>,
    /// CA certificates.
    pub ca: Option<(Vec<u8>, String)>,
    /// Where a CA would come from, for an error when there is none.
    pub ca_hint: String,
}

impl Material {
    /// From `credential` (a Secret of `namespace`, delivered by discovery) when set,
    /// else from the `files` (certificate, key and CA fields, each with its path).
    pub(crate) fn of(
        credential: Option<&str>,
        files: [(&str, Option<&str>); 3],
        credentials: &crate::state::Credentials,
        namespace: &str,
    ) -> Result<Self, String> {
        if let Some(name) = credential {
            let key = format!("{namespace}/{name}");
            let c = credentials
                .get(&key)
                .ok_or_else(|| missing(name, namespace))?;
            let part = |v: &Option<String>, k: &str| {
                v.as_ref()
                    .map(|p| (p.as_bytes().to_vec(), format!("Secret {key} {k}")))
            };
            return Ok(Self {
                source: format!("Secret {key}"),
                chain: part(&c.certificate_chain, "tls.crt"),
                key: part(&c.private_key, "tls.key"),
                ca: part(&c.ca_certificates, "ca.crt"),
                ca_hint: format!("ca.crt in Secret {key}"),
            });
        }
        let load = |(what, path): (&str, Option<&str>)| {
            path.map(|p| read(p, what).map(|b| (b, format!("{what} {p:?}"))))
                .transpose()
        };
        let [c, k, a] = files;
        Ok(Self {
            source: c.1.unwrap_or("no certificate").to_owned(),
            chain: load(c)?,
            key: load(k)?,
            ca: load(a)?,
            ca_hint: a.0.to_owned(),
        })
    }

    /// The certificate chain and its key, both required.
    pub(crate) fn chain_and_key(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let ((chain, chain_what), (key, key_what)) = match (&self.chain, &self.key) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                return Err(format!(
                    "{}: a certificate and its private key are needed",
                    self.source
                ));
            }
        };
        let chain = certs(chain, chain_what)?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| format!("{key_what}: not a PEM private key: {e}"))?;
        Ok((chain, key))
    }
}

impl Origination {
    /// The origination `tls` asks for: `None` for ISTIO_MUTUAL and DISABLE (and when
    /// unset), or why it cannot be built.
    pub fn compile(
        tls: &ClientTlsSettings,
        credentials: &crate::state::Credentials,
        namespace: &str,
    ) -> Result<Option<Arc<Self>>, String> {
        let mutual = match tls.mode {
            Some(ClientTlsMode::Simple) => false,
            Some(ClientTlsMode::Mutual) => true,
            _ => return Ok(None),
        };
        if let Some(name) = &tls.credential_name
            && !credentials.contains_key(&format!("{namespace}/{name}"))
        {
            let why = missing(name, namespace);
            tracing::warn!(reason = %why, "TLS origination waits for its Secret");
            return Ok(Some(Arc::new(Self {
                mutual,
                sni: tls.sni.clone(),
                summary: format!("waiting: {why}"),
                connector: Err(why),
            })));
        }
        let material = Material::of(
            tls.credential_name.as_deref(),
            [
                ("clientCertificate", tls.client_certificate.as_deref()),
                ("privateKey", tls.private_key.as_deref()),
                ("caCertificates", tls.ca_certificates.as_deref()),
            ],
            credentials,
            namespace,
        )?;
        let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify == Some(true) {
            Arc::new(Unverified(provider()))
        } else {
            let roots = match &material.ca {
                Some((pem, what)) => {
                    let mut store = tokio_rustls::rustls::RootCertStore::empty();
                    for c in certs(pem, what)? {
                        store.add(c).map_err(|e| format!("{what}: {e}"))?;
                    }
                    Arc::new(store)
                }
                None => SYSTEM_ROOTS.clone(),
            };
            let inner = tokio_rustls::rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                provider(),
            )
            .build()
            .map_err(|e| format!("caCertificates: {e}"))?;
            let names = tls
                .subject_alt_names
                .iter()
                .map(|n| {
                    ServerName::try_from(n.clone()).map_err(|_| {
                        format!("subjectAltNames: {n:?} is not a DNS name or an IP address")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(Verifier { inner, names })
        };
        let builder = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = if mutual {
            if material.chain.is_none() || material.key.is_none() {
                return Err(
                    "MUTUAL needs clientCertificate and privateKey (PEM files the proxy can read)"
                        .into(),
                );
            }
            let (chain, key) = material.chain_and_key()?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("clientCertificate and privateKey: {e}"))?
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let summary = format!(
            "{} (ca: {}, sni: {}{}{})",
            if mutual { "MUTUAL" } else { "SIMPLE" },
            material
                .ca
                .as_ref()
                .map_or("system roots", |(_, what)| what.as_str()),
            tls.sni.as_deref().unwrap_or("the host"),
            if tls.subject_alt_names.is_empty() {
                String::new()
            } else {
                format!(", subjectAltNames: {}", tls.subject_alt_names.join(" "))
            },
            if tls.insecure_skip_verify == Some(true) {
                ", NOT VERIFIED"
            } else {
                ""
            }
        );
        Ok(Some(Arc::new(Self {
            mutual,
            sni: tls.sni.clone(),
            summary,
            connector: Ok(tokio_rustls::TlsConnector::from(Arc::new(config))),
        })))
    }

    /// Opens TLS over `tcp` to the destination `host` (the name sent unless `sni`
    /// says otherwise).
    pub async fn connect<S>(
        &self,
        tcp: S,
        host: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let connector = self
            .connector
            .as_ref()
            .map_err(|why| std::io::Error::new(std::io::ErrorKind::NotFound, why.clone()))?;
        let name = self.sni.as_deref().unwrap_or(host);
        let name =
            ServerName::try_from(crate::model::strip_port(name).to_owned()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{name:?} is not a server name to send"),
                )
            })?;
        connector.connect(name, tcp).await
    }
}

/// The WebPKI verifier, checking the certificate against `names` (any one) when
/// `subjectAltNames` lists some, else against the name sent.
#[derive(Debug)]
struct Verifier {
    inner: Arc<tokio_rustls::rustls::client::WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        if self.names.is_empty() {
            return self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp,
                now,
            );
        }
        let mut last = None;
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(tokio_rustls::rustls::Error::General(
            "no subjectAltNames".into(),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify: true`: any certificate is taken (the handshake's signatures
/// are still checked, so the session is with the certificate's key holder).
#[derive(Debug)]
struct Unverified(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
