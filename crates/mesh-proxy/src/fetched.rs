//! Values the config names but does not hold, fetched in the background, off the
//! request path: the DNS answers of ServiceEntry hosts ([`crate::dns`]) and the key
//! sets behind a RequestAuthentication's `jwksUri` ([`crate::jwks`]).
//!
//! Installing a config looks each key up ([`Fetched::get`]: the value last fetched,
//! none before the first) and so marks it wanted; [`Fetched::run`] fetches new keys at
//! once and others when they come due again, keeps the last value when a fetch fails
//! (and tries again after a while), and after a round that changed a value has the
//! store install a state derived with the new values. Keys the config no longer names
//! are forgotten ([`Fetched::retain`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::state::StateStore;

#[derive(Debug)]
struct Entry<V> {
    value: Option<V>,
    /// When to fetch it (again).
    due: Instant,
    /// Why the last fetch failed, while the last value stays in use.
    error: Option<String>,
}

/// Keys wanted and their last values; see the module documentation.
#[derive(Debug)]
pub struct Fetched<V> {
    entries: Mutex<HashMap<String, Entry<V>>>,
    wake: tokio::sync::Notify,
}

impl<V> Default for Fetched<V> {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        }
    }
}

impl<V: Clone + PartialEq> Fetched<V> {
    /// The value last fetched for `key` (none before its first fetch); a key not seen
    /// before is fetched by [`Fetched::run`] right away.
    pub fn get(&self, key: &str) -> Option<V> {
        let mut entries = self.entries.lock().ok()?;
        if let Some(e) = entries.get(key) {
            return e.value.clone();
        }
        entries.insert(
            key.to_owned(),
            Entry {
                value: None,
                due: Instant::now(),
                error: None,
            },
        );
        self.wake.notify_one();
        None
    }

    /// Forgets every key but `wanted`.
    pub fn retain(&self, wanted: &HashSet<String>) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|k, _| wanted.contains(k));
        }
    }

    /// Each key with its last value and, when its last fetch failed, why; by key.
    pub fn report(&self) -> Vec<(String, Option<V>, Option<String>)> {
        let Ok(entries) = self.entries.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone(), e.error.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Fetches keys as they come due, for as long as `store` exists. `fetch` gives a
    /// key's value and when to fetch it again; a failure keeps the last value and is
    /// tried again after `retry`. `what` names the values in logs.
    pub async fn run<F, Fut>(&self, store: Weak<StateStore>, what: &str, retry: Duration, fetch: F)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(V, Duration), String>>,
    {
        loop {
            let now = Instant::now();
            let due: Vec<String> = self
                .entries
                .lock()
                .map(|e| {
                    e.iter()
                        .filter(|(_, e)| e.due <= now)
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            let mut changed = false;
            for key in due {
                let result = fetch(key.clone()).await;
                let Ok(mut entries) = self.entries.lock() else {
                    return;
                };
                let Some(entry) = entries.get_mut(&key) else {
                    continue; // forgotten meanwhile
                };
                match result {
                    Ok((value, again)) => {
                        entry.due = Instant::now() + again;
                        entry.error = None;
                        if entry.value.as_ref() != Some(&value) {
                            tracing::info!(%what, %key, "fetched a new value");
                            entry.value = Some(value);
                            changed = true;
                        }
                    }
                    Err(e) => {
                        if entry.error.is_none() {
                            tracing::warn!(%what, %key, error = %e, "fetch failed; keeping the last value");
                        }
                        entry.error = Some(e);
                        entry.due = Instant::now() + retry;
                    }
                }
            }
            if changed {
                let Some(store) = store.upgrade() else { return };
                store.refresh_fetched();
            }
            // With nothing wanted, sleep until woken (or an hour, to notice the store
            // is gone).
            let next = self
                .entries
                .lock()
                .ok()
                .and_then(|e| e.values().map(|e| e.due).min())
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.wake.notified() => {}
            }
            if store.strong_count() == 0 {
                return;
            }
        }
    }
}
