//! DestinationRule traffic policy, compiled: subsets, and the policy in force per
//! (subset, port) with its load balancing, outlier detection, locality priority,
//! connection limits and TLS mode. Built on [`crate::model`]; the balancer reads it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use mesh_api::networking::{LocalityLbSetting, OutlierDetection, SimpleLb};

use crate::config::Node;
use crate::model::{Endpoint, Service};

/// What a DestinationRule says about a host, compiled.
#[derive(Debug, Default, serde::Serialize)]
pub struct DestinationPolicy {
    /// Rule that defined it (`namespace/name`).
    pub rule: String,
    /// Subsets: name → labels.
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// Traffic policy in force per (subset, port): top level, then its port-level
    /// settings, then the subset's policy, then the subset's port-level settings.
    #[serde(skip)]
    resolved: HashMap<(String, Option<u16>), ResolvedPolicy>,
    #[serde(skip)]
    pub(crate) round_robin: AtomicUsize,
    /// Why a `tls` setting could not be built (the rule is then refused).
    #[serde(skip)]
    pub(crate) errors: Vec<String>,
}

/// The traffic policy that applies to one (subset, port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedPolicy {
    /// Load-balancing algorithm.
    pub lb: Option<SimpleLb>,
    /// Outlier detection, when configured.
    pub outlier: Option<OutlierPolicy>,
    /// Locality priority (on when outlier detection is, unless disabled).
    pub locality: Option<LocalityPolicy>,
    /// TCP connect timeout.
    pub connect_timeout: Option<std::time::Duration>,
    /// Most requests in flight to the destination (`http2MaxRequests`, else
    /// `maxConnections`); unlimited when unset.
    pub max_requests: Option<u32>,
    /// Most requests waiting for a slot (`http1MaxPendingRequests`).
    pub max_pending: Option<u32>,
    /// Consistent-hash key, when the policy asks for session affinity.
    pub hash_key: Option<HashKey>,
    /// Requests per upstream connection before a new one is opened
    /// (`maxRequestsPerConnection`); unlimited when unset.
    pub max_requests_per_connection: Option<u32>,
    /// How long an unused upstream connection is kept (`http.idleTimeout`).
    pub idle_timeout: Option<std::time::Duration>,
    /// `tls.mode: DISABLE`: plain HTTP straight to the workload's port (a destination
    /// without a sidecar), not mTLS to its sidecar.
    pub plaintext: bool,
    /// `h2UpgradePolicy: UPGRADE`: HTTP/1.1 requests travel as HTTP/2 between sidecars
    /// (multiplexed); by default they stay HTTP/1.1, as in Istio.
    pub h2_upgrade: bool,
    /// `tls.mode` SIMPLE or MUTUAL: TLS opened by this proxy to the destination's own
    /// address and port.
    pub origination: Option<Arc<crate::origination::Origination>>,
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header.
    Header(String),
    /// A cookie; when it is absent and `ttl` is set, the proxy makes one up and
    /// returns it in `Set-Cookie` (Istio's `httpCookie` with a TTL).
    Cookie {
        /// Cookie name.
        name: String,
        /// Lifetime of a generated cookie.
        ttl: Option<std::time::Duration>,
        /// Path of a generated cookie.
        path: Option<String>,
    },
    /// The caller's IP address.
    SourceIp,
    /// A query parameter.
    Query(String),
}

/// The parts of a traffic policy this proxy applies, as written (None = not set).
#[derive(Debug, Clone, Default)]
struct PolicyParts<'a> {
    lb: Option<&'a mesh_api::networking::LoadBalancerSettings>,
    outlier: Option<&'a mesh_api::networking::OutlierDetection>,
    pool: Option<&'a mesh_api::networking::ConnectionPoolSettings>,
    tls: Option<&'a mesh_api::networking::ClientTlsSettings>,
}

/// `base` with the port-level settings of `t` for `port` laid over it.
fn with_port<'a>(
    base: &PolicyParts<'a>,
    t: Option<&'a mesh_api::networking::TrafficPolicy>,
    port: u16,
) -> PolicyParts<'a> {
    let mut p = base.clone();
    if let Some(pl) = t.and_then(|t| {
        t.port_level_settings
            .iter()
            .find(|pl| pl.port.number as u16 == port)
    }) {
        p.overlay(
            pl.load_balancer.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.connection_pool.as_ref(),
            pl.tls.as_ref(),
        );
    }
    p
}

impl<'a> PolicyParts<'a> {
    fn overlay(
        &mut self,
        lb: Option<&'a mesh_api::networking::LoadBalancerSettings>,
        outlier: Option<&'a mesh_api::networking::OutlierDetection>,
        pool: Option<&'a mesh_api::networking::ConnectionPoolSettings>,
        tls: Option<&'a mesh_api::networking::ClientTlsSettings>,
    ) {
        self.lb = lb.or(self.lb);
        self.outlier = outlier.or(self.outlier);
        self.pool = pool.or(self.pool);
        self.tls = tls.or(self.tls);
    }

    /// The policy in force; a `tls` that cannot be built adds its reason to `errors`.
    fn resolve(&self, secrets: Secrets<'_>, errors: &mut Vec<String>) -> ResolvedPolicy {
        let outlier = self.outlier.map(OutlierPolicy::compile);
        let origination = self
            .tls
            .map(|t| crate::origination::Origination::compile(t, secrets.0, secrets.1))
            .transpose()
            .unwrap_or_else(|e| {
                if !errors.contains(&e) {
                    errors.push(e);
                }
                None
            })
            .flatten();
        ResolvedPolicy {
            origination,
            lb: self.lb.and_then(|l| l.simple),
            // As in Istio: failover needs outlier detection (to know an endpoint is
            // gone); weighted `distribute` does not.
            locality: {
                let setting = self.lb.and_then(|l| l.locality_lb_setting.as_ref());
                let distributes = setting.is_some_and(|s| !s.distribute.is_empty());
                if outlier.is_some() || distributes {
                    LocalityPolicy::compile(setting)
                } else {
                    None
                }
            },
            outlier,
            connect_timeout: self
                .pool
                .and_then(|p| p.tcp.as_ref())
                .and_then(|t| t.connect_timeout)
                .map(|d| d.as_std()),
            max_requests: self
                .pool
                .and_then(|p| p.http.as_ref().and_then(|h| h.http2_max_requests))
                .or_else(|| {
                    self.pool
                        .and_then(|p| p.tcp.as_ref())
                        .and_then(|t| t.max_connections)
                })
                .map(|n| n.max(1) as u32),
            hash_key: self
                .lb
                .and_then(|l| l.consistent_hash.as_ref())
                .and_then(|c| {
                    c.http_header_name
                        .clone()
                        .map(|h| HashKey::Header(h.to_ascii_lowercase()))
                        .or_else(|| {
                            c.http_cookie.as_ref().map(|k| HashKey::Cookie {
                                name: k.name.clone(),
                                ttl: k.ttl.map(|d| d.as_std()).filter(|d| !d.is_zero()),
                                path: k.path.clone(),
                            })
                        })
                        .or_else(|| (c.use_source_ip == Some(true)).then_some(HashKey::SourceIp))
                        .or_else(|| c.http_query_parameter_name.clone().map(HashKey::Query))
                }),
            max_pending: self
                .pool
                .and_then(|p| p.http.as_ref())
                .and_then(|h| h.http1_max_pending_requests)
                .map(|n| n.max(0) as u32),
            max_requests_per_connection: self
                .pool
                .and_then(|p| p.http.as_ref())
                .and_then(|h| h.max_requests_per_connection)
                .filter(|n| *n > 0)
                .map(|n| n as u32),
            idle_timeout: self
                .pool
                .and_then(|p| p.http.as_ref())
                .and_then(|h| h.idle_timeout)
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero()),
            plaintext: self.tls.and_then(|t| t.mode)
                == Some(mesh_api::networking::ClientTlsMode::Disable),
            h2_upgrade: self
                .pool
                .and_then(|p| p.http.as_ref())
                .and_then(|h| h.h2_upgrade_policy)
                == Some(mesh_api::networking::H2UpgradePolicy::Upgrade),
        }
    }
}

/// The credentials held and the namespace their `credentialName`s are read in.
#[derive(Clone, Copy)]
pub(crate) struct Secrets<'a>(pub &'a crate::state::Credentials, pub &'a str);

impl DestinationPolicy {
    pub(crate) fn compile(
        rule: String,
        spec: &mesh_api::networking::DestinationRuleSpec,
        secrets: Secrets<'_>,
    ) -> Self {
        use mesh_api::networking::TrafficPolicy;
        let mut resolved = HashMap::new();
        let mut errors = Vec::new();
        let mut top = PolicyParts::default();
        if let Some(t) = &spec.traffic_policy {
            top.overlay(
                t.load_balancer.as_ref(),
                t.outlier_detection.as_ref(),
                t.connection_pool.as_ref(),
                t.tls.as_ref(),
            );
        }
        let ports_of = |t: Option<&TrafficPolicy>| -> Vec<u16> {
            t.map(|t| {
                t.port_level_settings
                    .iter()
                    .map(|p| p.port.number as u16)
                    .collect()
            })
            .unwrap_or_default()
        };
        let mut ports = ports_of(spec.traffic_policy.as_ref());
        for s in &spec.subsets {
            ports.extend(ports_of(s.traffic_policy.as_ref()));
        }
        let subsets = std::iter::once(("", None)).chain(
            spec.subsets
                .iter()
                .map(|s| (s.name.as_str(), s.traffic_policy.as_ref())),
        );
        for (name, subset_policy) in subsets {
            for port in std::iter::once(None).chain(ports.iter().copied().map(Some)) {
                let mut parts = match port {
                    Some(p) => with_port(&top, spec.traffic_policy.as_ref(), p),
                    None => top.clone(),
                };
                if let Some(sp) = subset_policy {
                    parts.overlay(
                        sp.load_balancer.as_ref(),
                        sp.outlier_detection.as_ref(),
                        sp.connection_pool.as_ref(),
                        sp.tls.as_ref(),
                    );
                    if let Some(p) = port {
                        parts = with_port(&parts, Some(sp), p);
                    }
                }
                resolved.insert((name.to_owned(), port), parts.resolve(secrets, &mut errors));
            }
        }
        Self {
            rule,
            subsets: spec
                .subsets
                .iter()
                .map(|s| (s.name.clone(), s.labels.clone()))
                .collect(),
            resolved,
            round_robin: AtomicUsize::new(0),
            errors,
        }
    }

    /// The traffic policy for `subset` ("" for none) on `port`.
    pub fn resolve(&self, subset: &str, port: u16) -> Option<&ResolvedPolicy> {
        self.resolved
            .get(&(subset.to_owned(), Some(port)))
            .or_else(|| self.resolved.get(&(subset.to_owned(), None)))
            .or_else(|| self.resolved.get(&(String::new(), None)))
    }
}

/// A route or SNI names a subset no DestinationRule defines for the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subset {subset:?} of {host} is not defined by any DestinationRule")]
pub struct UnknownSubset {
    /// The subset asked for.
    pub subset: String,
    /// The service host.
    pub host: String,
}

impl DestinationPolicy {
    /// The endpoints of `service` in `subset` that are ready, or why there are none.
    pub fn select<'a>(
        policy: Option<&Self>,
        service: &'a Service,
        subset: &str,
    ) -> Result<Vec<&'a Arc<Endpoint>>, UnknownSubset> {
        let labels = if subset.is_empty() {
            None
        } else {
            match policy.and_then(|p| p.subsets.get(subset)) {
                Some(l) => Some(l),
                None => {
                    return Err(UnknownSubset {
                        subset: subset.to_owned(),
                        host: service.host.clone(),
                    });
                }
            }
        };
        Ok(service
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .filter(|e| labels.is_none_or(|l| l.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
            .collect())
    }
}

/// Compiled `outlierDetection`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutlierPolicy {
    /// Consecutive 5xx before ejection (0 = off).
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors before ejection (0 = off).
    pub consecutive_gateway: u32,
    /// Base ejection time.
    pub base_ejection: Duration,
    /// Most endpoints ejected at once, percent.
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, ejections are ignored.
    pub min_health_percent: u32,
}

impl OutlierPolicy {
    pub(crate) fn compile(o: &OutlierDetection) -> Self {
        Self {
            consecutive_5xx: o
                .consecutive_5xx_errors
                .or(o.consecutive_errors.map(|e| e.max(0) as u32))
                .unwrap_or(OutlierDetection::DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway: o.consecutive_gateway_errors.unwrap_or(0),
            base_ejection: o.effective_base_ejection_time().as_std(),
            max_ejection_percent: o.effective_max_ejection_percent().clamp(0, 100) as u32,
            min_health_percent: o.effective_min_health_percent().clamp(0, 100) as u32,
        }
    }
}

/// Compiled locality settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LocalityPolicy {
    /// Ordered labels of `failoverPriority`.
    pub failover_priority: Vec<String>,
    /// `failover` from region → to region.
    pub failover: Vec<(String, String)>,
    /// `distribute`: from locality pattern → (to locality pattern, share).
    pub distribute: Vec<(String, Vec<(String, u32)>)>,
}

impl LocalityPolicy {
    pub(crate) fn compile(l: Option<&LocalityLbSetting>) -> Option<Self> {
        if l.and_then(|l| l.enabled) == Some(false) {
            return None;
        }
        Some(Self {
            failover_priority: l.map(|l| l.failover_priority.clone()).unwrap_or_default(),
            failover: l
                .map(|l| {
                    l.failover
                        .iter()
                        .map(|f| (f.from.clone(), f.to.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            distribute: l
                .map(|l| {
                    l.distribute
                        .iter()
                        .map(|d| {
                            let to = d.to.iter().map(|(k, v)| (k.clone(), *v)).collect();
                            (d.from.clone(), to)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The `distribute` shares for a proxy in `locality`, if a rule's `from` matches.
    pub(crate) fn shares(&self, locality: &str) -> Option<&[(String, u32)]> {
        self.distribute
            .iter()
            .find(|(from, _)| locality_matches(from, locality))
            .map(|(_, to)| to.as_slice())
    }

    /// Priority of `ep` for a proxy on `node`: 0 is best.
    pub(crate) fn priority(&self, node: &Node, ep: &Endpoint) -> usize {
        let node_loc: Vec<&str> = node.locality.split('/').collect();
        let ep_loc: Vec<&str> = ep.locality.split('/').collect();
        let value = |labels_of: &dyn Fn(&str) -> Option<String>, key: &str| labels_of(key);
        let node_label = |key: &str| -> Option<String> {
            match key {
                "topology.istio.io/network" => Some(node.network.clone()),
                "topology.istio.io/cluster" => Some(node.cluster.clone()),
                "topology.kubernetes.io/region" => node_loc.first().map(|s| (*s).to_owned()),
                "topology.kubernetes.io/zone" => node_loc.get(1).map(|s| (*s).to_owned()),
                "topology.istio.io/subzone" => node_loc.get(2).map(|s| (*s).to_owned()),
                other => node.labels.get(other).cloned(),
            }
        };
        let ep_label = |key: &str| -> Option<String> {
            match key {
                "topology.istio.io/network" => Some(ep.network.clone()),
                "topology.istio.io/cluster" => Some(ep.cluster.clone()),
                "topology.kubernetes.io/region" => ep_loc.first().map(|s| (*s).to_owned()),
                "topology.kubernetes.io/zone" => ep_loc.get(1).map(|s| (*s).to_owned()),
                "topology.istio.io/subzone" => ep_loc.get(2).map(|s| (*s).to_owned()),
                other => ep.labels.get(other).cloned(),
            }
        };
        let keys: Vec<&str> = if self.failover_priority.is_empty() {
            vec![
                "topology.kubernetes.io/region",
                "topology.kubernetes.io/zone",
                "topology.istio.io/subzone",
            ]
        } else {
            self.failover_priority.iter().map(String::as_str).collect()
        };
        let matched = keys
            .iter()
            .take_while(|k| {
                let n = value(&node_label, k);
                n.is_some() && n == value(&ep_label, k)
            })
            .count();
        let mut prio = (keys.len() - matched) * 2;
        // Explicit region failover: the named region comes before other regions.
        if matched == 0
            && let Some((_, to)) = self
                .failover
                .iter()
                .find(|(from, _)| Some(from.as_str()) == node_loc.first().copied())
            && ep_loc.first() != Some(&to.as_str())
        {
            prio += 1;
        }
        prio
    }
}

/// Whether `locality` (`region/zone/subzone`) matches `pattern`, where a `*` segment
/// matches the rest (`us-west/*`, `*`) and a shorter pattern matches as a prefix.
pub(crate) fn locality_matches(pattern: &str, locality: &str) -> bool {
    let mut loc = locality.split('/');
    for p in pattern.split('/') {
        if p == "*" {
            return true;
        }
        if loc.next() != Some(p) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::Resource;

    fn policy(yaml: &str) -> DestinationPolicy {
        match mesh_api::parse_resource(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: shop}}\nspec: {yaml}\n"
        ))
        .unwrap()
        {
            Resource::DestinationRule(d) => DestinationPolicy::compile(
                "shop/r".into(),
                &d.spec,
                Secrets(&Default::default(), "shop"),
            ),
            _ => unreachable!(),
        }
    }

    #[test]
    fn consistent_hash_keys() {
        let key = |lb: &str| {
            policy(&format!(
                "{{host: reviews, trafficPolicy: {{loadBalancer: {{consistentHash: {lb}}}}}}}"
            ))
            .resolve("", 9080)
            .unwrap()
            .hash_key
            .clone()
        };
        assert!(matches!(
            key("{useSourceIp: true}"),
            Some(HashKey::SourceIp)
        ));
        assert!(
            matches!(key("{httpQueryParameterName: user}"), Some(HashKey::Query(q)) if q == "user")
        );
    }

    #[test]
    fn port_level_tls_and_http2_max_requests() {
        let p = policy(
            "{host: reviews, trafficPolicy: {connectionPool: {http: {http2MaxRequests: 7}}, \
              portLevelSettings: [{port: {number: 8080}, tls: {mode: DISABLE}}]}}",
        );
        assert!(
            p.resolve("", 8080).unwrap().plaintext,
            "port-level tls DISABLE"
        );
        assert!(
            !p.resolve("", 9080).unwrap().plaintext,
            "other ports keep mesh mTLS"
        );
        assert_eq!(p.resolve("", 9080).unwrap().max_requests, Some(7));
    }

    #[test]
    fn traffic_policy_resolves_top_port_subset_and_subset_port() {
        let dr = match mesh_api::parse_resource(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {connectTimeout: 2s}}
    portLevelSettings:
    - {port: {number: 9080}, loadBalancer: {simple: RANDOM}}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST}
      outlierDetection: {consecutive5xxErrors: 3}
      portLevelSettings:
      - {port: {number: 9443}, loadBalancer: {simple: ROUND_ROBIN}}
  - {name: v1, labels: {version: v1}}
",
        )
        .unwrap()
        {
            Resource::DestinationRule(d) => d,
            _ => unreachable!(),
        };
        let p = DestinationPolicy::compile(
            "shop/r".into(),
            &dr.spec,
            Secrets(&Default::default(), "shop"),
        );
        let lb = |subset: &str, port: u16| p.resolve(subset, port).unwrap().lb;
        assert_eq!(lb("", 8080), Some(SimpleLb::RoundRobin), "top level");
        assert_eq!(
            lb("", 9080),
            Some(SimpleLb::Random),
            "top-level port setting"
        );
        assert_eq!(
            lb("v1", 9080),
            Some(SimpleLb::Random),
            "a subset without a policy inherits"
        );
        assert_eq!(
            lb("v2", 9080),
            Some(SimpleLb::LeastRequest),
            "the subset policy overrides"
        );
        assert_eq!(
            lb("v2", 9443),
            Some(SimpleLb::RoundRobin),
            "the subset's port setting overrides"
        );
        let v2 = p.resolve("v2", 8080).unwrap();
        assert_eq!(v2.outlier.as_ref().unwrap().consecutive_5xx, 3);
        assert!(v2.locality.is_some(), "locality follows outlier detection");
        assert_eq!(
            v2.connect_timeout,
            Some(std::time::Duration::from_secs(2)),
            "inherited from the top level"
        );
        assert!(p.resolve("", 8080).unwrap().outlier.is_none());
    }
}
