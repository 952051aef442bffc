//! `meshctl testbed`: a local multi-cluster mesh on this machine. `up` starts a
//! supervisor in the background that runs, per cluster, a kube-apiserver + etcd (or
//! the file registry), discovery, an east-west gateway and sample workloads with
//! sidecars, all linked; `status`, `curl`, `scenario` and `down` talk to it.

mod apps;
mod chaos;
mod children;
mod network;
mod plan;
mod soak;
mod supervisor;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub(crate) use supervisor::SuperviseArgs;
use supervisor::{RegistryMode, read_state};

/// Where the sample workloads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum WorkloadMode {
    /// Pods when running as root with `ip` and `iptables`, else loopback.
    Auto,
    /// Each workload in a network namespace of its own (a pod), each cluster a
    /// network of its own, sidecars capturing traffic with iptables. Needs root.
    Pods,
    /// Loopback addresses, applications calling their sidecar in explicit mode.
    Loopback,
}

/// `meshctl testbed` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TestbedCommand {
    /// Bring the testbed up (in the background) and wait until a request crosses
    /// clusters.
    Up {
        /// Clusters.
        #[arg(long, default_value_t = 2)]
        clusters: usize,
        /// Networks (cluster i is on network i mod N; endpoints on another network
        /// are reached through its east-west gateway).
        #[arg(long, default_value_t = 2)]
        networks: usize,
        /// Registry: a kube-apiserver per cluster, or the file registry.
        #[arg(long, value_enum, default_value_t = RegistryMode::Auto)]
        registry: RegistryMode,
        /// Pods (network namespaces, transparent capture; root) or loopback.
        #[arg(long, value_enum, default_value_t = WorkloadMode::Auto)]
        workloads: WorkloadMode,
        /// Then run these scenarios (repeatable): failover, canary, strict-mtls,
        /// clusterset.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        #[command(flatten)]
        tuning: supervisor::Tuning,
        /// Where the testbed keeps its state, certificates and logs.
        #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
        dir: Option<PathBuf>,
    },
    /// What is running and whether it is healthy.
    Status {
        #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the kubeconfig of a cluster's API server, for `kubectl --kubeconfig
    /// $(meshctl testbed kubeconfig east) apply -f my-istio.yaml`.
    Kubeconfig {
        /// The cluster (default: the first).
        cluster: Option<String>,
        #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
        dir: Option<PathBuf>,
    },
    /// Stop everything the testbed started and remove its files (safe to run twice).
    Down {
        #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
        dir: Option<PathBuf>,
    },
    /// Send a request from the curl workload of a cluster, through its sidecar:
    /// `meshctl testbed curl http://helloworld:5000/hello`.
    Curl {
        /// The URL (its host names the service, as in a pod).
        url: String,
        /// The cluster to send from (default: the first).
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
        dir: Option<PathBuf>,
    },
    /// Run a scenario and print what it measured: failover, canary, strict-mtls,
    /// clusterset.
    Scenario {
        name: String,
        #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
        dir: Option<PathBuf>,
    },
    /// Inject a fault under load and print what it did (requests sent and failed,
    /// timings): local-discovery, remote-discovery, remote-gateway, link-rotation,
    /// link-churn, root-rotation, claimed-gateway, foreign-discovery, apiserver, or
    /// all. Exits non-zero when a scenario does not show what it must.
    Chaos {
        name: String,
        /// How long a component stays down (where the scenario does not fix it).
        #[arg(long, default_value = "5s")]
        outage: String,
        /// One JSON object per scenario instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
        dir: Option<PathBuf>,
    },
    /// A long run under steady load with a config change, endpoint churn and a link
    /// rotation in turn every few minutes; every component's memory and descriptors
    /// sampled each minute (`tools/soak.sh` runs it and plots them).
    Soak {
        /// How long.
        #[arg(long, default_value = "30m")]
        duration: String,
        /// A change every.
        #[arg(long, default_value = "3m")]
        every: String,
        /// Where samples.csv and events.csv go.
        #[arg(long, default_value = "soak")]
        out: PathBuf,
        #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
        dir: Option<PathBuf>,
    },
    /// The background supervisor (started by `up`).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

fn default_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("isthmus").join("testbed")
    })
}

/// Runs a `meshctl testbed` command.
pub(crate) fn run(cmd: TestbedCommand) -> anyhow::Result<()> {
    match cmd {
        TestbedCommand::Up {
            clusters,
            networks,
            registry,
            workloads,
            scenarios,
            tuning,
            dir,
        } => {
            let dir = default_dir(dir);
            up(&dir, clusters, networks, registry, workloads, &tuning)?;
            for s in scenarios {
                scenario(&dir, &s)?;
            }
            Ok(())
        }
        TestbedCommand::Status { dir } => status(&default_dir(dir)),
        TestbedCommand::Down { dir } => down(&default_dir(dir)),
        TestbedCommand::Kubeconfig { cluster, dir } => {
            let (state, plan) = ready_state(&default_dir(dir))?;
            let name = match cluster {
                Some(c) => c,
                None => plan.clusters.first().context("no cluster")?.name.clone(),
            };
            let path = state.kubeconfigs.get(&name).with_context(|| {
                if state.kubeconfigs.is_empty() {
                    "this testbed runs the file registry (no API server); bring it up as root \
                     with the Kubernetes binaries (tools/build-kube-bins.sh) to get one"
                        .to_owned()
                } else {
                    format!(
                        "no cluster {name:?}; the clusters are {:?}",
                        state.kubeconfigs.keys().collect::<Vec<_>>()
                    )
                }
            })?;
            println!("{path}");
            Ok(())
        }
        TestbedCommand::Curl { url, cluster, dir } => {
            let (status, body) = curl(&default_dir(dir), cluster.as_deref(), &url)?;
            print!("{body}");
            anyhow::ensure!(status < 400, "HTTP {status}");
            Ok(())
        }
        TestbedCommand::Scenario { name, dir } => scenario(&default_dir(dir), &name),
        TestbedCommand::Chaos {
            name,
            outage,
            json,
            dir,
        } => {
            let outage = outage
                .parse::<mesh_api::Duration>()
                .map(Duration::from)
                .map_err(|e| anyhow::anyhow!("--outage: {e}"))?;
            chaos::run(&default_dir(dir), &name, outage, json)
        }
        TestbedCommand::Soak {
            duration,
            every,
            out,
            dir,
        } => {
            let parse = |what: &str, v: &str| {
                v.parse::<mesh_api::Duration>()
                    .map(Duration::from)
                    .map_err(|e| anyhow::anyhow!("--{what}: {e}"))
            };
            soak::run(
                &default_dir(dir),
                parse("duration", &duration)?,
                parse("every", &every)?,
                &out,
            )
        }
        TestbedCommand::Supervise(args) => supervisor::supervise(args),
    }
}

fn alive(state: &supervisor::State) -> bool {
    state.pid != 0 && testbed::is_alive(state.pid)
}

fn up(
    dir: &Path,
    clusters: usize,
    networks: usize,
    registry: RegistryMode,
    workloads: WorkloadMode,
    tuning: &supervisor::Tuning,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=8).contains(&clusters),
        "--clusters must be between 1 and 8"
    );
    let pods = match (workloads, network::available()) {
        (WorkloadMode::Loopback, _) => false,
        (_, Ok(())) => true,
        (WorkloadMode::Pods, Err(why)) => {
            anyhow::bail!("--workloads pods needs root, `ip` and `iptables`: {why}")
        }
        (WorkloadMode::Auto, Err(why)) => {
            println!(
                "Workloads on loopback in explicit proxy mode ({why}); as root they run in pods with transparent capture."
            );
            false
        }
    };
    if let Some(state) = read_state(dir)
        && alive(&state)
    {
        println!("The testbed is already up ({}).", dir.display());
        return status(dir);
    }
    // The addresses are fixed: another testbed (started with another --dir) would
    // collide with this one.
    let probe = plan::Plan::new(clusters, networks, pods);
    let first = probe.clusters[0].discovery;
    if pods {
        if let Some(why) = network::conflict(&probe) {
            anyhow::bail!(
                "{why} (see `meshctl testbed status --dir DIR`, stop it with `meshctl testbed down --dir DIR`)"
            );
        }
    } else if std::net::TcpListener::bind(first).is_err() {
        anyhow::bail!(
            "{first} is in use: another testbed is probably running (see `meshctl testbed status --dir DIR`, stop it with `meshctl testbed down --dir DIR`)"
        );
    }
    // The shared Jaeger's query port: taken, the testbed's traces would go nowhere.
    if std::net::TcpListener::bind(("0.0.0.0", 16686)).is_err() {
        anyhow::bail!(
            "port 16686 (the testbed's Jaeger) is in use: another testbed, or a Jaeger of your own; stop it (`meshctl testbed down --dir DIR` for a testbed) and run `up` again"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe()?;
    build_missing_binaries(&exe)?;
    let log = std::fs::File::create(dir.join("supervisor.log"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["testbed", "supervise", "--dir"])
        .arg(dir)
        .args([
            "--clusters",
            &clusters.to_string(),
            "--networks",
            &networks.to_string(),
        ])
        .args([
            "--registry",
            match registry {
                RegistryMode::Auto => "auto",
                RegistryMode::Kubernetes => "kubernetes",
                RegistryMode::Files => "files",
            },
        ])
        .args(pods.then_some("--pods"))
        .args(tuning.args())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: it outlives this command and a terminal's Ctrl-C.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("starting the testbed supervisor")?;
    println!(
        "Bringing up {clusters} cluster(s) on {networks} network(s), workloads {}, in {}",
        if pods {
            "in pods (network namespaces, transparent capture)"
        } else {
            "on loopback (explicit proxy mode)"
        },
        dir.display()
    );
    let started = Instant::now();
    let mut shown = 0;
    // A spinner for the step under way (on a terminal only); finished steps print as
    // lines above it.
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("  {spinner} {prefix:<28} {elapsed:>6}  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let emit = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let state = read_state(dir).unwrap_or_default();
        for step in state.steps.iter().skip(shown) {
            if step.state == "running" {
                bar.set_prefix(step.name.clone());
                bar.set_message(step.detail.clone());
                break;
            }
            let mark = if step.state == "done" { "✔" } else { "✘" };
            emit(format!(
                "  {mark} {:<28} {:>6.1} s  {}",
                step.name, step.seconds, step.detail
            ));
            shown += 1;
        }
        if state.ready || state.error.is_some() {
            bar.finish_and_clear();
        }
        if let Some(e) = &state.error {
            let _ = child.wait();
            anyhow::bail!(
                "the testbed did not come up: {e}\n(logs in {})",
                dir.join("logs").display()
            );
        }
        if state.ready {
            println!();
            if !state.registry_note.is_empty() {
                println!("Note: {}", state.registry_note);
            }
            if !state.tracing_note.is_empty() {
                println!("Note: {}", state.tracing_note);
            }
            if let Some(t) = state.first_request_seconds {
                let across = state.plan.as_ref().is_some_and(|p| p.clusters.len() > 1);
                let what = if across {
                    "across clusters"
                } else {
                    "through the chain"
                };
                println!("Ready in {t:.1} s (to the first request {what}).");
                if let (Some(id), Some(_)) = (&state.first_trace, &state.jaeger) {
                    println!(
                        "Its trace, with a span from each sidecar and gateway on the way: meshctl trace {id}"
                    );
                }
            }
            print_next_steps(&state);
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "the testbed supervisor exited ({status}); see {}",
                dir.join("supervisor.log").display()
            );
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "the testbed is not up after 15 minutes; see {}",
            dir.join("logs").display()
        );
    }
}

/// Under `cargo run`, builds the binaries the testbed starts when they are missing
/// (`cargo run -p meshctl` builds meshctl alone).
fn build_missing_binaries(exe: &Path) -> anyhow::Result<()> {
    const BINS: [&str; 3] = ["discovery", "sidecar", "east-west-gateway"];
    let dir = exe.parent().context("meshctl has no directory")?;
    if BINS.iter().all(|b| dir.join(b).exists()) {
        return Ok(());
    }
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(()); // the supervisor reports what is missing
    };
    println!("Building discovery, sidecar and east-west-gateway ...");
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("build");
    for b in BINS {
        cmd.args(["-p", b]);
    }
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build failed");
    Ok(())
}

fn print_next_steps(state: &supervisor::State) {
    let Some(plan) = &state.plan else { return };
    let first = &plan.clusters[0];
    if let Some(d) = &state.dashboard {
        println!(
            "\nDashboard: http://{d}/  (every cluster and the calls between them, live; click an edge for its traces)"
        );
    }
    println!("\nTry:");
    println!(
        "  meshctl testbed curl http://helloworld:5000/hello        # from {}: v1 here, v2 in the next cluster on failover",
        first.name
    );
    println!(
        "  meshctl testbed curl http://frontpage:9080/               # front page → reviews (other cluster) → ratings"
    );
    if plan.clusters.len() > 1 {
        println!(
            "  meshctl testbed curl http://{}:5000/hello       # a service only {} has: no Service here, resolved by the sidecar's DNS proxy",
            plan::REMOTE_ONLY,
            plan.clusters[1].name
        );
    }
    println!(
        "  curl http://{}/api                              # the ingress gateway of {}: helloworld 90% v1 here, 10% v2 in the next cluster",
        first.ingress, first.name
    );
    println!(
        "  meshctl testbed scenario failover                         # also: canary, strict-mtls"
    );
    println!("  meshctl proxy-status --discovery {}", first.monitor);
    println!(
        "  meshctl proxy-config curl-{}.sample endpoints --discovery {}",
        first.name, first.monitor
    );
    println!(
        "  meshctl multicluster status --discovery {}",
        first.monitor
    );
    println!(
        "  meshctl multicluster verify-failover --discovery {} --service helloworld.{}",
        first.monitor,
        plan::NAMESPACE
    );
    if let Some(jaeger) = &state.jaeger {
        println!(
            "  meshctl trace --last                                      # the last trace, as a waterfall (Jaeger API: http://{jaeger})"
        );
    }
    println!("  meshctl testbed status");
    println!("  meshctl testbed down");
}

fn status(dir: &Path) -> anyhow::Result<()> {
    let Some(state) = read_state(dir) else {
        println!(
            "No testbed in {} (start one with `meshctl testbed up`).",
            dir.display()
        );
        return Ok(());
    };
    let up = alive(&state);
    println!(
        "Testbed in {}: supervisor {} ({}), registry: {}",
        dir.display(),
        state.pid,
        if up { "running" } else { "NOT RUNNING" },
        if state.registry.is_empty() {
            "-"
        } else {
            &state.registry
        }
    );
    let Some(plan) = &state.plan else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let check = |addr: std::net::SocketAddr, path: &str| match rt
        .block_on(mesh_net::http::get(addr, path))
    {
        Ok((s, _)) if s.is_success() => "ready".to_owned(),
        Ok((s, _)) => format!("{s}"),
        Err(_) => "down".to_owned(),
    };
    // What the supervisor says of a component: held down, restarting, restarts.
    let supervised = |name: &str| {
        let Some(c) = state.components.iter().find(|c| c.name == name) else {
            return String::new();
        };
        let mut note = String::new();
        if c.state != "running" {
            note.push_str(&format!(" ({})", c.state));
        }
        if c.restarts > 0 {
            let last = c.last_exit.lines().next().unwrap_or_default();
            note.push_str(&format!("  restarts {} (last exit: {last})", c.restarts));
        }
        note
    };
    for c in &plan.clusters {
        println!(
            "\ncluster {} (network {}, {})",
            c.name, c.network, c.locality
        );
        if let Some(kubeconfig) = state.kubeconfigs.get(&c.name) {
            let name = format!("apiserver-{}", c.name);
            let note = supervised(&name);
            println!(
                "  {:<24} {:<22} {}",
                "kube-apiserver",
                kubeconfig,
                note.trim()
            );
        }
        println!(
            "  {:<24} {:<22} {}{}",
            "discovery",
            c.discovery,
            check(c.monitor, "/ready"),
            supervised(&format!("discovery-{}", c.name))
        );
        println!(
            "  {:<24} {:<22} {}{}",
            "east-west gateway",
            c.gateway,
            check(c.gateway_admin, "/healthz/ready"),
            supervised(&format!("gateway-{}", c.name))
        );
        println!(
            "  {:<24} {:<22} {}{}",
            "ingress gateway",
            format!("http://{}", c.ingress),
            check(c.ingress_admin, "/healthz/ready"),
            supervised(&format!("ingress-{}", c.name))
        );
        for w in &c.workloads {
            println!(
                "  {:<24} {:<22} {}{}",
                w.name,
                w.ip,
                check(w.admin(), "/healthz/ready"),
                supervised(&w.name)
            );
        }
    }
    if let Some(d) = &state.dashboard {
        println!("\ndashboard                  http://{d}/");
    }
    Ok(())
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let Some(state) = read_state(dir) else {
        println!("Nothing to stop in {}.", dir.display());
        let _ = std::fs::remove_dir_all(dir);
        return Ok(());
    };
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if alive(&state) {
        let _ = kill(Pid::from_raw(state.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while testbed::is_alive(state.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if testbed::is_alive(state.pid) {
            let _ = kill(Pid::from_raw(state.pid as i32), Signal::SIGKILL);
        }
    }
    // Anything the supervisor could not stop (its children die with it; this is for
    // a supervisor killed hard).
    for pid in &state.children {
        if testbed::is_alive(*pid) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
    network::remove(&state.namespaces, &state.links);
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("Testbed stopped; {} removed.", dir.display());
    Ok(())
}

fn ready_state(dir: &Path) -> anyhow::Result<(supervisor::State, plan::Plan)> {
    let state = read_state(dir)
        .with_context(|| format!("no testbed in {}; run `meshctl testbed up`", dir.display()))?;
    anyhow::ensure!(
        alive(&state) && state.ready,
        "the testbed in {} is not running; run `meshctl testbed up`",
        dir.display()
    );
    let plan = state.plan.clone().context("no plan in state.json")?;
    Ok((state, plan))
}

fn curl(dir: &Path, cluster: Option<&str>, url: &str) -> anyhow::Result<(u16, String)> {
    let (_, plan) = ready_state(dir)?;
    let c = match cluster {
        Some(name) => plan
            .cluster(name)
            .with_context(|| format!("no cluster {name:?}"))?,
        None => &plan.clusters[0],
    };
    let curl = curl_of(c)?;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    apps::get_from(&plan, c, curl, authority, path, None).map_err(anyhow::Error::msg)
}

/// Requests from a workload (from inside its pod, or through its sidecar's outbound
/// listener), from synchronous code.
struct Sender<'a> {
    plan: &'a plan::Plan,
    cluster: &'a plan::Cluster,
    workload: &'a plan::Workload,
}

impl Sender<'_> {
    fn get(&self, authority: &str, path: &str) -> Result<(u16, String), String> {
        apps::get_from(
            self.plan,
            self.cluster,
            self.workload,
            authority,
            path,
            None,
        )
    }

    fn hello(&self) -> Result<(u16, String), String> {
        self.get("helloworld:5000", "/hello")
    }
}

fn control(state: &supervisor::State, action: &str, app: &str) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = state
        .control
        .as_deref()
        .context("no control endpoint")?
        .parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt
        .block_on(mesh_net::http::get(addr, &format!("/{action}/{app}")))
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(status.is_success(), "{body}");
    Ok(())
}

fn scenario(dir: &Path, name: &str) -> anyhow::Result<()> {
    match name {
        "failover" => failover(dir),
        "canary" => canary(dir),
        "strict-mtls" => strict_mtls(dir),
        "clusterset" => clusterset(dir),
        other => anyhow::bail!(
            "unknown scenario {other:?}; try failover, canary, strict-mtls or clusterset"
        ),
    }
}

/// The admin address of the curl workload's sidecar in `cluster` (default: the first)
/// of the testbed in `dir`.
pub(crate) fn curl_admin(
    dir: Option<PathBuf>,
    cluster: Option<&str>,
) -> anyhow::Result<std::net::SocketAddr> {
    let (_, plan) = ready_state(&default_dir(dir))?;
    let c = match cluster {
        Some(name) => plan
            .cluster(name)
            .with_context(|| format!("no testbed cluster {name:?}"))?,
        None => plan.clusters.first().context("no cluster")?,
    };
    Ok(curl_of(c)?.admin())
}

/// Each testbed cluster's kubeconfig (with the Kubernetes registry), in plan order.
pub(crate) fn kubeconfigs(dir: Option<PathBuf>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let (state, plan) = ready_state(&default_dir(dir))?;
    plan.clusters
        .iter()
        .map(|c| {
            state
                .kubeconfigs
                .get(&c.name)
                .map(|k| (c.name.clone(), PathBuf::from(k)))
                .with_context(|| {
                    format!(
                        "cluster {} of the testbed has no API server (file registry)",
                        c.name
                    )
                })
        })
        .collect()
}

/// Each testbed cluster's discovery monitoring address, by cluster name.
pub(crate) fn monitors(
    dir: Option<PathBuf>,
) -> anyhow::Result<std::collections::BTreeMap<String, std::net::SocketAddr>> {
    let (_, plan) = ready_state(&default_dir(dir))?;
    Ok(plan
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.monitor))
        .collect())
}

/// The testbed's Jaeger query address, when tracing runs.
pub(crate) fn jaeger(dir: Option<PathBuf>) -> Option<std::net::SocketAddr> {
    let (state, _) = ready_state(&default_dir(dir)).ok()?;
    state.jaeger?.parse().ok()
}

/// The state and plan of a ready testbed of at least two clusters, for `scenario`.
fn two_clusters(dir: &Path, scenario: &str) -> anyhow::Result<(supervisor::State, plan::Plan)> {
    let (state, plan) = ready_state(dir)?;
    anyhow::ensure!(
        plan.clusters.len() >= 2,
        "the {scenario} scenario needs two clusters"
    );
    Ok((state, plan))
}

/// The curl workload of cluster `c`, the scenarios' client.
pub(crate) fn curl_of(c: &plan::Cluster) -> anyhow::Result<&plan::Workload> {
    c.workloads
        .iter()
        .find(|w| w.app == "curl")
        .with_context(|| format!("no curl workload in cluster {}", c.name))
}

/// Applies (or, with `remove`, deletes) Istio YAML in every cluster, as a user would:
/// `kubectl apply` to the API servers, or a file in each registry directory.
fn configure(
    state: &supervisor::State,
    file: &str,
    yaml: &str,
    remove: bool,
) -> anyhow::Result<()> {
    configure_in(state, None, file, yaml, remove)
}

/// As [`configure`], in one cluster only when `only` names it.
fn configure_in(
    state: &supervisor::State,
    only: Option<&str>,
    file: &str,
    yaml: &str,
    remove: bool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let wanted = |c: &str| only.is_none_or(|o| o == c);
    for (cluster, kubeconfig) in state.kubeconfigs.iter().filter(|(c, _)| wanted(c)) {
        rt.block_on(async {
            let client = discovery::kube_client(Path::new(kubeconfig)).await?;
            let mode = if remove {
                testbed::apply::Mode::Delete
            } else {
                testbed::apply::Mode::Apply
            };
            testbed::apply::apply_yaml(&client, yaml, plan::NAMESPACE, mode).await?;
            anyhow::Ok(())
        })
        .with_context(|| format!("configuring cluster {cluster}"))?;
    }
    for (_, dir) in state.registry_dirs.iter().filter(|(c, _)| wanted(c)) {
        let path = Path::new(dir).join(file);
        if remove {
            let _ = std::fs::remove_file(&path);
        } else {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, yaml)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    Ok(())
}

/// An 80/20 split between helloworld v1 and v2 (in two clusters): the split observed
/// over 500 requests against the weights.
fn canary(dir: &Path) -> anyhow::Result<()> {
    let (state, plan) = two_clusters(dir, "canary")?;
    let curl = curl_of(&plan.clusters[0])?;
    println!(
        "\nScenario canary: helloworld 80 % v1 ({}) / 20 % v2 ({}).",
        plan.clusters[0].name, plan.clusters[1].name
    );
    let split = plan::ROUTING.replace(
        "  - route: [{destination: {host: helloworld}}]",
        "  - route:\n    - {destination: {host: helloworld, subset: v1}, weight: 80}\n    - {destination: {host: helloworld, subset: v2}, weight: 20}",
    );
    configure(&state, "routing.yaml", &split, false)?;
    let sender = Sender {
        plan: &plan,
        cluster: &plan.clusters[0],
        workload: curl,
    };
    let send = || sender.hello();
    // Until the split is in force (a v2 answer from the first cluster's client).
    let start = Instant::now();
    while !matches!(send(), Ok((200, ref b)) if b.contains("version: v2")) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "the split never took effect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut v1, mut v2, mut failed) = (0u32, 0u32, 0u32);
    for _ in 0..500 {
        match send() {
            Ok((200, b)) if b.contains("version: v1") => v1 += 1,
            Ok((200, b)) if b.contains("version: v2") => v2 += 1,
            _ => failed += 1,
        }
    }
    configure(&state, "routing.yaml", plan::ROUTING, false)?;
    let share = f64::from(v2) * 100.0 / f64::from((v1 + v2).max(1));
    println!("  observed: v1 {v1}, v2 {v2} ({share:.1} % v2 against 20 %), {failed} failed");
    anyhow::ensure!(
        failed == 0 && (share - 20.0).abs() <= 6.0,
        "canary scenario FAILED"
    );
    println!("  PASS: the split follows the weights (±6 points).");
    Ok(())
}

/// The Multi-Cluster Services API: a ServiceExport of helloworld in the second cluster
/// makes `helloworld.NS.svc.clusterset.local` answer from that cluster only; one in
/// the first cluster adds its endpoints; deleting the second's withdraws them. Each
/// step is observed from the first cluster's client over 40 requests.
fn clusterset(dir: &Path) -> anyhow::Result<()> {
    let (state, plan) = two_clusters(dir, "clusterset")?;
    let (first, second) = (&plan.clusters[0], &plan.clusters[1]);
    let curl = curl_of(first)?;
    let host = mesh_api::mcs::clusterset_host("helloworld", plan::NAMESPACE);
    let authority = format!("{host}:5000");
    println!(
        "\nScenario clusterset: ServiceExports of helloworld; curl in {} → {authority}.",
        first.name
    );
    let export = format!(
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {{name: helloworld, namespace: {}}}\n",
        plan::NAMESPACE
    );
    let sender = Sender {
        plan: &plan,
        cluster: first,
        workload: curl,
    };
    // The clusters that answered 40 requests (an error fails the step).
    let observe = || -> Result<BTreeSet<String>, String> {
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            match sender.get(&authority, "/hello") {
                Ok((200, body)) => {
                    let cluster = body.rsplit("cluster: ").next().unwrap_or_default();
                    seen.insert(cluster.trim().to_owned());
                }
                Ok((status, body)) => return Err(format!("{status}: {body}")),
                Err(e) => return Err(e),
            }
        }
        Ok(seen)
    };
    // Waits until 40 requests answer from exactly `want`.
    let expect = |step: &str, want: &[&str]| -> anyhow::Result<()> {
        let want: BTreeSet<String> = want.iter().map(|c| (*c).to_owned()).collect();
        let start = Instant::now();
        loop {
            let seen = observe();
            if seen.as_ref().is_ok_and(|s| *s == want) {
                println!("  {step}: answered by {want:?}");
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "clusterset scenario FAILED at {step}: wanted answers from {want:?}, saw {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let result = (|| {
        configure_in(
            &state,
            Some(&second.name),
            "mcs-export.yaml",
            &export,
            false,
        )?;
        expect(&format!("exported by {}", second.name), &[&second.name])?;
        configure_in(&state, Some(&first.name), "mcs-export.yaml", &export, false)?;
        expect("exported by both", &[&first.name, &second.name])?;
        configure_in(&state, Some(&second.name), "mcs-export.yaml", &export, true)?;
        expect(&format!("withdrawn by {}", second.name), &[&first.name])
    })();
    configure(&state, "mcs-export.yaml", &export, true)?;
    result?;
    println!("  PASS: the clusterset name follows the clusters that export the service.");
    Ok(())
}

/// PeerAuthentication PERMISSIVE, then STRICT: a client outside the mesh (on the
/// node, no sidecar) sends plaintext to the workload's own port, as it would to any
/// pod; capture hands it to the sidecar, which serves it under PERMISSIVE and refuses
/// it under STRICT, while mTLS requests from a meshed client keep working.
fn strict_mtls(dir: &Path) -> anyhow::Result<()> {
    let (state, plan) = ready_state(dir)?;
    let c = &plan.clusters[0];
    let curl = curl_of(c)?;
    let target = c
        .workloads
        .iter()
        .find(|w| w.app == "helloworld")
        .context("helloworld")?;
    anyhow::ensure!(
        target.pod.is_some(),
        "the strict-mtls scenario needs workloads in pods (run the testbed as root): in \
         explicit proxy mode nothing captures a plaintext client, which reaches the app \
         directly, as in Istio without capture"
    );
    println!(
        "\nScenario strict-mtls: plaintext from outside the mesh to {}:{} (helloworld's own port), under PERMISSIVE then STRICT in namespace {}.",
        target.ip,
        target.port,
        plan::NAMESPACE
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let apply_mode = |mode: &str| -> anyhow::Result<()> {
        let pa = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {}}}\nspec: {{mtls: {{mode: {mode}}}}}\n",
            plan::NAMESPACE
        );
        configure(&state, "peer-authentication.yaml", &pa, false)?;
        // Until the helloworld sidecar holds it.
        let start = Instant::now();
        loop {
            let dump = rt.block_on(mesh_net::http::get(target.admin(), "/config_dump"));
            if dump.is_ok_and(|(_, b)| b.contains(&format!("\"default\": \"{mode}\""))) {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "PeerAuthentication {mode} never reached the helloworld sidecar"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Plaintext HTTP from the node to the pod's service port.
    let plaintext = || -> String {
        use std::io::{Read, Write};
        let addr = std::net::SocketAddr::new(target.ip, target.port);
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            s,
            "GET /hello HTTP/1.1\r\nhost: helloworld\r\nconnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let describe = |answer: &str| {
        if answer.starts_with("HTTP/1.1 200") {
            "served (200 OK)".to_owned()
        } else if answer.is_empty() {
            "refused (connection closed, no response)".to_owned()
        } else {
            format!("refused ({})", answer.lines().next().unwrap_or_default())
        }
    };
    let mesh = Sender {
        plan: &plan,
        cluster: c,
        workload: curl,
    };

    apply_mode("PERMISSIVE")?;
    let permissive = plaintext();
    let served = permissive.starts_with("HTTP/1.1 200") && permissive.contains("version: v1");
    println!("  PERMISSIVE, plaintext: {}", describe(&permissive));

    apply_mode("STRICT")?;
    let strict = plaintext();
    let refused = !strict.starts_with("HTTP/1.1 200");
    let mesh_ok = matches!(mesh.hello(), Ok((200, _)));
    configure(&state, "peer-authentication.yaml", "", true)?;
    println!("  STRICT, plaintext: {}", describe(&strict));
    println!(
        "  STRICT, mTLS from curl-{}: {}",
        c.name,
        if mesh_ok { "200 OK" } else { "failed" }
    );
    anyhow::ensure!(served && refused && mesh_ok, "strict-mtls scenario FAILED");
    println!("  PASS: plaintext served under PERMISSIVE, refused under STRICT; mTLS served.");
    Ok(())
}

/// Requests flow from curl in the first cluster to helloworld (v1, local); v1 starts
/// failing; traffic must move to v2 in the next cluster with no failed request.
fn failover(dir: &Path) -> anyhow::Result<()> {
    let (state, plan) = two_clusters(dir, "failover")?;
    let (first, second) = (&plan.clusters[0], &plan.clusters[1]);
    let curl = curl_of(first)?;
    let v1 = &first.workloads[0].name;
    println!(
        "\nScenario failover: curl in {} → helloworld; {v1} starts failing.",
        first.name
    );
    let sender = Sender {
        plan: &plan,
        cluster: first,
        workload: curl,
    };
    let send = || sender.hello();
    // Warm up: local first.
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = send()
            && body.contains(&format!("cluster: {}", first.name))
        {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "helloworld is not served locally"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut ok, mut failed, mut moved_at) = (0u32, Vec::new(), None);
    let run_for = |secs: u64,
                   ok: &mut u32,
                   failed: &mut Vec<String>,
                   moved_at: &mut Option<Duration>,
                   t0: Instant| {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            match send() {
                Ok((200, body)) => {
                    *ok += 1;
                    if moved_at.is_none() && body.contains(&format!("cluster: {}", second.name)) {
                        *moved_at = Some(t0.elapsed());
                    }
                }
                other => failed.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let t0 = Instant::now();
    run_for(1, &mut ok, &mut failed, &mut moved_at, t0);
    control(&state, "fail", v1)?;
    let failed_at = Instant::now();
    run_for(3, &mut ok, &mut failed, &mut moved_at, failed_at);
    control(&state, "restore", v1)?;
    // Fail-back: once v1 answers again and its ejection (5 s) is over, traffic returns.
    let restored = Instant::now();
    let back = loop {
        match send() {
            Ok((200, body)) if body.contains(&format!("cluster: {}", first.name)) => {
                break Some(restored.elapsed());
            }
            Ok((200, _)) => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
        if restored.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let total = ok as usize + failed.len();
    match moved_at {
        Some(t) => println!(
            "  traffic moved to {} (v2) {:.0} ms after {v1} began failing",
            second.name,
            t.as_secs_f64() * 1000.0
        ),
        None => println!("  traffic never reached {}", second.name),
    }
    match back {
        Some(t) => println!(
            "  traffic came back to {} {:.1} s after {v1} recovered (ejection ends)",
            first.name,
            t.as_secs_f64()
        ),
        None => println!("  traffic did not come back to {} within 30 s", first.name),
    }
    println!("  {total} requests, {} failed", failed.len());
    for f in failed.iter().take(3) {
        println!("    failed: {f}");
    }
    anyhow::ensure!(
        moved_at.is_some() && failed.is_empty(),
        "failover scenario FAILED"
    );
    println!("  PASS: no request failed.");
    Ok(())
}
