//! The file registry: a directory of Kubernetes-style YAML (Service, EndpointSlice,
//! Pod, Node, Namespace, WorkloadEntry and the Istio kinds), re-read when a file
//! changes. It is the embedded default of the local testbed when no API server runs.
//!
//! A file that cannot be read keeps the objects it last gave; a document that cannot be
//! understood is reported with its file and position, and the rest is used.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::registry::{InputKind, Object, Registry};

/// Turns one document into an object.
pub fn object_from_value(doc: serde_json::Value) -> Result<Option<Object>, String> {
    let (api_version, kind) = mesh_api::type_meta(&doc);
    let (api_version, kind) = (api_version.to_owned(), kind.to_owned());
    let typed =
        |r: Result<Object, serde_json::Error>| r.map(Some).map_err(|e| format!("{kind}: {e}"));
    match kind.as_str() {
        "Service" => typed(serde_json::from_value(doc).map(|o| Object::Service(Box::new(o)))),
        "EndpointSlice" => {
            typed(serde_json::from_value(doc).map(|o| Object::EndpointSlice(Box::new(o))))
        }
        "Pod" => typed(serde_json::from_value(doc).map(|o| Object::Pod(Box::new(o)))),
        "Node" => typed(serde_json::from_value(doc).map(|o| Object::Node(Box::new(o)))),
        "Namespace" => typed(serde_json::from_value(doc).map(|o| Object::Namespace(Box::new(o)))),
        "WorkloadEntry" => {
            typed(serde_json::from_value(doc).map(|o| Object::WorkloadEntry(Box::new(o))))
        }
        // Link Secrets, and the Secrets a Gateway's credentialName names; the registry
        // ignores the others.
        "Secret" => typed(serde_json::from_value(doc).map(|o| Object::Secret(Box::new(o)))),
        "ServiceExport" if api_version.starts_with(mesh_api::mcs::MCS_GROUP) => {
            // Written without a spec, usually.
            let mut doc = doc;
            if let Some(map) = doc.as_object_mut() {
                map.entry("spec").or_insert_with(|| serde_json::json!({}));
            }
            typed(serde_json::from_value(doc).map(|o| Object::ServiceExport(Box::new(o))))
        }
        "ServiceImport" if api_version.starts_with(mesh_api::mcs::MCS_GROUP) => {
            typed(serde_json::from_value(doc).map(|o| Object::ServiceImport(Box::new(o))))
        }
        // Istio kinds Isthmus does not read (Sidecar, EnvoyFilter, ...) go to the
        // registry too, which refuses them by name instead of dropping them unseen.
        _ if mesh_api::is_istio_kind(&api_version, &kind)
            || mesh_api::is_istio_group(&api_version) =>
        {
            Ok(Some(Object::Istio(doc)))
        }
        // Other kinds (ConfigMaps, ...) are not the registry's.
        _ => Ok(None),
    }
}

/// Objects read, per file.
pub type FileObjects = BTreeMap<PathBuf, Vec<Object>>;

/// Reads every `.yaml`/`.yml`/`.json` file under `dir` (not recursive). Documents that
/// cannot be understood are returned as errors (file: reason).
pub fn read_dir(dir: &Path) -> std::io::Result<(FileObjects, Vec<String>)> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for path in list(dir)? {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let docs = match mesh_api::split_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let mut objects = Vec::new();
        for (i, doc) in docs.into_iter().enumerate() {
            match object_from_value(doc) {
                Ok(Some(o)) => objects.push(o),
                Ok(None) => {}
                Err(e) => errors.push(format!("{} (document {}): {e}", path.display(), i + 1)),
            }
        }
        out.insert(path, objects);
    }
    Ok((out, errors))
}

fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    list(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (p, modified, len)
        })
        .collect()
}

/// Loads `dir` into `registry` and keeps it in sync (polling every `interval`) until
/// the task is dropped.
pub async fn watch(dir: PathBuf, registry: Arc<Registry>, interval: Duration) {
    let mut last_good: HashMap<PathBuf, Vec<Object>> = HashMap::new();
    let mut seen = None;
    loop {
        let fp = fingerprint(&dir);
        if seen.as_ref() != Some(&fp) {
            seen = Some(fp);
            load(&dir, &registry, &mut last_good);
        }
        tokio::time::sleep(interval).await;
    }
}

fn load(dir: &Path, registry: &Registry, last_good: &mut HashMap<PathBuf, Vec<Object>>) {
    let (files, errors) = match read_dir(dir) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the registry directory; keeping what was loaded");
            return;
        }
    };
    for e in &errors {
        tracing::warn!(error = %e, "registry file refused");
    }
    let readable: Vec<PathBuf> = files.keys().cloned().collect();
    // Files that exist but could not be parsed keep their last objects.
    let listed: Vec<PathBuf> = list(dir).unwrap_or_default();
    for (path, objects) in files {
        last_good.insert(path, objects);
    }
    last_good.retain(|p, _| listed.contains(p) || readable.contains(p));
    registry.set_file_errors(errors);
    let mut by_kind: BTreeMap<InputKind, Vec<Object>> =
        InputKind::ALL.iter().map(|k| (*k, Vec::new())).collect();
    for o in last_good.values().flatten() {
        by_kind.entry(o.input_kind()).or_default().push(o.clone());
    }
    for (kind, objects) in by_kind {
        registry.replace_all(kind, objects);
    }
    tracing::info!(dir = %dir.display(), files = last_good.len(), "file registry loaded");
}
