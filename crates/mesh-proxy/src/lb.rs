//! Endpoint choice: passive health (outlier detection), locality priority and the
//! balancing algorithm.
//!
//! - Outlier detection, as Envoy does for Istio's `outlierDetection`: consecutive 5xx
//!   (connect failures included) or gateway errors (502, 503, 504, connect failures)
//!   eject an endpoint for `baseEjectionTime × times ejected`; it comes back when
//!   that time has passed. At most `maxEjectionPercent` of a service's endpoints are
//!   ejected at once, and when fewer than `minHealthPercent` are healthy, ejections
//!   are ignored.
//! - Locality priority, as Istio does once outlier detection is on: endpoints that
//!   share more of the leading `failoverPriority` labels with this proxy come first
//!   (`topology.istio.io/network`, `topology.istio.io/cluster`,
//!   `topology.kubernetes.io/region`, `…/zone`, or any workload label); without
//!   `failoverPriority`, region, then zone, then subzone. Lower priorities are used
//!   only when no higher one has a healthy endpoint; `failover` names the region to
//!   try first when the local region has none.
//! - Balancing within the chosen priority: ROUND_ROBIN, RANDOM, or LEAST_REQUEST
//!   (power of two choices by requests in flight), Istio's default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mesh_api::networking::SimpleLb;

use crate::config::Node;
use crate::model::Endpoint;
use crate::policy::{OutlierPolicy, ResolvedPolicy, locality_matches};

/// A stable 64-bit hash, for consistent hashing.
pub fn hash_of(value: impl std::hash::Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    std::hash::Hasher::finish(&h)
}

/// How to pick within the best tier: the round-robin position, and the request's
/// hash key when the policy asks for consistent hashing.
#[derive(Debug, Clone, Copy)]
pub struct Balance<'c> {
    /// Round-robin position of the destination.
    pub counter: &'c std::sync::atomic::AtomicUsize,
    /// Hash of the request's key (header, cookie, source IP, query parameter).
    pub hash: Option<u64>,
}

#[derive(Debug, Default)]
struct EndpointHealth {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    in_flight: u32,
}

/// What happened to a request, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The endpoint could not be reached.
    ConnectFailure,
    /// The connection was reset or the try timed out.
    Reset,
}

/// Health of endpoints by service host, then endpoint, kept across config updates:
/// found by the request's `&str` host, so nothing is allocated per request.
#[derive(Debug, Clone, Default)]
pub struct HealthTracker {
    inner: Arc<Mutex<Health>>,
}

/// Counts a request in flight to an endpoint (for LEAST_REQUEST) while alive.
#[derive(Debug)]
pub struct ActiveRequest {
    tracker: HealthTracker,
    host: Option<Arc<str>>,
    ep: SocketAddr,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if let Some(host) = &self.host
            && let Ok(mut m) = self.tracker.inner.lock()
            && let Some(h) = m.get_mut(host).and_then(|eps| eps.get_mut(&self.ep))
        {
            h.in_flight = h.in_flight.saturating_sub(1);
        }
    }
}

type Health = HashMap<Arc<str>, HashMap<SocketAddr, EndpointHealth>>;

/// The interned host and the health entries of `host`, made on first use.
fn entries<'m>(
    m: &'m mut Health,
    host: &str,
) -> (Arc<str>, &'m mut HashMap<SocketAddr, EndpointHealth>) {
    let key = match m.get_key_value(host) {
        Some((k, _)) => k.clone(),
        None => {
            let k: Arc<str> = Arc::from(host);
            m.insert(k.clone(), HashMap::new());
            k
        }
    };
    let eps = m.entry(key.clone()).or_default();
    (key, eps)
}

impl HealthTracker {
    /// Counts a request to `ep` of `host` until the guard drops.
    pub fn start(&self, host: &str, ep: SocketAddr) -> ActiveRequest {
        let host = self.inner.lock().ok().map(|mut m| {
            let (key, eps) = entries(&mut m, host);
            eps.entry(ep).or_default().in_flight += 1;
            key
        });
        ActiveRequest {
            tracker: self.clone(),
            host,
            ep,
        }
    }

    /// Records a request's outcome and ejects the endpoint when the policy says so.
    pub fn record(
        &self,
        host: &str,
        ep: SocketAddr,
        outcome: Outcome,
        policy: Option<&OutlierPolicy>,
        endpoints: usize,
    ) {
        let Some(policy) = policy else { return };
        let Ok(mut m) = self.inner.lock() else { return };
        let now = Instant::now();
        let (_, eps) = entries(&mut m, host);
        let h = eps.entry(ep).or_default();
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::ConnectFailure | Outcome::Reset => (true, true),
        };
        h.consecutive_5xx = if is_5xx { h.consecutive_5xx + 1 } else { 0 };
        h.consecutive_gateway = if is_gateway {
            h.consecutive_gateway + 1
        } else {
            0
        };
        let tripped = (policy.consecutive_5xx > 0 && h.consecutive_5xx >= policy.consecutive_5xx)
            || (policy.consecutive_gateway > 0
                && h.consecutive_gateway >= policy.consecutive_gateway);
        if !tripped || h.ejected_until.is_some_and(|t| t > now) {
            return;
        }
        // Only when an endpoint trips: how many of the service's are out already.
        let ejected_now = eps
            .values()
            .filter(|s| s.ejected_until.is_some_and(|t| t > now))
            .count();
        if (ejected_now + 1) * 100 > endpoints * policy.max_ejection_percent as usize {
            return;
        }
        let Some(h) = eps.get_mut(&ep) else { return };
        h.times_ejected += 1;
        let until = now + policy.base_ejection * h.times_ejected;
        h.ejected_until = Some(until);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        tracing::info!(host, endpoint = %ep, for_ms = (until - now).as_millis() as u64, "endpoint ejected");
    }

    /// Picks an endpoint among `candidates` (ready endpoints of the subset) under the
    /// traffic policy `resolved`, `counter` being the round-robin position; skipping
    /// `avoid` when possible: healthy first, best locality priority next, then the
    /// balancing algorithm.
    pub fn choose<'a>(
        &self,
        host: &str,
        candidates: &[&'a Arc<Endpoint>],
        avoid: &[SocketAddr],
        node: &Node,
        resolved: Option<&ResolvedPolicy>,
        balance: Balance<'_>,
    ) -> Option<&'a Arc<Endpoint>> {
        let counter = balance.counter;
        let outlier = resolved.and_then(|p| p.outlier.as_ref());
        let locality = resolved.and_then(|p| p.locality.as_ref());
        let lb = resolved.and_then(|p| p.lb);
        // (locality priority, endpoint, requests in flight, ejected) of each candidate.
        let mut pool: Vec<(usize, &'a Arc<Endpoint>, u32, bool)> = {
            let now = Instant::now();
            let m = self.inner.lock().ok();
            let known = m.as_ref().and_then(|m| m.get(host));
            candidates
                .iter()
                .map(|e| {
                    let (ejected, in_flight) = known
                        .and_then(|k| k.get(&e.inbound))
                        .map_or((false, 0), |h| {
                            (h.ejected_until.is_some_and(|t| t > now), h.in_flight)
                        });
                    (0, *e, in_flight, ejected)
                })
                .collect()
        };
        let healthy = pool.iter().filter(|p| !p.3).count();
        let panic = outlier.is_some_and(|o| {
            healthy * 100 / candidates.len().max(1) < o.min_health_percent as usize
        });
        // Everything ejected: better to try than to fail (Envoy's panic mode).
        if !panic && healthy > 0 {
            pool.retain(|p| !p.3);
            if let Some(l) = locality {
                for p in &mut pool {
                    p.0 = l.priority(node, p.1);
                }
            }
        } else if panic && let Some(l) = locality {
            for p in &mut pool {
                p.0 = l.priority(node, p.1);
            }
        }
        // `distribute`: pick a destination locality by its share (among those with a
        // usable endpoint), then balance within it.
        if let Some(shares) = locality.and_then(|l| l.shares(&node.locality)) {
            let live: Vec<(&str, u32)> = shares
                .iter()
                .filter(|(to, w)| {
                    *w > 0
                        && pool
                            .iter()
                            .any(|(_, e, _, _)| locality_matches(to, &e.locality))
                })
                .map(|(to, w)| (to.as_str(), *w))
                .collect();
            let total: u32 = live.iter().map(|(_, w)| w).sum();
            if total > 0 {
                let mut pick = rand::random_range(0..total);
                let chosen = live
                    .iter()
                    .find(|(_, w)| {
                        if pick < *w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .map(|(to, _)| *to)
                    .unwrap_or(live[0].0);
                for entry in &mut pool {
                    entry.0 = usize::from(!locality_matches(chosen, &entry.1.locality));
                }
            }
        }
        let best = pool.iter().map(|p| p.0).min()?;
        pool.retain(|p| p.0 == best);
        if pool.len() > 1 && pool.iter().any(|p| !avoid.contains(&p.1.inbound)) {
            pool.retain(|p| !avoid.contains(&p.1.inbound));
        }
        let tier = pool;
        let n = tier.len();
        if let Some(key) = balance.hash {
            // Rendezvous hashing: the endpoint with the highest hash of (key, endpoint)
            // wins, so a key moves only when its endpoint goes away.
            return tier
                .iter()
                .max_by_key(|(_, e, _, _)| hash_of((key, e.inbound)))
                .map(|(_, e, _, _)| *e);
        }
        let i = match lb {
            Some(SimpleLb::RoundRobin) => {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n
            }
            Some(SimpleLb::Random) | Some(SimpleLb::Passthrough) => rand::random_range(0..n),
            // LEAST_REQUEST (also LEAST_CONN and unset): two random choices, fewer
            // requests in flight wins.
            _ => {
                let (a, b) = (rand::random_range(0..n), rand::random_range(0..n));
                if tier[b].2 < tier[a].2 { b } else { a }
            }
        };
        Some(tier[i].1)
    }
}

/// Connection-pool limits per destination (service host and subset): a request
/// takes a slot while in flight; when none is free it waits if fewer than
/// `max_pending` are already waiting, and overflows otherwise.
#[derive(Debug, Clone, Default)]
pub struct PoolLimits {
    inner: Arc<Mutex<HashMap<String, Slots>>>,
}

/// The slots of one destination.
#[derive(Debug, Clone)]
struct Slots {
    limit: u32,
    free: Arc<tokio::sync::Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicU32>,
}

impl Slots {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            free: Arc::new(tokio::sync::Semaphore::new(limit as usize)),
            waiting: Arc::default(),
        }
    }
}

/// Why a request got no slot.
#[derive(Debug)]
pub struct Overflow;

impl PoolLimits {
    /// Takes a slot for `cluster` under `max` in flight and `pending` waiting; `None`
    /// limits mean unlimited.
    pub async fn acquire(
        &self,
        cluster: &str,
        max: Option<u32>,
        pending: Option<u32>,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Overflow> {
        let Some(max) = max else { return Ok(None) };
        let (sem, waiting) = {
            let Ok(mut m) = self.inner.lock() else {
                return Ok(None);
            };
            if !m.contains_key(cluster) {
                m.insert(cluster.to_owned(), Slots::new(max));
            }
            let Some(entry) = m.get_mut(cluster) else {
                return Ok(None);
            };
            if entry.limit != max {
                // The limit changed with a config update: start a new pool of slots.
                *entry = Slots::new(max);
            }
            (entry.free.clone(), entry.waiting.clone())
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let limit = pending.unwrap_or(u32::MAX);
        if waiting.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= limit {
            waiting.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return Err(Overflow);
        }
        let permit = sem.acquire_owned().await;
        waiting.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        permit.map(Some).map_err(|_| Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LocalityPolicy;
    use mesh_api::networking::{LocalityLbSetting, OutlierDetection};

    #[test]
    fn outlier_fields_compile() {
        let o: OutlierDetection = serde_saphyr::from_str(
            "{consecutiveErrors: 4, consecutiveGatewayErrors: 2, minHealthPercent: 60, baseEjectionTime: 7s, maxEjectionPercent: 30}",
        )
        .unwrap();
        let p = OutlierPolicy::compile(&o);
        assert_eq!(
            p.consecutive_5xx, 4,
            "deprecated consecutiveErrors read as consecutive5xxErrors"
        );
        assert_eq!(p.consecutive_gateway, 2);
        assert_eq!(p.min_health_percent, 60);
        assert_eq!(p.max_ejection_percent, 30);
        assert_eq!(p.base_ejection, std::time::Duration::from_secs(7));
        let o: OutlierDetection =
            serde_saphyr::from_str("{consecutive5xxErrors: 9, consecutiveErrors: 4}").unwrap();
        assert_eq!(
            OutlierPolicy::compile(&o).consecutive_5xx,
            9,
            "the current field wins"
        );
    }

    #[test]
    fn failover_follows_the_from_to_pairs() {
        let l: LocalityLbSetting = serde_saphyr::from_str(
            "{failover: [{from: us-east, to: eu-west}, {from: eu-west, to: us-east}]}",
        )
        .unwrap();
        let p = LocalityPolicy::compile(Some(&l)).unwrap();
        assert_eq!(
            p.failover,
            [
                ("us-east".to_owned(), "eu-west".to_owned()),
                ("eu-west".to_owned(), "us-east".to_owned())
            ]
        );
        let off: LocalityLbSetting =
            serde_saphyr::from_str("{enabled: false, failover: [{from: a, to: b}]}").unwrap();
        assert!(LocalityPolicy::compile(Some(&off)).is_none());
    }
}
