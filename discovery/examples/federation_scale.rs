//! Federation at scale: N discovery services in this process, each with its own
//! registry of S services and E endpoints per cluster and P simulated proxies (mTLS,
//! decode, ACK), linked in a full mesh over real mTLS peering on loopback. A
//! benchmark, run by hand (see docs/benchmarks.md):
//!
//! ```text
//! cargo run --release -p discovery --example federation_scale -- \
//!     --clusters 10 --services 300 --endpoints 4000 --proxies 10 --rounds 20
//! ```
//!
//! It reports:
//! - endpoint change in one cluster → ACK by the proxies of every other cluster (each
//!   round changes one service of one cluster, the next cluster each round);
//! - discovery memory per remote endpoint: the RSS the links add (every cluster
//!   holding every other's endpoints), over the remote endpoints held;
//! - CPU per remote cluster at steady churn: the process's CPU while every cluster
//!   changes one service's endpoints per second, over the cluster pairs;
//! - a new cluster linked: the time until the proxies of every other cluster hold a
//!   service only it has.
//!
//! Every discovery and every simulated proxy runs in this one process, so memory and
//! CPU are the whole mesh's, proxies' decoding included: an upper bound for discovery.

mod sim;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use discovery::registry::Object;
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};
use mesh_identity::{ClusterCa, RootCa, SpiffeId, TrustBundle, TrustConfig};
use sim::rss_bytes;

#[derive(Debug, Parser)]
struct Args {
    /// Clusters linked in a full mesh (one more is linked at the end).
    #[arg(long, default_value_t = 10)]
    clusters: usize,
    /// Services per cluster (the same names in every cluster: namespace sameness).
    #[arg(long, default_value_t = 300)]
    services: usize,
    /// Endpoints per cluster, spread over its services.
    #[arg(long, default_value_t = 4000)]
    endpoints: usize,
    /// Simulated proxies per cluster.
    #[arg(long, default_value_t = 10)]
    proxies: usize,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Seconds of steady churn for the CPU figure.
    #[arg(long, default_value_t = 10)]
    churn_seconds: u64,
    /// Every cluster on one network (proxies get other clusters' endpoints directly),
    /// rather than each on its own (they get each other network's gateway).
    #[arg(long)]
    one_network: bool,
}

const NS: &str = "shop";
const TD: &str = "bench.example";

/// User and system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces), from state on.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn service(name: &str) -> Object {
    sim::service(NS, name, "*")
}

/// `count` endpoints of `name` in cluster `c` (its own 10.c.0.0/16), shifted by
/// `generation`.
fn slice(c: usize, name: &str, first: u32, count: usize, generation: u32) -> Object {
    let base = u32::from(std::net::Ipv4Addr::new(10, c as u8, 0, 0)) + first;
    sim::slice(NS, name, base, count, generation)
}

/// The link Secret to `peer` (as `meshctl remote-secret` renders it), as an object.
fn link(
    peer: &discovery::Discovery,
    name: &str,
    root_pem: &str,
    one_network: bool,
) -> anyhow::Result<Object> {
    let yaml = discovery::links::render_secret(
        &discovery::links::Link {
            secret: String::new(),
            cluster: name.into(),
            network: if one_network {
                "net".into()
            } else {
                format!("net-{name}")
            },
            discovery_address: peer.grpc_addr.to_string(),
            gateway_address: "127.0.0.1:15443".into(),
            gateway_quic: false,
            trust_bundle: root_pem.into(),
            trust_domain: TD.into(),
        },
        discovery::NAMESPACE,
    );
    let doc = mesh_api::split_documents(&yaml)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .remove(0);
    Ok(Object::Secret(Box::new(serde_json::from_value(doc)?)))
}

/// What the simulated proxies report: per change, each proxy's event-to-ACK time.
#[derive(Default)]
struct Probe {
    /// The resource awaited, when it was changed, and which clusters' proxies count.
    target: Mutex<Option<(String, Instant, Vec<usize>)>>,
    latencies: Mutex<Vec<Duration>>,
    acked: AtomicUsize,
    synced: AtomicUsize,
}

struct Cluster {
    name: String,
    discovery: discovery::Discovery,
}

async fn start_cluster(
    name: &str,
    root: &RootCa,
    args: &Args,
    index: usize,
) -> anyhow::Result<(Cluster, ClusterCa, tempfile::TempDir)> {
    let ca = root.intermediate(name, INTERMEDIATE_VALIDITY)?;
    let dir = tempfile::tempdir()?;
    ca.write(dir.path())?;
    let network = if args.one_network {
        "net".to_owned()
    } else {
        format!("net-{name}")
    };
    let mut options = discovery::Options::new(
        name,
        &network,
        discovery::Source::Api,
        discovery::CaCerts::Dir(dir.path().to_owned()),
    );
    options.grpc = "127.0.0.1:0".parse()?;
    options.monitor = None;
    options.links.source = Some("127.0.0.1".parse()?);
    let d = discovery::start(options).await?;
    let per_service = (args.endpoints / args.services.max(1)).max(1);
    for s in 0..args.services {
        let svc = format!("svc-{s}");
        d.registry.apply(service(&svc)).ok();
        d.registry
            .apply(slice(
                index,
                &svc,
                (s * (per_service + 64)) as u32,
                per_service,
                0,
            ))
            .ok();
    }
    Ok((
        Cluster {
            name: name.into(),
            discovery: d,
        },
        ca,
        dir,
    ))
}

/// `proxies` simulated proxies of cluster `index` on `d`, reporting to `probe`.
fn connect_proxies(
    d: &discovery::Discovery,
    ca: &ClusterCa,
    root: &RootCa,
    index: usize,
    proxies: usize,
    probe: &Arc<Probe>,
) -> anyhow::Result<()> {
    let bundle = TrustBundle::from_pem(TD.parse()?, root.cert_pem().as_bytes(), "root")?;
    let trust = TrustConfig::new(TD.parse()?, bundle);
    let id = SpiffeId::new(TD.parse()?, NS, "app")?;
    let identity = mesh_identity::Identity::new(
        ca.issue_workload(&id, Duration::from_secs(3600))?
            .load("bench")?,
        trust,
    )?;
    for p in 0..proxies {
        let probe = probe.clone();
        let first = std::sync::atomic::AtomicBool::new(true);
        sim::spawn_proxy(
            d.grpc_addr,
            identity.clone(),
            d.spiffe_id(),
            format!("proxy-{index}-{p}"),
            NS.into(),
            move |resp, now| {
                let hit = probe
                    .target
                    .lock()
                    .unwrap()
                    .as_ref()
                    .and_then(|(name, at, clusters)| {
                        (clusters.contains(&index)
                            && resp.resources.iter().any(|r| &r.name == name))
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
    Ok(())
}

async fn wait_until(what: &str, limit: Duration, f: impl Fn() -> bool) -> anyhow::Result<Duration> {
    let t = Instant::now();
    while !f() {
        anyhow::ensure!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(t.elapsed())
}

/// The endpoint count of each changed service, so that each change scales it up or
/// down by one.
#[derive(Default)]
struct Counts(BTreeMap<(usize, String), usize>);

impl Counts {
    fn toggle(&mut self, cluster: usize, svc: &str, base: usize) -> usize {
        let count = self.0.entry((cluster, svc.to_owned())).or_insert(base);
        *count = if *count == base { base + 1 } else { base };
        *count
    }
}

/// Links `from` to `to`: `to`'s link Secret applied in `from`.
fn link_to(from: &Cluster, to: &Cluster, root_pem: &str, one_network: bool) -> anyhow::Result<()> {
    apply(
        &from.discovery,
        link(&to.discovery, &to.name, root_pem, one_network)?,
    )
}

/// Applies `object` to `d`'s registry.
fn apply(d: &discovery::Discovery, object: Object) -> anyhow::Result<()> {
    d.registry
        .apply(object)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.clusters;
    let root = RootCa::generate(&TD.parse()?, ROOT_VALIDITY)?;
    let root_pem = root.cert_pem().to_owned();
    let before = rss_bytes();
    let t = Instant::now();
    let mut clusters = Vec::new();
    let mut cas = Vec::new();
    let mut dirs = Vec::new();
    // One more than the mesh: the cluster linked at the end.
    for i in 0..=n {
        let (c, ca, dir) = start_cluster(&format!("c{i}"), &root, &args, i).await?;
        clusters.push(c);
        cas.push(ca);
        dirs.push(dir);
    }
    let probe = Arc::new(Probe::default());
    for i in 0..n {
        connect_proxies(
            &clusters[i].discovery,
            &cas[i],
            &root,
            i,
            args.proxies,
            &probe,
        )?;
    }
    let proxies = n * args.proxies;
    wait_until("proxies synced", Duration::from_secs(300), || {
        probe.synced.load(Ordering::SeqCst) >= proxies
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = rss_bytes();
    let per_cluster = (args.endpoints / args.services.max(1)).max(1) * args.services;
    println!(
        "{} clusters × {} services × {} endpoints, {} proxies each: started and synced in {:.1} s; RSS {:.0} MiB (+{:.0} MiB)",
        n + 1,
        args.services,
        per_cluster,
        args.proxies,
        t.elapsed().as_secs_f64(),
        mib(loaded),
        mib(loaded.saturating_sub(before))
    );

    // Full mesh among the first n.
    let t = Instant::now();
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            link_to(&clusters[i], &clusters[j], &root_pem, args.one_network)?;
        }
    }
    let remote_each = (n - 1) * per_cluster;
    wait_until(
        "every cluster holds every other's endpoints",
        Duration::from_secs(600),
        || {
            clusters[..n].iter().all(|c| {
                c.discovery
                    .registry
                    .remote_clusters()
                    .iter()
                    .map(|r| c.discovery.registry.remote_counts(r).1)
                    .sum::<usize>()
                    >= remote_each
            })
        },
    )
    .await?;
    let synced_in = t.elapsed();
    // Let the pushes to the proxies settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let linked = rss_bytes();
    let remote_total = n * remote_each;
    println!(
        "full mesh: {} links synced in {:.1} s; {} remote endpoints held ({} per discovery); RSS +{:.0} MiB: {:.0} bytes per remote endpoint (proxies' copies included)",
        n * (n - 1),
        synced_in.as_secs_f64(),
        remote_total,
        remote_each,
        mib(linked.saturating_sub(loaded)),
        linked.saturating_sub(loaded) as f64 / remote_total as f64
    );

    let mut counts = Counts::default();
    // Rounds: one service of one cluster scales up or down by one endpoint (a change
    // every other cluster's proxies see, directly or as its gateway's weight); every
    // other cluster's proxies must ACK its merged update.
    for round in 0..args.rounds {
        let src = round % n;
        let svc = format!("svc-{}", round % args.services);
        let others: Vec<usize> = (0..n).filter(|c| *c != src).collect();
        probe.acked.store(0, Ordering::SeqCst);
        let at = Instant::now();
        *probe.target.lock().unwrap() = Some((format!("Service/{NS}/{svc}"), at, others));
        let per_service = per_cluster / args.services.max(1);
        apply(
            &clusters[src].discovery,
            slice(
                src,
                &svc,
                0x8000,
                counts.toggle(src, &svc, per_service),
                round as u32 + 1,
            ),
        )?;
        let expected = (n - 1) * args.proxies;
        wait_until(&format!("round {round}"), Duration::from_secs(60), || {
            probe.acked.load(Ordering::SeqCst) >= expected
        })
        .await?;
        *probe.target.lock().unwrap() = None;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lat = probe.latencies.lock().unwrap().clone();
    let (summary, p99) = sim::percentiles(&mut lat);
    println!(
        "endpoint change in one cluster → ACK by every other cluster's proxies, {} updates over {} rounds: {summary}",
        lat.len(),
        args.rounds,
    );

    // Steady churn: every cluster changes one service's endpoints each second.
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let mut tick = 0u32;
    while t.elapsed() < Duration::from_secs(args.churn_seconds) {
        tick += 1;
        for (i, c) in clusters[..n].iter().enumerate() {
            let svc = format!("svc-{}", (tick as usize) % args.services);
            let per_service = per_cluster / args.services.max(1);
            apply(
                &c.discovery,
                slice(
                    i,
                    &svc,
                    0x8000,
                    counts.toggle(i, &svc, per_service),
                    100 + tick,
                ),
            )?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu = (cpu_seconds() - cpu0) / t.elapsed().as_secs_f64();
    println!(
        "steady churn (each cluster: 1 service of {} endpoints changed per second): {:.1} % of a core for the whole mesh; {:.3} % per remote cluster (over {} cluster pairs, proxies included)",
        per_cluster / args.services.max(1),
        cpu * 100.0,
        cpu * 100.0 / (n * (n - 1)) as f64,
        n * (n - 1)
    );

    // A new cluster linked both ways: how long until every other cluster's proxies hold
    // a service only it has.
    let new = n;
    apply(&clusters[new].discovery, service("only-new"))?;
    apply(
        &clusters[new].discovery,
        slice(new, "only-new", 0x9000, 4, 0),
    )?;
    probe.acked.store(0, Ordering::SeqCst);
    let at = Instant::now();
    *probe.target.lock().unwrap() = Some((format!("Service/{NS}/only-new"), at, (0..n).collect()));
    for i in 0..n {
        link_to(&clusters[new], &clusters[i], &root_pem, args.one_network)?;
        link_to(&clusters[i], &clusters[new], &root_pem, args.one_network)?;
    }
    let took = wait_until(
        "the new cluster routable everywhere",
        Duration::from_secs(120),
        || probe.acked.load(Ordering::SeqCst) >= proxies,
    )
    .await?;
    println!(
        "a new cluster linked to {n}: every other cluster's proxies can route to it after {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    let summary: BTreeMap<&str, f64> = [
        ("p99_ms", p99.as_secs_f64() * 1e3),
        (
            "bytes_per_remote_endpoint",
            linked.saturating_sub(loaded) as f64 / remote_total as f64,
        ),
        (
            "cpu_percent_per_remote_cluster",
            cpu * 100.0 / (n * (n - 1)) as f64,
        ),
        ("new_cluster_ms", took.as_secs_f64() * 1e3),
    ]
    .into_iter()
    .collect();
    println!("{}", serde_json::to_string(&summary)?);
    drop(dirs);
    Ok(())
}
