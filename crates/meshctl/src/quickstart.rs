//! `meshctl quickstart`: federation shown on one machine. One root, an intermediate per
//! cluster (`east`, `west`), a workload in each with a certificate issued from its CSR,
//! an mTLS call from east to west over a real socket in which both sides print the
//! other's SPIFFE ID, and a workload under a foreign root refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY, WORKLOAD_TTL};
use mesh_identity::{
    ClusterCa, Identity, RootCa, SpiffeId, TrustBundle, TrustConfig, WorkloadCert,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, clap::Args)]
pub(crate) struct QuickstartArgs {
    /// Trust domain of the demo mesh.
    #[arg(long, default_value = "isthmus.local")]
    trust_domain: String,
    /// Keep the generated certificates in this directory (a temporary one otherwise).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn step(label: &str, detail: impl std::fmt::Display) {
    println!("  ✔ {label:<28} {detail}");
}

fn issue(ca: &ClusterCa, ns: &str, sa: &str, dir: &Path) -> anyhow::Result<WorkloadCert> {
    let id = SpiffeId::new(ca.trust_domain().clone(), ns, sa)?;
    ca.issue_workload(&id, WORKLOAD_TTL)?.write(dir)?;
    Ok(WorkloadCert::load(
        &dir.join("cert-chain.pem"),
        &dir.join("key.pem"),
    )?)
}

pub(crate) fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(demo(&args.trust_domain, &dir))?;
    if args.dir.is_some() {
        println!("\nCertificates kept in {}", dir.display());
    }
    Ok(())
}

async fn demo(trust_domain: &str, dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let td = trust_domain.parse().context("--trust-domain")?;
    println!("Isthmus quickstart: one federated root, two clusters, one mTLS call\n");

    let root = RootCa::generate(&td, ROOT_VALIDITY)?;
    root.write(&dir.join("root"))?;
    step(
        "root CA",
        format!("trust domain {td}  ({})", dir.join("root").display()),
    );
    let east = root.intermediate("east", INTERMEDIATE_VALIDITY)?;
    east.write(&dir.join("east/cacerts"))?;
    step("intermediate CA east", dir.join("east/cacerts").display());
    let west = root.intermediate("west", INTERMEDIATE_VALIDITY)?;
    west.write(&dir.join("west/cacerts"))?;
    step("intermediate CA west", dir.join("west/cacerts").display());

    // Each cluster reloads its cacerts from disk, as discovery will.
    let east = ClusterCa::load(&dir.join("east/cacerts"))?;
    let west = ClusterCa::load(&dir.join("west/cacerts"))?;
    let bundle = TrustBundle::from_pem(td.clone(), root.cert_pem().as_bytes(), "root-cert.pem")?;
    let trust = TrustConfig::new(td.clone(), bundle);

    let frontend = issue(&east, "shop", "frontend", &dir.join("east/frontend"))?;
    step("workload in east", frontend.id());
    let reviews = issue(&west, "shop", "reviews", &dir.join("west/reviews"))?;
    step("workload in west", reviews.id());
    let frontend = Identity::new(frontend, trust.clone())?;
    let reviews = Identity::new(reviews, trust.clone())?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(reviews.server_config(&[])));
    let server = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let peer =
                        mesh_identity::peer_id(tls.get_ref().1.peer_certificates(), "client");
                    let line = match &peer {
                        Ok(id) => format!("hello {id}, this is west\n"),
                        Err(e) => format!("error {e}\n"),
                    };
                    let _ = tls.write_all(line.as_bytes()).await;
                    let _ = tls.shutdown().await;
                    outcomes.push(peer.map(|p| p.to_string()).map_err(|e| e.to_string()));
                }
                Err(e) => outcomes.push(Err(mesh_identity::explain(&e))),
            }
        }
        outcomes
    });

    // East calls west.
    let connector = TlsConnector::from(Arc::new(
        frontend.client_config(vec![reviews.cert().id().clone()], &[]),
    ));
    let tcp = TcpStream::connect(addr).await?;
    let sni = "outbound_.9080_._.reviews.shop.svc.cluster.local".try_into()?;
    let tls = connector
        .connect(sni, tcp)
        .await
        .map_err(|e| anyhow::anyhow!(mesh_identity::explain(&e)))?;
    let server_id = mesh_identity::peer_id(tls.get_ref().1.peer_certificates(), "west")?;
    let mut line = String::new();
    BufReader::new(tls).read_line(&mut line).await?;
    step(
        "mTLS east → west",
        format!("127.0.0.1:{}  (TLS 1.3, ECDSA P-256)", addr.port()),
    );
    println!("      east sees server  {server_id}");

    // A workload whose certificate comes from another root, same trust domain name.
    let rogue_root = RootCa::generate(&td, ROOT_VALIDITY)?;
    let rogue_ca = rogue_root.intermediate("rogue", INTERMEDIATE_VALIDITY)?;
    let rogue = issue(&rogue_ca, "shop", "frontend", &dir.join("rogue/frontend"))?;
    let mut rogue_trust = trust.clone();
    rogue_trust
        .bundle
        .add_pem(td.clone(), rogue_root.cert_pem().as_bytes(), "rogue root")?;
    let rogue = Identity::new(rogue, rogue_trust)?;
    let connector = TlsConnector::from(Arc::new(rogue.client_config(vec![], &[])));
    let tcp = TcpStream::connect(addr).await?;
    let sni = "outbound_.9080_._.reviews.shop.svc.cluster.local".try_into()?;
    if let Ok(tls) = connector.connect(sni, tcp).await {
        let mut buf = String::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            BufReader::new(tls).read_line(&mut buf),
        )
        .await;
    }

    let outcomes = tokio::time::timeout(Duration::from_secs(5), server).await??;
    let [Ok(seen_client), Err(refusal)] = &outcomes[..] else {
        bail!("unexpected handshake outcomes: {outcomes:?}");
    };
    println!("      west sees client  {seen_client}");
    println!("      west said         {}", line.trim_end());
    step("foreign root refused", refusal);
    println!("\nDone in {} ms.", started.elapsed().as_millis());
    println!("Next: `meshctl ca --help` to build your own root and cluster intermediates.");
    Ok(())
}
