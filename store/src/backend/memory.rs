//! An in-memory [`Backend`] for tests and simulated clusters.

use std::collections::BTreeMap;
use std::ops::Bound;

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use super::{Backend, BackendError, Pair, WriteBatch};

/// A `BTreeMap` behind a lock; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    in_use: AtomicU64,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }
}

fn bounds<'a>(start: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let upper = if end.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(end)
    };
    (Bound::Included(start), upper)
}

impl Backend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.map.read().get(key).cloned())
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
        let map = self.map.read();
        for (k, v) in map.range::<[u8], _>(bounds(start, end)) {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let mut map = self.map.write();
        let delta = super::batch_delta(&batch, &mut |k| {
            map.get(k).map_or(0, |v| (k.len() + v.len()) as u64)
        });
        self.in_use.store(
            self.in_use
                .load(Ordering::Relaxed)
                .saturating_add_signed(delta),
            Ordering::Relaxed,
        );
        for (k, v) in batch.ops {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn clear(&self) -> Result<(), BackendError> {
        let mut map = self.map.write();
        map.clear();
        self.in_use.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.size_in_use()
    }

    fn size_in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }
}
