//! The durable [`Backend`]: one sled tree.

use super::{Backend, BackendError, Pair, WriteBatch};

/// A sled tree; batches use `apply_batch`, which is atomic within one tree.
#[derive(Debug, Clone)]
pub struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledBackend {
    /// Uses tree `name` of `db`.
    pub fn open(db: &sled::Db, name: &str) -> Result<SledBackend, BackendError> {
        let tree = db.open_tree(name).map_err(engine)?;
        Ok(SledBackend {
            db: db.clone(),
            tree,
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
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(engine)
    }

    fn clear(&self) -> Result<(), BackendError> {
        self.tree.clear().map_err(engine)
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }

    fn size_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
