//! openraft's state machine: applies committed batches to the shared [`Mvcc`], publishes their
//! watch events, and builds / installs snapshots (files, see [`snapshot`](super::snapshot)).
//!
//! The state machine's own records (last applied log id, membership) are written in the same
//! atomic backend batch as the data they describe, so a restart resumes exactly after the last
//! applied entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageError};
use parking_lot::{RwLock, RwLockWriteGuard};
use tokio::sync::broadcast;

use super::pb::BatchResponse;
use super::snapshot::{self, DumpError, SnapshotDir, SnapshotFile};
use super::{LogId, Member, NodeId, Pb, StoredMembership, TypeConfig, storage_error};
use crate::backend::{Backend, WriteBatch};
use crate::failpoint::failpoint;
use crate::mvcc::{EventBatch, Mvcc};

/// State shared between the state machine (writer) and the gRPC services (readers).
pub struct Shared {
    /// The data.
    pub mvcc: RwLock<Mvcc>,
    /// Every applied batch of events, in revision order.
    pub events: broadcast::Sender<EventBatch>,
    /// Last applied log id and membership.
    pub applied: RwLock<(Option<LogId>, StoredMembership)>,
    /// Where snapshots are kept.
    pub snapshots: SnapshotDir,
    /// Snapshots installed so far: a dump that sees this change read a state that went away.
    pub(crate) installs: AtomicU64,
    /// Whether a task deletes compacted records now.
    deleting: AtomicBool,
}

/// Compacted records deleted per backend write: each write holds the state's read lock (so no
/// snapshot is installed under it), which applies wait for; a short pause between writes lets
/// appends and applies through (etcd deletes a compaction's keys 1,000 at a time too).
const COMPACTED_CHUNK: usize = 1000;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("mvcc", &*self.mvcc.read())
            .finish_non_exhaustive()
    }
}

/// Capacity of the event broadcast; a watch stream that falls further behind catches up from
/// the backend instead of holding memory.
const EVENT_BUFFER: usize = 1024;

impl Shared {
    /// Loads the state kept in `backend`, with its snapshots in `snapshots`.
    pub fn open(
        backend: Arc<dyn Backend>,
        snapshots: SnapshotDir,
        min_lease_ttl: i64,
    ) -> Result<Arc<Shared>, crate::error::StoreError> {
        let mvcc = Mvcc::open(backend, min_lease_ttl)?;
        let applied: Option<LogId> = decode_meta(&mvcc, "raft_applied")?.flatten();
        let membership: StoredMembership =
            decode_meta(&mvcc, "raft_membership")?.unwrap_or_default();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Arc::new(Shared {
            mvcc: RwLock::new(mvcc),
            events,
            applied: RwLock::new((applied, membership)),
            snapshots,
            installs: AtomicU64::new(0),
            deleting: AtomicBool::new(false),
        }))
    }

    /// Whether compacted records are being deleted now (taken from the state, maybe not yet
    /// written): with nothing left in the state either, every compaction is on disk.
    pub fn deleting_compacted(&self) -> bool {
        self.deleting.load(Ordering::SeqCst)
    }

    /// Snapshots installed since the start.
    pub fn installs(&self) -> u64 {
        self.installs.load(Ordering::SeqCst)
    }

    /// Deletes the records compactions removed from the index, a chunk at a time, until none
    /// is left or a dump runs. Returns how many were deleted.
    pub fn delete_compacted(&self) -> Result<usize, crate::error::StoreError> {
        let mut deleted = 0;
        loop {
            let mut mvcc = self.mvcc.write();
            let keys = mvcc.take_compacted(COMPACTED_CHUNK);
            if keys.is_empty() {
                return Ok(deleted);
            }
            // Taken and deleted under one lock (downgraded so readers go on): a snapshot
            // installed in between could need records with the same keys.
            let mvcc = RwLockWriteGuard::downgrade(mvcc);
            let mut batch = WriteBatch::default();
            for k in &keys {
                batch.delete(k.to_vec());
            }
            mvcc.backend().write(batch)?;
            drop(mvcc);
            deleted += keys.len();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Deletes compacted records on the applying task from now on, and builds and installs
    /// snapshots on Raft's task, not on blocking threads (for a deterministic simulation;
    /// applies take longer).
    pub fn run_inline(&self) {
        self.snapshots.set_inline();
    }

    /// Starts [`Shared::delete_compacted`] on a blocking thread unless it runs already (or
    /// there is no runtime: the next apply starts it); inline if so set.
    pub(crate) fn spawn_delete_compacted(self: &Arc<Self>) {
        if self.snapshots.inline() {
            if self.mvcc.read().has_compacted()
                && let Err(e) = self.delete_compacted()
            {
                tracing::error!(error = %e, "deleting compacted records failed");
            }
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.mvcc.read().has_compacted() || self.deleting.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = self.clone();
        rt.spawn_blocking(move || {
            loop {
                if let Err(e) = shared.delete_compacted() {
                    tracing::error!(error = %e, "deleting compacted records failed");
                }
                shared.deleting.store(false, Ordering::SeqCst);
                // Keys a compaction queued after the last take, when its apply found this
                // task still running, are taken now (unless a dump holds them: its end
                // starts another task).
                let mvcc = shared.mvcc.read();
                if !mvcc.has_compacted()
                    || mvcc.pinned()
                    || shared.deleting.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        });
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

/// Runs `f` on a blocking thread of its own, or (`inline`, for a deterministic simulation) on
/// the caller's task.
async fn off_thread<R: Send + 'static>(
    inline: bool,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, tokio::task::JoinError> {
    if inline {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f).await
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
        // Dumping a large state is seconds of IO and CPU: on a thread of its own, so the
        // runtime's workers keep serving raft heartbeats and clients meanwhile; writers wait
        // only while the dump pins the state.
        let shared = self.shared.clone();
        let inline = shared.snapshots.inline();
        off_thread(inline, move || -> Result<(), StorageError<NodeId>> {
            failpoint!("raftBeforeSaveSnap");
            let (path, dumped) = match snapshot::dump_to_file(&shared, &shared.snapshots) {
                Ok(d) => d,
                // The installed snapshot is newer than this one would have been.
                Err(DumpError::Superseded) => return Ok(()),
                Err(DumpError::Store(e)) => return Err(storage_error(e)),
            };
            let snapshot_id = match dumped.applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, dumped.size),
                None => format!("0-0-{}", dumped.size),
            };
            let meta = SnapshotMeta {
                last_log_id: dumped.applied,
                last_membership: dumped.membership,
                snapshot_id,
            };
            // The state the dump was taken from is synced only by the log's next fsync: were
            // the snapshot current before that, a power cut could leave the snapshot ahead of
            // the state, which openraft refuses at every start.
            let backend = shared.mvcc.read().backend().clone();
            backend.flush().map_err(storage_error)?;
            // A snapshot installed meanwhile (from the leader) may be newer than this one: the
            // newest is kept, so lagging members are never sent one whose logs are purged.
            shared
                .snapshots
                .replace(&meta, &path, true)
                .map_err(storage_error)?;
            failpoint!("raftAfterSaveSnap");
            Ok(())
        })
        .await
        .map_err(storage_error)??;
        // The one just built, or a newer one installed meanwhile (installs make the snapshot
        // current before they touch the state, so a superseded dump always finds it).
        match self.shared.snapshots.open_current() {
            Ok(Some((meta, file))) => Ok(Snapshot {
                meta,
                snapshot: Box::new(file),
            }),
            Ok(None) => Err(storage_error("no snapshot after building one")),
            Err(e) => Err(storage_error(e)),
        }
    }
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
        failpoint!("raftBeforeApply");
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
            failpoint!("raftAfterApply");
            *self.shared.applied.write() = (applied, membership);
            mvcc.take_events()
        };
        if let Some(ev) = events {
            // No receiver is fine: nobody is watching.
            let _ = self.shared.events.send(ev);
        }
        self.shared.spawn_delete_compacted();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotFile>, StorageError<NodeId>> {
        self.shared
            .snapshots
            .receive()
            .await
            .map(Box::new)
            .map_err(storage_error)
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError<NodeId>> {
        let path = snapshot.keep().await.map_err(storage_error)?;
        let shared = self.shared.clone();
        let meta = meta.clone();
        // Reading and writing the whole state: on a thread of its own (see build_snapshot).
        let inline = shared.snapshots.inline();
        let revision = off_thread(inline, move || {
            failpoint!("raftBeforeApplySnap");
            let installed = snapshot::install_file(&shared, &path, &meta);
            if installed.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            failpoint!("raftAfterApplySnap");
            installed
        })
        .await
        .map_err(storage_error)?
        .map_err(storage_error)?;
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
        let current = self
            .shared
            .snapshots
            .open_current()
            .map_err(storage_error)?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
