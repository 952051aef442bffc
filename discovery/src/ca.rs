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
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use mesh_identity::rotation::CertificateSource;
use mesh_identity::{ClusterCa, SpiffeId, WorkloadCert};
use mesh_proto::ca::{SignRequest, SignResponse, certificates_server::Certificates};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;

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

/// The CA service.
#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<ClusterCa>,
    auth: Authenticator,
    trust_roots: Arc<BTreeMap<String, String>>,
    metrics: Arc<Metrics>,
    tracing: mesh_telemetry::trace::Tracing,
}

impl CaService {
    /// A CA signing with `ca`, authenticating with `auth`, handing out `trust_roots`
    /// (trust domain → PEM) with each certificate.
    pub fn new(
        ca: Arc<ClusterCa>,
        auth: Authenticator,
        trust_roots: BTreeMap<String, String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            ca,
            auth,
            trust_roots: Arc::new(trust_roots),
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
        let id = SpiffeId::new(self.ca.trust_domain().clone(), &ns, &sa)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let req = request.into_inner();
        let ttl = match req.validity_seconds {
            s if s > 0 => Duration::from_secs(s as u64).min(MAX_TTL),
            _ => MAX_TTL,
        };
        let issued = self
            .ca
            .sign_csr(&req.csr_pem, &id, ttl)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        tracing::info!(identity = %id, not_after = %mesh_identity::cert::rfc3339(issued.not_after), "workload certificate signed");
        Ok(SignResponse {
            cert_chain_pem: issued.chain_pem,
            trust_roots: self
                .trust_roots
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
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
    pub ca: Arc<ClusterCa>,
    /// Lifetime of each certificate.
    pub ttl: Duration,
}

impl CertificateSource for LocalIssuer {
    async fn fetch(&self, current: &WorkloadCert) -> mesh_identity::Result<WorkloadCert> {
        self.ca
            .issue_workload(current.id(), self.ttl)?
            .load("discovery's own certificate")
    }
}
