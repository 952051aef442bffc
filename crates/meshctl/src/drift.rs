//! `meshctl analyze --all-clusters`: what differs between clusters in a way that breaks
//! cross-cluster behaviour. Services of one name and namespace are one service across
//! linked clusters (namespace sameness), so their ports and protocols must agree; a
//! DestinationRule or VirtualService for one host decides traffic that may land in any
//! cluster, so its copies must agree too, and exist wherever the callers are. A link
//! must trust the roots the linked cluster signs under, and links go both ways; a
//! service whose namespace differs between clusters is two services.

use std::collections::BTreeMap;

use mesh_api::Resource;

use crate::analyze::{Finding, Input, Severity};

/// The findings across `clusters` (name, what was read from it).
pub(crate) fn drift(clusters: &[(String, Input)]) -> Vec<Finding> {
    let mut out = Vec::new();
    service_ports(clusters, &mut out);
    for kind in ["DestinationRule", "VirtualService"] {
        copies(clusters, kind, &mut out);
    }
    links(clusters, &mut out);
    namespace_sameness(clusters, &mut out);
    out
}

/// The certificates of a PEM bundle (nothing when it does not parse).
fn certs(pem: &str) -> Vec<Vec<u8>> {
    mesh_identity::cert::parse_certs(pem.as_bytes(), "bundle")
        .map(|v| v.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default()
}

/// A root as a person tells it apart: subject and serial.
fn describe(der: &[u8]) -> String {
    mesh_identity::cert::CertInfo::parse(der, "root").map_or_else(
        |_| "an unreadable certificate".into(),
        |i| format!("{} (serial {})", i.subject, i.serial),
    )
}

/// Links between the clusters analyzed: each must trust the roots the cluster it
/// names signs under (else neither discovery's peering nor the workloads' mTLS across
/// them verifies), and a link one way only carries endpoints one way only.
fn links(clusters: &[(String, Input)], out: &mut Vec<Finding>) {
    let by_name: BTreeMap<&str, &Input> = clusters.iter().map(|(n, i)| (n.as_str(), i)).collect();
    for (cluster, input) in clusters {
        for link in &input.links {
            let link = match link {
                Ok(l) => l,
                Err(e) => {
                    out.push(Finding {
                        severity: Severity::Error,
                        code: "ISM0105",
                        object: e.split(':').next().unwrap_or_default().to_owned(),
                        field: "data".into(),
                        message: format!("in cluster {cluster}, a link Secret cannot be read: {e}"),
                        fix: "create it again with `meshctl remote-secret` in the cluster it names"
                            .into(),
                    });
                    continue;
                }
            };
            let object = format!("Secret {}/{}", discovery::NAMESPACE, link.secret);
            let Some(peer) = by_name.get(link.cluster.as_str()) else {
                continue;
            };
            if let Some(roots) = &peer.ca_roots {
                let trusted = certs(&link.trust_bundle);
                let theirs = certs(roots);
                let missing: Vec<String> = theirs
                    .iter()
                    .filter(|r| !trusted.contains(r))
                    .map(|r| describe(r))
                    .collect();
                if !theirs.is_empty() && !missing.is_empty() {
                    let none = missing.len() == theirs.len();
                    out.push(Finding {
                        severity: if none { Severity::Error } else { Severity::Warning },
                        code: "ISM0105",
                        object: object.clone(),
                        field: "data.trustBundle".into(),
                        message: format!(
                            "cluster {cluster}'s link to {} does not trust {} root(s) {} signs under: {}; {}",
                            link.cluster,
                            if none { "any of the" } else { "all the" },
                            link.cluster,
                            missing.join(", "),
                            if none {
                                "peering with it and mTLS from its workloads fail"
                            } else {
                                "workloads with certificates from the missing root are refused (a root rotation half done?)"
                            }
                        ),
                        fix: format!(
                            "run `meshctl remote-secret` in {} again and apply its output in {cluster}",
                            link.cluster
                        ),
                    });
                }
            }
            let back = peer.links.iter().flatten().any(|l| l.cluster == *cluster);
            if !back {
                out.push(Finding {
                    severity: Severity::Warning,
                    code: "ISM0106",
                    object,
                    field: "data.cluster".into(),
                    message: format!(
                        "cluster {cluster} is linked to {} but {} is not linked to {cluster}: endpoints go from {} to {cluster} only, so {}'s callers never fail over to {cluster}",
                        link.cluster, link.cluster, link.cluster, link.cluster
                    ),
                    fix: format!(
                        "run `meshctl remote-secret` in {cluster} and apply its output in {}",
                        link.cluster
                    ),
                });
            }
        }
    }
}

/// Namespaces every cluster has for itself, whose Services are not the application's.
const SYSTEM_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "istio-system",
];

/// Namespace sameness: a service is its name in its namespace in every cluster. A
/// name found in one namespace in some clusters and in another elsewhere, and never in
/// both, is two services: calls to one never reach the other's endpoints.
fn namespace_sameness(clusters: &[(String, Input)], out: &mut Vec<Finding>) {
    // name → namespace → clusters
    let mut names: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for (cluster, input) in clusters {
        for (host, info) in &input.service_info {
            if SYSTEM_NAMESPACES.contains(&info.namespace.as_str()) {
                continue;
            }
            let name = host.split('.').next().unwrap_or_default();
            names
                .entry(name)
                .or_default()
                .entry(info.namespace.as_str())
                .or_default()
                .push(cluster);
        }
    }
    for (name, spaces) in names.iter().filter(|(_, s)| s.len() > 1) {
        let disjoint = spaces.values().enumerate().all(|(i, a)| {
            spaces
                .values()
                .skip(i + 1)
                .all(|b| a.iter().all(|c| !b.contains(c)))
        });
        // In several namespaces of one cluster: a deliberate layout, not drift.
        if !disjoint {
            continue;
        }
        let layout: Vec<String> = spaces
            .iter()
            .map(|(ns, cs)| format!("{ns}/{name} in {}", cs.join(", ")))
            .collect();
        out.push(Finding {
            severity: Severity::Warning,
            code: "ISM0107",
            object: format!("Service {name}"),
            field: "metadata.namespace".into(),
            message: format!(
                "{}: by namespace sameness these are different services, so callers of one never reach the other's endpoints across clusters",
                layout.join("; ")
            ),
            fix: "put the service in the same namespace in every cluster (or, if they are different services, give them different names)".into(),
        });
    }
}

/// A Service port: number, name, appProtocol.
type Port = (u16, String, Option<String>);

/// One line per cluster: `cluster: value`.
fn per_cluster<T: std::fmt::Debug>(values: &BTreeMap<&str, T>) -> String {
    values
        .iter()
        .map(|(c, v)| format!("{c}: {v:?}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A service in several clusters whose ports (number, name, appProtocol) differ, or
/// whose `exportTo` differs: requests balanced across clusters meet different ports
/// or protocols, or are visible from some clusters' namespaces only.
fn service_ports(clusters: &[(String, Input)], out: &mut Vec<Finding>) {
    let mut hosts: BTreeMap<&str, BTreeMap<&str, &crate::analyze::ServiceInfo>> = BTreeMap::new();
    for (cluster, input) in clusters {
        for (host, info) in &input.service_info {
            hosts.entry(host).or_default().insert(cluster, info);
        }
    }
    for (host, by_cluster) in hosts.iter().filter(|(_, m)| m.len() > 1) {
        let mut ports: BTreeMap<&str, Vec<Port>> = BTreeMap::new();
        let mut export: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (c, info) in by_cluster {
            let mut p = info.ports.clone();
            p.sort();
            ports.insert(c, p);
            let mut e = info.export_to.clone();
            e.sort();
            export.insert(c, e);
        }
        let object = format!("Service {host}");
        if ports
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
        {
            out.push(Finding {
                severity: Severity::Error,
                code: "ISM0101",
                object: object.clone(),
                field: "spec.ports".into(),
                message: format!(
                    "the service's ports differ between clusters, yet its endpoints are merged across them: {}",
                    per_cluster(&ports)
                ),
                fix: "give the Service the same ports (number, name, appProtocol) in every cluster".into(),
            });
        }
        if export
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
        {
            out.push(Finding {
                severity: Severity::Warning,
                code: "ISM0102",
                object,
                field: "metadata.annotations[networking.istio.io/exportTo]".into(),
                message: format!(
                    "the service is visible to different namespaces in different clusters: {}",
                    per_cluster(&export)
                ),
                fix: "give the Service the same exportTo in every cluster".into(),
            });
        }
    }
}

/// The objects of `kind` in one cluster, by `namespace/name`, as their specs.
fn specs(input: &Input, kind: &str) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for r in input.resources.iter().filter_map(|r| r.as_ref().ok()) {
        let spec = match r {
            Resource::DestinationRule(o) if kind == "DestinationRule" => {
                serde_json::to_value(&o.spec)
            }
            Resource::VirtualService(o) if kind == "VirtualService" => {
                serde_json::to_value(&o.spec)
            }
            _ => continue,
        };
        let meta = r.metadata();
        let key = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default()
        );
        out.insert(key, spec.unwrap_or_default());
    }
    out
}

/// A DestinationRule or VirtualService whose copies differ between clusters (traffic
/// to its host is split, balanced or failed over differently depending on where the
/// caller is), or that exists in some clusters only.
fn copies(clusters: &[(String, Input)], kind: &str, out: &mut Vec<Finding>) {
    let mut objects: BTreeMap<String, BTreeMap<&str, serde_json::Value>> = BTreeMap::new();
    for (cluster, input) in clusters {
        for (key, spec) in specs(input, kind) {
            objects.entry(key).or_default().insert(cluster, spec);
        }
    }
    let names: Vec<&str> = clusters.iter().map(|(c, _)| c.as_str()).collect();
    for (key, by_cluster) in objects {
        let object = format!("{kind} {key}");
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|c| !by_cluster.contains_key(c))
            .collect();
        if !missing.is_empty() {
            out.push(Finding {
                severity: Severity::Warning,
                code: "ISM0103",
                object: object.clone(),
                field: String::new(),
                message: format!(
                    "it exists in {} but not in {}: callers there route without it",
                    by_cluster.keys().copied().collect::<Vec<_>>().join(", "),
                    missing.join(", ")
                ),
                fix: format!(
                    "apply it in {} too, or delete it everywhere",
                    missing.join(", ")
                ),
            });
        }
        let mut first: Option<(&str, &serde_json::Value)> = None;
        for (c, spec) in &by_cluster {
            match first {
                None => first = Some((c, spec)),
                Some((fc, fs)) if fs != spec => {
                    let fields = differing_fields(fs, spec);
                    out.push(Finding {
                        severity: Severity::Warning,
                        code: "ISM0104",
                        object: object.clone(),
                        field: fields.join(", "),
                        message: format!(
                            "its copies in {fc} and {c} differ: traffic to the host is handled differently depending on the caller's cluster"
                        ),
                        fix: "apply the same object in every cluster".into(),
                    });
                }
                Some(_) => {}
            }
        }
    }
}

/// The top-level fields of `spec` (`spec.subsets`, `spec.trafficPolicy`, ...) that
/// differ between two copies.
fn differing_fields(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("spec.{k}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::tests::input;

    const SAME: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}
";

    #[test]
    fn drift_planted_between_two_clusters_is_found_and_agreement_is_not() {
        let clean = drift(&[("east".into(), input(SAME)), ("west".into(), input(SAME))]);
        assert!(clean.is_empty(), "{clean:?}");

        let west = SAME
            .replace("{name: http, port: 9080}", "{name: grpc, port: 9080}")
            .replace("consecutive5xxErrors: 1", "consecutive5xxErrors: 5")
            + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}\n";
        let found = drift(&[("east".into(), input(SAME)), ("west".into(), input(&west))]);
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        let has = |code: &str, what: &str| {
            found
                .iter()
                .any(|f| f.code == code && f.to_string().contains(what))
        };
        assert!(
            has(
                "ISM0101",
                "east: [(9080, \"http\", None)]; west: [(9080, \"grpc\", None)]"
            ),
            "{text:#?}"
        );
        assert!(has("ISM0104", "spec.trafficPolicy"), "{text:#?}");
        assert!(
            has("ISM0103", "it exists in west but not in east"),
            "{text:#?}"
        );
        assert!(found.iter().any(|f| f.severity == Severity::Error));
    }

    fn link(cluster: &str, bundle: &str) -> discovery::links::Link {
        discovery::links::Link {
            secret: format!("istio-remote-secret-{cluster}"),
            cluster: cluster.into(),
            network: format!("net-{cluster}"),
            discovery_address: "10.0.0.1:15012".into(),
            gateway_address: "10.0.0.1:15443".into(),
            gateway_quic: false,
            trust_bundle: bundle.into(),
            trust_domain: "mesh.example".into(),
        }
    }

    #[test]
    fn links_must_trust_the_peers_roots_and_go_both_ways() {
        let td: mesh_identity::TrustDomain = "mesh.example".parse().unwrap();
        let year = std::time::Duration::from_secs(365 * 24 * 3600);
        let root = mesh_identity::ca::RootCa::generate(&td, year).unwrap();
        let other = mesh_identity::ca::RootCa::generate(&td, year).unwrap();
        let cluster = |roots: &str, links: Vec<discovery::links::Link>| {
            let mut i = input("");
            i.ca_roots = Some(roots.to_owned());
            i.links = links.into_iter().map(Ok).collect();
            i
        };
        // One root, linked both ways: nothing to say.
        let east = cluster(root.cert_pem(), vec![link("west", root.cert_pem())]);
        let west = cluster(root.cert_pem(), vec![link("east", root.cert_pem())]);
        let clean = drift(&[("east".into(), east), ("west".into(), west)]);
        assert!(clean.is_empty(), "{clean:?}");

        // West moved to another root; east's link still trusts the old one only. And
        // west has no link back to east.
        let east = cluster(root.cert_pem(), vec![link("west", root.cert_pem())]);
        let west = cluster(other.cert_pem(), vec![]);
        let found = drift(&[("east".into(), east), ("west".into(), west)]);
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        let untrusted = found.iter().find(|f| f.code == "ISM0105").unwrap();
        assert_eq!(untrusted.severity, Severity::Error, "{text:#?}");
        assert!(
            untrusted
                .message
                .contains("does not trust any of the root(s) west signs under")
                && untrusted.message.contains(&other.info().serial),
            "{text:#?}"
        );
        assert!(
            found.iter().any(|f| f.code == "ISM0106"
                && f.message
                    .contains("east is linked to west but west is not linked to east")),
            "{text:#?}"
        );

        // Mid-rotation: west signs under both, east trusts one: a warning.
        let both = format!("{}{}", root.cert_pem(), other.cert_pem());
        let east = cluster(root.cert_pem(), vec![link("west", root.cert_pem())]);
        let west = cluster(&both, vec![link("east", &both)]);
        let found = drift(&[("east".into(), east), ("west".into(), west)]);
        let half: Vec<&Finding> = found.iter().filter(|f| f.code == "ISM0105").collect();
        assert_eq!(half.len(), 1, "{found:?}");
        assert_eq!(half[0].severity, Severity::Warning);
    }

    #[test]
    fn a_service_in_different_namespaces_across_clusters_is_two_services() {
        let east = input(SAME);
        let west = input(&SAME.replace("namespace: shop", "namespace: shop-prod"));
        let found = drift(&[("east".into(), east), ("west".into(), west)]);
        let sameness = found.iter().find(|f| f.code == "ISM0107").unwrap();
        assert!(
            sameness
                .message
                .contains("shop/reviews in east; shop-prod/reviews in west"),
            "{sameness}"
        );
        // The same name in two namespaces of one cluster is a layout, not drift.
        let both = format!(
            "{SAME}---\n{}",
            SAME.replace("namespace: shop", "namespace: shop-prod")
        );
        let found = drift(&[("east".into(), input(&both)), ("west".into(), input(SAME))]);
        assert!(!found.iter().any(|f| f.code == "ISM0107"), "{found:?}");
    }
}
