use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::log_store::LogStore;
use super::state_machine::{Shared, StateMachine};
use super::{NodeId, TypeConfig};
use crate::backend::SledBackend;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(1 << 20)
            .open()
            .expect("open sled");
        let log = LogStore::open(&db, None).expect("log store");
        let backend = Arc::new(SledBackend::open(&db, "sm").expect("backend"));
        let snapshots = db.open_tree("snapshot").expect("snapshot tree");
        let shared = Shared::open(backend, Some(snapshots), 2).expect("state machine");
        Ok((dir, log, StateMachine::new(shared)))
    }
}

#[test]
fn openraft_storage_suite_passes_on_sled() {
    Suite::test_all(SledStoreBuilder).expect("openraft storage suite");
}
