//! kill -9 the leader while clients write: every acknowledged write survives, revisions of
//! acknowledged writes are unique and increase per client, and a restarted member catches up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keelson_etcdpb::etcdserverpb::kv_client::KvClient;
use keelson_etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
use keelson_etcdpb::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};

use crate::cluster::Cluster;

async fn leader_index(c: &Cluster) -> usize {
    for _ in 0..100 {
        for (i, m) in c.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            if let Ok(mut cl) = MaintenanceClient::connect(m.client.clone()).await
                && let Ok(s) = cl.status(StatusRequest {}).await
            {
                let s = s.into_inner();
                if s.leader != 0 && s.leader == s.header.unwrap().member_id {
                    return i;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_of_the_leader() {
    let mut c = Cluster::start(3);
    let leader = leader_index(&c).await;
    let followers: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| c.members[i].client.clone())
        .collect();
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let endpoint = followers[w % 2].clone();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut client = KvClient::connect(endpoint).await.unwrap();
            let mut last_rev = 0;
            // Bounded: at most 300 writes or until told to stop.
            for i in 0..300 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("w{w}/{i:04}");
                let req = PutRequest {
                    key: key.clone().into_bytes(),
                    value: vec![b'x'; 256],
                    ..Default::default()
                };
                // A timed-out or failed write is "unknown", never counted as acknowledged.
                if let Ok(Ok(resp)) =
                    tokio::time::timeout(Duration::from_secs(10), client.put(req)).await
                {
                    let rev = resp.into_inner().header.unwrap().revision;
                    assert!(
                        rev > last_rev,
                        "revisions of one client's acknowledged writes increase"
                    );
                    last_rev = rev;
                    acked.lock().unwrap().insert(key, rev);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 100 {
        assert!(
            Instant::now() < deadline,
            "writes are not being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill(leader);
    let before_kill = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < before_kill + 100 {
        assert!(
            Instant::now() < deadline,
            "the surviving majority did not take writes after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // Restart the killed member from its data dir: it rejoins and catches up.
    c.start_member(leader);
    c.wait_ready(Duration::from_secs(30));
    let acked = acked.lock().unwrap().clone();
    let revs: std::collections::BTreeSet<i64> = acked.values().copied().collect();
    assert_eq!(
        revs.len(),
        acked.len(),
        "every acknowledged write has its own revision"
    );
    for m in &c.members {
        let mut client = KvClient::connect(m.client.clone()).await.unwrap();
        let resp = client
            .range(RangeRequest {
                key: b"w".to_vec(),
                range_end: b"x".to_vec(),
                keys_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let present: BTreeMap<String, i64> = resp
            .kvs
            .iter()
            .map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision))
            .collect();
        for (k, rev) in &acked {
            assert_eq!(
                present.get(k),
                Some(rev),
                "acknowledged write {k} at revision {rev} is present on {}",
                m.name
            );
        }
    }
}

/// MoveLeader while clients write through every member: leadership moves to the chosen
/// member, writes wait out the handover instead of failing, and every acknowledged write is
/// there afterwards. A follower refuses MoveLeader as etcd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_under_load_keeps_every_acknowledged_write() {
    use keelson_etcdpb::etcdserverpb::MoveLeaderRequest;
    let c = Cluster::start(3);
    let leader = leader_index(&c).await;
    let target = (leader + 1) % 3;
    let status = |i: usize| {
        let url = c.members[i].client.clone();
        async move {
            let mut m = MaintenanceClient::connect(url).await.unwrap();
            m.status(StatusRequest {}).await.unwrap().into_inner()
        }
    };
    let target_id = status(target).await.header.unwrap().member_id;

    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let endpoint = c.members[w].client.clone();
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut client = KvClient::connect(endpoint).await.unwrap();
            // Bounded: at most 2,000 writes or until told to stop.
            for i in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("m{w}/{i:04}");
                let req = PutRequest {
                    key: key.clone().into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                };
                let resp = tokio::time::timeout(Duration::from_secs(10), client.put(req)).await;
                let resp = resp.expect("a write hung").expect("a write failed");
                let rev = resp.into_inner().header.unwrap().revision;
                acked.lock().unwrap().insert(key, rev);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "writes are not acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let follower = (leader + 2) % 3;
    let mut m = MaintenanceClient::connect(c.members[follower].client.clone())
        .await
        .unwrap();
    let err = m
        .move_leader(MoveLeaderRequest { target_id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(err.message(), "etcdserver: not leader");

    let mut m = MaintenanceClient::connect(c.members[leader].client.clone())
        .await
        .unwrap();
    m.move_leader(MoveLeaderRequest { target_id })
        .await
        .expect("the transfer failed");
    assert_eq!(status(target).await.leader, target_id);
    let moved_at = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < moved_at + 100 {
        assert!(Instant::now() < deadline, "no writes after the transfer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    for m in &c.members {
        let mut client = KvClient::connect(m.client.clone()).await.unwrap();
        let kvs = client
            .range(RangeRequest {
                key: b"m".to_vec(),
                range_end: b"n".to_vec(),
                keys_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .kvs;
        let present: BTreeMap<String, i64> = kvs
            .iter()
            .map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision))
            .collect();
        assert_eq!(present, acked, "on {}", m.name);
    }
}
