//! The workload CA: signs CSRs with the cluster's `cacerts` for the identity the
//! caller's token proves.
//!
//! Kubernetes mode checks an audience-bound projected service-account token with a
//! TokenReview; file mode looks the token up in a bootstrap token file. Either way the
//! certificate is for `spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT` of the token, and
//! a CSR that names any other identity is refused.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use mesh_identity::rotation::{CertificateSource, Renewed};
use mesh_identity::{ClusterCa, Identity, SpiffeId, TrustConfig, WorkloadCert};
use mesh_proto::ca::{SignRequest, SignResponse, certificates_server::Certificates};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::{CaCerts, Source};

/// The audience workload tokens must be minted for (as Istio's `istio-ca`).
pub const TOKEN_AUDIENCE: &str = "isthmus-ca";
/// Longest certificate the CA issues.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// How callers prove who they are.
#[derive(Clone)]
pub enum Authenticator {
    /// TokenReview against the cluster's API server, with this audience.
    Kubernetes {
        /// Client for the cluster.
        client: kube::Client,
        /// Audience the token must carry.
        audience: String,
    },
    /// Bootstrap tokens: token → (namespace, service account).
    Tokens(HashMap<String, (String, String)>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kubernetes { audience, .. } => write!(f, "TokenReview(audience {audience})"),
            Self::Tokens(t) => write!(f, "bootstrap tokens ({})", t.len()),
        }
    }
}

impl Authenticator {
    /// Reads a bootstrap token file: one `TOKEN NAMESPACE/SERVICE_ACCOUNT` per line,
    /// `#` comments.
    pub fn from_token_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading bootstrap tokens {}", path.display()))?;
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line.split_once(char::is_whitespace).and_then(|(t, id)| {
                let (ns, sa) = id.trim().split_once('/')?;
                Some((t.to_owned(), (ns.to_owned(), sa.to_owned())))
            });
            let Some((token, id)) = parsed else {
                anyhow::bail!(
                    "{}:{}: expected `TOKEN NAMESPACE/SERVICE_ACCOUNT`",
                    path.display(),
                    i + 1
                );
            };
            tokens.insert(token, id);
        }
        Ok(Self::Tokens(tokens))
    }

    /// The (namespace, service account) the token proves.
    pub async fn authenticate(&self, token: &str) -> Result<(String, String), String> {
        match self {
            Self::Tokens(t) => t
                .get(token)
                .cloned()
                .ok_or_else(|| "unknown bootstrap token".to_owned()),
            Self::Kubernetes { client, audience } => {
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_owned()),
                        audiences: Some(vec![audience.clone()]),
                    },
                    ..Default::default()
                };
                let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
                let result = api
                    .create(&kube::api::PostParams::default(), &review)
                    .await
                    .map_err(|e| format!("TokenReview failed: {e}"))?;
                let status = result.status.unwrap_or_default();
                if status.authenticated != Some(true) {
                    return Err(format!(
                        "token not authenticated: {}",
                        status.error.unwrap_or_else(|| "no reason given".into())
                    ));
                }
                if !status.audiences.unwrap_or_default().contains(audience) {
                    return Err(format!("the token is not for audience {audience}"));
                }
                let user = status.user.and_then(|u| u.username).unwrap_or_default();
                let rest = user
                    .strip_prefix("system:serviceaccount:")
                    .ok_or_else(|| format!("{user:?} is not a service account"))?;
                let (ns, sa) = rest
                    .split_once(':')
                    .ok_or_else(|| format!("malformed service account user {user:?}"))?;
                Ok((ns.to_owned(), sa.to_owned()))
            }
        }
    }
}

/// The cluster CA as it is now: replaced whole when `cacerts` changes.
pub type SharedCa = Arc<ArcSwap<ClusterCa>>;

/// The CA service.
#[derive(Debug, Clone)]
pub struct CaService {
    ca: SharedCa,
    auth: Authenticator,
    trust: Identity,
    metrics: Arc<Metrics>,
    tracing: mesh_telemetry::trace::Tracing,
}

/// Trust domain → roots (PEM) of `trust`: the local domain and every federated one,
/// as the CA hands them out with each certificate.
pub fn trust_roots(trust: &TrustConfig) -> BTreeMap<String, String> {
    std::iter::once(&trust.local)
        .chain(&trust.federated)
        .map(|td| (td.to_string(), trust.bundle.to_pem(td)))
        .filter(|(_, pem)| !pem.is_empty())
        .collect()
}

impl CaService {
    /// A CA signing with `ca`, authenticating with `auth`, handing out the full trust
    /// bundle `trust` holds now (the local roots, two during a root rotation, and those
    /// of every linked trust domain) with each certificate.
    pub fn new(ca: SharedCa, auth: Authenticator, trust: Identity, metrics: Arc<Metrics>) -> Self {
        Self {
            ca,
            auth,
            trust,
            metrics,
            tracing: mesh_telemetry::trace::Tracing::disabled(),
        }
    }

    /// Exports a span per certificate request to `tracing`.
    pub fn with_tracing(mut self, tracing: mesh_telemetry::trace::Tracing) -> Self {
        self.tracing = tracing;
        self
    }

    async fn sign_inner(&self, request: Request<SignRequest>) -> Result<SignResponse, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("no `authorization: Bearer TOKEN` metadata"))?
            .to_owned();
        let (ns, sa) = self
            .auth
            .authenticate(&token)
            .await
            .map_err(Status::unauthenticated)?;
        let ca = self.ca.load_full();
        let id = SpiffeId::new(ca.trust_domain().clone(), &ns, &sa)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let req = request.into_inner();
        let ttl = match req.validity_seconds {
            s if s > 0 => Duration::from_secs(s as u64).min(MAX_TTL),
            _ => MAX_TTL,
        };
        let issued = ca
            .sign_csr(&req.csr_pem, &id, ttl)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        tracing::info!(identity = %id, not_after = %mesh_identity::cert::rfc3339(issued.not_after), "workload certificate signed");
        Ok(SignResponse {
            cert_chain_pem: issued.chain_pem,
            trust_roots: trust_roots(&self.trust.trust()).into_iter().collect(),
        })
    }
}

#[tonic::async_trait]
impl Certificates for CaService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let peer = request
            .extensions()
            .get::<crate::server::PeerInfo>()
            .map(|p| p.address.to_string())
            .unwrap_or_default();
        let mut span = self.tracing.start(|| "ca sign", true, None);
        if span.is_recording() {
            span.set([("peer.address", peer.clone())]);
        }
        match self.sign_inner(request).await {
            Ok(r) => {
                self.metrics.csr_signed.inc();
                span.end(200, "-");
                Ok(Response::new(r))
            }
            Err(status) => {
                self.metrics.csr_refused.inc();
                span.set([("reason", status.message().to_owned())]);
                span.end(403, "UAEX");
                tracing::warn!(peer = %peer, reason = %status.message(), "certificate request refused");
                Err(status)
            }
        }
    }
}

/// Discovery's own certificate, issued and renewed from the cluster CA it holds.
#[derive(Debug, Clone)]
pub struct LocalIssuer {
    /// The cluster CA.
    pub ca: SharedCa,
    /// Lifetime of each certificate.
    pub ttl: Duration,
}

impl LocalIssuer {
    /// A certificate for `id` from the CA as it is now.
    pub fn issue(&self, id: &SpiffeId) -> mesh_identity::Result<WorkloadCert> {
        self.ca
            .load()
            .issue_workload(id, self.ttl)?
            .load("discovery's own certificate")
    }
}

impl CertificateSource for LocalIssuer {
    async fn fetch(&self, identity: &Identity) -> mesh_identity::Result<Renewed> {
        self.issue(identity.cert().id()).map(Renewed::from)
    }
}

/// Reads the cluster CA from where `cacerts` says.
pub async fn load_cacerts(
    cacerts: &CaCerts,
    source: &Source,
    namespace: &str,
) -> anyhow::Result<ClusterCa> {
    match (cacerts, source) {
        (CaCerts::Dir(dir), _) => Ok(ClusterCa::load(dir)?),
        (CaCerts::Secret(name), Source::Kubernetes(client)) => {
            let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
                kube::Api::namespaced(client.clone(), namespace);
            let secret = api
                .get(name)
                .await
                .with_context(|| format!("reading Secret {}/{name} (the cluster CA)", namespace))?;
            let data = secret.data.unwrap_or_default();
            let get = |k: &str| -> anyhow::Result<String> {
                let v = data
                    .get(k)
                    .with_context(|| format!("Secret {}/{name} has no key {k}", namespace))?;
                Ok(String::from_utf8_lossy(&v.0).into_owned())
            };
            Ok(ClusterCa::from_pems(
                &get("ca-cert.pem")?,
                &get("ca-key.pem")?,
                &get("cert-chain.pem")?,
                &get("root-cert.pem")?,
                &format!("Secret {}/{name}", namespace),
            )?)
        }
        (CaCerts::Secret(_), Source::Files(_) | Source::Api) => {
            anyhow::bail!("a cacerts Secret needs the Kubernetes registry; give a directory")
        }
    }
}

/// Follows `cacerts` (Istio's plugged-in CA, reloaded as istiod does): polled every
/// `interval`; a changed set that loads and checks replaces the CA, discovery's own
/// certificate is reissued under it and its `root-cert.pem` becomes the local roots
/// (so a root rotation A → A+B → B needs no restart); a changed set that does not
/// load is refused with the reason and the CA in force stays.
pub async fn follow_cacerts(
    cacerts: CaCerts,
    source: Source,
    namespace: String,
    issuer: LocalIssuer,
    trust: Arc<crate::trust::TrustSources>,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    let fingerprint = |ca: &ClusterCa| format!("{}{}", ca.cert_chain_pem(), ca.root_pem());
    let mut current = fingerprint(&issuer.ca.load());
    let mut refused = String::new();
    loop {
        tokio::time::sleep(interval).await;
        let loaded = match load_cacerts(&cacerts, &source, &namespace).await {
            Ok(ca) => ca,
            Err(e) => {
                let reason = format!("{e:#}");
                if reason != refused {
                    metrics.cacerts_refused.inc();
                    tracing::error!(error = %reason, "the changed cacerts is refused; the CA in force stays");
                    refused = reason;
                }
                continue;
            }
        };
        let next = fingerprint(&loaded);
        if next == current {
            continue;
        }
        // Discovery's own certificate from the new CA, under the new roots, before the
        // CA signs anything for workloads.
        let adopted = loaded
            .issue_workload(trust.identity().cert().id(), issuer.ttl)
            .and_then(|i| i.load("discovery's own certificate"))
            .map_err(|e| e.to_string())
            .and_then(|cert| trust.set_local(loaded.root_pem(), cert));
        match adopted {
            Ok(()) => {
                metrics.cacerts_reloaded.inc();
                refused.clear();
                current = next;
                tracing::info!(intermediate = %loaded.info().subject, roots = loaded.root_pem().matches("BEGIN CERTIFICATE").count(), "cacerts changed: the new CA is in force");
                issuer.ca.store(Arc::new(loaded));
            }
            Err(e) => {
                if e != refused {
                    metrics.cacerts_refused.inc();
                    tracing::error!(error = %e, "the changed cacerts is refused; the CA in force stays");
                    refused = e;
                }
            }
        }
    }
}
