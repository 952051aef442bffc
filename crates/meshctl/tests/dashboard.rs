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
    let (tmp, _down, dir, out) = testbed_up();
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

/// The page draws what the graph says, whatever it says: a plaintext edge with an
/// open lock, an mTLS one with a closed lock, a TCP edge in connections per second, a
/// withdrawn cluster dashed with its services and workloads, and, without Jaeger, an
/// edge's traces say why they are missing. The graph comes from a stand-in for
/// discovery's monitoring port, through `meshctl dashboard`.
#[test]
fn the_page_draws_locks_protocols_and_stale_clusters_as_the_graph_says() {
    let Some(chromium) = browser::chromium() else {
        eprintln!("skipped: no chromium (apt-get install chromium)");
        return;
    };
    let edge = |app: &str, dst: &str, cluster: &str, protocol: &str, mtls: bool| {
        serde_json::json!({
            "source": {"cluster": "east", "namespace": "shop", "app": app, "version": "v1"},
            "destination": {"service": format!("{dst}.shop.svc.cluster.local"), "cluster": cluster,
                            "namespace": "shop", "app": dst, "version": "v1"},
            "protocol": protocol, "mtls": mtls, "viaGateway": cluster != "east",
            "requests": 50, "errors": 0, "rps": 5.0, "errorRate": 0.0, "p50Ms": 2.0, "p99Ms": 9.0,
            "reportedBy": "east", "ageMs": null, "stale": cluster == "west",
        })
    };
    let graph = serde_json::json!({
        "cluster": "east", "windowSeconds": 10,
        "clusters": [
            {"name": "east", "network": "net-east", "state": "local", "stale": false},
            {"name": "west", "network": "net-west", "state": "withdrawn", "stale": true,
             "endpoints": 0, "staleSince": "2026-12-05T08:00:00Z"},
        ],
        "edges": [
            edge("web", "legacy", "east", "http", false),
            edge("web", "reviews", "east", "http", true),
            edge("web", "db", "east", "tcp", true),
            edge("web", "search", "west", "http", true),
        ],
    })
    .to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let fake_addr = fake.local_addr().unwrap();
    rt.spawn(mesh_net::http::serve_endpoints(fake, move |req| {
        let status = if req.uri().path() == "/dashboard/api/graph" {
            http::StatusCode::OK
        } else {
            http::StatusCode::NOT_FOUND
        };
        mesh_net::http::text_response(status, "application/json", graph.clone())
    }));
    let mut dashboard = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["dashboard", "--listen", "127.0.0.1:0", "--discovery"])
        .arg(fake_addr.to_string())
        .env_remove("ISTHMUS_JAEGER")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(dashboard.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let url = first
        .strip_prefix("Dashboard: ")
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();

    let mut page = browser::Browser::launch(&chromium, 1400, 700);
    page.open(&url);
    let lock = |dst: &str| {
        format!(
            "(() => {{ const e = document.querySelector('g.edge[data-dest=\"{dst}\"]'); if (!e) return null; \
             const l = document.querySelector(`g.edge-label[data-key=\"${{e.dataset.key}}\"]`); \
             return (l.querySelector('.lock.closed') ? 'closed' : '') + (l.querySelector('.lock.open') ? 'open' : '') \
             + ' ' + l.textContent; }})()"
        )
    };
    let legacy = page.wait_for(
        &lock("legacy"),
        Duration::from_secs(20),
        "the plaintext edge",
    );
    assert!(legacy.as_str().unwrap().starts_with("open "), "{legacy}");
    let reviews = page.eval(&lock("reviews"));
    assert!(
        reviews.as_str().unwrap().starts_with("closed "),
        "{reviews}"
    );
    let db = page.eval(&lock("db"));
    assert!(db.as_str().unwrap().contains("conn/s"), "{db}");
    assert!(!db.as_str().unwrap().contains("p99"), "{db}");
    // West withdrawn: its band dashed, its nodes marked, the edge to it stale.
    let west = page.eval(
        "[document.querySelector('g.cluster[data-cluster=\"west\"]').getAttribute('class'), \
          [...document.querySelectorAll('g.node.stale')].map(n => n.dataset.label).sort().join(','), \
          document.querySelector('g.edge[data-dest=\"search\"]').dataset.stale]",
    );
    assert_eq!(west[0], "cluster stale", "{west}");
    assert_eq!(west[1], "search v1,search.shop", "{west}");
    assert_eq!(west[2], "true", "{west}");

    // No Jaeger: the edge's traces say why.
    let key = page.eval("document.querySelector('g.edge[data-dest=\"reviews\"]').dataset.key");
    page.click(&format!(
        r#"g.edge-label[data-key="{}"]"#,
        key.as_str().unwrap()
    ));
    let why = page.wait_for(
        "document.querySelector('#traces .error-text')?.textContent",
        Duration::from_secs(10),
        "why there are no traces",
    );
    assert!(
        why.as_str().unwrap().contains("no Jaeger query address"),
        "{why}"
    );
    let _ = dashboard.kill();
    let _ = dashboard.wait();
}
