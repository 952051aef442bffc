//! `meshctl ca`: the federated trust root, per-cluster intermediates, workload
//! certificates for file mode, and trust bundles.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY, WORKLOAD_TTL, files};
use mesh_identity::{ClusterCa, RootCa, SpiffeId, TrustBundle, TrustDomain};

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Create the mesh's root: root-cert.pem and root-key.pem (ECDSA P-256). Keep the
    /// key offline; clusters only need their intermediate.
    Init(InitArgs),
    /// Create one cluster's intermediate CA in Istio's cacerts layout, signed by the root.
    Intermediate(IntermediateArgs),
    /// Issue a workload certificate (key, chain, root) from a cluster's cacerts, for
    /// file-mode workloads and tests.
    Workload(WorkloadArgs),
    /// Merge roots, and export or import SPIFFE trust bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Trust domain of the mesh (the authority of its SPIFFE IDs), e.g. cluster.local.
    #[arg(long)]
    trust_domain: String,
    /// Directory to write root-cert.pem and root-key.pem into.
    #[arg(long)]
    out: PathBuf,
    /// Lifetime of the root in days.
    #[arg(long, default_value_t = ROOT_VALIDITY.as_secs() / 86_400)]
    validity_days: u64,
    /// Overwrite an existing root in --out.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct IntermediateArgs {
    /// Directory holding root-cert.pem and root-key.pem.
    #[arg(long)]
    root: PathBuf,
    /// Cluster name (a DNS-1123 label, e.g. east).
    #[arg(long)]
    cluster: String,
    /// Directory to write ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem into.
    #[arg(long)]
    out: PathBuf,
    /// Also write cacerts-secret.yaml: a Secret named cacerts in this namespace.
    #[arg(long)]
    secret_namespace: Option<String>,
    /// Lifetime of the intermediate in days.
    #[arg(long, default_value_t = INTERMEDIATE_VALIDITY.as_secs() / 86_400)]
    validity_days: u64,
    /// Overwrite existing files in --out.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WorkloadArgs {
    /// The cluster's cacerts directory.
    #[arg(long)]
    ca: PathBuf,
    /// Namespace of the workload.
    #[arg(long)]
    namespace: String,
    /// Service account of the workload.
    #[arg(long)]
    service_account: String,
    /// Directory to write key.pem, cert-chain.pem and root-cert.pem into.
    #[arg(long)]
    out: PathBuf,
    /// Lifetime in hours.
    #[arg(long, default_value_t = WORKLOAD_TTL.as_secs() / 3600)]
    ttl_hours: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BundleCommand {
    /// Merge the roots of several PEM files into one bundle (root rotation: A+B).
    Merge {
        /// Trust domain of the roots.
        #[arg(long)]
        trust_domain: String,
        /// Output PEM file.
        #[arg(long)]
        out: PathBuf,
        /// Input PEM files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Write a SPIFFE trust bundle document (JWKS with x5c) from PEM roots, for
    /// another trust domain to federate with this one.
    Export {
        /// Trust domain of the roots.
        #[arg(long)]
        trust_domain: String,
        /// PEM file with the roots.
        #[arg(long)]
        roots: PathBuf,
        /// Output file (standard output when absent).
        #[arg(long)]
        out: Option<PathBuf>,
        /// spiffe_sequence of the document; raise it with every change.
        #[arg(long, default_value_t = 1)]
        sequence: u64,
        /// spiffe_refresh_hint in seconds.
        #[arg(long, default_value_t = 300)]
        refresh_hint: u64,
    },
    /// Read a SPIFFE trust bundle document of another trust domain and write its roots
    /// as PEM.
    Import {
        /// The trust domain the document belongs to.
        #[arg(long)]
        trust_domain: String,
        /// The bundle document (JSON).
        input: PathBuf,
        /// Output PEM file (standard output when absent).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub(crate) fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init(a) => init(a),
        CaCommand::Intermediate(a) => intermediate(a),
        CaCommand::Workload(a) => workload(a),
        CaCommand::Bundle(b) => bundle(b),
    }
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

fn refuse_overwrite(dir: &Path, names: &[&str], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    for name in names {
        let p = dir.join(name);
        if p.exists() {
            bail!("{} already exists; pass --force to replace it", p.display());
        }
    }
    Ok(())
}

fn trust_domain(s: &str) -> anyhow::Result<TrustDomain> {
    s.parse().with_context(|| format!("--trust-domain {s:?}"))
}

/// Checks a cluster name as a DNS-1123 label, since it ends up in labels and SNI.
pub(crate) fn check_cluster_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "cluster name {name:?} is not a DNS-1123 label: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        );
    }
    Ok(())
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    let td = trust_domain(&a.trust_domain)?;
    refuse_overwrite(&a.out, &[files::ROOT_CERT, files::ROOT_KEY], a.force)?;
    let root = RootCa::generate(&td, days(a.validity_days))?;
    root.write(&a.out)?;
    println!(
        "root CA for trust domain {td} written to {} ({} and {}, valid until {})",
        a.out.display(),
        files::ROOT_CERT,
        files::ROOT_KEY,
        mesh_identity::cert::rfc3339(root.info().not_after)
    );
    Ok(())
}

fn intermediate(a: IntermediateArgs) -> anyhow::Result<()> {
    check_cluster_name(&a.cluster)?;
    let root = RootCa::load(&a.root)
        .with_context(|| format!("loading the root from {}", a.root.display()))?;
    let names = [
        files::CA_CERT,
        files::CA_KEY,
        files::CERT_CHAIN,
        files::ROOT_CERT,
    ];
    refuse_overwrite(&a.out, &names, a.force)?;
    let ca = root.intermediate(&a.cluster, days(a.validity_days))?;
    ca.write(&a.out)?;
    println!(
        "intermediate CA for cluster {} (trust domain {}) written to {}: {}",
        a.cluster,
        ca.trust_domain(),
        a.out.display(),
        names.join(", ")
    );
    if let Some(ns) = a.secret_namespace {
        check_cluster_name(&ns).context("--secret-namespace")?;
        let path = a.out.join("cacerts-secret.yaml");
        std::fs::write(&path, ca.secret_manifest(&ns))
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "Secret cacerts for namespace {ns} written to {}",
            path.display()
        );
    }
    Ok(())
}

fn workload(a: WorkloadArgs) -> anyhow::Result<()> {
    let ca = ClusterCa::load(&a.ca)
        .with_context(|| format!("loading cacerts from {}", a.ca.display()))?;
    let id = SpiffeId::new(ca.trust_domain().clone(), &a.namespace, &a.service_account)?;
    let issued = ca.issue_workload(&id, Duration::from_secs(a.ttl_hours * 3600))?;
    // Check what was issued the way the sidecar will load it.
    issued.load("issued certificate")?;
    issued.write(&a.out)?;
    std::fs::write(a.out.join("root-cert.pem"), ca.root_pem())?;
    println!(
        "certificate for {id} written to {} (key.pem, cert-chain.pem, root-cert.pem; valid until {})",
        a.out.display(),
        mesh_identity::cert::rfc3339(issued.not_after)
    );
    Ok(())
}

fn write_or_print(out: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn bundle(cmd: BundleCommand) -> anyhow::Result<()> {
    match cmd {
        BundleCommand::Merge {
            trust_domain: td,
            out,
            inputs,
        } => {
            let td = trust_domain(&td)?;
            let mut bundle = TrustBundle::new();
            for input in &inputs {
                let pem =
                    std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
                bundle.add_pem(td.clone(), &pem, &input.display().to_string())?;
            }
            std::fs::write(&out, bundle.to_pem(&td))
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{} distinct root(s) of trust domain {td} written to {}",
                bundle.roots(&td).len(),
                out.display()
            );
        }
        BundleCommand::Export {
            trust_domain: td,
            roots,
            out,
            sequence,
            refresh_hint,
        } => {
            let td = trust_domain(&td)?;
            let pem =
                std::fs::read(&roots).with_context(|| format!("reading {}", roots.display()))?;
            let bundle = TrustBundle::from_pem(td.clone(), &pem, &roots.display().to_string())?;
            let mut doc = bundle.to_spiffe_json(&td, sequence, refresh_hint)?;
            doc.push('\n');
            write_or_print(out.as_deref(), &doc)?;
        }
        BundleCommand::Import {
            trust_domain: td,
            input,
            out,
        } => {
            let td = trust_domain(&td)?;
            let json = std::fs::read_to_string(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let bundle =
                TrustBundle::from_spiffe_json(td.clone(), &json, &input.display().to_string())?;
            write_or_print(out.as_deref(), &bundle.to_pem(&td))?;
            eprintln!(
                "imported {} root(s) of trust domain {td}",
                bundle.roots(&td).len()
            );
        }
    }
    Ok(())
}
