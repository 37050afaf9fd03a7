//! `keelson chaos`: real etcd v3 traffic against a store cluster (keelson-store or a real etcd
//! 3.4, the control) while faults are injected, every operation and watch event recorded, and the
//! history checked: linearizability of the KV operations against a model of etcd, the revision
//! order across keys, multi-key txns seen whole, the watch guarantees (progress notifications
//! included), the lease guarantees, and every member holding the same keys at the end.
//!
//! `keelson chaos control-plane` (the `control` module) does the same for the control plane:
//! components of a `keelson up` cluster killed and paused under a workload, then the checks
//! that nothing acknowledged was lost, no pod was bound twice and everything converged.
//!
//! `keelson chaos sim` (the `sim` module) runs keelson-store's Raft and MVCC code in one
//! process on a simulated clock and network, faults drawn from a seed, so that a seed replays
//! exactly.

pub mod cluster;
pub mod control;
pub mod faults;
pub mod history;
pub mod interrupt;
pub mod lazyfs;
pub mod leases;
pub mod linearizability;
pub mod netns;
pub mod plot;
pub mod proxy;
pub mod replicas;
pub mod resolve;
pub mod revisions;
pub mod run;
pub mod sim;
pub mod traffic;
pub mod txns;
pub mod watch;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The history satisfies the property.
    Ok,
    /// It does not; the details say where.
    Violation,
    /// The checker ran out of its budget before deciding.
    Unknown,
}

/// The result of one checker.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// The checker.
    pub name: &'static str,
    /// How many operations or events it looked at.
    pub checked: usize,
    /// Its verdict.
    pub verdict: Verdict,
    /// What it found (for a violation: where, with a failing sub-history when it has one).
    pub details: Vec<String>,
}

impl Check {
    /// A check whose findings are violations: ok when there are none.
    pub fn findings(name: &'static str, checked: usize, details: Vec<String>) -> Check {
        Check {
            name,
            checked,
            verdict: if details.is_empty() {
                Verdict::Ok
            } else {
                Verdict::Violation
            },
            details,
        }
    }
}

/// Runs every checker on a recorded history.
pub fn check_all(history: &history::History, budget: std::time::Duration) -> Vec<Check> {
    let (resolved, stats) = resolve::resolve(&history.operations, &history.watches);
    let mut linearizability = linearizability::check(&resolved, budget);
    linearizability.details.push(format!(
        "unanswered writes: {} seen in a watch, {} never happened, {} left unknown",
        stats.happened, stats.dropped, stats.unknown
    ));
    let errors: Vec<String> = history
        .faults
        .iter()
        .filter(|f| f.action == "error")
        .map(|f| format!("{}: {}", f.fault, f.detail))
        .collect();
    let recovery = Check::findings("recovery", history.faults.len(), errors);
    vec![
        recovery,
        linearizability,
        revisions::check(&history.operations),
        txns::check(&history.operations, &history.watches),
        watch::check(
            &history.watches,
            &history.operations,
            &history.compactions,
            &history.leases,
        ),
        leases::check(
            &history.leases,
            &history.operations,
            &history.watches,
            &history.lease_leftovers,
        ),
        replicas::check(&history.replicas),
    ]
}
