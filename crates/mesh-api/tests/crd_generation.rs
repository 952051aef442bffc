//! The checked-in CRDs are exactly what the types generate.

#[test]
fn checked_in_crds_are_current() {
    // The manifest directory cargo gives at run time is this checkout's, even when
    // the binary was compiled in another one that shares the build cache.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path = format!("{manifest}/../../deploy/crds/istio-crds.yaml");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    let generated = mesh_api::crd::render_yaml();
    assert!(
        on_disk == generated,
        "{} is stale; regenerate it with `{}`",
        mesh_api::crd::CRD_FILE,
        mesh_api::crd::REGENERATE
    );
}

#[test]
fn every_istio_kind_serves_its_versions_with_v1_stored_and_mcs_its_own() {
    for crd in mesh_api::crd::crds() {
        let served: Vec<_> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.as_str())
            .collect();
        let stored: Vec<_> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        if crd.spec.group == mesh_api::mcs::MCS_GROUP {
            // The MCS API's one version; a ServiceExport is written without a spec.
            assert_eq!(
                stored,
                [mesh_api::mcs::MCS_VERSION],
                "{}",
                crd.spec.names.kind
            );
            assert_eq!(served, stored, "{}", crd.spec.names.kind);
            let required = crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| s.required.clone())
                .unwrap_or_default();
            assert_eq!(
                required.contains(&"spec".to_owned()),
                crd.spec.names.kind == "ServiceImport",
                "{}",
                crd.spec.names.kind
            );
        } else {
            assert_eq!(stored, ["v1"], "{}", crd.spec.names.kind);
            assert!(served.contains(&"v1beta1"), "{}", crd.spec.names.kind);
        }
        assert_eq!(crd.spec.scope, "Namespaced");
    }
}
