//! Host names that ServiceEntries with `resolution: DNS` or `DNS_ROUND_ROBIN` ask for,
//! resolved off the request path with hickory, as [`crate::fetched`] fetches values:
//! a new name at once and again when its TTL runs out; a failed lookup keeps the last
//! good answer and is tried again shortly; a changed answer swaps in a state with the
//! new endpoints.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Weak;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::fetched::Fetched;
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

/// The names wanted and their last answers; see the module documentation.
#[derive(Debug, Default)]
pub struct DnsTable {
    resolvers: Resolvers,
    names: Fetched<Vec<IpAddr>>,
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
        self.names.get(name).unwrap_or_default()
    }

    /// Forgets every name but `wanted` (those the config in force asks for).
    pub fn retain(&self, wanted: &HashSet<String>) {
        self.names.retain(wanted);
    }

    /// Each name with its addresses and, when its last lookup failed, why (for the
    /// admin endpoint).
    pub fn report(&self) -> Vec<(String, Vec<IpAddr>, Option<String>)> {
        self.names
            .report()
            .into_iter()
            .map(|(n, a, e)| (n, a.unwrap_or_default(), e))
            .collect()
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

    /// Resolves wanted names as they come due, for as long as `store` exists; a
    /// changed answer swaps in a state with the new endpoints.
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
        let lookup = |name: String| {
            let resolver = &resolver;
            async move {
                // A name with a dot is absolute: no search domain is tried first.
                let query = if name.contains('.') && !name.ends_with('.') {
                    format!("{name}.")
                } else {
                    name
                };
                let lookup = resolver
                    .lookup_ip(query.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut addresses: Vec<IpAddr> = lookup.iter().collect();
                addresses.sort();
                addresses.dedup();
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                Ok((addresses, ttl.clamp(MIN_REFRESH, MAX_REFRESH)))
            }
        };
        table.names.run(store, "DNS answer", RETRY, lookup).await;
    }
}
