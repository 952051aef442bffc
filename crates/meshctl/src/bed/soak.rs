//! `meshctl testbed soak`: a long run through a running testbed under steady load,
//! with a config change, endpoint churn and a link rotation in turn every few minutes,
//! and every component's resident memory and open file descriptors sampled each
//! minute. It writes `samples.csv` (minute, component, RSS KiB, fds) and
//! `events.csv` as it goes, then says whether memory and descriptors stayed flat and
//! whether any request failed; `tools/soak.sh` plots the samples.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use super::chaos::{Bed, CHAIN, Report};
use super::plan::Cluster;
use super::{configure_in, ready_state};

/// After this, a component's memory counts as warmed up: growth is measured from here.
const WARM_UP_MINUTES: f64 = 3.0;

/// Test infrastructure, not the mesh: sampled and shown, not held to the bound (the
/// all-in-one Jaeger keeps every trace in memory).
fn infrastructure(name: &str) -> bool {
    name.starts_with("apiserver-") || name == "jaeger"
}

/// Flat: at the end no more than this above the warmed-up figure (ratio, then an
/// absolute allowance for small processes).
const RSS_GROWTH: f64 = 1.25;
const RSS_SLACK_KIB: u64 = 8 * 1024;
const FD_SLACK: u64 = 16;

/// The resident memory (KiB) and open descriptors of process `pid`.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// A minute's sample of every component the supervisor runs, and the supervisor.
fn sample(dir: &Path) -> Vec<(String, u64, u64)> {
    let Ok((state, _)) = ready_state(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64, u64)> = state
        .components
        .iter()
        .filter_map(|c| {
            let (rss, fds) = usage(c.pid?)?;
            Some((c.name.clone(), rss, fds))
        })
        .collect();
    if let Some((rss, fds)) = usage(state.pid) {
        out.push(("supervisor".into(), rss, fds));
    }
    out
}

/// The change of one round: a VirtualService edit, an endpoint added or taken away,
/// or the links rotated to a second root and back.
fn round(bed: &Bed, n: usize, report: &mut Report) -> anyhow::Result<String> {
    match n % 3 {
        0 => {
            // ratings' routes: retries toggled between 2 and 3 attempts.
            let attempts = 2 + (n / 3) % 2;
            configure_in(
                bed.state,
                None,
                "soak-ratings.yaml",
                &ratings_routes(attempts),
                false,
            )?;
            Ok(format!(
                "config: ratings retries {attempts} in every cluster"
            ))
        }
        1 => {
            // A second endpoint for ratings (the same pod, another WorkloadEntry), added
            // on one round and taken away on the next.
            let east = bed.east();
            let ratings = east
                .workloads
                .iter()
                .find(|w| w.app == "ratings")
                .ok_or_else(|| anyhow::anyhow!("no ratings workload in {}", east.name))?;
            let add = (n / 3).is_multiple_of(2);
            configure_in(
                bed.state,
                Some(&east.name),
                "soak-endpoint.yaml",
                &extra_endpoint(east, &ratings.ip.to_string()),
                !add,
            )?;
            Ok(format!(
                "endpoints: a ratings endpoint {} in {}",
                if add { "added" } else { "removed" },
                east.name
            ))
        }
        _ => {
            super::chaos::link_rotation(bed, report)?;
            Ok("links: rotated to a second root and back".into())
        }
    }
}

/// ratings' routes with `attempts` retries (the config the soak changes).
fn ratings_routes(attempts: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: soak-ratings, namespace: {ns}}}\nspec: {{hosts: [ratings], http: [{{route: [{{destination: {{host: ratings}}}}], retries: {{attempts: {attempts}, perTryTimeout: 2s}}}}]}}\n",
        ns = super::plan::NAMESPACE
    )
}

fn extra_endpoint(cluster: &Cluster, ip: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: soak-ratings, namespace: {ns}}}\nspec: {{address: {ip}, labels: {{app: ratings, version: v1}}, serviceAccount: ratings, locality: {locality}, network: {network}}}\n",
        ns = super::plan::NAMESPACE,
        locality = cluster.locality,
        network = cluster.network,
    )
}

/// Runs the soak for `duration`, a round every `every`, writing into `out`.
pub(crate) fn run(
    dir: &Path,
    duration: Duration,
    every: Duration,
    out: &Path,
) -> anyhow::Result<()> {
    let (state, plan) = ready_state(dir)?;
    anyhow::ensure!(
        plan.clusters.len() >= 2 && !state.kubeconfigs.is_empty(),
        "the soak needs two clusters with Kubernetes registries (testbed up with the Kubernetes binaries)"
    );
    std::fs::create_dir_all(out)?;
    let mut samples = std::fs::File::create(out.join("samples.csv"))?;
    writeln!(samples, "minute,component,rss_kib,fds")?;
    let mut events = std::fs::File::create(out.join("events.csv"))?;
    writeln!(events, "minute,event,failed_requests")?;
    let bed = Bed::new(dir, &state, &plan)?;
    println!(
        "Soak: {} min, a change every {} s (config, endpoints, links in turn), samples each minute into {}",
        duration.as_secs() / 60,
        every.as_secs(),
        out.display()
    );
    let load = bed.load(CHAIN, "ratings")?;
    let start = Instant::now();
    let minute = |t: Instant| t.duration_since(start).as_secs_f64() / 60.0;
    let mut next_sample = start;
    let mut next_round = start + every;
    let mut rounds = 0;
    let mut round_reports: Vec<Report> = Vec::new();
    let mut all: Vec<(f64, String, u64, u64)> = Vec::new();
    while start.elapsed() < duration {
        let now = Instant::now();
        if now >= next_sample {
            let m = minute(now);
            for (name, rss, fds) in sample(dir) {
                writeln!(samples, "{m:.2},{name},{rss},{fds}")?;
                all.push((m, name, rss, fds));
            }
            samples.flush()?;
            next_sample += Duration::from_secs(60);
        }
        if now >= next_round {
            let mut report = Report::default();
            let what = round(&bed, rounds, &mut report)
                .unwrap_or_else(|e| format!("round {rounds} failed: {e:#}"));
            let failed = report.failed;
            println!("  {:>5.1} min  {what}", minute(now));
            writeln!(events, "{:.2},{what},{failed}", minute(now))?;
            events.flush()?;
            round_reports.push(report);
            rounds += 1;
            next_round += every;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let result = load.finish();
    // The last sample, at the end.
    let m = minute(Instant::now());
    for (name, rss, fds) in sample(dir) {
        writeln!(samples, "{m:.2},{name},{rss},{fds}")?;
        all.push((m, name, rss, fds));
    }
    // Take away what the soak added.
    configure_in(
        bed.state,
        None,
        "soak-ratings.yaml",
        &ratings_routes(2),
        true,
    )
    .ok();
    let east = bed.east();
    configure_in(
        bed.state,
        Some(&east.name),
        "soak-endpoint.yaml",
        &extra_endpoint(east, "127.0.0.1"),
        true,
    )
    .ok();

    println!(
        "\n{:<26} {:>10} {:>10} {:>10} {:>6} {:>6}  flat",
        "component", "RSS warm", "RSS max", "RSS end", "fds", "fds end"
    );
    let mut names: Vec<&String> = all.iter().map(|(_, n, _, _)| n).collect();
    names.sort();
    names.dedup();
    let mut not_flat = Vec::new();
    for name in names {
        let series: Vec<&(f64, String, u64, u64)> =
            all.iter().filter(|(_, n, _, _)| n == name).collect();
        let warm = series
            .iter()
            .find(|(m, ..)| *m >= WARM_UP_MINUTES)
            .or(series.first())
            .copied();
        let (Some(warm), Some(end)) = (warm, series.last()) else {
            continue;
        };
        let max = series.iter().map(|s| s.2).max().unwrap_or(0);
        let flat = end.2 as f64 <= warm.2 as f64 * RSS_GROWTH + RSS_SLACK_KIB as f64
            && end.3 <= warm.3 + FD_SLACK;
        let ours = !infrastructure(name);
        if !flat && ours {
            not_flat.push(name.clone());
        }
        println!(
            "{name:<26} {:>8} Mi {:>7} Mi {:>7} Mi {:>6} {:>6}  {}",
            warm.2 / 1024,
            max / 1024,
            end.2 / 1024,
            warm.3,
            end.3,
            match (ours, flat) {
                (false, _) => "(test infrastructure)",
                (true, true) => "yes",
                (true, false) => "NO",
            }
        );
    }
    let round_failed: u64 = round_reports.iter().map(|r| r.failed).sum();
    let round_sent: u64 = round_reports.iter().map(|r| r.requests).sum();
    println!(
        "\nRequests: {} sent by the steady load, {} failed; {} more during link rotations, {} failed.",
        result.sent(),
        result.failed(),
        round_sent,
        round_failed
    );
    for f in result.failures() {
        println!("  failed request {f}");
    }
    println!(
        "Flat: at the end at most {:.0} % above the figure at minute {WARM_UP_MINUTES} (+{} MiB), and at most {FD_SLACK} more descriptors.",
        (RSS_GROWTH - 1.0) * 100.0,
        RSS_SLACK_KIB / 1024
    );
    anyhow::ensure!(
        result.failed() == 0 && round_failed == 0,
        "{} request(s) failed",
        result.failed() + round_failed
    );
    anyhow::ensure!(not_flat.is_empty(), "not flat: {}", not_flat.join(", "));
    Ok(())
}
