//! Istio's precedence where objects conflict, in one place, so the proxies and
//! `meshctl analyze` agree on which object wins and can say why.
//!
//! - **Order**: the oldest `creationTimestamp` first, then `name`, then `namespace`
//!   (objects without a timestamp, as in files, sort by name).
//! - **VirtualServices** for one host (the `mesh` gateway): the first in that order is
//!   used, the others are ignored for that host.
//! - **DestinationRules** for one host: the rule's namespace decides first, as seen
//!   by the client — its own namespace, then the host's service namespace, then the
//!   root namespace, then any other. Rules of that namespace are merged in order:
//!   every subset name keeps its first definition, and the top-level
//!   `trafficPolicy` is the first rule's that has one. What a later rule loses is
//!   reported.
//! - **PeerAuthentications** at one level (mesh, namespace, workload): the first in
//!   that order applies.

use std::cmp::Ordering;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::networking::{DestinationRule, DestinationRuleSpec};

/// The namespace whose unselected policies apply mesh-wide (Istio's root namespace).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Istio's order between two objects: older first, then by name, then namespace.
pub fn older_first(a: &ObjectMeta, b: &ObjectMeta) -> Ordering {
    let time = |m: &ObjectMeta| m.creation_timestamp.as_ref().map(|t| t.0);
    time(a)
        .cmp(&time(b))
        .then_with(|| a.name.cmp(&b.name))
        .then_with(|| a.namespace.cmp(&b.namespace))
}

/// Why `winner` comes before `loser`, in words for a finding.
pub fn why_first(winner: &ObjectMeta, loser: &ObjectMeta) -> String {
    match (&winner.creation_timestamp, &loser.creation_timestamp) {
        (Some(w), Some(l)) if w.0 != l.0 => {
            format!("it is older (created {})", w.0)
        }
        (None, Some(_)) => "it has no creation time, which sorts first".into(),
        _ => "it sorts first by name (no older creation time)".into(),
    }
}

/// The namespace of a service host (`name.NS.svc.…`), if it is one.
pub fn host_namespace(fqdn: &str) -> Option<&str> {
    let mut labels = fqdn.split('.');
    let _name = labels.next()?;
    let ns = labels.next()?;
    (labels.next() == Some("svc")).then_some(ns)
}

/// What a later DestinationRule lost to an earlier one for the same host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    /// The rule that lost it (`namespace/name`).
    pub rule: String,
    /// The field it lost, e.g. `spec.subsets[1]` or `spec.trafficPolicy`.
    pub field: String,
    /// The rule whose definition is used instead.
    pub kept_by: String,
    /// Why that rule comes first ([`why_first`]).
    pub why: String,
}

/// The DestinationRule in force for one host as one client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedRule {
    /// The merged spec.
    pub spec: DestinationRuleSpec,
    /// The rules merged, in precedence order (`namespace/name`).
    pub rules: Vec<String>,
    /// What later rules define that is not used.
    pub shadowed: Vec<Shadowed>,
}

fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Picks and merges the DestinationRules for `host` (all given rules are for it)
/// as a client in `client_namespace` sees them. `None` when none is given.
pub fn merge_destination_rules(
    host: &str,
    rules: &[&DestinationRule],
    client_namespace: &str,
) -> Option<MergedRule> {
    let ns_of = |r: &DestinationRule| r.metadata.namespace.clone().unwrap_or("default".into());
    let rank = |ns: &str| {
        if ns == client_namespace {
            0
        } else if Some(ns) == host_namespace(host) {
            1
        } else if ns == ROOT_NAMESPACE {
            2
        } else {
            3
        }
    };
    let mut sorted: Vec<&DestinationRule> = rules.to_vec();
    sorted.sort_by(|a, b| {
        rank(&ns_of(a))
            .cmp(&rank(&ns_of(b)))
            .then_with(|| older_first(&a.metadata, &b.metadata))
    });
    let first = sorted.first()?;
    // Only the rules of the winning namespace are merged (for "any other" namespace,
    // that of the first rule in order).
    let chosen_ns = ns_of(first);
    let mut spec = first.spec.clone();
    let mut rules = vec![key(&first.metadata)];
    let mut shadowed = Vec::new();
    // Which rule defined the traffic policy and each subset name.
    let mut policy_from = spec.traffic_policy.as_ref().map(|_| *first);
    let mut subset_from: Vec<(String, &DestinationRule)> = spec
        .subsets
        .iter()
        .map(|s| (s.name.clone(), *first))
        .collect();
    let lost = |r: &DestinationRule, field: String, kept: &DestinationRule| Shadowed {
        rule: key(&r.metadata),
        field,
        kept_by: key(&kept.metadata),
        why: why_first(&kept.metadata, &r.metadata),
    };
    for r in sorted
        .iter()
        .copied()
        .skip(1)
        .filter(|r| ns_of(r) == chosen_ns)
    {
        rules.push(key(&r.metadata));
        match (&r.spec.traffic_policy, policy_from) {
            (Some(p), None) => {
                spec.traffic_policy = Some(p.clone());
                policy_from = Some(r);
            }
            (Some(_), Some(kept)) => shadowed.push(lost(r, "spec.trafficPolicy".into(), kept)),
            (None, _) => {}
        }
        for (i, s) in r.spec.subsets.iter().enumerate() {
            match subset_from.iter().find(|(n, _)| *n == s.name) {
                Some((_, kept)) => shadowed.push(lost(r, format!("spec.subsets[{i}]"), kept)),
                None => {
                    spec.subsets.push(s.clone());
                    subset_from.push((s.name.clone(), r));
                }
            }
        }
        for e in &r.spec.export_to {
            if !spec.export_to.contains(e) {
                spec.export_to.push(e.clone());
            }
        }
    }
    let out = MergedRule {
        spec,
        rules,
        shadowed,
    };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resource;

    fn dr(ns: &str, name: &str, created: Option<&str>, spec: &str) -> DestinationRule {
        let created = created
            .map(|t| format!(", creationTimestamp: \"{t}\""))
            .unwrap_or_default();
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}{created}}}\nspec: {spec}\n"
        );
        match crate::parse_resource(&yaml).unwrap() {
            Resource::DestinationRule(d) => *d,
            _ => unreachable!(),
        }
    }

    const HOST: &str = "reviews.shop.svc.cluster.local";

    #[test]
    fn older_wins_then_name_then_namespace() {
        let meta = |ns: &str, name: &str, t: Option<&str>| dr(ns, name, t, "{host: x}").metadata;
        let old = meta("shop", "zz", Some("2026-01-01T00:00:00Z"));
        let new = meta("shop", "aa", Some("2026-06-01T00:00:00Z"));
        assert_eq!(older_first(&old, &new), Ordering::Less);
        assert!(why_first(&old, &new).contains("older (created 2026-01-01"));
        let (a, b) = (meta("shop", "a", None), meta("shop", "b", None));
        assert_eq!(older_first(&a, &b), Ordering::Less);
        assert!(why_first(&a, &b).contains("by name"));
        let (x, y) = (meta("alpha", "a", None), meta("beta", "a", None));
        assert_eq!(older_first(&x, &y), Ordering::Less);
    }

    #[test]
    fn rules_of_one_namespace_merge_and_the_older_keeps_what_both_define() {
        let older = dr(
            "shop",
            "newer-name-but-older",
            Some("2026-01-01T00:00:00Z"),
            "{host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}, subsets: [{name: v1, labels: {version: v1}}]}",
        );
        let newer = dr(
            "shop",
            "a-canary",
            Some("2026-02-01T00:00:00Z"),
            "{host: reviews, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}, subsets: [{name: v1, labels: {version: other}}, {name: v2, labels: {version: v2}}]}",
        );
        let m = merge_destination_rules(HOST, &[&newer, &older], "shop").unwrap();
        assert_eq!(m.rules, ["shop/newer-name-but-older", "shop/a-canary"]);
        let subsets: Vec<_> = m
            .spec
            .subsets
            .iter()
            .map(|s| (s.name.as_str(), s.labels["version"].as_str()))
            .collect();
        assert_eq!(subsets, [("v1", "v1"), ("v2", "v2")]);
        assert_eq!(
            m.spec.traffic_policy.unwrap().load_balancer.unwrap().simple,
            Some(crate::networking::SimpleLb::Random)
        );
        assert_eq!(
            m.shadowed,
            [
                Shadowed {
                    rule: "shop/a-canary".into(),
                    field: "spec.trafficPolicy".into(),
                    kept_by: "shop/newer-name-but-older".into(),
                    why: "it is older (created 2026-01-01T00:00:00Z)".into()
                },
                Shadowed {
                    rule: "shop/a-canary".into(),
                    field: "spec.subsets[0]".into(),
                    kept_by: "shop/newer-name-but-older".into(),
                    why: "it is older (created 2026-01-01T00:00:00Z)".into()
                },
            ]
        );
    }

    #[test]
    fn a_later_rule_supplies_the_traffic_policy_the_first_lacks() {
        let subsets = dr("shop", "a", None, "{host: reviews, subsets: [{name: v1}]}");
        let policy = dr(
            "shop",
            "b",
            None,
            "{host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}}",
        );
        let m = merge_destination_rules(HOST, &[&policy, &subsets], "shop").unwrap();
        assert!(m.spec.traffic_policy.is_some());
        assert_eq!(m.spec.subsets.len(), 1);
        assert!(m.shadowed.is_empty(), "{:?}", m.shadowed);
    }

    #[test]
    fn the_client_namespace_then_the_service_namespace_then_the_root_decide() {
        let root = dr(
            ROOT_NAMESPACE,
            "mesh",
            Some("2020-01-01T00:00:00Z"),
            "{host: reviews.shop.svc.cluster.local, subsets: [{name: root}]}",
        );
        let service = dr(
            "shop",
            "svc",
            Some("2025-01-01T00:00:00Z"),
            "{host: reviews, subsets: [{name: svc}]}",
        );
        let client = dr(
            "web",
            "mine",
            Some("2026-01-01T00:00:00Z"),
            "{host: reviews.shop.svc.cluster.local, subsets: [{name: mine}]}",
        );
        let all = [&root, &service, &client];
        let names = |ns: &str, rules: &[&DestinationRule]| {
            let m = merge_destination_rules(HOST, rules, ns).unwrap();
            (
                m.rules,
                m.spec
                    .subsets
                    .iter()
                    .map(|s| s.name.clone())
                    .collect::<Vec<_>>(),
            )
        };
        // Rules of other namespaces are not merged in.
        assert_eq!(
            names("web", &all),
            (vec!["web/mine".into()], vec!["mine".into()])
        );
        assert_eq!(
            names("other", &all),
            (vec!["shop/svc".into()], vec!["svc".into()])
        );
        assert_eq!(names("other", &[&root, &client]).0, ["istio-system/mesh"]);
        assert!(merge_destination_rules(HOST, &[], "web").is_none());
    }
}
