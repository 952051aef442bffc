//! The federated trust root and the per-cluster intermediates, in Istio's `cacerts`
//! layout, and the signing of workload certificates from CSRs.
//!
//! ```text
//! root (offline, ECDSA P-256, 10 y, URI SAN spiffe://TD)
//!  ├─ intermediate "east" (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)
//!  │    └─ workload spiffe://TD/ns/NS/sa/SA (24 h)
//!  └─ intermediate "west" …
//! ```

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::cert::{CertInfo, parse_certs};
use crate::error::{IdentityError, Result, io};
use crate::spiffe::{SpiffeId, TrustDomain};

/// Default lifetime of a root: ten years.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a cluster intermediate: two years.
pub const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Default lifetime of a workload certificate: 24 hours, as in Istio.
pub const WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Certificates start this far in the past to absorb clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// File names of Istio's `cacerts` layout.
pub mod files {
    /// Root certificate (PEM).
    pub const ROOT_CERT: &str = "root-cert.pem";
    /// Root key (PEM), only in the offline root directory.
    pub const ROOT_KEY: &str = "root-key.pem";
    /// The cluster's intermediate certificate.
    pub const CA_CERT: &str = "ca-cert.pem";
    /// The cluster's intermediate key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// Intermediate, then root.
    pub const CERT_CHAIN: &str = "cert-chain.pem";
}

/// A CA certificate with its key, able to sign.
pub struct SigningCa {
    cert_pem: String,
    key: KeyPair,
    info: CertInfo,
    trust_domain: TrustDomain,
    /// The chain above this CA's certificate: PEM of the certificates up to the root.
    chain_above_pem: String,
}

impl fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningCa")
            .field("subject", &self.info.subject)
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &crate::cert::rfc3339(self.info.not_after))
            .finish_non_exhaustive()
    }
}

/// The offline root of a mesh: `root-cert.pem` and `root-key.pem`.
#[derive(Debug)]
pub struct RootCa(SigningCa);

/// One cluster's CA material in Istio's `cacerts` layout.
#[derive(Debug)]
pub struct ClusterCa {
    ca: SigningCa,
    root_pem: String,
}

/// A workload certificate as issued: the chain to present and when it expires.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf, intermediate(s), root, PEM.
    pub chain_pem: String,
    /// The identity in the certificate.
    pub id: SpiffeId,
    /// End of validity.
    pub not_after: SystemTime,
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from(bytes.to_vec())
}

fn dn(org: &str, cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    dn
}

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) {
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
}

fn spiffe_uri(uri: String) -> Result<SanType> {
    Ok(SanType::URI(uri.try_into()?))
}

fn new_key() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

fn read(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(io(path))
}

fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(io(&path))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&path))?;
    }
    Ok(())
}

impl SigningCa {
    /// Loads a CA certificate and key, checking that they belong together, that the
    /// certificate is a CA, valid now, and names a trust domain.
    fn load(
        cert_pem: String,
        key_pem: &str,
        chain_above_pem: String,
        origin: &str,
    ) -> Result<Self> {
        let certs = parse_certs(cert_pem.as_bytes(), origin)?;
        let info = CertInfo::parse(&certs[0], origin)?;
        if !info.is_ca {
            return Err(IdentityError::NotSpiffe {
                origin: origin.to_owned(),
                reason: "certificate is not a CA (basicConstraints CA:TRUE is missing)".into(),
            });
        }
        info.check_validity(SystemTime::now(), origin)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| IdentityError::Pem {
            origin: format!("key of {origin}"),
            reason: e.to_string(),
        })?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != info.spki {
            return Err(IdentityError::KeyMismatch {
                origin: origin.to_owned(),
            });
        }
        let trust_domain = info.ca_trust_domain().ok_or_else(|| IdentityError::NotSpiffe {
            origin: origin.to_owned(),
            reason: "CA certificate names no trust domain (URI SAN spiffe://TRUST_DOMAIN); create it with `meshctl ca init`".into(),
        })?;
        Ok(Self {
            cert_pem,
            key,
            info,
            trust_domain,
            chain_above_pem,
        })
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// Validity of anything this CA signs never outlasts the CA itself.
    fn clamp(&self, params: &mut CertificateParams) {
        let ca_end: time::OffsetDateTime = self.info.not_after.into();
        if params.not_after > ca_end {
            params.not_after = ca_end;
        }
    }
}

impl RootCa {
    /// Creates a new self-signed root for `trust_domain`.
    pub fn generate(trust_domain: &TrustDomain, lifetime: Duration) -> Result<Self> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("Isthmus", &format!("Isthmus root CA {trust_domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![spiffe_uri(trust_domain.id_uri())?];
        params.serial_number = Some(serial());
        validity(&mut params, SystemTime::now(), lifetime);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Self(SigningCa::load(
            cert_pem,
            &key.serialize_pem(),
            String::new(),
            "new root",
        )?))
    }

    /// Loads `root-cert.pem` and `root-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cert = read(dir, files::ROOT_CERT)?;
        let key = read(dir, files::ROOT_KEY)?;
        let origin = dir.join(files::ROOT_CERT).display().to_string();
        Ok(Self(SigningCa::load(cert, &key, String::new(), &origin)?))
    }

    /// Writes `root-cert.pem` and `root-key.pem` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write(dir, files::ROOT_CERT, &self.0.cert_pem, false)?;
        write(dir, files::ROOT_KEY, &self.0.key.serialize_pem(), true)
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.0.cert_pem
    }

    /// The trust domain this root serves.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.0.trust_domain
    }

    /// Details of the root certificate.
    pub fn info(&self) -> &CertInfo {
        &self.0.info
    }

    /// Creates the intermediate CA of one cluster.
    pub fn intermediate(&self, cluster: &str, lifetime: Duration) -> Result<ClusterCa> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("Isthmus", &format!("Isthmus intermediate CA {cluster}"));
        params
            .distinguished_name
            .push(DnType::LocalityName, cluster);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![spiffe_uri(self.0.trust_domain.id_uri())?];
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, SystemTime::now(), lifetime);
        self.0.clamp(&mut params);
        let cert = params.signed_by(&key, &self.0.issuer()?)?;
        let ca = SigningCa::load(
            cert.pem(),
            &key.serialize_pem(),
            self.0.cert_pem.clone(),
            &format!("intermediate for cluster {cluster}"),
        )?;
        Ok(ClusterCa {
            ca,
            root_pem: self.0.cert_pem.clone(),
        })
    }
}

impl ClusterCa {
    /// Loads a `cacerts` directory and checks it: key matches, the intermediate is a
    /// valid CA, and `cert-chain.pem` leads from it to `root-cert.pem`.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::from_pems(
            &read(dir, files::CA_CERT)?,
            &read(dir, files::CA_KEY)?,
            &read(dir, files::CERT_CHAIN)?,
            &read(dir, files::ROOT_CERT)?,
            &dir.display().to_string(),
        )
    }

    /// As [`ClusterCa::load`], from the four `cacerts` files' contents (e.g. the keys of
    /// a Kubernetes Secret); `origin` names where they came from in errors.
    pub fn from_pems(
        ca_cert: &str,
        ca_key: &str,
        cert_chain: &str,
        root_cert: &str,
        origin: &str,
    ) -> Result<Self> {
        let at = |file: &str| format!("{origin}/{file}");
        let chain_certs = parse_certs(cert_chain.as_bytes(), &at(files::CERT_CHAIN))?;
        let ca_certs = parse_certs(ca_cert.as_bytes(), &at(files::CA_CERT))?;
        if chain_certs[0] != ca_certs[0] {
            return Err(IdentityError::UntrustedChain {
                origin: at(files::CERT_CHAIN),
                reason: format!("the first certificate must be {}", files::CA_CERT),
            });
        }
        // cert-chain.pem minus its first certificate is the chain above the intermediate.
        let above: String = chain_certs[1..].iter().map(|der| pem_block(der)).collect();
        let ca = SigningCa::load(ca_cert.to_owned(), ca_key, above, &at(files::CA_CERT))?;
        let this = Self {
            ca,
            root_pem: root_cert.to_owned(),
        };
        this.check_chain()?;
        Ok(this)
    }

    /// Proves the chain as peers will see it: a throwaway workload certificate issued
    /// by this CA must verify against `root-cert.pem`.
    fn check_chain(&self) -> Result<()> {
        let bundle = crate::bundle::TrustBundle::from_pem(
            self.ca.trust_domain.clone(),
            self.root_pem.as_bytes(),
            files::ROOT_CERT,
        )?;
        let probe_id = SpiffeId::new(
            self.ca.trust_domain.clone(),
            "isthmus-system",
            "cacerts-check",
        )?;
        let csr = WorkloadCsr::generate(&probe_id)?;
        let issued = self.sign_csr(&csr.csr_pem, &probe_id, Duration::from_secs(60))?;
        let chain = parse_certs(issued.chain_pem.as_bytes(), "probe")?;
        crate::verify::TrustConfig::new(self.ca.trust_domain.clone(), bundle)
            .verify(
                &chain[0],
                &chain[1..],
                SystemTime::now(),
                crate::verify::Usage::Client,
                "probe",
            )
            .map_err(|e| IdentityError::UntrustedChain {
                origin: format!("{} → {}", files::CERT_CHAIN, files::ROOT_CERT),
                reason: format!("certificates issued with this CA would not verify: {e}"),
            })?;
        Ok(())
    }

    /// Writes the four `cacerts` files into `dir` (the key with mode 0600).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write(dir, files::CA_CERT, &self.ca.cert_pem, false)?;
        write(dir, files::CA_KEY, &self.ca.key.serialize_pem(), true)?;
        write(dir, files::CERT_CHAIN, &self.cert_chain_pem(), false)?;
        write(dir, files::ROOT_CERT, &self.root_pem, false)
    }

    /// A Kubernetes Secret named `cacerts` holding the four files, as istiod reads it.
    pub fn secret_manifest(&self, namespace: &str) -> String {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cacerts\n  namespace: {namespace}\n  labels:\n    app.kubernetes.io/part-of: isthmus\ntype: Opaque\ndata:\n  {}: {}\n  {}: {}\n  {}: {}\n  {}: {}\n",
            files::CA_CERT,
            b64(&self.ca.cert_pem),
            files::CA_KEY,
            b64(&self.ca.key.serialize_pem()),
            files::CERT_CHAIN,
            b64(&self.cert_chain_pem()),
            files::ROOT_CERT,
            b64(&self.root_pem),
        )
    }

    /// The intermediate followed by the certificates above it.
    pub fn cert_chain_pem(&self) -> String {
        format!("{}{}", self.ca.cert_pem, self.ca.chain_above_pem)
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The trust domain this CA issues identities in.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.ca.trust_domain
    }

    /// Details of the intermediate certificate.
    pub fn info(&self) -> &CertInfo {
        &self.ca.info
    }

    /// Signs a workload CSR for the identity the caller was authenticated as.
    ///
    /// The CSR's own SANs are not trusted: a CSR that names any identity other than
    /// `authorized` is refused, and the certificate carries `authorized` alone.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        authorized: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        if authorized.trust_domain() != &self.ca.trust_domain {
            return Err(IdentityError::CsrRefused {
                reason: format!(
                    "this CA issues identities in trust domain {}, not {}",
                    self.ca.trust_domain,
                    authorized.trust_domain()
                ),
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            IdentityError::CsrRefused {
                reason: format!("malformed CSR: {e}"),
            }
        })?;
        let wanted = authorized.to_string();
        for san in &csr.params.subject_alt_names {
            let ok = matches!(san, SanType::URI(u) if u.as_str() == wanted);
            if !ok {
                return Err(IdentityError::CsrRefused {
                    reason: format!(
                        "the CSR asks for {san:?} but the caller is authenticated as {wanted}"
                    ),
                });
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Isthmus");
        params.subject_alt_names = vec![spiffe_uri(wanted)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, SystemTime::now(), ttl);
        self.ca.clamp(&mut params);
        let cert = params.signed_by(&csr.public_key, &self.ca.issuer()?)?;
        let not_after: SystemTime = params.not_after.into();
        Ok(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.cert_chain_pem()),
            id: authorized.clone(),
            not_after,
        })
    }
}

/// A workload key and its certificate made in one place: for file-mode workloads,
/// tools and tests. Sidecars keep their key to themselves and send only the CSR.
#[derive(Debug, Clone)]
pub struct IssuedWorkload {
    /// Leaf, intermediate(s), root, PEM.
    pub chain_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// End of validity.
    pub not_after: SystemTime,
}

impl IssuedWorkload {
    /// The certificate as a workload loads it, checked like any other.
    pub fn load(&self, origin: &str) -> Result<crate::tls::WorkloadCert> {
        crate::tls::WorkloadCert::from_pem(&self.chain_pem, &self.key_pem, origin)
    }

    /// Writes `cert-chain.pem` and `key.pem` (mode 0600) into `dir`, the files the
    /// sidecar's `--cert-dir` reads.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write(dir, "cert-chain.pem", &self.chain_pem, false)?;
        write(dir, "key.pem", &self.key_pem, true)
    }
}

impl ClusterCa {
    /// Makes a key and a CSR for `id` and signs it: [`WorkloadCsr::generate`] then
    /// [`ClusterCa::sign_csr`].
    pub fn issue_workload(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedWorkload> {
        let csr = WorkloadCsr::generate(id)?;
        let issued = self.sign_csr(&csr.csr_pem, id, ttl)?;
        Ok(IssuedWorkload {
            chain_pem: issued.chain_pem,
            key_pem: csr.key_pem,
            not_after: issued.not_after,
        })
    }
}

/// A fresh ECDSA P-256 key and a CSR for `id`, as a workload (or its sidecar) makes them.
#[derive(Debug, Clone)]
pub struct WorkloadCsr {
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate signing request, PEM.
    pub csr_pem: String,
}

impl WorkloadCsr {
    /// Generates a key and a CSR carrying `id` as URI SAN.
    pub fn generate(id: &SpiffeId) -> Result<Self> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![spiffe_uri(id.to_string())?];
        let csr = params.serialize_request(&key)?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            csr_pem: csr.pem()?,
        })
    }
}

/// PEM text of one DER certificate.
pub fn pem_block(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
