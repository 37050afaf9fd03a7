//! Encryption metrics under kube-apiserver's names (`apiserver_storage_transformation_*`,
//! `apiserver_envelope_encryption_*`, `apiserver_encryption_config_controller_*`).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type Hist = Family<Labels, Histogram, fn() -> Histogram>;

fn transformation_hist() -> Histogram {
    Histogram::new(exponential_buckets(5e-6, 2.0, 25))
}

fn kms_hist() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The families, registered once per apiserver.
pub struct EncryptionMetrics {
    apiserver_id_hash: String,
    ops: Family<Labels, Counter>,
    duration: Hist,
    kms_latency: Hist,
    key_id_total: Family<Labels, Counter>,
    key_id_last: Family<Labels, Gauge>,
    key_id_status_last: Family<Labels, Gauge>,
    invalid_key_id: Family<Labels, Counter>,
    seed_cache_size: Family<Labels, Gauge>,
    reloads: Family<Labels, Counter>,
    reload_last: Family<Labels, Gauge>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl EncryptionMetrics {
    /// Registers the families in `r`; `apiserver_id` is hashed into the `apiserver_id_hash` label.
    pub fn new(r: &mut Registry, apiserver_id: &str) -> Self {
        let m = EncryptionMetrics {
            apiserver_id_hash: super::kms::key_id_hash(apiserver_id),
            ops: Family::default(),
            duration: Family::new_with_constructor(transformation_hist),
            kms_latency: Family::new_with_constructor(kms_hist),
            key_id_total: Family::default(),
            key_id_last: Family::default(),
            key_id_status_last: Family::default(),
            invalid_key_id: Family::default(),
            seed_cache_size: Family::default(),
            reloads: Family::default(),
            reload_last: Family::default(),
        };
        r.register(
            "apiserver_storage_transformation_operations",
            "Total number of transformations, by transformation type, transformer prefix and status",
            m.ops.clone(),
        );
        r.register(
            "apiserver_storage_transformation_duration_seconds",
            "Latencies in seconds of value transformation operations",
            m.duration.clone(),
        );
        r.register(
            "apiserver_envelope_encryption_kms_operations_latency_seconds",
            "KMS operation duration with gRPC error code status total",
            m.kms_latency.clone(),
        );
        r.register(
            "apiserver_envelope_encryption_key_id_hash",
            "Number of times a keyID is used, split by transformation type, provider and apiserver identity",
            m.key_id_total.clone(),
        );
        r.register(
            "apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds",
            "The last time in seconds when a keyID was used",
            m.key_id_last.clone(),
        );
        r.register(
            "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds",
            "The last time in seconds when a keyID was returned by the Status RPC call",
            m.key_id_status_last.clone(),
        );
        r.register(
            "apiserver_envelope_encryption_invalid_key_id_from_status",
            "Number of times an invalid keyID is returned by the Status RPC call, split by error",
            m.invalid_key_id.clone(),
        );
        r.register(
            "apiserver_envelope_encryption_dek_source_cache_size",
            "Number of records in data encryption key (DEK) source cache",
            m.seed_cache_size.clone(),
        );
        r.register(
            "apiserver_encryption_config_controller_automatic_reloads",
            "Total number of reload successes and failures of encryption configuration split by apiserver identity",
            m.reloads.clone(),
        );
        r.register(
            "apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds",
            "Timestamp of the last successful or failed automatic reload of encryption configuration split by apiserver identity",
            m.reload_last.clone(),
        );
        m
    }

    /// One transformation (`from_storage`/`to_storage`) by the provider with `prefix`.
    pub fn transformation(&self, ty: &str, prefix: &str, ok: bool, took: Duration) {
        let status = if ok { "OK" } else { "Unknown" };
        self.ops
            .get_or_create(&vec![
                ("transformation_type", ty.to_string()),
                ("transformer_prefix", prefix.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
        if ok {
            self.duration
                .get_or_create(&vec![
                    ("transformation_type", ty.to_string()),
                    ("transformer_prefix", prefix.to_string()),
                ])
                .observe(took.as_secs_f64());
        }
    }

    /// One plugin call.
    pub fn kms_latency(&self, provider: &str, method: &str, code: &str, took: Duration) {
        self.kms_latency
            .get_or_create(&vec![
                ("provider_name", provider.to_string()),
                ("method_name", method.to_string()),
                ("grpc_status_code", code.to_string()),
            ])
            .observe(took.as_secs_f64());
    }

    /// A key id used to read or write an object.
    pub fn key_id_used(&self, provider: &str, ty: &str, hash: &str) {
        let l = vec![
            ("transformation_type", ty.to_string()),
            ("provider_name", provider.to_string()),
            ("key_id_hash", hash.to_string()),
            ("apiserver_id_hash", self.apiserver_id_hash.clone()),
        ];
        self.key_id_total.get_or_create(&l).inc();
        self.key_id_last.get_or_create(&l).set(now_secs());
    }

    /// A key id reported by Status.
    pub fn key_id_status(&self, provider: &str, hash: &str) {
        self.key_id_status_last
            .get_or_create(&vec![
                ("provider_name", provider.to_string()),
                ("key_id_hash", hash.to_string()),
                ("apiserver_id_hash", self.apiserver_id_hash.clone()),
            ])
            .set(now_secs());
    }

    /// An invalid key id from Status.
    pub fn invalid_key_id(&self, provider: &str, error: &str) {
        self.invalid_key_id
            .get_or_create(&vec![
                ("provider_name", provider.to_string()),
                ("error", error.to_string()),
            ])
            .inc();
    }

    /// The number of decrypted seeds held.
    pub fn seed_cache_size(&self, provider: &str, n: usize) {
        self.seed_cache_size
            .get_or_create(&vec![("provider_name", provider.to_string())])
            .set(n as i64);
    }

    /// An automatic reload of the configuration file.
    pub fn reload(&self, ok: bool) {
        let l = vec![
            ("status", if ok { "success" } else { "failure" }.to_string()),
            ("apiserver_id_hash", self.apiserver_id_hash.clone()),
        ];
        self.reloads.get_or_create(&l).inc();
        self.reload_last.get_or_create(&l).set(now_secs());
    }
}
