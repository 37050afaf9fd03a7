//! Encryption at rest, per provider: what one Secret-sized value costs to encrypt (write) and
//! decrypt (read), through the same `Encryption` the apiserver's store client uses. The KMS v2
//! rows run against the bundled plugin over its unix socket with the seed cached, the state the
//! apiserver is in after its first Status: no plugin call per object.
//!
//! `cargo bench -p keelson-bench --bench encryption`

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keelson_apiserver::encryption::Encryption;
use keelson_apiserver::encryption::metrics::EncryptionMetrics;

const KEY32: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=";

fn secret() -> Vec<u8> {
    let data: String = (0..2048)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "s", "namespace": "default", "uid": "0d4f3c1e-1c39-4b8f-9a55-0a2a1f7f0c11",
                      "creationTimestamp": "2026-12-02T10:00:00Z"},
        "type": "Opaque", "data": {"password": data}
    }))
    .expect("json")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("kms.sock");
    let plugin = keelson_kms::plugin::Plugin::open(&dir.path().join("keys.json")).expect("plugin");
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let sock = sock.clone();
        let stop = stop.clone();
        rt.spawn(async move { keelson_kms::plugin::serve(plugin, &sock, stop).await });
    }
    while !sock.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let providers = [
        ("identity", "  - identity: {}\n".to_string()),
        (
            "aescbc",
            format!("  - aescbc: {{keys: [{{name: k, secret: \"{KEY32}\"}}]}}\n"),
        ),
        (
            "aesgcm",
            format!("  - aesgcm: {{keys: [{{name: k, secret: \"{KEY32}\"}}]}}\n"),
        ),
        (
            "secretbox",
            format!("  - secretbox: {{keys: [{{name: k, secret: \"{KEY32}\"}}]}}\n"),
        ),
        (
            "kms-v2",
            format!(
                "  - kms: {{apiVersion: v2, name: local, endpoint: \"unix://{}\"}}\n",
                sock.display()
            ),
        ),
    ];
    let value = secret();
    let key = b"/registry/secrets/default/s";
    let mut group = c.benchmark_group("encryption");
    group.throughput(Throughput::Bytes(value.len() as u64));
    for (name, provider) in providers {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{provider}"),
        )
        .expect("config");
        let enc: Arc<Encryption> = rt.block_on(async {
            let mut r = prometheus_client::registry::Registry::default();
            Encryption::load(
                &path,
                "/registry",
                false,
                Arc::new(EncryptionMetrics::new(&mut r, "bench")),
                stop.clone(),
            )
            .await
            .expect("load")
        });
        let stored = rt
            .block_on(enc.to_storage(key, value.clone()))
            .expect("encrypt");
        group.bench_with_input(BenchmarkId::new("write", name), &value, |b, v| {
            b.iter(|| {
                rt.block_on(enc.to_storage(key, v.clone()))
                    .expect("encrypt")
            })
        });
        group.bench_with_input(BenchmarkId::new("read", name), &stored, |b, s| {
            b.iter(|| {
                rt.block_on(enc.from_storage(key, s.clone()))
                    .expect("decrypt")
            })
        });
    }
    group.finish();
    stop.cancel();
}

criterion_group!(benches, bench);
criterion_main!(benches);
