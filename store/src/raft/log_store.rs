//! The Raft log and vote on sled, with group-committed fsyncs.
//!
//! # Correctness
//! openraft may only be told an append is done once it is durable. sled buffers writes (and
//! flushes in the background only every 500 ms), so `append` writes the entries and then hands
//! the completion callback to a flusher thread. The flusher takes every callback waiting, runs
//! one `Db::flush` (an fsync covering all of them, and any state machine writes too), then calls
//! them back: many concurrent appends share one fsync. Callbacks complete in append order since
//! one thread handles them in channel order. `save_vote` flushes before it returns.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageError, Vote};

use super::{LogId, NodeId, TypeConfig, storage_error, storage_read_error};

type Entry = openraft::Entry<TypeConfig>;

/// Observes fsync durations (for `etcd_disk_wal_fsync_duration_seconds`).
pub type FsyncObserver = std::sync::Arc<dyn Fn(f64) + Send + Sync>;

/// The log store; clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the log trees of `db` and starts the flusher thread.
    pub fn open(db: &sled::Db, on_fsync: Option<FsyncObserver>) -> Result<LogStore, sled::Error> {
        let log = db.open_tree("raft_log")?;
        let meta = db.open_tree("raft_meta")?;
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let started = Instant::now();
                    let res = flush_db.flush().map(|_| ());
                    if let Some(observe) = &on_fsync {
                        observe(started.elapsed().as_secs_f64());
                    }
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
        Ok(LogStore {
            db: db.clone(),
            log,
            meta,
            flusher: tx,
        })
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
        self.db.flush().map_err(storage_error)?;
        Ok(())
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
        let last = match self.log.last().map_err(storage_read_error)? {
            Some((_, v)) => Some(
                bincode::deserialize::<Entry>(&v)
                    .map_err(storage_read_error)?
                    .log_id,
            ),
            None => last_purged,
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
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes = bincode::serialize(&e).map_err(storage_error)?;
            batch.insert(&idx_key(e.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(storage_error)?;
        self.flusher
            .send(callback)
            .map_err(|_| storage_error("log flusher stopped"))?;
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
        self.meta_put("last_purged", &log_id)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=idx_key(log_id.index)) {
            let (k, _) = item.map_err(storage_read_error)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(storage_error)?;
        self.flush()
    }
}
