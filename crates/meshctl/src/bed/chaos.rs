//! `meshctl testbed chaos NAME`: faults injected into a running testbed under load from
//! a real client (the curl workload of the first cluster, through its sidecar, in its
//! pod when the testbed runs pods), with what was measured: requests sent and failed,
//! latencies, and how long recovery took. Each scenario states what it must show and
//! fails (non-zero exit) when it does not.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::plan::{Cluster, Plan, Workload};
use super::supervisor::State;
use super::{apps, configure_in, control, ready_state};

/// The scenarios, in the order `all` runs them.
pub(crate) const SCENARIOS: &[(&str, &str)] = &[
    (
        "local-discovery",
        "the first cluster's discovery is stopped under load, then started: 0 failed requests; its proxies resync",
    ),
    (
        "remote-discovery",
        "the second cluster's discovery is stopped for 3× the lease: 0 failed cross-cluster requests while its gateway is healthy",
    ),
    (
        "remote-gateway",
        "the second cluster's gateway is stopped: requests to its services fail fast (< 1 s) with 503, and recover once it is back",
    ),
    (
        "partition",
        "the network between the clusters is cut (pods): the other cluster's stale endpoints are withdrawn once its gateway fails its checks, and are back within seconds of healing",
    ),
    (
        "link-rotation",
        "the link Secrets are rotated under load (a new trust bundle, then back): 0 failed requests",
    ),
    (
        "link-churn",
        "a link is rotated twice quickly, then deleted: none of the peer's endpoints comes back, its roots are no longer trusted (a handshake under them fails)",
    ),
    (
        "root-rotation",
        "the mesh root is rotated A → A+B → B under load: 0 failed requests, every proxy ends on a B-signed certificate",
    ),
    (
        "claimed-gateway",
        "a workload identity claiming to be a gateway gets its own namespace's view, not the gateway's",
    ),
    (
        "foreign-discovery",
        "a discovery identity of another namespace or trust domain is refused peering, with the reason in the log and `multicluster status`",
    ),
    (
        "apiserver",
        "the first cluster's API server is stopped under load, then started: 0 failed requests; discovery resyncs after",
    ),
];

/// What a scenario measured.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Named timings, seconds.
    pub(crate) timings: Vec<(String, f64)>,
    /// What was checked, each with whether it held.
    pub(crate) checks: Vec<(String, bool)>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    fn check(&mut self, what: impl Into<String>, held: bool) {
        self.checks.push((what.into(), held));
    }

    fn timing(&mut self, what: &str, d: Duration) {
        self.timings.push((what.into(), d.as_secs_f64()));
    }

    pub(super) fn passed(&self) -> bool {
        self.checks.iter().all(|(_, ok)| *ok)
    }

    fn add_load(&mut self, load: &LoadResult) {
        self.requests += load.sent();
        self.failed += load.failed();
        self.latencies(load.samples.iter().map(|s| s.ms).collect());
    }

    fn latencies(&mut self, mut ms: Vec<f64>) {
        ms.sort_by(f64::total_cmp);
        let q = |p: f64| {
            ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        self.p50_ms = q(0.5);
        self.p99_ms = q(0.99);
        self.max_ms = ms.last().copied().unwrap_or(0.0);
    }

    pub(super) fn print(&self) {
        println!("chaos {}:", self.scenario);
        if self.requests > 0 {
            println!(
                "  requests: {} sent, {} failed; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.requests, self.failed, self.p50_ms, self.p99_ms, self.max_ms
            );
        }
        for (what, s) in &self.timings {
            println!("  {what}: {s:.2} s");
        }
        for n in &self.notes {
            println!("  {n}");
        }
        for (what, ok) in &self.checks {
            println!("  {} {what}", if *ok { "✔" } else { "✘" });
        }
        println!("  {}", if self.passed() { "PASS" } else { "FAIL" });
    }
}

/// Runs scenario `name` (or `all`) against the testbed in `dir`.
pub(crate) fn run(dir: &Path, name: &str, outage: Duration, json: bool) -> anyhow::Result<()> {
    let names: Vec<&str> = if name == "all" {
        SCENARIOS.iter().map(|(n, _)| *n).collect()
    } else {
        anyhow::ensure!(
            SCENARIOS.iter().any(|(n, _)| *n == name),
            "unknown chaos scenario {name:?}; one of: all, {}",
            SCENARIOS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
        vec![name]
    };
    let mut failed = Vec::new();
    for n in names {
        let (state, plan) = ready_state(dir)?;
        anyhow::ensure!(
            plan.clusters.len() >= 2,
            "chaos scenarios need two clusters (testbed up --clusters 2)"
        );
        let what = SCENARIOS
            .iter()
            .find(|(s, _)| *s == n)
            .map(|(_, w)| *w)
            .unwrap_or_default();
        if !json {
            println!("\nScenario {n}: {what}.");
        }
        let bed = Bed::new(dir, &state, &plan)?;
        let mut report = Report {
            scenario: n.into(),
            ..Default::default()
        };
        let result = match n {
            "local-discovery" => local_discovery(&bed, &mut report, outage),
            "remote-discovery" => remote_discovery(&bed, &mut report),
            "remote-gateway" => remote_gateway(&bed, &mut report, outage),
            "partition" => partition(&bed, &mut report),
            "link-rotation" => link_rotation(&bed, &mut report),
            "link-churn" => link_churn(&bed, &mut report),
            "root-rotation" => root_rotation(&bed, &mut report),
            "claimed-gateway" => claimed_gateway(&bed, &mut report),
            "foreign-discovery" => foreign_discovery(&bed, &mut report),
            "apiserver" => apiserver(&bed, &mut report, outage),
            _ => unreachable!("checked above"),
        };
        if let Err(e) = result {
            report.check(format!("the scenario ran to its end: {e:#}"), false);
        }
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            report.print();
        }
        if !report.passed() {
            failed.push(n);
        }
    }
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

/// The testbed a scenario works on.
pub(super) struct Bed<'a> {
    pub(super) dir: &'a Path,
    pub(super) state: &'a State,
    pub(super) plan: &'a Plan,
    pub(super) rt: tokio::runtime::Runtime,
}

impl<'a> Bed<'a> {
    /// The testbed in `dir`, as `state` and `plan` describe it.
    pub(super) fn new(dir: &'a Path, state: &'a State, plan: &'a Plan) -> anyhow::Result<Self> {
        Ok(Bed {
            dir,
            state,
            plan,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    pub(super) fn east(&self) -> &Cluster {
        &self.plan.clusters[0]
    }

    pub(super) fn west(&self) -> &Cluster {
        &self.plan.clusters[1]
    }

    fn curl(&self) -> anyhow::Result<&Workload> {
        super::curl_of(self.east())
    }

    fn get_json(&self, addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self
            .rt
            .block_on(mesh_net::http::get(addr, path))
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("GET http://{addr}{path}"))?;
        anyhow::ensure!(status.is_success(), "GET http://{addr}{path}: {status}");
        Ok(serde_json::from_str(&body)?)
    }

    fn metric(&self, addr: SocketAddr, name: &str) -> Option<f64> {
        let (_, body) = self
            .rt
            .block_on(mesh_net::http::get(addr, "/metrics"))
            .ok()?;
        body.lines()
            .any(|l| l.split([' ', '{']).next() == Some(name))
            .then(|| mesh_telemetry::metrics::sum_of(&body, name, &[]))
    }

    /// The link to `peer` as the discovery of `cluster` shows it.
    fn link(&self, cluster: &Cluster, peer: &str) -> Option<serde_json::Value> {
        self.get_json(cluster.monitor, "/debug/links")
            .ok()?
            .as_array()?
            .iter()
            .find(|l| l["link"]["cluster"] == peer)
            .cloned()
    }

    /// Every proxy of the testbed (sidecars and gateways): name and admin address.
    fn proxies(&self) -> Vec<(String, SocketAddr)> {
        self.plan
            .clusters
            .iter()
            .flat_map(|c| {
                std::iter::once((format!("gateway-{}", c.name), c.gateway_admin))
                    .chain(c.workloads.iter().map(|w| (w.name.clone(), w.admin())))
            })
            .collect()
    }

    /// A GET from curl in the first cluster: (status, body).
    fn request(&self, authority: &str, path: &str) -> Result<(u16, String), String> {
        let curl = self.curl().map_err(|e| e.to_string())?;
        apps::get_from(self.plan, self.east(), curl, authority, path, None)
    }

    /// Requests every `interval` in the background until stopped.
    pub(super) fn load(&self, authority: &str, expect: &'static str) -> anyhow::Result<Load> {
        let (plan, cluster, curl) = (self.plan.clone(), self.east().clone(), self.curl()?.clone());
        let authority = authority.to_owned();
        let authority_now = authority.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = apps::get_from(&plan, &cluster, &curl, &authority, "/", None);
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let (status, ok, detail) = match r {
                    Ok((s, body)) => (s, s == 200 && body.contains(expect), body),
                    Err(e) => (0, false, e),
                };
                samples.push(Sample {
                    at: t.duration_since(started),
                    ms,
                    status,
                    ok,
                    detail: if ok { String::new() } else { detail },
                });
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        // Wait for the first answer, so the fault lands on a steady load.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = self.request(&authority_now, "/")
                && body.contains(expect)
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no successful request before the fault"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Load { stop, handle })
    }

    /// Waits until `f` holds (polling), or `timeout`: how long it took.
    pub(super) fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while !f() {
            anyhow::ensure!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(start.elapsed())
    }

    fn lease(&self) -> Duration {
        parse_duration(&self.state.peering_lease).unwrap_or(Duration::from_secs(30))
    }

    fn cert_ttl(&self) -> Duration {
        parse_duration(&self.state.cert_ttl).unwrap_or(Duration::from_secs(3600))
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    s.parse::<mesh_api::Duration>().ok().map(Duration::from)
}

struct Sample {
    at: Duration,
    ms: f64,
    status: u16,
    ok: bool,
    detail: String,
}

pub(super) struct Load {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Sample>>,
}

pub(super) struct LoadResult {
    samples: Vec<Sample>,
}

impl Load {
    pub(super) fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        LoadResult {
            samples: self.handle.join().unwrap_or_default(),
        }
    }
}

impl LoadResult {
    pub(super) fn sent(&self) -> u64 {
        self.samples.len() as u64
    }

    pub(super) fn failed(&self) -> u64 {
        self.samples.iter().filter(|s| !s.ok).count() as u64
    }

    /// The first failures, for the report.
    pub(super) fn failures(&self) -> Vec<String> {
        self.samples
            .iter()
            .filter(|s| !s.ok)
            .take(3)
            .map(|s| {
                format!(
                    "at {:.2} s: {} {}",
                    s.at.as_secs_f64(),
                    s.status,
                    s.detail.lines().next().unwrap_or_default()
                )
            })
            .collect()
    }
}

/// The cross-cluster chain: curl (first cluster) → frontpage → reviews (second) →
/// ratings (first).
pub(super) const CHAIN: &str = "frontpage:9080";

fn finish_load(report: &mut Report, load: Load) -> LoadResult {
    let result = load.finish();
    report.add_load(&result);
    for f in result.failures() {
        report.notes.push(format!("failed request {f}"));
    }
    result
}

fn local_discovery(bed: &Bed, report: &mut Report, outage: Duration) -> anyhow::Result<()> {
    let east = bed.east();
    let name = format!("discovery-{}", east.name);
    let proxies = east.workloads.len() as f64 + 1.0;
    let load = bed.load(CHAIN, "ratings")?;
    std::thread::sleep(Duration::from_secs(1));
    control(bed.state, "stop", &name)?;
    std::thread::sleep(outage);
    control(bed.state, "start", &name)?;
    let restarted = Instant::now();
    let resync = bed.wait("proxies resync", Duration::from_secs(60), || {
        bed.metric(east.monitor, "isthmus_discovery_connected_proxies")
            .is_some_and(|n| n >= proxies)
    });
    std::thread::sleep(Duration::from_secs(1));
    let result = finish_load(report, load);
    report.timing("outage", outage);
    let resynced = resync.is_ok();
    if resynced {
        report.timing(
            "from the restart to every proxy's stream open again",
            restarted.elapsed().min(resync.unwrap_or_default()),
        );
    }
    report.check("0 failed requests", result.failed() == 0);
    report.check(
        format!("all {proxies} proxies of {} resynced", east.name),
        resynced,
    );
    Ok(())
}

fn remote_discovery(bed: &Bed, report: &mut Report) -> anyhow::Result<()> {
    let (east, west) = (bed.east(), bed.west());
    let name = format!("discovery-{}", west.name);
    let outage = bed.lease() * 3;
    let load = bed.load(CHAIN, "ratings")?;
    std::thread::sleep(Duration::from_secs(1));
    control(bed.state, "stop", &name)?;
    let stopped = Instant::now();
    let mut stale_after = None;
    while stopped.elapsed() < outage {
        if stale_after.is_none()
            && bed
                .link(east, &west.name)
                .is_some_and(|l| l["state"] == "stale")
        {
            stale_after = Some(stopped.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let state_at_end = bed
        .link(east, &west.name)
        .map(|l| l["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    control(bed.state, "start", &name)?;
    let back = bed.wait("the link connected again", Duration::from_secs(60), || {
        bed.link(east, &west.name)
            .is_some_and(|l| l["state"] == "connected")
    });
    let result = finish_load(report, load);
    report.timing("outage (3× the lease)", outage);
    if let Some(s) = stale_after {
        report.timing("until the peer's endpoints turned stale", s);
    }
    if let Ok(b) = &back {
        report.timing("from the restart to the link connected again", *b);
    }
    report.check("0 failed cross-cluster requests", result.failed() == 0);
    report.check(
        "the lease expired and the endpoints were kept as stale",
        stale_after.is_some() && state_at_end == "stale",
    );
    report.check("the link reconnected after the restart", back.is_ok());
    Ok(())
}

fn remote_gateway(bed: &Bed, report: &mut Report, outage: Duration) -> anyhow::Result<()> {
    let west = bed.west();
    let name = format!("gateway-{}", west.name);
    // reviews runs only in the second cluster: with its gateway down there is nowhere
    // else to go.
    let _ = bed.load("reviews:9080", "reviews")?.finish();
    control(bed.state, "stop", &name)?;
    let mut down = Vec::new();
    let stopped = Instant::now();
    while stopped.elapsed() < outage {
        let t = Instant::now();
        let r = bed.request("reviews:9080", "/");
        down.push((t.elapsed(), r));
        std::thread::sleep(Duration::from_millis(50));
    }
    control(bed.state, "start", &name)?;
    let back = bed.wait("requests succeed again", Duration::from_secs(60), || {
        matches!(bed.request("reviews:9080", "/"), Ok((200, _)))
    });
    let slowest = down.iter().map(|(d, _)| *d).max().unwrap_or_default();
    let all_503 = down.iter().all(|(_, r)| matches!(r, Ok((503, _))));
    report.requests = down.len() as u64;
    report.failed = down
        .iter()
        .filter(|(_, r)| !matches!(r, Ok((200, _))))
        .count() as u64;
    report.latencies(down.iter().map(|(d, _)| d.as_secs_f64() * 1000.0).collect());
    if let Some((_, r)) = down.first() {
        report.notes.push(format!(
            "answer while the gateway is down: {}",
            match r {
                Ok((s, body)) => format!("{s} {}", body.lines().next().unwrap_or_default()),
                Err(e) => e.clone(),
            }
        ));
    }
    if let Ok(b) = &back {
        report.timing("from the gateway's restart to the first success", *b);
    }
    report.check(
        "every request while it is down fails with 503",
        !down.is_empty() && all_503,
    );
    report.check(
        format!(
            "each fails fast (slowest {:.0} ms < 1 s)",
            slowest.as_secs_f64() * 1000.0
        ),
        slowest < Duration::from_secs(1),
    );
    report.check("traffic recovers once the gateway is back", back.is_ok());
    Ok(())
}

/// The link Secret the testbed applied in `cluster` for `peer`.
fn link_secret(bed: &Bed, cluster: &Cluster, peer: &Cluster) -> anyhow::Result<String> {
    let path = bed
        .dir
        .join(&cluster.name)
        .join(format!("link-{}.yaml", peer.name));
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Replaces the PEM block of the `trustBundle` key of a rendered link Secret.
fn with_trust_bundle(secret: &str, pem: &str) -> String {
    let mut out = String::new();
    let mut in_bundle = false;
    for line in secret.lines() {
        if in_bundle {
            if line.starts_with("    ") {
                continue;
            }
            in_bundle = false;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("trustBundle:") {
            in_bundle = true;
            for l in pem.trim_end().lines() {
                out.push_str(&format!("    {l}\n"));
            }
        }
    }
    out
}

fn apply_link(bed: &Bed, cluster: &Cluster, peer: &Cluster, yaml: &str) -> anyhow::Result<()> {
    configure_in(
        bed.state,
        Some(&cluster.name),
        &format!("link-{}.yaml", peer.name),
        yaml,
        false,
    )
}

pub(super) fn link_rotation(bed: &Bed, report: &mut Report) -> anyhow::Result<()> {
    let (east, west) = (bed.east(), bed.west());
    let td: mesh_identity::TrustDomain = bed.plan.trust_domain.parse()?;
    let extra = mesh_identity::RootCa::generate(&td, mesh_identity::ca::ROOT_VALIDITY)?;
    let root = std::fs::read_to_string(bed.dir.join("root-cert.pem"))?;
    let load = bed.load(CHAIN, "ratings")?;
    std::thread::sleep(Duration::from_secs(1));
    let td_name = bed.plan.trust_domain.clone();
    let roots_of = |c: &Cluster| {
        bed.get_json(c.monitor, "/debug/certs")
            .ok()
            .and_then(|v| v["trust_roots"][&td_name].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    for (bundle, label, roots) in [
        (
            format!("{root}{}", extra.cert_pem()),
            "with a second root",
            2,
        ),
        (root.clone(), "back to the mesh root", 1),
    ] {
        for (c, p) in [(east, west), (west, east)] {
            let secret = with_trust_bundle(&link_secret(bed, c, p)?, &bundle);
            apply_link(bed, c, p, &secret)?;
        }
        let t = bed.wait(
            &format!("the rotated links ({label}) connected"),
            Duration::from_secs(60),
            || {
                [(east, west), (west, east)].iter().all(|(c, p)| {
                    roots_of(c) == roots
                        && bed
                            .link(c, &p.name)
                            .is_some_and(|l| l["state"] == "connected")
                })
            },
        )?;
        report.timing(
            &format!("rotation {label}: in force in both clusters ({roots} root(s) trusted), links connected"),
            t,
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let result = finish_load(report, load);
    report.check("0 failed requests", result.failed() == 0);
    Ok(())
}

/// A TLS handshake to `addr` as `identity` (then an HTTP/2 preface): whether the
/// server accepted the certificate.
async fn handshake(
    addr: SocketAddr,
    identity: &mesh_identity::Identity,
    server_trust: mesh_identity::TrustConfig,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = identity.client_config_with_trust(server_trust, vec![], &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("discovery")
        .map_err(|e| e.to_string())?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// A discovery identity under a root of its own (not the mesh's), and that root.
fn foreign_identity(
    td: &mesh_identity::TrustDomain,
    namespace: &str,
) -> anyhow::Result<(mesh_identity::Identity, mesh_identity::RootCa)> {
    let root = mesh_identity::RootCa::generate(td, mesh_identity::ca::ROOT_VALIDITY)?;
    let ca = root.intermediate("foreign", mesh_identity::ca::INTERMEDIATE_VALIDITY)?;
    let id = mesh_identity::SpiffeId::new(td.clone(), namespace, discovery::SERVICE_ACCOUNT)?;
    let cert = ca
        .issue_workload(&id, Duration::from_secs(3600))?
        .load("foreign")?;
    let bundle =
        mesh_identity::TrustBundle::from_pem(td.clone(), root.cert_pem().as_bytes(), "foreign")?;
    let identity =
        mesh_identity::Identity::new(cert, mesh_identity::TrustConfig::new(td.clone(), bundle))?;
    Ok((identity, root))
}

/// The trust under which testbed discovery certificates verify.
fn mesh_trust(bed: &Bed) -> anyhow::Result<mesh_identity::TrustConfig> {
    let td: mesh_identity::TrustDomain = bed.plan.trust_domain.parse()?;
    let pem = std::fs::read_to_string(bed.dir.join("root-cert.pem"))?;
    let bundle = mesh_identity::TrustBundle::from_pem(td.clone(), pem.as_bytes(), "mesh root")?;
    Ok(mesh_identity::TrustConfig::new(td, bundle))
}

/// Remote endpoints (of cluster `peer`) in a proxy's config dump.
fn endpoints_from(bed: &Bed, admin: SocketAddr, peer: &str) -> anyhow::Result<usize> {
    let dump = bed.get_json(admin, "/config_dump")?;
    Ok(dump["services"]
        .as_array()
        .map(|s| {
            s.iter()
                .flat_map(|svc| svc["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["cluster"] == peer)
                .count()
        })
        .unwrap_or(0))
}

fn link_churn(bed: &Bed, report: &mut Report) -> anyhow::Result<()> {
    let (east, west) = (bed.east(), bed.west());
    let curl = bed.curl()?.admin();
    let original = link_secret(bed, east, west)?;
    let td: mesh_identity::TrustDomain = bed.plan.trust_domain.parse()?;
    // The second version names an extra root, whose workloads the first cluster then
    // trusts; it must stop trusting them once the link is deleted.
    let (foreign, foreign_root) = foreign_identity(&td, "istio-system")?;
    let root = std::fs::read_to_string(bed.dir.join("root-cert.pem"))?;
    let trust = mesh_trust(bed)?;
    let before = endpoints_from(bed, curl, &west.name)?;
    report.notes.push(format!(
        "{} endpoints of {} in curl's config before",
        before, west.name
    ));
    // Version 1: its discovery cannot be reached (it never syncs).
    let unreachable = original.replace(&west.discovery.to_string(), "127.0.0.1:9");
    apply_link(bed, east, west, &unreachable)?;
    std::thread::sleep(Duration::from_millis(1500));
    // Version 2: reachable again, with the extra root.
    let v2 = with_trust_bundle(&original, &format!("{root}{}", foreign_root.cert_pem()));
    apply_link(bed, east, west, &v2)?;
    bed.wait("version 2 connected", Duration::from_secs(60), || {
        bed.link(east, &west.name).is_some_and(|l| {
            l["state"] == "connected" && l["link"]["discoveryAddress"] == west.discovery.to_string()
        })
    })?;
    let trusted_while_linked = bed
        .rt
        .block_on(handshake(east.discovery, &foreign, trust.clone()));
    // Deleted.
    configure_in(
        bed.state,
        Some(&east.name),
        &format!("link-{}.yaml", west.name),
        &original,
        true,
    )?;
    let deleted = Instant::now();
    let gone = bed.wait(
        "the peer's endpoints withdrawn",
        Duration::from_secs(30),
        || endpoints_from(bed, curl, &west.name).is_ok_and(|n| n == 0),
    );
    // Longer than a lease: any subscription of an earlier version would have
    // reconnected and synced by now.
    let watch = bed.lease() + Duration::from_secs(3);
    let mut came_back = 0;
    while deleted.elapsed() < watch + Duration::from_secs(1) {
        came_back = came_back.max(endpoints_from(bed, curl, &west.name).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(250));
    }
    let link_listed = bed.link(east, &west.name).is_some();
    let refused_after = bed.rt.block_on(handshake(east.discovery, &foreign, trust));
    // Put the link back as it was.
    apply_link(bed, east, west, &original)?;
    let restored = bed.wait(
        "traffic back",
        Duration::from_secs(60),
        || matches!(bed.request(CHAIN, "/"), Ok((200, b)) if b.contains("ratings")),
    );
    if let Ok(g) = &gone {
        report.timing("from the delete to the endpoints withdrawn", *g);
    }
    report.timing("watched after the delete", watch);
    if let Ok(r) = &restored {
        report.timing("link re-applied: traffic back", *r);
    }
    report.notes.push(format!(
        "a discovery certificate under the extra root: while linked {}, after the delete {}",
        match &trusted_while_linked {
            Ok(()) => "accepted".to_owned(),
            Err(e) => format!("refused ({e})"),
        },
        match &refused_after {
            Ok(()) => "accepted".to_owned(),
            Err(e) => format!("refused ({e})"),
        },
    ));
    report.check("the peer's endpoints were there before", before > 0);
    report.check("withdrawn at the delete", gone.is_ok());
    report.check(
        format!("none came back within {watch:?}"),
        came_back == 0 && !link_listed,
    );
    report.check(
        "the link's extra root was trusted while linked, and not after the delete",
        trusted_while_linked.is_ok() && refused_after.is_err(),
    );
    report.check("the re-applied link restores traffic", restored.is_ok());
    Ok(())
}

/// What a proxy's `/certs` says: its issuer's serial and the serials of the roots it
/// trusts for the mesh's trust domain.
type Certs = (String, Vec<String>);

/// Per proxy (and discovery service): its certificates, when it answered.
fn proxy_certs(bed: &Bed) -> Vec<(String, Option<Certs>)> {
    let td = bed.plan.trust_domain.clone();
    let mut all: Vec<(String, SocketAddr)> = bed.proxies();
    for c in &bed.plan.clusters {
        all.push((format!("discovery-{}", c.name), c.monitor));
    }
    all.into_iter()
        .map(|(name, admin)| {
            let path = if name.starts_with("discovery-") {
                "/debug/certs"
            } else {
                "/certs"
            };
            let certs = bed.get_json(admin, path).ok().map(|v| {
                (
                    v["issuer_serial"].as_str().unwrap_or_default().to_owned(),
                    v["trust_roots"][&td]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| s.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            });
            (name, certs)
        })
        .collect()
}

fn write_cacerts(dir: &Path, ca: &mesh_identity::ClusterCa, roots: &str) -> anyhow::Result<()> {
    let write = |file: &str, text: &str| -> anyhow::Result<()> {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(file))?;
        Ok(())
    };
    let staging = tempfile::tempdir()?;
    ca.write(staging.path())?;
    // Roots first: the set in force stays valid with either intermediate.
    write("root-cert.pem", roots)?;
    for f in ["ca-key.pem", "ca-cert.pem", "cert-chain.pem"] {
        write(f, &std::fs::read_to_string(staging.path().join(f))?)?;
    }
    Ok(())
}

fn root_rotation(bed: &Bed, report: &mut Report) -> anyhow::Result<()> {
    let ttl = bed.cert_ttl();
    anyhow::ensure!(
        ttl <= Duration::from_secs(300),
        "the proxies' certificates live {ttl:?}: each step waits for every proxy to renew; bring the testbed up with `--cert-ttl 20s` (or up to 5m) for this scenario"
    );
    let step_timeout = ttl * 2 + Duration::from_secs(20);
    let td: mesh_identity::TrustDomain = bed.plan.trust_domain.parse()?;
    let root_a = std::fs::read_to_string(bed.dir.join("root-cert.pem"))?;
    let root_b = mesh_identity::RootCa::generate(&td, mesh_identity::ca::ROOT_VALIDITY)?;
    let serial_of = |pem: &str| -> anyhow::Result<String> {
        let der = mesh_identity::cert::parse_certs(pem.as_bytes(), "root")?;
        Ok(mesh_identity::cert::CertInfo::parse(&der[0], "root")?.serial)
    };
    let (serial_a, serial_b) = (serial_of(&root_a)?, serial_of(root_b.cert_pem())?);
    let both = format!("{root_a}{}", root_b.cert_pem());
    let set_roots = |roots: &str| -> anyhow::Result<()> {
        // The proxies' bootstrap root and every link's trust bundle.
        std::fs::write(bed.dir.join("root-cert.pem"), roots)?;
        for c in &bed.plan.clusters {
            for p in bed.plan.clusters.iter().filter(|p| p.name != c.name) {
                let secret = with_trust_bundle(&link_secret(bed, c, p)?, roots);
                std::fs::write(
                    bed.dir.join(&c.name).join(format!("link-{}.yaml", p.name)),
                    &secret,
                )?;
                apply_link(bed, c, p, &secret)?;
            }
        }
        Ok(())
    };
    let load = bed.load(CHAIN, "ratings")?;
    std::thread::sleep(Duration::from_secs(1));

    // 1. A+B: both roots trusted everywhere, the intermediates still A's.
    let mut intermediates = Vec::new();
    for c in &bed.plan.clusters {
        let dir = bed.dir.join(&c.name).join("cacerts");
        let current = mesh_identity::ClusterCa::load(&dir)?;
        write_cacerts(&dir, &current, &both)?;
    }
    set_roots(&both)?;
    let t1 = bed.wait("every proxy trusts A and B", step_timeout, || {
        proxy_certs(bed).iter().all(|(_, c)| {
            c.as_ref()
                .is_some_and(|(_, roots)| roots.contains(&serial_a) && roots.contains(&serial_b))
        })
    });
    report.timing(
        "step 1 (roots A+B): every proxy and discovery trusts both",
        t1?,
    );
    // 2. Intermediates under B.
    for c in &bed.plan.clusters {
        let dir = bed.dir.join(&c.name).join("cacerts");
        let ca = root_b.intermediate(&c.name, mesh_identity::ca::INTERMEDIATE_VALIDITY)?;
        intermediates.push(ca.info().serial.clone());
        write_cacerts(&dir, &ca, &both)?;
    }
    let t2 = bed.wait(
        "every proxy holds a B-signed certificate",
        step_timeout,
        || {
            proxy_certs(bed).iter().all(|(_, c)| {
                c.as_ref()
                    .is_some_and(|(issuer, _)| intermediates.contains(issuer))
            })
        },
    );
    report.timing(
        "step 2 (intermediates under B): every certificate B-signed",
        t2?,
    );
    // 3. B alone.
    for (c, serial) in bed.plan.clusters.iter().zip(&intermediates) {
        let dir = bed.dir.join(&c.name).join("cacerts");
        let ca = mesh_identity::ClusterCa::load(&dir)?;
        anyhow::ensure!(
            &ca.info().serial == serial,
            "cacerts of {} changed meanwhile",
            c.name
        );
        write_cacerts(&dir, &ca, root_b.cert_pem())?;
    }
    set_roots(root_b.cert_pem())?;
    let t3 = bed.wait("every proxy trusts B alone", step_timeout, || {
        proxy_certs(bed).iter().all(|(_, c)| {
            c.as_ref()
                .is_some_and(|(_, roots)| roots.as_slice() == std::slice::from_ref(&serial_b))
        })
    });
    report.timing("step 3 (root B alone): every proxy trusts B alone", t3?);
    std::thread::sleep(Duration::from_secs(2));
    let result = finish_load(report, load);
    let certs = proxy_certs(bed);
    report.notes.push(format!(
        "{} proxies and discovery services checked; certificates live {ttl:?}",
        certs.len()
    ));
    report.check("0 failed requests", result.failed() == 0);
    report.check(
        "every proxy ends on a B-signed certificate, trusting B alone",
        certs.iter().all(|(_, c)| {
            c.as_ref().is_some_and(|(issuer, roots)| {
                intermediates.contains(issuer)
                    && roots.as_slice() == std::slice::from_ref(&serial_b)
            })
        }),
    );
    Ok(())
}

/// A proxy's view: (service host, endpoint clusters) from a live config stream.
fn view_of(
    bed: &Bed,
    identity: mesh_identity::Identity,
    name: &str,
    kind: &str,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let east = bed.east();
    let store = Arc::new(mesh_proxy::StateStore::default());
    let status = Arc::new(arc_swap::ArcSwap::from_pointee(
        mesh_proxy::discovery_client::StreamStatus::default(),
    ));
    let node = mesh_proto::config::Node {
        name: name.into(),
        namespace: identity.cert().id().namespace().to_owned(),
        kind: kind.into(),
        ..Default::default()
    };
    let discovery_id = mesh_identity::SpiffeId::new(
        bed.plan.trust_domain.parse()?,
        "istio-system",
        discovery::SERVICE_ACCOUNT,
    )?;
    let options = mesh_proxy::discovery_client::DiscoveryClientOptions::new(
        east.discovery,
        discovery_id,
        node,
    );
    let task = bed.rt.spawn(mesh_proxy::discovery_client::run(
        options,
        identity,
        store.clone(),
        status,
    ));
    let ready = bed.wait("the config stream", Duration::from_secs(20), || {
        bed.rt
            .block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        store.is_ready()
    });
    task.abort();
    ready?;
    let state = store.snapshot();
    let mut view: Vec<(String, Vec<String>)> = state
        .services
        .values()
        .map(|s| {
            let mut clusters: Vec<String> = s.endpoints.iter().map(|e| e.cluster.clone()).collect();
            clusters.sort();
            clusters.dedup();
            (s.host.clone(), clusters)
        })
        .collect();
    view.sort();
    Ok(view)
}

/// An identity of `ns/sa` issued with the first cluster's CA (as its CA would).
fn issued(bed: &Bed, ns: &str, sa: &str) -> anyhow::Result<mesh_identity::Identity> {
    let east = bed.east();
    let ca = mesh_identity::ClusterCa::load(&bed.dir.join(&east.name).join("cacerts"))?;
    let id = mesh_identity::SpiffeId::new(bed.plan.trust_domain.parse()?, ns, sa)?;
    let cert = ca
        .issue_workload(&id, Duration::from_secs(600))?
        .load("chaos")?;
    let td: mesh_identity::TrustDomain = bed.plan.trust_domain.parse()?;
    let bundle =
        mesh_identity::TrustBundle::from_pem(td.clone(), ca.root_pem().as_bytes(), "root")?;
    Ok(mesh_identity::Identity::new(
        cert,
        mesh_identity::TrustConfig::new(td, bundle),
    )?)
}

fn claimed_gateway(bed: &Bed, report: &mut Report) -> anyhow::Result<()> {
    let west = &bed.west().name;
    let curl = issued(bed, super::plan::NAMESPACE, "curl")?;
    let gateway = issued(bed, "istio-system", discovery::GATEWAY_SERVICE_ACCOUNT)?;
    let own = view_of(bed, curl.clone(), "chaos-curl", "sidecar")?;
    let claimed = view_of(bed, curl, "chaos-claims-gateway", "gateway")?;
    let real = view_of(bed, gateway, "chaos-gateway", "gateway")?;
    let remote = |v: &[(String, Vec<String>)]| v.iter().filter(|(_, c)| c.contains(west)).count();
    report.notes.push(format!(
        "services with endpoints in {west}: sidecar view {}, claimed gateway {}, gateway view {}",
        remote(&own),
        remote(&claimed),
        remote(&real)
    ));
    report.check(
        "the workload claiming to be a gateway gets exactly its own view",
        claimed == own,
    );
    report.check(
        "which differs from the gateway's view (remote endpoints, not the cluster's exports)",
        own != real && remote(&own) > 0 && remote(&real) == 0,
    );
    let listed = bed
        .get_json(bed.east().monitor, "/debug/syncz")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|s| s["kind"] == "sidecar (claimed gateway)");
    report.check("discovery lists it as `sidecar (claimed gateway)`", listed);
    Ok(())
}

fn foreign_discovery(bed: &Bed, report: &mut Report) -> anyhow::Result<()> {
    let (east, west) = (bed.east(), bed.west());
    let trust = mesh_trust(bed)?;
    // East's discovery service account, but in another namespace (same root).
    let other_ns = issued(bed, "default", discovery::SERVICE_ACCOUNT)?;
    let wrong_ns = bed.rt.block_on(discovery::link_client::try_subscribe(
        west.discovery,
        &other_ns,
        trust.clone(),
        &east.name,
    ));
    // Another trust domain, under a root of its own.
    let (other_td, _) = foreign_identity(&"elsewhere.example".parse()?, "istio-system")?;
    let wrong_td = bed.rt.block_on(discovery::link_client::try_subscribe(
        west.discovery,
        &other_td,
        trust.clone(),
        &east.name,
    ));
    // The right identity is still served.
    let own = issued(bed, "istio-system", discovery::SERVICE_ACCOUNT)?;
    let right = bed.rt.block_on(discovery::link_client::try_subscribe(
        west.discovery,
        &own,
        trust,
        &east.name,
    ));
    let refusals = bed
        .get_json(west.monitor, "/debug/peering-refusals")?
        .as_array()
        .cloned()
        .unwrap_or_default();
    let listed = refusals.iter().any(|r| {
        r["identity"]
            .as_str()
            .is_some_and(|i| i.contains("/ns/default/"))
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("may not subscribe"))
    });
    let log = std::fs::read_to_string(
        bed.dir
            .join("logs")
            .join(format!("discovery-{}.log", west.name)),
    )
    .unwrap_or_default();
    let logged = log
        .lines()
        .any(|l| l.contains("peering refused") && l.contains("/ns/default/"));
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "served".to_owned(),
        Err(e) => format!("refused: {e}"),
    };
    report
        .notes
        .push(format!("another namespace: {}", show(&wrong_ns)));
    report
        .notes
        .push(format!("another trust domain: {}", show(&wrong_td)));
    report.check(
        "a discovery identity in another namespace is refused",
        wrong_ns
            .as_ref()
            .is_err_and(|e| e.contains("may not subscribe")),
    );
    report.check(
        "a discovery identity of another trust domain is refused",
        wrong_td.is_err(),
    );
    report.check("the identity the link names is served", right.is_ok());
    report.check(
        "the refusal and its reason are in `multicluster status` of the refusing cluster",
        listed,
    );
    report.check("and in its log", logged);
    Ok(())
}

fn apiserver(bed: &Bed, report: &mut Report, outage: Duration) -> anyhow::Result<()> {
    let east = bed.east();
    if !bed.state.kubeconfigs.contains_key(&east.name) {
        report.notes.push(
            "the testbed runs the file registry: no API server to stop (testbed up --registry kubernetes)"
                .into(),
        );
        report.check("the testbed runs a kube-apiserver per cluster", false);
        return Ok(());
    }
    let name = format!("apiserver-{}", east.name);
    let curl = bed.curl()?.admin();
    let load = bed.load(CHAIN, "ratings")?;
    std::thread::sleep(Duration::from_secs(1));
    control(bed.state, "stop", &name)?;
    std::thread::sleep(outage);
    let connected = bed
        .metric(east.monitor, "isthmus_discovery_connected_proxies")
        .unwrap_or(0.0);
    control(bed.state, "start", &name)?;
    let started = Instant::now();
    // A change made after the restart reaches the proxies: discovery resynced.
    let probe = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: chaos-probe, namespace: {ns}}}\nspec:\n  selector: {{app: chaos-probe}}\n  ports: [{{name: http, port: 80}}]\n",
        ns = super::plan::NAMESPACE
    );
    let applied = bed.wait(
        "the API server answers again",
        Duration::from_secs(60),
        || {
            configure_in(
                bed.state,
                Some(&east.name),
                "chaos-probe.yaml",
                &probe,
                false,
            )
            .is_ok()
        },
    );
    let host = format!("chaos-probe.{}.svc.cluster.local", super::plan::NAMESPACE);
    let seen = bed.wait(
        "the change reaches curl's sidecar",
        Duration::from_secs(60),
        || {
            bed.get_json(curl, "/config_dump").is_ok_and(|d| {
                d["services"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|svc| svc["host"] == host.as_str()))
            })
        },
    );
    let resynced_after = started.elapsed();
    let _ = configure_in(
        bed.state,
        Some(&east.name),
        "chaos-probe.yaml",
        &probe,
        true,
    );
    let result = finish_load(report, load);
    report.timing("API server down", outage);
    if applied.is_ok() && seen.is_ok() {
        report.timing(
            "from the API server's restart to a new Service in the proxies",
            resynced_after,
        );
    }
    report.check("0 failed requests", result.failed() == 0);
    report.check(
        "discovery kept serving its proxies while the API server was down",
        connected >= east.workloads.len() as f64 + 1.0,
    );
    report.check(
        "discovery resynced after the restart",
        applied.is_ok() && seen.is_ok(),
    );
    Ok(())
}

/// Host firewall rules that cut one cluster network off another, removed when dropped.
struct Cut {
    rules: Vec<Vec<String>>,
}

impl Cut {
    fn new(a: &str, b: &str) -> anyhow::Result<Self> {
        let mut cut = Self { rules: Vec::new() };
        for (src, dst) in [(a, b), (b, a)] {
            let rule: Vec<String> = [
                "INPUT",
                "-s",
                src,
                "-d",
                dst,
                "-m",
                "comment",
                "--comment",
                "isthmus-chaos",
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let out = std::process::Command::new("iptables")
                .args(["-w", "-I"])
                .args(&rule)
                .output()
                .context("running iptables")?;
            anyhow::ensure!(
                out.status.success(),
                "iptables -I {}: {}",
                rule.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            cut.rules.push(rule);
        }
        Ok(cut)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = std::process::Command::new("iptables")
                .args(["-w", "-D"])
                .args(rule)
                .output();
        }
    }
}

/// The address range of cluster `index`'s network (pods, discovery and gateway).
fn cluster_range(index: usize) -> String {
    format!("10.{}.0.0/16", 240 + index)
}

fn partition(bed: &Bed, report: &mut Report) -> anyhow::Result<()> {
    if !bed.plan.pods {
        report.notes.push(
            "the testbed runs on loopback: a partition needs pods (run as root with iptables)"
                .into(),
        );
        report.check("the testbed runs pods", false);
        return Ok(());
    }
    let (east, west) = (bed.east(), bed.west());
    let curl = bed.curl()?.admin();
    let before = bed.load(CHAIN, "ratings")?;
    std::thread::sleep(Duration::from_secs(1));
    let before = before.finish();
    report.notes.push(format!(
        "before the cut: {} requests, {} failed",
        before.sent(),
        before.failed()
    ));
    let cut = Cut::new(&cluster_range(0), &cluster_range(1))?;
    let at = Instant::now();
    let stale = bed.wait(
        "the other cluster's endpoints stale",
        Duration::from_secs(60),
        || {
            bed.link(east, &west.name)
                .is_some_and(|l| l["state"] == "stale")
        },
    );
    let withdrawn = bed.wait(
        "withdrawn after failed gateway checks",
        Duration::from_secs(60),
        || {
            bed.link(east, &west.name)
                .is_some_and(|l| l["state"] == "withdrawn")
                && endpoints_from(bed, curl, &west.name).is_ok_and(|n| n == 0)
        },
    );
    let probe = bed
        .link(east, &west.name)
        .map(|l| l["lastError"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let cut_for = at.elapsed();
    drop(cut);
    let back = bed.wait(
        "traffic back after healing",
        Duration::from_secs(60),
        || matches!(bed.request(CHAIN, "/"), Ok((200, b)) if b.contains("ratings")),
    );
    let after = bed.load(CHAIN, "ratings")?;
    std::thread::sleep(Duration::from_secs(2));
    let after = after.finish();
    if let Ok(s) = &stale {
        report.timing("from the cut to the endpoints stale (the lease)", *s);
    }
    if let Ok(w) = &withdrawn {
        report.timing("then to withdrawn (gateway checks failed)", *w);
    }
    report.timing("cut for", cut_for);
    if let Ok(b) = &back {
        report.timing("from healing to the first cross-cluster success", *b);
    }
    report.notes.push(format!("withdrawn because: {probe}"));
    report.notes.push("requests counted after healing".into());
    report.add_load(&after);
    report.check("the endpoints turned stale at the lease", stale.is_ok());
    report.check(
        "and were withdrawn once the gateway failed its checks",
        withdrawn.is_ok() && probe.contains("health checks"),
    );
    report.check(
        "back within seconds of healing (< 10 s), then 0 failed",
        back.as_ref().is_ok_and(|b| *b < Duration::from_secs(10)) && after.failed() == 0,
    );
    Ok(())
}
