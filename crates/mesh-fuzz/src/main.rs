//! `mesh-fuzz TARGET [--seconds N] [--seed S]`: one target on stable, the corpus then
//! mutations of it for N seconds; a failing input is written to `fuzz/artifacts/`.
//! `mesh-fuzz --write-seeds` writes the encoded seeds of the binary targets.

use std::time::Duration;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--write-seeds") {
        return match mesh_fuzz::seeds::write() {
            Ok(n) => {
                println!("{n} seed inputs written under fuzz/corpus/");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("writing seeds: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let names: Vec<&str> = mesh_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    let Some((name, target)) = args
        .first()
        .and_then(|t| mesh_fuzz::TARGETS.iter().find(|(n, _)| n == t))
    else {
        eprintln!(
            "usage: mesh-fuzz TARGET [--seconds N] [--seed S]; targets: {}",
            names.join(", ")
        );
        return std::process::ExitCode::FAILURE;
    };
    let seconds = value("--seconds").unwrap_or(60);
    let seed = value("--seed").unwrap_or_else(rand::random);
    let corpus = mesh_fuzz::runner::inputs(name);
    let stats = mesh_fuzz::runner::run(*target, &corpus, Duration::from_secs(seconds), seed);
    println!(
        "{name}: {} corpus inputs, {} mutated inputs in {seconds} s (seed {seed})",
        stats.corpus, stats.mutated
    );
    match stats.failure {
        None => std::process::ExitCode::SUCCESS,
        Some((input, why)) => {
            let dir = mesh_fuzz::runner::corpus_dir(name)
                .join("../../artifacts")
                .join(name);
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("crash-{seed}"));
            let _ = std::fs::write(&path, &input);
            eprintln!(
                "{name}: FAILED: {why}\n  input written to {}",
                path.display()
            );
            std::process::ExitCode::FAILURE
        }
    }
}
