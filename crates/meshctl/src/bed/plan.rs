//! What the testbed runs: clusters, networks, addresses, workloads, and the registry
//! documents that describe them. Pure data, so it is the same for the supervisor that
//! starts everything and for the commands that talk to it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The namespace of the sample apps.
pub(crate) const NAMESPACE: &str = "sample";

/// The port the ingress gateway binds for the Gateway server port 80.
pub(crate) const INGRESS_PORT: u16 = 8080;

/// The ingress gateway's service account and workload name prefix.
pub(crate) const INGRESS_ACCOUNT: &str = "isthmus-ingressgateway";

/// A service that exists only in the second cluster (helloworld there, port 5000): no
/// Service of that name anywhere else, yet it resolves and routes from every cluster.
pub(crate) const REMOTE_ONLY: &str = "hello-west";

/// A ServiceEntry host of the second cluster whose endpoints its `workloadSelector`
/// picks (helloworld there): exported like a Service, it routes from every cluster.
pub(crate) const SELECTED_ENTRY: &str = "hello.vm.internal";

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
    /// Its address: the pod IP, or a loopback address of its own.
    pub(crate) ip: IpAddr,
    /// Its pod's network namespace (pod mode).
    #[serde(default)]
    pub(crate) pod: Option<String>,
    /// Its service port (0: a client only, no service).
    pub(crate) port: u16,
    /// The service it calls for each request, `host:port` (chain apps).
    pub(crate) calls: Option<String>,
}

impl Workload {
    /// Its sidecar's outbound listener (explicit mode; in a pod, on the pod's
    /// loopback).
    pub(crate) fn outbound(&self) -> SocketAddr {
        match self.pod {
            Some(_) => SocketAddr::from(([127, 0, 0, 1], 15001)),
            None => SocketAddr::new(self.ip, 15001),
        }
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
    /// The ingress gateway's HTTP port (the Gateway server port 80, bound on 8080
    /// on the node's address, as Istio's gateway Service maps it).
    pub(crate) ingress: SocketAddr,
    /// The ingress gateway's admin address.
    pub(crate) ingress_admin: SocketAddr,
    /// Sample workloads.
    pub(crate) workloads: Vec<Workload>,
    /// The cluster network's namespace (pod mode).
    #[serde(default)]
    pub(crate) netns: Option<String>,
    /// Every sample service's ClusterIP and port in this cluster (a Service exists in
    /// every cluster, as Istio's multi-cluster DNS expects).
    #[serde(default)]
    pub(crate) services: BTreeMap<String, SocketAddr>,
}

/// The whole testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Plan {
    /// Trust domain.
    pub(crate) trust_domain: String,
    /// Clusters.
    pub(crate) clusters: Vec<Cluster>,
    /// Workloads in pods (network namespaces, transparent capture) rather than on
    /// loopback addresses in explicit proxy mode.
    #[serde(default)]
    pub(crate) pods: bool,
}

fn ip(pods: bool, cluster: usize, a: u8, b: u8) -> IpAddr {
    // Pods: 10.240/12 and up, inside namespaces the testbed creates. Loopback:
    // 127.240/12 and up, addresses no test of the project uses.
    let first = if pods { 10 } else { 127 };
    IpAddr::V4(Ipv4Addr::new(first, 240 + cluster as u8, a, b))
}

/// The ClusterIP of sample service number `k` in cluster `cluster`, inside the
/// cluster's service range (`10.(96+cluster).0.0/16`, as the testbed's API servers
/// are configured).
fn service_ip(cluster: usize, k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96 + cluster as u8, 100, 1 + k as u8))
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
    /// `clusters` clusters over `networks` networks (cluster i on network i mod M),
    /// workloads in pods or on loopback.
    pub(crate) fn new(clusters: usize, networks: usize, pods: bool) -> Self {
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
                    ip: ip(pods, c, 1, n),
                    pod: pods.then(|| format!("itb-{name}")),
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
                    discovery: SocketAddr::new(ip(pods, c, 0, 1), 15012),
                    monitor: SocketAddr::new(ip(pods, c, 0, 1), 15014),
                    gateway: SocketAddr::new(ip(pods, c, 0, 2), 15443),
                    gateway_admin: SocketAddr::new(ip(pods, c, 0, 2), 15021),
                    ingress: SocketAddr::new(ip(pods, c, 0, 2), INGRESS_PORT),
                    ingress_admin: SocketAddr::new(ip(pods, c, 0, 2), 15020),
                    workloads,
                    netns: pods.then(|| format!("itb-{name}")),
                    services: BTreeMap::new(),
                }
            })
            .collect::<Vec<_>>();
        // Every service everywhere, with the same port.
        let ports: BTreeMap<String, u16> = clusters
            .iter()
            .flat_map(|c| &c.workloads)
            .filter(|w| w.port != 0)
            .map(|w| (w.app.clone(), w.port))
            .collect();
        let mut clusters = clusters;
        for (c, cluster) in clusters.iter_mut().enumerate() {
            cluster.services = ports
                .iter()
                .enumerate()
                .map(|(k, (app, port))| (app.clone(), SocketAddr::new(service_ip(c, k), *port)))
                .collect();
        }
        Self {
            trust_domain: "testbed.isthmus".into(),
            clusters,
            pods,
        }
    }

    /// Where workload `w` of cluster `c` connects to call `authority` (`name[:port]`):
    /// in a pod, the service's ClusterIP, as cluster DNS would answer (the sidecar
    /// captures the connection); on loopback, its sidecar's outbound listener.
    pub(crate) fn dial(&self, c: &Cluster, w: &Workload, authority: &str) -> SocketAddr {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()),
            None => (authority, None),
        };
        let name = host.split('.').next().unwrap_or(host);
        match (self.pods, c.services.get(name)) {
            (true, Some(vip)) => SocketAddr::new(vip.ip(), port.unwrap_or(vip.port())),
            _ => w.outbound(),
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
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: sample-gateway, namespace: sample}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sample-ingress, namespace: sample}
spec:
  hosts: ['*']
  gateways: [sample-gateway]
  http:
  - match: [{uri: {prefix: /api}}]
    route:
    - {destination: {host: helloworld, subset: v1, port: {number: 5000}}, weight: 90}
    - {destination: {host: helloworld, subset: v2, port: {number: 5000}}, weight: 10}
  - route: [{destination: {host: frontpage, port: {number: 9080}}}]
";

/// The registry documents of cluster `c`: namespace, Services and WorkloadEntries.
pub(crate) fn registry_docs(plan: &Plan, c: &Cluster) -> String {
    let mut out = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    for (app, vip) in &c.services {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {app}, namespace: {NAMESPACE}}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: {app}}}\n  ports: [{{name: http, port: {port}}}]\n",
            ip = vip.ip(),
            port = vip.port()
        ));
    }
    if plan
        .clusters
        .get(1)
        .is_some_and(|second| second.name == c.name)
    {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {REMOTE_ONLY}, namespace: {NAMESPACE}}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: helloworld}}\n  ports: [{{name: http, port: 5000}}]\n",
            ip = service_ip(1, 99),
        ));
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: hello-vm, namespace: {NAMESPACE}}}\nspec:\n  hosts: [{SELECTED_ENTRY}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 5000, name: http, protocol: HTTP}}]\n  workloadSelector: {{labels: {{app: helloworld}}}}\n"
        ));
    }
    for w in &c.workloads {
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
    // The ingress gateway, found by its name; its labels are what Gateways select.
    out.push_str(&format!(
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: ingressgateway-{c}, namespace: istio-system}}\nspec: {{address: {ip}, labels: {{istio: ingressgateway, app: istio-ingressgateway}}, serviceAccount: {INGRESS_ACCOUNT}, locality: {locality}, network: {network}}}\n",
        c = c.name,
        ip = c.ingress.ip(),
        locality = c.locality,
        network = c.network,
    ));
    out
}
