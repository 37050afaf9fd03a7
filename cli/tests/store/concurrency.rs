//! The Lock and Election services (`v3lockpb`, `v3electionpb`) on a three-member cluster, and
//! etcdctl's `lock` and `elect`, which run etcd's client-side recipes on KV, leases and watch.

use std::time::{Duration, Instant};

use keelson_etcdpb::etcdserverpb::kv_client::KvClient;
use keelson_etcdpb::etcdserverpb::lease_client::LeaseClient;
use keelson_etcdpb::etcdserverpb::{LeaseGrantRequest, LeaseTimeToLiveRequest, RangeRequest};
use keelson_etcdpb::v3electionpb::election_client::ElectionClient;
use keelson_etcdpb::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
};
use keelson_etcdpb::v3lockpb::lock_client::LockClient;
use keelson_etcdpb::v3lockpb::{LockRequest, UnlockRequest};

use crate::cluster::{Cluster, before_apply, etcdctl, ok};
use crate::differential::with_token;

/// The keys under `prefix`, in create order.
async fn queue(kv: &mut KvClient<tonic::transport::Channel>, prefix: &str) -> Vec<String> {
    let mut kvs = kv
        .range(RangeRequest {
            key: prefix.into(),
            range_end: keelson_etcdpb::prefix_end(prefix.as_bytes()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs;
    kvs.sort_by_key(|kv| kv.create_revision);
    kvs.into_iter()
        .map(|kv| String::from_utf8(kv.key).unwrap())
        .collect()
}

async fn wait_for_queue(kv: &mut KvClient<tonic::transport::Channel>, prefix: &str, len: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let q = queue(kv, prefix).await;
        if q.len() == len {
            return;
        }
        assert!(Instant::now() < deadline, "{prefix} queue stays {q:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the next leader observation.
async fn next_value(observed: &mut tonic::Streaming<LeaderResponse>) -> Vec<u8> {
    let r = tokio::time::timeout(Duration::from_secs(15), observed.message())
        .await
        .expect("no observation")
        .unwrap()
        .expect("the observation stream ended");
    r.kv.unwrap().value
}

async fn grant(lease: &mut LeaseClient<tonic::transport::Channel>) -> i64 {
    lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_service_queues_waiters_by_create_revision() {
    let c = Cluster::start(3);
    let (m0, m1) = (c.members[0].client.clone(), c.members[1].client.clone());
    let mut kv = KvClient::connect(c.members[2].client.clone())
        .await
        .unwrap();
    let mut leases = LeaseClient::connect(m0.clone()).await.unwrap();
    let (a, b) = (grant(&mut leases).await, grant(&mut leases).await);
    let mut lock0 = LockClient::connect(m0.clone()).await.unwrap();
    let mut lock1 = LockClient::connect(m1.clone()).await.unwrap();

    // The first comes through at once, holding `name/<lease in hex>`.
    let held = lock0
        .lock(LockRequest {
            name: b"jobs".to_vec(),
            lease: a,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.key, format!("jobs/{a:x}").into_bytes());
    // Holding it again with the same lease is immediate too (the key is the holder's).
    let again = lock1
        .lock(LockRequest {
            name: b"jobs".to_vec(),
            lease: a,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.key, held.key);

    // The second waits, queued behind the first.
    let mut waiting = lock1.clone();
    let waiter = tokio::spawn(async move {
        waiting
            .lock(LockRequest {
                name: b"jobs".to_vec(),
                lease: b,
            })
            .await
    });
    wait_for_queue(&mut kv, "jobs/", 2).await;
    assert!(!waiter.is_finished(), "the lock was handed out twice");
    let unlocked = lock0
        .unlock(UnlockRequest { key: held.key })
        .await
        .unwrap()
        .into_inner();
    let got = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("the waiter never got the lock")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(got.key, format!("jobs/{b:x}").into_bytes());
    assert!(got.header.unwrap().revision >= unlocked.header.unwrap().revision);

    // A waiter whose client goes away takes its key back.
    let mut abandoned = lock0.clone();
    let gone = tokio::spawn(async move {
        abandoned
            .lock(LockRequest {
                name: b"jobs".to_vec(),
                lease: a,
            })
            .await
    });
    wait_for_queue(&mut kv, "jobs/", 2).await;
    gone.abort();
    wait_for_queue(&mut kv, "jobs/", 1).await;
    assert_eq!(queue(&mut kv, "jobs/").await, [format!("jobs/{b:x}")]);

    // Without a lease, the lock gets a fresh one of at most 60 s that nothing renews.
    let free = lock0
        .lock(LockRequest {
            name: b"free".to_vec(),
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let hex = String::from_utf8(free.key).unwrap();
    let id = i64::from_str_radix(hex.strip_prefix("free/").unwrap(), 16).unwrap();
    let ttl = leases
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert!(
        ttl.ttl > 0 && ttl.ttl <= 60 && ttl.granted_ttl == 60,
        "{ttl:?}"
    );
    assert_eq!(ttl.keys, [hex.into_bytes()]);

    // A lock whose lease does not exist is refused as etcd refuses the put.
    let err = lock0
        .lock(LockRequest {
            name: b"jobs".to_vec(),
            lease: 0x7777,
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("requested lease not found"),
        "{err:?}"
    );
    assert_eq!(queue(&mut kv, "jobs/").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_election_service_elects_proclaims_observes_and_resigns() {
    let c = Cluster::start(3);
    let (m0, m2) = (c.members[0].client.clone(), c.members[2].client.clone());
    let mut leases = LeaseClient::connect(m0.clone()).await.unwrap();
    let (a, b) = (grant(&mut leases).await, grant(&mut leases).await);
    let mut e0 = ElectionClient::connect(m0.clone()).await.unwrap();
    let mut e2 = ElectionClient::connect(m2.clone()).await.unwrap();
    let name = b"svc".to_vec();

    let err = e0
        .leader(LeaderRequest { name: name.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "election: no leader");

    // An observer started before any candidate sees every leader and value in order.
    let mut observed = e2
        .observe(LeaderRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    let won = e0
        .campaign(CampaignRequest {
            name: name.clone(),
            lease: a,
            value: b"first".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = won.leader.unwrap();
    assert_eq!(first.key, format!("svc/{a:x}").into_bytes());
    assert_eq!(first.rev, won.header.unwrap().revision);
    assert_eq!(first.lease, a);
    assert_eq!(next_value(&mut observed).await, b"first");
    let leader = e2
        .leader(LeaderRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leader.kv.unwrap().value, b"first");

    // A second candidate waits behind the first.
    let mut waiting = e2.clone();
    let n = name.clone();
    let second = tokio::spawn(async move {
        waiting
            .campaign(CampaignRequest {
                name: n,
                lease: b,
                value: b"second".to_vec(),
            })
            .await
    });

    // The leader proclaims a new value; a stale or missing leader key is refused.
    e0.proclaim(ProclaimRequest {
        leader: Some(first.clone()),
        value: b"first-2".to_vec(),
    })
    .await
    .unwrap();
    assert_eq!(next_value(&mut observed).await, b"first-2");
    let stale = LeaderKey {
        rev: first.rev + 1000,
        ..first.clone()
    };
    let err = e0
        .proclaim(ProclaimRequest {
            leader: Some(stale),
            value: b"x".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "election: not leader");
    let err = e0
        .proclaim(ProclaimRequest {
            leader: None,
            value: b"x".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "\"leader\" field must be provided");
    assert!(!second.is_finished(), "two leaders at once");

    // Resigning hands leadership to the next candidate; the observer follows.
    e0.resign(ResignRequest {
        leader: Some(first),
    })
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(15), second)
        .await
        .expect("the second candidate was never elected")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(next.leader.unwrap().key, format!("svc/{b:x}").into_bytes());
    assert_eq!(next_value(&mut observed).await, b"second");
}

#[test]
fn etcdctl_lock_and_elect_run_etcds_client_recipes() {
    let c = Cluster::start(3);
    let m0 = c.members[0].client.clone();
    // `lock NAME COMMAND` runs the command while holding the lock.
    let out = ok(etcdctl(&m0, &["lock", "ctl-lock", "echo", "held"]));
    assert_eq!(out.trim(), "held");
    assert_eq!(ok(etcdctl(&m0, &["get", "--prefix", "ctl-lock/"])), "");

    // `elect NAME PROPOSAL` campaigns and stays leader until stopped; `elect -l` lists.
    let mut candidate = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={m0}"), "elect", "ctl-elect", "p1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let kvs = ok(etcdctl(&m0, &["get", "--prefix", "ctl-elect/"]));
        if kvs.lines().nth(1) == Some("p1") {
            break;
        }
        assert!(Instant::now() < deadline, "no candidate key: {kvs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let listen = std::process::Command::new("timeout")
        .args([
            "3",
            "etcdctl",
            &format!("--endpoints={m0}"),
            "elect",
            "-l",
            "ctl-elect",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&listen.stdout);
    assert!(shown.lines().any(|l| l == "p1"), "{shown}");
    let _ = candidate.kill();
    let _ = candidate.wait();
}

/// With auth on, the calls Lock and Campaign make of the KV service carry the client's token
/// and are checked as its own, as etcd's recipes (run through its KV service with the
/// caller's context) are: a queue key checked before an auth change that applies after it is
/// refused when it applies (`revision of auth store is old`), not written for a check the
/// auth state has moved past. Each apply is held 300 ms, so the change, proposed first, has
/// not applied when the request is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_writes_are_checked_again_when_they_apply() {
    use keelson_etcdpb::etcdserverpb::auth_client::AuthClient;
    use keelson_etcdpb::etcdserverpb::{AuthRoleAddRequest, AuthenticateRequest};

    let gofail = format!("127.0.0.1:{}", keelson_client::ports::free_port().unwrap());
    let c = Cluster::start_with_env(1, &[], &[("GOFAIL_HTTP", gofail.as_str())]);
    let endpoint = c.members[0].client.clone();
    let e = endpoint.clone();
    tokio::task::spawn_blocking(move || {
        let root = |args: &[&str]| {
            let mut all = vec!["--user=root:pw"];
            all.extend_from_slice(args);
            ok(etcdctl(&e, &all))
        };
        ok(etcdctl(&e, &["user", "add", "root:pw"]));
        ok(etcdctl(&e, &["auth", "enable"]));
        root(&["role", "add", "queues"]);
        for prefix in ["L/", "E/"] {
            root(&[
                "role",
                "grant-permission",
                "queues",
                "readwrite",
                prefix,
                "--prefix",
            ]);
        }
        root(&["user", "add", "u:pw"]);
        root(&["user", "grant-role", "u", "queues"]);
    })
    .await
    .unwrap();
    let mut auth = AuthClient::connect(endpoint.clone()).await.unwrap();
    let mut tokens = Vec::new();
    for name in ["root", "u"] {
        let request = AuthenticateRequest {
            name: name.into(),
            password: "pw".into(),
        };
        tokens.push(auth.authenticate(request).await.unwrap().into_inner().token);
    }
    let (root, user) = (tokens[0].clone(), tokens[1].clone());
    let mut kv = KvClient::connect(endpoint.clone()).await.unwrap();
    let mut locks = LockClient::connect(endpoint.clone()).await.unwrap();
    let mut elections = ElectionClient::connect(endpoint.clone()).await.unwrap();
    let mut leases = LeaseClient::connect(endpoint.clone()).await.unwrap();

    for (round, prefix) in ["L", "E"].into_iter().enumerate() {
        let lease = grant(&mut leases).await;
        before_apply(&gofail, "PUT", "sleep(300)");
        let mut admin = auth.clone();
        let change = with_token(
            &root,
            AuthRoleAddRequest {
                name: format!("unrelated-{round}"),
            },
        );
        let change = tokio::spawn(async move { admin.role_add(change).await.map(|_| ()) });
        // The change is in the log, not yet applied, when the request is checked.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let name = prefix.as_bytes().to_vec();
        let refused = if prefix == "L" {
            let r = LockRequest { name, lease };
            locks.lock(with_token(&user, r)).await.map(|_| ())
        } else {
            let r = CampaignRequest {
                name,
                lease,
                value: b"v".to_vec(),
            };
            elections.campaign(with_token(&user, r)).await.map(|_| ())
        }
        .unwrap_err();
        change.await.unwrap().unwrap();
        before_apply(&gofail, "DELETE", "");
        assert_eq!(
            refused.message(),
            "etcdserver: revision of auth store is old",
            "{prefix}: {refused:?}"
        );
        let seen = with_token(
            &root,
            RangeRequest {
                key: format!("{prefix}/").into_bytes(),
                range_end: keelson_etcdpb::prefix_end(format!("{prefix}/").as_bytes()),
                ..Default::default()
            },
        );
        assert!(kv.range(seen).await.unwrap().into_inner().kvs.is_empty());
    }
    // A request without a leader key is refused for that before any permission check, as
    // etcd's (the user may write no key "").
    let missing = ProclaimRequest {
        leader: None,
        value: b"x".to_vec(),
    };
    let missing = elections
        .proclaim(with_token(&user, missing))
        .await
        .unwrap_err();
    assert_eq!(missing.message(), "\"leader\" field must be provided");
    // The user may still lock, checked at the current revision.
    let again = LockRequest {
        name: b"L".to_vec(),
        lease: 0,
    };
    let held = locks.lock(with_token(&user, again)).await.unwrap();
    assert!(held.into_inner().key.starts_with(b"L/"));
}
