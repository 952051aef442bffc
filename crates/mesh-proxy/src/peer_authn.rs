//! PeerAuthentication for this workload, with Istio's precedence: a policy with a
//! matching selector over the namespace-wide policy over the mesh-wide one (root
//! namespace); `UNSET` inherits from the next level; port-level settings (keyed by the
//! workload port) override the workload policy. Without any policy the mode is
//! PERMISSIVE, as in Istio.

use std::collections::BTreeMap;

use mesh_api::security::{MtlsMode, PeerAuthenticationSpec};

use crate::authz::ROOT_NAMESPACE;
use crate::config::Node;

/// The effective inbound mTLS modes of a workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerAuthn {
    /// Mode for ports without an override.
    pub default: MtlsMode,
    /// Per workload port.
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl Default for PeerAuthn {
    fn default() -> Self {
        Self {
            default: MtlsMode::Permissive,
            ports: BTreeMap::new(),
        }
    }
}

impl PeerAuthn {
    /// Resolves the policies (namespace, name, spec), given oldest first, that apply
    /// to `node`.
    pub(crate) fn compile(
        policies: &[(String, String, &PeerAuthenticationSpec)],
        node: &Node,
    ) -> Self {
        let no_selector = |s: &PeerAuthenticationSpec| {
            s.selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
        };
        let level = |pred: &dyn Fn(&str, &PeerAuthenticationSpec) -> bool| {
            // Several policies at one level: the oldest wins, as in Istio.
            policies
                .iter()
                .find(|(ns, _, s)| pred(ns, s))
                .map(|(_, _, s)| *s)
        };
        let mesh = level(&|ns, s| ns == ROOT_NAMESPACE && no_selector(s));
        let namespace = level(&|ns, s| ns == node.namespace && no_selector(s));
        let workload = level(&|ns, s| {
            ns == node.namespace
                && !no_selector(s)
                && s.selector.as_ref().is_some_and(|sel| {
                    sel.match_labels
                        .iter()
                        .all(|(k, v)| node.labels.get(k) == Some(v))
                })
        });
        let mode_of = |s: Option<&PeerAuthenticationSpec>| {
            s.and_then(|s| s.mtls)
                .map(|m| m.mode)
                .filter(|m| *m != MtlsMode::Unset)
        };
        let default = mode_of(workload)
            .or(mode_of(namespace))
            .or(mode_of(mesh))
            .unwrap_or(MtlsMode::Permissive);
        let ports = workload
            .map(|w| {
                w.port_level_mtls
                    .iter()
                    .map(|(p, m)| {
                        (
                            *p as u16,
                            if m.mode == MtlsMode::Unset {
                                default
                            } else {
                                m.mode
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { default, ports }
    }

    /// The mode for a workload port.
    pub fn mode_for(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }

    /// Whether plaintext may reach the workload on `port`.
    pub fn plaintext_allowed(&self, port: u16) -> bool {
        matches!(
            self.mode_for(port),
            MtlsMode::Permissive | MtlsMode::Disable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa(yaml: &str) -> PeerAuthenticationSpec {
        match mesh_api::parse_resource(yaml).unwrap() {
            mesh_api::Resource::PeerAuthentication(p) => p.spec,
            _ => unreachable!(),
        }
    }

    #[test]
    fn workload_over_namespace_over_mesh_with_port_overrides() {
        let mesh = pa(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}",
        );
        let ns = pa(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: UNSET}}",
        );
        let wl = pa(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: db, namespace: shop}\nspec: {selector: {matchLabels: {app: db}}, portLevelMtls: {5432: {mode: DISABLE}}}",
        );
        let node = |app: &str| Node {
            namespace: "shop".into(),
            labels: [("app".to_owned(), app.to_owned())].into(),
            ..Default::default()
        };
        let all = vec![
            ("istio-system".to_owned(), "default".to_owned(), &mesh),
            ("shop".to_owned(), "default".to_owned(), &ns),
            ("shop".to_owned(), "db".to_owned(), &wl),
        ];
        let db = PeerAuthn::compile(&all, &node("db"));
        assert_eq!(
            db.mode_for(8080),
            MtlsMode::Strict,
            "UNSET inherits the mesh-wide STRICT"
        );
        assert_eq!(db.mode_for(5432), MtlsMode::Disable);
        assert!(!db.plaintext_allowed(8080) && db.plaintext_allowed(5432));
        assert_eq!(
            PeerAuthn::compile(&[], &node("web")).default,
            MtlsMode::Permissive,
            "Istio's default"
        );
    }
}
