//! The Kubernetes registry: one watcher per kind (kube-runtime), feeding the registry.
//! A relist replaces the kind's objects (so deletions missed while disconnected are
//! seen); watch errors back off and resume, never crash; the registry is synced once
//! every kind has been listed.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use crate::registry::{InputKind, Object, Registry};

/// The Istio kinds watched (served version `v1`), with their plurals.
pub const ISTIO_KINDS: &[(&str, &str, &str)] = &[
    ("networking.istio.io", "VirtualService", "virtualservices"),
    ("networking.istio.io", "DestinationRule", "destinationrules"),
    ("networking.istio.io", "Gateway", "gateways"),
    ("networking.istio.io", "ServiceEntry", "serviceentries"),
    ("networking.istio.io", "Sidecar", "sidecars"),
    (
        "security.istio.io",
        "PeerAuthentication",
        "peerauthentications",
    ),
    (
        "security.istio.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    (
        "security.istio.io",
        "RequestAuthentication",
        "requestauthentications",
    ),
];

async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    registry: Arc<Registry>,
    kind: InputKind,
    what: String,
    to_object: fn(K) -> Object,
) where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut buffer = Vec::new();
    let mut listed = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(o)) => buffer.push(to_object(o)),
            Ok(watcher::Event::InitDone) => {
                let objects = std::mem::take(&mut buffer);
                tracing::debug!(kind = %what, count = objects.len(), "listed");
                registry.replace_all(kind, objects);
                listed = true;
            }
            Ok(watcher::Event::Apply(o)) => {
                let _ = registry.apply(to_object(o));
            }
            Ok(watcher::Event::Delete(o)) => registry.delete(&to_object(o)),
            // A kind whose CRD is not installed (the MCS API, optional) has no objects:
            // it counts as listed, and the watch keeps trying in case it is installed.
            Err(e) if !listed && crd_missing(&e) => {
                tracing::info!(kind = %what, "its CRD is not installed; none read until it is");
                registry.replace_all(kind, vec![]);
                listed = true;
            }
            Err(e) => {
                tracing::warn!(kind = %what, error = %e, "watch failed; retrying with backoff");
            }
        }
    }
}

/// Whether a watch failed because the API server does not serve the kind.
fn crd_missing(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.is_not_found(),
        _ => false,
    }
}

fn istio_object(mut o: DynamicObject, kind: &str, api_version: &str) -> Object {
    let mut value = serde_json::to_value(&o.data).unwrap_or_default();
    // The data holds `spec` (and `status`); put the object back together.
    let meta = serde_json::to_value(std::mem::take(&mut o.metadata)).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
        map.insert("metadata".into(), meta);
        map.remove("status");
    }
    Object::Istio(value)
}

/// Starts every watcher on `client` (link Secrets in `namespace`); they run until the
/// returned tasks are aborted.
pub fn start(
    client: kube::Client,
    registry: Arc<Registry>,
    namespace: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(watch(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace),
        watcher::Config::default().labels(&format!("{}=true", crate::links::LINK_LABEL)),
        registry.clone(),
        InputKind::Secret,
        "link Secret".to_owned(),
        |o| Object::Secret(Box::new(o)),
    )));
    // Certificates a credentialName names: kubernetes.io/tls Secrets of any namespace
    // (a Gateway's are in its workload's namespace, a DestinationRule's in the client
    // workload's); only those a Gateway or DestinationRule names are sent anywhere.
    tasks.push(tokio::spawn(watch(
        Api::<k8s_openapi::api::core::v1::Secret>::all(client.clone()),
        watcher::Config::default().fields("type=kubernetes.io/tls"),
        registry.clone(),
        InputKind::Credential,
        "TLS Secret".to_owned(),
        |o| Object::Secret(Box::new(o)),
    )));
    macro_rules! typed {
        ($t:ty, $kind:expr, $wrap:expr) => {
            tasks.push(tokio::spawn(watch(
                Api::<$t>::all(client.clone()),
                watcher::Config::default(),
                registry.clone(),
                $kind,
                stringify!($t).to_owned(),
                $wrap,
            )));
        };
    }
    typed!(Service, InputKind::Service, |o| Object::Service(Box::new(
        o
    )));
    typed!(EndpointSlice, InputKind::EndpointSlice, |o| {
        Object::EndpointSlice(Box::new(o))
    });
    typed!(Pod, InputKind::Pod, |o| Object::Pod(Box::new(o)));
    typed!(Node, InputKind::Node, |o| Object::Node(Box::new(o)));
    typed!(Namespace, InputKind::Namespace, |o| Object::Namespace(
        Box::new(o)
    ));
    typed!(
        mesh_api::networking::WorkloadEntry,
        InputKind::WorkloadEntry,
        |o| { Object::WorkloadEntry(Box::new(o)) }
    );
    // A ServiceExport is usually written without a spec, which the typed form needs.
    tasks.push(tokio::spawn(watch(
        Api::<DynamicObject>::all_with(
            client.clone(),
            &ApiResource::erase::<mesh_api::mcs::ServiceExport>(&()),
        ),
        watcher::Config::default(),
        registry.clone(),
        InputKind::ServiceExport,
        "ServiceExport".to_owned(),
        |o| {
            Object::ServiceExport(Box::new(mesh_api::mcs::ServiceExport {
                metadata: o.metadata,
                spec: Default::default(),
            }))
        },
    )));
    typed!(
        mesh_api::mcs::ServiceImport,
        InputKind::ServiceImport,
        |o| { Object::ServiceImport(Box::new(o)) }
    );

    let (tx, mut rx) = tokio::sync::mpsc::channel(ISTIO_KINDS.len());
    for (group, kind, plural) in ISTIO_KINDS {
        let gvk = GroupVersionKind::gvk(group, "v1", kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let registry = registry.clone();
        let tx = tx.clone();
        let kind = (*kind).to_owned();
        let api_version = format!("{group}/v1");
        tasks.push(tokio::spawn(async move {
            let what = kind.clone();
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            let mut tx = Some(tx);
            let mut listed: Vec<String> = Vec::new();
            let mut buffer: Vec<String> = Vec::new();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => buffer.clear(),
                    Ok(watcher::Event::InitApply(o)) => {
                        let obj = istio_object(o, &kind, &api_version);
                        buffer.push(obj.key());
                        let _ = registry.apply(obj);
                    }
                    Ok(watcher::Event::InitDone) => {
                        // Objects of this kind gone while the watch was down.
                        for key in listed.iter().filter(|k| !buffer.contains(k)) {
                            registry.delete_key(key);
                        }
                        listed = std::mem::take(&mut buffer);
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(()).await;
                        }
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        let obj = istio_object(o, &kind, &api_version);
                        if !listed.contains(&obj.key()) {
                            listed.push(obj.key());
                        }
                        let _ = registry.apply(obj);
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        let obj = istio_object(o, &kind, &api_version);
                        listed.retain(|k| *k != obj.key());
                        registry.delete(&obj);
                    }
                    Err(e) => {
                        tracing::warn!(kind = %what, error = %e, "watch failed; retrying with backoff");
                    }
                }
            }
        }));
    }
    drop(tx);
    let registry2 = registry.clone();
    tasks.push(tokio::spawn(async move {
        for _ in 0..ISTIO_KINDS.len() {
            if rx.recv().await.is_none() {
                return;
            }
        }
        registry2.mark_synced(InputKind::Istio);
    }));
    tasks
}
