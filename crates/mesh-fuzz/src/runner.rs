//! The stable runner: every corpus input, then random mutations of them (bit flips,
//! byte edits, inserted and deleted runs, splices of two inputs, interesting values)
//! until the time budget is spent. Not coverage guided: cargo-fuzz on nightly is what
//! grows the corpus; this keeps every target exercised on every test run.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// What a run did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Corpus inputs replayed.
    pub corpus: usize,
    /// Mutated inputs run.
    pub mutated: usize,
    /// The first input that failed, and the panic's message.
    pub failure: Option<(Vec<u8>, String)>,
}

/// The corpus directory of `target` in this repository (what cargo-fuzz grows and
/// minimizes).
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// The inputs that once failed `target`, kept apart from the corpus so that no
/// minimization drops them.
pub fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target)
}

/// Every input of `target` kept in the repository: its regressions, then its corpus.
pub fn inputs(target: &str) -> Vec<Vec<u8>> {
    let mut all = corpus(&regressions_dir(target));
    all.extend(corpus(&corpus_dir(target)));
    all
}

/// The inputs of a corpus directory, by file name.
pub fn corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

/// Values that break parsers more often than random bytes do.
const INTERESTING: &[&[u8]] = &[
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff\xff",
    b"\x00\x00",
    b"\xff\xff\xff\xff",
    b"%",
    b"%2F",
    b"%2f",
    b"%5C",
    b"..",
    b"/",
    b"\\",
    b"\n",
    b" ",
    b":",
    b"{",
    b"[",
    b"-",
    b"*",
    b"\"",
    b"'",
    b"~",
    b"0",
    b"-1",
    b"65536",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
];

fn mutate(rng: &mut impl Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(32));
                v.drain(i..i + n);
            }
            4 if !other.is_empty() => {
                // Splice: a head of this input and a tail of another.
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            5 => {
                let i = rng.random_range(0..=len);
                let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
                v.splice(i..i, value.iter().copied());
            }
            _ if len > 1 => {
                // Duplicate a run (lengths and nesting grow).
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                let run = v[i..i + n].to_vec();
                v.splice(i..i, run);
            }
            _ => v.push(rng.random()),
        }
    }
    v.truncate(64 * 1024);
    v
}

fn run_one(target: fn(&[u8]), input: &[u8]) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| target(input))).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into())
    })
}

/// Runs `target` over `corpus`, then over mutations of it for `budget`, from `seed`.
/// Stops at the first failure.
pub fn run(target: fn(&[u8]), corpus: &[Vec<u8>], budget: Duration, seed: u64) -> Stats {
    let mut stats = Stats::default();
    for input in corpus {
        stats.corpus += 1;
        if let Err(why) = run_one(target, input) {
            stats.failure = Some((input.clone(), why));
            return stats;
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let empty = [Vec::new()];
    let seeds = if corpus.is_empty() {
        &empty[..]
    } else {
        corpus
    };
    while start.elapsed() < budget {
        let input = &seeds[rng.random_range(0..seeds.len())];
        let other = &seeds[rng.random_range(0..seeds.len())];
        let mutated = mutate(&mut rng, input, other);
        stats.mutated += 1;
        if let Err(why) = run_one(target, &mutated) {
            stats.failure = Some((mutated, why));
            return stats;
        }
    }
    stats
}
