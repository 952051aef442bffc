//! `meshctl analyze --all-clusters`: what differs between clusters in a way that breaks
//! cross-cluster behaviour. Services of one name and namespace are one service across
//! linked clusters (namespace sameness), so their ports and protocols must agree; a
//! DestinationRule or VirtualService for one host decides traffic that may land in any
//! cluster, so its copies must agree too, and exist wherever the callers are.

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
    out
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
}
