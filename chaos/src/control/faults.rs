//! The control plane's fault classes: a component of `keelson up` killed (its supervisor
//! restarts it) or paused, the leaders of the HA pairs found by the upstream leader-election
//! metric.

use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use super::cluster::{Component, UpCluster};

/// A named control-plane fault class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlFault {
    /// kill -9 of an apiserver (each in turn); `keelson up` restarts it.
    KillApiserver,
    /// kill -9 of the leading controller-manager; the other takes the Lease over.
    KillControllerManager,
    /// kill -9 of the leading scheduler.
    KillScheduler,
    /// SIGSTOP of the leading controller-manager for `--pause-hold` (longer than its Lease,
    /// so the other takes over; once resumed, it must stop acting), then SIGCONT.
    PauseControllerManager,
    /// SIGSTOP of the leading scheduler for `--pause-hold`, then SIGCONT.
    PauseScheduler,
    /// kill -9 of a store member (each in turn).
    KillStore,
    /// kill -9 of the process of every hollow node; `keelson up` restarts it.
    KillNodes,
    /// kill -9 of every component at once (a power cut of the whole control plane and its
    /// nodes); `keelson up` restarts them all.
    KillAll,
}

impl ControlFault {
    /// Every class, in the order a run cycles through them.
    pub const ALL: [ControlFault; 8] = [
        ControlFault::KillApiserver,
        ControlFault::KillStore,
        ControlFault::KillNodes,
        // (Before a fault that waits for a leader: the next one finds components back.)
        ControlFault::KillAll,
        ControlFault::KillControllerManager,
        ControlFault::KillScheduler,
        ControlFault::PauseControllerManager,
        ControlFault::PauseScheduler,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ControlFault::KillApiserver => "kill-apiserver",
            ControlFault::KillControllerManager => "kill-controller-manager",
            ControlFault::KillScheduler => "kill-scheduler",
            ControlFault::PauseControllerManager => "pause-controller-manager",
            ControlFault::PauseScheduler => "pause-scheduler",
            ControlFault::KillStore => "kill-store",
            ControlFault::KillNodes => "kill-nodes",
            ControlFault::KillAll => "kill-all",
        }
    }

    /// The components it picks from (`keelson` subcommands; every one for `kill-all`).
    fn kind(self) -> &'static str {
        match self {
            ControlFault::KillApiserver => "apiserver",
            ControlFault::KillControllerManager | ControlFault::PauseControllerManager => {
                "controller-manager"
            }
            ControlFault::KillScheduler | ControlFault::PauseScheduler => "scheduler",
            ControlFault::KillStore => "store",
            ControlFault::KillNodes => "node",
            ControlFault::KillAll => "",
        }
    }

    /// Whether it stops a process until healed (else nothing needs healing: `up` restarts).
    pub fn pauses(self) -> bool {
        matches!(
            self,
            ControlFault::PauseControllerManager | ControlFault::PauseScheduler
        )
    }
}

/// How long a fault on a leader waits for there to be one.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// The outcome of an injection.
pub enum Injected {
    /// Done: what was hit, and the process to resume on heal for a pause.
    Done(String, Option<u32>),
    /// Nothing to hit now (every candidate is being restarted): skipped.
    Skipped(String),
}

/// Injects `fault`; `round` picks among components that take turns.
pub async fn inject(
    fault: ControlFault,
    cluster: &mut UpCluster,
    round: usize,
) -> anyhow::Result<Injected> {
    if fault == ControlFault::KillAll {
        let mut killed = Vec::new();
        for c in cluster.components()? {
            // (One that exited meanwhile is being restarted already.)
            if let Some(pid) = c.pid.filter(|p| c.runs_as(*p))
                && cluster.signal(pid, Signal::SIGKILL).is_ok()
            {
                killed.push(c.component);
            }
        }
        return Ok(if killed.is_empty() {
            Injected::Skipped("every component is being restarted".into())
        } else {
            Injected::Done(format!("SIGKILL to {}", killed.join(", ")), None)
        });
    }
    let leader_fault = matches!(
        fault,
        ControlFault::KillControllerManager
            | ControlFault::KillScheduler
            | ControlFault::PauseControllerManager
            | ControlFault::PauseScheduler
    );
    // Between leaders (the last one was just hit), the next is waited for.
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    let (target, why) = loop {
        let all = cluster.components()?;
        if !all.iter().any(|c| c.kind() == fault.kind()) {
            bail!("no {} in the cluster", fault.kind());
        }
        let running: Vec<&Component> = all
            .iter()
            .filter(|c| c.kind() == fault.kind() && c.pid.is_some_and(|p| c.runs_as(p)))
            .collect();
        let mut leader = None;
        if leader_fault {
            for c in &running {
                if leads(cluster, c).await == Some(true) {
                    leader = Some(*c);
                    break;
                }
            }
        }
        match leader {
            Some(l) => break (Some(l.clone()), "leader"),
            None if leader_fault && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None => {
                let why = if leader_fault {
                    "no leader within 30 s"
                } else {
                    "in turn"
                };
                let pick = running.get(round % running.len().max(1));
                break (pick.map(|c| (*c).clone()), why);
            }
        }
    };
    let Some(target) = target else {
        return Ok(Injected::Skipped(format!(
            "every {} is being restarted",
            fault.kind()
        )));
    };
    let pid = target.pid.expect("running components have a pid");
    let signal = if fault.pauses() {
        Signal::SIGSTOP
    } else {
        Signal::SIGKILL
    };
    match cluster.signal(pid, signal) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => {
            return Ok(Injected::Skipped(format!(
                "{} (pid {pid}) exited before the {signal}",
                target.component
            )));
        }
        Err(e) => bail!("sending {signal} to {} (pid {pid}): {e}", target.component),
    }
    Ok(Injected::Done(
        format!("{signal} to {} (pid {pid}, {why})", target.component),
        fault.pauses().then_some(pid),
    ))
}

/// Heals a pause: SIGCONT.
pub fn heal(cluster: &mut UpCluster, pid: u32) -> anyhow::Result<String> {
    cluster
        .signal(pid, Signal::SIGCONT)
        .with_context(|| format!("sending SIGCONT to pid {pid}"))?;
    Ok(format!("SIGCONT to pid {pid}"))
}

/// Whether an HA component's `/metrics` says it leads (`leader_election_master_status` 1);
/// `None` when it cannot be read.
pub async fn leads(cluster: &UpCluster, c: &Component) -> Option<bool> {
    let port = c.port()?;
    let text = metrics(cluster, port).await?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("leader_election_master_status"))
            .any(|l| l.ends_with(" 1")),
    )
}

/// The text of `https://127.0.0.1:<port>/metrics` (a component's serving certificate is its
/// own, so it is not verified), within 3 s.
async fn metrics(cluster: &UpCluster, port: u16) -> Option<String> {
    // One client per port (building one warns that certificates are not verified).
    let cached = cluster
        .metrics_clients
        .lock()
        .ok()?
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, c)| c.clone());
    let client = match cached {
        Some(c) => c,
        None => {
            let url: http::Uri = format!("https://127.0.0.1:{port}").parse().ok()?;
            let mut config = kube::Config::new(url);
            config.accept_invalid_certs = true;
            config.read_timeout = Some(Duration::from_secs(3));
            config.connect_timeout = Some(Duration::from_secs(3));
            let c = kube::Client::try_from(config).ok()?;
            cluster.metrics_clients.lock().ok()?.push((port, c.clone()));
            c
        }
    };
    let request = http::Request::get("/metrics").body(Vec::new()).ok()?;
    tokio::time::timeout(Duration::from_secs(3), client.request_text(request))
        .await
        .ok()?
        .ok()
}
