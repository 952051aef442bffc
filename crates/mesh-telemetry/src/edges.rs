//! The mesh graph's edges as one proxy sees them: the calls it made, grouped by who
//! called whom (the same peers as Istio's `reporter="source"` series), with counts,
//! failures and a latency histogram, taken as a window every few seconds and reported
//! to discovery (see `isthmus.edges.v1`).
//!
//! A recorder does nothing until [`EdgeRecorder::enable`]: a proxy without a
//! discovery to report to keeps no window that nobody takes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mesh_proto::edges::Edge;

use crate::metrics::PeerLabels;

/// Latency buckets: bucket `i < BUCKETS - 1` holds durations up to
/// [`latency_bound_ms`]`(i)`, the last one everything above. The bounds grow by √2
/// from 0.25 ms (≈ 8 minutes at the last), so a quantile read from them is within
/// about 20 % of the true one.
pub const BUCKETS: usize = 45;

/// The upper bound of bucket `i`, in milliseconds (infinite for the last).
pub fn latency_bound_ms(i: usize) -> f64 {
    if i + 1 >= BUCKETS {
        f64::INFINITY
    } else {
        0.25 * 2f64.powf(i as f64 / 2.0)
    }
}

/// The bucket a duration falls in.
pub fn bucket_of(ms: f64) -> usize {
    if ms.is_nan() || ms <= 0.25 {
        return 0;
    }
    let i = (2.0 * (ms / 0.25).log2()).ceil();
    // A duration exactly on a bound belongs to that bound's bucket; rounding in the
    // logarithm may land one above.
    let i = i as usize;
    let i = if i > 0 && ms <= latency_bound_ms(i - 1) {
        i - 1
    } else {
        i
    };
    i.min(BUCKETS - 1)
}

/// The `q` quantile (0–1) of the durations counted in `buckets`, interpolated within
/// its bucket; `None` when nothing was counted.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { latency_bound_ms(i - 1) };
            let upper = latency_bound_ms(i);
            if upper.is_infinite() {
                return Some(lower);
            }
            let within = (rank - seen as f64) / n as f64;
            return Some(lower + (upper - lower) * within);
        }
        seen += n;
    }
    None
}

/// What a call was carried as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2.
    Http,
    /// gRPC.
    Grpc,
    /// A TCP connection.
    Tcp,
}

impl Protocol {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
        }
    }
}

/// One finished call.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// What it was carried as.
    pub protocol: Protocol,
    /// It went through the destination network's east-west gateway.
    pub via_gateway: bool,
    /// It failed (5xx, no upstream, refused, connection failed).
    pub failed: bool,
    /// How long it took (requests; connections have none).
    pub duration_ms: Option<f64>,
}

#[derive(Debug)]
struct Slot {
    peers: Arc<PeerLabels>,
    protocol: Protocol,
    via_gateway: bool,
    requests: u64,
    errors: u64,
    latency: [u64; BUCKETS],
}

/// More distinct slots than this in one window and the window starts again: a
/// window is taken every few seconds, so only a proxy whose reports stopped gets here.
const MAX_SLOTS: usize = 4096;

#[derive(Debug)]
struct Window {
    started: Instant,
    /// By the address of the interned peers, the protocol and the gateway hop: no
    /// label string is hashed per call.
    slots: HashMap<(usize, Protocol, bool), Slot>,
}

/// The calls of the current window.
#[derive(Debug, Clone)]
pub struct EdgeRecorder {
    enabled: Arc<AtomicBool>,
    window: Arc<Mutex<Window>>,
}

impl Default for EdgeRecorder {
    fn default() -> Self {
        Self {
            enabled: Arc::default(),
            window: Arc::new(Mutex::new(Window {
                started: Instant::now(),
                slots: HashMap::new(),
            })),
        }
    }
}

fn or_workload<'a>(app: &'a str, workload: &'a str) -> &'a str {
    if app.is_empty() || app == "unknown" {
        workload
    } else {
        app
    }
}

impl EdgeRecorder {
    /// Starts recording (a reporter takes the windows from now on).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
        if let Ok(mut w) = self.window.lock() {
            w.started = Instant::now();
            w.slots.clear();
        }
    }

    /// Counts one call between `peers` (interned labels, as the metrics take them).
    pub fn observe(&self, peers: &Arc<PeerLabels>, call: Call) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        let key = (Arc::as_ptr(peers) as usize, call.protocol, call.via_gateway);
        if !w.slots.contains_key(&key) && w.slots.len() >= MAX_SLOTS {
            w.slots.clear();
            w.started = Instant::now();
        }
        let slot = w.slots.entry(key).or_insert_with(|| Slot {
            peers: peers.clone(),
            protocol: call.protocol,
            via_gateway: call.via_gateway,
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
        });
        slot.requests += 1;
        slot.errors += u64::from(call.failed);
        if let Some(ms) = call.duration_ms {
            slot.latency[bucket_of(ms)] += 1;
        }
    }

    /// The window since the last take, one edge per distinct caller, callee, protocol,
    /// security and hop (labels interned twice, say across a config push, are one
    /// edge), in no order, and a new window begun.
    pub fn take(&self) -> Vec<Edge> {
        let Ok(mut w) = self.window.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let window_ms = now
            .duration_since(w.started)
            .as_millis()
            .min(u32::MAX as u128) as u32;
        w.started = now;
        let slots = std::mem::take(&mut w.slots);
        drop(w);
        let mut edges: HashMap<Edge, Edge> = HashMap::new();
        for slot in slots.into_values() {
            let p = &slot.peers;
            let key = Edge {
                source_cluster: p.source_cluster.clone(),
                source_namespace: p.source_workload_namespace.clone(),
                source_app: or_workload(&p.source_app, &p.source_workload).to_owned(),
                source_version: p.source_version.clone(),
                destination_service: p.destination_service.clone(),
                destination_cluster: p.destination_cluster.clone(),
                destination_namespace: p.destination_workload_namespace.clone(),
                destination_app: or_workload(&p.destination_app, &p.destination_workload)
                    .to_owned(),
                destination_version: p.destination_version.clone(),
                protocol: slot.protocol.as_str().to_owned(),
                mtls: p.connection_security_policy == "mutual_tls",
                via_gateway: slot.via_gateway,
                window_ms,
                ..Default::default()
            };
            let edge = edges.entry(key.clone()).or_insert_with(|| Edge {
                latency: vec![0; BUCKETS],
                ..key
            });
            edge.requests += slot.requests;
            edge.errors += slot.errors;
            for (sum, n) in edge.latency.iter_mut().zip(slot.latency) {
                *sum += n;
            }
        }
        edges.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(dst_cluster: &str, mtls: bool) -> Arc<PeerLabels> {
        Arc::new(PeerLabels {
            reporter: "source".into(),
            source_workload: "frontpage-7f9".into(),
            source_workload_namespace: "sample".into(),
            source_app: "frontpage".into(),
            source_version: "v1".into(),
            source_cluster: "east".into(),
            destination_workload: "reviews".into(),
            destination_workload_namespace: "sample".into(),
            destination_app: "reviews".into(),
            destination_version: "v2".into(),
            destination_service: "reviews.sample.svc.cluster.local".into(),
            destination_cluster: dst_cluster.into(),
            connection_security_policy: if mtls { "mutual_tls" } else { "none" }.into(),
            ..Default::default()
        })
    }

    fn http(failed: bool, ms: f64, via_gateway: bool) -> Call {
        Call {
            protocol: Protocol::Http,
            via_gateway,
            failed,
            duration_ms: Some(ms),
        }
    }

    #[test]
    fn buckets_hold_their_bounds_and_quantiles_land_in_them() {
        assert_eq!(bucket_of(0.1), 0);
        assert_eq!(bucket_of(0.25), 0);
        for i in 0..BUCKETS - 1 {
            let bound = latency_bound_ms(i);
            assert_eq!(bucket_of(bound), i, "bound {bound}");
            assert_eq!(bucket_of(bound * 1.01), (i + 1).min(BUCKETS - 1));
        }
        assert_eq!(bucket_of(1e9), BUCKETS - 1);

        // 90 fast calls (≈ 2 ms), 10 slow ones (≈ 200 ms).
        let mut b = vec![0u64; BUCKETS];
        b[bucket_of(2.0)] += 90;
        b[bucket_of(200.0)] += 10;
        let p50 = quantile(&b, 0.5).unwrap();
        let p99 = quantile(&b, 0.99).unwrap();
        // Each quantile lies in the bucket of the durations it stands for.
        let within = |v: f64, ms: f64| {
            let i = bucket_of(ms);
            v > latency_bound_ms(i - 1) && v <= latency_bound_ms(i)
        };
        assert!(within(p50, 2.0), "p50 {p50}");
        assert!(within(p99, 200.0), "p99 {p99}");
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }

    #[test]
    fn a_window_groups_calls_by_edge_and_starts_again_when_taken() {
        let rec = EdgeRecorder::default();
        let west = peers("west", true);
        // Not enabled: nothing is kept.
        rec.observe(&west, http(false, 1.0, true));
        assert!(rec.take().is_empty());

        rec.enable();
        for i in 0..10 {
            rec.observe(&west, http(i == 0, 3.0, true));
        }
        // The same peers interned again (a config push) are the same edge.
        rec.observe(&peers("west", true), http(false, 3.0, true));
        // Another destination cluster, plaintext and direct, is another.
        rec.observe(&peers("east", false), http(false, 1.0, false));
        let edges = rec.take();
        assert_eq!(edges.len(), 2, "{edges:?}");
        let cross = edges
            .iter()
            .find(|e| e.destination_cluster == "west")
            .unwrap();
        assert_eq!((cross.requests, cross.errors), (11, 1));
        assert!(cross.mtls && cross.via_gateway);
        assert_eq!(
            (
                cross.source_app.as_str(),
                cross.destination_version.as_str()
            ),
            ("frontpage", "v2")
        );
        assert_eq!(cross.latency[bucket_of(3.0)], 11);
        let local = edges
            .iter()
            .find(|e| e.destination_cluster == "east")
            .unwrap();
        assert!(!local.mtls && !local.via_gateway);
        assert!(rec.take().is_empty(), "a taken window is not counted again");
    }
}
