//! `meshctl`: the Isthmus command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod analyze;
mod bed;
mod ca;
mod crds;
mod dashboard;
mod diagnose;
mod drift;
mod install;
mod multicluster;
mod proxy;
mod quickstart;
mod trace;

/// The Isthmus multi-cluster service mesh command line.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the federated trust root, cluster intermediates and trust bundles.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Print (or write) the CustomResourceDefinitions of the Istio kinds Isthmus reads.
    Crds(crds::CrdsArgs),
    /// Print (or write) the API coverage page: every field of the Istio kinds and
    /// whether Isthmus enforces, refuses or warns about it.
    ApiCoverage(crds::CrdsArgs),
    /// Show federation at work on this machine: one root, two clusters, one mTLS call.
    Quickstart(quickstart::QuickstartArgs),
    /// Find config that will not do what it says (unknown hosts and subsets,
    /// conflicts, weights, namespaces). Exits non-zero on errors.
    Analyze(analyze::AnalyzeArgs),
    /// Each proxy's config version (sent, acknowledged or refused), last push and
    /// certificate expiry, from discovery.
    ProxyStatus(proxy::ProxyStatusArgs),
    /// What one proxy holds: routes, endpoints or policies.
    ProxyConfig(proxy::ProxyConfigArgs),
    /// Print the Secret that links other clusters to this one (apply it in them).
    RemoteSecret(multicluster::RemoteSecretArgs),
    /// Multi-cluster links.
    #[command(subcommand)]
    Multicluster(multicluster::MulticlusterCommand),
    /// Install the control plane (discovery, east-west gateway, RBAC, CRDs, injection
    /// webhook) into a cluster, or print it with --dry-run.
    Install(install::InstallArgs),
    /// Check an installation: CRDs, deployments, the injection webhook.
    VerifyInstall(install::VerifyArgs),
    /// Write the Helm chart (deploy/helm/isthmus) from the same source as `install`.
    #[command(hide = true)]
    WriteChart {
        /// The chart directory.
        #[arg(long, default_value = "deploy/helm/isthmus")]
        out: std::path::PathBuf,
    },
    /// One trace from Jaeger as a waterfall: `meshctl trace --last` or `meshctl trace ID`.
    Trace(trace::TraceArgs),
    /// What the mesh does with a request from a workload, and why: the routes tried,
    /// each destination's policy and endpoints (cluster, gateway), or the refusal,
    /// from the source sidecar's own planner.
    Diagnose(diagnose::DiagnoseArgs),
    /// The mesh dashboard on a local port: every cluster and the calls between them,
    /// live, with an edge's traces as a waterfall.
    Dashboard(dashboard::DashboardArgs),
    /// A local multi-cluster mesh with sample apps: up, status, curl, scenario, down.
    #[command(subcommand)]
    Testbed(bed::TestbedCommand),
}

fn main() -> ExitCode {
    mesh_telemetry::init_logging(mesh_telemetry::LogFormat::Text, "warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ca(cmd) => ca::run(cmd),
        Command::Crds(args) => crds::run(args),
        Command::ApiCoverage(args) => crds::api_coverage(args),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Analyze(args) => analyze::run(args),
        Command::ProxyStatus(args) => proxy::status(args),
        Command::ProxyConfig(args) => proxy::config(args),
        Command::RemoteSecret(args) => multicluster::remote_secret(args),
        Command::Multicluster(cmd) => multicluster::run(cmd),
        Command::Testbed(cmd) => bed::run(cmd),
        Command::Install(args) => install::install(args),
        Command::Trace(args) => trace::run(args),
        Command::Diagnose(args) => diagnose::run(args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::VerifyInstall(args) => install::verify(args),
        Command::WriteChart { out } => install::write_chart(&out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
