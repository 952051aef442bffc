//! The value matchers of AuthorizationPolicy, compiled once per config push.

pub(crate) use mesh_api::security::IpBlock;
use mesh_api::security::{PathPattern, ServiceAccountRef, TemplateSegment};

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (any non-empty value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StringMatcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringMatcher {
    pub(crate) fn new(pattern: &str) -> Self {
        Self::with_case(pattern, false)
    }

    /// `lowercase`: the pattern is folded so that a lower-cased value can be tested.
    pub(crate) fn with_case(pattern: &str, lowercase: bool) -> Self {
        let p = if lowercase {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_owned()
        };
        if p == "*" {
            Self::Present
        } else if let Some(prefix) = p.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else if let Some(suffix) = p.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else {
            Self::Exact(p)
        }
    }

    pub(crate) fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(s) => value == s.as_bytes(),
            Self::Prefix(p) => value.starts_with(p.as_bytes()),
            Self::Suffix(s) => value.ends_with(s.as_bytes()),
            Self::Present => !value.is_empty(),
        }
    }

    /// As [`matches`](Self::matches), ignoring ASCII case (the pattern was built with
    /// `lowercase`).
    pub(crate) fn matches_ignore_case(&self, value: &[u8]) -> bool {
        let eq = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
        match self {
            Self::Exact(s) => eq(value, s),
            Self::Prefix(p) => value.len() >= p.len() && eq(&value[..p.len()], p),
            Self::Suffix(s) => value.len() >= s.len() && eq(&value[value.len() - s.len()..], s),
            Self::Present => !value.is_empty(),
        }
    }
}

/// A `paths:` value: a string match or a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatcher {
    Glob(StringMatcher),
    Template(Vec<TemplateSegment>),
}

impl PathMatcher {
    pub(crate) fn new(pattern: &str) -> Result<Self, String> {
        Ok(match PathPattern::parse(pattern)? {
            PathPattern::Glob(g) => Self::Glob(StringMatcher::new(&g)),
            PathPattern::Template(t) => Self::Template(t),
        })
    }

    /// `path` is normalized and has no query.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            Self::Glob(g) => g.matches(path.as_bytes()),
            Self::Template(segments) => {
                let Some(body) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = body.split('/');
                for seg in segments {
                    match seg {
                        TemplateSegment::Literal(l) => {
                            if parts.next() != Some(l.as_str()) {
                                return false;
                            }
                        }
                        TemplateSegment::One => {
                            if parts.next().is_none_or(str::is_empty) {
                                return false;
                            }
                        }
                        TemplateSegment::Rest => {
                            let rest: Vec<&str> = parts.by_ref().collect();
                            return !rest.is_empty() && rest.iter().all(|p| !p.is_empty());
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// `serviceAccounts:` entry: the peer identity's namespace and service account, in
/// any trust domain the mesh accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceAccountMatcher(ServiceAccountRef);

impl ServiceAccountMatcher {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        ServiceAccountRef::parse(s)
            .map(Self)
            .ok_or_else(|| format!("{s:?} is not NAMESPACE/NAME"))
    }

    /// `principal` is `TD/ns/NS/sa/SA`.
    pub(crate) fn matches(&self, principal: &str) -> bool {
        let mut parts = principal.splitn(5, '/');
        let _td = parts.next();
        parts.next() == Some("ns")
            && parts.next() == Some(self.0.namespace.as_str())
            && parts.next() == Some("sa")
            && parts.next() == Some(self.0.name.as_str())
    }
}

/// Values a field must match (one of, when any) and must not match (none of).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field<M> {
    pub(crate) values: Vec<M>,
    pub(crate) not_values: Vec<M>,
}

impl<M> Default for Field<M> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            not_values: Vec::new(),
        }
    }
}

impl<M> Field<M> {
    pub(crate) fn compile(
        values: &[String],
        not_values: &[String],
        f: impl Fn(&str) -> Result<M, String>,
    ) -> Result<Self, String> {
        Ok(Self {
            values: values.iter().map(|v| f(v)).collect::<Result<_, _>>()?,
            not_values: not_values.iter().map(|v| f(v)).collect::<Result<_, _>>()?,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// Whether the value passes, `test` telling whether one matcher matches it.
    pub(crate) fn check(&self, test: impl Fn(&M) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&test))
            && !self.not_values.iter().any(test)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_string_matching() {
        let m = |p: &str, v: &str| StringMatcher::new(p).matches(v.as_bytes());
        assert!(m("/reviews/*", "/reviews/1"));
        assert!(m("*.example", "api.example"));
        assert!(m("*", "x"));
        assert!(!m("*", ""));
        assert!(!m("GET", "POST"));
    }

    #[test]
    fn cidr_blocks() {
        let ip = |s: &str| s.parse().unwrap();
        let b = |s: &str| IpBlock::parse(s).unwrap();
        assert!(b("10.1.0.0/16").contains(ip("10.1.200.3")));
        assert!(!b("10.1.0.0/16").contains(ip("10.2.0.1")));
        assert!(b("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(b("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(b("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(!b("fd00::/8").contains(ip("10.1.2.3")));
        assert!(IpBlock::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn path_templates() {
        let m = |p: &str, v: &str| PathMatcher::new(p).unwrap().matches(v);
        assert!(m("/api/{*}/orders", "/api/7/orders"));
        assert!(!m("/api/{*}/orders", "/api/7/8/orders"));
        assert!(!m("/api/{*}/orders", "/api//orders"));
        assert!(!m("/api/{*}", "/api/7/orders"));
        assert!(m("/api/{**}", "/api/7/orders"));
        assert!(m("/api/{**}", "/api/7"));
        assert!(!m("/api/{**}", "/api"));
        assert!(!m("/api/{**}", "/api/"));
        assert!(m("/{*}/admin", "/x/admin"));
    }

    #[test]
    fn service_accounts_match_namespace_and_name_in_any_trust_domain() {
        let sa = ServiceAccountMatcher::parse("shop/productpage").unwrap();
        assert!(sa.matches("mesh.example/ns/shop/sa/productpage"));
        assert!(sa.matches("west.example/ns/shop/sa/productpage"));
        assert!(!sa.matches("mesh.example/ns/shop/sa/productpage-v2"));
        assert!(!sa.matches("mesh.example/ns/other/sa/productpage"));
        assert!(!sa.matches(""));
    }
}
