//! Request path normalization, as Istio's `meshConfig.pathNormalization` does it
//! before authorization and routing: the normalized path is what policies match and
//! what the application receives, so `/x/../admin` and `/%61dmin` cannot reach
//! `/admin` around a policy on it.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// How much of a path is normalized (Istio's `pathNormalization.normalization`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathNormalization {
    /// Untouched.
    None,
    /// RFC 3986: percent-encoded unreserved characters decoded, other escapes in
    /// upper case, `\` read as `/`, `.` and `..` segments resolved (Istio's default).
    #[default]
    Base,
    /// `Base`, then runs of `/` merged into one.
    MergeSlashes,
    /// `%2F` and `%5C` decoded first, then `MergeSlashes`.
    DecodeAndMergeSlashes,
}

impl FromStr for PathNormalization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Self::None,
            "BASE" | "DEFAULT" => Self::Base,
            "MERGE_SLASHES" => Self::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Self::DecodeAndMergeSlashes,
            other => {
                return Err(format!(
                    "unknown path normalization {other:?}; use NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
                ));
            }
        })
    }
}

impl fmt::Display for PathNormalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "NONE",
            Self::Base => "BASE",
            Self::MergeSlashes => "MERGE_SLASHES",
            Self::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        })
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl PathNormalization {
    /// Whether `path` has nothing to normalize: the common case, checked without
    /// allocating.
    fn already_normal(self, path: &str) -> bool {
        let merge = matches!(self, Self::MergeSlashes | Self::DecodeAndMergeSlashes);
        let escaped = path.bytes().any(|b| b == b'%' || b == b'\\');
        let dot_segment = path.split('/').any(|seg| seg == "." || seg == "..");
        !(escaped || dot_segment || merge && path.contains("//"))
    }

    /// The normalized form of `path` (without its query). Paths that do not start
    /// with `/` (`*`, authority form) are left as they are.
    pub fn apply<'a>(self, path: &'a str) -> Cow<'a, str> {
        if self == Self::None || !path.starts_with('/') || self.already_normal(path) {
            return Cow::Borrowed(path);
        }
        let bytes = path.as_bytes();
        let mut decoded = Vec::with_capacity(bytes.len());
        // Where a `%` that starts no escape was kept.
        let mut lone = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%'
                && let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                )
            {
                let c = h << 4 | l;
                let slash = self == Self::DecodeAndMergeSlashes && matches!(c, b'/' | b'\\');
                if unreserved(c) || slash {
                    decoded.push(if c == b'\\' { b'/' } else { c });
                } else {
                    decoded.extend_from_slice(&[
                        b'%',
                        bytes[i + 1].to_ascii_uppercase(),
                        bytes[i + 2].to_ascii_uppercase(),
                    ]);
                }
                i += 3;
                continue;
            }
            if b == b'%' {
                lone.push(decoded.len());
            }
            decoded.push(if b == b'\\' { b'/' } else { b });
            i += 1;
        }
        // A lone `%` stays as it is, unless what was decoded after it now makes it an
        // escape (`%%61` → `%a…`): then it is written `%25`, so that normalizing the
        // result again changes nothing and nobody downstream decodes an escape the
        // client never sent.
        for &p in lone.iter().rev() {
            let joins = decoded.get(p + 1).copied().and_then(hex).is_some()
                && decoded.get(p + 2).copied().and_then(hex).is_some();
            if joins {
                decoded.splice(p + 1..p + 1, *b"25");
            }
        }
        let merge = matches!(self, Self::MergeSlashes | Self::DecodeAndMergeSlashes);
        // RFC 3986 section 5.2.4 on whole segments.
        let mut out: Vec<&[u8]> = Vec::new();
        let body = &decoded[1..];
        let segments: Vec<&[u8]> = body.split(|b| *b == b'/').collect();
        let last = segments.len() - 1;
        for (n, seg) in segments.iter().enumerate() {
            match *seg {
                b"." => {
                    if n == last {
                        out.push(b"");
                    }
                }
                b".." => {
                    out.pop();
                    if n == last {
                        out.push(b"");
                    }
                }
                b"" if merge && n != last => {}
                s => out.push(s),
            }
        }
        let mut normalized = String::with_capacity(decoded.len());
        for seg in out {
            normalized.push('/');
            // Only ASCII went in: escapes of non-ASCII bytes stay escaped.
            normalized.push_str(std::str::from_utf8(seg).unwrap_or_default());
        }
        if normalized.is_empty() {
            normalized.push('/');
        }
        if normalized == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(normalized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::{self, *};

    fn n(mode: PathNormalization, p: &str) -> String {
        mode.apply(p).into_owned()
    }

    #[test]
    fn base_resolves_dot_segments_and_unreserved_escapes() {
        assert_eq!(n(Base, "/x/../admin"), "/admin");
        assert_eq!(n(Base, "/%61dmin"), "/admin");
        assert_eq!(n(Base, "/%2e%2e/admin"), "/admin");
        assert_eq!(n(Base, "/a/./b/."), "/a/b/");
        assert_eq!(n(Base, "/../../etc"), "/etc");
        assert_eq!(n(Base, "/a\\..\\admin"), "/admin");
        assert_eq!(n(Base, "/a/b/.."), "/a/");
        assert_eq!(n(Base, "/"), "/");
        assert_eq!(
            n(Base, "/a%2fb"),
            "/a%2Fb",
            "reserved escapes stay, in upper case"
        );
        assert_eq!(n(Base, "/a//b"), "/a//b");
        assert_eq!(n(Base, "/caf%C3%A9"), "/caf%C3%A9");
        assert_eq!(n(Base, "/100%"), "/100%", "a lone % is left as it is");
        // Unless a decoded character would make it an escape the client never sent
        // (found by the authz_path fuzz target: normalizing twice differed).
        assert_eq!(n(Base, "/%%61dmin/x"), "/%25admin/x");
        assert_eq!(n(Base, &n(Base, "/%%61dmin/x")), "/%25admin/x");
        assert_eq!(n(Base, "/%%zz"), "/%%zz");
        assert_eq!(n(Base, "*"), "*");
        assert!(
            matches!(Base.apply("/a..b/c./.d"), std::borrow::Cow::Borrowed(_)),
            "dots inside names are no dot segments"
        );
        assert!(matches!(
            MergeSlashes.apply("/a/b"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn merge_and_decode_slashes() {
        assert_eq!(n(MergeSlashes, "/a//b///c"), "/a/b/c");
        assert_eq!(n(MergeSlashes, "//admin"), "/admin");
        assert_eq!(n(MergeSlashes, "/a%2Fb"), "/a%2Fb");
        assert_eq!(n(DecodeAndMergeSlashes, "/a%2F%2fadmin"), "/a/admin");
        assert_eq!(n(DecodeAndMergeSlashes, "/x%5C..%5Cadmin"), "/admin");
        assert_eq!(n(None, "/x/../admin"), "/x/../admin");
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            "merge_slashes".parse::<PathNormalization>(),
            Ok(MergeSlashes)
        );
        assert!("FULL".parse::<PathNormalization>().is_err());
    }
}
