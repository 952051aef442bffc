//! `meshctl analyze`: finds config that is valid YAML but will not do what its author
//! meant, before (or after) it reaches a cluster. Each finding names the kind,
//! namespace/name, field, what is wrong and how to fix it, with Istio's analyzer codes
//! where one exists.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use anyhow::Context as _;
use discovery::registry::Object;
use mesh_api::Resource;
use mesh_api::networking::{Destination, VirtualService};
use mesh_proxy::model::resolve_host;

/// `meshctl analyze` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct AnalyzeArgs {
    /// Files or directories of YAML to analyze (repeatable). Without any, the cluster
    /// of --kubeconfig is analyzed.
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    /// Analyze the live objects of this cluster (also the context for -f files: its
    /// Services and Namespaces count as known).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Analyze several clusters and the drift between them that breaks cross-cluster
    /// behaviour: each `--cluster NAME=KUBECONFIG`, or the testbed's clusters.
    #[arg(long)]
    all_clusters: bool,
    /// A cluster for --all-clusters, `NAME=KUBECONFIG` (repeatable).
    #[arg(long = "cluster", requires = "all_clusters")]
    clusters: Vec<String>,
    /// The testbed's directory (for --all-clusters without --cluster).
    #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
    dir: Option<PathBuf>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Severity {
    /// The config will not work as written.
    Error,
    /// The config works, probably not as meant.
    Warning,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// Error or warning.
    pub(crate) severity: Severity,
    /// Code (Istio's analyzer code where one exists).
    pub(crate) code: &'static str,
    /// `Kind namespace/name`.
    pub(crate) object: String,
    /// Field path.
    pub(crate) field: String,
    /// What is wrong.
    pub(crate) message: String,
    /// How to fix it.
    pub(crate) fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
        };
        write!(
            f,
            "{sev} [{}] ({}) {}: {}\n    fix: {}",
            self.code, self.object, self.field, self.message, self.fix
        )
    }
}

/// What is analyzed: the Istio objects and the Services and Namespaces they refer to.
#[derive(Debug, Default)]
pub(crate) struct Input {
    /// Istio resources (or why they could not be read).
    pub(crate) resources: Vec<Result<Resource, mesh_api::ResourceError>>,
    /// Fields accepted without effect: (`Kind namespace/name`, where and why).
    pub(crate) warned_fields: Vec<(String, mesh_api::coverage::FieldWarning)>,
    /// Service host names (FQDN).
    pub(crate) services: BTreeSet<String>,
    /// Known namespaces; `None` when nothing says which exist.
    pub(crate) namespaces: Option<BTreeSet<String>>,
    /// Service ports and visibility, by host (FQDN).
    pub(crate) service_info: BTreeMap<String, ServiceInfo>,
    /// Workload labels (Pods, WorkloadEntries) by namespace; `None` when no workload
    /// was given, so nothing can be said about selectors.
    pub(crate) workloads: Option<BTreeMap<String, Vec<BTreeMap<String, String>>>>,
    /// The cluster's CA roots as its discovery publishes them (the
    /// `istio-ca-root-cert` ConfigMap), when read from a cluster that has them.
    pub(crate) ca_roots: Option<String>,
    /// The cluster's link Secrets (`meshctl remote-secret`), or why one could not be
    /// read (`Secret NS/NAME: why`).
    pub(crate) links: Vec<Result<discovery::links::Link, String>>,
}

/// What analyze knows of one Service.
#[derive(Debug, Default, Clone)]
pub(crate) struct ServiceInfo {
    /// Its namespace.
    pub(crate) namespace: String,
    /// (port, name, appProtocol).
    pub(crate) ports: Vec<(u16, String, Option<String>)>,
    /// Its `networking.istio.io/exportTo` annotation (empty: everywhere).
    pub(crate) export_to: Vec<String>,
}

/// Whether an object in `owner_ns` exported to `export_to` is visible from `ns`
/// (Istio's exportTo: empty or `*` everywhere, `.` its own namespace, `~` nowhere).
fn visible(export_to: &[String], owner_ns: &str, ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == ns || (e == "." && owner_ns == ns))
}

impl Input {
    fn add_workload(&mut self, namespace: String, labels: BTreeMap<String, String>) {
        self.workloads
            .get_or_insert_with(BTreeMap::new)
            .entry(namespace)
            .or_default()
            .push(labels);
    }
}

impl Input {
    /// Adds one document (any kind; kinds analyze does not use are skipped).
    pub(crate) fn add_document(&mut self, doc: serde_json::Value) {
        let (api_version, kind) = mesh_api::type_meta(&doc);
        // WorkloadEntry is read by discovery's registry, not by mesh-api.
        let other_istio_kind = mesh_api::is_istio_group(api_version)
            && !mesh_api::is_istio_kind(api_version, kind)
            && kind != "WorkloadEntry";
        if (mesh_api::is_istio_kind(api_version, kind) && kind != "WorkloadEntry")
            || other_istio_kind
        {
            match mesh_api::from_value_with_warnings(doc) {
                Ok((r, warnings)) => {
                    let name = object(&r);
                    self.warned_fields
                        .extend(warnings.into_iter().map(|w| (name.clone(), w)));
                    self.resources.push(Ok(r));
                }
                Err(e) => self.resources.push(Err(e)),
            }
            return;
        }
        match discovery::files::object_from_value(doc) {
            Ok(Some(Object::Service(s))) => self.add_service(&s),
            Ok(Some(Object::Pod(p))) => {
                let ns = ns_of_meta(&p.metadata);
                self.add_workload(ns, p.metadata.labels.clone().unwrap_or_default());
            }
            Ok(Some(Object::WorkloadEntry(w))) => {
                let ns = ns_of_meta(&w.metadata);
                self.add_workload(ns, w.spec.labels.clone());
            }
            Ok(Some(Object::Namespace(n))) => {
                self.namespaces
                    .get_or_insert_with(BTreeSet::new)
                    .insert(n.metadata.name.clone().unwrap_or_default());
            }
            _ => {}
        }
    }
}

impl Input {
    fn add_service(&mut self, s: &k8s_openapi::api::core::v1::Service) {
        let ns = ns_of_meta(&s.metadata);
        let name = s.metadata.name.clone().unwrap_or_default();
        let host = resolve_host(&name, &ns);
        let ports = s
            .spec
            .iter()
            .flat_map(|spec| spec.ports.iter().flatten())
            .map(|p| {
                (
                    p.port as u16,
                    p.name.clone().unwrap_or_default(),
                    p.app_protocol.clone(),
                )
            })
            .collect();
        let export_to = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(discovery::registry::EXPORT_TO_ANNOTATION))
            .map(|v| v.split(',').map(|e| e.trim().to_owned()).collect())
            .unwrap_or_default();
        self.service_info.insert(
            host.clone(),
            ServiceInfo {
                namespace: ns,
                ports,
                export_to,
            },
        );
        self.services.insert(host);
    }
}

fn object(r: &Resource) -> String {
    format!("{} {}", r.kind(), r.key())
}

fn ns_of(r: &Resource) -> String {
    ns_of_meta(r.metadata())
}

fn ns_of_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// Runs every check.
pub(crate) fn analyze(input: &Input) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut resources = Vec::new();
    for r in &input.resources {
        match r {
            Ok(r) => resources.push(r),
            Err(e) => {
                for fe in &e.errors {
                    out.push(Finding {
                        severity: Severity::Error,
                        code: mesh_api::REFUSED_CODE,
                        object: e.object(),
                        field: fe.path.clone(),
                        message: fe.reason.clone(),
                        fix: mesh_api::REFUSED_FIX.into(),
                    });
                }
            }
        }
    }

    // Fields accepted without effect (the API coverage contract's warned fields).
    for (object, w) in &input.warned_fields {
        out.push(Finding {
            severity: Severity::Warning,
            code: mesh_api::coverage::WARNED_CODE,
            object: object.clone(),
            field: w.path.clone(),
            message: w.reason.clone(),
            fix: "remove the field, or see docs/api-coverage.md for what Isthmus does instead"
                .into(),
        });
    }

    // Hosts known: Services and ServiceEntry hosts.
    let mut hosts = input.services.clone();
    for r in &resources {
        if let Resource::ServiceEntry(se) = r {
            for h in &se.spec.hosts {
                hosts.insert(resolve_host(h, &ns_of(r)));
            }
        }
    }
    // Subsets per host (with the defining rule's namespace and exportTo), and
    // DestinationRules per (host, namespace).
    let mut subsets: Subsets = BTreeMap::new();
    let mut rules: BTreeMap<(String, String), Vec<&mesh_api::networking::DestinationRule>> =
        BTreeMap::new();
    for r in &resources {
        if let Resource::DestinationRule(dr) = r {
            let host = resolve_host(&dr.spec.host, &ns_of(r));
            subsets.entry(host.clone()).or_default().push((
                ns_of(r),
                dr.spec.export_to.clone(),
                dr.spec.subsets.iter().map(|s| s.name.clone()).collect(),
            ));
            rules.entry((host, ns_of(r))).or_default().push(dr);
        }
    }
    // TLS origination that verifies nothing.
    for r in &resources {
        if let Resource::DestinationRule(dr) = r {
            for (field, tls) in client_tls(&dr.spec) {
                if tls.insecure_skip_verify == Some(true) {
                    out.push(Finding {
                        severity: Severity::Warning,
                        code: "ISM0002",
                        object: object(r),
                        field: format!("{field}.insecureSkipVerify"),
                        message: "the server's certificate is not verified: anyone on the path can pose as the server".into(),
                        fix: "give caCertificates (or rely on the system roots) and remove insecureSkipVerify".into(),
                    });
                }
            }
        }
    }

    // Rules of one namespace for one host are merged as the proxies merge them; say
    // what a later rule loses and why.
    for ((host, ns), group) in &rules {
        let Some(merged) = mesh_api::precedence::merge_destination_rules(host, group, ns) else {
            continue;
        };
        for lost in &merged.shadowed {
            out.push(Finding {
                severity: Severity::Warning,
                code: "IST0174",
                object: format!("DestinationRule {}", lost.rule),
                field: lost.field.clone(),
                message: format!(
                    "not used: DestinationRule {} also defines it for {host} and wins because {}",
                    lost.kept_by, lost.why
                ),
                fix: "define each subset and the traffic policy in one DestinationRule per host"
                    .into(),
            });
        }
    }

    let mut vs_hosts: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
    for r in &resources {
        let Resource::VirtualService(vs) = r else {
            continue;
        };
        check_virtual_service(r, vs, &hosts, &input.service_info, &subsets, &mut out);
        let for_mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        if for_mesh {
            for h in &vs.spec.hosts {
                vs_hosts
                    .entry(resolve_host(h, &ns_of(r)))
                    .or_default()
                    .push(r);
            }
        }
    }
    for (host, mut list) in vs_hosts {
        if list.len() > 1 {
            list.sort_by(|a, b| mesh_api::precedence::older_first(a.metadata(), b.metadata()));
            let names: Vec<String> = list.iter().map(|r| r.key()).collect();
            out.push(Finding {
                severity: Severity::Error,
                code: "IST0109",
                object: format!("VirtualService {}", names.join(", ")),
                field: "spec.hosts".into(),
                message: format!(
                    "{} VirtualServices define host {host}; only {} is used, because {}; the others are ignored for this host",
                    names.len(),
                    names[0],
                    mesh_api::precedence::why_first(list[0].metadata(), list[1].metadata())
                ),
                fix: "merge their routes into one VirtualService for the host".into(),
            });
        }
    }

    check_peer_authentications(&resources, &mut out);
    if let Some(workloads) = &input.workloads {
        check_selectors(&resources, workloads, &mut out);
    }
    check_port_names(&input.service_info, &mut out);
    if let Some(known) = &input.namespaces {
        check_namespaces(&resources, known, &mut out);
    }
    out.sort_by(|a, b| (a.severity, &a.object, &a.field).cmp(&(b.severity, &b.object, &b.field)));
    out
}

/// An error that `r` refers to something that does not exist (Istio's IST0101).
/// Every `tls` of a DestinationRule with its field path.
fn client_tls(
    spec: &mesh_api::networking::DestinationRuleSpec,
) -> Vec<(String, &mesh_api::networking::ClientTlsSettings)> {
    fn policy<'a>(
        out: &mut Vec<(String, &'a mesh_api::networking::ClientTlsSettings)>,
        at: String,
        p: Option<&'a mesh_api::networking::TrafficPolicy>,
    ) {
        let Some(p) = p else { return };
        if let Some(t) = &p.tls {
            out.push((format!("{at}.tls"), t));
        }
        for (i, pl) in p.port_level_settings.iter().enumerate() {
            if let Some(t) = &pl.tls {
                out.push((format!("{at}.portLevelSettings[{i}].tls"), t));
            }
        }
    }
    let mut out = Vec::new();
    policy(
        &mut out,
        "spec.trafficPolicy".into(),
        spec.traffic_policy.as_ref(),
    );
    for (i, s) in spec.subsets.iter().enumerate() {
        policy(
            &mut out,
            format!("spec.subsets[{i}].trafficPolicy"),
            s.traffic_policy.as_ref(),
        );
    }
    out
}

fn not_found(r: &Resource, field: String, message: String, fix: String) -> Finding {
    Finding {
        severity: Severity::Error,
        code: "IST0101",
        object: object(r),
        field,
        message,
        fix,
    }
}

/// Subsets defined per host: (rule namespace, its exportTo, subset names) per rule.
type Subsets = BTreeMap<String, Vec<(String, Vec<String>, BTreeSet<String>)>>;

fn check_virtual_service(
    r: &Resource,
    vs: &VirtualService,
    hosts: &BTreeSet<String>,
    services: &BTreeMap<String, ServiceInfo>,
    subsets: &Subsets,
    out: &mut Vec<Finding>,
) {
    let ns = ns_of(r);
    for (i, h) in vs.spec.hosts.iter().enumerate() {
        let fqdn = resolve_host(h, &ns);
        if !h.contains('*') && !hosts.contains(&fqdn) {
            out.push(Finding {
                severity: Severity::Warning,
                code: "IST0101",
                object: object(r),
                field: format!("spec.hosts[{i}]"),
                message: format!("host {h:?} ({fqdn}) is not a known Service or ServiceEntry"),
                fix: "create the Service (or a ServiceEntry), or fix the host name".into(),
            });
        }
    }
    let check_destination = |field: String, d: &Destination, out: &mut Vec<Finding>| {
        let fqdn = resolve_host(&d.host, &ns);
        if !hosts.contains(&fqdn) {
            out.push(not_found(
                r,
                format!("{field}.destination.host"),
                format!(
                    "destination {:?} ({fqdn}) is not a known Service or ServiceEntry; requests routed there fail with 503 (UH)",
                    d.host
                ),
                "create the Service, or route to an existing one".into(),
            ));
            return;
        }
        if let Some(info) = services.get(&fqdn) {
            if !visible(&info.export_to, &info.namespace, &ns) {
                out.push(not_found(
                    r,
                    format!("{field}.destination.host"),
                    format!(
                        "service {fqdn} is not exported to namespace {ns} (its networking.istio.io/exportTo is {:?}); proxies there do not know it",
                        info.export_to.join(",")
                    ),
                    format!("add {ns} to the Service's exportTo annotation, or route elsewhere"),
                ));
                return;
            }
            if let Some(port) = &d.port
                && !info
                    .ports
                    .iter()
                    .any(|(p, _, _)| u32::from(*p) == port.number)
            {
                let ports: Vec<String> = info.ports.iter().map(|(p, _, _)| p.to_string()).collect();
                out.push(not_found(
                    r,
                    format!("{field}.destination.port.number"),
                    format!(
                        "port {} is not a port of {fqdn} (its ports: {}); requests routed there fail",
                        port.number,
                        ports.join(", ")
                    ),
                    "use one of the Service's ports".into(),
                ));
            }
        }
        if let Some(subset) = &d.subset {
            let rules = subsets.get(&fqdn).map(Vec::as_slice).unwrap_or_default();
            let visible_here: BTreeSet<&String> = rules
                .iter()
                .filter(|(rule_ns, export_to, _)| visible(export_to, rule_ns, &ns))
                .flat_map(|(_, _, names)| names)
                .collect();
            let hidden = rules.iter().any(|(_, _, names)| names.contains(subset));
            if !visible_here.contains(subset) {
                let known = visible_here
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                if hidden {
                    out.push(not_found(
                        r,
                        format!("{field}.destination.subset"),
                        format!(
                            "subset {subset:?} of {fqdn} is defined by a DestinationRule not exported to namespace {ns}"
                        ),
                        format!("export that DestinationRule to {ns} (exportTo), or define the subset in one visible here"),
                    ));
                    return;
                }
                out.push(not_found(
                    r,
                    format!("{field}.destination.subset"),
                    format!("subset {subset:?} is not defined by any DestinationRule for {fqdn}"),
                    if known.is_empty() {
                        format!("add a DestinationRule for {fqdn} with subset {subset}")
                    } else {
                        format!(
                            "add subset {subset} to the DestinationRule, or use one of: {known}"
                        )
                    },
                ));
            }
        }
    };
    let check_weights = |field: String, weights: Vec<Option<i32>>, out: &mut Vec<Finding>| {
        if weights.len() > 1 && weights.iter().any(Option::is_some) {
            let sum: i32 = weights.iter().map(|w| w.unwrap_or(0)).sum();
            if sum != 100 {
                out.push(Finding {
                    severity: Severity::Warning,
                    code: "IST0150",
                    object: object(r),
                    field: format!("{field}.route[*].weight"),
                    message: format!(
                        "weights sum to {sum}, not 100; they are applied as relative shares"
                    ),
                    fix: "make the weights add up to 100".into(),
                });
            }
        }
    };
    // (field prefix, destinations with their weights, whether weights apply).
    type Routes<'a> = Vec<(String, Vec<(&'a Destination, Option<i32>)>, bool)>;
    let routes: Routes<'_> = vs
        .spec
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let d = r.route.iter().map(|d| (&d.destination, d.weight)).collect();
            (format!("spec.http[{i}]"), d, true)
        })
        .chain(vs.spec.tcp.iter().enumerate().map(|(i, r)| {
            let d = r.route.iter().map(|d| (&d.destination, d.weight)).collect();
            (format!("spec.tcp[{i}]"), d, true)
        }))
        .chain(vs.spec.tls.iter().enumerate().map(|(i, r)| {
            let d = r.route.iter().map(|d| (&d.destination, d.weight)).collect();
            (format!("spec.tls[{i}]"), d, false)
        }))
        .collect();
    for (prefix, destinations, weighted) in routes {
        for (j, (d, _)) in destinations.iter().enumerate() {
            check_destination(format!("{prefix}.route[{j}]"), d, out);
        }
        if weighted {
            check_weights(prefix, destinations.iter().map(|(_, w)| *w).collect(), out);
        }
    }
}

fn check_peer_authentications(resources: &[&Resource], out: &mut Vec<Finding>) {
    // Namespace → selector (empty: namespace-wide) → policies.
    let mut by_scope: BTreeMap<(String, BTreeMap<String, String>), Vec<&Resource>> =
        BTreeMap::new();
    for r in resources {
        if let Resource::PeerAuthentication(pa) = r {
            let selector = pa
                .spec
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default();
            by_scope.entry((ns_of(r), selector)).or_default().push(r);
        }
    }
    for ((ns, selector), mut list) in by_scope {
        if list.len() < 2 {
            continue;
        }
        list.sort_by(|a, b| mesh_api::precedence::older_first(a.metadata(), b.metadata()));
        let names: Vec<String> = list.iter().map(|r| r.key()).collect();
        let scope = if !selector.is_empty() {
            format!("workloads matching {selector:?} in {ns}")
        } else if ns == discovery::registry::ROOT_NAMESPACE {
            "the whole mesh".to_owned()
        } else {
            format!("namespace {ns}")
        };
        out.push(Finding {
            severity: Severity::Error,
            code: "IST0113",
            object: format!("PeerAuthentication {}", names.join(", ")),
            field: "spec.selector".into(),
            message: format!(
                "{} PeerAuthentications apply to {scope}; only {} applies, because {}",
                names.len(),
                names[0],
                mesh_api::precedence::why_first(list[0].metadata(), list[1].metadata())
            ),
            fix: "keep one PeerAuthentication per scope (use portLevelMtls for per-port modes)"
                .into(),
        });
    }
}

/// Policies whose selector matches no workload have no effect (Istio's IST0127).
fn check_selectors(
    resources: &[&Resource],
    workloads: &BTreeMap<String, Vec<BTreeMap<String, String>>>,
    out: &mut Vec<Finding>,
) {
    for r in resources {
        let selector = match r {
            Resource::AuthorizationPolicy(p) => p.spec.selector.as_ref(),
            Resource::PeerAuthentication(p) => p.spec.selector.as_ref(),
            _ => continue,
        };
        let Some(labels) = selector.map(|s| &s.match_labels).filter(|l| !l.is_empty()) else {
            continue;
        };
        let ns = ns_of(r);
        // A selector in the root namespace applies to workloads of every namespace.
        let candidates: Vec<&BTreeMap<String, String>> = workloads
            .iter()
            .filter(|(w_ns, _)| ns == mesh_api::precedence::ROOT_NAMESPACE || **w_ns == ns)
            .flat_map(|(_, list)| list)
            .collect();
        let matches = candidates
            .iter()
            .any(|w| labels.iter().all(|(k, v)| w.get(k) == Some(v)));
        if !matches {
            out.push(Finding {
                severity: Severity::Warning,
                code: "IST0127",
                object: object(r),
                field: "spec.selector.matchLabels".into(),
                message: format!(
                    "selects no workload in namespace {ns} ({} known there); the policy has no effect",
                    candidates.len()
                ),
                fix: "fix the labels to match the workload's pod labels, or remove the policy"
                    .into(),
            });
        }
    }
}

/// Service ports whose name does not say the protocol (Istio's IST0118): the
/// sidecar then sniffs every connection.
fn check_port_names(services: &BTreeMap<String, ServiceInfo>, out: &mut Vec<Finding>) {
    use mesh_proxy::model::Protocol;
    for (host, info) in services {
        for (i, (port, name, app_protocol)) in info.ports.iter().enumerate() {
            if Protocol::from_port(name, app_protocol.as_deref()) != Protocol::Unknown {
                continue;
            }
            let short = host.split('.').next().unwrap_or_default();
            out.push(Finding {
                severity: Severity::Warning,
                code: "IST0118",
                object: format!("Service {}/{short}", info.namespace),
                field: format!("spec.ports[{i}].name"),
                message: format!(
                    "port {port} ({name:?}) names no protocol: the sidecar sniffs each connection, and a protocol where the server speaks first waits 100 ms before it is treated as TCP"
                ),
                fix: "name it <protocol>[-suffix] (http-, http2-, grpc-, tcp-, tls-, https-, mongo-, mysql-, redis-) or set appProtocol".into(),
            });
        }
    }
}

fn check_namespaces(resources: &[&Resource], known: &BTreeSet<String>, out: &mut Vec<Finding>) {
    let unknown = |ns: &str| !known.contains(ns);
    for r in resources {
        let ns = ns_of(r);
        if unknown(&ns) {
            out.push(Finding {
                severity: Severity::Error,
                code: "IST0102",
                object: object(r),
                field: "metadata.namespace".into(),
                message: format!("namespace {ns:?} does not exist"),
                fix: format!("create namespace {ns} or move the object"),
            });
        }
        let export_to = match r {
            Resource::VirtualService(x) => &x.spec.export_to,
            Resource::DestinationRule(x) => &x.spec.export_to,
            Resource::ServiceEntry(x) => &x.spec.export_to,
            _ => continue,
        };
        for (i, e) in export_to.iter().enumerate() {
            if !matches!(e.as_str(), "*" | "." | "~") && unknown(e) {
                out.push(Finding {
                    severity: Severity::Warning,
                    code: "IST0102",
                    object: object(r),
                    field: format!("spec.exportTo[{i}]"),
                    message: format!("namespace {e:?} does not exist"),
                    fix: "fix the namespace name, or create it".into(),
                });
            }
        }
    }
    for r in resources {
        if let Resource::AuthorizationPolicy(ap) = r {
            for (i, rule) in ap.spec.rules.iter().enumerate() {
                for (j, from) in rule.from.iter().enumerate() {
                    for (k, ns) in from.source.namespaces.iter().enumerate() {
                        if !ns.contains('*') && unknown(ns) {
                            out.push(Finding {
                                severity: Severity::Warning,
                                code: "IST0102",
                                object: object(r),
                                field: format!("spec.rules[{i}].from[{j}].source.namespaces[{k}]"),
                                message: format!(
                                    "namespace {ns:?} does not exist; the rule never matches it"
                                ),
                                fix: "fix the namespace name, or create it".into(),
                            });
                        }
                    }
                }
            }
        }
    }
}

async fn from_cluster(
    path: &std::path::Path,
    input: &mut Input,
    istio: bool,
) -> anyhow::Result<()> {
    let client = discovery::kube_client(path).await?;
    let lp = kube::api::ListParams::default();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    let set = input.namespaces.get_or_insert_with(BTreeSet::new);
    for n in namespaces.list(&lp).await.context("listing Namespaces")? {
        set.insert(n.metadata.name.unwrap_or_default());
    }
    let services: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::all(client.clone());
    for s in services.list(&lp).await.context("listing Services")? {
        input.add_service(&s);
    }
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client.clone());
    for p in pods.list(&lp).await.context("listing Pods")? {
        let ns = ns_of_meta(&p.metadata);
        input.add_workload(ns, p.metadata.labels.unwrap_or_default());
    }
    let gvk = kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "WorkloadEntry");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "workloadentries");
    let entries: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), &ar);
    // Without the CRD there are no WorkloadEntries.
    for e in entries.list(&lp).await.map(|l| l.items).unwrap_or_default() {
        let labels: BTreeMap<String, String> =
            serde_json::from_value(e.data["spec"]["labels"].clone()).unwrap_or_default();
        input.add_workload(ns_of_meta(&e.metadata), labels);
    }
    if istio {
        // How this cluster is linked to others, and the roots it signs under.
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client.clone(), discovery::NAMESPACE);
        let linked = kube::api::ListParams::default()
            .labels(&format!("{}=true", discovery::links::LINK_LABEL));
        for secret in secrets
            .list(&linked)
            .await
            .with_context(|| format!("listing link Secrets in {}", discovery::NAMESPACE))?
        {
            let name = format!(
                "Secret {}/{}",
                discovery::NAMESPACE,
                secret.metadata.name.as_deref().unwrap_or_default()
            );
            match discovery::links::Link::from_secret(&secret) {
                Ok(Some(link)) => input.links.push(Ok(link)),
                Ok(None) => {}
                Err(e) => input.links.push(Err(format!("{name}: {e}"))),
            }
        }
        let maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), discovery::NAMESPACE);
        input.ca_roots = maps
            .get_opt(discovery::inject::ROOT_CONFIGMAP)
            .await
            .context("reading the CA root ConfigMap")?
            .and_then(|m| m.data?.remove("root-cert.pem"));
        for (group, kind, plural) in discovery::kube_registry::ISTIO_KINDS {
            let gvk = kube::api::GroupVersionKind::gvk(group, "v1", kind);
            let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
            let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), &ar);
            for o in api
                .list(&lp)
                .await
                .with_context(|| format!("listing {kind}"))?
            {
                let mut v = serde_json::to_value(&o)?;
                v["apiVersion"] = format!("{group}/v1").into();
                v["kind"] = (*kind).into();
                input.add_document(v);
            }
        }
    }
    Ok(())
}

fn read_path(path: &PathBuf, input: &mut Input) -> anyhow::Result<()> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        v.sort();
        v
    } else {
        vec![path.clone()]
    };
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let docs = mesh_api::split_documents(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        for doc in docs {
            input.add_document(doc);
        }
    }
    Ok(())
}

/// `meshctl analyze --all-clusters`: each cluster's own findings, then the drift
/// between them.
fn run_all_clusters(args: &AnalyzeArgs) -> anyhow::Result<()> {
    let mut kubeconfigs: Vec<(String, PathBuf)> = Vec::new();
    for c in &args.clusters {
        let (name, path) = c
            .split_once('=')
            .with_context(|| format!("--cluster {c:?}: write NAME=KUBECONFIG"))?;
        kubeconfigs.push((name.to_owned(), PathBuf::from(path)));
    }
    if kubeconfigs.is_empty() {
        kubeconfigs = crate::bed::kubeconfigs(args.dir.clone())
            .context("give each cluster with --cluster NAME=KUBECONFIG")?;
    }
    anyhow::ensure!(
        kubeconfigs.len() >= 2,
        "--all-clusters compares clusters: give at least two"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut clusters = Vec::new();
    for (name, path) in kubeconfigs {
        let mut input = Input::default();
        rt.block_on(from_cluster(&path, &mut input, true))
            .with_context(|| format!("reading cluster {name}"))?;
        clusters.push((name, input));
    }
    let mut findings: Vec<(String, Finding)> = Vec::new();
    for (name, input) in &clusters {
        findings.extend(analyze(input).into_iter().map(|f| (name.clone(), f)));
    }
    let names: Vec<&str> = clusters.iter().map(|(n, _)| n.as_str()).collect();
    let across = names.join("+");
    findings.extend(
        crate::drift::drift(&clusters)
            .into_iter()
            .map(|f| (across.clone(), f)),
    );
    for (cluster, f) in &findings {
        println!("[{cluster}] {f}");
    }
    let errors = findings
        .iter()
        .filter(|(_, f)| f.severity == Severity::Error)
        .count();
    let links: usize = clusters.iter().map(|(_, i)| i.links.len()).sum();
    println!(
        "Compared {}: Services, DestinationRules, VirtualServices, {links} link(s) checked against the roots each cluster signs under.",
        names.join(", ")
    );
    if findings.is_empty() {
        println!(
            "✔ No problems found in {} and no drift between them.",
            names.join(", ")
        );
    }
    if errors > 0 {
        anyhow::bail!("{errors} error(s), {} warning(s)", findings.len() - errors);
    }
    Ok(())
}

/// Runs `meshctl analyze`.
pub(crate) fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    if args.all_clusters {
        return run_all_clusters(&args);
    }
    let mut input = Input::default();
    for path in &args.files {
        read_path(path, &mut input)?;
    }
    if let Some(kubeconfig) = &args.kubeconfig {
        let live_istio = args.files.is_empty();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(from_cluster(kubeconfig, &mut input, live_istio))?;
    } else if args.files.is_empty() {
        anyhow::bail!("give -f FILE|DIR, or --kubeconfig to analyze a cluster");
    }
    let findings = analyze(&input);
    for f in &findings {
        println!("{f}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    if findings.is_empty() {
        println!(
            "✔ No problems found ({} Istio objects, {} services).",
            input.resources.len(),
            input.services.len()
        );
    }
    if errors > 0 {
        anyhow::bail!("{errors} error(s), {warnings} warning(s)");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What analyze reads from `yaml`.
    pub(crate) fn input(yaml: &str) -> Input {
        let mut input = Input::default();
        for doc in mesh_api::split_documents(yaml).unwrap() {
            input.add_document(doc);
        }
        input
    }

    const BASE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

    fn codes(findings: &[Finding]) -> Vec<(&'static str, String)> {
        findings.iter().map(|f| (f.code, f.field.clone())).collect()
    }

    #[test]
    fn fields_without_effect_are_warned_with_their_path() {
        let yaml = format!(
            "{BASE}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  trafficPolicy: {{outlierDetection: {{consecutive5xxErrors: 3, interval: 5s}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
"
        );
        let found: Vec<_> = analyze(&input(&yaml))
            .into_iter()
            .filter(|f| f.code == "ISM0001")
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].severity, found[0].code, found[0].field.as_str()),
            (
                Severity::Warning,
                "ISM0001",
                "spec.trafficPolicy.outlierDetection.interval"
            )
        );
        assert!(
            found[0].message.contains("has no effect"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn tls_origination_that_verifies_nothing_is_warned() {
        let findings = analyze(&input(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: SIMPLE}
    portLevelSettings: [{port: {number: 443}, tls: {mode: SIMPLE, insecureSkipVerify: true}}]
",
        ));
        assert_eq!(
            codes(&findings),
            [(
                "ISM0002",
                "spec.trafficPolicy.portLevelSettings[0].tls.insecureSkipVerify".to_owned()
            )]
        );
    }

    #[test]
    fn a_correct_config_has_no_findings() {
        let yaml = format!(
            "{BASE}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}
    - {{destination: {{host: reviews.shop.svc.cluster.local, subset: v2}}, weight: 10}}
"
        );
        assert_eq!(analyze(&input(&yaml)), vec![]);
    }

    #[test]
    fn unknown_hosts_subsets_and_bad_weights_are_found_with_their_fields() {
        let yaml = format!(
            "{BASE}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v3}}, weight: 50}}
    - {{destination: {{host: ratings}}, weight: 30}}
"
        );
        let findings = analyze(&input(&yaml));
        assert_eq!(
            codes(&findings),
            vec![
                ("IST0101", "spec.http[0].route[0].destination.subset".into()),
                ("IST0101", "spec.http[0].route[1].destination.host".into()),
                ("IST0150", "spec.http[0].route[*].weight".into()),
            ]
        );
        assert_eq!(findings[0].object, "VirtualService shop/reviews");
        assert!(findings[0].fix.contains("v1, v2"), "{}", findings[0]);
        assert!(
            findings[1]
                .message
                .contains("ratings.shop.svc.cluster.local")
        );
        assert!(findings[2].message.contains("80"));
    }

    #[test]
    fn conflicts_and_unknown_namespaces_are_found() {
        let yaml = format!(
            "{BASE}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: a, namespace: shop}}
spec: {{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews}}}}]}}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: b, namespace: shop}}
spec: {{hosts: [reviews.shop.svc.cluster.local], http: [{{route: [{{destination: {{host: reviews}}}}]}}], exportTo: [billing]}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: permissive, namespace: shop}}
spec: {{mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: shop}}
spec: {{rules: [{{from: [{{source: {{namespaces: [frontend]}}}}]}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: other, namespace: ghost}}
spec: {{host: reviews.shop.svc.cluster.local}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews-canary, namespace: shop, creationTimestamp: \"2026-03-01T00:00:00Z\"}}
spec: {{host: reviews, subsets: [{{name: v2, labels: {{version: canary}}}}, {{name: v3, labels: {{version: v3}}}}]}}
"
        );
        let findings = analyze(&input(&yaml));
        let got = codes(&findings);
        for want in [
            ("IST0109", "spec.hosts".to_owned()),
            ("IST0113", "spec.selector".to_owned()),
            ("IST0174", "spec.subsets[0]".to_owned()),
            ("IST0102", "metadata.namespace".to_owned()),
            ("IST0102", "spec.exportTo[0]".to_owned()),
            (
                "IST0102",
                "spec.rules[0].from[0].source.namespaces[0]".to_owned(),
            ),
        ] {
            assert!(got.contains(&want), "missing {want:?} in {got:?}");
        }
        let conflict = findings.iter().find(|f| f.code == "IST0109").unwrap();
        assert_eq!(conflict.object, "VirtualService shop/a, shop/b");
        assert!(
            conflict
                .message
                .contains("only shop/a is used, because it sorts first by name"),
            "{conflict}"
        );
        let pa = findings.iter().find(|f| f.code == "IST0113").unwrap();
        assert!(pa.message.contains("only shop/permissive applies"), "{pa}");
        // Only what the newer rule loses is reported: its v3 merges in.
        let lost: Vec<_> = findings.iter().filter(|f| f.code == "IST0174").collect();
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].object, "DestinationRule shop/reviews-canary");
        assert!(
            lost[0]
                .message
                .contains("DestinationRule shop/reviews also defines it"),
            "{}",
            lost[0]
        );
    }

    #[test]
    fn visibility_ports_selectors_and_port_names_are_checked() {
        let yaml = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{name: http, port: 9080}, {name: admin, port: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: billing, namespace: pay, annotations: {networking.istio.io/exportTo: \".\"}}
spec: {ports: [{name: grpc, port: 7070}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews, exportTo: [\".\"], subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {containers: [{name: app, image: reviews}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: web}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: reviews.shop.svc.cluster.local, subset: v1, port: {number: 9080}}}]
  - route: [{destination: {host: reviews.shop.svc.cluster.local, port: {number: 8080}}}]
  - route: [{destination: {host: billing.pay.svc.cluster.local}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec: {selector: {matchLabels: {app: reveiws}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: shop}
spec: {selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}
";
        let findings = analyze(&input(yaml));
        let got = codes(&findings);
        let want: Vec<(&str, String)> = vec![
            ("IST0101", "spec.http[0].route[0].destination.subset".into()),
            (
                "IST0101",
                "spec.http[1].route[0].destination.port.number".into(),
            ),
            ("IST0101", "spec.http[2].route[0].destination.host".into()),
            ("IST0101", "spec.hosts[0]".into()),
            ("IST0118", "spec.ports[1].name".into()),
            ("IST0127", "spec.selector.matchLabels".into()),
        ];
        for w in &want {
            assert!(got.contains(w), "missing {w:?} in {findings:#?}");
        }
        assert_eq!(got.len(), want.len(), "{findings:#?}");
        let find = |field: &str| findings.iter().find(|f| f.field == field).unwrap();
        assert!(
            find("spec.http[0].route[0].destination.subset")
                .message
                .contains("not exported to namespace web")
        );
        assert!(
            find("spec.http[1].route[0].destination.port.number")
                .message
                .contains("its ports: 9080, 9090")
        );
        assert!(
            find("spec.http[2].route[0].destination.host")
                .message
                .contains("not exported to namespace web")
        );
        let unused = find("spec.selector.matchLabels");
        assert_eq!(unused.object, "AuthorizationPolicy shop/typo");
        assert_eq!(find("spec.ports[1].name").object, "Service shop/reviews");
    }

    #[test]
    fn schema_errors_are_findings() {
        let findings = analyze(&input(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [x], http: [{rout: []}]}\n",
        ));
        assert_eq!(findings[0].code, "IST0106");
        assert_eq!(findings[0].object, "VirtualService shop/x");
        assert!(findings[0].field.contains("rout"), "{}", findings[0]);
    }

    #[test]
    fn refusals_print_what_the_webhook_answers() {
        let doc = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [x], http: [{match: [{uri: {regex: \"(\"}}], route: [{destination: {host: x}, headers: {request: {set: {a: b}}}}]}]}\n";
        let findings = analyze(&input(doc));
        let printed: Vec<String> = findings.iter().map(ToString::to_string).collect();
        let refused = mesh_api::parse_resource(doc).unwrap_err();
        assert_eq!(refused.errors.len(), 2, "{refused}");
        assert_eq!(printed.join("\n"), refused.report());
    }

    #[test]
    fn istio_kinds_isthmus_does_not_read_are_refused_by_name() {
        let findings = analyze(&input(
            "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: default, namespace: shop}\nspec: {configPatches: []}\n",
        ));
        assert_eq!(codes(&findings), vec![("IST0106", "kind".into())]);
        assert!(
            findings[0]
                .message
                .contains("\"EnvoyFilter\" is not a kind Isthmus reads"),
            "{}",
            findings[0]
        );
    }
}
