//! What a control-plane run records, written to its directory as JSON lines so that
//! `keelson chaos check DIR` can check it again: every write the workload made with its outcome,
//! every pod state the pod watch saw, the `Scheduled` events, the fault timeline, what every
//! written object held at the end, and how the cluster converged.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::history::{FaultStep, read_lines, write_lines};

/// How a write came out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Refused with a 4xx status: it did not happen.
    Refused {
        /// The HTTP status.
        code: u16,
        /// The Status reason.
        reason: String,
    },
    /// Never sent: no connection to an apiserver could be made. It did not happen.
    NotSent {
        /// What the client saw.
        error: String,
    },
    /// No answer, a lost connection or a 5xx: it may or may not have happened (now or later).
    Unknown {
        /// What the client saw.
        error: String,
    },
}

/// One write of the workload. Each object is written by one writer, one write at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Write {
    /// The writer.
    pub writer: usize,
    /// What it writes: `configmap/<name>`, `deployment/<name>/replicas` or
    /// `deployment/<name>/template`.
    pub object: String,
    /// `create`, `patch` or `delete`.
    pub verb: String,
    /// The value it sets; none for a delete.
    pub sets: Option<String>,
    /// When it was sent (ns since the run started).
    pub invoke: u64,
    /// When its outcome was known.
    pub complete: u64,
    /// Its outcome.
    pub outcome: Outcome,
}

/// A pod state the pod watch saw (recorded when the node, phase, readiness or deletion
/// changed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSeen {
    /// When (ns since the run started).
    pub at: u64,
    /// The pod's UID.
    pub uid: String,
    /// Its name.
    pub name: String,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `status.phase`.
    pub phase: String,
    /// Its Ready condition is True.
    pub ready: bool,
    /// It has a deletionTimestamp.
    pub deleting: bool,
    /// The watch saw it deleted.
    pub gone: bool,
}

/// A `Scheduled` event: the scheduler bound the pod to the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scheduled {
    /// The pod's UID (the event's involvedObject).
    pub uid: String,
    /// The pod's name.
    pub pod: String,
    /// The node it names.
    pub node: String,
    /// The event's count.
    pub count: i32,
}

/// How the cluster converged once the faults had ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Convergence {
    /// Seconds from the end of the faults until everything had converged; none if it did not
    /// within the time allowed.
    pub after: Option<f64>,
    /// The time allowed, in seconds.
    pub allowed: f64,
    /// What was still not converged at the last look (empty once converged).
    pub pending: Vec<String>,
}

/// A recorded control-plane run.
#[derive(Clone, Debug, Default)]
pub struct ControlHistory {
    /// Every write, in the order each writer made them.
    pub writes: Vec<Write>,
    /// Pod states the watch saw.
    pub pods: Vec<PodSeen>,
    /// The `Scheduled` events at the end.
    pub scheduled: Vec<Scheduled>,
    /// The fault timeline.
    pub faults: Vec<FaultStep>,
    /// What every written object (the keys of `Write::object`) held at the end (none when it
    /// did not exist); none at all when the cluster could not be read at the end.
    pub finals: Option<BTreeMap<String, Option<String>>>,
    /// How the cluster converged.
    pub convergence: Convergence,
}

const WRITES: &str = "writes.jsonl";
const PODS: &str = "pods.jsonl";
const SCHEDULED: &str = "scheduled.jsonl";
const FAULTS: &str = "faults.jsonl";
const FINALS: &str = "finals.json";
const CONVERGENCE: &str = "convergence.json";

impl ControlHistory {
    /// Whether `dir` holds a control-plane run.
    pub fn is_in(dir: &Path) -> bool {
        dir.join(WRITES).is_file()
    }

    /// Writes the history to `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_lines(&dir.join(WRITES), &self.writes)?;
        write_lines(&dir.join(PODS), &self.pods)?;
        write_lines(&dir.join(SCHEDULED), &self.scheduled)?;
        write_lines(&dir.join(FAULTS), &self.faults)?;
        if let Some(finals) = &self.finals {
            std::fs::write(dir.join(FINALS), serde_json::to_vec_pretty(finals)?)?;
        }
        std::fs::write(
            dir.join(CONVERGENCE),
            serde_json::to_vec_pretty(&self.convergence)?,
        )?;
        Ok(())
    }

    /// Reads a history `save` wrote.
    pub fn load(dir: &Path) -> anyhow::Result<ControlHistory> {
        let json = |name: &str| -> anyhow::Result<Vec<u8>> {
            let path = dir.join(name);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(ControlHistory {
            writes: read_lines(&dir.join(WRITES))?,
            pods: read_lines(&dir.join(PODS))?,
            scheduled: read_lines(&dir.join(SCHEDULED))?,
            faults: read_lines(&dir.join(FAULTS))?,
            finals: if dir.join(FINALS).exists() {
                Some(serde_json::from_slice(&json(FINALS)?).context(FINALS)?)
            } else {
                None
            },
            convergence: serde_json::from_slice(&json(CONVERGENCE)?).context(CONVERGENCE)?,
        })
    }
}
