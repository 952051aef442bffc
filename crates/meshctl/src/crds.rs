//! `meshctl crds` and `meshctl api-coverage`: the CRDs and the API coverage page
//! generated from mesh-api.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct CrdsArgs {
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) fn run(args: CrdsArgs) -> anyhow::Result<()> {
    write(&mesh_api::crd::render_yaml(), args)
}

/// `meshctl api-coverage`: docs/api-coverage.md, every field and what Isthmus does
/// with it.
pub(crate) fn api_coverage(args: CrdsArgs) -> anyhow::Result<()> {
    write(&mesh_api::coverage::markdown(), args)
}

fn write(yaml: &str, args: CrdsArgs) -> anyhow::Result<()> {
    match args.out {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => std::io::stdout().write_all(yaml.as_bytes())?,
    }
    Ok(())
}
