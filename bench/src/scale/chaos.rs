//! Chaos during a run, as ClusterLoader2's chaos monkey: a share of the nodes fails every
//! interval for a simulated downtime (hollow nodes fail while labelled
//! `hollow.keelson.dev/down-for`, see `keelson node`), and an apiserver is killed now and then
//! (`keelson up` restarts it). Every fault is recorded with when its target was back, so the
//! report shows what the SLIs were measured under.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cluster::node_ready;
use keelson_node::failure::DOWN_FOR_LABEL;

/// Chaos flags of a run (all off by default).
#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// The share of the nodes failed every `--chaos-interval` (ClusterLoader2's failure
    /// rate, e.g. 0.01; at least one node a round when set). Hollow nodes fail while
    /// labelled `hollow.keelson.dev/down-for`; other kubelets ignore the label. 0: none.
    #[arg(long, default_value_t = 0.0)]
    pub chaos_node_failures: f64,
    /// Seconds between rounds of node failures.
    #[arg(long, default_value_t = 60)]
    pub chaos_interval: u64,
    /// Seconds a failed node stays down (ClusterLoader2's simulated downtime).
    #[arg(long, default_value_t = 600)]
    pub chaos_node_downtime: u64,
    /// Kill an apiserver (SIGKILL; `keelson up` restarts it) every this many seconds, each
    /// in turn. Only with a started cluster. 0: never.
    #[arg(long, default_value_t = 0)]
    pub chaos_kill_apiserver_every: u64,
    /// Seed of the choice of nodes to fail (the same seed and nodes, the same choices).
    #[arg(long, default_value_t = 1)]
    pub chaos_seed: u64,
}

impl ChaosArgs {
    pub(super) fn validate(&self, attached: bool) -> anyhow::Result<()> {
        let f = self.chaos_node_failures;
        if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
            bail!("--chaos-node-failures must be a share between 0 and 1, not {f}");
        }
        for (flag, v) in [
            ("--chaos-interval", self.chaos_interval),
            ("--chaos-node-downtime", self.chaos_node_downtime),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        if attached && self.chaos_kill_apiserver_every > 0 {
            bail!(
                "--chaos-kill-apiserver-every needs a started cluster (it kills the processes), not --kubeconfig"
            );
        }
        Ok(())
    }

    /// Whether any chaos is asked for.
    pub fn any(&self) -> bool {
        self.chaos_node_failures > 0.0 || self.chaos_kill_apiserver_every > 0
    }

    /// One line for the report, when chaos is on.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.chaos_node_failures > 0.0 {
            parts.push(format!(
                "{}% of the nodes failed every {} s for {} s",
                self.chaos_node_failures * 100.0,
                self.chaos_interval,
                self.chaos_node_downtime
            ));
        }
        if self.chaos_kill_apiserver_every > 0 {
            parts.push(format!(
                "an apiserver killed every {} s",
                self.chaos_kill_apiserver_every
            ));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// One fault injected.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    /// Seconds into the run.
    pub at: f64,
    /// `node-failure` or `apiserver-kill`.
    pub kind: &'static str,
    /// The node, or the apiserver (`apiserver-<i> pid <pid>`).
    pub target: String,
    /// Seconds until it was back: the node removed its label (its kubelet is back), the
    /// apiserver answered `/readyz`. None if not seen before the run ended.
    pub back_after: Option<f64>,
}

/// The faults of a run, shared between the injectors and the report.
pub type Faults = Arc<Mutex<Vec<Fault>>>;

/// Injects the chaos `args` asks for until `stop`, then brings every failed node back (the
/// label is removed, so an attached cluster is left as found). `data` is a started cluster's
/// data directory (its `status.json` names the apiservers' processes); `apiservers` are
/// clients of each apiserver, in that file's order.
pub async fn run(
    args: ChaosArgs,
    client: Client,
    apiservers: Vec<Client>,
    data: Option<PathBuf>,
    faults: Faults,
    t0: Instant,
    stop: CancellationToken,
) {
    let mut tasks = Vec::new();
    if args.chaos_node_failures > 0.0 {
        tasks.push(tokio::spawn(fail_nodes(
            args.clone(),
            client.clone(),
            faults.clone(),
            t0,
            stop.clone(),
        )));
    }
    if let (Some(data), true) = (data, args.chaos_kill_apiserver_every > 0) {
        tasks.push(tokio::spawn(kill_apiservers(
            Duration::from_secs(args.chaos_kill_apiserver_every),
            data,
            apiservers,
            faults.clone(),
            t0,
            stop.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    if args.chaos_node_failures > 0.0
        && let Err(e) = recover_all(&client).await
    {
        tracing::warn!(error = %e, "bringing the failed nodes back");
    }
}

/// Every `--chaos-interval`: fails a share of the Ready nodes that are not down, and notes
/// when failed nodes are back (their label gone).
async fn fail_nodes(
    args: ChaosArgs,
    client: Client,
    faults: Faults,
    t0: Instant,
    stop: CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let mut rng = ChaCha8Rng::seed_from_u64(args.chaos_seed);
    let interval = Duration::from_secs(args.chaos_interval);
    let mut next_round = Instant::now() + interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = note_nodes_back(&api, &faults, t0).await {
            tracing::warn!(error = %e, "listing failed nodes");
        }
        if Instant::now() < next_round {
            continue;
        }
        next_round += interval;
        let nodes = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing nodes to fail");
                continue;
            }
        };
        let count = ((nodes.len() as f64 * args.chaos_node_failures).round() as usize).max(1);
        let up: Vec<String> = nodes
            .iter()
            .filter(|n| node_ready(n) && !labelled(n))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let label = format!("{}s", args.chaos_node_downtime);
        for name in up.choose_multiple(&mut rng, count) {
            let patch = json!({"metadata": {"labels": {DOWN_FOR_LABEL: label}}});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => faults.lock().push(Fault {
                    at: t0.elapsed().as_secs_f64(),
                    kind: "node-failure",
                    target: name.clone(),
                    back_after: None,
                }),
                Err(e) => tracing::warn!(node = %name, error = %e, "failing a node"),
            }
        }
    }
}

fn labelled(n: &Node) -> bool {
    n.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(DOWN_FOR_LABEL))
}

/// Marks failed nodes whose label is gone as back.
async fn note_nodes_back(api: &Api<Node>, faults: &Faults, t0: Instant) -> anyhow::Result<()> {
    if !faults
        .lock()
        .iter()
        .any(|f| f.kind == "node-failure" && f.back_after.is_none())
    {
        return Ok(());
    }
    let down: std::collections::HashSet<String> = api
        .list(&ListParams::default().labels(DOWN_FOR_LABEL))
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let now = t0.elapsed().as_secs_f64();
    for f in faults.lock().iter_mut() {
        if f.kind == "node-failure" && f.back_after.is_none() && !down.contains(&f.target) {
            f.back_after = Some(now - f.at);
        }
    }
    Ok(())
}

/// Removes the failure label from every node that has it (retried: an apiserver may be
/// restarting as the run ends).
async fn recover_all(client: &Client) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = Patch::Merge(json!({"metadata": {"labels": {DOWN_FOR_LABEL: null}}}));
    let (labelled, params) = (
        ListParams::default().labels(DOWN_FOR_LABEL),
        PatchParams::default(),
    );
    let down = super::retried(0, || api.list(&labelled)).await?;
    for n in down.into_iter().flat_map(|l| l.items) {
        let name = n.metadata.name.unwrap_or_default();
        super::retried(404, || api.patch(&name, &params, &patch))
            .await
            .with_context(|| format!("removing {DOWN_FOR_LABEL} from node {name}"))?;
    }
    Ok(())
}

/// The apiservers' processes in `<data>/status.json`, in its order: (component, pid).
fn apiserver_pids(data: &std::path::Path) -> anyhow::Result<Vec<(String, Option<u32>)>> {
    let path = data.join("status.json");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let c = r["component"].as_str()?;
            c.starts_with("apiserver").then(|| {
                (
                    c.to_string(),
                    r["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
                )
            })
        })
        .collect())
}

/// Every `every`: SIGKILLs the next apiserver in turn and waits for it to answer `/readyz`
/// again (restarted by `keelson up`).
async fn kill_apiservers(
    every: Duration,
    data: PathBuf,
    apiservers: Vec<Client>,
    faults: Faults,
    t0: Instant,
    stop: CancellationToken,
) {
    let mut turn = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let rows = match apiserver_pids(&data) {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => {
                tracing::warn!("no apiserver to kill in status.json");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "finding the apiservers");
                continue;
            }
        };
        let i = turn % rows.len();
        turn += 1;
        let (name, Some(pid)) = rows[i].clone() else {
            tracing::warn!(apiserver = %rows[i].0, "apiserver not running: not killed");
            continue;
        };
        // (`status.json` is rewritten every 2 s: the pid must still be that apiserver's.)
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.split(|b| *b == 0).any(|arg| arg == b"apiserver") {
            tracing::warn!(apiserver = %name, pid, "not running as listed (restarting?): not killed");
            continue;
        }
        let pid_ = nix::unistd::Pid::from_raw(pid as i32);
        if let Err(e) = nix::sys::signal::kill(pid_, nix::sys::signal::Signal::SIGKILL) {
            tracing::warn!(apiserver = %name, pid, error = %e, "killing the apiserver");
            continue;
        }
        let at = t0.elapsed().as_secs_f64();
        let index = {
            let mut f = faults.lock();
            f.push(Fault {
                at,
                kind: "apiserver-kill",
                target: format!("{name} pid {pid}"),
                back_after: None,
            });
            f.len() - 1
        };
        let Some(server) = apiservers.get(i) else {
            continue;
        };
        // The process is gone at once; `up` restarts it after a second.
        tokio::time::sleep(Duration::from_millis(500)).await;
        loop {
            let req = http::Request::get("/readyz").body(Vec::new());
            let ready = match req {
                Ok(req) => server.request_text(req).await.is_ok(),
                Err(_) => false,
            };
            if ready {
                faults.lock()[index].back_after = Some(t0.elapsed().as_secs_f64() - at);
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        chaos: ChaosArgs,
    }

    fn flags(args: &[&str]) -> ChaosArgs {
        Flags::parse_from(std::iter::once("bench").chain(args.iter().copied())).chaos
    }

    #[test]
    fn chaos_is_off_unless_asked_and_bad_flags_are_refused() {
        let off = flags(&[]);
        assert!(!off.any());
        assert_eq!(off.describe(), None);
        off.validate(true).unwrap();
        let on = flags(&[
            "--chaos-node-failures=0.01",
            "--chaos-kill-apiserver-every=120",
        ]);
        assert_eq!(
            on.describe().unwrap(),
            "1% of the nodes failed every 60 s for 600 s, an apiserver killed every 120 s"
        );
        on.validate(false).unwrap();
        let err = on.validate(true).unwrap_err().to_string();
        assert!(err.contains("needs a started cluster"), "{err}");
        for (bad, wanted) in [
            ("--chaos-node-failures=1.5", "between 0 and 1"),
            ("--chaos-node-failures=-0.1", "between 0 and 1"),
            ("--chaos-interval=0", "--chaos-interval must be at least 1"),
            (
                "--chaos-node-downtime=0",
                "--chaos-node-downtime must be at least 1",
            ),
        ] {
            let err = flags(&[bad]).validate(false).unwrap_err().to_string();
            assert!(err.contains(wanted), "{bad}: {err}");
        }
    }
}
