//! Key sets that RequestAuthentications name by `jwksUri` (or that their issuer's OpenID
//! configuration names, when they give neither `jwks` nor `jwksUri`), fetched off the request path
//! as [`crate::fetched`] fetches values: a new URI at once and every [`REFRESH`] after,
//! over HTTPS with the system's roots (or plain HTTP). A fetch that fails, or a
//! document that is not a key set, keeps the last good keys and is tried again
//! shortly; new keys swap in a state whose rules hold them. Until a URI's first keys
//! arrive, its issuer's tokens cannot be verified (401), as in Envoy.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::BodyExt;

use crate::fetched::Fetched;
use crate::jwt::Keys;
use crate::state::StateStore;

/// The path of an issuer's OpenID configuration (OpenID Connect Discovery 1.0), whose
/// `jwks_uri` names its key set: a rule with neither `jwks` nor `jwksUri` is fetched
/// through it.
pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";

/// How often a key set is fetched again (istiod's default refresh of JWKS).
const REFRESH: Duration = Duration::from_secs(20 * 60);
/// When a failed fetch is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A fetched key set: the document as served (what tells a new set from the same one)
/// and its keys.
#[derive(Clone)]
pub struct KeySet {
    document: String,
    /// The keys, read once per fetch.
    pub keys: Arc<Keys>,
}

impl PartialEq for KeySet {
    fn eq(&self, other: &Self) -> bool {
        self.document == other.document
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// The key sets wanted and their last good keys; see the module documentation.
#[derive(Debug, Default)]
pub struct JwksCache {
    uris: Fetched<KeySet>,
}

impl JwksCache {
    /// The keys last fetched from `uri` (none before the first fetch); a URI not seen
    /// before is fetched by the background task right away.
    pub fn keys(&self, uri: &str) -> Option<Arc<Keys>> {
        self.uris.get(uri).map(|k| k.keys)
    }

    /// Forgets every URI but `wanted`.
    pub fn retain(&self, wanted: &HashSet<String>) {
        self.uris.retain(wanted);
    }

    /// Each URI, whether keys are held, and the last fetch's failure (admin endpoint).
    pub fn report(&self) -> Vec<(String, bool, Option<String>)> {
        self.uris
            .report()
            .into_iter()
            .map(|(u, k, e)| (u, k.is_some(), e))
            .collect()
    }

    /// Fetches wanted key sets as they come due, for as long as `store` exists.
    pub async fn run(store: Weak<StateStore>) {
        let Some(cache) = store.upgrade().map(|s| s.jwks().clone()) else {
            return;
        };
        let client = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => {
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build::<_, http_body_util::Empty<bytes::Bytes>>(
                    b.https_or_http().enable_http1().build(),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "no system roots: jwksUri key sets are not fetched");
                return;
            }
        };
        let fetch = |uri: String| {
            let client = &client;
            async move {
                let mut document = tokio::time::timeout(FETCH_TIMEOUT, get(client, &uri))
                    .await
                    .map_err(|_| "timed out".to_owned())??;
                if uri.ends_with(OPENID_CONFIGURATION) {
                    let config: serde_json::Value = serde_json::from_str(&document)
                        .map_err(|e| format!("the OpenID configuration is not JSON: {e}"))?;
                    let keys_uri = config["jwks_uri"]
                        .as_str()
                        .ok_or("the OpenID configuration names no jwks_uri")?;
                    document = tokio::time::timeout(FETCH_TIMEOUT, get(client, keys_uri))
                        .await
                        .map_err(|_| format!("{keys_uri}: timed out"))?
                        .map_err(|e| format!("{keys_uri}: {e}"))?;
                }
                let keys = Arc::new(crate::jwt::parse_jwks(&document)?);
                Ok((KeySet { document, keys }, REFRESH))
            }
        };
        cache.uris.run(store, "JWKS", RETRY, fetch).await;
    }
}

/// The body of `uri`, answered with a success status.
async fn get<C>(
    client: &hyper_util::client::legacy::Client<C, http_body_util::Empty<bytes::Bytes>>,
    uri: &str,
) -> Result<String, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let uri: http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    let resp = client.get(uri).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
}
