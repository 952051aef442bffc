//! The proxy's one intake of config, for discovery's stream and for a config file
//! alike. [`ResourceSet`] holds the resources taken in so far, by name, and turns each
//! push into a new [`ProxyState`]: every resource is decoded and checked on its own
//! first, so a bad one is refused alone (with its name and reason) while the rest of
//! the push is applied; what was held before for a refused name stays in force. The
//! set is then compiled once, reusing each service compiled when it arrived.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use mesh_api::Resource as IstioResource;
use mesh_proto::config::{ConfigResponse, Rejection, Resource as WireResource};
use mesh_proto::model::{KIND_CREDENTIAL, KIND_NODE, KIND_SERVICE, NODE_RESOURCE};

use crate::config::{Node, ProxyConfig, ServiceConfig};
use crate::error::ConfigError;
use crate::model::Service;
use crate::state::compile_service;
use crate::state::{ProxyState, StateStore};

#[derive(Debug, Clone)]
enum Item {
    Node(Node),
    /// As sent, and compiled once (again only when the node changes: the compiled
    /// service caches metric labels that name this proxy).
    Service(Arc<ServiceConfig>, Arc<Service>),
    Istio(Arc<IstioResource>),
    /// A Secret's certificates (`credentialName`), in memory only.
    Credential(Arc<mesh_proto::model::Credential>),
}

#[derive(Debug, Clone)]
struct Held {
    version: String,
    item: Item,
}

/// Why a pushed resource cannot be taken in (its text is the NACK's reason).
#[derive(Debug, thiserror::Error)]
enum DecodeError {
    /// A file's ProxyConfig document does not parse.
    #[error("ProxyConfig: {0}")]
    ProxyConfig(serde_json::Error),
    /// A file's document the proxy does not take (its reason).
    #[error("{0}")]
    Document(String),
    /// The node resource does not parse.
    #[error("node: {0}")]
    Node(serde_json::Error),
    /// A service resource does not parse.
    #[error("service: {0}")]
    Service(serde_json::Error),
    /// A credential resource does not parse.
    #[error("credential: {0}")]
    Credential(serde_json::Error),
    /// An Istio resource is not JSON.
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    /// An Istio resource is refused by the API's reader and validator.
    #[error(transparent)]
    Istio(#[from] mesh_api::ResourceError),
}

/// Decodes one resource of the stream.
fn decode(r: &WireResource) -> Result<Item, DecodeError> {
    match r.kind.as_str() {
        KIND_NODE => serde_json::from_slice(&r.body)
            .map(Item::Node)
            .map_err(DecodeError::Node),
        KIND_SERVICE => serde_json::from_slice(&r.body)
            .map(|svc: ServiceConfig| {
                let compiled = compile_service(&svc);
                Item::Service(Arc::new(svc), compiled)
            })
            .map_err(DecodeError::Service),
        KIND_CREDENTIAL => serde_json::from_slice(&r.body)
            .map(|c| Item::Credential(Arc::new(c)))
            .map_err(DecodeError::Credential),
        _ => {
            let value: serde_json::Value =
                serde_json::from_slice(&r.body).map_err(DecodeError::NotJson)?;
            Ok(Item::Istio(Arc::new(mesh_api::from_value(value)?)))
        }
    }
}

/// A Gateway or DestinationRule of `held` that names credential `c` in a
/// `credentialName`, as `Kind namespace/name`.
fn naming_resource(
    held: &BTreeMap<String, Held>,
    c: &mesh_proto::model::Credential,
) -> Option<String> {
    let name = Some(c.name.as_str());
    held.values().find_map(|h| {
        let Item::Istio(r) = &h.item else { return None };
        let names = match r.as_ref() {
            IstioResource::Gateway(g) => g
                .spec
                .servers
                .iter()
                .any(|s| s.tls.as_ref().and_then(|t| t.credential_name.as_deref()) == name),
            IstioResource::DestinationRule(d) => {
                let mut policies = d.spec.traffic_policy.iter().chain(
                    d.spec
                        .subsets
                        .iter()
                        .filter_map(|s| s.traffic_policy.as_ref()),
                );
                policies.any(|p| {
                    p.tls
                        .iter()
                        .chain(
                            p.port_level_settings
                                .iter()
                                .filter_map(|pl| pl.tls.as_ref()),
                        )
                        .any(|t| t.credential_name.as_deref() == name)
                })
            }
            _ => false,
        };
        names.then(|| format!("{} {}", r.kind(), r.key()))
    })
}

/// The credentials held, by `namespace/name`.
fn credentials(held: &BTreeMap<String, Held>) -> crate::state::Credentials {
    held.values()
        .filter_map(|h| match &h.item {
            Item::Credential(c) => Some((format!("{}/{}", c.namespace, c.name), c.clone())),
            _ => None,
        })
        .collect()
}

/// One resource of a push, named, and decoded or not.
struct Incoming {
    name: String,
    version: String,
    item: Result<Item, DecodeError>,
}

/// One push: resources added or changed, names removed, and the version of the whole.
struct Push {
    resources: Vec<Incoming>,
    removed: Vec<String>,
    version: String,
}

/// A version for a file's document: a hash of its content, compared only within this
/// process.
fn content_version(value: &impl serde::Serialize) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(value)
        .unwrap_or_default()
        .hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The name a file's Istio document is held by (as discovery names it), or `None`
/// when it has no `metadata.name`.
fn document_name(kind: &str, doc: &serde_json::Value) -> Option<String> {
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = meta
        .get("namespace")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("default");
    Some(format!("{kind}/{namespace}/{name}"))
}

/// A Kubernetes Secret document of a config file as the credential it holds (`data`
/// in base64, or `stringData`).
fn secret_document(doc: &serde_json::Value) -> Result<Item, DecodeError> {
    use base64::Engine as _;
    let meta = &doc["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or_default();
    let mut data = BTreeMap::new();
    for (k, v) in doc["data"].as_object().into_iter().flatten() {
        let bytes = v
            .as_str()
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
            .ok_or_else(|| DecodeError::Document(format!("data.{k} is not base64")))?;
        data.insert(k.clone(), bytes);
    }
    for (k, v) in doc["stringData"].as_object().into_iter().flatten() {
        data.insert(
            k.clone(),
            v.as_str().unwrap_or_default().as_bytes().to_vec(),
        );
    }
    mesh_proto::model::Credential::from_data(namespace, name, &data)
        .map(|c| Item::Credential(Arc::new(c)))
        .map_err(DecodeError::Document)
}

/// What a config file pushes, against what is `held`: every document changed since
/// (unchanged ones are skipped), and the names held that the file no longer has.
/// `Err` when the file is not YAML at all (nothing is taken, nothing removed).
fn file_push(text: &str, held: &BTreeMap<String, Held>) -> Result<Push, String> {
    let docs = mesh_api::split_documents(text).map_err(|e| e.to_string())?;
    let mut resources = Vec::new();
    // Names the file has, taken or refused: none of them is removed.
    let mut present = std::collections::HashSet::new();
    let mut proxy_seen = false;
    // The version label the file gives itself, if any (`ProxyConfig.version`).
    let mut label = String::new();
    // Some document names nothing (or the ProxyConfig is unreadable): what it meant to
    // replace is unknown, so nothing held is removed (or no service).
    let (mut unnamed, mut keep_services) = (false, false);
    // A name the file lists twice: the second is refused.
    let add = |present: &mut std::collections::HashSet<String>,
               name: String,
               version: String,
               item: Result<Item, DecodeError>| {
        let item = if present.insert(name.clone()) {
            item
        } else {
            Err(DecodeError::Document("listed twice in the file".into()))
        };
        Incoming {
            name,
            version,
            item,
        }
    };
    let unchanged =
        |name: &str, version: &str| held.get(name).is_some_and(|h| h.version == version);
    for (i, doc) in docs.into_iter().enumerate() {
        let (api_version, kind) = mesh_api::type_meta(&doc);
        let (api_version, kind) = (api_version.to_owned(), kind.to_owned());
        if kind == "ProxyConfig" {
            let version = content_version(&doc);
            if proxy_seen {
                resources.push(add(
                    &mut present,
                    format!("ProxyConfig (document {})", i + 1),
                    version,
                    Err(DecodeError::Document(
                        "more than one ProxyConfig document".into(),
                    )),
                ));
                continue;
            }
            proxy_seen = true;
            let proxy: ProxyConfig = match serde_json::from_value(doc) {
                Ok(p) => p,
                Err(e) => {
                    keep_services = true;
                    present.insert(NODE_RESOURCE.to_owned());
                    resources.push(Incoming {
                        name: NODE_RESOURCE.to_owned(),
                        version,
                        item: Err(DecodeError::ProxyConfig(e)),
                    });
                    continue;
                }
            };
            label = proxy.version;
            let node_version = content_version(&proxy.node);
            let node = add(
                &mut present,
                NODE_RESOURCE.to_owned(),
                node_version,
                Ok(Item::Node(proxy.node)),
            );
            if !unchanged(&node.name, &node.version) {
                resources.push(node);
            }
            for svc in proxy.services {
                let name = format!("{KIND_SERVICE}/{}/{}", svc.namespace, svc.name);
                let version = content_version(&svc);
                if unchanged(&name, &version) {
                    present.insert(name);
                    continue;
                }
                let compiled = compile_service(&svc);
                resources.push(add(
                    &mut present,
                    name,
                    version,
                    Ok(Item::Service(Arc::new(svc), compiled)),
                ));
            }
        } else {
            let version = content_version(&doc);
            let Some(name) = document_name(&kind, &doc) else {
                unnamed = true;
                resources.push(Incoming {
                    name: format!("{kind} (document {})", i + 1),
                    version,
                    item: Err(DecodeError::Document("metadata.name is missing".into())),
                });
                continue;
            };
            if unchanged(&name, &version) {
                present.insert(name);
                continue;
            }
            let item = if mesh_api::is_istio_kind(&api_version, &kind) {
                mesh_api::from_value(doc)
                    .map(|r| Item::Istio(Arc::new(r)))
                    .map_err(DecodeError::from)
            } else if kind == "Secret" && api_version == "v1" {
                // A credentialName's Secret, as discovery would deliver it.
                let Some(credential) = document_name(KIND_CREDENTIAL, &doc) else {
                    continue;
                };
                resources.push(add(
                    &mut present,
                    credential,
                    version,
                    secret_document(&doc),
                ));
                continue;
            } else {
                Err(DecodeError::Document(format!(
                    "document of kind {kind:?} ({api_version}) is not read by the proxy"
                )))
            };
            resources.push(add(&mut present, name, version, item));
        }
    }
    if !proxy_seen {
        keep_services = true;
        resources.push(Incoming {
            name: "ProxyConfig".into(),
            version: String::new(),
            item: Err(DecodeError::Document(
                "no ProxyConfig document (apiVersion isthmus.dev/v1alpha1, kind ProxyConfig)"
                    .into(),
            )),
        });
    }
    let removed = if unnamed {
        Vec::new()
    } else {
        held.iter()
            .filter(|(name, h)| {
                let proxy_part = matches!(h.item, Item::Node(_) | Item::Service(..));
                let kept = present.contains(name.as_str()) || (keep_services && proxy_part);
                !kept
            })
            .map(|(name, _)| name.clone())
            .collect()
    };
    if label.is_empty() {
        label = content_version(&text);
    }
    Ok(Push {
        resources,
        removed,
        version: label,
    })
}

/// The resources a proxy holds, by name.
#[derive(Debug, Default, Clone)]
pub struct ResourceSet {
    held: BTreeMap<String, Held>,
    version: String,
    /// Credentials whose removal was refused because a held resource named them:
    /// removed at the first push after which nothing does.
    kept: BTreeSet<String>,
}

/// What applying one response did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Resources refused, each alone; the others were applied.
    pub rejected: Vec<Rejection>,
    /// Whether the live state changed.
    pub changed: bool,
}

impl ResourceSet {
    /// Name → version of everything held (sent on reconnect so discovery resends only
    /// what differs).
    pub fn versions(&self) -> HashMap<String, String> {
        self.held
            .iter()
            .map(|(k, v)| (k.clone(), v.version.clone()))
            .collect()
    }

    /// The config version last applied.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of resources held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The node held, if any.
    fn node(&self) -> Option<&Node> {
        self.held.values().find_map(|h| match &h.item {
            Item::Node(n) => Some(n),
            _ => None,
        })
    }

    /// Compiles the held set from its compiled services and Istio objects; `None`
    /// before the node has arrived.
    fn compile_set(
        held: &BTreeMap<String, Held>,
        version: &str,
        origin: &str,
    ) -> Option<Result<ProxyState, ConfigError>> {
        let mut node = None;
        let mut services = Vec::new();
        let mut resources = Vec::new();
        for h in held.values() {
            match &h.item {
                Item::Node(n) => node = Some(n),
                Item::Service(_, compiled) => services.push(compiled.clone()),
                Item::Istio(r) => resources.push(r.as_ref()),
                Item::Credential(_) => {}
            }
        }
        Some(ProxyState::compile_parts(
            node?,
            version,
            services,
            &resources,
            &credentials(held),
            origin,
        ))
    }

    /// Applies one response of discovery's stream to `store` (see [`Push`]).
    pub fn apply(&mut self, response: &ConfigResponse, store: &StateStore) -> Applied {
        let push = Push {
            resources: response
                .resources
                .iter()
                .map(|r| Incoming {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    item: decode(r),
                })
                .collect(),
            removed: response.removed.clone(),
            version: response.system_version.clone(),
        };
        let origin = format!("discovery (version {})", response.system_version);
        self.take(push, &origin, store)
    }

    /// Applies the whole text of a config file (a ProxyConfig document and Istio
    /// documents, see [`crate::config`]) to `store`, as a push of every document it
    /// holds: unchanged documents are skipped, changed ones taken in (each refused
    /// alone when it is wrong, its last good version staying), and documents no
    /// longer in the file removed. A file that cannot be read as YAML at all, or with
    /// a document that names nothing, removes nothing. Refusals are also recorded on
    /// the store, for the admin endpoint. The state's version is the ProxyConfig's
    /// `version` label, else a hash of the file's text.
    pub fn apply_file(&mut self, text: &str, origin: &str, store: &StateStore) -> Applied {
        let push = match file_push(text, &self.held) {
            Ok(push) => push,
            Err(reason) => {
                let e = ConfigError::new(origin, reason.clone());
                store.record_rejection(e);
                return Applied {
                    rejected: vec![Rejection {
                        name: origin.to_owned(),
                        version: String::new(),
                        reason,
                    }],
                    changed: false,
                };
            }
        };
        let applied = self.take(push, origin, store);
        if !applied.rejected.is_empty() {
            store.record_rejection(ConfigError::many(
                origin,
                applied
                    .rejected
                    .iter()
                    .map(|r| format!("{}: {}", r.name, r.reason))
                    .collect(),
            ));
        }
        applied
    }

    /// Takes one push in, compiling the whole set once. Each added or changed
    /// resource is decoded and validated on its own first (an Istio object with the
    /// node), and refused alone when that fails; a service whose host another held or
    /// newer resource already defines is refused alone too (the one held, or else the
    /// first by name, keeps it), so the set that is compiled is the set that is
    /// installed. Should the set still not compile, every change of this push is
    /// refused together and the last good config stays in force.
    fn take(&mut self, push: Push, origin: &str, store: &StateStore) -> Applied {
        let mut rejected = Vec::new();
        // A node in this push that differs from the one held: the services compiled
        // for the old node are compiled again below.
        let new_node = push
            .resources
            .iter()
            .find_map(|r| match &r.item {
                Ok(Item::Node(n)) => Some(n.clone()),
                _ => None,
            })
            .filter(|n| self.node() != Some(n));
        let node_now = new_node.clone().or_else(|| self.node().cloned());

        let mut next = self.held.clone();
        let mut removing = Vec::new();
        // The credentials kept earlier are removed again unless still named.
        let again = self.kept.iter().filter(|k| !push.removed.contains(*k));
        for name in push.removed.iter().chain(again) {
            if let Some(h) = next.remove(name) {
                removing.push((name.clone(), h.version));
            }
        }
        let mut kept = BTreeSet::new();
        // Which resource defines each service host, among those that stay.
        let mut hosts: HashMap<String, String> = next
            .iter()
            .filter_map(|(name, h)| match &h.item {
                Item::Service(_, svc) => Some((svc.host.clone(), name.clone())),
                _ => None,
            })
            .collect();
        // Changed services give their old host up first, so a service may move.
        let changed: std::collections::HashSet<&str> =
            push.resources.iter().map(|r| r.name.as_str()).collect();
        hosts.retain(|_, owner| !changed.contains(owner.as_str()));
        let mut incoming = push.resources;
        // Names and versions taken from this push, for a refusal of all of them.
        let mut taken = Vec::new();
        incoming.sort_by(|a, b| a.name.cmp(&b.name));
        let mut held_credentials = credentials(&next);
        for r in incoming {
            let reject = |reason: String| Rejection {
                name: r.name.clone(),
                version: r.version.clone(),
                reason,
            };
            let item = match r.item {
                Ok(item) => item,
                Err(e) => {
                    rejected.push(reject(e.to_string()));
                    continue;
                }
            };
            match (&item, &node_now) {
                (Item::Istio(res), Some(node)) => {
                    // With the credentials held now (those of this push come first:
                    // `Credential/...` sorts before the kinds that name them).
                    let alone = [res.as_ref()];
                    if let Err(e) =
                        ProxyState::compile_parts(node, "", [], &alone, &held_credentials, &r.name)
                    {
                        rejected.push(reject(e.reasons.join("; ")));
                        continue;
                    }
                }
                (Item::Service(_, svc), _) => {
                    let host = svc.host.clone();
                    if let Some(owner) = hosts.get(&host).filter(|o| **o != r.name) {
                        rejected.push(reject(format!(
                            "conflicts with the config held: service {host} is listed twice \
                             (already defined by {owner})"
                        )));
                        continue;
                    }
                    hosts.insert(host, r.name.clone());
                }
                _ => {}
            }
            if let Item::Credential(c) = &item {
                held_credentials.insert(format!("{}/{}", c.namespace, c.name), c.clone());
            }
            taken.push((r.name.clone(), r.version.clone()));
            next.insert(
                r.name,
                Held {
                    version: r.version,
                    item,
                },
            );
        }

        // A Secret a Gateway of the set still names stays: its server keeps serving
        // with the last good certificate.
        removing.retain(|(name, version)| {
            // Sent again by this push: the new version stands.
            if next.contains_key(name) {
                return false;
            }
            let Some(
                held @ Held {
                    item: Item::Credential(c),
                    ..
                },
            ) = self.held.get(name)
            else {
                return true;
            };
            let Some(named_by) = naming_resource(&next, c) else {
                return true;
            };
            // Refused once, when discovery removed it; kept quietly after that.
            if push.removed.contains(name) {
                rejected.push(Rejection {
                    name: name.clone(),
                    version: version.clone(),
                    reason: format!(
                        "cannot be removed: {named_by} names it in credentialName; \
                         the last good certificate stays until it no longer does"
                    ),
                });
            }
            kept.insert(name.clone());
            next.insert(name.clone(), held.clone());
            false
        });
        let version = push.version;
        let mut changed = false;
        if new_node.is_some() {
            for h in next.values_mut() {
                if let Item::Service(config, compiled) = &mut h.item {
                    *compiled = compile_service(config);
                }
            }
        }
        match Self::compile_set(&next, &version, origin) {
            Some(Ok(state)) => {
                store.install(state);
                self.held = next;
                self.kept = kept;
                changed = true;
            }
            Some(Err(e)) => {
                // A conflict between resources that no check above knows: nothing of
                // this response is taken, so the proxy keeps a config it knows works.
                let reason = format!("conflicts with the config held: {}", e.reasons.join("; "));
                store.record_rejection(e);
                for (name, version) in &taken {
                    if !rejected.iter().any(|x| &x.name == name) {
                        rejected.push(Rejection {
                            name: name.clone(),
                            version: version.clone(),
                            reason: reason.clone(),
                        });
                    }
                }
                // A removal the rest of the set still needs (a Secret a Gateway names)
                // is refused too: the resource stays held.
                for (name, version) in removing {
                    rejected.push(Rejection {
                        name,
                        version,
                        reason: format!("cannot be removed: {reason}"),
                    });
                }
            }
            None => {
                // No node yet: hold what was accepted until the node arrives.
                self.held = next;
            }
        }
        if changed {
            self.version = version;
        }
        for r in &rejected {
            tracing::warn!(resource = %r.name, version = %r.version, reason = %r.reason, "resource refused; the last good version stays in force");
        }
        Applied { rejected, changed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::config::ConfigResponse;

    fn res(name: &str, kind: &str, version: &str, body: &str) -> WireResource {
        WireResource {
            name: name.into(),
            version: version.into(),
            kind: kind.into(),
            body: body.as_bytes().to_vec().into(),
        }
    }

    fn node() -> WireResource {
        res(
            NODE_RESOURCE,
            KIND_NODE,
            "n1",
            r#"{"name":"fe-1","namespace":"shop","serviceAccount":"fe","cluster":"east"}"#,
        )
    }

    fn vs(name: &str, version: &str, uri_regex: &str) -> WireResource {
        let body = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"hosts": [format!("{name}.shop.svc.cluster.local")],
                     "http": [{"match": [{"uri": {"regex": uri_regex}}],
                               "route": [{"destination": {"host": name}}]}]}
        });
        res(
            &format!("VirtualService/shop/{name}"),
            "VirtualService",
            version,
            &body.to_string(),
        )
    }

    fn response(version: &str, resources: Vec<WireResource>, removed: &[&str]) -> ConfigResponse {
        ConfigResponse {
            nonce: format!("nonce-{version}"),
            system_version: version.into(),
            resources,
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn service(name: &str, version: &str, ip: &str) -> WireResource {
        let body = serde_json::json!({"name": name, "namespace": "shop",
            "ports": [{"name": "http", "port": 9080}],
            "endpoints": [{"address": ip}]});
        res(
            &format!("Service/shop/{name}"),
            KIND_SERVICE,
            version,
            &body.to_string(),
        )
    }

    #[test]
    fn a_bad_resource_is_refused_alone_and_its_last_good_version_stays() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let first = set.apply(
            &response(
                "1",
                vec![
                    node(),
                    service("reviews", "a", "10.0.0.1"),
                    vs("reviews", "a", "^/v1/.*"),
                ],
                &[],
            ),
            &store,
        );
        assert!(first.rejected.is_empty(), "{first:?}");
        assert!(store.is_ready());
        assert_eq!(store.snapshot().version, "1");

        // A broken regex in the VirtualService and a good endpoint change together.
        let second = set.apply(
            &response(
                "2",
                vec![
                    service("reviews", "b", "10.0.0.2"),
                    vs("reviews", "b", "^/v1/(unclosed"),
                ],
                &[],
            ),
            &store,
        );
        assert_eq!(second.rejected.len(), 1, "{second:?}");
        assert_eq!(second.rejected[0].name, "VirtualService/shop/reviews");
        assert!(second.rejected[0].reason.contains("regex"), "{second:?}");
        let state = store.snapshot();
        assert_eq!(state.version, "2");
        let svc = &state.services["reviews.shop.svc.cluster.local"];
        assert_eq!(svc.endpoints[0].inbound.ip().to_string(), "10.0.0.2");
        // The old VirtualService (version a) is still held and in force.
        assert_eq!(set.versions()["VirtualService/shop/reviews"], "a");

        // Malformed JSON is refused alone too.
        let third = set.apply(
            &response(
                "3",
                vec![res("Service/shop/x", KIND_SERVICE, "z", "{nope")],
                &[],
            ),
            &store,
        );
        assert_eq!(third.rejected.len(), 1);
        assert!(!set.versions().contains_key("Service/shop/x"));

        // Removal.
        set.apply(&response("4", vec![], &["Service/shop/reviews"]), &store);
        assert!(store.snapshot().services.is_empty());
    }

    #[test]
    fn nothing_is_served_before_the_node_arrives() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        set.apply(
            &response("1", vec![service("reviews", "a", "10.0.0.1")], &[]),
            &store,
        );
        assert!(!store.is_ready());
        set.apply(&response("2", vec![node()], &[]), &store);
        assert!(store.is_ready());
        assert_eq!(store.snapshot().services.len(), 1);
    }

    #[test]
    fn conflicting_resources_are_refused_and_the_held_config_stays() {
        // Two outputs that describe the same service host cannot both be held.
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let first = service("reviews", "1", "10.0.0.1");
        set.apply(&response("1", vec![node(), first.clone()], &[]), &store);
        let mut copy = service("reviews", "1", "10.0.0.9");
        copy.name = "Service/shop/reviews-copy".into();
        let applied = set.apply(&response("2", vec![copy], &[]), &store);
        assert_eq!(applied.rejected.len(), 1, "{applied:?}");
        assert!(
            applied.rejected[0].reason.contains("listed twice"),
            "{applied:?}"
        );
        let state = store.snapshot();
        assert_eq!(state.version, "2");
        let svc = &state.services["reviews.shop.svc.cluster.local"];
        assert_eq!(svc.endpoints[0].inbound.ip().to_string(), "10.0.0.1");
        assert_eq!(set.versions().len(), 2, "the refused copy is not held");
    }

    #[test]
    fn a_duplicate_in_one_response_is_refused_by_name_and_the_rest_applies() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let mut copy = service("reviews", "1", "10.0.0.9");
        copy.name = "Service/shop/reviews-copy".into();
        let applied = set.apply(
            &response(
                "1",
                vec![
                    copy,
                    vs("reviews", "a", "^/v1/.*"),
                    service("reviews", "1", "10.0.0.1"),
                    node(),
                ],
                &[],
            ),
            &store,
        );
        // The first by name keeps the host, whatever the order sent.
        assert_eq!(applied.rejected.len(), 1, "{applied:?}");
        assert_eq!(applied.rejected[0].name, "Service/shop/reviews-copy");
        assert!(
            applied.rejected[0]
                .reason
                .contains("already defined by Service/shop/reviews"),
            "{applied:?}"
        );
        let state = store.snapshot();
        assert_eq!(state.version, "1");
        let svc = &state.services["reviews.shop.svc.cluster.local"];
        assert_eq!(svc.endpoints[0].inbound.ip().to_string(), "10.0.0.1");
        assert_eq!(
            state.routes["reviews.shop.svc.cluster.local"].len(),
            1,
            "the VirtualService in the same response applied"
        );
        assert!(store.last_rejection().is_none());
    }

    #[test]
    fn a_push_compiles_only_the_services_it_changes_until_the_node_changes() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let host = |n: &str| format!("{n}.shop.svc.cluster.local");
        set.apply(
            &response(
                "1",
                vec![
                    node(),
                    service("reviews", "a", "10.0.0.1"),
                    service("ratings", "a", "10.0.0.2"),
                ],
                &[],
            ),
            &store,
        );
        let before = store.snapshot();
        set.apply(
            &response("2", vec![service("ratings", "b", "10.0.0.3")], &[]),
            &store,
        );
        let after = store.snapshot();
        assert!(
            Arc::ptr_eq(
                &before.services[&host("reviews")],
                &after.services[&host("reviews")]
            ),
            "an unchanged service is reused, not compiled again"
        );
        let ratings = &after.services[&host("ratings")];
        assert_eq!(ratings.endpoints[0].inbound.ip().to_string(), "10.0.0.3");

        let mut moved = node();
        moved.version = "n2".into();
        moved.body =
            br#"{"name":"fe-1","namespace":"shop","serviceAccount":"fe","cluster":"west"}"#
                .to_vec()
                .into();
        set.apply(&response("3", vec![moved], &[]), &store);
        let renamed = store.snapshot();
        assert_eq!(renamed.node.cluster, "west");
        assert!(
            !Arc::ptr_eq(
                &after.services[&host("reviews")],
                &renamed.services[&host("reviews")]
            ),
            "services are compiled again for a new node"
        );
    }

    #[test]
    fn destination_rules_for_one_host_merge_with_the_older_first() {
        let dr = |name: &str, created: &str, subset: &str| {
            let body = serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
                "spec": {"host": "reviews", "subsets": [
                    {"name": subset, "labels": {"version": name}}]}});
            res(
                &format!("DestinationRule/shop/{name}"),
                "DestinationRule",
                "1",
                &body.to_string(),
            )
        };
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        set.apply(
            &response(
                "1",
                vec![node(), dr("b-old", "2026-01-01T00:00:00Z", "v1")],
                &[],
            ),
            &store,
        );
        // A newer rule whose name sorts first: it adds v2, and loses v1.
        let applied = set.apply(
            &response(
                "2",
                vec![
                    dr("a-new", "2026-03-01T00:00:00Z", "v2"),
                    dr("a-newest", "2026-04-01T00:00:00Z", "v1"),
                ],
                &[],
            ),
            &store,
        );
        assert!(applied.rejected.is_empty(), "{applied:?}");
        let state = store.snapshot();
        let policy = &state.policies["reviews.shop.svc.cluster.local"];
        assert_eq!(policy.rule, "shop/b-old, shop/a-new, shop/a-newest");
        let versions: Vec<_> = policy
            .subsets
            .iter()
            .map(|(name, labels)| (name.as_str(), labels["version"].as_str()))
            .collect();
        assert_eq!(versions, [("v1", "b-old"), ("v2", "a-new")]);
    }

    /// A config file: the ProxyConfig with `reviews` at `ip`, then `extra` documents.
    fn file(ip: &str, extra: &str) -> String {
        format!(
            "apiVersion: isthmus.dev/v1alpha1\nkind: ProxyConfig\n\
             node: {{name: fe-1, namespace: shop, serviceAccount: fe}}\n\
             services:\n\
             - {{name: reviews, namespace: shop, ports: [{{name: http, port: 9080}}], endpoints: [{{address: {ip}}}]}}\n\
             - {{name: ratings, namespace: shop, ports: [{{name: http, port: 9080}}], endpoints: [{{address: 10.0.9.9}}]}}\n\
             {extra}"
        )
    }

    fn vs_doc(name: &str, regex: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: {name}, namespace: shop}}\n\
             spec: {{hosts: [{name}], http: [{{match: [{{uri: {{regex: '{regex}'}}}}], route: [{{destination: {{host: {name}}}}}]}}]}}\n"
        )
    }

    #[test]
    fn a_file_is_taken_document_by_document_like_a_push() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let first = set.apply_file(
            &file("10.0.0.1", &vs_doc("reviews", "^/v1/.*")),
            "f.yaml",
            &store,
        );
        assert!(first.rejected.is_empty(), "{first:?}");
        assert!(store.is_ready());
        let before = store.snapshot();
        let vs_version = set.versions()["VirtualService/shop/reviews"].clone();

        // A broken VirtualService, a new good one and a moved endpoint in one edit:
        // the broken one is refused by name and its last good version stays; the rest
        // is taken.
        let edit = file(
            "10.0.0.2",
            &(vs_doc("reviews", "^/v1/(unclosed") + &vs_doc("ratings", "^/r/.*")),
        );
        let second = set.apply_file(&edit, "f.yaml", &store);
        let names: Vec<&str> = second.rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["VirtualService/shop/reviews"], "{second:?}");
        assert!(second.rejected[0].reason.contains("regex"), "{second:?}");
        assert_eq!(set.versions()["VirtualService/shop/reviews"], vs_version);
        assert!(set.versions().contains_key("VirtualService/shop/ratings"));
        let state = store.snapshot();
        let reviews = &state.services["reviews.shop.svc.cluster.local"];
        assert_eq!(reviews.endpoints[0].inbound.ip().to_string(), "10.0.0.2");
        assert!(
            Arc::ptr_eq(
                &before.services["ratings.shop.svc.cluster.local"],
                &state.services["ratings.shop.svc.cluster.local"]
            ),
            "an unchanged service of the file is not compiled again"
        );
        let rejection = store.last_rejection().expect("the refusal is recorded");
        assert!(rejection.reasons[0].starts_with("VirtualService/shop/reviews:"));

        // A document dropped from the file is removed.
        set.apply_file(&file("10.0.0.2", ""), "f.yaml", &store);
        assert!(!set.versions().contains_key("VirtualService/shop/ratings"));
        assert!(!set.versions().contains_key("VirtualService/shop/reviews"));
    }

    /// A Secret removed while a Gateway names it is refused once and kept; once the
    /// Gateway no longer names it, the next push drops it.
    #[test]
    fn a_named_credential_outlives_its_removal_until_nothing_names_it() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: shop}\n\
                      stringData: {ca.crt: '-----BEGIN CERTIFICATE-----'}\n";
        let gateway = "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: shop}\n\
                       spec: {servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], \
                       tls: {mode: SIMPLE, credentialName: cert}}]}\n";
        let applied = set.apply_file(
            &file("10.0.0.1", &format!("{gateway}{secret}")),
            "f",
            &store,
        );
        assert!(applied.rejected.is_empty(), "{applied:?}");
        assert_eq!(store.snapshot().credentials, ["shop/cert"]);
        // Removed while named: refused once, kept.
        let applied = set.apply_file(&file("10.0.0.1", gateway), "f", &store);
        assert_eq!(applied.rejected.len(), 1, "{applied:?}");
        assert!(
            applied.rejected[0]
                .reason
                .contains("Gateway shop/gw names it")
        );
        assert_eq!(store.snapshot().credentials, ["shop/cert"]);
        // The Gateway goes: the kept credential goes with the same push.
        let applied = set.apply_file(&file("10.0.0.1", ""), "f", &store);
        assert!(applied.rejected.is_empty(), "{applied:?}");
        assert!(store.snapshot().credentials.is_empty());

        // Over the stream, discovery removes the Secret once: the proxy drops it at the
        // first push after which nothing names it, with no second removal.
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        let credential = res(
            "Credential/shop/cert",
            KIND_CREDENTIAL,
            "c1",
            r#"{"namespace":"shop","name":"cert","caCertificates":"-----BEGIN CERTIFICATE-----"}"#,
        );
        let gw = res(
            "Gateway/shop/gw",
            "Gateway",
            "g1",
            r#"{"apiVersion":"networking.istio.io/v1","kind":"Gateway","metadata":{"name":"gw","namespace":"shop"},
               "spec":{"servers":[{"port":{"number":443,"name":"https","protocol":"HTTPS"},"hosts":["*"],
               "tls":{"mode":"SIMPLE","credentialName":"cert"}}]}}"#,
        );
        set.apply(&response("1", vec![node(), credential, gw], &[]), &store);
        assert_eq!(store.snapshot().credentials, ["shop/cert"]);
        let applied = set.apply(&response("2", vec![], &["Credential/shop/cert"]), &store);
        assert_eq!(applied.rejected.len(), 1, "{applied:?}");
        assert_eq!(store.snapshot().credentials, ["shop/cert"]);
        let applied = set.apply(&response("3", vec![], &["Gateway/shop/gw"]), &store);
        assert!(applied.rejected.is_empty(), "{applied:?}");
        assert!(store.snapshot().credentials.is_empty());
    }

    #[test]
    fn a_file_that_cannot_be_read_whole_removes_nothing() {
        let store = StateStore::default();
        let mut set = ResourceSet::default();
        set.apply_file(
            &file("10.0.0.1", &vs_doc("reviews", "^/v1/.*")),
            "f.yaml",
            &store,
        );
        let held = set.versions();

        // Not YAML at all.
        let broken = set.apply_file("kind: [unclosed", "f.yaml", &store);
        assert_eq!(broken.rejected.len(), 1);
        assert_eq!(set.versions(), held);

        // A document without a name: what it replaces is unknown, so nothing goes.
        let unnamed =
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {hosts: [x]}\n";
        let applied = set.apply_file(&file("10.0.0.1", unnamed), "f.yaml", &store);
        assert_eq!(applied.rejected.len(), 1, "{applied:?}");
        assert!(applied.rejected[0].reason.contains("metadata.name"));
        assert_eq!(set.versions(), held);

        // An unreadable ProxyConfig keeps the node and services held.
        let bad = file("10.0.0.1", "").replace(
            "port: 9080}], endpoints: [{address: 10.0.0.1",
            "port: nine}], endpoints: [{address: 10.0.0.1",
        );
        let applied = set.apply_file(&bad, "f.yaml", &store);
        assert_eq!(applied.rejected.len(), 1, "{applied:?}");
        assert!(
            applied.rejected[0].reason.starts_with("ProxyConfig:"),
            "{applied:?}"
        );
        assert!(set.versions().contains_key("Service/shop/reviews"));
        assert_eq!(store.snapshot().services.len(), 2);

        // No ProxyConfig at all: the same.
        let applied = set.apply_file(&vs_doc("reviews", "^/v1/.*"), "f.yaml", &store);
        assert!(
            applied
                .rejected
                .iter()
                .any(|r| r.reason.contains("no ProxyConfig"))
        );
        assert_eq!(store.snapshot().services.len(), 2);

        // A kind the proxy does not read is refused by name.
        let gw = "---\napiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: s, namespace: shop}\nspec: {}\n";
        let applied = set.apply_file(&file("10.0.0.1", gw), "f.yaml", &store);
        assert_eq!(
            applied.rejected[0].name, "EnvoyFilter/shop/s",
            "{applied:?}"
        );
    }
}
