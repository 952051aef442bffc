//! The workload end of discovery's CA (`isthmus.ca.v1`): a fresh key and CSR for the
//! workload's SPIFFE ID, sent with the workload's token; the key never leaves the
//! process. Also the renewal source for [`mesh_identity::rotation::run_renewal`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_identity::rotation::{CertificateSource, Renewed};
use mesh_identity::{
    Identity, IdentityError, SpiffeId, TrustBundle, TrustConfig, TrustDomain, WorkloadCert,
    WorkloadCsr,
};
use mesh_proto::ca::SignRequest;
use mesh_proto::ca::certificates_client::CertificatesClient;

/// How to reach the CA and prove who the workload is.
#[derive(Debug, Clone)]
pub struct CaClient {
    /// Discovery's address (15012).
    pub address: SocketAddr,
    /// The roots discovery's own certificate chains to (the bootstrap root, as Istio's
    /// `istio-ca-root-cert` ConfigMap).
    pub bootstrap_trust: TrustConfig,
    /// Discovery's identity.
    pub discovery_id: SpiffeId,
    /// File holding the token (re-read at every request: projected tokens rotate).
    pub token_file: PathBuf,
    /// Requested certificate lifetime.
    pub ttl: Duration,
}

/// A signed certificate with the trust the CA hands out.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The workload certificate with its key.
    pub cert: WorkloadCert,
    /// Trust: the local trust domain and every federated one the CA listed.
    pub trust: TrustConfig,
}

impl CaClient {
    /// Requests a certificate for `id`, verifying the CA under the bootstrap trust.
    pub async fn request(&self, id: &SpiffeId) -> Result<Issued, String> {
        self.request_with(id, self.bootstrap_trust.clone()).await
    }

    /// Requests a certificate for `id`, verifying the CA under `trust`.
    pub async fn request_with(&self, id: &SpiffeId, trust: TrustConfig) -> Result<Issued, String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("reading token {}: {e}", self.token_file.display()))?;
        let csr = WorkloadCsr::generate(id).map_err(|e| e.to_string())?;
        let tls = Arc::new(mesh_identity::tls::anonymous_client_config(
            trust,
            vec![self.discovery_id.clone()],
            &[b"h2"],
        ));
        let channel = mesh_net::channel::tls_channel(self.address, tls)
            .await
            .map_err(|e| {
                format!(
                    "connecting to the CA at {}: {}",
                    self.address,
                    mesh_net::channel::source_chain(&e)
                )
            })?;
        let mut request = tonic::Request::new(SignRequest {
            csr_pem: csr.csr_pem.clone(),
            validity_seconds: self.ttl.as_secs() as i64,
        });
        let bearer = format!("Bearer {}", token.trim());
        request.metadata_mut().insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| "the token has characters not allowed in a header".to_owned())?,
        );
        let response = CertificatesClient::new(channel)
            .sign(request)
            .await
            .map_err(|s| format!("the CA refused: {}", s.message()))?
            .into_inner();
        let origin = format!("CA at {}", self.address);
        let cert = WorkloadCert::from_pem(&response.cert_chain_pem, &csr.key_pem, &origin)
            .map_err(|e| e.to_string())?;
        let trust = trust_from_roots(id.trust_domain(), &response.trust_roots, &origin)
            .map_err(|e| e.to_string())?;
        Ok(Issued { cert, trust })
    }
}

/// A trust configuration from trust domain → roots PEM: the local domain and the
/// others as federated.
pub fn trust_from_roots(
    local: &TrustDomain,
    roots: &std::collections::HashMap<String, String>,
    origin: &str,
) -> Result<TrustConfig, IdentityError> {
    let mut bundle = TrustBundle::new();
    let sorted: BTreeMap<_, _> = roots.iter().collect();
    let mut federated = Vec::new();
    for (td, pem) in sorted {
        let td: TrustDomain = td.parse()?;
        bundle.add_pem(td.clone(), pem.as_bytes(), origin)?;
        if &td != local {
            federated.push(td);
        }
    }
    let mut trust = TrustConfig::new(local.clone(), bundle);
    for td in federated {
        trust = trust.with_federated(td);
    }
    Ok(trust)
}

/// Renewals verify the CA under the workload's current trust (what the CA handed out
/// last, so that discovery may move to a new root) and adopt the trust the CA hands
/// out with the certificate.
impl CertificateSource for CaClient {
    async fn fetch(&self, identity: &Identity) -> mesh_identity::Result<Renewed> {
        let trust = identity.trust().as_ref().clone();
        self.request_with(identity.cert().id(), trust)
            .await
            .map(|i| Renewed {
                cert: i.cert,
                trust: Some(i.trust),
            })
            .map_err(|reason| IdentityError::CsrRefused { reason })
    }
}
