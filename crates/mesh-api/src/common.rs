//! Building blocks shared by several Istio kinds.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::Validator;

/// Istio's `StringMatch`: exactly one of `exact`, `prefix` or `regex` (RE2 syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// The value must equal this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value must start with this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The value must fully match this RE2 regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// One arm of a [`StringMatch`], once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    /// `exact`
    Exact(&'a str),
    /// `prefix`
    Prefix(&'a str),
    /// `regex`
    Regex(&'a str),
}

impl StringMatch {
    /// The one arm that is set, or `None` when the match is empty or ambiguous (which
    /// validation reports).
    pub fn kind(&self) -> Option<StringMatchKind<'_>> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Some(StringMatchKind::Exact(e)),
            (None, Some(p), None) => Some(StringMatchKind::Prefix(p)),
            (None, None, Some(r)) => Some(StringMatchKind::Regex(r)),
            _ => None,
        }
    }

    pub(crate) fn validate(&self, v: &mut Validator) {
        let set = [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|o| o.is_some())
            .count();
        match set {
            0 => v.error("set one of exact, prefix or regex"),
            1 => {}
            _ => v.error("set only one of exact, prefix or regex"),
        }
        if let Some(re) = &self.regex {
            v.field("regex", |v| v.regex(re));
        }
    }
}

/// Istio's `Percent`: a double between 0 and 100, written `{value: 12.5}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// Percentage in [0.0, 100.0].
    #[serde(default)]
    pub value: f64,
}

impl Percent {
    pub(crate) fn validate(&self, v: &mut Validator) {
        if !(0.0..=100.0).contains(&self.value) || self.value.is_nan() {
            v.field("value", |v| {
                v.error(format!(
                    "{} is not a percentage between 0 and 100",
                    self.value
                ))
            });
        }
    }
}

/// A port of a destination service, `{number: 9080}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    #[serde(default)]
    pub number: u32,
}

/// Selects workloads by their labels (`selector` in security kinds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry to be selected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// A reference to a Kubernetes object a policy attaches to (`targetRef`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target, empty for the core group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Kind of the target, e.g. `Service` or `Gateway`.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target; defaults to the policy's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Header edits on a request or response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `headers:` on a route or destination: request and response edits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Edits applied before forwarding the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    /// Edits applied before returning the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// True for a valid HTTP header name (an RFC 9110 token).
pub(crate) fn http_header_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !name.is_empty()
}

/// Records an error at `v` unless `name` is a valid HTTP header name.
pub(crate) fn validate_header_name(v: &mut Validator, name: &str) {
    if !http_header_name(name) {
        v.error(format!(
            "{name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        ));
    }
}

impl Headers {
    pub(crate) fn validate(&self, v: &mut Validator) {
        for (side, ops) in [("request", &self.request), ("response", &self.response)] {
            let Some(ops) = ops else { continue };
            v.field(side, |v| {
                v.each_entry("set", &ops.set, |v, k, _| validate_header_name(v, k));
                v.each_entry("add", &ops.add, |v, k, _| validate_header_name(v, k));
                v.each("remove", &ops.remove, |v, k| validate_header_name(v, k));
            });
        }
    }
}

pub(crate) fn validate_port(v: &mut Validator, port: u32) {
    if port == 0 || port > 65535 {
        v.error(format!("{port} is not a port number between 1 and 65535"));
    }
}
