//! Applying manifests to a control plane the way `kubectl apply --server-side` does:
//! multi-document YAML, any kind the API server serves (CRDs included), resolved
//! through API discovery.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};

/// Field manager of everything the testbed applies.
pub const FIELD_MANAGER: &str = "isthmus-testbed";

/// Applies Isthmus's CRDs and waits until each is Established.
pub async fn apply_crds(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for crd in mesh_api::crd::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
    }
    for crd in mesh_api::crd::crds() {
        let name = crd.metadata.name.unwrap_or_default();
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} not Established after 30 s"))??;
    }
    Ok(())
}

/// How to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create or update.
    Apply,
    /// Server-side dry run: validated and admitted, nothing stored.
    DryRun,
    /// Delete (missing objects are fine).
    Delete,
}

/// Applies (or dry-runs, or deletes) every document of `yaml`, in order. Documents
/// without a namespace go to `default_namespace` when their kind is namespaced.
/// Returns `Kind namespace/name` of each object.
pub async fn apply_yaml(
    client: &kube::Client,
    yaml: &str,
    default_namespace: &str,
    mode: Mode,
) -> anyhow::Result<Vec<String>> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .context("API discovery")?;
    let docs = mesh_api::split_documents(yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut done = Vec::new();
    for doc in docs {
        let obj: DynamicObject =
            serde_json::from_value(doc.clone()).context("reading a document")?;
        let types = obj
            .types
            .clone()
            .context("a document has no apiVersion/kind")?;
        let (group, version) = match types.api_version.split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), types.api_version.clone()),
        };
        let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &types.kind);
        let (resource, caps) = discovery.resolve_gvk(&gvk).with_context(|| {
            format!(
                "the API server does not serve {}/{}",
                types.api_version, types.kind
            )
        })?;
        let name = obj
            .metadata
            .name
            .clone()
            .context("a document has no metadata.name")?;
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = obj
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_owned());
            Api::namespaced_with(client.clone(), &ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let what = format!(
            "{} {}{name}",
            types.kind,
            obj.metadata
                .namespace
                .as_deref()
                .map(|n| format!("{n}/"))
                .unwrap_or_default()
        );
        match mode {
            Mode::Delete => match api.delete(&name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {what}")),
            },
            Mode::Apply | Mode::DryRun => {
                let mut pp = PatchParams::apply(FIELD_MANAGER).force();
                if mode == Mode::DryRun {
                    pp = pp.dry_run();
                }
                api.patch(&name, &pp, &Patch::Apply(&doc))
                    .await
                    .with_context(|| format!("applying {what}"))?;
            }
        }
        done.push(what);
    }
    Ok(done)
}
