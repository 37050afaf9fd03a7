//! The durable [`Backend`]: one sled tree.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, BackendError, Pair, WriteBatch};

/// A sled tree; batches use `apply_batch`, which is atomic within one tree.
///
/// The bytes in use (keys and values) are counted once at open and kept current by every
/// write; sled's own size on disk also counts the other trees (the raft log) and space its
/// segments have not reclaimed yet.
#[derive(Debug, Clone)]
pub struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
    in_use: Arc<AtomicU64>,
}

impl SledBackend {
    /// Uses tree `name` of `db`.
    pub fn open(db: &sled::Db, name: &str) -> Result<SledBackend, BackendError> {
        let tree = db.open_tree(name).map_err(engine)?;
        let mut in_use = 0u64;
        for item in tree.iter() {
            let (k, v) = item.map_err(engine)?;
            in_use += (k.len() + v.len()) as u64;
        }
        Ok(SledBackend {
            db: db.clone(),
            tree,
            in_use: Arc::new(AtomicU64::new(in_use)),
        })
    }
}

fn engine(e: sled::Error) -> BackendError {
    BackendError::Engine(e.to_string())
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tree.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<Pair>, BackendError> {
        let mut out = Vec::new();
        self.for_each(start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    fn for_each(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        if !end.is_empty() && end <= start {
            return Ok(());
        }
        let iter = if end.is_empty() {
            self.tree.range(start..)
        } else {
            self.tree.range(start..end)
        };
        for item in iter {
            let (k, v) = item.map_err(engine)?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        // Writes come from one writer at a time (the state machine, under its lock), so the
        // sizes read here are the ones the batch replaces.
        let mut failed = None;
        let delta = super::batch_delta(&batch, &mut |k| match self.tree.get(k) {
            Ok(v) => v.map_or(0, |v| (k.len() + v.len()) as u64),
            Err(e) => {
                failed = Some(e);
                0
            }
        });
        if let Some(e) = failed {
            return Err(engine(e));
        }
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(engine)?;
        let _ = self
            .in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add_signed(delta))
            });
        Ok(())
    }

    fn clear(&self) -> Result<(), BackendError> {
        self.tree.clear().map_err(engine)?;
        self.in_use.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }

    fn size_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn size_in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }
}
