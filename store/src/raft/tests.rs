use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::log_store::LogStore;
use super::snapshot::SnapshotDir;
use super::state_machine::{Shared, StateMachine};
use super::{NodeId, TypeConfig};
use crate::backend::SledBackend;

/// Builds the sled log store, with its flusher thread or (`inline`) syncing in `append`.
struct SledStoreBuilder {
    inline: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::backend::testing::open_sled(dir.path());
        let log = if self.inline {
            LogStore::open_inline(&db)
        } else {
            LogStore::open(&db, None)
        }
        .expect("log store");
        let backend = Arc::new(SledBackend::open(&db, "sm").expect("backend"));
        let snapshots = SnapshotDir::open(&dir.path().join("snap")).expect("snapshot dir");
        let shared = Shared::open(backend, snapshots, 2).expect("state machine");
        Ok((dir, log, StateMachine::new(shared)))
    }
}

#[test]
fn openraft_storage_suite_passes_on_sled() {
    Suite::test_all(SledStoreBuilder { inline: false }).expect("openraft storage suite");
}

#[test]
fn openraft_storage_suite_passes_on_sled_synced_inline() {
    Suite::test_all(SledStoreBuilder { inline: true }).expect("openraft storage suite");
}

mod snapshots {
    use std::io::{Cursor, Seek, SeekFrom, Write};
    use std::sync::Arc;

    use keelson_etcdpb::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
    use tempfile::TempDir;

    use crate::backend::SledBackend;
    use crate::raft::pb::InternalRequest;
    use crate::raft::pb::internal_request::Request as Rq;
    use crate::raft::snapshot::{self, SnapshotDir};
    use crate::raft::state_machine::Shared;

    fn shared() -> (TempDir, Arc<Shared>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = open_at(dir.path());
        (dir, shared)
    }

    fn apply(s: &Shared, r: Rq) {
        let mut m = s.mvcc.write();
        m.apply(&InternalRequest {
            request: Some(r),
            ..Default::default()
        });
        m.commit().unwrap();
    }

    fn put(s: &Shared, k: &str, v: &str) {
        apply(
            s,
            Rq::Put(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
        );
    }

    fn all_at(s: &Shared, revision: i64) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let r = s
            .mvcc
            .read()
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision,
                ..Default::default()
            })
            .unwrap();
        r.kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value, kv.mod_revision))
            .collect()
    }

    /// An output that, at its first write (after the dump has let go of the state's lock),
    /// runs `during` once: writes and a compaction racing the copy.
    struct Racing<'a> {
        out: Cursor<Vec<u8>>,
        during: Option<Box<dyn FnOnce() + 'a>>,
    }

    impl Write for Racing<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(f) = self.during.take() {
                f();
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Racing<'_> {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.out.seek(pos)
        }
    }

    #[test]
    fn a_dump_is_the_state_at_its_start_while_writes_and_compaction_go_on() {
        let (_a_dir, a) = shared();
        for i in 0..50 {
            put(&a, &format!("k{}", i % 10), &format!("v{i}"));
        }
        let at = a.mvcc.read().current_revision();
        let expected = all_at(&a, at);
        let mut out = Racing {
            out: Cursor::new(Vec::new()),
            during: Some(Box::new(|| {
                for i in 0..20 {
                    put(&a, &format!("k{}", i % 15), "later");
                }
                let now = a.mvcc.read().current_revision();
                apply(
                    &a,
                    Rq::Compaction(CompactionRequest {
                        revision: now,
                        physical: false,
                    }),
                );
                assert_eq!(
                    a.delete_compacted().unwrap(),
                    0,
                    "the dump holds the records"
                );
            })),
        };
        let dumped = snapshot::dump(&a, &mut out).expect("dump");
        assert_eq!(dumped.revision, at);
        assert_eq!(dumped.size, out.out.get_ref().len() as u64);
        // The compaction's records go once the dump has ended.
        // 70 records of 15 keys, one kept per key.
        assert_eq!(a.delete_compacted().unwrap(), 70 - 15);
        let now = a.mvcc.read().current_revision();
        assert_eq!(a.mvcc.read().compact_revision(), now);
        let on_disk = a.mvcc.read().backend().range(b"r", b"s").unwrap().len();
        assert_eq!(on_disk, 15, "one record per key after the compaction");

        // Installed elsewhere, the dump is exactly the state at `at`, history included.
        let (b_dir, b) = shared();
        let file = b_dir.path().join("dump");
        std::fs::write(&file, out.out.get_ref()).unwrap();
        let applied = a.applied.read().clone();
        let revision = snapshot::install(&b, &file, applied.0, &applied.1).expect("install");
        assert_eq!(revision, at);
        assert_eq!(all_at(&b, 0), expected);
        assert_eq!(all_at(&b, 20), all_at_before_compaction(&expected, 20));
        assert_eq!(b.mvcc.read().compact_revision(), 0);
        assert_eq!(
            b.mvcc.read().backend().size_in_use(),
            b.mvcc
                .read()
                .backend()
                .range(b"", b"")
                .unwrap()
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>()
        );
    }

    /// What `k0..k9` held at `rev` in the history the test writes (`v{i}` at revision i + 2).
    fn all_at_before_compaction(
        latest: &[(Vec<u8>, Vec<u8>, i64)],
        rev: i64,
    ) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let mut out: Vec<_> = latest
            .iter()
            .map(|(k, _, _)| {
                let key: usize = String::from_utf8_lossy(&k[1..]).parse().unwrap();
                // The newest write of `key` at or before `rev`.
                let i = (0..50)
                    .filter(|i| i % 10 == key && i + 2 <= rev as usize)
                    .max()
                    .unwrap();
                (k.clone(), format!("v{i}").into_bytes(), i as i64 + 2)
            })
            .collect();
        out.sort();
        out
    }

    fn open_at(dir: &std::path::Path) -> Arc<Shared> {
        let db = crate::backend::testing::open_sled(&dir.join("db"));
        let backend = Arc::new(SledBackend::open(&db, "sm").expect("backend"));
        let snapshots = SnapshotDir::open(&dir.join("snap")).expect("snapshot dir");
        Shared::open(backend, snapshots, 2).expect("state")
    }

    #[test]
    fn an_install_cut_short_by_a_crash_is_finished_at_the_next_start() {
        let (_a_dir, a) = shared();
        for i in 0..30 {
            put(&a, &format!("k{}", i % 7), &format!("v{i}"));
        }
        let (path, dumped) = snapshot::dump_to_file(&a, &a.snapshots).expect("dump");
        let meta = openraft::SnapshotMeta {
            last_log_id: dumped.applied,
            last_membership: dumped.membership.clone(),
            snapshot_id: "1-2-3".into(),
        };
        let b_dir = tempfile::tempdir().unwrap();
        {
            let b = open_at(b_dir.path());
            put(&b, "other", "state");
            // What install_file does up to a crash after the state was cleared.
            let moved = b_dir.path().join("snap/received.tmp");
            std::fs::copy(&path, &moved).unwrap();
            b.snapshots.replace(&meta, &moved, false).unwrap();
            b.snapshots.begin_install().unwrap();
            b.mvcc.read().backend().clear().unwrap();
            b.mvcc.read().backend().flush().unwrap();
        }
        let b = open_at(b_dir.path());
        assert!(snapshot::resume_install(&b).unwrap());
        assert!(!b.snapshots.install_pending());
        assert_eq!(all_at(&b, 0), all_at(&a, 0));
        assert_eq!(b.mvcc.read().current_revision(), dumped.revision);
        assert_eq!(b.applied.read().0, dumped.applied);
        assert!(
            !snapshot::resume_install(&b).unwrap(),
            "nothing left to finish"
        );
    }

    #[tokio::test]
    async fn a_received_file_is_removed_unless_kept() {
        let (_dir, a) = shared();
        let dropped = a.snapshots.tmp_path();
        drop(
            snapshot::SnapshotFile::create(dropped.clone())
                .await
                .unwrap(),
        );
        assert!(!dropped.exists(), "an abandoned reception leaves no file");
        let kept = a.snapshots.tmp_path();
        let f = snapshot::SnapshotFile::create(kept.clone()).await.unwrap();
        assert_eq!(f.keep().await.unwrap(), kept);
        assert!(kept.exists());
    }

    #[test]
    fn a_damaged_snapshot_is_refused_before_the_state_is_touched() {
        let (_a_dir, a) = shared();
        put(&a, "a", "1");
        let (path, dumped) = snapshot::dump_to_file(&a, &a.snapshots).expect("dump");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let (_b_dir, b) = shared();
        put(&b, "b", "2");
        let meta = openraft::SnapshotMeta {
            last_log_id: dumped.applied,
            last_membership: dumped.membership,
            snapshot_id: "1-2-3".into(),
        };
        let err = snapshot::install_file(&b, &path, &meta).unwrap_err();
        assert!(err.to_string().contains("snapshot"), "{err}");
        assert_eq!(all_at(&b, 0).len(), 1, "the state is unchanged");
        assert!(b.snapshots.current().is_none());
    }

    #[test]
    fn a_dump_superseded_by_an_install_is_refused() {
        let (dir, a) = shared();
        put(&a, "a", "1");
        let (path, _) = snapshot::dump_to_file(&a, &a.snapshots).expect("dump");
        let mut out = Racing {
            out: Cursor::new(Vec::new()),
            during: Some(Box::new(|| {
                let applied = a.applied.read().clone();
                snapshot::install(&a, &path, applied.0, &applied.1).expect("install");
            })),
        };
        assert!(matches!(
            snapshot::dump(&a, &mut out),
            Err(snapshot::DumpError::Superseded)
        ));
        drop(dir);
    }
}

mod log {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader};

    use crate::raft::TypeConfig;
    use crate::raft::log_store::LogStore;

    fn entry(index: u64) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn purged_entries_are_gone_for_readers_at_once_and_from_disk_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::backend::testing::open_sled(dir.path());
        let mut log = LogStore::open(&db, None).unwrap();
        log.blocking_append((1..=5000).map(entry)).await.unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 4000))
            .await
            .unwrap();
        let read = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(read.first().map(|e| e.log_id.index), Some(4001));
        assert_eq!(read.len(), 1000);
        assert!(log.try_get_log_entries(10..20).await.unwrap().is_empty());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4000));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5000));

        // A purge past the end (after a snapshot install) leaves the purged id as the last.
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 6000))
            .await
            .unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(6000));
        assert!(log.try_get_log_entries(0..).await.unwrap().is_empty());

        // The background deletion empties the tree (bounded wait).
        let tree = db.db().open_tree("raft_log").unwrap();
        for _ in 0..200 {
            if tree.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{} purged entries still on disk after 10 s", tree.len());
    }

    #[tokio::test]
    async fn a_purge_the_durable_snapshot_does_not_cover_is_written_only_once_it_does() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let db = crate::backend::testing::open_sled(dir.path());
        let snapshot = std::sync::Arc::new(AtomicU64::new(100));
        let covered = snapshot.clone();
        let mut log = LogStore::open(&db, None)
            .unwrap()
            .with_snapshot_check(std::sync::Arc::new(move |i| {
                covered.load(Ordering::SeqCst) >= i
            }));
        log.blocking_append((1..=300).map(entry)).await.unwrap();
        let id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        // Covered: written at once.
        log.purge(id(100)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(100)));
        // A received snapshot at 250, not installed yet: readers skip the entries, but the
        // log on disk (what a restart finds) keeps them and the old purge.
        log.purge(id(250)).await.unwrap();
        let read = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(read.first().map(|e| e.log_id.index), Some(251));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(100)));
        let tree = db.db().open_tree("raft_log").unwrap();
        assert!(tree.get(250u64.to_be_bytes()).unwrap().is_some());
        // Installed: the purge is written (bounded wait).
        snapshot.store(250, Ordering::SeqCst);
        for _ in 0..200 {
            if log.get_log_state().await.unwrap().last_purged_log_id == Some(id(250)) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the deferred purge was not written within 10 s of the snapshot");
    }

    #[tokio::test]
    async fn at_start_a_purge_deferred_for_an_installed_snapshot_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::backend::testing::open_sled(dir.path());
        let id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        let mut log = LogStore::open(&db, None)
            .unwrap()
            .with_snapshot_check(std::sync::Arc::new(|_| false));
        log.blocking_append((1..=100).map(entry)).await.unwrap();
        // A snapshot at 250 received: the purge waits for it. The install finishes, entries
        // after it are appended, and the process stops before the purge is written.
        log.purge(id(250)).await.unwrap();
        log.blocking_append((251..=260).map(entry)).await.unwrap();
        drop(log);
        let mut log = LogStore::open(&db, None).unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, None);
        // At the start, with the snapshot installed: the hole 101..=250 is purged.
        log.purge_to_snapshot(id(250)).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(250)));
        assert_eq!(state.last_log_id, Some(id(260)));
        // A snapshot built from this log (its entry is there) purges nothing.
        log.purge_to_snapshot(id(255)).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(250)));
    }
}

#[test]
fn to_bincode_makes_the_bytes_bincode_serialize_makes() {
    use super::pb::{Batch, InternalRequest, internal_request};
    use keelson_etcdpb::etcdserverpb::PutRequest;
    let put = |k: &str| InternalRequest {
        request: Some(internal_request::Request::Put(PutRequest {
            key: k.into(),
            value: vec![7; 256],
            ..Default::default()
        })),
        ..Default::default()
    };
    let entry: openraft::Entry<TypeConfig> = openraft::Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
        payload: openraft::EntryPayload::Normal(super::Pb(Batch {
            requests: vec![put("a"), put("b")],
        })),
    };
    let bytes = super::to_bincode(&entry).unwrap();
    assert_eq!(bytes, bincode::serialize(&entry).unwrap());
    let back: openraft::Entry<TypeConfig> = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back.log_id, entry.log_id);
}
