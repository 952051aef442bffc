//! Finding (and if needed building) the Kubernetes binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Paths of `etcd`, `kube-apiserver` and `kube-controller-manager`.
#[derive(Debug, Clone)]
pub struct KubeBins {
    dir: PathBuf,
}

impl KubeBins {
    /// The binaries in `dir`, checked to exist.
    pub fn in_dir(dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let bins = Self { dir: dir.into() };
        for p in [bins.etcd(), bins.kube_apiserver()] {
            if !p.is_file() {
                bail!(
                    "{} is missing; build it with tools/build-kube-bins.sh",
                    p.display()
                );
            }
        }
        Ok(bins)
    }

    /// `ISTHMUS_KUBE_BIN_DIR` when set; otherwise runs `tools/build-kube-bins.sh`, which
    /// returns the cached build at once or builds it (several minutes, cold).
    pub fn locate() -> anyhow::Result<Self> {
        if let Some(dir) = std::env::var_os("ISTHMUS_KUBE_BIN_DIR") {
            return Self::in_dir(dir).context("ISTHMUS_KUBE_BIN_DIR");
        }
        Self::in_dir(build_script("build-kube-bins.sh")?)
    }

    /// The directory holding the binaries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `etcd`.
    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    /// `kube-apiserver`.
    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }

    /// `kube-controller-manager`.
    pub fn kube_controller_manager(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }
}

/// The repository root (this crate lives in `testbed/`).
/// The checkout this code runs from: the first ancestor holding `tools/` and
/// `Cargo.lock`, searched from the manifest directory cargo gives at run time (the
/// current checkout), then from the one compiled in. A build cache shared between
/// checkouts (CI restores one into a fresh clone) can hold binaries compiled in
/// another checkout, whose compiled-in path may be gone.
pub fn workspace_root() -> PathBuf {
    let runtime = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let compiled = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    runtime
        .into_iter()
        .chain([compiled.clone()])
        .find_map(|start| {
            start
                .ancestors()
                .find(|d| d.join("tools").is_dir() && d.join("Cargo.lock").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| compiled.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The Jaeger all-in-one binary: `ISTHMUS_JAEGER_BIN` when set; otherwise runs
/// `tools/build-jaeger.sh`, which returns the cached build at once or builds it.
pub fn jaeger() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ISTHMUS_JAEGER_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(
            bin.exists(),
            "ISTHMUS_JAEGER_BIN {} does not exist",
            bin.display()
        );
        return Ok(bin);
    }
    Ok(PathBuf::from(build_script("build-jaeger.sh")?))
}

/// Runs `tools/SCRIPT` (a cached Go build) and returns what it prints: the path of
/// its output.
fn build_script(script: &str) -> anyhow::Result<String> {
    let script = workspace_root().join("tools").join(script);
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
