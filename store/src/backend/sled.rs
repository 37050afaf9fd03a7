//! The durable [`Backend`]: one sled tree; and [`SledDb`], the database it and the Raft log
//! share, with a flush that really reaches the disk.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, BackendError, Pair, WriteBatch};

/// A sled database whose [`SledDb::sync`] is an fsync.
///
/// # Correctness
/// - sled's own `flush` writes its buffers and waits for them with `sync_file_range`, which
///   flushes neither the drive's write cache nor the file's size: after a power cut a write it
///   reported durable can be gone. [`SledDb::sync`] follows it with `fdatasync` on sled's data
///   file (fsync works on any descriptor of the file), which covers both, as etcd's WAL does.
/// - sled writes a value larger than about a quarter of a segment (128 KiB) to a file of its
///   own under `blobs/`, with a plain write and no fsync ever, and keeps only a pointer in the
///   data file. `sync` fsyncs every blob file it has not synced yet, and the directory, before
///   and after the data file.
#[derive(Debug, Clone)]
pub struct SledDb {
    db: sled::Db,
    data: Arc<File>,
    blobs: PathBuf,
    /// Blob files synced so far (names that are gone are forgotten at the next sync).
    synced_blobs: Arc<parking_lot::Mutex<HashSet<OsString>>>,
}

impl SledDb {
    /// Opens (or creates) the database in directory `path` with `cache_capacity` bytes of
    /// page cache.
    pub fn open(path: &Path, cache_capacity: u64) -> Result<SledDb, sled::Error> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .open()?;
        // sled keeps its pages in this one file (`Config::db_path`), but for blobs.
        let data = File::open(path.join("db"))?;
        let db = SledDb {
            db,
            data: Arc::new(data),
            blobs: path.join("blobs"),
            synced_blobs: Arc::default(),
        };
        // The names of the files sled created.
        File::open(path)?.sync_all()?;
        db.sync()?;
        Ok(db)
    }

    /// The database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Makes every completed write durable: its blobs, sled's flush, then `fdatasync`, then
    /// any blob written meanwhile (so no pointer made durable here points at a lost file).
    pub fn sync(&self) -> Result<(), sled::Error> {
        self.sync_blobs()?;
        self.db.flush()?;
        self.data.sync_data()?;
        self.sync_blobs()?;
        Ok(())
    }

    /// fsyncs the blob files not synced yet, then their directory.
    fn sync_blobs(&self) -> std::io::Result<()> {
        let mut synced = self.synced_blobs.lock();
        let mut present = HashSet::new();
        let mut new = false;
        for entry in std::fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled removed it meanwhile (its page was rewritten).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

/// A sled tree; batches use `apply_batch`, which is atomic within one tree.
///
/// The bytes in use (keys and values) are counted once at open and kept current by every
/// write; sled's own size on disk also counts the other trees (the raft log) and space its
/// segments have not reclaimed yet.
#[derive(Debug, Clone)]
pub struct SledBackend {
    db: SledDb,
    tree: sled::Tree,
    in_use: Arc<AtomicU64>,
}

impl SledBackend {
    /// Uses tree `name` of `db`.
    pub fn open(db: &SledDb, name: &str) -> Result<SledBackend, BackendError> {
        let tree = db.db().open_tree(name).map_err(engine)?;
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
        self.db.sync().map_err(engine)
    }

    fn size_bytes(&self) -> u64 {
        self.db.db().size_on_disk().unwrap_or(0)
    }

    fn size_in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_reaches_the_file_sled_writes() {
        // `SledDb::sync` fsyncs `db` in the directory: that must be where sled's pages go.
        let dir = tempfile::tempdir().unwrap();
        let db = SledDb::open(dir.path(), 1 << 20).unwrap();
        let data = dir.path().join("db");
        let before = std::fs::metadata(&data).unwrap().len();
        let tree = db.db().open_tree("t").unwrap();
        for i in 0u32..256 {
            tree.insert(i.to_be_bytes(), vec![7u8; 4096]).unwrap();
        }
        db.sync().unwrap();
        let after = std::fs::metadata(&data).unwrap().len();
        assert!(
            after >= before + (1 << 20),
            "sled's data file grew from {before} to {after} bytes for 1 MiB written"
        );
        assert!(
            db.synced_blobs.lock().is_empty(),
            "4 KiB values are no blobs"
        );
    }

    #[test]
    fn sync_reaches_the_blobs_of_large_values() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledDb::open(dir.path(), 1 << 20).unwrap();
        let tree = db.db().open_tree("t").unwrap();
        tree.insert(b"big", vec![7u8; 1 << 20]).unwrap();
        db.sync().unwrap();
        let files: HashSet<OsString> = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!files.is_empty(), "a 1 MiB value goes to a blob file");
        assert_eq!(*db.synced_blobs.lock(), files);
        drop((tree, db));
        let db = crate::backend::testing::open_sled(dir.path());
        let tree = db.db().open_tree("t").unwrap();
        assert_eq!(tree.get(b"big").unwrap().unwrap().len(), 1 << 20);
    }
}
