//! `meshctl dashboard`: the mesh dashboard on a local port. The graph comes from one
//! discovery (which holds its linked clusters' edges too), the traces from Jaeger's
//! query API. On a testbed both default to the testbed's.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

/// `meshctl dashboard` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct DashboardArgs {
    /// Where the page is served.
    #[arg(long, default_value = "127.0.0.1:15000")]
    listen: SocketAddr,
    /// A discovery's monitoring address (port 15014; in a cluster, `kubectl
    /// port-forward -n istio-system deploy/isthmus-discovery 15014`). Default: the
    /// testbed's first cluster.
    #[arg(long)]
    discovery: Option<SocketAddr>,
    /// Jaeger's query address, for traces. Default: the testbed's.
    #[arg(long, env = "ISTHMUS_JAEGER")]
    jaeger: Option<SocketAddr>,
    /// The testbed's directory.
    #[arg(long, env = "ISTHMUS_TESTBED_DIR")]
    dir: Option<PathBuf>,
}

pub(crate) fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let discovery = match args.discovery {
        Some(d) => d,
        None => crate::bed::monitors(args.dir.clone())
            .context(
                "give a discovery's monitoring address with --discovery, or bring the testbed up",
            )?
            .into_values()
            .next()
            .context("the testbed has no cluster")?,
    };
    let jaeger = args.jaeger.or_else(|| crate::bed::jaeger(args.dir.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        println!(
            "Dashboard: http://{}/ (graph from discovery {discovery}, traces from {})",
            listener.local_addr()?,
            jaeger.map_or("nowhere: give --jaeger".to_owned(), |j| format!(
                "Jaeger {j}"
            ))
        );
        discovery::dashboard::serve(
            listener,
            discovery::dashboard::Dashboard::remote(discovery, jaeger),
        )
        .await;
        Ok(())
    })
}
