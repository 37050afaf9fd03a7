//! Membership changes under load, through etcdctl: a member added with `member add` joins
//! with `--initial-cluster-state existing` and catches up, a learner is added and promoted
//! once in sync, a voter is removed, and no acknowledged write is lost on the way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keelson_etcdpb::etcdserverpb::kv_client::KvClient;
use keelson_etcdpb::etcdserverpb::{PutRequest, RangeRequest};

use crate::cluster::{Cluster, etcdctl, ok};

/// `member list` as (name, id in hex, is learner) for started members.
fn members(endpoint: &str) -> Vec<(String, String, bool)> {
    let out = ok(etcdctl(endpoint, &["member", "list"]));
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            (f[2].to_string(), f[0].to_string(), f[5] == "true")
        })
        .collect()
}

/// A membership change through etcdctl, tried again while the strict reconfiguration check
/// refuses it because a voter has been connected for less than 5 s or has not published its
/// attributes yet (as an operator would, and as etcd answers then too); its output.
fn change(endpoint: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(endpoint, args);
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let refused_for_now =
            err.contains("unhealthy cluster") || err.contains("not enough started members");
        assert!(
            refused_for_now && Instant::now() < deadline,
            "etcdctl {args:?}: {err}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_promoted_and_removed_under_load() {
    let mut c = Cluster::start(3);
    let m0 = c.members[0].client.clone();

    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let endpoint = c.members[w].client.clone();
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut client = KvClient::connect(endpoint).await.unwrap();
            // Bounded: at most 3,000 writes or until told to stop.
            for i in 0..3000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("load/{w}/{i:04}");
                let req = PutRequest {
                    key: key.clone().into_bytes(),
                    value: vec![b'x'; 128],
                    ..Default::default()
                };
                // A failed or timed-out write is unknown: not counted.
                if let Ok(Ok(resp)) =
                    tokio::time::timeout(Duration::from_secs(10), client.put(req)).await
                {
                    let rev = resp.into_inner().header.unwrap().revision;
                    acked.lock().unwrap().insert(key, rev);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    // Blocking etcdctl calls run on their own thread so the writers keep going.
    let c = tokio::task::spawn_blocking(move || {
        // A voter joins with --initial-cluster-state existing.
        let added = c.new_member("m3");
        let peer = c.members[added].peer.clone();
        let out = change(
            &m0,
            &["member", "add", "m3", &format!("--peer-urls={peer}")],
        );
        assert!(
            out.contains("Member") && out.contains("added to cluster"),
            "{out}"
        );
        let initial = format!("{},m3={peer}", c.initial);
        c.start_member_in(added, &initial, "existing");
        let m3 = c.members[added].client.clone();
        wait_for("m3 serves reads", Duration::from_secs(30), || {
            etcdctl(&m3, &["get", "ready-probe"]).status.success()
        });
        wait_for("m3 listed as started", Duration::from_secs(30), || {
            members(&m0).iter().any(|(n, _, l)| n == "m3" && !l)
        });

        // A learner joins, catches up and is promoted.
        let learner = c.new_member("m4");
        let peer = c.members[learner].peer.clone();
        let out = change(
            &m0,
            &[
                "member",
                "add",
                "m4",
                "--learner",
                &format!("--peer-urls={peer}"),
            ],
        );
        assert!(out.contains("added to cluster"), "{out}");
        let initial = format!("{initial},m4={peer}");
        c.start_member_in(learner, &initial, "existing");
        wait_for("m4 listed as a learner", Duration::from_secs(30), || {
            members(&m0).iter().any(|(n, _, l)| n == "m4" && *l)
        });
        let id = members(&m0)
            .into_iter()
            .find(|(n, _, _)| n == "m4")
            .unwrap()
            .1;
        wait_for("m4 promoted", Duration::from_secs(30), || {
            etcdctl(&m0, &["member", "promote", &id]).status.success()
        });
        assert!(members(&m0).iter().any(|(n, _, l)| n == "m4" && !l));

        // A voter leaves; its process is stopped.
        let id = members(&m0)
            .into_iter()
            .find(|(n, _, _)| n == "m2")
            .unwrap()
            .1;
        let out = change(&m0, &["member", "remove", &id]);
        assert!(out.contains("removed from cluster"), "{out}");
        c.kill(2);
        let names: Vec<String> = members(&m0).into_iter().map(|m| m.0).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(!names.contains(&"m2".to_string()), "{names:?}");
        c
    })
    .await
    .unwrap();

    let before = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < before + 50 {
        assert!(Instant::now() < deadline, "no writes after the changes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // Every acknowledged write is on every remaining member (a linearizable read first, so
    // each has applied everything).
    let acked = acked.lock().unwrap().clone();
    for i in [0, 1, 3, 4] {
        let m = &c.members[i];
        let mut kv = KvClient::connect(m.client.clone()).await.unwrap();
        kv.range(RangeRequest {
            key: b"ready-probe".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let kvs = kv
            .range(RangeRequest {
                key: b"load/".to_vec(),
                range_end: b"load0".to_vec(),
                keys_only: true,
                serializable: true,
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
        for (k, rev) in &acked {
            assert_eq!(present.get(k), Some(rev), "{k} on {}", m.name);
        }
    }
}

/// A member remove whose client gives up before it is done still completes, as etcd's (one
/// configuration change, which commits once proposed whoever waits for it): openraft removes
/// a voter in two steps (the joint configuration, then the new one), and a caller that went
/// away between them would leave the joint one, the member still listed and counted. The
/// members' applies are held 2 s, so the client's 1 s deadline passes in the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_remove_whose_client_gave_up_still_completes() {
    use crate::cluster::before_apply;

    let gofail: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", keelson_client::ports::free_port().unwrap()))
        .collect();
    let c = Cluster::start_each(3, &[], &[], |i| {
        vec![("GOFAIL_HTTP".to_string(), gofail[i].clone())]
    });
    // Every member's name published (the victim is found by it).
    let first = c.members[0].client.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "every member listed as started",
            Duration::from_secs(30),
            || {
                let listed = members(&first);
                listed.len() == 3 && listed.iter().all(|(name, _, _)| !name.is_empty())
            },
        )
    })
    .await
    .unwrap();
    let l = c.leader_index().await;
    let endpoint = c.members[l].client.clone();
    let victim = c.members[(l + 1) % 3].name.clone();
    tokio::task::spawn_blocking(move || {
        // Armed on every member, should the leader change.
        let hold = |method: &str, term: &str| {
            for g in &gofail {
                before_apply(g, method, term);
            }
        };
        let id_of = |name: &str| {
            let listed = members(&endpoint);
            listed
                .into_iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, id, _)| id)
        };
        let id = id_of(&victim).expect("the victim listed");
        // Until the strict reconfiguration check counts every member as up long enough.
        let deadline = Instant::now() + Duration::from_secs(30);
        let err = loop {
            hold("PUT", "sleep(2000)");
            let out = etcdctl(
                &endpoint,
                &["--command-timeout=1s", "member", "remove", &id],
            );
            hold("DELETE", "");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !out.status.success(),
                "the remove was to outlast its client"
            );
            let refused = err.contains("unhealthy cluster") || err.contains("not enough started");
            if !refused {
                break err;
            }
            assert!(Instant::now() < deadline, "{err}");
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(err.contains("deadline exceeded"), "{err}");
        wait_for(
            &format!("{victim} removed"),
            Duration::from_secs(30),
            || id_of(&victim).is_none() && members(&endpoint).len() == 2,
        );
        ok(etcdctl(&endpoint, &["put", "after", "1"]));
    })
    .await
    .unwrap();
}

/// A one-member cluster grown as etcd's operators grow one (and as kubeadm grows a stacked
/// etcd): `member add` answers at once, with the lines etcdctl prints for starting the new
/// member, before that member runs; the first member then has no quorum and steps down; the
/// new member starts, joins, and is a voter: with it stopped again, the first member alone
/// commits nothing.
#[test]
fn a_second_voter_is_added_before_it_runs_as_with_etcd() {
    let mut c = Cluster::start(1);
    let m0 = c.members[0].client.clone();
    let added = c.new_member("m1");
    let peer = c.members[added].peer.clone();
    let out = change(
        &m0,
        &["member", "add", "m1", &format!("--peer-urls={peer}")],
    );
    let initial = out
        .lines()
        .find(|l| l.starts_with("ETCD_INITIAL_CLUSTER="))
        .unwrap_or_else(|| panic!("{out}"));
    for member in [format!("m0={}", c.members[0].peer), format!("m1={peer}")] {
        assert!(initial.contains(&member), "{initial}");
    }
    assert!(
        members(&m0)
            .iter()
            .any(|(name, _, learner)| name.is_empty() && !learner),
        "listed as a voter not started yet"
    );
    // As an operator's would, m1 starts late: m0, without a quorum, has stepped down by then.
    wait_for("m0 without a leader", Duration::from_secs(30), || {
        let out = etcdctl(&m0, &["endpoint", "status", "-w", "json"]);
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        // etcdctl leaves a zero leader out.
        let status = &status[0]["Status"];
        status.is_object() && status["leader"].as_u64().unwrap_or(0) == 0
    });
    let initial = format!("{},m1={peer}", c.initial);
    c.start_member_in(added, &initial, "existing");
    wait_for("m1 a started voter", Duration::from_secs(30), || {
        members(&m0)
            .iter()
            .any(|(name, _, learner)| name == "m1" && !learner)
    });
    ok(etcdctl(&c.members[added].client, &["put", "grown", "1"]));
    c.kill(added);
    let alone = etcdctl(&m0, &["--command-timeout=3s", "put", "alone", "1"]);
    assert!(!alone.status.success(), "m0 committed without m1");
}

/// A learner promoted beside a single voter while the learner is down (as with etcd, whose
/// one-step change commits without it): `member promote` answers at once and lists it as a
/// voter; the first member then has no quorum until the new voter runs again, which it then
/// is: with it stopped once more, the first member alone commits nothing.
#[test]
fn a_learner_promoted_beside_a_single_voter_while_down_is_answered_as_with_etcd() {
    let mut c = Cluster::start(1);
    let m0 = c.members[0].client.clone();
    let added = c.new_member("m1");
    let peer = c.members[added].peer.clone();
    change(
        &m0,
        &[
            "member",
            "add",
            "m1",
            "--learner",
            &format!("--peer-urls={peer}"),
        ],
    );
    let initial = format!("{},m1={peer}", c.initial);
    c.start_member_in(added, &initial, "existing");
    let m1 = c.members[added].client.clone();
    let mut id = String::new();
    wait_for("m1 listed as a learner", Duration::from_secs(30), || {
        let listed = members(&m0)
            .into_iter()
            .find(|(name, _, learner)| name == "m1" && *learner);
        listed.map(|(_, listed, _)| id = listed).is_some()
    });
    // Its name published, a last write: m1 has everything once it serves that.
    ok(etcdctl(&m0, &["put", "before", "1"]));
    wait_for(
        "m1 a learner that has caught up",
        Duration::from_secs(30),
        || {
            let read = etcdctl(
                &m1,
                &["get", "before", "--consistency=s", "--print-value-only"],
            );
            String::from_utf8_lossy(&read.stdout).trim() == "1"
        },
    );
    c.kill(added);
    let out = change(&m0, &["member", "promote", &id]);
    assert!(out.contains("promoted"), "{out}");
    assert!(
        members(&m0)
            .iter()
            .any(|(name, listed, learner)| name == "m1" && *listed == id && !learner),
        "listed as a voter"
    );
    c.start_member_in(added, &initial, "existing");
    wait_for("a write through m1", Duration::from_secs(30), || {
        etcdctl(&m1, &["put", "grown", "1"]).status.success()
    });
    c.kill(added);
    let alone = etcdctl(&m0, &["--command-timeout=3s", "put", "alone", "1"]);
    assert!(!alone.status.success(), "m0 committed without m1");
}
