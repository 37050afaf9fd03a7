//! Raft snapshots and the space quota, end to end: a member that missed history a compaction
//! removed catches up from a snapshot file, and writes past `--quota-backend-bytes` raise
//! NOSPACE until a compaction frees the space.

use std::time::{Duration, Instant};

use keelson_etcdpb::etcdserverpb::kv_client::KvClient;
use keelson_etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
use keelson_etcdpb::etcdserverpb::{
    CompactionRequest, HashKvRequest, HashRequest, PutRequest, RangeRequest, StatusRequest,
};
use tonic::transport::Channel;

use crate::cluster::{Cluster, etcdctl, ok};

async fn put(kv: &mut KvClient<Channel>, key: &str, value: Vec<u8>) -> Result<i64, tonic::Status> {
    let r = kv
        .put(PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().header.unwrap().revision)
}

/// Every key under `k`, as `member` has applied them (a serializable read, answered locally).
async fn local_state(member: &str) -> Option<(i64, Vec<(Vec<u8>, Vec<u8>, i64)>)> {
    let mut kv = KvClient::connect(member.to_string()).await.ok()?;
    let r = kv
        .range(RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    let kvs = r
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision))
        .collect();
    Some((r.header.unwrap().revision, kvs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_missed_compacted_history_catches_up_from_a_snapshot() {
    let mut c = Cluster::start(3);
    c.kill(2);
    let mut kv = KvClient::connect(c.members[0].client.clone())
        .await
        .unwrap();
    // 1,000 entries with --snapshot-count=200: the logs the stopped member needs are purged.
    // A third of the keys hold 24 KiB values, so the snapshot spans several of the 1 MiB
    // chunks it is sent in.
    let mut last = 0;
    for i in 0..1000 {
        let mut value = format!("v{i}").into_bytes();
        if i % 300 < 100 {
            value.resize(24 << 10, b'.');
        }
        last = put(&mut kv, &format!("k{:03}", i % 300), value)
            .await
            .unwrap();
    }
    kv.compact(CompactionRequest {
        revision: last - 100,
        physical: true,
    })
    .await
    .unwrap();
    let expected = local_state(&c.members[0].client).await.unwrap();
    assert_eq!(expected.0, last);
    assert_eq!(expected.1.len(), 300);

    c.start_member(2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if local_state(&c.members[2].client).await.as_ref() == Some(&expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member did not catch up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        c.members[2].dir.join("snap/current.meta").exists(),
        "the member keeps the snapshot it installed"
    );
    let installed: u64 = std::fs::read_dir(c.members[2].dir.join("snap"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .map(|e| e.metadata().unwrap().len())
        .max()
        .unwrap_or(0);
    assert!(
        installed > 3 << 20,
        "a snapshot of several 1 MiB chunks: {installed} bytes"
    );
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", &format!("{}/metrics", c.members[2].client)])
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&out.stdout);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("etcd_network_snapshot_receive_success_total ") && !l.ends_with(" 0")
        ),
        "the member caught up through a snapshot, not the log:\n{metrics}"
    );
    // Same history kept, same compaction point, on every member.
    let mut hashes = Vec::new();
    for m in &c.members {
        let mut mc = MaintenanceClient::connect(m.client.clone()).await.unwrap();
        let h = mc
            .hash_kv(HashKvRequest { revision: last })
            .await
            .unwrap()
            .into_inner();
        hashes.push((h.hash, h.compact_revision));
    }
    assert_eq!(hashes[0].1, last - 100);
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    // Hash (of everything at the current revision) agrees too, and moves with a write.
    let mut whole = Vec::new();
    for m in &c.members {
        let mut mc = MaintenanceClient::connect(m.client.clone()).await.unwrap();
        whole.push(mc.hash(HashRequest {}).await.unwrap().into_inner().hash);
    }
    assert!(whole.iter().all(|h| *h == whole[0]), "{whole:?}");
    let mut mc = MaintenanceClient::connect(c.members[2].client.clone())
        .await
        .unwrap();
    put(&mut kv, "k000", b"moved".to_vec()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while mc.hash(HashRequest {}).await.unwrap().into_inner().hash == whole[0] {
        assert!(Instant::now() < deadline, "Hash did not change after a put");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it serves the history the compaction kept.
    let out = ok(etcdctl(
        &c.members[2].client,
        &[
            "get",
            "k000",
            &format!("--rev={}", last - 50),
            "--consistency=s",
        ],
    ));
    assert_eq!(
        out,
        ok(etcdctl(
            &c.members[0].client,
            &["get", "k000", &format!("--rev={}", last - 50)]
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_quota_raise_nospace_until_a_compaction_frees_space() {
    let c = Cluster::start_with(1, &["--quota-backend-bytes=1048576"]);
    let endpoint = c.members[0].client.clone();
    let mut kv = KvClient::connect(endpoint.clone()).await.unwrap();
    // Each put keeps another 64 KiB revision of the same key: 1 MiB is reached in ~16.
    let mut refused = None;
    let mut last = 0;
    for _ in 0..40 {
        match put(&mut kv, "big", vec![b'x'; 64 << 10]).await {
            Ok(rev) => last = rev,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a write past the quota is refused");
    assert!(
        refused.message().contains("database space exceeded"),
        "{refused:?}"
    );
    assert!(ok(etcdctl(&endpoint, &["alarm", "list"])).contains("alarm:NOSPACE"));
    // Armed: even a small write is refused, reads still work.
    assert!(put(&mut kv, "small", b"1".to_vec()).await.is_err());
    assert_eq!(
        ok(etcdctl(&endpoint, &["get", "big", "--print-value-only"])).len(),
        (64 << 10) + 1
    );
    let mut mc = MaintenanceClient::connect(endpoint.clone()).await.unwrap();
    let before = mc.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(before.db_size_in_use > 15 * (64 << 10), "{before:?}");
    assert_eq!(before.db_size_quota, 1 << 20);

    // Compaction frees the history at once; disarmed, writes go through again.
    kv.compact(CompactionRequest {
        revision: last,
        physical: true,
    })
    .await
    .unwrap();
    // A physical compaction returns once the records are deleted.
    let after = mc.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(after.db_size_in_use < 2 * (64 << 10), "{after:?}");
    ok(etcdctl(&endpoint, &["alarm", "disarm"]));
    assert!(!ok(etcdctl(&endpoint, &["alarm", "list"])).contains("NOSPACE"));
    put(&mut kv, "small", b"1".to_vec()).await.unwrap();
}
