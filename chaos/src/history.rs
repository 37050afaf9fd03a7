//! What a run records: every client operation with its invoke and complete times, every watch
//! stream, the compactions asked for and the fault timeline. Written as JSON lines to the run
//! directory so `keelson chaos check DIR` can check a history again.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A KV operation as the client asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Input {
    /// Linearizable single-key range.
    Get {
        /// The key.
        key: String,
    },
    /// Unconditional put.
    Put {
        /// The key.
        key: String,
        /// A value no other operation writes.
        value: String,
    },
    /// Single-key delete range.
    Delete {
        /// The key.
        key: String,
    },
    /// `txn(mod_revision(key) == expected) then put(key, value)`: the apiserver's optimistic
    /// concurrency (an absent key has mod revision 0).
    Cas {
        /// The key.
        key: String,
        /// The mod revision compared against.
        expected: i64,
        /// A value no other operation writes.
        value: String,
    },
}

impl Input {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            Input::Get { key } | Input::Put { key, .. } | Input::Delete { key } => key,
            Input::Cas { key, .. } => key,
        }
    }

    /// The value a put or compare-and-set writes.
    pub fn value(&self) -> Option<&str> {
        match self {
            Input::Put { value, .. } | Input::Cas { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Output {
    /// The key's value (`None`: absent), its mod revision (0 when absent) and the header revision.
    #[serde(rename_all = "camelCase")]
    Get {
        /// Value read.
        value: Option<String>,
        /// Mod revision of the key.
        mod_revision: i64,
        /// Revision of the store when read.
        revision: i64,
    },
    /// The put's revision.
    Put {
        /// Header revision of the response.
        revision: i64,
    },
    /// How many keys were deleted (0 or 1) and the header revision.
    Delete {
        /// Keys deleted.
        deleted: i64,
        /// Header revision of the response.
        revision: i64,
    },
    /// Whether the comparison held (and the put happened) and the header revision.
    Cas {
        /// The comparison held.
        succeeded: bool,
        /// Header revision of the response.
        revision: i64,
    },
    /// No answer (an error, a timeout, a lost connection): a write may or may not have taken
    /// effect, so it is never assumed absent; a read without an answer tells nothing.
    Unknown {
        /// What the client saw.
        error: String,
    },
}

impl Output {
    /// The header revision of an answered operation.
    pub fn revision(&self) -> Option<i64> {
        match *self {
            Output::Get { revision, .. }
            | Output::Put { revision }
            | Output::Delete { revision, .. }
            | Output::Cas { revision, .. } => Some(revision),
            Output::Unknown { .. } => None,
        }
    }

    /// The operation changed the store (and so created a revision of its own).
    pub fn mutated(&self) -> bool {
        match *self {
            Output::Put { .. } => true,
            Output::Delete { deleted, .. } => deleted > 0,
            Output::Cas { succeeded, .. } => succeeded,
            _ => false,
        }
    }
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Which client ran it (a client runs one operation at a time).
    pub client: usize,
    /// When it was sent, in nanoseconds since the run started.
    pub invoke: u64,
    /// When the answer (or the error) came.
    pub complete: u64,
    /// The request.
    pub input: Input,
    /// The answer.
    pub output: Output,
    /// The transaction this operation was part of: the puts of one multi-key txn are recorded
    /// as one operation per key, answered at the same revision, sharing this number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<u64>,
}

/// One entry of a watch stream, as the watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "camelCase")]
pub enum WatchEntry {
    /// A watch was (re)opened from `start_revision` (0: from now).
    #[serde(rename_all = "camelCase")]
    Opened {
        /// The revision asked for.
        start_revision: i64,
        /// When, in nanoseconds since the run started.
        at: u64,
    },
    /// An event.
    Event(WatchEvent),
    /// The server cancelled the watch because `start_revision` was compacted.
    #[serde(rename_all = "camelCase")]
    Compacted {
        /// The compact revision the server reported.
        compact_revision: i64,
        /// When.
        at: u64,
    },
    /// A progress notification: the server says the stream has had every event up to
    /// `revision`.
    Progress {
        /// The header revision of the notification.
        revision: i64,
        /// When.
        at: u64,
    },
    /// The stream ended or failed.
    Broken {
        /// What the watcher saw.
        error: String,
        /// When.
        at: u64,
    },
}

/// A watch event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    /// The key.
    pub key: String,
    /// The value of a put; `None` for a delete.
    pub value: Option<String>,
    /// The event's revision (the key's mod revision).
    pub revision: i64,
    /// The header revision of the response that carried it.
    pub header_revision: i64,
    /// When it arrived.
    pub at: u64,
    /// Which response of the stream carried it (counted from 1 per watcher): the events of one
    /// transaction must come in one response.
    #[serde(default)]
    pub response: u64,
}

/// One watcher's stream over the whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchHistory {
    /// The watcher's number.
    pub watcher: usize,
    /// The prefix watched.
    pub prefix: String,
    /// Everything it saw, in order.
    pub entries: Vec<WatchEntry>,
}

/// A compaction the run asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    /// The revision compacted to.
    pub revision: i64,
    /// When it was asked for.
    pub at: u64,
    /// Whether the store acknowledged it (an unacknowledged one may still have happened).
    pub acknowledged: bool,
}

/// A step of the fault timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStep {
    /// The fault class.
    pub fault: String,
    /// `inject` or `heal`.
    pub action: String,
    /// What was done (which member, why).
    pub detail: String,
    /// When.
    pub at: u64,
}

/// A lease the run granted, the key it attached and the keep-alives it sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    /// The lease ID.
    pub lease: i64,
    /// The TTL the grant answered with, in seconds.
    pub ttl: i64,
    /// When the grant was sent.
    pub granted: u64,
    /// The key put with the lease (the put is also in the operations).
    pub key: String,
    /// Keep-alives: when sent and the TTL answered (0: the lease was gone); unanswered ones are
    /// left out.
    pub keepalives: Vec<KeepAlive>,
}

/// An answered keep-alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {
    /// When it was sent.
    pub invoke: u64,
    /// The TTL answered, in seconds.
    pub ttl: i64,
}

/// Lease keys a member still held when the run stopped waiting for them to expire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseLeftover {
    /// The member.
    pub member: String,
    /// Keys of leases that should have expired.
    pub keys: Vec<String>,
}

impl LeaseLeftover {
    /// What `member` held: the keys of `kvs`.
    pub fn new(member: String, kvs: &[keelson_etcdpb::mvccpb::KeyValue]) -> LeaseLeftover {
        LeaseLeftover {
            member,
            keys: kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect(),
        }
    }
}

/// Everything a run recorded.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Client operations, in completion order.
    pub operations: Vec<Operation>,
    /// Watch streams.
    pub watches: Vec<WatchHistory>,
    /// Compactions asked for.
    pub compactions: Vec<Compaction>,
    /// The fault timeline.
    pub faults: Vec<FaultStep>,
    /// Leases granted.
    pub leases: Vec<LeaseRecord>,
    /// What the members still held of expired leases at the end.
    pub lease_leftovers: Vec<LeaseLeftover>,
    /// Every member's copy of the traffic's keys at the end.
    pub replicas: Vec<crate::replicas::ReplicaRead>,
}

const OPERATIONS: &str = "operations.jsonl";
const WATCHES: &str = "watches.jsonl";
const COMPACTIONS: &str = "compactions.jsonl";
const FAULTS: &str = "faults.jsonl";
const LEASES: &str = "leases.jsonl";
const LEASE_LEFTOVERS: &str = "lease-leftovers.jsonl";
const REPLICAS: &str = "replicas.jsonl";

impl History {
    /// Writes the history as JSON lines into `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_lines(&dir.join(OPERATIONS), &self.operations)?;
        write_lines(&dir.join(WATCHES), &self.watches)?;
        write_lines(&dir.join(COMPACTIONS), &self.compactions)?;
        write_lines(&dir.join(FAULTS), &self.faults)?;
        write_lines(&dir.join(LEASES), &self.leases)?;
        write_lines(&dir.join(LEASE_LEFTOVERS), &self.lease_leftovers)?;
        write_lines(&dir.join(REPLICAS), &self.replicas)
    }

    /// Reads a history `save` wrote.
    pub fn load(dir: &Path) -> anyhow::Result<History> {
        Ok(History {
            operations: read_lines(&dir.join(OPERATIONS))?,
            watches: read_lines(&dir.join(WATCHES))?,
            compactions: read_lines(&dir.join(COMPACTIONS))?,
            faults: read_lines(&dir.join(FAULTS))?,
            leases: read_lines(&dir.join(LEASES))?,
            lease_leftovers: read_lines(&dir.join(LEASE_LEFTOVERS))?,
            // Runs recorded before the replicas check have none.
            replicas: if dir.join(REPLICAS).exists() {
                read_lines(&dir.join(REPLICAS))?
            } else {
                Vec::new()
            },
        })
    }
}

pub(crate) fn write_lines<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for item in items {
        serde_json::to_writer(&mut w, item)?;
        w.write_all(b"\n")?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn read_lines<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}
