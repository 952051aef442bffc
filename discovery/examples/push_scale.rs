//! Discovery at scale: N simulated proxies connected over mTLS, S services with E
//! endpoints each, then endpoint changes timed from the registry event to each
//! proxy's ACK. Reports the latency distribution and discovery's memory per endpoint
//! and per proxy. A benchmark, run by hand (see docs/benchmarks.md):
//!
//! ```text
//! cargo run --release -p discovery --example push_scale -- \
//!     --proxies 1000 --services 10000 --endpoints 10 --namespaces 100 --rounds 20
//! ```
//!
//! Services live in `--namespaces` namespaces, each visible to its own namespace only
//! (`exportTo: .`, the scoping a mesh of this size uses), plus `--global` services
//! visible everywhere. Proxies are spread over the namespaces. Each round changes the
//! endpoints of one global service, so every proxy must receive and ACK it.
//!
//! The simulated proxies decode each response and ACK it at once; they run in this
//! process, so the per-proxy memory figure is an upper bound (both ends of the
//! connection are counted).

mod sim;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};
use mesh_identity::{RootCa, SpiffeId, TrustBundle, TrustConfig};
use sim::{rss_bytes, service, slice};

#[derive(Debug, Parser)]
struct Args {
    /// Simulated proxies.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Services (namespace-scoped).
    #[arg(long, default_value_t = 10000)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Namespaces the services and proxies are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Services visible to every proxy.
    #[arg(long, default_value_t = 10)]
    global: usize,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Debounce quiet time, milliseconds.
    #[arg(long, default_value_t = 10)]
    debounce_ms: u64,
}

/// What the simulated proxies report: per round, each proxy's event-to-ACK time.
struct Probe {
    target: Mutex<Option<(String, Instant)>>,
    latencies: Mutex<Vec<Duration>>,
    acked: AtomicUsize,
    synced: AtomicUsize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let td = "bench.example";
    let root = RootCa::generate(&td.parse()?, ROOT_VALIDITY)?;
    let ca = root.intermediate("bench", INTERMEDIATE_VALIDITY)?;
    let dir = tempfile::tempdir()?;
    ca.write(dir.path())?;
    let mut options = discovery::Options::new(
        "bench",
        "net-bench",
        discovery::Source::Api,
        discovery::CaCerts::Dir(dir.path().to_owned()),
    );
    options.grpc = "127.0.0.1:0".parse()?;
    options.monitor = None;
    options.debounce = discovery::push::Debounce {
        after: Duration::from_millis(args.debounce_ms),
        max: Duration::from_millis(args.debounce_ms * 10),
    };
    let d = discovery::start(options).await?;
    let started = rss_bytes();

    // The registry: namespace-scoped services plus global ones.
    let t = Instant::now();
    let mut ip = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0));
    for i in 0..args.services {
        let ns = format!("ns-{}", i % args.namespaces);
        let name = format!("svc-{i}");
        d.registry.apply(service(&ns, &name, ".")).ok();
        d.registry
            .apply(slice(&ns, &name, ip, args.endpoints, 0))
            .ok();
        ip += args.endpoints as u32 + 1000;
    }
    for g in 0..args.global {
        let name = format!("global-{g}");
        d.registry.apply(service("global", &name, "*")).ok();
        d.registry
            .apply(slice("global", &name, ip, args.endpoints, 0))
            .ok();
        ip += args.endpoints as u32 + 1000;
    }
    let total_endpoints = (args.services + args.global) * args.endpoints;
    let loaded = rss_bytes();
    println!(
        "registry: {} services, {} endpoints loaded in {:.1} s; RSS {:.0} MiB (+{:.0} MiB): {:.0} bytes per endpoint",
        args.services + args.global,
        total_endpoints,
        t.elapsed().as_secs_f64(),
        loaded as f64 / 1048576.0,
        (loaded - started) as f64 / 1048576.0,
        (loaded - started) as f64 / total_endpoints as f64
    );

    // Proxies: one identity per namespace.
    let bundle = TrustBundle::from_pem(td.parse()?, root.cert_pem().as_bytes(), "root")?;
    let trust = TrustConfig::new(td.parse()?, bundle);
    let mut identities = BTreeMap::new();
    for n in 0..args.namespaces {
        let ns = format!("ns-{n}");
        let id = SpiffeId::new(td.parse()?, &ns, "app")?;
        let cert = ca
            .issue_workload(&id, Duration::from_secs(3600))?
            .load("bench")?;
        identities.insert(ns, mesh_identity::Identity::new(cert, trust.clone())?);
    }
    let probe = Arc::new(Probe {
        target: Mutex::new(None),
        latencies: Mutex::new(Vec::new()),
        acked: AtomicUsize::new(0),
        synced: AtomicUsize::new(0),
    });
    let t = Instant::now();
    let discovery_id = d.spiffe_id();
    for p in 0..args.proxies {
        let ns = format!("ns-{}", p % args.namespaces);
        let identity = identities[&ns].clone();
        let probe = probe.clone();
        let first = std::sync::atomic::AtomicBool::new(true);
        sim::spawn_proxy(
            d.grpc_addr,
            identity,
            discovery_id.clone(),
            format!("proxy-{p}"),
            ns,
            move |resp, now| {
                let hit = probe
                    .target
                    .lock()
                    .unwrap()
                    .as_ref()
                    .and_then(|(name, at)| {
                        resp.resources
                            .iter()
                            .any(|r| &r.name == name)
                            .then_some(*at)
                    });
                if let Some(at) = hit {
                    probe.latencies.lock().unwrap().push(now.duration_since(at));
                    probe.acked.fetch_add(1, Ordering::SeqCst);
                }
                if first.swap(false, Ordering::SeqCst) {
                    probe.synced.fetch_add(1, Ordering::SeqCst);
                }
            },
        );
    }
    while probe.synced.load(Ordering::SeqCst) < args.proxies {
        tokio::time::sleep(Duration::from_millis(50)).await;
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "proxies did not sync"
        );
    }
    let connected = rss_bytes();
    println!(
        "proxies: {} connected and synced in {:.1} s; RSS {:.0} MiB (+{:.0} MiB): {:.0} KiB per proxy (both ends)",
        args.proxies,
        t.elapsed().as_secs_f64(),
        connected as f64 / 1048576.0,
        (connected.saturating_sub(loaded)) as f64 / 1048576.0,
        connected.saturating_sub(loaded) as f64 / args.proxies as f64 / 1024.0
    );

    // Rounds: change one global service's endpoints; every proxy must ACK it.
    for round in 0..args.rounds {
        let name = format!("global-{}", round % args.global.max(1));
        probe.acked.store(0, Ordering::SeqCst);
        let at = Instant::now();
        *probe.target.lock().unwrap() = Some((format!("Service/global/{name}"), at));
        d.registry
            .apply(slice(
                "global",
                &name,
                0x0b00_0000,
                args.endpoints,
                round as u32 + 1,
            ))
            .ok();
        while probe.acked.load(Ordering::SeqCst) < args.proxies {
            tokio::time::sleep(Duration::from_millis(1)).await;
            anyhow::ensure!(
                at.elapsed() < Duration::from_secs(60),
                "round {round} did not converge"
            );
        }
        *probe.target.lock().unwrap() = None;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lat = probe.latencies.lock().unwrap().clone();
    let (summary, _) = sim::percentiles(&mut lat);
    println!(
        "endpoint change → ACK over {} proxy updates ({} rounds): {summary} (debounce {} ms included)",
        lat.len(),
        args.rounds,
        args.debounce_ms
    );
    Ok(())
}
