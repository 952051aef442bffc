//! The registry: what discovery knows of its cluster (Services, EndpointSlices, Pods,
//! Nodes, Namespaces, WorkloadEntries and the Istio kinds), from the Kubernetes API or
//! a directory, compiled into the resources proxies consume.
//!
//! Every input change recompiles only the outputs it touches (a Service and its
//! endpoints; the services of a pod; every service when a node's locality changes) and
//! records the output names in a change log ordered by generation, so each proxy's push
//! reads only what changed since the generation it holds.
//!
//! Bad input loses nothing: an Istio object that fails validation is reported (see
//! [`Registry::errors`]) and the last good version of that object stays in force.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
pub use mesh_api::mcs::{ServiceExport, ServiceImport};
pub use mesh_api::networking::WorkloadEntry;
use mesh_proto::model::{EndpointConfig, ServiceConfig, ServicePortConfig};
use serde::Serialize;
use tokio::sync::watch;

/// The namespace whose PeerAuthentication and AuthorizationPolicy apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// Hosts that are cluster-local by default (Istio's MeshConfig default).
pub const DEFAULT_CLUSTER_LOCAL: &[&str] = &["*.kube-system.svc.cluster.local"];
/// Endpoint label with the endpoint's cluster (Istio's).
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
/// Endpoint label with the endpoint's network (Istio's).
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// Label on an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotation on a Service restricting which namespaces see it (Istio's).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";
/// Pod annotation: the port its sidecar accepts mesh traffic on, when not 15006.
pub const INBOUND_PORT_ANNOTATION: &str = "isthmus.dev/inbound-port";

/// One input object.
#[derive(Debug, Clone)]
pub enum Object {
    /// core/v1 Service.
    Service(Box<Service>),
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// core/v1 Pod.
    Pod(Box<Pod>),
    /// core/v1 Node.
    Node(Box<Node>),
    /// core/v1 Namespace.
    Namespace(Box<Namespace>),
    /// networking.istio.io WorkloadEntry.
    WorkloadEntry(Box<WorkloadEntry>),
    /// An Istio kind, as JSON (validated on the way in).
    Istio(serde_json::Value),
    /// core/v1 Secret (cluster links; others are ignored).
    Secret(Box<k8s_openapi::api::core::v1::Secret>),
    /// multicluster.x-k8s.io ServiceExport.
    ServiceExport(Box<ServiceExport>),
    /// multicluster.x-k8s.io ServiceImport.
    ServiceImport(Box<ServiceImport>),
}

/// Which input kind, for watchers replacing a whole kind after a relist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum InputKind {
    /// Services.
    Service,
    /// EndpointSlices.
    EndpointSlice,
    /// Pods.
    Pod,
    /// Nodes.
    Node,
    /// Namespaces.
    Namespace,
    /// WorkloadEntries.
    WorkloadEntry,
    /// Istio kinds.
    Istio,
    /// Link Secrets.
    Secret,
    /// Secrets with certificates (`credentialName`), in any namespace.
    Credential,
    /// MCS ServiceExports.
    ServiceExport,
    /// MCS ServiceImports.
    ServiceImport,
}

impl InputKind {
    /// Every kind, as both the Kubernetes and the file registry read them.
    pub const ALL: &[InputKind] = &[
        InputKind::Service,
        InputKind::EndpointSlice,
        InputKind::Pod,
        InputKind::Node,
        InputKind::Namespace,
        InputKind::WorkloadEntry,
        InputKind::Istio,
        InputKind::Secret,
        InputKind::Credential,
        InputKind::ServiceExport,
        InputKind::ServiceImport,
    ];
}

impl Object {
    /// The object's input kind.
    pub fn input_kind(&self) -> InputKind {
        match self {
            Self::Service(_) => InputKind::Service,
            Self::EndpointSlice(_) => InputKind::EndpointSlice,
            Self::Pod(_) => InputKind::Pod,
            Self::Node(_) => InputKind::Node,
            Self::Namespace(_) => InputKind::Namespace,
            Self::WorkloadEntry(_) => InputKind::WorkloadEntry,
            Self::Istio(_) => InputKind::Istio,
            Self::ServiceExport(_) => InputKind::ServiceExport,
            Self::ServiceImport(_) => InputKind::ServiceImport,
            // A link Secret carries the link label; any other Secret the registry
            // reads holds certificates.
            Self::Secret(o) => {
                let link = o
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(crate::links::LINK_LABEL));
                if link {
                    InputKind::Secret
                } else {
                    InputKind::Credential
                }
            }
        }
    }

    /// `Kind/namespace/name` (`Kind/name` for cluster-scoped kinds).
    pub fn key(&self) -> String {
        // Namespaced kinds default to `default`, as the API server does.
        let namespaced = |kind: &str, meta| {
            let (ns, name) = ns_name(meta);
            format!("{kind}/{ns}/{name}")
        };
        let cluster = |kind: &str, name: &Option<String>| {
            format!("{kind}/{}", name.as_deref().unwrap_or_default())
        };
        match self {
            Self::Service(o) => namespaced("Service", &o.metadata),
            Self::EndpointSlice(o) => namespaced("EndpointSlice", &o.metadata),
            Self::Pod(o) => namespaced("Pod", &o.metadata),
            Self::Node(o) => cluster("Node", &o.metadata.name),
            Self::Namespace(o) => cluster("Namespace", &o.metadata.name),
            Self::WorkloadEntry(o) => namespaced("WorkloadEntry", &o.metadata),
            Self::Secret(o) => namespaced("Secret", &o.metadata),
            Self::ServiceExport(o) => namespaced("ServiceExport", &o.metadata),
            Self::ServiceImport(o) => namespaced("ServiceImport", &o.metadata),
            Self::Istio(v) => {
                let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).map(str::to_owned);
                format!(
                    "{}/{}/{}",
                    s("/kind").unwrap_or_default(),
                    s("/metadata/namespace").unwrap_or_else(|| "default".into()),
                    s("/metadata/name").unwrap_or_default()
                )
            }
        }
    }
}

/// A compiled resource, as sent to proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// `Kind/namespace/name`.
    pub name: String,
    /// `Service` or the Istio kind.
    pub kind: String,
    /// Hash of the body.
    pub version: String,
    /// JSON body.
    pub body: bytes::Bytes,
    /// Namespace of the object.
    pub namespace: String,
    /// Namespaces that may see it (`*` all, `.` its own, `~` none); empty is all.
    pub export_to: Vec<String>,
    /// For ingress gateways only (a certificate only Gateways name).
    pub ingress_only: bool,
}

impl Output {
    fn new(
        name: String,
        kind: &str,
        namespace: &str,
        export_to: Vec<String>,
        body: Vec<u8>,
    ) -> Self {
        Self {
            version: content_version(&body),
            name,
            kind: kind.to_owned(),
            body: bytes::Bytes::from(body),
            namespace: namespace.to_owned(),
            export_to,
            ingress_only: false,
        }
    }

    /// Whether a proxy in `namespace` receives this resource.
    pub fn visible_to(&self, namespace: &str) -> bool {
        if matches!(
            self.kind.as_str(),
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" | "Sidecar"
        ) {
            return self.namespace == namespace || self.namespace == ROOT_NAMESPACE;
        }
        if self.export_to.is_empty() {
            return true;
        }
        self.export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => self.namespace == namespace,
            "~" => false,
            ns => ns == namespace,
        })
    }
}

/// The clusterset key of the Service `(namespace, name)`.
fn clusterset_key((namespace, name): &(String, String)) -> (String, String) {
    (
        namespace.clone(),
        mesh_api::mcs::clusterset_host(name, namespace),
    )
}

/// A short hash of a body: the resource's version.
pub fn content_version(body: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A refused input object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputError {
    /// `Kind/namespace/name`.
    pub object: String,
    /// Why, with the field.
    pub reason: String,
    /// Whether an older, valid version of the object is still in force.
    pub last_good_in_force: bool,
}

/// A workload as discovery knows it (a pod or a WorkloadEntry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// IP.
    pub ip: Option<IpAddr>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
    /// Network.
    pub network: String,
    /// `region/zone/subzone`.
    pub locality: String,
    /// Port its sidecar accepts mesh traffic on.
    pub inbound_port: Option<u16>,
    /// Ready (pods: the Ready condition).
    pub ready: bool,
}

#[derive(Debug, Default)]
struct Inner {
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
    pods: BTreeMap<(String, String), Pod>,
    nodes: BTreeMap<String, Node>,
    namespaces: BTreeMap<String, Namespace>,
    entries: BTreeMap<(String, String), WorkloadEntry>,
    /// ServiceEntries with a `workloadSelector`, by object key: discovery compiles the
    /// service each host defines from the workloads selected.
    selecting: BTreeMap<String, SelectingEntry>,
    /// MCS: the Services this cluster exports to the clusterset.
    service_exports: BTreeMap<(String, String), ServiceExport>,
    /// MCS: the clusterset services' virtual IPs, by (namespace, name).
    service_imports: BTreeMap<(String, String), ServiceImport>,
    /// Istio objects by key: the last good JSON.
    istio: BTreeMap<String, serde_json::Value>,
    errors: BTreeMap<String, InputError>,
    /// Fields accepted without effect, per Istio object in force (`path: reason`).
    warned: BTreeMap<String, Vec<String>>,
    file_errors: Vec<String>,
    /// Cluster links by Secret key.
    links: BTreeMap<String, crate::links::Link>,
    /// Certificates of other Secrets (a Gateway's `credentialName`) by Secret key: the
    /// last good material of each.
    credentials: BTreeMap<String, mesh_proto::model::Credential>,
    /// The Secrets refused as certificates (their refusals, under `errors`, belong to
    /// the certificate input, not to the links').
    credential_errors: BTreeSet<String>,

    /// What local proxies receive.
    outputs: OutputLog,
    /// The Sidecars in force, read once per change (each proxy's push is scoped by
    /// the one in force for it), and a counter that moves when one changes.
    sidecars: Arc<Vec<Arc<mesh_api::Resource>>>,
    sidecars_changed: u64,
    /// What linked clusters receive: local endpoints of exported services.
    exports: OutputLog,
    /// Services received from linked clusters, by cluster.
    remote: BTreeMap<String, RemoteCluster>,
    generation: u64,
    /// When the oldest change not yet published happened.
    pending_since: Option<Instant>,
    synced: BTreeSet<InputKind>,
}

/// Outputs with a change log ordered by generation.
#[derive(Debug, Default)]
struct OutputLog {
    outputs: HashMap<String, Arc<Output>>,
    /// Output name → generation of its last change.
    last_change: HashMap<String, u64>,
    /// Generation → output names changed then (each name only at its latest).
    log: BTreeMap<u64, BTreeSet<String>>,
}

impl OutputLog {
    /// Sets (or removes) an output; false when nothing changed.
    fn set(&mut self, name: &str, output: Option<Output>, gen_: u64) -> bool {
        let same = match (&output, self.outputs.get(name)) {
            (Some(new), Some(old)) => new.version == old.version && new.export_to == old.export_to,
            (None, None) => true,
            _ => false,
        };
        if same {
            return false;
        }
        match output {
            Some(o) => {
                self.outputs.insert(name.to_owned(), Arc::new(o));
            }
            None => {
                self.outputs.remove(name);
            }
        }
        if let Some(old) = self.last_change.insert(name.to_owned(), gen_)
            && let Some(set) = self.log.get_mut(&old)
        {
            set.remove(name);
            if set.is_empty() {
                self.log.remove(&old);
            }
        }
        self.log.entry(gen_).or_default().insert(name.to_owned());
        true
    }

    fn all(&self, generation: u64) -> Delta {
        Delta {
            updated: self.outputs.values().cloned().collect(),
            removed: vec![],
            generation,
        }
    }

    fn since(&self, since: u64, generation: u64) -> Delta {
        let mut delta = Delta {
            generation,
            ..Default::default()
        };
        for names in self.log.range(since + 1..).map(|(_, n)| n) {
            for name in names {
                match self.outputs.get(name) {
                    Some(o) => delta.updated.push(o.clone()),
                    None => delta.removed.push(name.clone()),
                }
            }
        }
        delta
    }
}

/// A ServiceEntry that selects workloads (pods and WorkloadEntries of its namespace).
#[derive(Debug, Clone)]
struct SelectingEntry {
    namespace: String,
    selector: BTreeMap<String, String>,
    /// Hosts as written, lower-cased: each is a service keyed `(namespace, host)`.
    hosts: Vec<String>,
    spec: mesh_api::networking::ServiceEntrySpec,
}

impl SelectingEntry {
    fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    fn keys(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.hosts
            .iter()
            .map(|h| (self.namespace.clone(), h.clone()))
    }
}

/// What one linked cluster exports to this one.
#[derive(Debug, Clone, Default)]
pub struct RemoteCluster {
    /// The peer's network.
    pub network: String,
    /// Its east-west gateway (for endpoints on its network when that is not ours).
    pub gateway: Option<std::net::SocketAddr>,
    /// Whether that gateway accepts QUIC tunnels.
    pub gateway_quic: bool,
    /// Exported services: (namespace, name) → (service, exportTo).
    pub services: BTreeMap<(String, String), (ServiceConfig, Vec<String>)>,
    /// Since when the peer's lease has run out while its gateway still passes its
    /// health checks: the endpoints are kept and marked stale.
    pub stale_since: Option<std::time::SystemTime>,
}

/// What proxies read: see the module documentation.
#[derive(Debug)]
pub struct Registry {
    cluster: String,
    network: String,
    cluster_local: Vec<String>,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    expected_kinds: BTreeSet<InputKind>,
    outbound_traffic_policy: mesh_proto::model::OutboundTrafficPolicy,
    /// The calls of this cluster's proxies and of the linked clusters' (the graph).
    edges: crate::edges::EdgeBook,
}

/// Outputs changed between two generations.
#[derive(Debug, Default)]
pub struct Delta {
    /// Changed or added outputs.
    pub updated: Vec<Arc<Output>>,
    /// Names of removed outputs.
    pub removed: Vec<String>,
    /// The generation this brings a reader to.
    pub generation: u64,
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Registry {
    /// An empty registry for `cluster` on `network`; ready once each of
    /// `expected_kinds` has been synced.
    pub fn new(cluster: &str, network: &str, expected_kinds: &[InputKind]) -> Self {
        Self {
            cluster: cluster.to_owned(),
            network: network.to_owned(),
            cluster_local: DEFAULT_CLUSTER_LOCAL
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            inner: Mutex::default(),
            changed: watch::channel(0).0,
            expected_kinds: expected_kinds.iter().copied().collect(),
            outbound_traffic_policy: Default::default(),
            edges: crate::edges::EdgeBook::default(),
        }
    }

    /// The calls of this cluster's proxies and of the linked clusters' proxies.
    pub fn edges(&self) -> &crate::edges::EdgeBook {
        &self.edges
    }

    /// Sets the mesh's outbound traffic policy, told to every proxy in its node.
    pub fn with_outbound_traffic_policy(
        mut self,
        policy: mesh_proto::model::OutboundTrafficPolicy,
    ) -> Self {
        self.outbound_traffic_policy = policy;
        self
    }

    /// The mesh's outbound traffic policy (Istio's meshConfig
    /// `outboundTrafficPolicy.mode`).
    pub fn outbound_traffic_policy(&self) -> mesh_proto::model::OutboundTrafficPolicy {
        self.outbound_traffic_policy
    }

    /// Sets the cluster-local host patterns (`name.ns.svc.cluster.local` or `*.suffix`).
    pub fn with_cluster_local(mut self, patterns: Vec<String>) -> Self {
        self.cluster_local = patterns;
        self
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The cluster's default network.
    pub fn network(&self) -> &str {
        &self.network
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the generation: changes every time an input changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Whether every expected input kind has been listed once.
    pub fn is_synced(&self) -> bool {
        let inner = self.lock();
        self.expected_kinds.iter().all(|k| inner.synced.contains(k))
    }

    /// Marks `kind` as listed.
    pub fn mark_synced(&self, kind: InputKind) {
        self.lock().synced.insert(kind);
        self.changed.send_modify(|_| {});
    }

    /// The input errors now outstanding.
    pub fn errors(&self) -> Vec<InputError> {
        let inner = self.lock();
        let files = inner.file_errors.iter().map(|e| InputError {
            object: "file".into(),
            reason: e.clone(),
            last_good_in_force: true,
        });
        inner.errors.values().cloned().chain(files).collect()
    }

    /// How healthy the inputs are: (objects refused now, fields of objects in force
    /// that are accepted without effect).
    pub fn input_health(&self) -> (usize, usize) {
        let inner = self.lock();
        let warned = inner.warned.values().map(Vec::len).sum();
        (inner.errors.len() + inner.file_errors.len(), warned)
    }

    /// Replaces the file registry's errors (documents it could not read).
    pub fn set_file_errors(&self, errors: Vec<String>) {
        self.lock().file_errors = errors;
    }

    /// Takes the instant of the oldest unpublished change (for convergence metrics).
    pub fn take_pending_since(&self) -> Option<Instant> {
        self.lock().pending_since.take()
    }

    /// Adds or replaces an object. Returns the refusal, if the object is invalid (its
    /// last good version, if any, stays).
    pub fn apply(&self, object: Object) -> Result<(), InputError> {
        let mut inner = self.lock();
        let result = self.apply_locked(&mut inner, object);
        drop(inner);
        self.changed.send_modify(|_| {});
        result
    }

    /// Removes an object.
    pub fn delete(&self, object: &Object) {
        let mut inner = self.lock();
        let key = object.key();
        inner.errors.remove(&key);
        let touched = match object {
            Object::Service(o) => {
                let k = ns_name(&o.metadata);
                inner.services.remove(&k);
                vec![k]
            }
            Object::EndpointSlice(o) => {
                let k = ns_name(&o.metadata);
                let svc = inner.slices.remove(&k).and_then(|s| slice_service(&s));
                svc.into_iter().collect()
            }
            Object::Pod(o) => {
                let k = ns_name(&o.metadata);
                inner.pods.remove(&k);
                services_of_workload(&inner, &k)
            }
            Object::Node(o) => {
                inner
                    .nodes
                    .remove(&o.metadata.name.clone().unwrap_or_default());
                inner.services.keys().cloned().collect()
            }
            Object::Namespace(o) => {
                inner
                    .namespaces
                    .remove(&o.metadata.name.clone().unwrap_or_default());
                vec![]
            }
            Object::WorkloadEntry(o) => {
                let k = ns_name(&o.metadata);
                let before = services_of_workload(&inner, &k);
                inner.entries.remove(&k);
                before
            }
            Object::ServiceExport(o) => {
                let k = ns_name(&o.metadata);
                inner.service_exports.remove(&k);
                vec![clusterset_key(&k)]
            }
            Object::ServiceImport(o) => {
                let k = ns_name(&o.metadata);
                inner.warned.remove(&key);
                inner.service_imports.remove(&k);
                vec![clusterset_key(&k)]
            }
            Object::Secret(_) => {
                inner.links.remove(&key);
                if inner.credentials.remove(&key).is_some() {
                    refresh_credentials(&mut inner);
                }
                vec![]
            }
            Object::Istio(_) => {
                inner.istio.remove(&key);
                inner.warned.remove(&key);
                let gen_ = inner.generation + 1;
                inner.generation = gen_;
                set_output(&mut inner, &key, None, gen_);
                if key.starts_with("Gateway/") || key.starts_with("DestinationRule/") {
                    refresh_credentials(&mut inner);
                }
                inner
                    .selecting
                    .remove(&key)
                    .map(|e| e.keys().collect())
                    .unwrap_or_default()
            }
        };
        self.recompile_services(&mut inner, touched);
        drop(inner);
        self.changed.send_modify(|_| {});
    }

    /// Removes the Istio object or link Secret `Kind/namespace/name`.
    pub fn delete_key(&self, key: &str) {
        let mut inner = self.lock();
        inner.errors.remove(key);
        inner.links.remove(key);
        inner.warned.remove(key);
        let credential = inner.credentials.remove(key).is_some();
        if inner.istio.remove(key).is_some() {
            let gen_ = inner.generation + 1;
            inner.generation = gen_;
            set_output(&mut inner, key, None, gen_);
        }
        if credential || key.starts_with("Gateway/") || key.starts_with("DestinationRule/") {
            refresh_credentials(&mut inner);
        }
        let touched = inner
            .selecting
            .remove(key)
            .map(|e| e.keys().collect())
            .unwrap_or_default();
        self.recompile_services(&mut inner, touched);
        drop(inner);
        self.changed.send_modify(|_| {});
    }

    /// Replaces every object of `kind` with `objects` (after a relist), then marks the
    /// kind synced. Objects gone since are deleted.
    pub fn replace_all(&self, kind: InputKind, objects: Vec<Object>) {
        let present: BTreeSet<String> = objects.iter().map(Object::key).collect();
        // Only the objects that are gone are cloned (to be deleted).
        fn gone<V: Clone>(
            kind: &str,
            map: &BTreeMap<(String, String), V>,
            present: &BTreeSet<String>,
            wrap: fn(Box<V>) -> Object,
        ) -> Vec<Object> {
            map.iter()
                .filter(|((ns, name), _)| !present.contains(&format!("{kind}/{ns}/{name}")))
                .map(|(_, v)| wrap(Box::new(v.clone())))
                .collect()
        }
        fn gone_cluster_scoped<V: Clone>(
            kind: &str,
            map: &BTreeMap<String, V>,
            present: &BTreeSet<String>,
            wrap: fn(Box<V>) -> Object,
        ) -> Vec<Object> {
            map.iter()
                .filter(|(name, _)| !present.contains(&format!("{kind}/{name}")))
                .map(|(_, v)| wrap(Box::new(v.clone())))
                .collect()
        }
        let (stale, stale_keys): (Vec<Object>, Vec<String>) = {
            let inner = self.lock();
            let keys = |keys: Vec<&String>| {
                keys.into_iter()
                    .filter(|k| !present.contains(*k))
                    .cloned()
                    .collect()
            };
            match kind {
                InputKind::Service => (
                    gone("Service", &inner.services, &present, Object::Service),
                    vec![],
                ),
                InputKind::EndpointSlice => (
                    gone(
                        "EndpointSlice",
                        &inner.slices,
                        &present,
                        Object::EndpointSlice,
                    ),
                    vec![],
                ),
                InputKind::Pod => (gone("Pod", &inner.pods, &present, Object::Pod), vec![]),
                InputKind::WorkloadEntry => (
                    gone(
                        "WorkloadEntry",
                        &inner.entries,
                        &present,
                        Object::WorkloadEntry,
                    ),
                    vec![],
                ),
                InputKind::Node => (
                    gone_cluster_scoped("Node", &inner.nodes, &present, Object::Node),
                    vec![],
                ),
                InputKind::Namespace => (
                    gone_cluster_scoped(
                        "Namespace",
                        &inner.namespaces,
                        &present,
                        Object::Namespace,
                    ),
                    vec![],
                ),
                InputKind::ServiceExport => (
                    gone(
                        "ServiceExport",
                        &inner.service_exports,
                        &present,
                        Object::ServiceExport,
                    ),
                    vec![],
                ),
                InputKind::ServiceImport => (
                    gone(
                        "ServiceImport",
                        &inner.service_imports,
                        &present,
                        Object::ServiceImport,
                    ),
                    vec![],
                ),
                InputKind::Istio => (vec![], keys(inner.istio.keys().collect())),
                InputKind::Secret => (vec![], keys(inner.links.keys().collect())),
                InputKind::Credential => (vec![], keys(inner.credentials.keys().collect())),
            }
        };
        for o in &stale {
            self.delete(o);
        }
        for k in &stale_keys {
            self.delete_key(k);
        }
        // A refused object that is gone (its file removed, or deleted while the watch
        // was down) is no longer an error: it was never stored, so it is not stale.
        {
            let mut inner = self.lock();
            // Link and certificate Secrets share the `Secret/` keys: a refusal belongs
            // to the kind that refused it.
            let credential_errors = inner.credential_errors.clone();
            let owned = |key: &str| {
                let k = key.split('/').next().unwrap_or_default();
                match kind {
                    InputKind::Istio => !matches!(
                        k,
                        "Secret"
                            | "WorkloadEntry"
                            | "Service"
                            | "EndpointSlice"
                            | "Pod"
                            | "Node"
                            | "Namespace"
                            | "ServiceExport"
                            | "ServiceImport"
                    ),
                    InputKind::WorkloadEntry => k == "WorkloadEntry",
                    InputKind::ServiceImport => k == "ServiceImport",
                    InputKind::Secret => k == "Secret" && !credential_errors.contains(key),
                    InputKind::Credential => credential_errors.contains(key),
                    _ => false,
                }
            };
            inner
                .errors
                .retain(|key, _| !owned(key) || present.contains(key));
            let errors: BTreeSet<String> = inner.errors.keys().cloned().collect();
            inner.credential_errors.retain(|k| errors.contains(k));
        }
        for o in objects {
            if let Err(e) = self.apply(o) {
                tracing::warn!(object = %e.object, reason = %e.reason, "input refused");
            }
        }
        self.mark_synced(kind);
    }

    fn apply_locked(&self, inner: &mut Inner, object: Object) -> Result<(), InputError> {
        let key = object.key();
        let touched = match object {
            Object::Service(o) => {
                let k = ns_name(&o.metadata);
                inner.services.insert(k.clone(), *o);
                vec![k]
            }
            Object::EndpointSlice(o) => {
                let k = ns_name(&o.metadata);
                let mut touched: Vec<_> = inner
                    .slices
                    .get(&k)
                    .and_then(slice_service)
                    .into_iter()
                    .collect();
                touched.extend(slice_service(&o));
                inner.slices.insert(k, *o);
                touched
            }
            Object::Pod(o) => {
                let k = ns_name(&o.metadata);
                let mut touched = services_of_workload(inner, &k);
                inner.pods.insert(k.clone(), *o);
                touched.extend(services_of_workload(inner, &k));
                touched
            }
            Object::Node(o) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                let same_locality = inner
                    .nodes
                    .get(&name)
                    .is_some_and(|old| node_locality(old) == node_locality(&o));
                inner.nodes.insert(name, *o);
                if same_locality {
                    vec![]
                } else {
                    inner.services.keys().cloned().collect()
                }
            }
            Object::Namespace(o) => {
                inner
                    .namespaces
                    .insert(o.metadata.name.clone().unwrap_or_default(), *o);
                vec![]
            }
            Object::WorkloadEntry(o) => {
                let k = ns_name(&o.metadata);
                if let Err(reason) = o.spec.address.parse::<IpAddr>().map_err(|e| {
                    format!(
                        "spec.address {:?}: {e}; give the workload's IP address",
                        o.spec.address
                    )
                }) {
                    return Err(refuse(inner, &key, reason));
                }
                let mut touched = services_of_workload(inner, &k);
                inner.entries.insert(k.clone(), *o);
                touched.extend(services_of_workload(inner, &k));
                touched
            }
            Object::ServiceExport(o) => {
                let k = ns_name(&o.metadata);
                inner.service_exports.insert(k.clone(), *o);
                vec![clusterset_key(&k)]
            }
            Object::ServiceImport(o) => {
                let k = ns_name(&o.metadata);
                if let Some((i, ip)) = o
                    .spec
                    .ips
                    .iter()
                    .enumerate()
                    .find(|(_, ip)| ip.parse::<IpAddr>().is_err())
                {
                    let reason = format!(
                        "spec.ips[{i}]: {ip:?} is not an IP address; give the clusterset IP (or none, and the DNS proxy allocates one)"
                    );
                    let mut err = refuse(inner, &key, reason);
                    err.last_good_in_force = inner.service_imports.contains_key(&k);
                    inner.errors.insert(key.clone(), err.clone());
                    return Err(err);
                }
                // What Isthmus does not build is refused; what it takes elsewhere is
                // reported as without effect.
                let unsupported = match (
                    o.spec.type_.as_deref(),
                    o.spec.session_affinity.as_deref(),
                ) {
                    (Some(t), _) if t != "ClusterSetIP" => Some(format!(
                        "spec.type {t:?}: only ClusterSetIP clusterset services are built; headless ones are not"
                    )),
                    (_, Some(a)) if a != "None" => Some(format!(
                        "spec.sessionAffinity {a:?}: not applied; remove it, or set it to None"
                    )),
                    _ => None,
                };
                if let Some(reason) = unsupported {
                    let mut err = refuse(inner, &key, reason);
                    err.last_good_in_force = inner.service_imports.contains_key(&k);
                    inner.errors.insert(key.clone(), err.clone());
                    return Err(err);
                }
                if o.spec.ports.is_empty() {
                    inner.warned.remove(&key);
                } else {
                    inner.warned.insert(
                        key.clone(),
                        vec!["spec.ports: the clusterset service has the ports of the Services exported as it".into()],
                    );
                }
                inner.service_imports.insert(k.clone(), *o);
                vec![clusterset_key(&k)]
            }
            Object::Secret(secret) => {
                match crate::links::Link::from_secret(&secret) {
                    Ok(None) => {
                        inner.links.remove(&key);
                        if let Some(found) = credential_of(&secret) {
                            match found {
                                Ok(c) => {
                                    inner.credential_errors.remove(&key);
                                    inner.credentials.insert(key.clone(), c);
                                }
                                // The last good material stays in force.
                                Err(reason) => {
                                    inner.credential_errors.insert(key.clone());
                                    let mut err = refuse(inner, &key, reason);
                                    err.last_good_in_force = inner.credentials.contains_key(&key);
                                    inner.errors.insert(key.clone(), err.clone());
                                    return Err(err);
                                }
                            }
                        } else {
                            inner.credentials.remove(&key);
                        }
                        refresh_credentials(inner);
                    }
                    Ok(Some(link)) => {
                        if link.cluster == self.cluster {
                            let reason = format!(
                                "it links cluster {:?}, which is this cluster; apply it in the other clusters",
                                link.cluster
                            );
                            return Err(refuse_link(inner, &key, reason));
                        }
                        if let Some((other, _)) = inner
                            .links
                            .iter()
                            .find(|(k, l)| **k != key && l.cluster == link.cluster)
                        {
                            let reason = format!(
                                "cluster {:?} is already linked by {other}; delete one of the two",
                                link.cluster
                            );
                            return Err(refuse_link(inner, &key, reason));
                        }
                        inner.links.insert(key.clone(), link);
                    }
                    Err(reason) => return Err(refuse_link(inner, &key, reason)),
                }
                vec![]
            }
            Object::Istio(mut value) => {
                if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    meta.remove("managedFields");
                    meta.remove("resourceVersion");
                    meta.remove("generation");
                    meta.remove("uid");
                }
                let resource = match mesh_api::from_value_with_warnings(value.clone()) {
                    Ok((r, warned)) => {
                        if warned.is_empty() {
                            inner.warned.remove(&key);
                        } else {
                            let list = warned.iter().map(|w| format!("{}: {}", w.path, w.reason));
                            inner.warned.insert(key.clone(), list.collect());
                        }
                        r
                    }
                    Err(e) => return Err(refuse(inner, &key, e.to_string())),
                };
                inner.errors.remove(&key);
                let export_to = match &resource {
                    mesh_api::Resource::VirtualService(r) => r.spec.export_to.clone(),
                    mesh_api::Resource::DestinationRule(r) => r.spec.export_to.clone(),
                    mesh_api::Resource::ServiceEntry(r) => r.spec.export_to.clone(),
                    _ => vec![],
                };
                let ns = resource
                    .metadata()
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let body = serde_json::to_vec(&value).unwrap_or_default();
                inner.istio.insert(key.clone(), value);
                // A ServiceEntry that selects workloads is sent as the services it
                // defines (compiled from the workloads), not as itself.
                let mut touched: Vec<_> = inner
                    .selecting
                    .remove(&key)
                    .map(|e| e.keys().collect())
                    .unwrap_or_default();
                let selecting = match &resource {
                    mesh_api::Resource::ServiceEntry(se) => {
                        se.spec
                            .workload_selector
                            .as_ref()
                            .map(|sel| SelectingEntry {
                                namespace: ns.clone(),
                                selector: sel.labels.clone(),
                                hosts: se
                                    .spec
                                    .hosts
                                    .iter()
                                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                                    .collect(),
                                spec: se.spec.clone(),
                            })
                    }
                    _ => None,
                };
                let output = match selecting {
                    Some(entry) => {
                        touched.extend(entry.keys());
                        inner.selecting.insert(key.clone(), entry);
                        None
                    }
                    None => Some(Output::new(
                        key.clone(),
                        resource.kind(),
                        &ns,
                        export_to,
                        body,
                    )),
                };
                let gen_ = inner.generation + 1;
                inner.generation = gen_;
                set_output(inner, &key, output, gen_);
                if matches!(resource.kind(), "Gateway" | "DestinationRule") {
                    refresh_credentials(inner);
                }
                touched
            }
        };
        inner.errors.remove(&key);
        self.recompile_services(inner, touched);
        Ok(())
    }

    /// Recompiles the services `touched` names, each under its `cluster.local` name
    /// and its `clusterset.local` one (MCS). A service's clusterset form is keyed by
    /// (namespace, `NAME.NS.svc.clusterset.local`): it holds this cluster's endpoints
    /// when a ServiceExport exports the Service, and those of every linked cluster that
    /// exports it, which the federation carries under the same key.
    fn recompile_services(&self, inner: &mut Inner, touched: Vec<(String, String)>) {
        let mut touched: BTreeSet<_> = touched.into_iter().collect();
        if touched.is_empty() {
            return;
        }
        let clusterset: Vec<_> = touched
            .iter()
            .filter(|(_, name)| !name.contains('.'))
            .map(clusterset_key)
            .collect();
        touched.extend(clusterset);
        let gen_ = inner.generation + 1;
        inner.generation = gen_;
        for key in touched {
            let name = format!("Service/{}/{}", key.0, key.1);
            // The Service a clusterset key stands for.
            let clusterset = mesh_api::mcs::parse_clusterset_host(&key.1)
                .filter(|(_, ns)| *ns == key.0)
                .map(|(n, _)| (key.0.clone(), n.to_owned()));
            let base = clusterset.clone().unwrap_or_else(|| key.clone());
            // A ServiceEntry's host (a Service's name has no dot).
            let entry_host = clusterset.is_none() && key.1.contains('.');
            let host = if entry_host {
                key.1.clone()
            } else {
                format!(
                    "{}.{}.svc.{}",
                    base.1,
                    base.0,
                    mesh_proto::model::CLUSTER_DOMAIN
                )
            };
            let cluster_local = self.is_cluster_local(&host);
            let selected = entry_host
                .then(|| {
                    inner
                        .selecting
                        .values()
                        .find(|e| e.namespace == key.0 && e.hosts.contains(&key.1))
                })
                .flatten()
                .map(|e| {
                    (
                        self.compile_entry(inner, e, &key.1),
                        e.spec.export_to.clone(),
                    )
                });
            let local = selected.or_else(|| {
                inner
                    .services
                    .get(&base)
                    .filter(|_| clusterset.is_none() || inner.service_exports.contains_key(&base))
                    .map(|svc| {
                        let export_to: Vec<String> = svc
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
                            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
                            .unwrap_or_default();
                        let mut cfg = self.compile_service(inner, svc);
                        if clusterset.is_some() {
                            cfg.name.clone_from(&key.1);
                            cfg.addresses.clear();
                        }
                        (cfg, export_to)
                    })
                    .filter(|_| !entry_host)
            });
            // What linked clusters see: local endpoints of exported services.
            let export = local
                .as_ref()
                .filter(|(_, export_to)| !cluster_local && !export_to.iter().any(|e| e == "~"))
                .map(|(cfg, export_to)| {
                    let body = serde_json::to_vec(cfg).unwrap_or_default();
                    Output::new(
                        name.clone(),
                        mesh_proto::model::KIND_SERVICE,
                        &key.0,
                        export_to.clone(),
                        body,
                    )
                });
            if inner.exports.set(&name, export, gen_) {
                inner.pending_since.get_or_insert_with(Instant::now);
            }
            // What local proxies see: local endpoints, then those of linked clusters
            // (namespace sameness: same name and namespace is one service).
            let remotes: Vec<(&RemoteCluster, &ServiceConfig, &Vec<String>)> = if cluster_local {
                vec![]
            } else {
                inner
                    .remote
                    .values()
                    .filter_map(|r| r.services.get(&key).map(|(s, e)| (r, s, e)))
                    .collect()
            };
            let merged = match (&local, remotes.first()) {
                (None, None) => None,
                (Some((cfg, export_to)), _) => Some((cfg.clone(), export_to.clone())),
                (None, Some((_, cfg, export_to))) => Some((
                    ServiceConfig {
                        addresses: vec![],
                        endpoints: vec![],
                        ..(*cfg).clone()
                    },
                    (*export_to).clone(),
                )),
            };
            let output = merged.map(|(mut cfg, export_to)| {
                for (remote, svc, _) in &remotes {
                    cfg.endpoints.extend(self.remote_endpoints(remote, svc));
                }
                // A clusterset service's virtual IPs are its ServiceImport's.
                if clusterset.is_some() {
                    cfg.addresses = inner
                        .service_imports
                        .get(&base)
                        .map(|i| i.spec.ips.iter().filter_map(|ip| ip.parse().ok()).collect())
                        .unwrap_or_default();
                }
                let body = serde_json::to_vec(&cfg).unwrap_or_default();
                Output::new(
                    name.clone(),
                    mesh_proto::model::KIND_SERVICE,
                    &key.0,
                    export_to,
                    body,
                )
            });
            set_output(inner, &name, output, gen_);
        }
    }

    /// A linked cluster's endpoints as this cluster's proxies reach them: directly on
    /// the same network, else through that network's gateway, one gateway endpoint per
    /// group of endpoints with the same labels, locality and identity, weighted by
    /// their count (split horizon, as Istio does).
    fn remote_endpoints(&self, remote: &RemoteCluster, svc: &ServiceConfig) -> Vec<EndpointConfig> {
        let mut out = Vec::new();
        type GroupKey = (
            BTreeMap<String, String>,
            String,
            Option<String>,
            String,
            String,
        );
        let mut groups: BTreeMap<GroupKey, u32> = BTreeMap::new();
        for ep in svc.endpoints.iter().filter(|e| e.ready) {
            let network = if ep.network.is_empty() {
                &remote.network
            } else {
                &ep.network
            };
            if *network == self.network {
                out.push(EndpointConfig {
                    stale: remote.stale_since.is_some(),
                    ..ep.clone()
                });
            } else if remote.gateway.is_some() {
                let key = (
                    ep.labels.clone(),
                    ep.locality.clone(),
                    ep.service_account.clone(),
                    ep.cluster.clone(),
                    network.clone(),
                );
                *groups.entry(key).or_default() += ep.weight.unwrap_or(1);
            }
        }
        if let Some(gw) = remote.gateway {
            for ((labels, locality, service_account, cluster, network), weight) in groups {
                out.push(EndpointConfig {
                    tunnel: remote
                        .gateway_quic
                        .then_some(mesh_proto::model::Tunnel::Quic),
                    address: gw.ip(),
                    inbound_port: Some(gw.port()),
                    labels,
                    service_account,
                    cluster,
                    network,
                    locality,
                    weight: Some(weight),
                    ready: true,
                    stale: remote.stale_since.is_some(),
                });
            }
        }
        out
    }

    /// Whether `host` is cluster-local (MeshConfig `serviceSettings.clusterLocal`):
    /// neither exported nor merged with linked clusters.
    pub fn is_cluster_local(&self, host: &str) -> bool {
        self.cluster_local
            .iter()
            .any(|pattern| match pattern.strip_prefix('*') {
                Some(suffix) => host.ends_with(suffix),
                None => host == pattern,
            })
    }

    /// Marks what was received from `cluster` stale (its lease ran out, its gateway
    /// is healthy): kept, shown as stale. False when nothing is held from it.
    pub fn mark_remote_stale(&self, cluster: &str) -> bool {
        self.set_remote_stale(cluster, true)
    }

    /// Ends the stale state of what `cluster` sent (it speaks again). False when
    /// nothing is held from it (it was withdrawn meanwhile).
    pub fn mark_remote_fresh(&self, cluster: &str) -> bool {
        self.set_remote_stale(cluster, false)
    }

    fn set_remote_stale(&self, cluster: &str, stale: bool) -> bool {
        let mut inner = self.lock();
        let Some(r) = inner.remote.get_mut(cluster) else {
            return false;
        };
        if r.stale_since.is_some() != stale {
            r.stale_since = stale.then(std::time::SystemTime::now);
            let touched = r.services.keys().cloned().collect();
            self.recompile_services(&mut inner, touched);
            drop(inner);
            self.changed.send_modify(|_| {});
        }
        true
    }

    /// Since when what `cluster` sent is stale, if it is.
    pub fn remote_stale_since(&self, cluster: &str) -> Option<std::time::SystemTime> {
        self.lock().remote.get(cluster).and_then(|r| r.stale_since)
    }

    /// Replaces everything received from `cluster` (a full sync, or `None` to withdraw
    /// it: link deleted, or lease expired and its gateway unhealthy).
    pub fn set_remote(&self, cluster: &str, remote: Option<RemoteCluster>) {
        let mut inner = self.lock();
        let mut touched: Vec<(String, String)> = inner
            .remote
            .get(cluster)
            .map(|r| r.services.keys().cloned().collect())
            .unwrap_or_default();
        match remote {
            Some(r) => {
                touched.extend(r.services.keys().cloned());
                inner.remote.insert(cluster.to_owned(), r);
            }
            None => {
                inner.remote.remove(cluster);
            }
        }
        self.recompile_services(&mut inner, touched);
        drop(inner);
        self.changed.send_modify(|_| {});
    }

    /// Applies an incremental update from `cluster`: services added or changed, and
    /// services withdrawn. Ignored when nothing was received from it yet.
    pub fn update_remote(
        &self,
        cluster: &str,
        upserts: Vec<((String, String), ServiceConfig, Vec<String>)>,
        removed: Vec<(String, String)>,
    ) {
        let mut inner = self.lock();
        let Some(r) = inner.remote.get_mut(cluster) else {
            return;
        };
        let mut touched = removed.clone();
        for key in removed {
            r.services.remove(&key);
        }
        for (key, svc, export_to) in upserts {
            touched.push(key.clone());
            r.services.insert(key, (svc, export_to));
        }
        self.recompile_services(&mut inner, touched);
        drop(inner);
        self.changed.send_modify(|_| {});
    }

    /// The cluster links in force.
    pub fn links(&self) -> Vec<crate::links::Link> {
        self.lock().links.values().cloned().collect()
    }

    /// Services and endpoints held from `cluster`.
    pub fn remote_counts(&self, cluster: &str) -> (usize, usize) {
        self.lock().remote.get(cluster).map_or((0, 0), |r| {
            (
                r.services.len(),
                r.services.values().map(|(s, _)| s.endpoints.len()).sum(),
            )
        })
    }

    /// Clusters something was received from.
    pub fn remote_clusters(&self) -> Vec<String> {
        self.lock().remote.keys().cloned().collect()
    }

    fn compile_service(&self, inner: &Inner, svc: &Service) -> ServiceConfig {
        let (ns, name) = ns_name(&svc.metadata);
        let spec = svc.spec.clone().unwrap_or_default();
        let addresses = spec
            .cluster_ips
            .clone()
            .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect())
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let svc_ports = spec.ports.clone().unwrap_or_default();
        // Target ports by service port name, from the slices (which resolve named ports).
        let mut slice_ports: BTreeMap<String, u16> = BTreeMap::new();
        let mut endpoints = Vec::new();
        for slice in in_namespace(&inner.slices, &ns)
            .filter(|s| slice_service(s).is_some_and(|(_, n)| n == name))
        {
            for p in slice.ports.iter().flatten() {
                if let (Some(n), Some(port)) = (&p.name, p.port) {
                    slice_ports.insert(n.clone(), port as u16);
                } else if let Some(port) = p.port
                    && svc_ports.len() == 1
                {
                    slice_ports.insert(String::new(), port as u16);
                }
            }
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        inner
                            .pods
                            .get(&(ns.clone(), r.name.clone().unwrap_or_default()))
                    })
                    .map(|p| self.pod_workload(inner, p));
                for addr in &ep.addresses {
                    let Ok(address) = addr.parse() else { continue };
                    let mut locality = pod.as_ref().map(|w| w.locality.clone()).unwrap_or_default();
                    if locality.is_empty()
                        && let Some(zone) = &ep.zone
                    {
                        locality = format!("/{zone}");
                    }
                    endpoints.push(EndpointConfig {
                        tunnel: None,
                        stale: false,
                        address,
                        inbound_port: pod.as_ref().and_then(|w| w.inbound_port),
                        labels: pod.as_ref().map(|w| w.labels.clone()).unwrap_or_default(),
                        service_account: pod.as_ref().map(|w| w.service_account.clone()),
                        cluster: self.cluster.clone(),
                        network: pod
                            .as_ref()
                            .map(|w| w.network.clone())
                            .unwrap_or_else(|| self.network.clone()),
                        locality,
                        weight: None,
                        ready,
                    });
                }
            }
        }
        let selector = spec.selector.clone().unwrap_or_default();
        let mut entry_ports: BTreeMap<String, u16> = BTreeMap::new();
        if !selector.is_empty() {
            for we in in_namespace(&inner.entries, &ns) {
                if !selector
                    .iter()
                    .all(|(k, v)| we.spec.labels.get(k) == Some(v))
                {
                    continue;
                }
                let Ok(address) = we.spec.address.parse() else {
                    continue;
                };
                for (n, p) in &we.spec.ports {
                    entry_ports.insert(n.clone(), *p as u16);
                }
                let w = self.entry_workload(we);
                endpoints.push(EndpointConfig {
                    tunnel: None,
                    stale: false,
                    address,
                    inbound_port: w.inbound_port,
                    labels: w.labels,
                    service_account: Some(w.service_account),
                    cluster: self.cluster.clone(),
                    network: w.network,
                    locality: w.locality,
                    weight: we.spec.weight,
                    ready: true,
                });
            }
        }
        // As Istio does, endpoints carry their cluster and network as labels, so
        // subsets (and failoverPriority) can select on them.
        for e in &mut endpoints {
            e.labels
                .entry(CLUSTER_LABEL.into())
                .or_insert_with(|| e.cluster.clone());
            e.labels
                .entry(NETWORK_LABEL.into())
                .or_insert_with(|| e.network.clone());
        }
        endpoints.sort_by_key(|e| e.address);
        let ports = svc_ports
            .iter()
            .map(|p| {
                let pname = p.name.clone().unwrap_or_default();
                let target = slice_ports
                    .get(&pname)
                    .or_else(|| entry_ports.get(&pname))
                    .copied()
                    .or(match &p.target_port {
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                            Some(*n as u16)
                        }
                        _ => None,
                    });
                ServicePortConfig {
                    name: pname,
                    port: p.port as u16,
                    target_port: target,
                    app_protocol: p.app_protocol.clone(),
                }
            })
            .collect();
        ServiceConfig {
            name,
            namespace: ns,
            addresses,
            ports,
            endpoints,
            headless: spec.cluster_ip.as_deref() == Some("None"),
        }
    }

    /// The service `host` of a ServiceEntry that selects workloads: the entry's ports
    /// and addresses, and as endpoints the pods (by readiness) and WorkloadEntries of
    /// its namespace whose labels it selects, each at its sidecar.
    fn compile_entry(&self, inner: &Inner, entry: &SelectingEntry, host: &str) -> ServiceConfig {
        let ns = &entry.namespace;
        let pods = in_namespace(&inner.pods, ns)
            .map(|p| self.pod_workload(inner, p))
            .map(|w| (w, None));
        let entries =
            in_namespace(&inner.entries, ns).map(|we| (self.entry_workload(we), we.spec.weight));
        let mut endpoints: Vec<EndpointConfig> = pods
            .chain(entries)
            .filter(|(w, _)| entry.selects(ns, &w.labels))
            .filter_map(|(w, weight)| {
                let mut labels = w.labels;
                labels
                    .entry(CLUSTER_LABEL.into())
                    .or_insert_with(|| self.cluster.clone());
                labels
                    .entry(NETWORK_LABEL.into())
                    .or_insert_with(|| w.network.clone());
                Some(EndpointConfig {
                    address: w.ip?,
                    inbound_port: w.inbound_port,
                    labels,
                    service_account: Some(w.service_account),
                    cluster: self.cluster.clone(),
                    network: w.network,
                    locality: w.locality,
                    weight,
                    ready: w.ready,
                    tunnel: None,
                    stale: false,
                })
            })
            .collect();
        endpoints.sort_by_key(|e| e.address);
        let ports = entry
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                Some(ServicePortConfig {
                    name: if p.name.is_empty() {
                        format!("{}-{}", p.protocol.to_ascii_lowercase(), p.number)
                    } else {
                        p.name.clone()
                    },
                    port: u16::try_from(p.number).ok()?,
                    target_port: p.target_port.and_then(|t| u16::try_from(t).ok()),
                    app_protocol: Some(p.protocol.clone()),
                })
            })
            .collect();
        ServiceConfig {
            name: host.to_owned(),
            namespace: ns.clone(),
            addresses: entry
                .spec
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            ports,
            endpoints,
            headless: false,
        }
    }

    fn pod_workload(&self, inner: &Inner, pod: &Pod) -> Workload {
        let (namespace, name) = ns_name(&pod.metadata);
        let labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let locality = spec
            .node_name
            .as_ref()
            .and_then(|n| inner.nodes.get(n))
            .map(node_locality)
            .unwrap_or_default();
        Workload {
            name,
            namespace,
            ip: status.pod_ip.as_ref().and_then(|ip| ip.parse().ok()),
            network: labels
                .get("topology.istio.io/network")
                .cloned()
                .unwrap_or_else(|| self.network.clone()),
            labels,
            service_account: spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            locality,
            inbound_port: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INBOUND_PORT_ANNOTATION))
                .and_then(|p| p.parse().ok()),
            ready: status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
        }
    }

    fn entry_workload(&self, we: &WorkloadEntry) -> Workload {
        let (namespace, name) = ns_name(&we.metadata);
        Workload {
            name,
            namespace,
            ip: we.spec.address.parse().ok(),
            labels: we.spec.labels.clone(),
            service_account: we
                .spec
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            network: we
                .spec
                .network
                .clone()
                .unwrap_or_else(|| self.network.clone()),
            locality: we.spec.locality.clone().unwrap_or_default(),
            inbound_port: we
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INBOUND_PORT_ANNOTATION))
                .and_then(|p| p.parse().ok()),
            ready: true,
        }
    }

    /// The workload named `namespace/name` (a pod first, then a WorkloadEntry), or the
    /// one with address `ip` in that namespace.
    pub fn workload(&self, namespace: &str, name: &str, ip: Option<IpAddr>) -> Option<Workload> {
        let inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(p) = inner.pods.get(&key) {
            return Some(self.pod_workload(&inner, p));
        }
        if let Some(we) = inner.entries.get(&key) {
            return Some(self.entry_workload(we));
        }
        let ip = ip?;
        inner
            .pods
            .values()
            .map(|p| self.pod_workload(&inner, p))
            .chain(inner.entries.values().map(|e| self.entry_workload(e)))
            .find(|w| w.namespace == namespace && w.ip == Some(ip))
    }

    /// Labels of namespace `name`, if the registry knows it.
    pub fn namespace_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.lock()
            .namespaces
            .get(name)
            .map(|n| n.metadata.labels.clone().unwrap_or_default())
    }

    /// Every namespace the registry knows.
    pub fn namespace_names(&self) -> Vec<String> {
        self.lock().namespaces.keys().cloned().collect()
    }

    /// Every output, for a first push.
    pub fn all(&self) -> Delta {
        let inner = self.lock();
        inner.outputs.all(inner.generation)
    }

    /// The Sidecars in force, and a counter that moves whenever one changes.
    pub fn sidecars(&self) -> (u64, Arc<Vec<Arc<mesh_api::Resource>>>) {
        let inner = self.lock();
        (inner.sidecars_changed, inner.sidecars.clone())
    }

    /// Every exported output (local endpoints of services linked clusters may see).
    pub fn exports_all(&self) -> Delta {
        let inner = self.lock();
        inner.exports.all(inner.generation)
    }

    /// Exported outputs changed after generation `since`.
    pub fn exports_since(&self, since: u64) -> Delta {
        let inner = self.lock();
        inner.exports.since(since, inner.generation)
    }

    /// What changed after generation `since`.
    pub fn since(&self, since: u64) -> Delta {
        let inner = self.lock();
        inner.outputs.since(since, inner.generation)
    }

    /// Summary counts for `/debug` and metrics.
    pub fn summary(&self) -> serde_json::Value {
        let inner = self.lock();
        let endpoints: usize = inner
            .slices
            .values()
            .map(|s| s.endpoints.iter().map(|e| e.addresses.len()).sum::<usize>())
            .sum::<usize>()
            + inner.entries.len();
        serde_json::json!({
            "cluster": self.cluster,
            "network": self.network,
            "generation": inner.generation,
            "synced": self.expected_kinds.iter().all(|k| inner.synced.contains(k)),
            "services": inner.services.len(),
            "endpointSlices": inner.slices.len(),
            "endpoints": endpoints,
            "pods": inner.pods.len(),
            "nodes": inner.nodes.len(),
            "namespaces": inner.namespaces.len(),
            "workloadEntries": inner.entries.len(),
            "istio": inner.istio.keys().collect::<Vec<_>>(),
            "outputs": inner.outputs.outputs.len(),
            "exports": inner.exports.outputs.len(),
            "remoteClusters": inner.remote.iter().map(|(c, r)| serde_json::json!({
                "cluster": c,
                "network": r.network,
                "gateway": r.gateway.map(|g| g.to_string()),
                "services": r.services.len(),
                "endpoints": r.services.values().map(|(s, _)| s.endpoints.len()).sum::<usize>(),
                "staleSince": r.stale_since.map(mesh_identity::cert::rfc3339),
            })).collect::<Vec<_>>(),
            "errors": inner.errors.values().collect::<Vec<_>>(),
            "warnedFields": inner.warned,
            "fileErrors": inner.file_errors,
        })
    }

    /// The output named `name`.
    pub fn output(&self, name: &str) -> Option<Arc<Output>> {
        self.lock().outputs.outputs.get(name).cloned()
    }
}

fn refuse_link(inner: &mut Inner, key: &str, reason: String) -> InputError {
    let err = InputError {
        object: key.to_owned(),
        reason,
        last_good_in_force: inner.links.contains_key(key),
    };
    tracing::warn!(object = %err.object, reason = %err.reason, "cluster link ignored");
    inner.errors.insert(key.to_owned(), err.clone());
    err
}

fn refuse(inner: &mut Inner, key: &str, reason: String) -> InputError {
    let err = InputError {
        object: key.to_owned(),
        reason,
        last_good_in_force: inner.istio.contains_key(key),
    };
    tracing::warn!(object = %err.object, reason = %err.reason, last_good_in_force = err.last_good_in_force, "input refused");
    inner.errors.insert(key.to_owned(), err.clone());
    err
}

/// The certificate material of a Secret that is not a link: `None` when it holds no
/// certificate keys at all (not a credential), else the material or why it cannot be
/// used (a certificate without its key, say).
fn credential_of(
    secret: &k8s_openapi::api::core::v1::Secret,
) -> Option<Result<mesh_proto::model::Credential, String>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    const KEYS: [&str; 6] = ["tls.crt", "tls.key", "ca.crt", "cert", "key", "cacert"];
    let tls_type = secret.type_.as_deref() == Some("kubernetes.io/tls");
    if !tls_type && !KEYS.iter().any(|k| data.contains_key(*k)) {
        return None;
    }
    let (ns, name) = ns_name(&secret.metadata);
    Some(mesh_proto::model::Credential::from_data(&ns, &name, &data))
}

/// The `credentialName`s of a DestinationRule's `tls` settings (top level, per port,
/// per subset).
fn rule_credentials(rule: &serde_json::Value) -> Vec<String> {
    let mut policies = vec![&rule["spec"]["trafficPolicy"]];
    for subset in rule["spec"]["subsets"].as_array().into_iter().flatten() {
        policies.push(&subset["trafficPolicy"]);
    }
    let mut out = Vec::new();
    for p in policies {
        let ports = p["portLevelSettings"].as_array().into_iter().flatten();
        for tls in std::iter::once(&p["tls"]).chain(ports.map(|pl| &pl["tls"])) {
            if let Some(name) = tls["credentialName"].as_str() {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// The Secrets a Gateway's or a DestinationRule's `credentialName` names, as outputs
/// `Credential/NS/NAME` visible in their own namespace only; the others are not sent
/// anywhere.
fn refresh_credentials(inner: &mut Inner) {
    // Named by Gateways (for ingress gateways), by DestinationRules (for any proxy).
    let mut by_gateways = BTreeSet::new();
    let mut by_rules = BTreeSet::new();
    for (k, v) in &inner.istio {
        if k.starts_with("Gateway/") {
            by_gateways.extend(
                v["spec"]["servers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["tls"]["credentialName"].as_str().map(str::to_owned)),
            );
        } else if k.starts_with("DestinationRule/") {
            by_rules.extend(rule_credentials(v));
        }
    }
    let wanted: Vec<(String, Option<Output>)> = inner
        .credentials
        .values()
        .map(|c| {
            let name = format!(
                "{}/{}/{}",
                mesh_proto::model::KIND_CREDENTIAL,
                c.namespace,
                c.name
            );
            let for_rules = by_rules.contains(&c.name);
            let output = (for_rules || by_gateways.contains(&c.name)).then(|| Output {
                ingress_only: !for_rules,
                ..Output::new(
                    name.clone(),
                    mesh_proto::model::KIND_CREDENTIAL,
                    &c.namespace,
                    vec![".".into()],
                    serde_json::to_vec(c).unwrap_or_default(),
                )
            });
            (name, output)
        })
        .collect();
    let held: Vec<String> = inner
        .outputs
        .outputs
        .keys()
        .filter(|k| k.starts_with("Credential/"))
        .filter(|k| !wanted.iter().any(|(n, _)| n == *k))
        .cloned()
        .collect();
    let gen_ = inner.generation + 1;
    inner.generation = gen_;
    for name in held {
        set_output(inner, &name, None, gen_);
    }
    for (name, output) in wanted {
        set_output(inner, &name, output, gen_);
    }
}

fn set_output(inner: &mut Inner, name: &str, output: Option<Output>, gen_: u64) {
    if inner.outputs.set(name, output, gen_) {
        inner.pending_since.get_or_insert_with(Instant::now);
        if name.starts_with("Sidecar/") {
            let sidecars = inner
                .istio
                .iter()
                .filter(|(k, _)| k.starts_with("Sidecar/"))
                .filter_map(|(_, v)| mesh_api::from_value(v.clone()).ok())
                .map(Arc::new)
                .collect();
            inner.sidecars = Arc::new(sidecars);
            inner.sidecars_changed += 1;
        }
    }
}

fn slice_service(slice: &EndpointSlice) -> Option<(String, String)> {
    let (ns, _) = ns_name(&slice.metadata);
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|svc| (ns, svc.clone()))
}

/// Services whose endpoints involve the workload `key` (by slice targetRef or selector).
fn services_of_workload(inner: &Inner, key: &(String, String)) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for slice in in_namespace(&inner.slices, &key.0) {
        let refers = slice.endpoints.iter().any(|e| {
            e.target_ref
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(key.1.as_str()))
        });
        if refers {
            out.extend(slice_service(slice));
        }
    }
    // ServiceEntries that select the pod or WorkloadEntry by its labels.
    let labels = [
        inner.pods.get(key).and_then(|p| p.metadata.labels.clone()),
        inner.entries.get(key).map(|we| we.spec.labels.clone()),
    ];
    for labels in labels.iter().flatten() {
        for e in inner
            .selecting
            .values()
            .filter(|e| e.selects(&key.0, labels))
        {
            out.extend(e.keys());
        }
    }
    if let Some(we) = inner.entries.get(key) {
        for ((sns, sname), svc) in inner
            .services
            .range((key.0.clone(), String::new())..)
            .take_while(|((n, _), _)| *n == key.0)
        {
            let selector = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            if !selector.is_empty()
                && selector
                    .iter()
                    .all(|(k, v)| we.spec.labels.get(k) == Some(v))
            {
                out.push((sns.clone(), sname.clone()));
            }
        }
    }
    out
}

/// The values of a map keyed by `(namespace, name)` within one namespace.
fn in_namespace<'a, V>(
    map: &'a BTreeMap<(String, String), V>,
    ns: &str,
) -> impl Iterator<Item = &'a V> + 'a {
    let ns = ns.to_owned();
    map.range((ns.clone(), String::new())..)
        .take_while(move |((n, _), _)| *n == ns)
        .map(|(_, v)| v)
}

/// `region/zone/subzone` from a node's well-known labels.
fn node_locality(node: &Node) -> String {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let parts = [
        get("topology.kubernetes.io/region"),
        get("topology.kubernetes.io/zone"),
        get("topology.istio.io/subzone"),
    ];
    let joined = parts.join("/");
    joined.trim_end_matches('/').to_owned()
}
