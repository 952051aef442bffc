//! CustomResourceDefinitions derived from the types, so the schema the API server
//! enforces is the one this crate parses.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::document::{NETWORKING_VERSIONS, SECURITY_VERSIONS};
use crate::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

/// Where the generated CRDs live in the repository.
pub const CRD_FILE: &str = "deploy/crds/istio-crds.yaml";

/// The command that regenerates [`CRD_FILE`].
pub const REGENERATE: &str = "cargo run -p meshctl -- crds --out deploy/crds/istio-crds.yaml";

/// Every CRD: the Istio kinds, each serving all accepted versions with `v1` as the
/// storage version, and the MCS API kinds (`v1alpha1`).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        served_as(VirtualService::crd(), NETWORKING_VERSIONS),
        served_as(DestinationRule::crd(), NETWORKING_VERSIONS),
        served_as(Gateway::crd(), NETWORKING_VERSIONS),
        served_as(ServiceEntry::crd(), NETWORKING_VERSIONS),
        served_as(Sidecar::crd(), NETWORKING_VERSIONS),
        served_as(WorkloadEntry::crd(), NETWORKING_VERSIONS),
        served_as(PeerAuthentication::crd(), SECURITY_VERSIONS),
        served_as(AuthorizationPolicy::crd(), SECURITY_VERSIONS),
        served_as(RequestAuthentication::crd(), SECURITY_VERSIONS),
        part_of_isthmus(spec_optional(crate::mcs::ServiceExport::crd())),
        part_of_isthmus(crate::mcs::ServiceImport::crd()),
    ]
}

/// The CRDs as one multi-document YAML file, the content of [`CRD_FILE`].
pub fn render_yaml() -> String {
    let mut out =
        String::from("# Generated from crates/mesh-api by `meshctl crds`; do not edit by hand.\n");
    for crd in crds() {
        out.push_str("---\n");
        // The CRD types are plain data, so serialization cannot fail.
        out.push_str(&serde_saphyr::to_string(&crd).expect("CRDs serialize to YAML"));
    }
    out
}

/// Copies the `v1` version of a derived CRD to the older versions Istio users still
/// write. The schemas are identical, so no conversion webhook is needed.
fn served_as(mut crd: CustomResourceDefinition, versions: &[&str]) -> CustomResourceDefinition {
    let v1 = crd.spec.versions[0].clone();
    crd.spec.versions = versions
        .iter()
        .map(|name| {
            let mut v = v1.clone();
            v.name = (*name).to_owned();
            v.served = true;
            v.storage = *name == "v1";
            v
        })
        .collect();
    part_of_isthmus(crd)
}

/// Drops `spec` from the required fields: a ServiceExport is written without one.
fn spec_optional(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for v in &mut crd.spec.versions {
        if let Some(schema) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            && let Some(required) = schema.required.as_mut()
        {
            required.retain(|r| r != "spec");
        }
    }
    crd
}

/// Labels a CRD as installed with Isthmus.
fn part_of_isthmus(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("app.kubernetes.io/part-of".into(), "isthmus".into());
    crd
}
