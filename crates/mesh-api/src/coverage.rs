//! The API coverage contract: every field of every Istio kind that Isthmus reads is
//! *enforced* (with the tests that prove it), *refused* (validation fails with the
//! reason) or *warned* (accepted, and `meshctl analyze` says it has no effect).
//! Nothing is silently dropped.
//!
//! Fields are classified per type (`StringMatch.regex` once for every place a string
//! match appears), and the types are found by walking the JSON schema the CRDs are
//! derived from, so a new field in the types fails the completeness test until it
//! is classified. `docs/api-coverage.md` is generated from [`markdown`].

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde_json::Value;

use crate::networking::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, SidecarSpec, VirtualServiceSpec,
    WorkloadEntrySpec,
};
use crate::security::{AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec};

/// A kind's spec schema with its named types in `$defs`.
fn spec_schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
}

/// Each kind with its spec type's schema.
pub fn kinds() -> Vec<(&'static str, Value)> {
    vec![
        ("VirtualService", spec_schema::<VirtualServiceSpec>()),
        ("DestinationRule", spec_schema::<DestinationRuleSpec>()),
        ("Gateway", spec_schema::<GatewaySpec>()),
        ("ServiceEntry", spec_schema::<ServiceEntrySpec>()),
        ("Sidecar", spec_schema::<SidecarSpec>()),
        ("WorkloadEntry", spec_schema::<WorkloadEntrySpec>()),
        (
            "PeerAuthentication",
            spec_schema::<PeerAuthenticationSpec>(),
        ),
        (
            "AuthorizationPolicy",
            spec_schema::<AuthorizationPolicySpec>(),
        ),
        (
            "RequestAuthentication",
            spec_schema::<RequestAuthenticationSpec>(),
        ),
    ]
}

/// One field of a type as the schema describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SchemaField {
    /// The type that holds the field (`HTTPRoute`, …; the kind's spec type at the root).
    pub ty: String,
    /// The field's JSON name.
    pub field: String,
    /// The named type of the field's value (through lists and maps), if any.
    pub child: Option<String>,
}

fn ref_name(schema: &Value) -> Option<String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().map(str::to_owned);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array)
            && let Some(name) = list.iter().find_map(ref_name)
        {
            return Some(name);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = schema.get(key).filter(|v| v.is_object())
            && let Some(name) = ref_name(inner)
        {
            return Some(name);
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    One,
    Map,
}

/// Whether a field holds a map of named values (headers, ports) or one value.
fn shape(schema: &Value) -> Shape {
    if schema
        .get("additionalProperties")
        .is_some_and(Value::is_object)
    {
        return Shape::Map;
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array)
            && list.iter().any(|s| shape(s) == Shape::Map)
        {
            return Shape::Map;
        }
    }
    Shape::One
}

fn properties<'a>(root: &'a Value, ty: &str) -> Option<&'a serde_json::Map<String, Value>> {
    let schema = if root.get("title").and_then(Value::as_str) == Some(ty) {
        root
    } else {
        root.get("$defs")?.get(ty)?
    };
    schema.get("properties").and_then(Value::as_object)
}

fn root_type(root: &Value) -> String {
    root.get("title")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Every field reachable from a kind's spec, type by type in the order the types
/// are reached (fields by name), stopping below refused fields (a refused field's
/// contents need no classification of their own).
pub fn reachable_fields(schema: &Value) -> Vec<SchemaField> {
    let mut out = Vec::new();
    let mut types = vec![root_type(schema)];
    let mut next = 0;
    while let Some(ty) = types.get(next).cloned() {
        next += 1;
        let Some(props) = properties(schema, &ty) else {
            continue;
        };
        for (field, s) in props {
            let child = ref_name(s);
            let refused = lookup(&ty, field).is_some_and(|f| f.support == Support::Refused);
            if let Some(c) = &child
                && !refused
                && !types.contains(c)
            {
                types.push(c.clone());
            }
            out.push(SchemaField {
                ty: ty.clone(),
                field: field.clone(),
                child,
            });
        }
    }
    out
}

/// What Isthmus does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Support {
    /// Read and acted on; `tests` prove it.
    Enforced,
    /// Validation fails with `note` as the reason.
    Refused,
    /// Accepted without effect; analyze warns with `note`.
    Warned,
}

impl Support {
    /// The word the docs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforced => "enforced",
            Self::Refused => "refused",
            Self::Warned => "warned",
        }
    }
}

/// The classification of one field of one type.
#[derive(Debug, Clone, Copy)]
pub struct FieldSupport {
    /// The type holding the field.
    pub ty: &'static str,
    /// The field's JSON name.
    pub field: &'static str,
    /// Enforced, refused or warned.
    pub support: Support,
    /// For refused and warned fields the reason users see; for enforced ones, any
    /// value that is refused or a difference from Istio.
    pub note: &'static str,
    /// Tests that would fail without the behaviour, as `FILE::FUNCTION` from the
    /// workspace root.
    pub tests: &'static [&'static str],
}

/// Why a whole kind is refused, if it is.
pub fn kind_refused(kind: &str) -> Option<&'static str> {
    crate::coverage_table::KINDS_REFUSED
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, why)| *why)
}

/// Every classification.
pub fn all() -> &'static [FieldSupport] {
    crate::coverage_table::FIELDS
}

/// The classification of `ty.field`.
pub fn lookup(ty: &str, field: &str) -> Option<&'static FieldSupport> {
    type Index = std::collections::HashMap<(&'static str, &'static str), &'static FieldSupport>;
    static INDEX: std::sync::OnceLock<Index> = std::sync::OnceLock::new();
    INDEX
        .get_or_init(|| all().iter().map(|f| ((f.ty, f.field), f)).collect())
        .get(&(ty, field))
        .copied()
}

/// A present field that is accepted without effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldWarning {
    /// Where, e.g. `spec.http[0].corsPolicy`.
    pub path: String,
    /// Why it has no effect, and what to do.
    pub reason: String,
}

/// The analyzer code of a field accepted without effect.
pub const WARNED_CODE: &str = "ISM0001";

impl FieldWarning {
    /// The one-line warning for `object` (`Kind namespace/name`), as `kubectl apply`
    /// shows it from the validating webhook.
    pub fn report(&self, object: &str) -> String {
        format!("[{WARNED_CODE}] ({object}) {}: {}", self.path, self.reason)
    }
}

/// The refused and warned fields present in a spec document of `kind`, with the
/// paths where they appear.
pub fn check(kind: &str, spec: &Value) -> (Vec<crate::validate::FieldError>, Vec<FieldWarning>) {
    let mut refused = Vec::new();
    let mut warned = Vec::new();
    if let Some(why) = kind_refused(kind) {
        refused.push(crate::validate::FieldError {
            path: "spec".into(),
            reason: format!("{kind} is not supported: {why}"),
        });
        return (refused, warned);
    }
    let schemas = schemas();
    if let Some(schema) = schemas.get(kind) {
        walk(
            schema,
            &root_type(schema),
            spec,
            "spec",
            &mut refused,
            &mut warned,
        );
    }
    (refused, warned)
}

fn schemas() -> &'static BTreeMap<&'static str, Value> {
    static SCHEMAS: std::sync::OnceLock<BTreeMap<&'static str, Value>> = std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| kinds().into_iter().collect())
}

fn walk(
    schema: &Value,
    ty: &str,
    value: &Value,
    path: &str,
    refused: &mut Vec<crate::validate::FieldError>,
    warned: &mut Vec<FieldWarning>,
) {
    let Some(object) = value.as_object() else {
        return;
    };
    let props = properties(schema, ty);
    for (field, v) in object {
        if v.is_null() {
            continue;
        }
        let here = format!("{path}.{field}");
        match lookup(ty, field).map(|f| (f.support, f.note)) {
            Some((Support::Refused, note)) => {
                refused.push(crate::validate::FieldError {
                    path: here,
                    reason: format!("is not supported: {note}"),
                });
                continue;
            }
            Some((Support::Warned, note)) => warned.push(FieldWarning {
                path: here.clone(),
                reason: format!("has no effect in Isthmus: {note}"),
            }),
            _ => {}
        }
        let Some(field_schema) = props.and_then(|p| p.get(field)) else {
            continue;
        };
        let Some(child) = ref_name(field_schema) else {
            continue;
        };
        match (v, shape(field_schema)) {
            (Value::Array(items), _) => {
                for (i, item) in items.iter().enumerate() {
                    walk(
                        schema,
                        &child,
                        item,
                        &format!("{here}[{i}]"),
                        refused,
                        warned,
                    );
                }
            }
            (Value::Object(map), Shape::Map) => {
                for (k, item) in map {
                    walk(
                        schema,
                        &child,
                        item,
                        &format!("{here}[{k:?}]"),
                        refused,
                        warned,
                    );
                }
            }
            _ => walk(schema, &child, v, &here, refused, warned),
        }
    }
}

/// Where the generated coverage document lives in the repository.
pub const DOC_FILE: &str = "docs/api-coverage.md";

/// The command that regenerates [`DOC_FILE`].
pub const REGENERATE: &str = "cargo run -p meshctl -- api-coverage --out docs/api-coverage.md";

/// `docs/api-coverage.md`: kind → field → state → the tests that prove it.
pub fn markdown() -> String {
    let mut md = String::from(
        "# Istio API coverage\n\n\
         Generated from `crates/mesh-api/src/coverage_table.rs` by `meshctl api-coverage`; a test fails \
         when this page is stale or when a field of the types has no classification.\n\n\
         Every field Isthmus reads is one of:\n\n\
         - **enforced**: acted on, with the tests that would fail without it;\n\
         - **refused**: validation fails with the reason (discovery keeps the last good version of the \
         object and shows why in `/debug/registry`, `meshctl analyze` reports it as IST0106);\n\
         - **warned**: accepted without effect; `meshctl analyze` warns (ISM0001) with the field's path.\n\n\
         Fields are listed per type, under the first kind that uses the type; a type used again \
         (`StringMatch`, `Destination`, `TrafficPolicy`) has the same state everywhere. Fields inside a \
         refused field are not listed.\n",
    );
    let mut listed = BTreeSet::new();
    for (kind, schema) in kinds() {
        md.push_str(&format!("\n## {kind}\n\n"));
        if let Some(why) = kind_refused(kind) {
            md.push_str(&format!("**Refused** as a whole: {why}.\n"));
            continue;
        }
        md.push_str("| field | state | notes | tests |\n| --- | --- | --- | --- |\n");
        for f in reachable_fields(&schema) {
            let support = lookup(&f.ty, &f.field);
            if !listed.insert((f.ty.clone(), f.field.clone())) {
                continue;
            }
            let (state, note, tests) = match support {
                Some(s) => (s.support.as_str(), s.note, s.tests),
                None => ("**unclassified**", "", &[][..]),
            };
            let tests: Vec<String> = tests
                .iter()
                .map(|t| {
                    let (file, func) = t.split_once("::").unwrap_or((t, ""));
                    format!("`{func}` ({file}.rs)")
                })
                .collect();
            md.push_str(&format!(
                "| `{}.{}` | {state} | {} | {} |\n",
                f.ty,
                f.field,
                note.replace('|', "\\|"),
                tests.join("<br>")
            ));
        }
    }
    md
}
