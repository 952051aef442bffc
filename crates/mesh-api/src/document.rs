//! Reading Istio documents as users write them (YAML or JSON, one or many per file) into
//! typed resources, with errors that name the object, the field and the reason.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService};
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::validate::{FieldError, Validator};

/// API group of the traffic kinds.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// API group of the security kinds.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// Versions of `networking.istio.io` that are read; all have the same schema.
pub const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
/// Versions of `security.istio.io` that are read; all have the same schema.
pub const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];

/// The Istio kinds Isthmus reads, with their group.
pub const KINDS: &[(&str, &str)] = &[
    ("VirtualService", NETWORKING_GROUP),
    ("DestinationRule", NETWORKING_GROUP),
    ("Gateway", NETWORKING_GROUP),
    ("ServiceEntry", NETWORKING_GROUP),
    ("Sidecar", NETWORKING_GROUP),
    ("PeerAuthentication", SECURITY_GROUP),
    ("AuthorizationPolicy", SECURITY_GROUP),
    ("RequestAuthentication", SECURITY_GROUP),
];

/// A validated Istio resource of any supported kind (boxed: specs differ widely in size).
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// networking.istio.io VirtualService
    VirtualService(Box<VirtualService>),
    /// networking.istio.io DestinationRule
    DestinationRule(Box<DestinationRule>),
    /// networking.istio.io Gateway
    Gateway(Box<Gateway>),
    /// networking.istio.io ServiceEntry
    ServiceEntry(Box<ServiceEntry>),
    /// networking.istio.io Sidecar
    Sidecar(Box<Sidecar>),
    /// security.istio.io PeerAuthentication
    PeerAuthentication(Box<PeerAuthentication>),
    /// security.istio.io AuthorizationPolicy
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    /// security.istio.io RequestAuthentication
    RequestAuthentication(Box<RequestAuthentication>),
}

impl Resource {
    /// The kind, e.g. `VirtualService`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::VirtualService(_) => "VirtualService",
            Self::DestinationRule(_) => "DestinationRule",
            Self::Gateway(_) => "Gateway",
            Self::ServiceEntry(_) => "ServiceEntry",
            Self::Sidecar(_) => "Sidecar",
            Self::PeerAuthentication(_) => "PeerAuthentication",
            Self::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Self::RequestAuthentication(_) => "RequestAuthentication",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::VirtualService(r) => &r.metadata,
            Self::DestinationRule(r) => &r.metadata,
            Self::Gateway(r) => &r.metadata,
            Self::ServiceEntry(r) => &r.metadata,
            Self::Sidecar(r) => &r.metadata,
            Self::PeerAuthentication(r) => &r.metadata,
            Self::AuthorizationPolicy(r) => &r.metadata,
            Self::RequestAuthentication(r) => &r.metadata,
        }
    }

    /// The object as JSON (apiVersion `v1` of its group), as `from_value` reads it.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Self::VirtualService(r) => serde_json::to_value(r),
            Self::DestinationRule(r) => serde_json::to_value(r),
            Self::Gateway(r) => serde_json::to_value(r),
            Self::ServiceEntry(r) => serde_json::to_value(r),
            Self::Sidecar(r) => serde_json::to_value(r),
            Self::PeerAuthentication(r) => serde_json::to_value(r),
            Self::AuthorizationPolicy(r) => serde_json::to_value(r),
            Self::RequestAuthentication(r) => serde_json::to_value(r),
        }
    }

    /// `namespace/name` (or just the name when no namespace is set).
    pub fn key(&self) -> String {
        let m = self.metadata();
        object_key(m.namespace.as_deref(), m.name.as_deref())
    }

    /// Semantic checks beyond the schema; empty when the resource is valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut v = Validator::for_spec();
        match self {
            Self::VirtualService(r) => r.spec.validate(&mut v),
            Self::DestinationRule(r) => r.spec.validate(&mut v),
            Self::Gateway(r) => r.spec.validate(&mut v),
            Self::ServiceEntry(r) => r.spec.validate(&mut v),
            Self::Sidecar(r) => r.spec.validate(&mut v),
            Self::PeerAuthentication(r) => r.spec.validate(&mut v),
            Self::AuthorizationPolicy(r) => r.spec.validate(&mut v),
            Self::RequestAuthentication(r) => r.spec.validate(&mut v),
        }
        v.into_errors()
    }
}

/// The analyzer code of a refused object (Istio's code for a schema validation error).
pub const REFUSED_CODE: &str = "IST0106";
/// How to fix a refused object, as `meshctl analyze` and the webhook say it.
pub const REFUSED_FIX: &str =
    "correct the field and apply again; until then the last good version stays in force";

/// Why a document was refused: which object, and every field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ResourceError {
    /// The kind, when the document got that far (`"document"` otherwise).
    pub kind: String,
    /// Namespace of the object, when known.
    pub namespace: Option<String>,
    /// Name of the object, when known.
    pub name: Option<String>,
    /// What is wrong, field by field.
    pub errors: Vec<FieldError>,
}

impl ResourceError {
    fn new(kind: &str, meta: Option<&ObjectMeta>, path: &str, reason: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: meta.and_then(|m| m.namespace.clone()),
            name: meta.and_then(|m| m.name.clone()),
            errors: vec![FieldError {
                path: path.to_owned(),
                reason: reason.into(),
            }],
        }
    }

    /// What `meshctl analyze` prints for this object, one finding per field in field
    /// order, in the analyzer's format; the validating webhook refuses an apply with
    /// the same text.
    pub fn report(&self) -> String {
        let object = self.object();
        let mut errors: Vec<&FieldError> = self.errors.iter().collect();
        errors.sort_by(|a, b| a.path.cmp(&b.path));
        errors
            .into_iter()
            .map(|e| {
                format!(
                    "Error [{REFUSED_CODE}] ({object}) {}: {}\n    fix: {REFUSED_FIX}",
                    e.path, e.reason
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `Kind namespace/name`, as the message starts.
    pub fn object(&self) -> String {
        let key = object_key(self.namespace.as_deref(), self.name.as_deref());
        if key.is_empty() {
            self.kind.clone()
        } else {
            format!("{} {key}", self.kind)
        }
    }
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.object())?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn object_key(namespace: Option<&str>, name: Option<&str>) -> String {
    match (namespace, name) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_owned(),
        _ => String::new(),
    }
}

/// True when `api_version`/`kind` names one of the Istio kinds this crate reads, in
/// any accepted version.
pub fn is_istio_kind(api_version: &str, kind: &str) -> bool {
    let group = api_version.split('/').next().unwrap_or_default();
    KINDS.iter().any(|(k, g)| *k == kind && *g == group)
}

/// True when `api_version` is in one of Istio's API groups, whether or not Isthmus
/// reads the kind (a `Sidecar` or `EnvoyFilter` is then refused by name, never
/// dropped without a word).
pub fn is_istio_group(api_version: &str) -> bool {
    let group = api_version.split('/').next().unwrap_or_default();
    matches!(
        group,
        "networking.istio.io" | "security.istio.io" | "telemetry.istio.io" | "extensions.istio.io"
    )
}

/// Splits YAML (or JSON) text into its documents, skipping empty ones.
pub fn split_documents(text: &str) -> Result<Vec<Value>, ResourceError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ResourceError {
        kind: "document".into(),
        namespace: None,
        name: None,
        errors: vec![FieldError {
            path: "(yaml)".into(),
            reason: e.to_string(),
        }],
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Reads every Istio resource in a YAML/JSON text. Each document succeeds or fails on
/// its own, so one bad object never hides the good ones. Documents of other kinds
/// (Services, Secrets, …) are left out.
pub fn parse_resources(text: &str) -> Result<Vec<Result<Resource, ResourceError>>, ResourceError> {
    Ok(split_documents(text)?
        .into_iter()
        .filter(|d| {
            let (av, kind) = type_meta(d);
            is_istio_kind(av, kind)
        })
        .map(from_value)
        .collect())
}

/// Reads exactly one Istio resource from YAML or JSON text.
pub fn parse_resource(text: &str) -> Result<Resource, ResourceError> {
    let mut docs = split_documents(text)?;
    if docs.len() != 1 {
        return Err(ResourceError::new(
            "document",
            None,
            "(yaml)",
            format!("expected one document, found {}", docs.len()),
        ));
    }
    from_value(docs.remove(0))
}

/// A document's `apiVersion` and `kind` (empty when missing).
pub fn type_meta(doc: &Value) -> (&str, &str) {
    let field = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or_default();
    (field("apiVersion"), field("kind"))
}

/// Reads one Istio resource from its JSON value (as the Kubernetes API returns it),
/// then validates it.
pub fn from_value(doc: Value) -> Result<Resource, ResourceError> {
    from_value_with_warnings(doc).map(|(r, _)| r)
}

/// As [`from_value`], with the fields present that Isthmus accepts without effect
/// (the coverage contract's *warned* fields), for `meshctl analyze`.
pub fn from_value_with_warnings(
    mut doc: Value,
) -> Result<(Resource, Vec<crate::coverage::FieldWarning>), ResourceError> {
    let (api_version, kind) = type_meta(&doc);
    let (api_version, kind) = (api_version.to_owned(), kind.to_owned());
    let meta_value = doc
        .get_mut("metadata")
        .map(Value::take)
        .unwrap_or(Value::Null);
    let meta: Option<ObjectMeta> = serde_json::from_value(meta_value.clone()).ok();
    let fail = |path: &str, reason: String| ResourceError::new(&kind, meta.as_ref(), path, reason);

    let Some((_, group)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let known: Vec<_> = KINDS.iter().map(|(k, _)| *k).collect();
        return Err(fail(
            "kind",
            format!(
                "{kind:?} is not a kind Isthmus reads; expected one of {}",
                known.join(", ")
            ),
        ));
    };
    let versions = if *group == NETWORKING_GROUP {
        NETWORKING_VERSIONS
    } else {
        SECURITY_VERSIONS
    };
    let version_ok = api_version
        .split_once('/')
        .is_some_and(|(g, v)| g == *group && versions.contains(&v));
    if !version_ok {
        return Err(fail(
            "apiVersion",
            format!(
                "{api_version:?} is not served for {kind}; use {group}/v1 ({} are read the same)",
                versions[1..]
                    .iter()
                    .map(|v| format!("{group}/{v}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ));
    }
    let meta: ObjectMeta = serde_path_to_error::deserialize(meta_value).map_err(|e| {
        fail(
            &join_path("metadata", &e.path().to_string()),
            e.into_inner().to_string(),
        )
    })?;
    if meta.name.as_deref().is_none_or(str::is_empty) {
        return Err(fail("metadata.name", "is required".into()));
    }
    let spec = doc.get_mut("spec").map(Value::take).unwrap_or(Value::Null);
    if spec.is_null() {
        return Err(fail("spec", "is required".into()));
    }

    let (namespace, name) = (meta.namespace.clone(), meta.name.clone());
    // Fields Isthmus cannot honour are refused by the coverage contract, whole kinds
    // first (their specs are not read further).
    let (refused, warnings) = crate::coverage::check(&kind, &spec);
    if crate::coverage::kind_refused(&kind).is_some() {
        return Err(ResourceError {
            kind,
            namespace,
            name,
            errors: refused,
        });
    }
    let metadata = meta;
    let resource = match kind.as_str() {
        "VirtualService" => Resource::VirtualService(Box::new(VirtualService {
            metadata,
            spec: typed(spec, &fail)?,
        })),
        "DestinationRule" => Resource::DestinationRule(Box::new(DestinationRule {
            metadata,
            spec: typed(spec, &fail)?,
        })),
        "Gateway" => Resource::Gateway(Box::new(Gateway {
            metadata,
            spec: typed(spec, &fail)?,
        })),
        "ServiceEntry" => Resource::ServiceEntry(Box::new(ServiceEntry {
            metadata,
            spec: typed(spec, &fail)?,
        })),
        "Sidecar" => Resource::Sidecar(Box::new(Sidecar {
            metadata,
            spec: typed(spec, &fail)?,
        })),
        "PeerAuthentication" => Resource::PeerAuthentication(Box::new(PeerAuthentication {
            metadata,
            spec: typed(spec, &fail)?,
        })),
        "AuthorizationPolicy" => Resource::AuthorizationPolicy(Box::new(AuthorizationPolicy {
            metadata,
            spec: typed(spec, &fail)?,
        })),
        "RequestAuthentication" => {
            Resource::RequestAuthentication(Box::new(RequestAuthentication {
                metadata,
                spec: typed(spec, &fail)?,
            }))
        }
        _ => unreachable!("kind checked against KINDS above"),
    };
    let mut errors = refused;
    errors.extend(resource.validate());
    if errors.is_empty() {
        Ok((resource, warnings))
    } else {
        Err(ResourceError {
            kind,
            namespace,
            name,
            errors,
        })
    }
}

/// Deserializes a spec, reporting the exact field path of the first error.
fn typed<S: DeserializeOwned>(
    spec: Value,
    fail: &impl Fn(&str, String) -> ResourceError,
) -> Result<S, ResourceError> {
    serde_path_to_error::deserialize::<_, S>(spec).map_err(|e| {
        fail(
            &join_path("spec", &e.path().to_string()),
            e.into_inner().to_string(),
        )
    })
}

fn join_path(root: &str, rest: &str) -> String {
    match rest {
        "" | "." => root.to_owned(),
        r if r.starts_with('[') => format!("{root}{r}"),
        r => format!("{root}.{r}"),
    }
}
