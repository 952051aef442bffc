//! One simulated cluster's control plane: etcd + kube-apiserver as child processes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::bins::KubeBins;
use crate::pki::ClusterPki;
use crate::process::Process;

/// Settings of one control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Cluster name (used in the kubeconfig and service-account issuer).
    pub name: String,
    /// Index of the cluster; selects the service CIDR `10.(96+index).0.0/16`.
    pub index: u8,
    /// How long to wait for `/readyz`.
    pub ready_timeout: Duration,
}

impl ControlPlaneOptions {
    /// Defaults for cluster `name` number `index`.
    pub fn new(name: &str, index: u8) -> Self {
        Self {
            name: name.to_owned(),
            index,
            ready_timeout: Duration::from_secs(90),
        }
    }

    /// The service CIDR of this cluster.
    pub fn service_cidr(&self) -> String {
        format!("10.{}.0.0/16", 96u16 + u16::from(self.index))
    }
}

/// A running etcd + kube-apiserver. Dropping it stops both and removes their files
/// (unless the directory was kept with [`ControlPlane::keep_files`]).
#[derive(Debug)]
pub struct ControlPlane {
    options: ControlPlaneOptions,
    // Field order is drop order: the API server stops before its etcd.
    apiserver: Process,
    etcd: Process,
    server: String,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub async fn start(bins: &KubeBins, options: ControlPlaneOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("isthmus-{}-", options.name))
            .tempdir()?;
        let root = dir.path();
        let pki = ClusterPki::generate(&options.name)?;
        pki.write(root)?;

        let (client_port, peer_port, secure_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bins.etcd());
        etcd.args([
            "--name",
            &options.name,
            "--data-dir",
            &root.join("etcd").display().to_string(),
            "--listen-client-urls",
            &etcd_url,
            "--advertise-client-urls",
            &etcd_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("{}={peer_url}", options.name),
            "--log-level",
            "warn",
            // Test data is disposable: skipping fsync keeps several clusters fast on
            // one small disk.
            "--unsafe-no-fsync",
        ]);
        let mut etcd = Process::spawn("etcd", etcd, &root.join("etcd.log"))?;

        let server = format!("https://127.0.0.1:{secure_port}");
        let p = |name: &str| root.join(name).display().to_string();
        let mut api = Command::new(bins.kube_apiserver());
        api.args([
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure_port}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--authorization-mode=RBAC".into(),
            format!("--service-cluster-ip-range={}", options.service_cidr()),
            format!(
                "--service-account-issuer=https://{}.cluster.isthmus.test",
                options.name
            ),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            // No controller manager creates the `default` ServiceAccount, so the
            // admission plugin that requires it is off.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            // The default reconciler would publish 127.0.0.1 as the `kubernetes`
            // endpoint, which EndpointSlice validation refuses.
            "--endpoint-reconciler-type=none".into(),
            "--enable-priority-and-fairness=false".into(),
            // Webhooks and aggregated APIs named by Service are reached at the
            // Service's endpoints, never its cluster IP: no proxy routes cluster IPs
            // here, so a dial to one would leave the machine.
            "--enable-aggregator-routing=true".into(),
            "--profiling=false".into(),
            format!("--cert-dir={}", p("certs")),
            "--v=1".into(),
        ]);
        let apiserver = Process::spawn("kube-apiserver", api, &root.join("kube-apiserver.log"))?;
        let kubeconfig = root.join("kubeconfig");
        std::fs::write(&kubeconfig, pki.kubeconfig(&options.name, &server))?;

        let mut cp = Self {
            options,
            apiserver,
            etcd: {
                etcd.check_running()?;
                etcd
            },
            server,
            kubeconfig,
            dir,
        };
        cp.wait_ready().await?;
        Ok(cp)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let client = self.client().await?;
        let mut last = String::new();
        while started.elapsed() < self.options.ready_timeout {
            self.etcd.check_running()?;
            self.apiserver.check_running()?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => {
                    tracing::info!(cluster = %self.options.name, server = %self.server, elapsed = ?started.elapsed(), "control plane ready");
                    return Ok(());
                }
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "kube-apiserver of cluster {} not ready after {:?}: {last}\nlast lines of its log:\n{}",
            self.options.name,
            self.options.ready_timeout,
            self.apiserver.log_tail(30)
        )
    }

    /// A client for the admin user.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .context("reading the generated kubeconfig")?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The cluster name.
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// The API server URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin kubeconfig of this cluster.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory holding certificates, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The service CIDR of this cluster.
    pub fn service_cidr(&self) -> String {
        self.options.service_cidr()
    }

    /// The kube-apiserver process (to stop and start it again; etcd keeps the data).
    pub fn apiserver_mut(&mut self) -> &mut Process {
        &mut self.apiserver
    }

    /// Process ids of etcd and kube-apiserver, while running.
    pub fn pids(&self) -> Vec<u32> {
        self.etcd
            .pid()
            .into_iter()
            .chain(self.apiserver.pid())
            .collect()
    }

    /// Keeps the directory (certificates, data, logs) after the control plane stops,
    /// for post-mortem reading; returns its path.
    pub fn keep_files(self) -> PathBuf {
        let Self { dir, .. } = self;
        dir.keep()
    }
}

/// Starts one control plane per name, concurrently; cluster `i` gets index `i`.
pub async fn start_control_planes(
    bins: &KubeBins,
    names: &[&str],
) -> anyhow::Result<Vec<ControlPlane>> {
    let starts = names
        .iter()
        .enumerate()
        .map(|(i, name)| ControlPlane::start(bins, ControlPlaneOptions::new(name, i as u8)));
    futures::future::try_join_all(starts).await
}
