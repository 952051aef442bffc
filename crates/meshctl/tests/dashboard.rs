//! The dashboard as a person sees it, in a real headless Chromium: `meshctl testbed
//! up` prints its URL; with traffic from the front page, the page draws both
//! clusters, the `frontpage → reviews` call across clusters with a lock, a rate and
//! the east-west gateway hop; clicking that edge lists its traces, and opening one
//! draws spans from both clusters. When the traffic stops the edge goes away without
//! a reload, and when west's control plane goes silent its cluster is marked stale.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;

/// The frontpage → reviews edge across clusters.
const CROSS: &str =
    r#"g.edge[data-source="frontpage"][data-dest-cluster="west"][data-dest="reviews"]"#;

#[test]
fn the_dashboard_draws_both_clusters_the_call_across_and_its_trace() {
    let Some(chromium) = browser::chromium() else {
        eprintln!("skipped: no chromium (apt-get install chromium)");
        return;
    };
    if !prerequisite("ISTHMUS_JAEGER_BIN", "shared tracing") {
        eprintln!("skipped: no Jaeger (tools/build-jaeger.sh)");
        return;
    }
    ensure_binaries();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bed");
    let _down = Down(dir.clone());
    let up = meshctl(&dir, &["testbed", "up"]);
    let out = text(&up);
    assert!(up.status.success(), "{out}");
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("Dashboard: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("testbed up prints the dashboard's URL: {out}"))
        .to_owned();

    // Steady traffic from east's curl through the front page (which calls reviews in
    // west, which calls ratings in east).
    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let (running, dir) = (running.clone(), dir.clone());
        std::thread::spawn(move || {
            let mut ok = 0;
            while running.load(Ordering::SeqCst) {
                let o = meshctl(&dir, &["testbed", "curl", "http://frontpage:9080/"]);
                ok += usize::from(o.status.success());
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        })
    };

    let mut page = browser::Browser::launch(&chromium, 1700, 820);
    page.open(&url);
    let clusters = page.wait_for(
        "[...document.querySelectorAll('g.cluster')].map(g => g.dataset.cluster + ':' + g.dataset.state).join(',')",
        Duration::from_secs(20),
        "both clusters drawn",
    );
    let clusters = clusters.as_str().unwrap().to_owned();
    assert!(
        clusters.contains("east:local") && clusters.contains("west:connected"),
        "{clusters}"
    );

    // The call across clusters: mTLS (a closed lock on its label), through west's
    // east-west gateway (drawn), at a non-zero rate with latencies.
    let edge = page.wait_for(
        &format!(
            "(() => {{ const e = document.querySelector('{CROSS}'); \
             return e && Number(e.dataset.rps) > 0 ? {{key: e.dataset.key, mtls: e.dataset.mtls, \
             gw: e.dataset.viaGateway, rps: Number(e.dataset.rps)}} : null; }})()"
        ),
        Duration::from_secs(30),
        "the frontpage → reviews edge across clusters with a rate",
    );
    assert_eq!(edge["mtls"], "true", "{edge}");
    assert_eq!(edge["gw"], "true", "{edge}");
    let key = edge["key"].as_str().unwrap().to_owned();
    let label = format!(r#"g.edge-label[data-key="{key}"]"#);
    let seen = page.eval(&format!(
        "(() => {{ const l = document.querySelector('{label}'); return {{ \
         lock: !!l.querySelector('.lock.closed'), open: !!l.querySelector('.lock.open'), \
         text: l.textContent, \
         gateway: !!document.querySelector('g.node.gateway[data-cluster=\"west\"]') }}; }})()"
    ));
    assert_eq!(seen["lock"], true, "a closed lock on the mTLS edge: {seen}");
    assert_eq!(seen["open"], false, "{seen}");
    assert_eq!(seen["gateway"], true, "west's gateway hop is drawn: {seen}");
    let text = seen["text"].as_str().unwrap();
    assert!(
        text.contains("rps") && text.contains("p50") && text.contains("p99"),
        "{text}"
    );

    // Click the edge: its traces, then one trace with spans from both clusters.
    page.click(&label);
    page.wait_for(
        "document.querySelector('#edge-stats h2')?.textContent",
        Duration::from_secs(5),
        "the edge's details",
    );
    let stats = page.eval("document.querySelector('#edge-stats').innerText");
    let stats = stats.as_str().unwrap();
    assert!(
        stats.contains("frontpage v1 (east) → reviews v1 (west)")
            && stats.contains("mutual TLS")
            && stats.contains("through west's east-west gateway"),
        "{stats}"
    );
    let trace = page.wait_for(
        "(() => { const t = [...document.querySelectorAll('li.trace')].find(li => \
         li.dataset.clusters.split(',').includes('east') && li.dataset.clusters.split(',').includes('west')); \
         return t ? t.dataset.trace : null; })()",
        Duration::from_secs(60),
        "a trace of the edge across both clusters",
    );
    page.click(&format!(
        r#"li.trace[data-trace="{}"]"#,
        trace.as_str().unwrap()
    ));
    let rows = page.wait_for(
        "(() => { const r = [...document.querySelectorAll('.span-row')]; \
         return r.length ? r.map(x => x.dataset.cluster + ' ' + x.dataset.service) : null; })()",
        Duration::from_secs(10),
        "the trace's waterfall",
    );
    let rows: Vec<String> = serde_json::from_value(rows).unwrap();
    for (cluster, service) in [
        ("east", "frontpage.sample"),
        ("west", "reviews.sample"),
        ("east", "ratings.sample"),
    ] {
        assert!(
            rows.iter().any(|r| r == &format!("{cluster} {service}")),
            "{service} in {cluster}: {rows:?}"
        );
    }
    let png = page.screenshot();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}",
        png.len()
    );
    let shot = std::env::var_os("ISTHMUS_DASHBOARD_SCREENSHOT")
        .map_or_else(|| tmp.path().join("dashboard.png"), Into::into);
    std::fs::write(&shot, &png).unwrap();

    // Live: with the traffic stopped, the edge leaves the page without a reload.
    running.store(false, Ordering::SeqCst);
    let ok = traffic.join().unwrap();
    assert!(ok > 0, "the front page answered");
    page.wait_for(
        &format!("!document.querySelector('{CROSS}')"),
        Duration::from_secs(40),
        "the edge gone once its calls stopped",
    );

    // West's control plane silent: its endpoints go stale and the page says so.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let control: std::net::SocketAddr = state["control"].as_str().unwrap().parse().unwrap();
    let stopped = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(mesh_net::http::get(control, "/stop/discovery-west"))
        .unwrap();
    assert!(stopped.0.is_success(), "{stopped:?}");
    page.wait_for(
        "document.querySelector('g.cluster.stale[data-cluster=\"west\"]')?.dataset.state",
        Duration::from_secs(40),
        "west marked stale",
    );
}
