//! Prometheus metrics under etcd's names, served at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The member's metrics; clones share the same values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<parking_lot::Mutex<Registry>>,
    /// `etcd_server_has_leader`.
    pub has_leader: Gauge,
    /// `etcd_server_is_leader`.
    pub is_leader: Gauge,
    /// `etcd_server_leader_changes_seen_total`.
    pub leader_changes: Counter,
    /// `etcd_server_proposals_committed_total`.
    pub proposals_committed: Counter,
    /// `etcd_server_proposals_failed_total`.
    pub proposals_failed: Counter,
    /// `etcd_disk_wal_fsync_duration_seconds`.
    pub wal_fsync: Histogram,
    /// `etcd_mvcc_db_total_size_in_bytes`.
    pub db_size: Gauge,
    /// `etcd_mvcc_db_total_size_in_use_in_bytes`.
    pub db_size_in_use: Gauge,
    /// `etcd_network_snapshot_receive_success` (without etcd's `From` label).
    pub snapshot_receives: Counter,
    /// The snapshot installs `snapshot_receives` has counted.
    pub installs_counted: Arc<std::sync::atomic::AtomicU64>,
    /// `etcd_debugging_mvcc_current_revision`.
    pub current_revision: Gauge,
    /// `etcd_debugging_mvcc_compact_revision`.
    pub compact_revision: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Arc::new(parking_lot::Mutex::new(Registry::default())),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            proposals_committed: Counter::default(),
            proposals_failed: Counter::default(),
            wal_fsync: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            db_size: Gauge::default(),
            db_size_in_use: Gauge::default(),
            snapshot_receives: Counter::default(),
            installs_counted: Arc::default(),
            current_revision: Gauge::default(),
            compact_revision: Gauge::default(),
        };
        r.register(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            m.has_leader.clone(),
        );
        r.register(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            m.is_leader.clone(),
        );
        // prometheus-client appends `_total` to counters itself.
        r.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            m.leader_changes.clone(),
        );
        r.register(
            "etcd_server_proposals_committed",
            "The total number of consensus proposals committed.",
            m.proposals_committed.clone(),
        );
        r.register(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen.",
            m.proposals_failed.clone(),
        );
        r.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            m.wal_fsync.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            m.db_size.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            m.db_size_in_use.clone(),
        );
        r.register(
            "etcd_network_snapshot_receive_success",
            "Total number of successful snapshot receives",
            m.snapshot_receives.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            m.current_revision.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            m.compact_revision.clone(),
        );
        *m.registry.lock() = r;
        m
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry.lock()).expect("BUG: writing to a String cannot fail");
        out
    }
}
