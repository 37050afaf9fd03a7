//! The conformance suite every [`Backend`] passes: call [`run_all`] with a fresh backend.

use super::{Backend, WriteBatch};

/// Runs every check against backends made by `make`.
pub fn run_all(make: &dyn Fn() -> Box<dyn Backend>) {
    get_returns_what_write_stored(make().as_ref());
    range_is_ordered_and_half_open(make().as_ref());
    batch_applies_ops_in_order(make().as_ref());
    for_each_stops_when_asked(make().as_ref());
    clear_removes_everything(make().as_ref());
    size_in_use_counts_the_pairs_stored(make().as_ref());
}

/// Opens the sled database at `path` with a small cache, waiting for a previous instance in
/// this process to let go of it (sled's flusher thread may hold its file lock for a moment
/// after the instance is dropped).
pub fn open_sled(path: &std::path::Path) -> super::SledDb {
    let mut attempts = 0;
    loop {
        match super::SledDb::open(path, 1 << 20) {
            Ok(db) => return db,
            Err(_) if attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("opening sled at {}: {e}", path.display()),
        }
    }
}

fn put(b: &dyn Backend, k: &[u8], v: &[u8]) {
    let mut wb = WriteBatch::default();
    wb.put(k, v);
    b.write(wb).expect("write");
}

fn get_returns_what_write_stored(b: &dyn Backend) {
    assert_eq!(b.get(b"a").unwrap(), None);
    put(b, b"a", b"1");
    assert_eq!(b.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    put(b, b"a", b"2");
    assert_eq!(b.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
    b.flush().unwrap();
}

fn range_is_ordered_and_half_open(b: &dyn Backend) {
    for k in [&b"b"[..], b"a", b"c", b"ab", b"d"] {
        put(b, k, k);
    }
    let keys: Vec<Vec<u8>> = b
        .range(b"a", b"c")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"ab".to_vec(), b"b".to_vec()]);
    let all = b.range(b"", b"").unwrap();
    assert_eq!(all.len(), 5, "empty end means unbounded");
    assert!(
        b.range(b"c", b"a").unwrap().is_empty(),
        "inverted range is empty"
    );
}

fn batch_applies_ops_in_order(b: &dyn Backend) {
    let mut wb = WriteBatch::default();
    wb.put(b"k", b"1");
    wb.delete(b"k");
    wb.put(b"j", b"1");
    wb.put(b"j", b"2");
    b.write(wb).unwrap();
    assert_eq!(b.get(b"k").unwrap(), None);
    assert_eq!(b.get(b"j").unwrap().as_deref(), Some(&b"2"[..]));
}

fn for_each_stops_when_asked(b: &dyn Backend) {
    for i in 0u8..10 {
        put(b, &[b'x', i], &[i]);
    }
    let mut seen = 0;
    b.for_each(b"x", b"y", &mut |_, _| {
        seen += 1;
        seen < 3
    })
    .unwrap();
    assert_eq!(seen, 3);
}

fn clear_removes_everything(b: &dyn Backend) {
    put(b, b"a", b"1");
    b.clear().unwrap();
    assert!(b.range(b"", b"").unwrap().is_empty());
}

fn size_in_use_counts_the_pairs_stored(b: &dyn Backend) {
    assert_eq!(b.size_in_use(), 0);
    put(b, b"ab", b"123");
    assert_eq!(b.size_in_use(), 5);
    put(b, b"ab", b"1");
    assert_eq!(b.size_in_use(), 3, "an overwrite counts the new value only");
    let mut wb = WriteBatch::default();
    wb.put(b"c", b"12");
    wb.put(b"c", b"1234");
    wb.delete(b"ab");
    wb.delete(b"missing");
    b.write(wb).unwrap();
    assert_eq!(
        b.size_in_use(),
        5,
        "a key written twice in a batch counts once"
    );
    let mut wb = WriteBatch::default();
    wb.put_new(b"n", b"123");
    wb.put(b"n", b"1");
    b.write(wb).unwrap();
    assert_eq!(b.get(b"n").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(
        b.size_in_use(),
        7,
        "a new key counts from nothing, then as any other"
    );
    b.clear().unwrap();
    assert_eq!(b.size_in_use(), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{MemoryBackend, SledBackend};

    #[test]
    fn memory_backend_passes_suite() {
        run_all(&|| Box::new(MemoryBackend::new()));
    }

    #[test]
    fn sled_backend_passes_suite() {
        let dirs = std::sync::Mutex::new(Vec::new());
        run_all(&|| {
            let dir = tempfile::tempdir().unwrap();
            let db = open_sled(dir.path());
            dirs.lock().unwrap().push(dir);
            Box::new(SledBackend::open(&db, "t").unwrap())
        });
    }
}
