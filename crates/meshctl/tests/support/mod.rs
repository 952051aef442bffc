//! What the testbed tests share: the binaries, running meshctl against a testbed
//! directory, prerequisites, and a guard that brings the testbed down.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_meshctl"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The binaries the testbed starts, built when only this package is being tested.
pub fn ensure_binaries() {
    let missing = ["discovery", "sidecar", "east-west-gateway"]
        .iter()
        .any(|b| !bin_dir().join(b).exists());
    if missing {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "discovery",
                "-p",
                "sidecar",
                "-p",
                "east-west-gateway",
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

pub fn meshctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env("ISTHMUS_TESTBED_DIR", dir)
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether an optional prerequisite named by `var` is there. Without it the checks
/// that need it cannot run; under `CI=true` that fails the test instead of skipping.
pub fn prerequisite(var: &str, what: &str) -> bool {
    let present = std::env::var_os(var).is_some_and(|p| Path::new(&p).exists());
    assert!(
        present || std::env::var("CI").as_deref() != Ok("true"),
        "{var} is not set or does not exist: under CI=true the {what} checks must run \
         (tools/test.sh builds it and exports {var})"
    );
    present
}

/// Stops the testbed even when an assertion fails.
pub struct Down(pub PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = meshctl(&self.0, &["testbed", "down"]);
    }
}

/// `meshctl testbed up` in a new directory: the guard that brings it down, the
/// directory and what `up` printed (asserted to have succeeded, with the
/// supervisor's log when it did not).
pub fn testbed_up() -> (tempfile::TempDir, Down, PathBuf, String) {
    ensure_binaries();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bed");
    let down = Down(dir.clone());
    let up = meshctl(&dir, &["testbed", "up"]);
    let out = text(&up);
    assert!(
        up.status.success(),
        "{out}\n{}",
        std::fs::read_to_string(dir.join("supervisor.log")).unwrap_or_default()
    );
    (tmp, down, dir, out)
}
