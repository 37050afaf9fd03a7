//! Snapshots as files: a dump of the state machine's backend, written while applies go on,
//! kept in the snapshot directory, sent to lagging members in chunks and installed from a file.
//!
//! A dump holds the state's write lock only to pin the state ([`Mvcc::pin`]) and copy the few
//! records that change in place (metadata, leases, members, alarms). Revision records never
//! change once written, and a pinned state defers the deletes of compaction, so the records at
//! or below the pinned revision are streamed to the file without any lock.
//!
//! Dump format: a little-endian `u64` pair count, then for each pair its key and value, each as
//! a little-endian `u64` length and the bytes (which is also how bincode encodes the
//! `Vec<(Vec<u8>, Vec<u8>)>` the earlier in-memory snapshots were).
//!
//! [`Mvcc::pin`]: crate::mvcc::Mvcc::pin

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use openraft::storage::SnapshotMeta;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::state_machine::Shared;
use super::{LogId, Member, NodeId, StoredMembership};
use crate::backend::WriteBatch;
use crate::error::StoreError;
use crate::mvcc::keys;

/// A snapshot's metadata.
pub type Meta = SnapshotMeta<NodeId, Member>;

/// A snapshot's data as openraft moves it around: an open file and where it is. A file being
/// received is removed when dropped unless [`SnapshotFile::keep`] adopted it (openraft drops
/// streams it abandons and snapshots it no longer needs).
#[derive(Debug)]
pub struct SnapshotFile {
    file: Io,
    path: PathBuf,
    temporary: bool,
}

/// How a snapshot file is read and written.
#[derive(Debug)]
enum Io {
    /// Through tokio's blocking threads.
    Tokio(tokio::fs::File),
    /// By blocking calls on the caller's task, so that nothing happens off the thread (a
    /// deterministic simulation; see [`SnapshotDir::set_inline`]); with the result of the seek
    /// started last.
    Inline(File, Option<std::io::Result<u64>>),
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SnapshotFile {
    /// A new, empty file at `path`, to receive a snapshot into.
    pub async fn create(path: PathBuf) -> Result<SnapshotFile, StoreError> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_error("create", &path, e))?;
        Ok(SnapshotFile {
            file: Io::Tokio(file),
            path,
            temporary: true,
        })
    }

    /// As [`SnapshotFile::create`], the file read and written inline.
    pub fn create_inline(path: PathBuf) -> Result<SnapshotFile, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("create", &path, e))?;
        Ok(SnapshotFile {
            file: Io::Inline(file, None),
            path,
            temporary: true,
        })
    }

    /// Makes what was written durable and returns the path, which the caller now owns.
    pub async fn keep(mut self) -> Result<PathBuf, StoreError> {
        use tokio::io::AsyncWriteExt;
        let synced = match &mut self.file {
            Io::Tokio(f) => {
                async {
                    f.flush().await?;
                    f.sync_all().await
                }
                .await
            }
            Io::Inline(f, _) => f.flush().and_then(|()| f.sync_all()),
        };
        synced.map_err(|e| io_error("sync", &self.path, e))?;
        if self.temporary {
            self.temporary = false;
            return Ok(self.path.clone());
        }
        // Not a file this member received (openraft's storage tests pass another store's
        // current snapshot): copied, so that store keeps its own.
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let copy = dir.join(format!("copy-{}.tmp", std::process::id()));
        let copied = match self.file {
            Io::Tokio(_) => tokio::fs::copy(&self.path, &copy).await,
            Io::Inline(..) => std::fs::copy(&self.path, &copy),
        };
        copied.map_err(|e| io_error("copy", &self.path, e))?;
        Ok(copy)
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.file {
            Io::Tokio(f) => Pin::new(f).poll_read(cx, buf),
            Io::Inline(f, _) => {
                Poll::Ready(f.read(buf.initialize_unfilled()).map(|n| buf.advance(n)))
            }
        }
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.file {
            Io::Tokio(f) => Pin::new(f).poll_write(cx, buf),
            Io::Inline(f, _) => Poll::Ready(f.write(buf)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.file {
            Io::Tokio(f) => Pin::new(f).poll_flush(cx),
            Io::Inline(f, _) => Poll::Ready(f.flush()),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.file {
            Io::Tokio(f) => Pin::new(f).poll_shutdown(cx),
            Io::Inline(f, _) => Poll::Ready(f.flush()),
        }
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        match &mut self.file {
            Io::Tokio(f) => Pin::new(f).start_seek(position),
            Io::Inline(f, done) => {
                *done = Some(f.seek(position));
                Ok(())
            }
        }
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        match &mut self.file {
            Io::Tokio(f) => Pin::new(f).poll_complete(cx),
            // No seek started: where the file is.
            Io::Inline(f, done) => Poll::Ready(done.take().unwrap_or_else(|| f.stream_position())),
        }
    }
}

/// The snapshot directory: the current snapshot (`current.meta` names it, `<id>.snap` holds
/// its data) and files being written or received (`*.tmp`).
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
    current: Mutex<Option<Meta>>,
    next_tmp: AtomicU64,
    /// Whether its files are read and written inline ([`SnapshotDir::set_inline`]).
    inline: std::sync::atomic::AtomicBool,
}

const META_FILE: &str = "current.meta";
/// Present while the current snapshot is being installed into the state.
const PENDING_FILE: &str = "install.pending";

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("snapshot: {what} {}: {e}", path.display()))
}

impl SnapshotDir {
    /// Opens (creating) `dir`, removing files no snapshot uses: partial writes and receptions
    /// cut short by a crash, and snapshots already replaced.
    pub fn open(dir: &Path) -> Result<SnapshotDir, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let meta_path = dir.join(META_FILE);
        let current: Option<Meta> = match std::fs::read(&meta_path) {
            Ok(b) => Some(bincode::deserialize(&b).map_err(|e| io_error("decode", &meta_path, e))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("read", &meta_path, e)),
        };
        let mut current = current;
        if let Some(m) = &current
            && !dir.join(data_name(&m.snapshot_id)).exists()
        {
            let data = dir.join(data_name(&m.snapshot_id));
            // The state needs the file only while an install of it is unfinished.
            if dir.join(PENDING_FILE).exists() {
                return Err(io_error("missing data of", &data, "not found"));
            }
            tracing::warn!(path = %data.display(), "snapshot data missing; starting without a snapshot");
            current = None;
        }
        let keep = current.as_ref().map(|m| data_name(&m.snapshot_id));
        for entry in std::fs::read_dir(dir).map_err(|e| io_error("list", dir, e))? {
            let entry = entry.map_err(|e| io_error("list", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale =
                (name.ends_with(".snap") && Some(&name) != keep.as_ref()) || name.ends_with(".tmp");
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(SnapshotDir {
            dir: dir.to_path_buf(),
            current: Mutex::new(current),
            next_tmp: AtomicU64::new(0),
            inline: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Reads and writes snapshot files by blocking calls on the caller's task from now on,
    /// not on tokio's blocking threads (for a deterministic simulation). The state machine
    /// then builds and installs snapshots and deletes compacted records inline too
    /// ([`Shared::run_inline`](super::state_machine::Shared::run_inline)).
    pub fn set_inline(&self) {
        self.inline.store(true, Ordering::SeqCst);
    }

    /// Whether snapshot files are read and written inline.
    pub fn inline(&self) -> bool {
        self.inline.load(Ordering::SeqCst)
    }

    /// A new, empty file to receive a snapshot into.
    pub async fn receive(&self) -> Result<SnapshotFile, StoreError> {
        let path = self.tmp_path();
        if self.inline() {
            SnapshotFile::create_inline(path)
        } else {
            SnapshotFile::create(path).await
        }
    }

    /// The current snapshot's metadata.
    pub fn current(&self) -> Option<Meta> {
        self.current.lock().clone()
    }

    /// The current snapshot's last log id.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.current.lock().as_ref().and_then(|m| m.last_log_id)
    }

    /// A new, unused path for a file being written.
    pub fn tmp_path(&self) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{}-{n}.tmp", std::process::id()))
    }

    /// The data file of the current snapshot, opened for reading.
    pub fn open_current(&self) -> Result<Option<(Meta, SnapshotFile)>, StoreError> {
        // Opened under the lock: a replacement removes the file it replaces.
        let current = self.current.lock();
        let Some(meta) = current.clone() else {
            return Ok(None);
        };
        let path = self.dir.join(data_name(&meta.snapshot_id));
        let file = File::open(&path).map_err(|e| io_error("open", &path, e))?;
        let file = if self.inline() {
            Io::Inline(file, None)
        } else {
            Io::Tokio(tokio::fs::File::from_std(file))
        };
        Ok(Some((
            meta,
            SnapshotFile {
                file,
                path,
                temporary: false,
            },
        )))
    }

    /// The data file of the current snapshot.
    pub fn current_path(&self) -> Option<PathBuf> {
        let current = self.current.lock();
        current
            .as_ref()
            .map(|m| self.dir.join(data_name(&m.snapshot_id)))
    }

    fn pending_path(&self) -> PathBuf {
        self.dir.join(PENDING_FILE)
    }

    /// Whether an install of the current snapshot was cut short.
    pub fn install_pending(&self) -> bool {
        self.pending_path().exists()
    }

    /// Records, durably, that the current snapshot is being installed.
    pub fn begin_install(&self) -> Result<(), StoreError> {
        write_synced(&self.pending_path(), b"")?;
        sync_dir(&self.dir)
    }

    /// Records that the install finished.
    pub fn end_install(&self) -> Result<(), StoreError> {
        let p = self.pending_path();
        std::fs::remove_file(&p).map_err(|e| io_error("remove", &p, e))?;
        sync_dir(&self.dir)
    }

    /// Makes the complete, synced file at `tmp` the current snapshot, described by `meta`,
    /// unless `only_if_newer` and the current one is newer (then `tmp` is removed). Returns
    /// whether it was made current.
    pub fn replace(
        &self,
        meta: &Meta,
        tmp: &Path,
        only_if_newer: bool,
    ) -> Result<bool, StoreError> {
        let mut current = self.current.lock();
        if only_if_newer
            && current
                .as_ref()
                .is_some_and(|c| c.last_log_id > meta.last_log_id)
        {
            let _ = std::fs::remove_file(tmp);
            return Ok(false);
        }
        let data = self.dir.join(data_name(&meta.snapshot_id));
        std::fs::rename(tmp, &data).map_err(|e| io_error("rename", tmp, e))?;
        let meta_tmp = self.tmp_path();
        let bytes = bincode::serialize(meta).map_err(|e| io_error("encode", &meta_tmp, e))?;
        write_synced(&meta_tmp, &bytes)?;
        let meta_path = self.dir.join(META_FILE);
        std::fs::rename(&meta_tmp, &meta_path).map_err(|e| io_error("rename", &meta_tmp, e))?;
        sync_dir(&self.dir)?;
        if let Some(old) = current.replace(meta.clone()) {
            let old = self.dir.join(data_name(&old.snapshot_id));
            if old != data {
                // An open reader (a transfer to a lagging member) keeps the data until it is done.
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(true)
    }
}

/// The data file name of snapshot `id` (ids are `term-index-size`; anything else is escaped).
fn data_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.snap")
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(|e| io_error("create", path, e))?;
    f.write_all(bytes).map_err(|e| io_error("write", path, e))?;
    f.sync_all().map_err(|e| io_error("sync", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

/// What a dump captured.
#[derive(Debug, Clone)]
pub struct Dumped {
    /// The store revision of the dump.
    pub revision: i64,
    /// The last log entry applied to the state dumped.
    pub applied: Option<LogId>,
    /// The membership of that state.
    pub membership: StoredMembership,
    /// Bytes written.
    pub size: u64,
}

/// Why a dump did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// A snapshot was installed while the dump ran: the records read may belong to either.
    #[error("a snapshot was installed during the dump")]
    Superseded,
    /// Reading the state or writing the output failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Ends a dump's pin when dropped, on every path, and lets the compacted records go.
struct Pinned<'a>(&'a Arc<Shared>);

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.0.mvcc.write().unpin();
        self.0.spawn_delete_compacted();
    }
}

/// Writes the state as it is now to `out` (see the module docs), holding the state's lock
/// only while the records that change in place are copied.
pub fn dump<W: Write + Seek>(shared: &Arc<Shared>, out: &mut W) -> Result<Dumped, DumpError> {
    let installs = shared.installs.load(Ordering::SeqCst);
    let (before, after, revision, applied, membership, pin) = {
        let mut mvcc = shared.mvcc.write();
        let backend = mvcc.backend().clone();
        let before = backend.range(b"", b"r").map_err(StoreError::from)?;
        let after = backend.range(b"s", b"").map_err(StoreError::from)?;
        let (applied, membership) = shared.applied.read().clone();
        mvcc.pin();
        (
            before,
            after,
            mvcc.current_revision(),
            applied,
            membership,
            Pinned(shared),
        )
    };
    let backend = shared.mvcc.read().backend().clone();
    let start = out.stream_position().map_err(write_error)?;
    let mut count = 0u64;
    let mut size = 8u64;
    out.write_all(&0u64.to_le_bytes()).map_err(write_error)?;
    let mut put = |out: &mut W, k: &[u8], v: &[u8]| -> std::io::Result<()> {
        for part in [k, v] {
            out.write_all(&(part.len() as u64).to_le_bytes())?;
            out.write_all(part)?;
        }
        count += 1;
        size += 16 + (k.len() + v.len()) as u64;
        Ok(())
    };
    for (k, v) in &before {
        put(out, k, v).map_err(write_error)?;
    }
    let mut failed = None;
    backend
        .for_each(
            b"r",
            &keys::rev_key(revision + 1, 0),
            &mut |k, v| match put(out, k, v) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            },
        )
        .map_err(StoreError::from)?;
    if let Some(e) = failed {
        return Err(write_error(e).into());
    }
    crate::failpoint::failpoint!("raftDuringSaveSnap");
    for (k, v) in &after {
        put(out, k, v).map_err(write_error)?;
    }
    drop(pin);
    if shared.installs.load(Ordering::SeqCst) != installs {
        return Err(DumpError::Superseded);
    }
    let end = out.stream_position().map_err(write_error)?;
    out.seek(SeekFrom::Start(start)).map_err(write_error)?;
    out.write_all(&count.to_le_bytes()).map_err(write_error)?;
    out.seek(SeekFrom::Start(end)).map_err(write_error)?;
    out.flush().map_err(write_error)?;
    Ok(Dumped {
        revision,
        applied,
        membership,
        size,
    })
}

fn write_error(e: std::io::Error) -> StoreError {
    StoreError::Internal(format!("snapshot: write: {e}"))
}

/// A file written with a sync every [`SYNC_EVERY`] bytes: a snapshot's hundreds of megabytes
/// never pile up as dirty pages that the raft log's next fsync would wait for (on ext4 an
/// fsync also writes out other files' pending data).
struct Syncing {
    file: File,
    unsynced: u64,
}

/// Bytes a snapshot file takes before its data is synced.
const SYNC_EVERY: u64 = 8 << 20;

impl Write for Syncing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Syncing {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Dumps the state into a new synced file of `dir`, returning its path.
pub fn dump_to_file(
    shared: &Arc<Shared>,
    dir: &SnapshotDir,
) -> Result<(PathBuf, Dumped), DumpError> {
    let path = dir.tmp_path();
    let result = (|| {
        let file = File::create(&path).map_err(|e| io_error("create", &path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, Syncing { file, unsynced: 0 });
        let dumped = dump(shared, &mut w)?;
        let syncing = w
            .into_inner()
            .map_err(|e| io_error("write", &path, e.error()))?;
        syncing
            .file
            .sync_all()
            .map_err(|e| io_error("sync", &path, e))?;
        Ok(dumped)
    })();
    match result {
        Ok(d) => Ok((path, d)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Reads the pairs of a dump from `r`, calling `f` for each, in order.
pub fn read_pairs(
    r: &mut impl Read,
    f: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let corrupt = |e: std::io::Error| StoreError::Internal(format!("snapshot: read: {e}"));
    let mut n = [0u8; 8];
    r.read_exact(&mut n).map_err(corrupt)?;
    let count = u64::from_le_bytes(n);
    let part = |r: &mut dyn Read| -> Result<Vec<u8>, StoreError> {
        let mut n = [0u8; 8];
        r.read_exact(&mut n).map_err(corrupt)?;
        let len = u64::from_le_bytes(n);
        // The length comes from the file: read what is there rather than trusting it.
        let mut buf = Vec::new();
        r.take(len).read_to_end(&mut buf).map_err(corrupt)?;
        if buf.len() as u64 != len {
            return Err(StoreError::Internal("snapshot: truncated".into()));
        }
        Ok(buf)
    };
    for _ in 0..count {
        let k = part(r)?;
        let v = part(r)?;
        f(k, v)?;
    }
    Ok(())
}

/// Reads the whole dump at `path`, so a damaged file is refused before the state is touched.
pub fn check(path: &Path) -> Result<(), StoreError> {
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    read_pairs(&mut r, &mut |_, _| Ok(()))?;
    let mut rest = [0u8; 1];
    match r.read(&mut rest) {
        Ok(0) => Ok(()),
        Ok(_) => Err(StoreError::Internal(format!(
            "snapshot: {}: data past the last pair",
            path.display()
        ))),
        Err(e) => Err(io_error("read", path, e)),
    }
}

/// Makes the complete, synced snapshot file at `path` (taken at `meta`) the current snapshot
/// and the state. Crash-safe: the snapshot is made current and an install marked pending before
/// the state is cleared, and [`resume_install`] finishes the job at the next start. Returns the
/// store revision afterwards.
pub fn install_file(shared: &Shared, path: &Path, meta: &Meta) -> Result<i64, StoreError> {
    check(path)?;
    shared.snapshots.replace(meta, path, false)?;
    shared.snapshots.begin_install()?;
    let current = shared
        .snapshots
        .current_path()
        .ok_or_else(|| StoreError::Internal("snapshot: none after replacing it".into()))?;
    let revision = install(shared, &current, meta.last_log_id, &meta.last_membership)?;
    shared.snapshots.end_install()?;
    Ok(revision)
}

/// Finishes an install a crash cut short (see [`install_file`]); true if there was one.
pub fn resume_install(shared: &Shared) -> Result<bool, StoreError> {
    if !shared.snapshots.install_pending() {
        return Ok(false);
    }
    let (Some(meta), Some(path)) = (shared.snapshots.current(), shared.snapshots.current_path())
    else {
        return Err(StoreError::Internal(
            "snapshot: an install is pending but there is no snapshot".into(),
        ));
    };
    tracing::warn!(snapshot = %meta.snapshot_id, "finishing a snapshot install cut short");
    install(shared, &path, meta.last_log_id, &meta.last_membership)?;
    shared.snapshots.end_install()?;
    Ok(true)
}

/// Bytes of pairs written to the backend at once while installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 32 << 20;

/// Replaces the state with the dump in the file at `path`, which was taken at `applied` with
/// `membership`. Returns the store revision afterwards.
pub fn install(
    shared: &Shared,
    path: &Path,
    applied: Option<LogId>,
    membership: &StoredMembership,
) -> Result<i64, StoreError> {
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut mvcc = shared.mvcc.write();
    // Any dump running now reads a state that is going away.
    shared.installs.fetch_add(1, Ordering::SeqCst);
    let backend = mvcc.backend().clone();
    backend.clear()?;
    // The applied log id is written last, with the membership (a crash part way is finished
    // at the next start: see `install_file`).
    let applied_key = keys::meta_key("raft_applied");
    let mut batch = WriteBatch::default();
    let mut bytes = 0;
    read_pairs(&mut r, &mut |k, v| {
        if k == applied_key {
            return Ok(());
        }
        bytes += k.len() + v.len();
        batch.put(k, v);
        if bytes >= INSTALL_BATCH_BYTES {
            backend.write(std::mem::take(&mut batch))?;
            bytes = 0;
        }
        Ok(())
    })?;
    backend.write(batch)?;
    crate::failpoint::failpoint!("raftDuringApplySnap");
    mvcc.reload()?;
    mvcc.put_meta(
        "raft_applied",
        bincode::serialize(&applied).map_err(|e| StoreError::Internal(e.to_string()))?,
    );
    mvcc.put_meta(
        "raft_membership",
        bincode::serialize(membership).map_err(|e| StoreError::Internal(e.to_string()))?,
    );
    mvcc.commit()?;
    backend.flush()?;
    *shared.applied.write() = (applied, membership.clone());
    Ok(mvcc.current_revision())
}

/// A snapshot as the store kept it before snapshots were files (in sled tree `snapshot`).
#[derive(Deserialize, Serialize)]
struct LegacySnapshot {
    meta: Meta,
    data: Vec<u8>,
}

/// Moves a snapshot kept by an earlier version in `tree` into `dir`.
pub fn migrate_legacy(tree: &sled::Tree, dir: &SnapshotDir) -> Result<(), StoreError> {
    const KEY: &str = "current";
    let internal = |e: sled::Error| StoreError::Internal(format!("snapshot: {e}"));
    let Some(v) = tree.get(KEY).map_err(internal)? else {
        return Ok(());
    };
    if dir.current().is_none() {
        let legacy: LegacySnapshot = bincode::deserialize(&v)
            .map_err(|e| StoreError::Internal(format!("snapshot: decode: {e}")))?;
        let tmp = dir.tmp_path();
        write_synced(&tmp, &legacy.data)?;
        dir.replace(&legacy.meta, &tmp, false)?;
    }
    tree.remove(KEY).map_err(internal)?;
    tree.flush().map_err(internal)?;
    Ok(())
}
