//! Pod networking for the testbed run as root: each cluster is a network of its own
//! (a bridge in a namespace of its own) and each workload a pod (a namespace on that
//! bridge, its sidecar capturing its traffic with iptables). The host namespace is
//! the clusters' "node": discovery and the east-west gateway of cluster `c` listen on
//! addresses of the host end of the cluster's uplink, and the host does not forward
//! between clusters, so the only way from one cluster's pods to another's is that
//! cluster's gateway.
//!
//! ```text
//!   pod itb-curl-east ─┐                                   ┌─ pod itb-helloworld-v2
//!   pod itb-…         ─┤ br0 (ns itb-east)   (ns itb-west) br0 ├─ pod itb-…
//!                      └── uplink ══ itb0 ─ host ─ itb1 ══ uplink ──┘
//!                          10.240.0.1 discovery-east   10.241.0.1 discovery-west
//!                          10.240.0.2 gateway-east     10.241.0.2 gateway-west
//! ```
//!
//! Every name is fixed (`itb-…` namespaces, `itbN` host links), so `down` finds what
//! an interrupted run left behind.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use testbed::netns::{self, Netns};

use super::plan::Plan;

/// The host address every pod reaches the shared tracing collector on (added to the
/// first cluster's uplink).
pub(crate) const COLLECTOR_IP: Ipv4Addr = Ipv4Addr::new(10, 239, 0, 1);

/// Where pods send spans (OTLP/gRPC).
pub(crate) fn collector() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(COLLECTOR_IP), 4317)
}

/// The host end of cluster `index`'s uplink.
pub(crate) fn host_link(index: usize) -> String {
    format!("itb{index}")
}

/// Whether pod networking can run here: root, `ip` and `iptables`.
pub(crate) fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".into());
    }
    for tool in ["ip", "iptables"] {
        let found = std::process::Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            let package = if tool == "ip" { "iproute2" } else { tool };
            return Err(format!(
                "`{tool}` is not installed; install it with `apt-get install {package}` (Debian/Ubuntu) or `dnf install {package}` (Fedora)"
            ));
        }
    }
    Ok(())
}

/// Every namespace and host link a plan uses, for cleanup.
pub(crate) fn names(plan: &Plan) -> (Vec<String>, Vec<String>) {
    let mut namespaces = Vec::new();
    let mut links = Vec::new();
    for (i, c) in plan.clusters.iter().enumerate() {
        namespaces.extend(c.workloads.iter().filter_map(|w| w.pod.clone()));
        namespaces.extend(c.netns.clone());
        links.push(host_link(i));
    }
    (namespaces, links)
}

/// Removes whatever a previous run of this plan left (namespaces, host links).
pub(crate) fn remove(namespaces: &[String], links: &[String]) {
    for ns in namespaces {
        if let Err(e) = netns::delete(ns) {
            eprintln!("warning: {e:#}");
        }
    }
    for link in links {
        // Gone with its peer's namespace; this is for a half-made link.
        if std::path::Path::new("/sys/class/net").join(link).exists() {
            let _ = netns::ip(&["link", "del", link]);
        }
    }
}

/// A reason the plan's addresses cannot be used: another testbed's links, or host
/// routes that overlap them.
pub(crate) fn conflict(plan: &Plan) -> Option<String> {
    let (namespaces, links) = names(plan);
    if let Some(l) = links
        .iter()
        .find(|l| std::path::Path::new("/sys/class/net").join(l).exists())
    {
        return Some(format!(
            "host link {l} exists: another testbed is probably running"
        ));
    }
    if let Some(ns) = namespaces.iter().find(|n| netns::exists(n)) {
        return Some(format!(
            "network namespace {ns} exists: another testbed is probably running"
        ));
    }
    None
}

/// The namespaces of a running pod network; dropping it deletes them (and with them
/// every link, address and iptables rule made for the testbed): the pods first, then
/// the cluster networks (fields drop in order).
pub(crate) struct PodNetwork {
    pods: Vec<Netns>,
    clusters: Vec<Netns>,
}

fn cidr(ip: IpAddr, len: u8) -> String {
    format!("{ip}/{len}")
}

/// The /16 network of an address.
fn network16(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, _, _] = v4.octets();
            format!("{a}.{b}.0.0/16")
        }
        IpAddr::V6(_) => cidr(ip, 128),
    }
}

/// Builds the clusters' networks and pods of `plan` (pod mode).
pub(crate) fn build(plan: &Plan) -> anyhow::Result<PodNetwork> {
    let mut net = PodNetwork {
        pods: Vec::new(),
        clusters: Vec::new(),
    };
    for (i, c) in plan.clusters.iter().enumerate() {
        let name = c
            .netns
            .as_deref()
            .context("a pod-mode cluster has a network")?;
        let cluster = Netns::create_named(name)?;
        cluster.ip(&["link", "add", "br0", "type", "bridge"])?;
        cluster.ip(&["link", "set", "br0", "up"])?;
        let host = host_link(i);
        netns::ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "uplink", "netns", name,
        ])
        .with_context(|| format!("linking cluster {} to the host", c.name))?;
        netns::ip(&["addr", "add", &cidr(c.discovery.ip(), 16), "dev", &host])?;
        netns::ip(&["addr", "add", &cidr(c.gateway.ip(), 16), "dev", &host])?;
        if i == 0 {
            netns::ip(&["addr", "add", &format!("{COLLECTOR_IP}/32"), "dev", &host])?;
        }
        netns::ip(&["link", "set", &host, "up"])?;
        cluster.ip(&["link", "set", "uplink", "master", "br0", "up"])?;
        let node = c.discovery.ip().to_string();
        for (n, w) in c.workloads.iter().enumerate() {
            let pod_name = w.pod.as_deref().context("a pod-mode workload has a pod")?;
            let pod = Netns::create_named(pod_name)?;
            let port = format!("p{n}");
            cluster.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", pod_name,
            ])?;
            cluster.ip(&["link", "set", &port, "master", "br0", "up"])?;
            pod.ip(&["addr", "add", &cidr(w.ip, 16), "dev", "eth0"])?;
            pod.ip(&["link", "set", "eth0", "up"])?;
            pod.ip(&["route", "add", "default", "via", &node])?;
            // Other clusters' networks are unreachable, their gateways excepted.
            for other in plan.clusters.iter().filter(|o| o.name != c.name) {
                pod.ip(&[
                    "route",
                    "add",
                    "blackhole",
                    &network16(other.discovery.ip()),
                ])?;
                pod.ip(&["route", "add", &cidr(other.gateway.ip(), 32), "via", &node])?;
            }
            net.pods.push(pod);
        }
        net.clusters.push(cluster);
    }
    Ok(net)
}
