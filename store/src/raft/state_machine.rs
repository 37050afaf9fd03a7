//! openraft's state machine: applies committed batches to the shared [`Mvcc`], publishes their
//! watch events, and builds / installs snapshots.
//!
//! The state machine's own records (last applied log id, membership) are written in the same
//! atomic backend batch as the data they describe, so a restart resumes exactly after the last
//! applied entry. Snapshots are a dump of every backend pair, sent in chunks by openraft.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageError};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::pb::BatchResponse;
use super::{
    LogId, Member, NodeId, Pb, StoredMembership, TypeConfig, storage_error, storage_read_error,
};
use crate::backend::{Backend, Pair, WriteBatch};
use crate::mvcc::{EventBatch, Mvcc};

/// State shared between the state machine (writer) and the gRPC services (readers).
pub struct Shared {
    /// The data.
    pub mvcc: RwLock<Mvcc>,
    /// Every applied batch of events, in revision order.
    pub events: broadcast::Sender<EventBatch>,
    /// Last applied log id and membership.
    pub applied: RwLock<(Option<LogId>, StoredMembership)>,
    snapshot: Mutex<Option<StoredSnapshot>>,
    snapshot_store: Option<sled::Tree>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("mvcc", &*self.mvcc.read())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// Capacity of the event broadcast; a watch stream that falls further behind catches up from
/// the backend instead of holding memory.
const EVENT_BUFFER: usize = 1024;

impl Shared {
    /// Loads the state kept in `backend`; `snapshot_store` (if any) keeps the latest snapshot
    /// across restarts.
    pub fn open(
        backend: Arc<dyn Backend>,
        snapshot_store: Option<sled::Tree>,
        min_lease_ttl: i64,
    ) -> Result<Arc<Shared>, crate::error::StoreError> {
        let mvcc = Mvcc::open(backend, min_lease_ttl)?;
        let applied: Option<LogId> = decode_meta(&mvcc, "raft_applied")?.flatten();
        let membership: StoredMembership =
            decode_meta(&mvcc, "raft_membership")?.unwrap_or_default();
        let snapshot =
            match &snapshot_store {
                Some(t) => match t
                    .get("current")
                    .map_err(|e| crate::error::StoreError::Internal(e.to_string()))?
                {
                    Some(v) => Some(bincode::deserialize(&v).map_err(|e| {
                        crate::error::StoreError::Internal(format!("snapshot: {e}"))
                    })?),
                    None => None,
                },
                None => None,
            };
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Arc::new(Shared {
            mvcc: RwLock::new(mvcc),
            events,
            applied: RwLock::new((applied, membership)),
            snapshot: Mutex::new(snapshot),
            snapshot_store,
        }))
    }
}

fn decode_meta<T: serde::de::DeserializeOwned>(
    m: &Mvcc,
    name: &str,
) -> Result<Option<T>, crate::error::StoreError> {
    match m.get_meta(name)? {
        Some(v) => Ok(Some(bincode::deserialize(&v).map_err(|e| {
            crate::error::StoreError::Internal(format!("meta {name}: {e}"))
        })?)),
        None => Ok(None),
    }
}

/// The openraft state machine handle.
#[derive(Clone, Debug)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl StateMachine {
    /// A state machine over `shared`.
    pub fn new(shared: Arc<Shared>) -> StateMachine {
        StateMachine { shared }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Copying and encoding a large state is seconds of CPU: on a thread of its own, so the
        // runtime's workers keep serving raft heartbeats and clients meanwhile. Writers wait
        // only for the copy, not for the encoding and the write to disk.
        let shared = self.shared.clone();
        let stored = tokio::task::spawn_blocking(move || -> Result<_, StorageError<NodeId>> {
            let (pairs, applied, membership) = {
                let mvcc = shared.mvcc.read();
                let pairs: Vec<Pair> =
                    mvcc.backend().range(b"", b"").map_err(storage_read_error)?;
                let (applied, membership) = shared.applied.read().clone();
                (pairs, applied, membership)
            };
            let data = bincode::serialize(&pairs).map_err(storage_error)?;
            drop(pairs);
            let snapshot_id = match applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, data.len()),
                None => format!("0-0-{}", data.len()),
            };
            let stored = StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: applied,
                    last_membership: membership,
                    snapshot_id,
                },
                data,
            };
            // A snapshot installed meanwhile (from the leader) may be newer than this one: the
            // newest is kept, so lagging members are never sent one whose logs are purged.
            let mut current = shared.snapshot.lock();
            if current
                .as_ref()
                .is_none_or(|c| c.meta.last_log_id <= stored.meta.last_log_id)
            {
                persist_snapshot(&shared, &stored)?;
                *current = Some(stored.clone());
            }
            Ok(stored)
        })
        .await
        .map_err(storage_error)??;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

/// Writes `s` to the snapshot store (if any), durably.
fn persist_snapshot(shared: &Shared, s: &StoredSnapshot) -> Result<(), StorageError<NodeId>> {
    if let Some(t) = &shared.snapshot_store {
        let bytes = bincode::serialize(s).map_err(storage_error)?;
        t.insert("current", bytes).map_err(storage_error)?;
        t.flush().map_err(storage_error)?;
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<NodeId>> {
        Ok(self.shared.applied.read().clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Pb<BatchResponse>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let events = {
            let mut mvcc = self.shared.mvcc.write();
            let (mut applied, mut membership) = self.shared.applied.read().clone();
            for entry in entries {
                applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => out.push(Pb(BatchResponse::default())),
                    EntryPayload::Normal(Pb(batch)) => {
                        let responses = batch.requests.iter().map(|r| mvcc.apply(r)).collect();
                        out.push(Pb(BatchResponse { responses }));
                    }
                    EntryPayload::Membership(m) => {
                        let before: Vec<NodeId> =
                            membership.membership().nodes().map(|(id, _)| *id).collect();
                        membership = StoredMembership::new(Some(entry.log_id), m);
                        for id in before {
                            if membership.membership().get_node(&id).is_none() {
                                mvcc.forget_member(id);
                            }
                        }
                        out.push(Pb(BatchResponse::default()));
                    }
                }
            }
            mvcc.put_meta(
                "raft_applied",
                bincode::serialize(&applied).map_err(storage_error)?,
            );
            mvcc.put_meta(
                "raft_membership",
                bincode::serialize(&membership).map_err(storage_error)?,
            );
            mvcc.commit().map_err(storage_error)?;
            *self.shared.applied.write() = (applied, membership);
            mvcc.take_events()
        };
        if let Some(ev) = events {
            // No receiver is fine: nobody is watching.
            let _ = self.shared.events.send(ev);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let pairs: Vec<Pair> = bincode::deserialize(&data).map_err(storage_read_error)?;
        let revision = {
            let mut mvcc = self.shared.mvcc.write();
            let backend = mvcc.backend().clone();
            backend.clear().map_err(storage_error)?;
            let mut batch = WriteBatch::default();
            for (k, v) in pairs {
                batch.put(k, v);
            }
            backend.write(batch).map_err(storage_error)?;
            mvcc.reload().map_err(storage_error)?;
            mvcc.put_meta(
                "raft_applied",
                bincode::serialize(&meta.last_log_id).map_err(storage_error)?,
            );
            mvcc.put_meta(
                "raft_membership",
                bincode::serialize(&meta.last_membership).map_err(storage_error)?,
            );
            mvcc.commit().map_err(storage_error)?;
            *self.shared.applied.write() = (meta.last_log_id, meta.last_membership.clone());
            mvcc.current_revision()
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        persist_snapshot(&self.shared, &stored)?;
        *self.shared.snapshot.lock() = Some(stored);
        // Watchers on this member missed whatever the snapshot skipped: an empty batch whose
        // first revision is past everything makes each of them catch up from the backend.
        let _ = self.shared.events.send(EventBatch {
            events: Arc::new(Vec::new()),
            first_revision: revision + 1,
            revision,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.shared.snapshot.lock().as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
