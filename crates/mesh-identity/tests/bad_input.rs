//! Bad certificates, keys, bundles and CSRs are refused with a reason that names the
//! file or peer and what is wrong, and the last good material stays in force.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use mesh_identity::ca::files;
use mesh_identity::{
    ClusterCa, Identity, IdentityError, SpiffeId, TrustBundle, WorkloadCert, WorkloadCsr,
};
use rcgen::{CertificateParams, DnType, Issuer, KeyPair, SanType};
use support::*;

/// Issues a leaf directly with rcgen from a cacerts directory, with any validity and
/// SANs, to make certificates the CA itself would never issue.
fn forge(
    cacerts: &Path,
    sans: Vec<SanType>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> (String, String) {
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(cacerts.join(files::CA_KEY)).unwrap()).unwrap();
    let ca_cert = std::fs::read_to_string(cacerts.join(files::CA_CERT)).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "test");
    params.subject_alt_names = sans;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let chain = format!(
        "{}{}",
        cert.pem(),
        std::fs::read_to_string(cacerts.join(files::CERT_CHAIN)).unwrap()
    );
    (chain, key.serialize_pem())
}

fn spiffe_san(id: &str) -> SanType {
    SanType::URI(id.try_into().unwrap())
}

fn cacerts(mesh: &Mesh) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    mesh.east.write(dir.path()).unwrap();
    dir
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn expired_certificate_is_refused_with_its_expiry() {
    let mesh = Mesh::new(TD);
    let dir = cacerts(&mesh);
    let now = SystemTime::now();
    let (chain, key) = forge(
        dir.path(),
        vec![spiffe_san("spiffe://mesh.example/ns/a/sa/b")],
        now - 3 * HOUR,
        now - HOUR,
    );
    let err = WorkloadCert::from_pem(&chain, &key, "/etc/certs/cert-chain.pem").unwrap_err();
    assert!(matches!(err, IdentityError::Expired { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("/etc/certs/cert-chain.pem: certificate expired at "),
        "{msg}"
    );
}

#[test]
fn not_yet_valid_certificate_is_refused() {
    let mesh = Mesh::new(TD);
    let dir = cacerts(&mesh);
    let now = SystemTime::now();
    let (chain, key) = forge(
        dir.path(),
        vec![spiffe_san("spiffe://mesh.example/ns/a/sa/b")],
        now + HOUR,
        now + 2 * HOUR,
    );
    let msg = WorkloadCert::from_pem(&chain, &key, "cert.pem")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cert.pem: certificate is not valid before"),
        "{msg}"
    );
}

#[test]
fn key_not_matching_the_certificate_is_refused() {
    let mesh = Mesh::new(TD);
    let id = SpiffeId::new(TD.parse().unwrap(), "a", "b").unwrap();
    let csr = WorkloadCsr::generate(&id).unwrap();
    let issued = mesh.east.sign_csr(&csr.csr_pem, &id, HOUR).unwrap();
    let other_key = WorkloadCsr::generate(&id).unwrap().key_pem;
    let msg = WorkloadCert::from_pem(&issued.chain_pem, &other_key, "cert.pem")
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "cert.pem: the private key does not match the certificate's public key"
    );
}

#[test]
fn certificate_without_spiffe_id_is_refused() {
    let mesh = Mesh::new(TD);
    let dir = cacerts(&mesh);
    let now = SystemTime::now();
    let (chain, key) = forge(
        dir.path(),
        vec![SanType::DnsName("reviews.default.svc".try_into().unwrap())],
        now - HOUR,
        now + HOUR,
    );
    let msg = WorkloadCert::from_pem(&chain, &key, "cert.pem")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cert.pem: certificate has no SPIFFE ID"),
        "{msg}"
    );
    assert!(msg.contains("reviews.default.svc"), "{msg}");
}

#[test]
fn malformed_pem_is_refused_naming_the_file() {
    let msg = WorkloadCert::from_pem(
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        "",
        "cert.pem",
    )
    .unwrap_err()
    .to_string();
    assert!(msg.starts_with("cert.pem: malformed PEM"), "{msg}");
    let msg = WorkloadCert::from_pem("hello", "", "cert.pem")
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "cert.pem: malformed PEM: no CERTIFICATE block found");
    let msg = TrustBundle::from_pem(TD.parse().unwrap(), b"", "root-cert.pem")
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("root-cert.pem: malformed PEM"), "{msg}");
}

#[test]
fn chain_not_reaching_the_bundle_and_unknown_trust_domain_are_refused() {
    let mesh = Mesh::new(TD);
    let other = Mesh::new(TD);
    let cert = workload(&other.east, "a", "b");
    let err = Identity::new(cert, mesh.trust()).unwrap_err().to_string();
    assert!(
        err.contains("certificate chain does not reach a trusted root"),
        "{err}"
    );

    let foreign = Mesh::new("other.example");
    let err = Identity::new(workload(&foreign.east, "a", "b"), mesh.trust())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "trust domain \"other.example\" is not accepted here (accepted: mesh.example)"
        ),
        "{err}"
    );
}

#[test]
fn csr_for_another_identity_is_refused() {
    let mesh = Mesh::new(TD);
    let asked = SpiffeId::new(TD.parse().unwrap(), "kube-system", "admin").unwrap();
    let authenticated = SpiffeId::new(TD.parse().unwrap(), "shop", "frontend").unwrap();
    let csr = WorkloadCsr::generate(&asked).unwrap();
    let msg = mesh
        .east
        .sign_csr(&csr.csr_pem, &authenticated, HOUR)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("asks for"), "{msg}");
    assert!(
        msg.contains("authenticated as spiffe://mesh.example/ns/shop/sa/frontend"),
        "{msg}"
    );

    let foreign = SpiffeId::new("other.example".parse().unwrap(), "shop", "frontend").unwrap();
    let csr = WorkloadCsr::generate(&foreign).unwrap();
    let msg = mesh
        .east
        .sign_csr(&csr.csr_pem, &foreign, HOUR)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("issues identities in trust domain mesh.example"),
        "{msg}"
    );

    let msg = mesh
        .east
        .sign_csr("garbage", &authenticated, HOUR)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("malformed CSR"), "{msg}");
}

#[test]
fn issued_certificate_carries_only_the_authorized_identity_and_24h_by_default() {
    let mesh = Mesh::new(TD);
    let id = SpiffeId::new(TD.parse().unwrap(), "shop", "frontend").unwrap();
    let csr = WorkloadCsr::generate(&id).unwrap();
    let issued = mesh
        .east
        .sign_csr(&csr.csr_pem, &id, mesh_identity::ca::WORKLOAD_TTL)
        .unwrap();
    let cert = WorkloadCert::from_pem(&issued.chain_pem, &csr.key_pem, "issued").unwrap();
    assert_eq!(
        cert.info().uris,
        ["spiffe://mesh.example/ns/shop/sa/frontend"]
    );
    let left = cert
        .info()
        .not_after
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(23 * 3600 + 3500) && left <= Duration::from_secs(24 * 3600),
        "{left:?}"
    );
    // The chain holds leaf, intermediate and root.
    assert_eq!(
        mesh_identity::cert::parse_certs(issued.chain_pem.as_bytes(), "x")
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn cacerts_directory_round_trips_and_a_broken_chain_is_refused() {
    let mesh = Mesh::new(TD);
    let dir = cacerts(&mesh);
    let loaded = ClusterCa::load(dir.path()).unwrap();
    assert_eq!(loaded.trust_domain().as_str(), TD);
    assert!(loaded.info().subject.contains("east"));
    // A certificate from the reloaded CA verifies under the original trust.
    Identity::new(workload(&loaded, "a", "b"), mesh.trust()).unwrap();

    // root-cert.pem from another mesh: refused, naming the files.
    let other = Mesh::new(TD);
    std::fs::write(dir.path().join(files::ROOT_CERT), other.root.cert_pem()).unwrap();
    let msg = ClusterCa::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("cert-chain.pem → root-cert.pem"), "{msg}");

    // ca-key.pem from another CA: refused.
    let dir = cacerts(&mesh);
    other.west.write(&dir.path().join("other")).unwrap();
    std::fs::copy(
        dir.path().join("other").join(files::CA_KEY),
        dir.path().join(files::CA_KEY),
    )
    .unwrap();
    let msg = ClusterCa::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("private key does not match"), "{msg}");

    // A missing file is named.
    std::fs::remove_file(dir.path().join(files::CERT_CHAIN)).unwrap();
    let msg = ClusterCa::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("cert-chain.pem"), "{msg}");
}

#[test]
fn spiffe_bundle_document_errors_are_reported() {
    let td: mesh_identity::TrustDomain = TD.parse().unwrap();
    for (doc, reason) in [
        ("{}", "not a SPIFFE bundle document"),
        (r#"{"keys":[]}"#, "no x509-svid key"),
        (
            r#"{"keys":[{"kty":"EC","use":"x509-svid","x5c":["!!"]}]}"#,
            "not base64",
        ),
    ] {
        let msg = TrustBundle::from_spiffe_json(td.clone(), doc, "bundle.json")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("bundle.json: invalid trust bundle"),
            "{msg}"
        );
        assert!(msg.contains(reason), "{msg}");
    }
    // A JWK that does not match its certificate is refused.
    let mesh = Mesh::new(TD);
    let doc = mesh.trust().bundle.to_spiffe_json(&td, 1, 60).unwrap();
    let other = Mesh::new(TD)
        .trust()
        .bundle
        .to_spiffe_json(&td, 1, 60)
        .unwrap();
    let mut d: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let o: serde_json::Value = serde_json::from_str(&other).unwrap();
    d["keys"][0]["x"] = o["keys"][0]["x"].clone();
    let msg = TrustBundle::from_spiffe_json(td, &d.to_string(), "bundle.json")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("does not match the public key"), "{msg}");
}
