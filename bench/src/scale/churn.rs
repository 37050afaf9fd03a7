//! Churn during a run: writes that are neither the workload's nor its observers', as a busy
//! cluster has them. Config changes (ConfigMaps and Secrets of the run's first namespace
//! rewritten in turn at a fixed rate) and node status (hollow nodes post their whole status
//! every few seconds, as kubelets before 1.17 did, instead of every 5 minutes).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How many ConfigMaps, and as many Secrets, the config churn rewrites in turn.
const OBJECTS: usize = 10;
/// Config churn writes in flight at most.
const IN_FLIGHT: usize = 32;

/// Churn flags of a run (all off by default).
#[derive(clap::Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Config changes per second while the workload runs: the run's ConfigMaps and Secrets
    /// (10 of each, in its first namespace) are rewritten in turn. 0: none.
    #[arg(long, default_value_t = 0.0)]
    pub churn_config_qps: f64,
    /// Hollow nodes post their whole status every this many seconds even when unchanged
    /// (`keelson up --hollow-node-status-report-frequency`; kubelets before 1.17 posted every
    /// 10 s, later ones every 5 min). Only with a started cluster.
    #[arg(long)]
    pub churn_node_status_every: Option<u64>,
}

impl ChurnArgs {
    pub(super) fn validate(&self, attached: bool) -> anyhow::Result<()> {
        let q = self.churn_config_qps;
        if !(q.is_finite() && q >= 0.0) {
            bail!("--churn-config-qps must be a rate of 0 or more writes per second, not {q}");
        }
        match self.churn_node_status_every {
            Some(0) => bail!("--churn-node-status-every must be at least 1"),
            Some(_) if attached => bail!(
                "--churn-node-status-every sets the started cluster's hollow nodes, not with --kubeconfig"
            ),
            _ => Ok(()),
        }
    }

    /// The `keelson up` flags the churn needs.
    pub(super) fn up_args(&self) -> Vec<String> {
        self.churn_node_status_every
            .map(|s| format!("--hollow-node-status-report-frequency={s}s"))
            .into_iter()
            .collect()
    }

    /// One line for the report, when churn is on.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.churn_config_qps > 0.0 {
            parts.push(format!(
                "{} config changes/s (ConfigMaps and Secrets)",
                self.churn_config_qps
            ));
        }
        if let Some(s) = self.churn_node_status_every {
            parts.push(format!("every node's whole status posted every {s} s"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// What the config churn did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Churned {
    /// Writes that succeeded.
    pub writes: u64,
    /// Writes that failed (retried by the next turn).
    pub failed: u64,
}

/// Counters of the config churn, shared with the report.
#[derive(Default)]
pub struct Counters {
    writes: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    /// The counts so far.
    pub fn get(&self) -> Churned {
        Churned {
            writes: self.writes.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Rewrites the ConfigMaps and Secrets `churn-<i>` of `namespace` in turn at `qps` until
/// `stop`, when writes in flight are dropped (server-side apply: the first write of each
/// creates it; the namespace's deletion removes them).
pub async fn config(
    qps: f64,
    client: Client,
    namespace: String,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    if qps <= 0.0 {
        return;
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let start = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for n in 0u64.. {
        let due = start + Duration::from_secs_f64(n as f64 / qps);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.cancelled() => break,
        }
        // At most this many in flight: a slow apiserver slows the churn rather than piling
        // up writes.
        while writes.len() >= IN_FLIGHT {
            writes.join_next().await;
        }
        let name = format!("churn-{}", (n / 2) % OBJECTS as u64);
        let generation = n.to_string();
        let (configmaps, secrets, counters) =
            (configmaps.clone(), secrets.clone(), counters.clone());
        writes.spawn(async move {
            let params = PatchParams::apply("keelson-bench-churn").force();
            let written = if n % 2 == 0 {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name}, "data": {"generation": generation}});
                configmaps
                    .patch(&name, &params, &Patch::Apply(cm))
                    .await
                    .map(|_| ())
            } else {
                use base64::Engine as _;
                let value = base64::engine::general_purpose::STANDARD.encode(generation);
                let secret = json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name}, "data": {"generation": value}});
                secrets
                    .patch(&name, &params, &Patch::Apply(secret))
                    .await
                    .map(|_| ())
            };
            let counter = match written {
                Ok(()) => &counters.writes,
                Err(e) => {
                    tracing::debug!(error = %e, "config churn write failed");
                    &counters.failed
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
    writes.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        churn: ChurnArgs,
    }

    fn flags(args: &[&str]) -> ChurnArgs {
        Flags::parse_from(std::iter::once("bench").chain(args.iter().copied())).churn
    }

    #[test]
    fn churn_is_off_unless_asked_and_bad_flags_are_refused() {
        let off = flags(&[]);
        assert_eq!(off.describe(), None);
        assert!(off.up_args().is_empty());
        off.validate(true).unwrap();
        let on = flags(&["--churn-config-qps=50", "--churn-node-status-every=10"]);
        assert_eq!(
            on.describe().unwrap(),
            "50 config changes/s (ConfigMaps and Secrets), every node's whole status posted every 10 s"
        );
        assert_eq!(on.up_args(), ["--hollow-node-status-report-frequency=10s"]);
        let err = on.validate(true).unwrap_err().to_string();
        assert!(err.contains("not with --kubeconfig"), "{err}");
        for (bad, wanted) in [
            ("--churn-config-qps=-1", "0 or more writes per second"),
            ("--churn-config-qps=NaN", "0 or more writes per second"),
            ("--churn-node-status-every=0", "must be at least 1"),
        ] {
            let err = flags(&[bad]).validate(false).unwrap_err().to_string();
            assert!(err.contains(wanted), "{bad}: {err}");
        }
    }
}
