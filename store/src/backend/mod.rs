//! Ordered byte-key storage under the MVCC state machine.
//!
//! The state machine keeps all of its durable state in one [`Backend`]: revision-keyed records,
//! lease records, member attributes, alarms and its own metadata (last applied log id,
//! membership). One keyspace means one atomic [`WriteBatch`] covers everything a log entry
//! changes, so a crash leaves the state at some entry boundary and openraft re-applies from there.
//!
//! Implementations: [`SledBackend`] (durable) and [`MemoryBackend`] (tests, hollow clusters).
//! Both pass the shared suite in `testing`.

mod memory;
mod sled;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use self::memory::MemoryBackend;
pub use self::sled::{SledBackend, SledDb};

/// A failure of the storage engine itself.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine reported an IO or corruption error.
    #[error("storage engine: {0}")]
    Engine(String),
}

/// One key-value pair as stored.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A set of writes applied atomically, in order.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Per op: whether the caller knows the key is absent before this batch.
    new: Vec<bool>,
}

impl WriteBatch {
    /// Stores `value` under `key`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
        self.new.push(false);
    }

    /// Stores `value` under `key`, which the caller knows holds nothing before this batch (the
    /// backend's size accounting then skips reading it).
    pub fn put_new(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
        self.new.push(true);
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
        self.new.push(false);
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The writes, in order.
    pub fn ops(&self) -> &[(Vec<u8>, Option<Vec<u8>>)] {
        &self.ops
    }
}

/// Ordered key-value storage with atomic batches.
///
/// # Correctness
/// - `write` is atomic: after a crash either every op of a batch is visible or none is.
/// - Reads see every batch whose `write` returned, in order.
/// - `flush` returns once every completed `write` is durable.
pub trait Backend: Send + Sync + 'static {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// Pairs with `start <= key < end`, ascending; an empty `end` means no upper bound.
    fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<Pair>, BackendError>;

    /// Like [`Backend::range`], calling `f` for each pair until it returns false.
    fn for_each(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError>;

    /// Applies `batch` atomically.
    fn write(&self, batch: WriteBatch) -> Result<(), BackendError>;

    /// Removes every key (used before installing a snapshot).
    fn clear(&self) -> Result<(), BackendError>;

    /// Makes completed writes durable.
    fn flush(&self) -> Result<(), BackendError>;

    /// Bytes the engine occupies on disk (or in memory), for `Status.dbSize`.
    fn size_bytes(&self) -> u64;

    /// Bytes of the pairs stored (keys and values), for the quota and `Status.dbSizeInUse`.
    fn size_in_use(&self) -> u64;
}

/// The change in stored bytes that `batch` makes, given the size each key has before it
/// (`size_of`: key and value length, 0 when absent; not asked for keys put with
/// [`WriteBatch::put_new`]). A key written twice in one batch counts once, at its final size.
fn batch_delta(batch: &WriteBatch, size_of: &mut dyn FnMut(&[u8]) -> u64) -> i64 {
    let mut after: std::collections::HashMap<&[u8], u64> = std::collections::HashMap::new();
    let mut delta = 0i64;
    for ((k, v), new) in batch.ops.iter().zip(&batch.new) {
        let before = match after.get(k.as_slice()) {
            Some(n) => *n,
            None if *new => 0,
            None => size_of(k),
        };
        let now = v.as_ref().map_or(0, |v| (k.len() + v.len()) as u64);
        delta += now as i64 - before as i64;
        after.insert(k, now);
    }
    delta
}
