//! The `etcd-client` crate (the Rust client most Rust programs use for etcd) against a
//! three-member keelson-store, unchanged: KV, txn, watch, leases, compaction, locks, cluster
//! and maintenance calls, and its endpoint balancing when a member dies.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Error, EventType, GetOptions,
    LeaseTimeToLiveOptions, LockOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};

use crate::cluster::Cluster;

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

/// The gRPC status message of a failed call.
fn status_message(err: Error) -> String {
    match err {
        Error::GRpcStatus(status) => status.message().to_string(),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn connect(endpoints: &[&str]) -> Client {
    tokio::time::timeout(Duration::from_secs(10), Client::connect(endpoints, None))
        .await
        .expect("connect within 10 s")
        .expect("connect")
}

/// The call failed in the transport (the connection broke under it: "transport error",
/// "operation was canceled"), not in the server.
fn in_transport(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>())
}

/// Runs `call` until it does not fail for want of a member (30 s at most). The client balances
/// over its endpoints without retrying: a call routed to the dead member fails with Unavailable
/// (no connection, or the member's own "leader changed") or in the transport (the connection
/// broke under it), and its callers retry those. The calls here may be repeated: puts of fixed
/// keys and values, and reads.
async fn until_available<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(answer) => return answer,
            Err(Error::GRpcStatus(s))
                if s.code() == tonic::Code::Unavailable || in_transport(&s) =>
            {
                assert!(
                    Instant::now() < deadline,
                    "still unavailable after 30 s: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[test]
fn the_etcd_client_crate_works_against_a_three_member_cluster() {
    let mut c = Cluster::start(3);
    let endpoints: Vec<String> = c.members.iter().map(|m| m.client.clone()).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut one = connect(&[endpoints[1].as_str()]).await;
        let mut other = connect(&[endpoints[2].as_str()]).await;

        // Put and get through different members; prev_kv on overwrite.
        let put = one.put("foo", "bar", None).await.unwrap();
        let first = put.header().unwrap().revision();
        let got = other.get("foo", None).await.unwrap();
        assert_eq!(got.kvs().len(), 1);
        let kv = &got.kvs()[0];
        assert_eq!((kv.key(), kv.value()), (&b"foo"[..], &b"bar"[..]));
        assert_eq!((kv.create_revision(), kv.mod_revision()), (first, first));
        assert_eq!(kv.version(), 1);
        let put = one
            .put("foo", "baz", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(put.prev_key().unwrap().value(), b"bar");
        assert_eq!(put.header().unwrap().revision(), first + 1);

        // Ranges: prefix, sort, limit with `more`, count only, keys only, at a past revision.
        for (k, v) in [("p/a", "1"), ("p/b", "2"), ("p/c", "3")] {
            one.put(k, v, None).await.unwrap();
        }
        let desc = other
            .get(
                "p/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(2),
                ),
            )
            .await
            .unwrap();
        let keys: Vec<&str> = desc.kvs().iter().map(|kv| text(kv.key())).collect();
        assert_eq!(keys, ["p/c", "p/b"]);
        assert!(desc.more());
        assert_eq!(desc.count(), 3);
        let counted = other
            .get(
                "p/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!((counted.count(), counted.kvs().len()), (3, 0));
        let keys_only = other
            .get("p/a", Some(GetOptions::new().with_keys_only()))
            .await
            .unwrap();
        assert_eq!(keys_only.kvs()[0].value(), b"");
        let old = other
            .get("foo", Some(GetOptions::new().with_revision(first)))
            .await
            .unwrap();
        assert_eq!(old.kvs()[0].value(), b"bar");
        let serializable = other
            .get(
                "p/",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await;
        // A serializable read is served by the member itself; it may lag, never invent.
        assert!(serializable.unwrap().kvs().len() <= 3);

        // Txn: compare-and-set on the mod revision, both branches, a get inside.
        let current = other.get("foo", None).await.unwrap().kvs()[0].mod_revision();
        let cas = |rev: i64| {
            Txn::new()
                .when([Compare::mod_revision("foo", CompareOp::Equal, rev)])
                .and_then([TxnOp::put("foo", "cas", None), TxnOp::get("foo", None)])
                .or_else([TxnOp::get("foo", None)])
        };
        let won = one.txn(cas(current)).await.unwrap();
        assert!(won.succeeded());
        match &won.op_responses()[1] {
            TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"cas"),
            other => panic!("expected a get response, got {other:?}"),
        }
        let lost = other.txn(cas(current)).await.unwrap();
        assert!(!lost.succeeded());
        match &lost.op_responses()[0] {
            TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"cas"),
            other => panic!("expected a get response, got {other:?}"),
        }

        // Delete with prev_kv over a prefix.
        let deleted = one
            .delete(
                "p/",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .unwrap();
        assert_eq!(deleted.deleted(), 3);
        assert_eq!(deleted.prev_kvs().len(), 3);
        let after_delete = deleted.header().unwrap().revision();

        // A watch from the first revision replays every change in order, then sees new ones.
        let mut watch = other
            .watch(
                "",
                Some(
                    WatchOptions::new()
                        .with_all_keys()
                        .with_start_revision(first)
                        .with_prev_key(),
                ),
            )
            .await
            .unwrap();
        // Reads the watch until `n` events have come (10 s at most).
        async fn events(watch: &mut etcd_client::WatchStream, n: usize) -> Vec<String> {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while seen.len() < n {
                let left = deadline.saturating_duration_since(Instant::now());
                let msg = tokio::time::timeout(left, watch.message())
                    .await
                    .unwrap_or_else(|_| panic!("{n} watch events within 10 s, saw {seen:?}"))
                    .unwrap()
                    .expect("watch stream open");
                for ev in msg.events() {
                    let kv = ev.kv().unwrap();
                    let kind = match ev.event_type() {
                        EventType::Put => "PUT",
                        EventType::Delete => "DELETE",
                    };
                    let prev = ev.prev_kv().map(|p| text(p.value()).to_string());
                    seen.push(format!(
                        "{kind} {} {} prev={prev:?}",
                        text(kv.key()),
                        kv.mod_revision()
                    ));
                }
            }
            seen
        }
        let history = [
            ("PUT foo", first, None),
            ("PUT foo", first + 1, Some("bar")),
            ("PUT p/a", first + 2, None),
            ("PUT p/b", first + 3, None),
            ("PUT p/c", first + 4, None),
            ("PUT foo", first + 5, Some("baz")),
            ("DELETE p/a", after_delete, Some("1")),
            ("DELETE p/b", after_delete, Some("2")),
            ("DELETE p/c", after_delete, Some("3")),
        ];
        let expected: Vec<String> = history
            .iter()
            .map(|(what, rev, prev)| format!("{what} {rev} prev={prev:?}"))
            .collect();
        assert_eq!(events(&mut watch, 9).await, expected);
        one.put("late", "x", None).await.unwrap();
        assert_eq!(
            events(&mut watch, 1).await,
            [format!("PUT late {} prev=None", after_delete + 1)]
        );

        // Errors carry etcd's messages.
        let future = other
            .get("foo", Some(GetOptions::new().with_revision(1_000_000)))
            .await
            .unwrap_err();
        assert_eq!(
            status_message(future),
            "etcdserver: mvcc: required revision is a future revision"
        );
        one.compact(first + 1, None).await.unwrap();
        let compacted = other
            .get("foo", Some(GetOptions::new().with_revision(first)))
            .await
            .unwrap_err();
        assert_eq!(
            status_message(compacted),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let empty = one.put("", "x", None).await.unwrap_err();
        assert_eq!(status_message(empty), "etcdserver: key is not provided");

        // Leases: grant, attach, keep alive, time-to-live with keys, list, revoke deletes.
        let lease = one.lease_grant(30, None).await.unwrap();
        assert_eq!(lease.ttl(), 30);
        let id = lease.id();
        one.put("leased", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        let (mut keeper, mut alive) = other.lease_keep_alive(id).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), alive.message())
            .await
            .expect("a keep-alive answer within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!((answer.id(), answer.ttl()), (id, 30));
        let ttl = other
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(ttl.keys(), [b"leased".to_vec()]);
        assert!(ttl.ttl() > 0 && ttl.ttl() <= 30, "{}", ttl.ttl());
        let listed = one.leases().await.unwrap();
        assert!(listed.leases().iter().any(|l| l.id() == id));
        one.lease_revoke(id).await.unwrap();
        assert!(other.get("leased", None).await.unwrap().kvs().is_empty());
        let gone = one.lease_revoke(id).await.unwrap_err();
        assert_eq!(
            status_message(gone),
            "etcdserver: requested lease not found"
        );

        // A lock: the second locker waits until the first unlocks.
        let holder = one.lease_grant(30, None).await.unwrap().id();
        let held = one
            .lock("job", Some(LockOptions::new().with_lease(holder)))
            .await
            .unwrap();
        let waiter_lease = other.lease_grant(30, None).await.unwrap().id();
        let mut waiter_client = other.clone();
        let waiter = tokio::spawn(async move {
            waiter_client
                .lock("job", Some(LockOptions::new().with_lease(waiter_lease)))
                .await
                .map(|l| l.key().to_vec())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "the second locker waits");
        one.unlock(held.key()).await.unwrap();
        let key = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter gets the lock within 10 s")
            .unwrap()
            .unwrap();
        assert!(text(&key).starts_with("job/"), "{}", text(&key));

        // Cluster and maintenance.
        let members = one.member_list().await.unwrap();
        let mut names: Vec<(String, String, String)> = members
            .members()
            .iter()
            .map(|m| {
                (
                    m.name().to_string(),
                    m.peer_urls().join(","),
                    m.client_urls().join(","),
                )
            })
            .collect();
        names.sort();
        let want: Vec<(String, String, String)> = c
            .members
            .iter()
            .map(|m| (m.name.clone(), m.peer.clone(), m.client.clone()))
            .collect();
        assert_eq!(names, want);
        let ids: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
        let status = one.status().await.unwrap();
        assert!(status.version().starts_with("3.5"), "{}", status.version());
        assert!(ids.contains(&status.leader()));
        assert!(ids.contains(&status.header().unwrap().member_id()));
        let mut snapshot = one.snapshot().await.unwrap();
        let mut bytes = 0;
        while let Some(part) = snapshot.message().await.unwrap() {
            bytes += part.blob().len();
        }
        assert!(bytes > 32, "snapshot of {bytes} bytes");

        // One client over all three endpoints keeps working when the leader dies.
        let all: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let mut balanced = connect(&all).await;
        balanced.put("before-kill", "v", None).await.unwrap();
        let leader = one.status().await.unwrap().leader();
        let leader_name = members
            .members()
            .iter()
            .find(|m| m.id() == leader)
            .unwrap()
            .name()
            .to_string();
        let leader_index = c
            .members
            .iter()
            .position(|m| m.name == leader_name)
            .unwrap();
        c.kill(leader_index);
        for i in 0..20 {
            let key = format!("after-kill/{i}");
            until_available(|| {
                let (mut client, key) = (balanced.clone(), key.clone());
                async move { client.put(key, "v", None).await }
            })
            .await;
        }
        let count = until_available(|| {
            let mut client = balanced.clone();
            async move {
                let only_count = GetOptions::new().with_prefix().with_count_only();
                client.get("after-kill/", Some(only_count)).await
            }
        })
        .await
        .count();
        assert_eq!(count, 20);
    });
}
