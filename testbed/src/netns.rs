//! Network namespaces for tests that need separate hosts on one machine: each
//! simulated pod, node or cluster gets its own namespace, joined by veth pairs.
//! Addresses live only inside the namespaces created here. Needs root (CAP_SYS_ADMIN
//! and CAP_NET_ADMIN) and `ip` from iproute2.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted (with its interfaces and iptables rules) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

impl Netns {
    /// Creates a namespace named `isthmus-ROLE-PID-N` with its loopback up.
    pub fn create(role: &str) -> anyhow::Result<Self> {
        let ns = Self {
            name: unique(&format!("isthmus-{role}")),
        };
        run(Command::new("ip").args(["netns", "add", &ns.name]))
            .context("creating a network namespace (tests that isolate hosts run as root)")?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace with exactly this name (fails when it exists), loopback up.
    pub fn create_named(name: &str) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name} (needs root)"))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs any command inside the namespace.
    pub fn exec(&self, program: &str, args: &[impl AsRef<str>]) -> anyhow::Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args.iter().map(AsRef::as_ref)))
    }

    fn path(&self) -> PathBuf {
        path(&self.name)
    }

    /// Moves the calling thread into this namespace. Sockets the thread creates from
    /// then on live there; so do threads it spawns.
    pub fn enter(&self) -> anyhow::Result<()> {
        let file = std::fs::File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(())
    }

    /// Runs `f` on a new thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<T>> {
        spawn_in(&self.name, f)
    }
}

fn path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Whether a named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Deletes a named namespace (its interfaces and iptables rules go with it); `Ok`
/// when there is none.
pub fn delete(name: &str) -> anyhow::Result<()> {
    if !exists(name) {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "del", name])).map(|_| ())
}

/// Runs `ip ARGS` in the calling process's namespace.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// Runs `f` on a new thread inside the named namespace (one this process did not
/// necessarily create).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<T>> {
    let file = std::fs::File::open(path(name))
        .with_context(|| format!("opening {}", path(name).display()))?;
    Ok(std::thread::spawn(move || {
        // A thread that cannot enter its namespace must not run in the host's.
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into a network namespace failed: {e}"));
        f()
    }))
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = delete(&self.name);
    }
}

/// Joins two namespaces with a veth pair, gives each end an address (CIDR form, e.g.
/// `10.248.0.1/24`) and makes it the default route, so traffic to any address (a
/// service VIP, say) leaves through it.
pub fn link(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> anyhow::Result<()> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{:x}{n:x}", std::process::id() % 0xfffff);
    let (va, vb) = (format!("iva{tag}"), format!("ivb{tag}"));
    run(Command::new("ip").args([
        "link",
        "add",
        &va,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &vb,
        "netns",
        b.name(),
    ]))?;
    for (ns, dev, addr) in [(a, &va, a_addr), (b, &vb, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
        ns.ip(&["route", "add", "default", "dev", dev])?;
    }
    Ok(())
}
