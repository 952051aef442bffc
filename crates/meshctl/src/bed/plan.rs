//! What the testbed runs: clusters, networks, addresses, workloads, and the registry
//! documents that describe them. Pure data, so it is the same for the supervisor that
//! starts everything and for the commands that talk to it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The namespace of the sample apps.
pub(crate) const NAMESPACE: &str = "sample";

/// One sample workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Workload {
    /// Workload name (unique in the testbed).
    pub(crate) name: String,
    /// `app` label and service name.
    pub(crate) app: String,
    /// `version` label.
    pub(crate) version: String,
    /// Its address (a loopback address of its own, like a pod IP).
    pub(crate) ip: IpAddr,
    /// Its service port (0: a client only, no service).
    pub(crate) port: u16,
    /// The service it calls for each request, `host:port` (chain apps).
    pub(crate) calls: Option<String>,
}

impl Workload {
    /// Its sidecar's outbound listener (explicit mode).
    pub(crate) fn outbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15001)
    }

    /// Its sidecar's inbound (mTLS) listener.
    pub(crate) fn inbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15006)
    }

    /// Its sidecar's admin listener.
    pub(crate) fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15020)
    }
}

/// One cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Cluster {
    /// Name.
    pub(crate) name: String,
    /// Network.
    pub(crate) network: String,
    /// `region/zone`.
    pub(crate) locality: String,
    /// Discovery's address (config stream, CA, peering).
    pub(crate) discovery: SocketAddr,
    /// Discovery's monitoring address.
    pub(crate) monitor: SocketAddr,
    /// The east-west gateway.
    pub(crate) gateway: SocketAddr,
    /// The gateway's admin address.
    pub(crate) gateway_admin: SocketAddr,
    /// Sample workloads.
    pub(crate) workloads: Vec<Workload>,
}

/// The whole testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Plan {
    /// Trust domain.
    pub(crate) trust_domain: String,
    /// Clusters.
    pub(crate) clusters: Vec<Cluster>,
}

fn ip(cluster: usize, a: u8, b: u8) -> IpAddr {
    // 127.240/12 and up: loopback addresses no test of the project uses.
    IpAddr::V4(Ipv4Addr::new(127, 240 + cluster as u8, a, b))
}

/// Cluster names: `east` and `west` for two, `c1`… otherwise.
pub(crate) fn cluster_names(n: usize) -> Vec<String> {
    if n == 2 {
        vec!["east".into(), "west".into()]
    } else {
        (1..=n).map(|i| format!("c{i}")).collect()
    }
}

impl Plan {
    /// `clusters` clusters over `networks` networks (cluster i on network i mod M).
    pub(crate) fn new(clusters: usize, networks: usize) -> Self {
        let names = cluster_names(clusters);
        let clusters = names
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let w = |n: u8,
                         name: &str,
                         app: &str,
                         version: &str,
                         port: u16,
                         calls: Option<&str>| Workload {
                    name: name.into(),
                    app: app.into(),
                    version: version.into(),
                    ip: ip(c, 1, n),
                    port,
                    calls: calls.map(str::to_owned),
                };
                let mut workloads = vec![
                    w(
                        1,
                        &format!("helloworld-v{}", c + 1),
                        "helloworld",
                        &format!("v{}", c + 1),
                        5000,
                        None,
                    ),
                    w(2, &format!("curl-{name}"), "curl", "v1", 0, None),
                ];
                // The chain: front page (first cluster) → reviews (second) → ratings (first).
                if c == 0 {
                    workloads.push(w(
                        3,
                        "frontpage-v1",
                        "frontpage",
                        "v1",
                        9080,
                        Some("reviews:9080"),
                    ));
                    workloads.push(w(4, "ratings-v1", "ratings", "v1", 9080, None));
                }
                if c == 1 || (clusters == 1 && c == 0) {
                    workloads.push(w(
                        5,
                        "reviews-v1",
                        "reviews",
                        "v1",
                        9080,
                        Some("ratings:9080"),
                    ));
                }
                Cluster {
                    name: name.clone(),
                    network: format!("network-{}", c % networks.max(1) + 1),
                    locality: format!("region-{}/zone-a", c + 1),
                    discovery: SocketAddr::new(ip(c, 0, 1), 15012),
                    monitor: SocketAddr::new(ip(c, 0, 1), 15014),
                    gateway: SocketAddr::new(ip(c, 0, 2), 15443),
                    gateway_admin: SocketAddr::new(ip(c, 0, 2), 15021),
                    workloads,
                }
            })
            .collect();
        Self {
            trust_domain: "testbed.isthmus".into(),
            clusters,
        }
    }

    /// The cluster named `name`.
    pub(crate) fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// The Istio config every cluster gets: helloworld prefers its own network and
/// cluster and fails over on errors; retries move to another endpoint.
pub(crate) const ROUTING: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld, namespace: sample}
spec:
  host: helloworld
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        failoverPriority: [topology.istio.io/network, topology.istio.io/cluster]
    outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 100}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: sample}
spec:
  hosts: [helloworld]
  http:
  - route: [{destination: {host: helloworld}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: \"5xx,connect-failure,reset\"}
";

/// The registry documents of cluster `c`: namespace, Services and WorkloadEntries.
pub(crate) fn registry_docs(plan: &Plan, c: &Cluster) -> String {
    let mut out = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    let mut services = std::collections::BTreeSet::new();
    for w in &c.workloads {
        if w.port != 0 && services.insert(w.app.clone()) {
            out.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {app}, namespace: {NAMESPACE}}}\nspec:\n  selector: {{app: {app}}}\n  ports: [{{name: http, port: {port}}}]\n",
                app = w.app,
                port = w.port
            ));
        }
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec: {{address: {ip}, labels: {{app: {app}, version: {version}}}, serviceAccount: {app}, locality: {locality}, network: {network}}}\n",
            name = w.name,
            ip = w.ip,
            app = w.app,
            version = w.version,
            locality = c.locality,
            network = c.network,
        ));
    }
    let _ = plan;
    out
}
