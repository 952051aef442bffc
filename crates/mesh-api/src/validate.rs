//! Semantic checks that serde cannot express (one-of fields, regular expressions, ranges,
//! references), each reported with the field path it concerns.

use std::fmt;

/// One problem found in a resource, at a field path such as `spec.http[0].match[1].uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The path from the document root, e.g. `spec.http[0].timeout`.
    pub path: String,
    /// What is wrong and, where it helps, how to fix it.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Walks a resource, keeping the current field path, and collects every error.
#[derive(Debug, Default)]
pub struct Validator {
    path: Vec<Segment>,
    errors: Vec<FieldError>,
}

#[derive(Debug)]
enum Segment {
    Field(String),
    Index(usize),
    Key(String),
}

impl Validator {
    /// A validator rooted at `spec`.
    pub fn for_spec() -> Self {
        let mut v = Self::default();
        v.path.push(Segment::Field("spec".into()));
        v
    }

    /// Runs `f` one field deeper.
    pub fn field(&mut self, name: &str, f: impl FnOnce(&mut Self)) {
        self.path.push(Segment::Field(name.to_owned()));
        f(self);
        self.path.pop();
    }

    /// Runs `f` for each element of a list, with its index in the path.
    pub fn each<T>(&mut self, name: &str, items: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.path.push(Segment::Field(name.to_owned()));
        for (i, item) in items.iter().enumerate() {
            self.path.push(Segment::Index(i));
            f(self, item);
            self.path.pop();
        }
        self.path.pop();
    }

    /// Runs `f` for each entry of a map, with its key in the path.
    pub fn each_entry<'a, K: fmt::Display + 'a, T: 'a>(
        &mut self,
        name: &str,
        entries: impl IntoIterator<Item = (&'a K, &'a T)>,
        mut f: impl FnMut(&mut Self, &K, &T),
    ) {
        self.path.push(Segment::Field(name.to_owned()));
        for (k, item) in entries {
            self.path.push(Segment::Key(k.to_string()));
            f(self, k, item);
            self.path.pop();
        }
        self.path.pop();
    }

    /// Records an error at the current path.
    pub fn error(&mut self, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: self.path_string(),
            reason: reason.into(),
        });
    }

    /// Checks that `pattern` compiles as a regular expression (RE2 syntax).
    pub fn regex(&mut self, pattern: &str) {
        if let Err(e) = regex::Regex::new(pattern) {
            let detail = match e {
                regex::Error::Syntax(s) => s.lines().last().unwrap_or_default().trim().to_owned(),
                other => other.to_string(),
            };
            self.error(format!("invalid regular expression {pattern:?}: {detail}"));
        }
    }

    /// Checks that a required string is set.
    pub fn required(&mut self, name: &str, value: &str) {
        if value.trim().is_empty() {
            self.field(name, |v| v.error("is required"));
        }
    }

    /// The errors found so far.
    pub fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }

    fn path_string(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                Segment::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
                Segment::Key(k) => out.push_str(&format!("[{k:?}]")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_fields_indexes_and_keys() {
        let mut v = Validator::for_spec();
        v.each("http", &[1, 2], |v, n| {
            if *n == 2 {
                v.field("timeout", |v| v.error("bad"));
            }
        });
        let map = std::collections::BTreeMap::from([("x-user".to_string(), 1)]);
        v.each_entry("headers", &map, |v, _, _| v.regex("(("));
        let errors = v.into_errors();
        assert_eq!(errors[0].to_string(), "spec.http[1].timeout: bad");
        assert!(
            errors[1].path.ends_with("headers[\"x-user\"]"),
            "{}",
            errors[1]
        );
        assert!(errors[1].reason.contains("invalid regular expression"));
    }
}
