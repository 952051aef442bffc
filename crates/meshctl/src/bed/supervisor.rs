//! The testbed supervisor: a background process that owns everything the testbed runs
//! (API servers, discovery, gateways, sidecars, sample apps). Its children die with
//! it, so `meshctl testbed down` only has to stop it. It reports progress and the
//! plan in `state.json` and serves a small control endpoint for scenarios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mesh_identity::RootCa;
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};
use serde::{Deserialize, Serialize};

use super::apps::{self, AppControl};
use super::children::{Children, ComponentState};
use super::network;
use super::plan::{self, NAMESPACE, Plan};

/// One step of the bring-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Step {
    pub(crate) name: String,
    /// `running`, `done` or `failed`.
    pub(crate) state: String,
    pub(crate) seconds: f64,
    pub(crate) detail: String,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct State {
    pub(crate) pid: u32,
    pub(crate) steps: Vec<Step>,
    pub(crate) ready: bool,
    pub(crate) error: Option<String>,
    pub(crate) plan: Option<Plan>,
    /// `kubernetes` (a kube-apiserver per cluster) or `files`.
    pub(crate) registry: String,
    pub(crate) registry_note: String,
    /// Scenario control endpoint.
    pub(crate) control: Option<String>,
    /// Bring-up time to the first successful cross-cluster request.
    pub(crate) first_request_seconds: Option<f64>,
    /// The trace id of that request.
    #[serde(default)]
    pub(crate) first_trace: Option<String>,
    /// Process ids of every child (for `down`, should the supervisor be gone).
    pub(crate) children: Vec<u32>,
    /// Kubeconfigs, by cluster (Kubernetes mode).
    pub(crate) kubeconfigs: BTreeMap<String, String>,
    /// Registry directories, by cluster (file mode).
    pub(crate) registry_dirs: BTreeMap<String, String>,
    /// Jaeger's query address (UI and API), when tracing runs.
    pub(crate) jaeger: Option<String>,
    /// The dashboard's address (`http://ADDR/`).
    #[serde(default)]
    pub(crate) dashboard: Option<String>,
    pub(crate) tracing_note: String,
    /// Network namespaces the testbed made (pod mode), for `down`.
    #[serde(default)]
    pub(crate) namespaces: Vec<String>,
    /// Host links the testbed made (pod mode), for `down`.
    #[serde(default)]
    pub(crate) links: Vec<String>,
    /// What the supervisor keeps running, with restarts.
    #[serde(default)]
    pub(crate) components: Vec<ComponentState>,
    /// The peering lease discovery grants (`--peering-lease`).
    #[serde(default)]
    pub(crate) peering_lease: String,
    /// The proxies' certificate lifetime (`--cert-ttl`).
    #[serde(default)]
    pub(crate) cert_ttl: String,
}

/// The state file in `dir`.
pub(crate) fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Reads `state.json`.
pub(crate) fn read_state(dir: &Path) -> Option<State> {
    serde_json::from_str(&std::fs::read_to_string(state_path(dir)).ok()?).ok()
}

struct Reporter {
    dir: PathBuf,
    state: State,
    step_started: Instant,
}

impl Reporter {
    fn save(&self) {
        let tmp = self.dir.join(".state.json.tmp");
        if std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&self.state).unwrap_or_default(),
        )
        .is_ok()
        {
            let _ = std::fs::rename(&tmp, state_path(&self.dir));
        }
    }

    fn start(&mut self, name: &str) {
        self.start_doing(name, "");
    }

    /// Starts a step with a note on what it is doing (shown while it runs).
    fn start_doing(&mut self, name: &str, doing: &str) {
        self.step_started = Instant::now();
        self.state.steps.push(Step {
            name: name.into(),
            state: "running".into(),
            seconds: 0.0,
            detail: doing.into(),
        });
        self.save();
    }

    fn done(&mut self, detail: impl Into<String>) {
        if let Some(s) = self.state.steps.last_mut() {
            s.state = "done".into();
            s.seconds = self.step_started.elapsed().as_secs_f64();
            s.detail = detail.into();
        }
        self.save();
    }

    fn fail(&mut self, error: &anyhow::Error) {
        if let Some(s) = self.state.steps.last_mut() {
            s.state = "failed".into();
            s.seconds = self.step_started.elapsed().as_secs_f64();
        }
        self.state.error = Some(format!("{error:#}"));
        self.save();
    }
}

/// How the registry is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RegistryMode {
    /// A kube-apiserver per cluster when the Kubernetes binaries can be built, else files.
    Auto,
    /// A kube-apiserver per cluster (fails when they cannot be built).
    Kubernetes,
    /// The file registry.
    Files,
}

/// `meshctl testbed supervise` arguments (started by `up`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SuperviseArgs {
    #[arg(long)]
    pub(crate) dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub(crate) clusters: usize,
    #[arg(long, default_value_t = 2)]
    pub(crate) networks: usize,
    #[arg(long, value_enum, default_value_t = RegistryMode::Auto)]
    pub(crate) registry: RegistryMode,
    /// Workloads in pods (network namespaces; root).
    #[arg(long)]
    pub(crate) pods: bool,
    #[command(flatten)]
    pub(crate) tuning: Tuning,
}

/// Timings of the testbed's components (short, so that what a fault does shows in
/// seconds).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Tuning {
    /// Lease each discovery grants the linked clusters (heartbeats every third).
    #[arg(long, default_value = "10s")]
    pub(crate) peering_lease: String,
    /// Lifetime of the certificates the proxies get from discovery's CA (renewed at
    /// half of it).
    #[arg(long, default_value = "1h")]
    pub(crate) cert_ttl: String,
}

impl Tuning {
    /// The arguments that pass these on to `testbed supervise`.
    pub(crate) fn args(&self) -> [String; 4] {
        [
            "--peering-lease".into(),
            self.peering_lease.clone(),
            "--cert-ttl".into(),
            self.cert_ttl.clone(),
        ]
    }
}

/// Runs the supervisor until SIGTERM.
pub(crate) fn supervise(args: SuperviseArgs) -> anyhow::Result<()> {
    // One thread: children get a parent-death signal tied to the thread that spawned
    // them, so they must all come from this one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("meshctl has no directory")?.join(name);
    anyhow::ensure!(
        path.exists(),
        "{name} not found next to meshctl ({}); build everything with `cargo build --workspace`",
        path.display()
    );
    Ok(path)
}

struct Running {
    children: Arc<Mutex<Children>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    network: Option<network::PodNetwork>,
}

impl Running {
    fn add(&self, p: testbed::Process) {
        lock(&self.children).add(p);
    }
}

fn lock(children: &Mutex<Children>) -> std::sync::MutexGuard<'_, Children> {
    children.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Proxies first, then discovery, then the API servers.
        lock(&self.children).stop_all();
        // Last: the namespaces (the pods' apps run on threads of this process).
        self.network.take();
    }
}

async fn run(args: SuperviseArgs) -> anyhow::Result<()> {
    let mut r = Reporter {
        dir: args.dir.clone(),
        state: State {
            pid: std::process::id(),
            peering_lease: args.tuning.peering_lease.clone(),
            cert_ttl: args.tuning.cert_ttl.clone(),
            ..Default::default()
        },
        step_started: Instant::now(),
    };
    r.save();
    let mut running = Running {
        children: Arc::default(),
        tasks: Vec::new(),
        network: None,
    };
    let controls = match bring_up(&args, &mut r, &mut running).await {
        Ok(c) => c,
        Err(e) => {
            r.fail(&e);
            return Err(e);
        }
    };
    // Scenario control: /fail/APP and /restore/APP (a sample app answers 500s, or
    // not), /kill/NAME, /stop/NAME and /start/NAME (a component).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    r.state.control = Some(listener.local_addr()?.to_string());
    // The dashboard, on a port a person can remember when it is free.
    if let Some(plan) = &r.state.plan {
        let first = plan.clusters[0].monitor;
        let dashboard = match tokio::net::TcpListener::bind("127.0.0.1:15000").await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        };
        r.state.dashboard = Some(dashboard.local_addr()?.to_string());
        let jaeger = r.state.jaeger.as_deref().and_then(|j| j.parse().ok());
        running.tasks.push(tokio::spawn(discovery::dashboard::serve(
            dashboard,
            discovery::dashboard::Dashboard::remote(first, jaeger),
        )));
    }
    r.state.ready = true;
    r.save();
    let controls = Arc::new(controls);
    let children = running.children.clone();
    running
        .tasks
        .push(tokio::spawn(mesh_proxy::http_util::serve_endpoints(
            listener,
            move |req| {
                let path = req.uri().path().to_owned();
                let (action, name) = path
                    .trim_start_matches('/')
                    .split_once('/')
                    .unwrap_or(("", ""));
                if matches!(action, "kill" | "stop" | "start") {
                    let (status, body) = match lock(&children).control(action, name) {
                        Ok(done) => (http::StatusCode::OK, done),
                        Err(e) => (http::StatusCode::NOT_FOUND, format!("{e}\n")),
                    };
                    return mesh_proxy::http_util::text_response(status, "text/plain", body);
                }
                match (action, controls.get(name)) {
                    ("fail", Some(c)) => c.failing.store(true, std::sync::atomic::Ordering::SeqCst),
                    ("restore", Some(c)) => {
                        c.failing.store(false, std::sync::atomic::Ordering::SeqCst)
                    }
                    _ => {
                        return mesh_proxy::http_util::text_response(
                            http::StatusCode::NOT_FOUND,
                            "text/plain",
                            format!("no app {name:?} or action {action:?}\n"),
                        );
                    }
                }
                mesh_proxy::http_util::text_response(
                    http::StatusCode::OK,
                    "text/plain",
                    format!("{action} {name}\n"),
                )
            },
        )));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut watch = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = watch.tick() => {
                let states = {
                    let mut children = lock(&running.children);
                    children.tick();
                    children.states()
                };
                if states != r.state.components {
                    r.state.components = states;
                    r.save();
                }
            }
        }
    }
    drop(running);
    r.state.ready = false;
    r.save();
    Ok(())
}

async fn wait_http_ok(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok((status, _)) = mesh_net::http::get(addr, path).await
            && status.is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "http://{addr}{path} not ready after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn bring_up(
    args: &SuperviseArgs,
    r: &mut Reporter,
    running: &mut Running,
) -> anyhow::Result<BTreeMap<String, Arc<AppControl>>> {
    let started = Instant::now();
    let plan = Plan::new(args.clusters.max(1), args.networks.max(1), args.pods);
    r.state.plan = Some(plan.clone());
    if plan.pods {
        // Recorded before anything is made: `down` removes them whatever happens.
        (r.state.namespaces, r.state.links) = network::names(&plan);
    }
    let dir = &args.dir;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;

    r.start("binaries");
    let discovery_bin = binary("discovery")?;
    let sidecar_bin = binary("sidecar")?;
    let gateway_bin = binary("east-west-gateway")?;
    r.done(format!(
        "{}",
        discovery_bin.parent().unwrap_or(Path::new(".")).display()
    ));

    r.start("federated trust");
    let td = plan.trust_domain.parse()?;
    let root = RootCa::generate(&td, ROOT_VALIDITY)?;
    let root_pem_path = dir.join("root-cert.pem");
    std::fs::write(&root_pem_path, root.cert_pem())?;
    let mut tokens = String::new();
    let mut token_files = BTreeMap::new();
    let mut accounts: Vec<(String, String)> = vec![
        ("istio-system".into(), "isthmus-eastwest-gateway".into()),
        ("istio-system".into(), plan::INGRESS_ACCOUNT.into()),
    ];
    for c in &plan.clusters {
        for w in &c.workloads {
            accounts.push((NAMESPACE.into(), w.app.clone()));
        }
    }
    accounts.sort();
    accounts.dedup();
    for (ns, sa) in &accounts {
        let token: String = (0..32)
            .map(|_| format!("{:x}", rand::random_range(0..16u8)))
            .collect();
        tokens.push_str(&format!("{token} {ns}/{sa}\n"));
        let path = dir.join("tokens").join(format!("{ns}.{sa}"));
        std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
        std::fs::write(&path, &token)?;
        token_files.insert(sa.clone(), path);
    }
    for c in &plan.clusters {
        let cdir = dir.join(&c.name);
        let ca = root.intermediate(&c.name, INTERMEDIATE_VALIDITY)?;
        ca.write(&cdir.join("cacerts"))?;
        std::fs::write(cdir.join("tokens"), &tokens)?;
    }
    r.done(format!(
        "root spiffe://{} and {} cluster intermediates",
        plan.trust_domain,
        plan.clusters.len()
    ));

    // The registry: a kube-apiserver per cluster, or files.
    r.start_doing(
        "registries",
        "kube-apiserver + etcd per cluster (built from their Go modules on first use, minutes)",
    );
    let kube = match args.registry {
        RegistryMode::Files => None,
        RegistryMode::Kubernetes => Some(testbed::KubeBins::locate()?),
        RegistryMode::Auto => match testbed::KubeBins::locate() {
            Ok(b) => Some(b),
            Err(e) => {
                r.state.registry_note =
                    format!("Kubernetes binaries unavailable ({e:#}); using the file registry");
                None
            }
        },
    };
    let names: Vec<&str> = plan.clusters.iter().map(|c| c.name.as_str()).collect();
    let mut clients = BTreeMap::new();
    if let Some(bins) = &kube {
        let cps = testbed::start_control_planes(bins, &names).await?;
        for cp in &cps {
            let client = cp.client().await?;
            testbed::apply::apply_crds(&client).await?;
            let c = plan.cluster(cp.name()).context("cluster")?;
            let docs = format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: istio-system}}\n---\n{}---\n{}",
                plan::registry_docs(&plan, c),
                plan::ROUTING
            );
            testbed::apply::apply_yaml(&client, &docs, NAMESPACE, testbed::apply::Mode::Apply)
                .await?;
            r.state
                .kubeconfigs
                .insert(c.name.clone(), cp.kubeconfig().display().to_string());
            r.state.children.extend(cp.pids());
            clients.insert(c.name.clone(), client);
        }
        {
            let mut children = lock(&running.children);
            for (i, cp) in cps.iter().enumerate() {
                children.add_apiserver(&format!("apiserver-{}", cp.name()), i);
            }
            children.control_planes = cps;
        }
        r.state.registry = "kubernetes".into();
        r.done(format!(
            "{} kube-apiserver + etcd, one per cluster",
            names.len()
        ));
    } else {
        for c in &plan.clusters {
            let reg = dir.join(&c.name).join("registry");
            std::fs::create_dir_all(&reg)?;
            write_file(&reg.join("sample.yaml"), &plan::registry_docs(&plan, c))?;
            write_file(&reg.join("routing.yaml"), plan::ROUTING)?;
            r.state
                .registry_dirs
                .insert(c.name.clone(), reg.display().to_string());
        }
        r.state.registry = "files".into();
        r.done("file registry (no API server)");
    }

    if plan.pods {
        r.start("pod networks");
        running.network = Some(network::build(&plan)?);
        let pods: usize = plan.clusters.iter().map(|c| c.workloads.len()).sum();
        r.done(format!(
            "{} cluster networks, {pods} pods (network namespaces)",
            plan.clusters.len()
        ));
    }

    // Shared tracing: one Jaeger for every cluster.
    r.start_doing(
        "shared tracing",
        "Jaeger (built from its Go module on first use, minutes)",
    );
    let collector = if plan.pods {
        network::collector()
    } else {
        "127.0.0.1:4317".parse()?
    };
    let otlp = match testbed::jaeger() {
        Ok(bin) => {
            let mut cmd = Command::new(bin);
            cmd.arg(format!(
                "--set=receivers.otlp.protocols.grpc.endpoint={collector}"
            ));
            let p = testbed::Process::spawn("jaeger", cmd, &logs.join("jaeger.log"))?;
            r.state.children.extend(p.pid());
            running.add(p);
            let query: std::net::SocketAddr = "127.0.0.1:16686".parse()?;
            wait_http_ok(query, "/api/services", Duration::from_secs(30)).await?;
            r.state.jaeger = Some(query.to_string());
            r.done(format!(
                "Jaeger: query API http://{query}, OTLP {collector}"
            ));
            Some(format!("http://{collector}"))
        }
        Err(e) => {
            r.state.tracing_note =
                format!("Jaeger unavailable ({e:#}); traces are propagated but not collected");
            r.done("none (Jaeger could not be built)");
            None
        }
    };

    r.start("discovery");
    for c in &plan.clusters {
        let cdir = dir.join(&c.name);
        let mut cmd = Command::new(&discovery_bin);
        cmd.args(["--cluster", &c.name, "--network", &c.network])
            .arg("--cacerts")
            .arg(cdir.join("cacerts"))
            .arg("--bootstrap-tokens")
            .arg(cdir.join("tokens"))
            .args([
                "--grpc",
                &c.discovery.to_string(),
                "--monitor",
                &c.monitor.to_string(),
            ])
            .args(["--peering-lease", &args.tuning.peering_lease])
            .args(["--cacerts-poll", "1s"]);
        match r.state.kubeconfigs.get(&c.name) {
            Some(k) => cmd.args(["--kubeconfig", k]),
            None => cmd.arg("--registry-dir").arg(cdir.join("registry")),
        };
        if let Some(endpoint) = &otlp {
            cmd.args(["--otlp-endpoint", endpoint]);
        }
        if let Some(query) = &r.state.jaeger {
            cmd.args(["--jaeger-query", query]);
        }
        let p = testbed::Process::spawn(
            &format!("discovery-{}", c.name),
            cmd,
            &logs.join(format!("discovery-{}.log", c.name)),
        )?;
        r.state.children.extend(p.pid());
        running.add(p);
    }
    for c in &plan.clusters {
        wait_http_ok(c.monitor, "/ready", Duration::from_secs(30)).await?;
    }
    r.done(format!("{} discovery services ready", plan.clusters.len()));

    r.start("links");
    let root_pem = root.cert_pem().to_owned();
    for c in &plan.clusters {
        for other in plan.clusters.iter().filter(|o| o.name != c.name) {
            let secret = discovery::links::render_secret(
                &discovery::links::Link {
                    secret: String::new(),
                    cluster: other.name.clone(),
                    network: other.network.clone(),
                    discovery_address: other.discovery.to_string(),
                    gateway_address: other.gateway.to_string(),
                    gateway_quic: true,
                    trust_bundle: root_pem.clone(),
                    trust_domain: plan.trust_domain.clone(),
                },
                "istio-system",
            );
            std::fs::write(
                dir.join(&c.name).join(format!("link-{}.yaml", other.name)),
                &secret,
            )?;
            match clients.get(&c.name) {
                Some(client) => {
                    testbed::apply::apply_yaml(
                        client,
                        &secret,
                        "istio-system",
                        testbed::apply::Mode::Apply,
                    )
                    .await?;
                }
                None => write_file(
                    &dir.join(&c.name)
                        .join("registry")
                        .join(format!("link-{}.yaml", other.name)),
                    &secret,
                )?,
            }
        }
    }
    let pairs = plan.clusters.len() * (plan.clusters.len() - 1) / 2;
    r.done(format!(
        "{pairs} cluster pair(s) linked with `meshctl remote-secret` Secrets"
    ));

    r.start("gateways and workloads");
    let trust = [
        "--root-cert".to_owned(),
        root_pem_path.display().to_string(),
        "--trust-domain".into(),
        plan.trust_domain.clone(),
        "--cert-ttl".into(),
        args.tuning.cert_ttl.clone(),
    ];
    let mut controls = BTreeMap::new();
    for c in &plan.clusters {
        let mut cmd = Command::new(&gateway_bin);
        cmd.args(["--discovery", &c.discovery.to_string()])
            .arg("--token-file")
            .arg(&token_files["isthmus-eastwest-gateway"])
            .args(&trust)
            .args([
                "--namespace",
                "istio-system",
                "--name",
                &format!("eastwest-{}", c.name),
            ])
            .args([
                "--listen",
                &c.gateway.to_string(),
                "--admin",
                &c.gateway_admin.to_string(),
                "--quic",
            ]);
        if let Some(endpoint) = &otlp {
            cmd.args(["--otlp-endpoint", endpoint]);
        }
        let p = testbed::Process::spawn(
            &format!("gateway-{}", c.name),
            cmd,
            &logs.join(format!("gateway-{}.log", c.name)),
        )?;
        r.state.children.extend(p.pid());
        running.add(p);
        // The ingress gateway: the sidecar binary as a router, on the node's address.
        let mut cmd = Command::new(&sidecar_bin);
        cmd.arg("--ingress")
            .args(["--discovery", &c.discovery.to_string()])
            .arg("--token-file")
            .arg(&token_files[plan::INGRESS_ACCOUNT])
            .args(&trust)
            .args([
                "--namespace",
                "istio-system",
                "--service-account",
                plan::INGRESS_ACCOUNT,
                "--name",
                &format!("ingressgateway-{}", c.name),
            ])
            .args(["--address", &c.ingress.ip().to_string()])
            .args(["--port", &format!("80={}", c.ingress.port())])
            .args(["--admin", &c.ingress_admin.to_string()])
            .args(["--drain-seconds", "1"]);
        if let Some(endpoint) = &otlp {
            cmd.args(["--otlp-endpoint", endpoint]);
        }
        let p = testbed::Process::spawn(
            &format!("ingress-{}", c.name),
            cmd,
            &logs.join(format!("ingress-{}.log", c.name)),
        )?;
        r.state.children.extend(p.pid());
        running.add(p);
        for w in &c.workloads {
            let mut cmd = match &w.pod {
                Some(pod) => {
                    let mut cmd = Command::new("ip");
                    cmd.args(["netns", "exec", pod]).arg(&sidecar_bin);
                    cmd
                }
                None => Command::new(&sidecar_bin),
            };
            cmd.args(["--discovery", &c.discovery.to_string()])
                .arg("--token-file")
                .arg(&token_files[&w.app])
                .args(&trust)
                .args([
                    "--namespace",
                    NAMESPACE,
                    "--service-account",
                    &w.app,
                    "--name",
                    &w.name,
                ])
                .args(["--ip", &w.ip.to_string()])
                .args(["--drain-seconds", "1"]);
            if w.pod.is_some() {
                // As in a pod: capture everything, the app on the pod's loopback.
                cmd.args(["--capture", "--app-ip", "127.0.0.1"])
                    // As ISTIO_META_DNS_CAPTURE: the pod's DNS is answered by its sidecar.
                    // Names outside the mesh go to the cluster's node address, where no
                    // resolver listens: a testbed query never leaves the machine's
                    // testbed networks.
                    .args(["--dns-proxy", "127.0.0.1:15053"])
                    .args(["--dns-upstream", &format!("{}:53", c.discovery.ip())])
                    .args(["--inbound", "0.0.0.0:15006"])
                    .args(["--outbound", &w.outbound().to_string()])
                    .args(["--admin", "0.0.0.0:15020"]);
            } else {
                cmd.args(["--app-ip", &w.ip.to_string()])
                    .args(["--inbound", &w.inbound().to_string()])
                    .args(["--outbound", &w.outbound().to_string()])
                    .args(["--admin", &w.admin().to_string()]);
            }
            if let Some(endpoint) = &otlp {
                cmd.args(["--otlp-endpoint", endpoint]);
            }
            let p = testbed::Process::spawn(&w.name, cmd, &logs.join(format!("{}.log", w.name)))?;
            r.state.children.extend(p.pid());
            running.add(p);
            if w.port != 0 {
                let control = Arc::new(AppControl::default());
                controls.insert(w.name.clone(), control.clone());
                let app = apps::App {
                    workload: w.clone(),
                    cluster: c.name.clone(),
                    next: w.calls.as_deref().map(|next| plan.dial(c, w, next)),
                    control,
                };
                let name = w.name.clone();
                let serve = async move {
                    if let Err(e) = apps::serve(app).await {
                        tracing::error!(app = %name, error = %e, "sample app stopped");
                    }
                };
                match &w.pod {
                    // In its pod: a thread of its own inside the pod's namespace.
                    Some(pod) => {
                        testbed::netns::spawn_in(pod, move || {
                            match tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                            {
                                Ok(rt) => rt.block_on(serve),
                                Err(e) => tracing::error!(error = %e, "no runtime for an app"),
                            }
                        })?;
                    }
                    None => running.tasks.push(tokio::spawn(serve)),
                }
            }
        }
    }
    for c in &plan.clusters {
        wait_http_ok(c.gateway_admin, "/healthz/ready", Duration::from_secs(30)).await?;
        wait_http_ok(c.ingress_admin, "/healthz/ready", Duration::from_secs(30)).await?;
        for w in &c.workloads {
            wait_http_ok(w.admin(), "/healthz/ready", Duration::from_secs(30)).await?;
        }
    }
    let total: usize = plan.clusters.iter().map(|c| c.workloads.len()).sum();
    r.done(format!(
        "{} east-west and {} ingress gateways, {total} workloads with sidecars",
        plan.clusters.len(),
        plan.clusters.len()
    ));

    r.start("first cross-cluster request");
    let first = &plan.clusters[0];
    let curl = super::curl_of(first)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        // Each attempt starts a trace of its own; the one that succeeds is reported.
        let trace = mesh_telemetry::trace::TraceParent::root();
        let (p, c, w) = (plan.clone(), first.clone(), curl.clone());
        let sent = tokio::task::spawn_blocking(move || {
            let tp = trace.to_w3c();
            apps::get_from(&p, &c, &w, "frontpage:9080", "/", Some(&tp))
        })
        .await?;
        r.state.first_trace = Some(trace.trace_id_hex());
        match sent {
            Ok((200, body)) if body.contains("ratings") => break body,
            other => {
                if Instant::now() > deadline {
                    anyhow::bail!("no successful request through the chain after 30 s: {other:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    r.state.first_request_seconds = Some(started.elapsed().as_secs_f64());
    r.done(body.trim().to_owned());
    Ok(controls)
}
