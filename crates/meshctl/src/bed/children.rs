//! What the testbed supervisor keeps running, as a Deployment would: a component that
//! exits is restarted with backoff (1 s doubling to 30 s, back to 1 s once it has run a
//! minute), and restarts show in `testbed status`. A chaos scenario may hold a
//! component down (`stop`) and start it again, or kill it as a crash would (`kill`),
//! through the supervisor's control endpoint.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// First restart delay.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A component that ran this long before exiting restarts after [`FIRST_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// One component as `state.json` (and `testbed status`) shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ComponentState {
    pub(crate) name: String,
    pub(crate) pid: Option<u32>,
    /// `running`, `restarting` (waiting out its backoff) or `held down`.
    pub(crate) state: String,
    /// Restarts after it exited by itself.
    pub(crate) restarts: u32,
    /// How it last exited, with the end of its log.
    pub(crate) last_exit: String,
}

/// What runs a component: a process of its own, or a cluster's kube-apiserver.
enum Target {
    Process(testbed::Process),
    ApiServer(usize),
}

struct Component {
    name: String,
    target: Target,
    held: bool,
    restarts: u32,
    backoff: Duration,
    started: Instant,
    restart_at: Option<Instant>,
    last_exit: String,
}

/// Every component and the control planes, in start order.
#[derive(Default)]
pub(crate) struct Children {
    components: Vec<Component>,
    pub(crate) control_planes: Vec<testbed::ControlPlane>,
}

impl Children {
    /// Supervises `p`.
    pub(crate) fn add(&mut self, p: testbed::Process) {
        let name = p.name().to_owned();
        self.push(name, Target::Process(p));
    }

    /// Supervises the kube-apiserver of the `index`th control plane.
    pub(crate) fn add_apiserver(&mut self, name: &str, index: usize) {
        self.push(name.to_owned(), Target::ApiServer(index));
    }

    fn push(&mut self, name: String, target: Target) {
        self.components.push(Component {
            name,
            target,
            held: false,
            restarts: 0,
            backoff: FIRST_BACKOFF,
            started: Instant::now(),
            restart_at: None,
            last_exit: String::new(),
        });
    }

    fn process<'a>(
        target: &'a mut Target,
        cps: &'a mut [testbed::ControlPlane],
    ) -> Option<&'a mut testbed::Process> {
        match target {
            Target::Process(p) => Some(p),
            Target::ApiServer(i) => cps.get_mut(*i).map(|cp| cp.apiserver_mut()),
        }
    }

    /// One supervision round: notes exits, restarts what has waited out its backoff.
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        for c in &mut self.components {
            if c.held {
                continue;
            }
            let Some(p) = Self::process(&mut c.target, &mut self.control_planes) else {
                continue;
            };
            if c.restart_at.is_none()
                && let Some(status) = p.exit_status()
            {
                if c.started.elapsed() >= HEALTHY_RUN {
                    c.backoff = FIRST_BACKOFF;
                }
                c.last_exit = format!("{status}; last lines of its log:\n{}", p.log_tail(5));
                c.restart_at = Some(now + c.backoff);
                tracing::warn!(component = %c.name, %status, restart_in = ?c.backoff, "a testbed component exited; restarting it");
                c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
            }
            if c.restart_at.is_some_and(|at| now >= at) {
                c.restart_at = None;
                c.started = now;
                c.restarts += 1;
                if let Err(e) = p.restart() {
                    c.last_exit = format!("restart failed: {e:#}");
                    tracing::error!(component = %c.name, error = %e, "cannot restart");
                }
            }
        }
    }

    /// `kill` (SIGKILL, restarted with backoff as after a crash), `stop` (SIGKILL, held
    /// down until `start`) or `start` a component now.
    pub(crate) fn control(&mut self, action: &str, name: &str) -> Result<String, String> {
        let Some(c) = self.components.iter_mut().find(|c| c.name == name) else {
            let names: Vec<&str> = self.components.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "no component {name:?}; components: {}",
                names.join(", ")
            ));
        };
        let p = Self::process(&mut c.target, &mut self.control_planes)
            .ok_or_else(|| format!("{name} has no process"))?;
        match action {
            "kill" => {
                p.kill();
                Ok(format!("killed {name}; the supervisor restarts it\n"))
            }
            "stop" => {
                c.held = true;
                c.restart_at = None;
                p.kill();
                Ok(format!("stopped {name}; it stays down until started\n"))
            }
            "start" => {
                c.held = false;
                c.restart_at = None;
                if p.exit_status().is_some() || p.pid().is_none() {
                    c.started = Instant::now();
                    p.restart().map_err(|e| format!("starting {name}: {e:#}"))?;
                }
                Ok(format!("started {name}\n"))
            }
            other => Err(format!("unknown action {other:?}: kill, stop or start")),
        }
    }

    /// Every component's state.
    pub(crate) fn states(&mut self) -> Vec<ComponentState> {
        let mut out = Vec::new();
        for c in &mut self.components {
            let held = c.held;
            let restarting = c.restart_at.is_some();
            let (pid, exited) = match Self::process(&mut c.target, &mut self.control_planes) {
                Some(p) => (p.pid(), p.exit_status().is_some()),
                None => (None, true),
            };
            let state = if held {
                "held down"
            } else if restarting || exited {
                "restarting"
            } else {
                "running"
            };
            out.push(ComponentState {
                name: c.name.clone(),
                pid: pid.filter(|_| !exited),
                state: state.into(),
                restarts: c.restarts,
                last_exit: c.last_exit.clone(),
            });
        }
        out
    }

    /// Stops everything: components in reverse start order, then the control planes.
    pub(crate) fn stop_all(&mut self) {
        while let Some(mut c) = self.components.pop() {
            if let Target::Process(p) = &mut c.target {
                p.stop();
            }
        }
        self.control_planes.clear();
    }
}
