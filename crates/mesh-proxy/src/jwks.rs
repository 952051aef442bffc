//! Key sets that RequestAuthentications name by `jwksUri`, fetched off the request
//! path. Installing a config marks each URI wanted; a background task
//! ([`JwksCache::run`]) fetches new URIs at once and every URI again every
//! [`REFRESH`], over HTTPS with the system's roots (or plain HTTP). A fetch that fails,
//! or a document that is not a key set, keeps the last good keys and is tried again
//! shortly. Until a URI's first keys arrive, its issuer's tokens cannot be verified
//! (401), as in Envoy.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::jwt::Keys;
use crate::state::StateStore;

/// How often a key set is fetched again (istiod's default refresh of JWKS).
const REFRESH: Duration = Duration::from_secs(20 * 60);
/// When a failed fetch is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Entry {
    keys: Option<Arc<Keys>>,
    due: Instant,
    error: Option<String>,
}

/// The key sets wanted and their last good keys; see the module documentation.
#[derive(Debug, Default)]
pub struct JwksCache {
    uris: Mutex<HashMap<String, Entry>>,
    wake: tokio::sync::Notify,
}

impl JwksCache {
    /// The keys last fetched from `uri` (none before the first fetch); a URI not seen
    /// before is fetched by the background task right away.
    pub fn keys(&self, uri: &str) -> Option<Arc<Keys>> {
        let mut uris = self.uris.lock().ok()?;
        if let Some(e) = uris.get(uri) {
            return e.keys.clone();
        }
        uris.insert(
            uri.to_owned(),
            Entry {
                keys: None,
                due: Instant::now(),
                error: None,
            },
        );
        self.wake.notify_one();
        None
    }

    /// Forgets every URI but `wanted`.
    pub fn retain(&self, wanted: &HashSet<String>) {
        if let Ok(mut uris) = self.uris.lock() {
            uris.retain(|u, _| wanted.contains(u));
        }
    }

    /// Each URI, whether keys are held, and the last fetch's failure (admin endpoint).
    pub fn report(&self) -> Vec<(String, bool, Option<String>)> {
        let Ok(uris) = self.uris.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = uris
            .iter()
            .map(|(u, e)| (u.clone(), e.keys.is_some(), e.error.clone()))
            .collect();
        out.sort();
        out
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
        loop {
            let now = Instant::now();
            let due: Vec<String> = cache
                .uris
                .lock()
                .map(|u| {
                    u.iter()
                        .filter(|(_, e)| e.due <= now)
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            for uri in due {
                let fetched = fetch(&client, &uri).await;
                let Ok(mut uris) = cache.uris.lock() else {
                    return;
                };
                let Some(entry) = uris.get_mut(&uri) else {
                    continue;
                };
                match fetched {
                    Ok(keys) => {
                        entry.keys = Some(Arc::new(keys));
                        entry.error = None;
                        entry.due = Instant::now() + REFRESH;
                    }
                    Err(e) => {
                        if entry.error.is_none() {
                            tracing::warn!(%uri, error = %e, "fetching a JWKS failed; keeping the last keys");
                        }
                        entry.error = Some(e);
                        entry.due = Instant::now() + RETRY;
                    }
                }
            }
            let next = cache
                .uris
                .lock()
                .ok()
                .and_then(|u| u.values().map(|e| e.due).min())
                .unwrap_or_else(|| Instant::now() + REFRESH);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = cache.wake.notified() => {}
            }
            if store.strong_count() == 0 {
                return;
            }
        }
    }
}

/// GETs `uri` and reads it as a key set.
async fn fetch<C>(
    client: &hyper_util::client::legacy::Client<C, http_body_util::Empty<bytes::Bytes>>,
    uri: &str,
) -> Result<Keys, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let uri: http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    let get = async {
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
        let text = String::from_utf8(body.to_vec()).map_err(|e| e.to_string())?;
        crate::jwt::parse_jwks(&text)
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| "timed out".to_owned())?
}
