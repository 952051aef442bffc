//! Durations as Istio writes them: Go's `time.ParseDuration` format (`10s`, `1.5s`,
//! `300ms`, `1m30s`, `1h`), which is also what the Istio CRDs accept in `timeout`,
//! `perTryTimeout`, `interval`, `baseEjectionTime` and the like.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A non-negative duration in Go/Istio notation; it serializes in its shortest Go form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write it like 10s, 1.5s, 300ms, 1m30s or 1h)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    /// The standard library value.
    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }

    /// True for a zero duration, which Istio reads as "disabled" in several fields.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        let mut rest = input.trim();
        if rest.is_empty() {
            return Err(fail("it is empty"));
        }
        if rest.starts_with('-') {
            return Err(fail("it is negative"));
        }
        rest = rest.strip_prefix('+').unwrap_or(rest);
        if rest == "0" {
            return Ok(Self::default());
        }
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if number_len == 0 {
                return Err(fail("expected a number before each unit"));
            }
            let (number, after) = rest.split_at(number_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                "" => return Err(fail("a unit is missing (ns, us, ms, s, m or h)")),
                _ => return Err(fail("unknown unit (use ns, us, ms, s, m or h)")),
            };
            let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
            if whole.is_empty() && frac.is_empty() || frac.contains('.') {
                return Err(fail("malformed number"));
            }
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| fail("number out of range"))?
            };
            let mut nanos = whole
                .checked_mul(unit_nanos)
                .ok_or_else(|| fail("number out of range"))?;
            // Fractions beyond nanosecond precision are dropped, as Go does.
            let mut scale = unit_nanos;
            for digit in frac.bytes() {
                scale /= 10;
                if scale == 0 {
                    break;
                }
                nanos += u128::from(digit - b'0') * scale;
            }
            total_nanos = total_nanos
                .checked_add(nanos)
                .ok_or_else(|| fail("number out of range"))?;
            rest = after;
        }
        let secs =
            u64::try_from(total_nanos / 1_000_000_000).map_err(|_| fail("number out of range"))?;
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(Self(std::time::Duration::new(secs, nanos)))
    }
}

impl fmt::Display for Duration {
    /// The shortest Go-style spelling: `1h`, `1m30s`, `1.5s`, `250ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_nanos();
        if total == 0 {
            return f.write_str("0s");
        }
        if total < 1_000_000_000 {
            return if total.is_multiple_of(1_000_000) {
                write!(f, "{}ms", total / 1_000_000)
            } else if total.is_multiple_of(1_000) {
                write!(f, "{}us", total / 1_000)
            } else {
                write!(f, "{total}ns")
            };
        }
        let secs = self.0.as_secs();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        let sub = self.0.subsec_nanos();
        if sub != 0 {
            let frac = format!("{sub:09}");
            write!(f, "{s}.{}s", frac.trim_end_matches('0'))
        } else if s > 0 {
            write!(f, "{s}s")
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 10s, 1.5s, 300ms or 1m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl JsonSchema for Duration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as 10s, 1.5s, 300ms, 1m30s or 1h.",
            "pattern": r"^\+?(0|([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> std::time::Duration {
        s.parse::<Duration>().unwrap().as_std()
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("10s"), std::time::Duration::from_secs(10));
        assert_eq!(parse("1.5s"), std::time::Duration::from_millis(1500));
        assert_eq!(parse("300ms"), std::time::Duration::from_millis(300));
        assert_eq!(parse("1m30s"), std::time::Duration::from_secs(90));
        assert_eq!(parse("3m"), std::time::Duration::from_secs(180));
        assert_eq!(parse("1h"), std::time::Duration::from_secs(3600));
        assert_eq!(parse("2h45m"), std::time::Duration::from_secs(9900));
        assert_eq!(parse("0"), std::time::Duration::ZERO);
        assert_eq!(parse("100us"), std::time::Duration::from_micros(100));
        assert_eq!(parse(".5s"), std::time::Duration::from_millis(500));
    }

    #[test]
    fn refuses_bad_durations_with_a_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("10", "unit is missing"),
            ("10 seconds", "unknown unit"),
            ("-1s", "negative"),
            ("1d", "unknown unit"),
            ("s", "expected a number"),
            ("1.2.3s", "malformed"),
        ] {
            let err = input.parse::<Duration>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
        }
    }

    #[test]
    fn displays_the_shortest_form_and_round_trips() {
        for s in [
            "0s", "1h", "1m30s", "1.5s", "250ms", "100us", "7ns", "1h0m5s",
        ] {
            let d: Duration = s.parse().unwrap();
            let again: Duration = d.to_string().parse().unwrap();
            assert_eq!(d, again, "{s}");
        }
        assert_eq!(Duration::from_secs(90).to_string(), "1m30s");
        assert_eq!(Duration::from_millis(1500).to_string(), "1.5s");
    }
}
