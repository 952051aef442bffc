//! Distributed tracing: each proxy hop continues the caller's trace (W3C
//! `traceparent`, or B3 as Envoy sends it), records a span, and passes its own span
//! as the parent to the next hop in both formats. Spans go to an OTLP collector when
//! one is configured; without one, ids are still propagated so traces stay whole.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};

/// A position in a trace: the ids a hop passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// The parent span.
    pub span_id: [u8; 8],
    /// Whether the trace is sampled.
    pub sampled: bool,
}

fn hex_to<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn nonzero(b: u8) -> u8 {
    if b == 0 { 1 } else { b }
}

/// A random span id (never all zero, which W3C reserves for "none").
fn random_span_id() -> [u8; 8] {
    rand::random::<[u8; 8]>().map(nonzero)
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const B3_TRACE_ID: http::HeaderName = http::HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: http::HeaderName = http::HeaderName::from_static("x-b3-spanid");
const B3_SAMPLED: http::HeaderName = http::HeaderName::from_static("x-b3-sampled");
const B3_SINGLE: http::HeaderName = http::HeaderName::from_static("b3");
const B3_PARENT: http::HeaderName = http::HeaderName::from_static("x-b3-parentspanid");
const B3_FLAGS: http::HeaderName = http::HeaderName::from_static("x-b3-flags");

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// B3 headers Envoy uses; removed and rewritten at each hop.
const B3_HEADERS: [http::HeaderName; 6] = [
    B3_SINGLE,
    B3_TRACE_ID,
    B3_SPAN_ID,
    B3_PARENT,
    B3_SAMPLED,
    B3_FLAGS,
];

impl TraceParent {
    /// Reads `traceparent`, else B3 (multi-header or single `b3`).
    pub fn from_headers(h: &HeaderMap) -> Option<Self> {
        // Names as constants: a lookup by `&str` parses the name first.
        let get = |n: &http::HeaderName| h.get(n).and_then(|v| v.to_str().ok());
        if let Some(tp) = get(&TRACEPARENT) {
            return Self::parse(tp);
        }
        if let (Some(trace), Some(span)) = (get(&B3_TRACE_ID), get(&B3_SPAN_ID)) {
            // 64-bit B3 trace ids are left-padded to 128 bits.
            let trace = format!("{trace:0>32}");
            let p = Self {
                trace_id: hex_to(&trace)?,
                span_id: hex_to(span)?,
                sampled: get(&B3_SAMPLED).is_none_or(|s| s == "1" || s == "true")
                    || get(&B3_FLAGS) == Some("1"),
            };
            return p.valid().then_some(p);
        }
        if let Some(single) = get(&B3_SINGLE) {
            let parts: Vec<&str> = single.split('-').collect();
            if parts.len() >= 2 {
                let p = Self {
                    trace_id: hex_to(&format!("{:0>32}", parts[0]))?,
                    span_id: hex_to(parts[1])?,
                    sampled: parts.get(2).is_none_or(|s| *s == "1" || *s == "d"),
                };
                return p.valid().then_some(p);
            }
        }
        None
    }

    /// The start of a new sampled trace: random ids (never all zero).
    pub fn root() -> Self {
        Self {
            trace_id: rand::random::<[u8; 16]>().map(nonzero),
            span_id: random_span_id(),
            sampled: true,
        }
    }

    /// Parses a W3C `traceparent` value (`00-TRACE-SPAN-FLAGS`).
    pub fn parse(value: &str) -> Option<Self> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, span, flags] = parts[..] else {
            return None;
        };
        if version.len() != 2 || version == "ff" {
            return None;
        }
        let p = Self {
            trace_id: hex_to(trace)?,
            span_id: hex_to(span)?,
            sampled: u8::from_str_radix(flags, 16).ok()? & 1 == 1,
        };
        p.valid().then_some(p)
    }

    /// The W3C `traceparent` value.
    pub fn to_w3c(&self) -> String {
        let sampled = if self.sampled { "01" } else { "00" };
        format!(
            "00-{}-{}-{sampled}",
            hex(&self.trace_id),
            hex(&self.span_id)
        )
    }

    fn valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }

    /// Writes this position as `traceparent` and as B3, replacing what was there.
    pub fn inject(&self, h: &mut HeaderMap) {
        for n in &B3_HEADERS {
            h.remove(n);
        }
        // 00-{32 hex}-{16 hex}-{2 hex}
        let mut tp = [b'-'; 55];
        tp[..2].copy_from_slice(b"00");
        hex_into(&self.trace_id, &mut tp[3..35]);
        hex_into(&self.span_id, &mut tp[36..52]);
        tp[53..].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        let value = |bytes: &[u8]| HeaderValue::from_bytes(bytes).ok();
        let names = [
            (TRACEPARENT, value(&tp)),
            (B3_TRACE_ID, value(&tp[3..35])),
            (B3_SPAN_ID, value(&tp[36..52])),
            (
                B3_SAMPLED,
                Some(HeaderValue::from_static(if self.sampled {
                    "1"
                } else {
                    "0"
                })),
            ),
        ];
        for (name, v) in names {
            if let Some(v) = v {
                h.insert(name, v);
            }
        }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// Where spans go.
#[derive(Clone, Default)]
pub struct Tracing {
    provider: Option<Arc<SdkTracerProvider>>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl Tracing {
    /// Propagates ids without exporting spans.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Exports spans over OTLP/gRPC to `endpoint` (e.g. `http://127.0.0.1:4317`) as
    /// service `service_name`, with `attributes` on every span (cluster, namespace, …).
    /// Needs a Tokio runtime.
    pub fn otlp(
        endpoint: &str,
        service_name: &str,
        attributes: Vec<KeyValue>,
    ) -> Result<Self, String> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        Ok(Self::with_exporter(
            exporter,
            service_name,
            attributes,
            true,
        ))
    }

    /// Exports spans to `exporter` (batched, or one by one when `batch` is false).
    pub fn with_exporter(
        exporter: impl SpanExporter + 'static,
        service_name: &str,
        attributes: Vec<KeyValue>,
        batch: bool,
    ) -> Self {
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name.to_owned())
            .with_attributes(attributes)
            .build();
        let builder = SdkTracerProvider::builder().with_resource(resource);
        let builder = if batch {
            builder.with_batch_exporter(exporter)
        } else {
            builder.with_simple_exporter(exporter)
        };
        Self {
            provider: Some(Arc::new(builder.build())),
        }
    }

    /// Starts a span continuing `parent` (or a new trace). `name` is only called when
    /// spans are exported, so nothing is formatted for a span nobody will see.
    pub fn start<N: Into<Cow<'static, str>>>(
        &self,
        name: impl FnOnce() -> N,
        server: bool,
        parent: Option<TraceParent>,
    ) -> HopSpan {
        let Some(provider) = &self.provider else {
            let context = TraceParent {
                trace_id: parent.map_or_else(|| TraceParent::root().trace_id, |p| p.trace_id),
                span_id: random_span_id(),
                sampled: parent.is_none_or(|p| p.sampled),
            };
            return HopSpan {
                context,
                span: None,
            };
        };
        let tracer = provider.tracer("isthmus");
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(p.trace_id),
                SpanId::from_bytes(p.span_id),
                if p.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(name())
            .with_kind(if server {
                SpanKind::Server
            } else {
                SpanKind::Client
            })
            .start_with_context(&tracer, &cx);
        let sc = span.span_context();
        let context = TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            sampled: sc.is_sampled(),
        };
        HopSpan {
            context,
            span: Some(span),
        }
    }

    /// Exports what is buffered (at shutdown, or in tests).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

/// One hop's span.
pub struct HopSpan {
    context: TraceParent,
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl std::fmt::Debug for HopSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HopSpan")
            .field("context", &self.context)
            .finish()
    }
}

impl HopSpan {
    /// Whether this span is exported (attributes are worth building).
    pub fn is_recording(&self) -> bool {
        self.span.is_some()
    }

    /// The ids to pass to the next hop.
    pub fn context(&self) -> TraceParent {
        self.context
    }

    /// Adds attributes.
    pub fn set(&mut self, attrs: impl IntoIterator<Item = (&'static str, String)>) {
        if let Some(s) = &mut self.span {
            for (k, v) in attrs {
                s.set_attribute(KeyValue::new(k, v));
            }
        }
    }

    /// Ends the span; a 5xx status or a response flag marks it as an error.
    pub fn end(mut self, status: u16, flags: &str) {
        if let Some(s) = &mut self.span {
            s.set_attribute(KeyValue::new("http.status_code", i64::from(status)));
            s.set_attribute(KeyValue::new("response_flags", flags.to_owned()));
            if status >= 500 || flags != "-" {
                s.set_status(Status::error(format!("{status} {flags}")));
            }
            s.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_w3c_and_b3_and_writes_both() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let p = TraceParent::from_headers(&h).unwrap();
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(p.sampled);

        let mut b3 = HeaderMap::new();
        b3.insert("x-b3-traceid", "a3ce929d0e0e4736".parse().unwrap());
        b3.insert("x-b3-spanid", "00f067aa0ba902b7".parse().unwrap());
        b3.insert("x-b3-sampled", "1".parse().unwrap());
        let q = TraceParent::from_headers(&b3).unwrap();
        assert_eq!(q.trace_id_hex(), "0000000000000000a3ce929d0e0e4736");

        let mut out = HeaderMap::new();
        p.inject(&mut out);
        assert_eq!(
            out["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(out["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(out["x-b3-spanid"], "00f067aa0ba902b7");
        assert_eq!(out["x-b3-sampled"], "1");
        let unsampled = TraceParent {
            sampled: false,
            ..p
        };
        unsampled.inject(&mut out);
        assert_eq!(out["traceparent"], unsampled.to_w3c().as_str());
        assert!(out["traceparent"].to_str().unwrap().ends_with("-00"));
        assert_eq!(out["x-b3-sampled"], "0");
        assert!(TraceParent::from_headers(&HeaderMap::new()).is_none());
        let mut bad = HeaderMap::new();
        bad.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(
            TraceParent::from_headers(&bad).is_none(),
            "an all-zero trace id is invalid"
        );
    }

    #[test]
    fn without_a_collector_ids_still_continue_the_trace() {
        let t = Tracing::disabled();
        let parent = TraceParent {
            trace_id: [7; 16],
            span_id: [9; 8],
            sampled: true,
        };
        let span = t.start(|| "hop", false, Some(parent));
        assert_eq!(span.context().trace_id, [7; 16]);
        assert_ne!(span.context().span_id, [9; 8]);
    }
}
