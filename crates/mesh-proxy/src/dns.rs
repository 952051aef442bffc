//! Host names that ServiceEntries with `resolution: DNS` or `DNS_ROUND_ROBIN` ask for,
//! resolved off the request path with hickory. Installing a config looks each name up
//! in the [`DnsTable`] (the addresses last resolved: none before the first answer) and
//! marks it wanted; a background task ([`DnsTable::run`]) resolves wanted names when
//! they are new and again when their TTL runs out, and swaps in a state with the new
//! endpoints when an answer changes. A failed lookup keeps the last good answer and is
//! tried again shortly; names no config asks for any more are forgotten.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

use crate::state::StateStore;

/// Shortest time an answer is kept before it is asked for again (a TTL of 0 included).
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest time an answer is kept, whatever its TTL.
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// When a failed lookup is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Where names are resolved.
#[derive(Debug, Clone, Default)]
pub enum Resolvers {
    /// The system's configuration (`/etc/resolv.conf`), as the workload resolves.
    #[default]
    System,
    /// These servers (UDP, then TCP), without search domains.
    Servers(Vec<SocketAddr>),
}

/// What is known of one name.
#[derive(Debug, Clone)]
struct Answer {
    addresses: Vec<IpAddr>,
    /// When to resolve it (again).
    due: Instant,
    /// Why the last lookup failed, while the last good answer stays in use.
    error: Option<String>,
}

/// The names wanted and their last answers; see the module documentation.
#[derive(Debug, Default)]
pub struct DnsTable {
    resolvers: Resolvers,
    names: Mutex<HashMap<String, Answer>>,
    wake: tokio::sync::Notify,
}

impl DnsTable {
    /// A table resolving with `resolvers`.
    pub fn new(resolvers: Resolvers) -> Self {
        Self {
            resolvers,
            ..Self::default()
        }
    }

    /// The addresses last resolved for `name` (none before its first answer). A name
    /// not seen before is resolved by the background task right away.
    pub fn addresses(&self, name: &str) -> Vec<IpAddr> {
        let Ok(mut names) = self.names.lock() else {
            return Vec::new();
        };
        if let Some(a) = names.get(name) {
            return a.addresses.clone();
        }
        names.insert(
            name.to_owned(),
            Answer {
                addresses: Vec::new(),
                due: Instant::now(),
                error: None,
            },
        );
        self.wake.notify_one();
        Vec::new()
    }

    /// Forgets every name but `wanted` (those the config in force asks for).
    pub fn retain(&self, wanted: &HashSet<String>) {
        if let Ok(mut names) = self.names.lock() {
            names.retain(|n, _| wanted.contains(n));
        }
    }

    /// Each name with its addresses and, when its last lookup failed, why (for the
    /// admin endpoint).
    pub fn report(&self) -> Vec<(String, Vec<IpAddr>, Option<String>)> {
        let Ok(names) = self.names.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = names
            .iter()
            .map(|(n, a)| (n.clone(), a.addresses.clone(), a.error.clone()))
            .collect();
        out.sort();
        out
    }

    fn resolver(&self) -> Result<hickory_resolver::Resolver<TokioRuntimeProvider>, String> {
        let builder = match &self.resolvers {
            Resolvers::System => {
                hickory_resolver::Resolver::builder_tokio().map_err(|e| e.to_string())?
            }
            Resolvers::Servers(servers) => {
                let name_servers = servers
                    .iter()
                    .map(|s| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = s.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = s.port();
                        NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                    })
                    .collect();
                hickory_resolver::Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], name_servers),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        builder.build().map_err(|e| e.to_string())
    }

    /// Resolves wanted names as they come due, for as long as `store` exists, and
    /// swaps in a state with new endpoints whenever an answer changes.
    pub async fn run(store: Weak<StateStore>) {
        let Some(table) = store.upgrade().map(|s| s.dns().clone()) else {
            return;
        };
        let resolver = match table.resolver() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver: ServiceEntry hosts with DNS resolution get no endpoints");
                return;
            }
        };
        loop {
            let now = Instant::now();
            let due: Vec<String> = table
                .names
                .lock()
                .map(|n| {
                    n.iter()
                        .filter(|(_, a)| a.due <= now)
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            let mut changed = false;
            for name in due {
                // A name with a dot is absolute: no search domain is tried first.
                let query = if name.contains('.') && !name.ends_with('.') {
                    format!("{name}.")
                } else {
                    name.clone()
                };
                let result = resolver.lookup_ip(query.as_str()).await;
                let Ok(mut names) = table.names.lock() else {
                    return;
                };
                let Some(answer) = names.get_mut(&name) else {
                    continue; // forgotten meanwhile
                };
                match result {
                    Ok(lookup) => {
                        let mut addresses: Vec<IpAddr> = lookup.iter().collect();
                        addresses.sort();
                        addresses.dedup();
                        let ttl = lookup
                            .valid_until()
                            .saturating_duration_since(std::time::Instant::now());
                        answer.due = Instant::now() + ttl.clamp(MIN_REFRESH, MAX_REFRESH);
                        answer.error = None;
                        if answer.addresses != addresses {
                            tracing::info!(name = %name, addresses = ?addresses, "DNS answer changed");
                            answer.addresses = addresses;
                            changed = true;
                        }
                    }
                    Err(e) => {
                        if answer.error.is_none() {
                            tracing::warn!(name = %name, error = %e, kept = ?answer.addresses, "DNS lookup failed; keeping the last answer");
                        }
                        answer.error = Some(e.to_string());
                        answer.due = Instant::now() + RETRY;
                    }
                }
            }
            if changed {
                let Some(store) = store.upgrade() else { return };
                store.refresh_dns();
            }
            let next = table
                .names
                .lock()
                .ok()
                .and_then(|n| n.values().map(|a| a.due).min())
                .unwrap_or_else(|| Instant::now() + MAX_REFRESH);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = table.wake.notified() => {}
            }
            if store.strong_count() == 0 {
                return;
            }
        }
    }
}
