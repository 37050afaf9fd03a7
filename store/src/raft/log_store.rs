//! The Raft log and vote on sled, with group-committed fsyncs.
//!
//! # Correctness
//! openraft may only be told an append is done once it is durable. sled buffers writes (and
//! flushes in the background only every 500 ms), so `append` writes the entries and then hands
//! the completion callback to a flusher thread. The flusher takes every callback waiting, runs
//! one [`SledDb::sync`] (an fsync covering all of them, and any state machine writes too), then calls
//! them back: many concurrent appends share one fsync. Callbacks complete in append order since
//! one thread handles them in channel order. `save_vote` flushes before it returns.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageError, Vote};
use parking_lot::Mutex;

use super::{LogId, NodeId, TypeConfig, storage_error, storage_read_error};
use crate::backend::SledDb;
use crate::failpoint::failpoint;

type Entry = openraft::Entry<TypeConfig>;

/// Observes fsync durations (for `etcd_disk_wal_fsync_duration_seconds`).
pub type FsyncObserver = Arc<dyn Fn(f64) + Send + Sync>;

/// Whether the durable snapshot covers a log index.
pub type SnapshotCovers = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// The log store; clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    db: SledDb,
    log: sled::Tree,
    meta: sled::Tree,
    /// The flusher thread's queue; `None`: `append` flushes before it returns (see
    /// [`LogStore::open_inline`]).
    flusher: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    /// Index of the last purged entry: entries up to it are gone for readers at once.
    purged: Arc<Mutex<Option<u64>>>,
    /// Index of the last purged entry on disk: entries up to it are deleted from the tree in
    /// the background ([`LogStore::purge`]).
    durable_purged: Arc<Mutex<Option<u64>>>,
    /// A purge waiting for the snapshot that covers it to be durable (see
    /// [`LogStore::with_snapshot_check`]).
    deferred: Arc<Mutex<Option<LogId>>>,
    /// Whether the durable snapshot covers an index (none: purges are never deferred).
    covers: Option<SnapshotCovers>,
    /// Whether a background deletion of purged entries runs.
    deleting: Arc<AtomicBool>,
}

/// Purged log entries deleted per sled batch, with a pause between batches, so appends (and
/// their fsyncs) are never stuck behind one large deletion (etcd also compacts in batches).
const PURGE_CHUNK: usize = 1000;

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the log trees of `db` and starts the flusher thread.
    pub fn open(db: &SledDb, on_fsync: Option<FsyncObserver>) -> Result<LogStore, sled::Error> {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let started = Instant::now();
                    let res = flush_db.sync();
                    if let Some(observe) = &on_fsync {
                        observe(started.elapsed().as_secs_f64());
                    }
                    failpoint!("raftAfterSave");
                    for cb in waiting {
                        let r = match &res {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        };
                        cb.log_io_completed(r);
                    }
                }
            })
            .map_err(sled::Error::Io)?;
        LogStore::with_flusher(db, Some(tx))
    }

    /// Opens the log trees of `db` without a flusher thread: `append` fsyncs and reports the
    /// entries durable before it returns, purged entries are deleted at once, and a deferred
    /// purge is written by the next log call that finds it covered, so nothing happens off
    /// the caller's thread. Slower (no group commit); for the deterministic simulation, whose
    /// single thread must decide every ordering.
    pub fn open_inline(db: &SledDb) -> Result<LogStore, sled::Error> {
        LogStore::with_flusher(db, None)
    }

    fn with_flusher(
        db: &SledDb,
        flusher: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    ) -> Result<LogStore, sled::Error> {
        let store = LogStore {
            db: db.clone(),
            log: db.db().open_tree("raft_log")?,
            meta: db.db().open_tree("raft_meta")?,
            flusher,
            purged: Arc::default(),
            durable_purged: Arc::default(),
            deferred: Arc::default(),
            covers: None,
            deleting: Arc::default(),
        };
        let last_purged: Option<LogId> = store
            .meta_get("last_purged")
            .map_err(|e| sled::Error::Unsupported(e.to_string()))?;
        *store.purged.lock() = last_purged.map(|l| l.index);
        *store.durable_purged.lock() = last_purged.map(|l| l.index);
        // Entries a purge had not deleted yet when the process stopped.
        if last_purged.is_some() {
            store.spawn_delete_purged();
        }
        Ok(store)
    }

    /// Makes purges wait until the durable snapshot covers them (`covers`).
    ///
    /// openraft purges the log a received snapshot covers as soon as it hands the snapshot to
    /// the state machine, before it is installed. Written at once, that purge outlives a crash
    /// that cuts the install short, and the member cannot start again: its log is purged
    /// beyond its snapshot, which openraft refuses. So a purge the durable snapshot does not
    /// cover yet is written (and its entries deleted) only once it does; readers skip the
    /// entries at once.
    pub fn with_snapshot_check(mut self, covers: SnapshotCovers) -> LogStore {
        self.covers = Some(covers);
        self
    }

    /// Writes the purge up to `log_id` (unless one as far is written), then deletes the
    /// entries in the background.
    fn write_purge(&self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        // Held while writing: purges are written in order, never going back.
        let mut deferred = self.deferred.lock();
        if self
            .durable_purged
            .lock()
            .is_some_and(|p| p >= log_id.index)
        {
            return Ok(());
        }
        self.meta_put("last_purged", &log_id)?;
        self.flush()?;
        *self.durable_purged.lock() = Some(log_id.index);
        if deferred.is_some_and(|d| d.index <= log_id.index) {
            *deferred = None;
        }
        drop(deferred);
        self.spawn_delete_purged();
        Ok(())
    }

    /// Whether this store works on the caller's thread only ([`LogStore::open_inline`]).
    fn inline(&self) -> bool {
        self.flusher.is_none()
    }

    /// Inline: writes the deferred purge if the durable snapshot covers it now (what the
    /// waiting thread does otherwise), at each log call.
    fn write_deferred_if_covered(&self) -> Result<(), StorageError<NodeId>> {
        if !self.inline() {
            return Ok(());
        }
        let (Some(covers), Some(id)) = (&self.covers, *self.deferred.lock()) else {
            return Ok(());
        };
        if covers(id.index) {
            self.write_purge(id)?;
        }
        Ok(())
    }

    /// Waits, on a thread of its own, for the snapshot that covers the deferred purge (the
    /// newest one) and writes it then (inline, the next log call that finds it covered does).
    /// It gives up when every other handle on the store is gone (raft stopped), or when the
    /// write fails: the purge stays unwritten, which is safe (the next purge, or the next
    /// start, writes one as far).
    fn spawn_write_deferred(&self) {
        let Some(covers) = self.covers.clone() else {
            return;
        };
        if self.inline() {
            return;
        }
        let store = self.clone();
        let spawned = std::thread::Builder::new()
            .name("raft-log-purge-wait".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    let Some(id) = *store.deferred.lock() else {
                        return;
                    };
                    if Arc::strong_count(&store.deferred) <= 1 {
                        *store.deferred.lock() = None;
                        return;
                    }
                    if covers(id.index) {
                        if let Err(e) = store.write_purge(id) {
                            tracing::error!(error = %e, "writing a deferred log purge failed");
                            *store.deferred.lock() = None;
                            return;
                        }
                        if store.deferred.lock().is_none() {
                            return;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the deferred log purge");
            *self.deferred.lock() = None;
        }
    }

    /// At start, with `snapshot` the installed snapshot's last log id: if the log lacks that
    /// entry (the snapshot was received, not built from this log) and no purge as far is
    /// written, writes one. That is the purge deferred until the install, when the process
    /// stopped before it was written: without it the log would have a hole between its
    /// entries before the snapshot and those appended after it.
    pub fn purge_to_snapshot(&self, snapshot: LogId) -> Result<(), StorageError<NodeId>> {
        if self
            .log
            .contains_key(idx_key(snapshot.index))
            .map_err(storage_read_error)?
        {
            return Ok(());
        }
        self.write_purge(snapshot)
    }

    /// Deletes the purged entries still in the tree, a chunk at a time, on a thread of its own
    /// (unless one runs already: that one picks up later purges before it stops).
    fn spawn_delete_purged(&self) {
        if self.inline() {
            delete_purged(&self.log, &self.durable_purged);
            return;
        }
        if self.deleting.swap(true, Ordering::SeqCst) {
            return;
        }
        let (log, purged, deleting) = (
            self.log.clone(),
            self.durable_purged.clone(),
            self.deleting.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("raft-log-purge".into())
            .spawn(move || {
                loop {
                    delete_purged(&log, &purged);
                    deleting.store(false, Ordering::SeqCst);
                    // A purge that found this thread still running left its entries to it: if
                    // any remain, go on (unless another thread has started meanwhile).
                    let upto = *purged.lock();
                    let left = upto.is_some_and(|u| {
                        log.range(..=idx_key(u))
                            .next()
                            .is_some_and(|item| item.is_ok())
                    });
                    if !left || deleting.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
            });
        if spawned.is_err() {
            self.deleting.store(false, Ordering::SeqCst);
        }
    }

    fn meta_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        match self.meta.get(key).map_err(storage_read_error)? {
            Some(v) => Ok(Some(bincode::deserialize(&v).map_err(storage_read_error)?)),
            None => Ok(None),
        }
    }

    fn meta_put<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<(), StorageError<NodeId>> {
        let bytes = bincode::serialize(v).map_err(storage_error)?;
        self.meta.insert(key, bytes).map_err(storage_error)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError<NodeId>> {
        self.db.sync().map_err(storage_error)?;
        Ok(())
    }
}

/// Deletes the log entries up to the purged index, [`PURGE_CHUNK`] per batch with a pause
/// between batches, until none is left or sled fails.
fn delete_purged(log: &sled::Tree, purged: &Mutex<Option<u64>>) {
    loop {
        let Some(upto) = *purged.lock() else { return };
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in log.range(..=idx_key(upto)).take(PURGE_CHUNK) {
            match item {
                Ok((k, _)) => {
                    batch.remove(k);
                    n += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading purged log entries failed");
                    return;
                }
            }
        }
        if n == 0 {
            return;
        }
        if let Err(e) = log.apply_batch(batch) {
            tracing::error!(error = %e, "deleting purged log entries failed");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn idx_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        // Purged entries may still be in the tree until the background deletion reaches them.
        let start = match *self.purged.lock() {
            Some(p) => start.max(p + 1),
            None => start,
        };
        if let Bound::Included(end) = range.end_bound()
            && *end < start
        {
            return Ok(Vec::new());
        }
        if let Bound::Excluded(end) = range.end_bound()
            && *end <= start
        {
            return Ok(Vec::new());
        }
        let iter = match range.end_bound() {
            Bound::Included(i) => self.log.range(idx_key(start)..=idx_key(*i)),
            Bound::Excluded(i) => self.log.range(idx_key(start)..idx_key(*i)),
            Bound::Unbounded => self.log.range(idx_key(start)..),
        };
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(storage_read_error)?;
            out.push(bincode::deserialize(&v).map_err(storage_read_error)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId> = self.meta_get("last_purged")?;
        let last_entry = match self.log.last().map_err(storage_read_error)? {
            Some((_, v)) => Some(
                bincode::deserialize::<Entry>(&v)
                    .map_err(storage_read_error)?
                    .log_id,
            ),
            None => None,
        };
        // The tree's last entry may be one already purged (not deleted yet), or older than
        // a purge that followed a snapshot install.
        let last = match (last_entry, last_purged) {
            (Some(e), Some(p)) if e.index <= p.index => Some(p),
            (Some(e), _) => Some(e),
            (None, p) => p,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.meta_put("vote", vote)?;
        self.flush()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta_get("vote")
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write_deferred_if_covered()?;
        // Not flushed on purpose: losing it only delays re-applying, as openraft documents.
        self.meta_put("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<NodeId>> {
        Ok(self.meta_get::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        failpoint!("raftBeforeSave");
        self.write_deferred_if_covered()?;
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes = super::to_bincode(&e).map_err(storage_error)?;
            batch.insert(&idx_key(e.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(storage_error)?;
        match &self.flusher {
            Some(flusher) => flusher
                .send(callback)
                .map_err(|_| storage_error("log flusher stopped"))?,
            None => {
                let res = self.db.sync().map_err(std::io::Error::other);
                failpoint!("raftAfterSave");
                callback.log_io_completed(res);
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(idx_key(log_id.index)..) {
            let (k, _) = item.map_err(storage_read_error)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(storage_error)?;
        self.flush()
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        // This runs on raft's core task: only the record is written here. Deleting a
        // snapshot interval of entries at once (100,000 by default) blocked heartbeats for
        // seconds; a background thread deletes them in chunks.
        self.write_deferred_if_covered()?;
        {
            let mut purged = self.purged.lock();
            *purged = (*purged).max(Some(log_id.index));
        }
        if let Some(covers) = &self.covers
            && !covers(log_id.index)
        {
            let mut deferred = self.deferred.lock();
            let waiting = deferred.is_some();
            if deferred.is_none_or(|d| d.index < log_id.index) {
                *deferred = Some(log_id);
            }
            drop(deferred);
            if !waiting {
                self.spawn_write_deferred();
            }
            return Ok(());
        }
        self.write_purge(log_id)
    }
}
