use std::sync::Arc;

use keelson_etcdpb::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op, response_op,
};
use keelson_etcdpb::mvccpb::event::EventType;

use super::*;
use crate::backend::{MemoryBackend, SledBackend, WriteBatch};
use crate::raft::pb::internal_request::Request as Rq;
use crate::raft::pb::internal_response::Response as Rs;

fn mvcc() -> Mvcc {
    Mvcc::open(Arc::new(MemoryBackend::new()), 2).unwrap()
}

fn apply(m: &mut Mvcc, r: Rq) -> Result<Rs, StoreError> {
    let resp = m.apply(&InternalRequest {
        request: Some(r),
        ..Default::default()
    });
    m.commit().unwrap();
    match resp.response.unwrap() {
        Rs::Error(e) => Err(StoreError::from_apply_code(e.code)),
        other => Ok(other),
    }
}

fn put(m: &mut Mvcc, k: &str, v: &str) -> i64 {
    match apply(
        m,
        Rq::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
    )
    .unwrap()
    {
        Rs::Put(p) => p.header.unwrap().revision,
        _ => panic!("not a put response"),
    }
}

fn get(m: &Mvcc, k: &str, rev: i64) -> Result<Option<KeyValue>, StoreError> {
    let r = m.range(&RangeRequest {
        key: k.into(),
        revision: rev,
        ..Default::default()
    })?;
    Ok(r.kvs.into_iter().next())
}

fn del(m: &mut Mvcc, k: &str, end: &str) -> i64 {
    match apply(
        m,
        Rq::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        }),
    )
    .unwrap()
    {
        Rs::DeleteRange(d) => d.deleted,
        _ => panic!("not a delete response"),
    }
}

#[test]
fn new_store_is_at_revision_one_and_first_put_gets_two() {
    let mut m = mvcc();
    assert_eq!(m.current_revision(), 1);
    assert_eq!(put(&mut m, "a", "1"), 2);
    let kv = get(&m, "a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
}

#[test]
fn versions_count_up_and_reset_after_delete() {
    let mut m = mvcc();
    put(&mut m, "a", "1");
    put(&mut m, "a", "2");
    let kv = get(&m, "a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(del(&mut m, "a", ""), 1);
    assert_eq!(m.current_revision(), 4);
    assert!(get(&m, "a", 0).unwrap().is_none());
    put(&mut m, "a", "3");
    let kv = get(&m, "a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn delete_of_nothing_keeps_the_revision() {
    let mut m = mvcc();
    put(&mut m, "a", "1");
    assert_eq!(del(&mut m, "zz", ""), 0);
    assert_eq!(m.current_revision(), 2);
}

#[test]
fn range_at_past_revision_sees_old_values_and_tombstones() {
    let mut m = mvcc();
    put(&mut m, "a", "1"); // 2
    put(&mut m, "a", "2"); // 3
    del(&mut m, "a", ""); // 4
    assert_eq!(get(&m, "a", 2).unwrap().unwrap().value, b"1");
    assert_eq!(get(&m, "a", 3).unwrap().unwrap().value, b"2");
    assert!(get(&m, "a", 4).unwrap().is_none());
    assert_eq!(get(&m, "a", 9).unwrap_err(), StoreError::FutureRev);
}

#[test]
fn compaction_drops_history_but_keeps_latest_state() {
    let mut m = mvcc();
    put(&mut m, "a", "1"); // 2
    put(&mut m, "a", "2"); // 3
    put(&mut m, "b", "1"); // 4
    del(&mut m, "b", ""); // 5
    put(&mut m, "c", "1"); // 6
    apply(
        &mut m,
        Rq::Compaction(CompactionRequest {
            revision: 5,
            physical: false,
        }),
    )
    .unwrap();
    assert_eq!(get(&m, "a", 2).unwrap_err(), StoreError::Compacted);
    assert_eq!(get(&m, "a", 5).unwrap().unwrap().value, b"2");
    assert!(get(&m, "b", 5).unwrap().is_none());
    assert_eq!(get(&m, "c", 0).unwrap().unwrap().value, b"1");
    assert_eq!(
        apply(
            &mut m,
            Rq::Compaction(CompactionRequest {
                revision: 4,
                physical: false
            })
        )
        .unwrap_err(),
        StoreError::Compacted
    );
    assert_eq!(
        apply(
            &mut m,
            Rq::Compaction(CompactionRequest {
                revision: 99,
                physical: false
            })
        )
        .unwrap_err(),
        StoreError::FutureRev
    );
    assert_eq!(
        m.events_between(3, 6, &KeyRange::new(b"a", b"\0"))
            .unwrap_err(),
        StoreError::Compacted
    );
    // The b tombstone at the compaction revision stays, so a watch from 5 sees the delete
    // (etcd lost it before its fix for issue 18089).
    let from_5 = m.events_between(5, 6, &KeyRange::new(b"b", b"")).unwrap();
    assert_eq!(from_5.len(), 1, "{from_5:?}");
    assert!(m.index.contains_key(&b"b"[..]));
    // A later compaction takes it, and the key leaves the index.
    put(&mut m, "c", "2"); // 7
    apply(
        &mut m,
        Rq::Compaction(CompactionRequest {
            revision: 6,
            physical: false,
        }),
    )
    .unwrap();
    assert!(!m.index.contains_key(&b"b"[..]));
}

#[test]
fn range_limit_count_sort_and_filters() {
    use keelson_etcdpb::etcdserverpb::range_request::{SortOrder, SortTarget};
    let mut m = mvcc();
    for (k, v) in [("k1", "c"), ("k2", "a"), ("k3", "b"), ("x", "z")] {
        put(&mut m, k, v);
    }
    let r = m
        .range(&RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.kvs.len(), 2);
    assert!(r.more);
    assert_eq!(r.count, 3);
    let r = m
        .range(&RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            ..Default::default()
        })
        .unwrap();
    let vals: Vec<_> = r.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(vals, vec![b"c".to_vec(), b"b".to_vec(), b"a".to_vec()]);
    let r = m
        .range(&RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            min_mod_revision: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.kvs.len(), 2);
    let r = m
        .range(&RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 4));
    let r = m
        .range(&RangeRequest {
            key: "k".into(),
            range_end: "\0".into(),
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.kvs.len(), 4);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
}

fn txn(cmp: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Rq {
    Rq::Txn(TxnRequest {
        compare: cmp,
        success,
        failure,
    })
}

fn op_put_kv(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

fn cmp_mod(k: &str, rev: i64) -> Compare {
    Compare {
        key: k.into(),
        target: compare::CompareTarget::Mod as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        range_end: vec![],
    }
}

#[test]
fn txn_compare_and_swap_shares_one_revision() {
    let mut m = mvcc();
    put(&mut m, "a", "1"); // 2
    let Rs::Txn(t) = apply(
        &mut m,
        txn(
            vec![cmp_mod("a", 2)],
            vec![op_put_kv("a", "2"), op_put_kv("b", "2")],
            vec![],
        ),
    )
    .unwrap() else {
        panic!()
    };
    assert!(t.succeeded);
    assert_eq!(t.header.unwrap().revision, 3);
    assert_eq!(get(&m, "a", 0).unwrap().unwrap().mod_revision, 3);
    assert_eq!(get(&m, "b", 0).unwrap().unwrap().mod_revision, 3);
    // The same compare now fails, and the failure branch reads inside the txn.
    let read = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: "a".into(),
            ..Default::default()
        })),
    };
    let Rs::Txn(t) = apply(
        &mut m,
        txn(vec![cmp_mod("a", 2)], vec![op_put_kv("a", "x")], vec![read]),
    )
    .unwrap() else {
        panic!()
    };
    assert!(!t.succeeded);
    assert_eq!(
        m.current_revision(),
        3,
        "a read-only branch does not bump the revision"
    );
    let Some(response_op::Response::ResponseRange(r)) = &t.responses[0].response else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b"2");
}

#[test]
fn txn_compare_on_missing_key_uses_zero_values() {
    let mut m = mvcc();
    let created_absent = Compare {
        key: "new".into(),
        target: compare::CompareTarget::Create as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        range_end: vec![],
    };
    let Rs::Txn(t) = apply(
        &mut m,
        txn(vec![created_absent], vec![op_put_kv("new", "1")], vec![]),
    )
    .unwrap() else {
        panic!()
    };
    assert!(t.succeeded);
    let value_cmp = Compare {
        key: "missing".into(),
        target: compare::CompareTarget::Value as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::Value(vec![])),
        range_end: vec![],
    };
    let Rs::Txn(t) = apply(&mut m, txn(vec![value_cmp], vec![], vec![])).unwrap() else {
        panic!()
    };
    assert!(
        !t.succeeded,
        "a value compare on a missing key is false, as in etcd"
    );
}

#[test]
fn txn_rejects_duplicate_keys_and_too_many_ops() {
    let dup = TxnRequest {
        compare: vec![],
        success: vec![op_put_kv("a", "1"), op_put_kv("a", "2")],
        failure: vec![],
    };
    assert_eq!(check_txn(&dup).unwrap_err(), StoreError::DuplicateKey);
    let del_then_put = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: "a".into(),
                        range_end: "c".into(),
                        prev_kv: false,
                    },
                )),
            },
            op_put_kv("b", "1"),
        ],
        failure: vec![],
    };
    assert_eq!(
        check_txn(&del_then_put).unwrap_err(),
        StoreError::DuplicateKey
    );
    let nested_branches_may_repeat = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![op_put_kv("a", "1")],
                failure: vec![op_put_kv("a", "2")],
            })),
        }],
        failure: vec![],
    };
    check_txn(&nested_branches_may_repeat).unwrap();
    let many = TxnRequest {
        compare: vec![],
        success: (0..129).map(|i| op_put_kv(&format!("k{i}"), "v")).collect(),
        failure: vec![],
    };
    assert_eq!(check_txn(&many).unwrap_err(), StoreError::TooManyOps);
}

#[test]
fn leases_attach_keys_and_revoke_deletes_them_in_one_revision() {
    let mut m = mvcc();
    let Rs::LeaseGrant(g) =
        apply(&mut m, Rq::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 7 })).unwrap()
    else {
        panic!()
    };
    assert_eq!((g.id, g.ttl), (7, 2), "TTL is raised to the minimum");
    assert_eq!(
        apply(&mut m, Rq::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 7 })).unwrap_err(),
        StoreError::LeaseExist
    );
    for k in ["a", "b"] {
        apply(
            &mut m,
            Rq::Put(PutRequest {
                key: k.into(),
                value: "v".into(),
                lease: 7,
                ..Default::default()
            }),
        )
        .unwrap();
    }
    assert_eq!(
        apply(
            &mut m,
            Rq::Put(PutRequest {
                key: "c".into(),
                lease: 8,
                ..Default::default()
            })
        )
        .unwrap_err(),
        StoreError::LeaseNotFound
    );
    assert_eq!(m.leases()[&7].keys.len(), 2);
    let before = m.current_revision();
    m.take_events();
    apply(&mut m, Rq::LeaseRevoke(LeaseRevokeRequest { id: 7 })).unwrap();
    assert_eq!(m.current_revision(), before + 1);
    assert!(get(&m, "a", 0).unwrap().is_none() && get(&m, "b", 0).unwrap().is_none());
    let ev = m.take_events().unwrap();
    assert_eq!(ev.events.len(), 2);
    assert!(
        ev.events
            .iter()
            .all(|e| e.r#type == EventType::Delete as i32)
    );
    assert_eq!(
        apply(&mut m, Rq::LeaseRevoke(LeaseRevokeRequest { id: 7 })).unwrap_err(),
        StoreError::LeaseNotFound
    );
}

#[test]
fn put_with_ignore_value_needs_an_existing_key() {
    let mut m = mvcc();
    let ignore = PutRequest {
        key: "a".into(),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(
        apply(&mut m, Rq::Put(ignore.clone())).unwrap_err(),
        StoreError::KeyNotFound
    );
    put(&mut m, "a", "keep");
    apply(&mut m, Rq::Put(ignore)).unwrap();
    let kv = get(&m, "a", 0).unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"keep"[..], 2));
}

#[test]
fn events_between_replays_history_with_prev_kv() {
    let mut m = mvcc();
    put(&mut m, "a", "1");
    put(&mut m, "a", "2");
    del(&mut m, "a", "");
    put(&mut m, "b", "1");
    let ev = m.events_between(3, 5, &KeyRange::new(b"a", b"")).unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].kv.as_ref().unwrap().value, b"2");
    assert_eq!(ev[0].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(ev[1].r#type, EventType::Delete as i32);
    assert_eq!(ev[1].prev_kv.as_ref().unwrap().value, b"2");
}

#[test]
fn state_survives_reopen_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let db = crate::backend::testing::open_sled(dir.path());
        Mvcc::open(Arc::new(SledBackend::open(&db, "sm").unwrap()), 2).unwrap()
    };
    {
        let mut m = open();
        put(&mut m, "a", "1");
        put(&mut m, "a", "2");
        apply(&mut m, Rq::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 3 })).unwrap();
        apply(
            &mut m,
            Rq::Put(PutRequest {
                key: "l".into(),
                lease: 3,
                ..Default::default()
            }),
        )
        .unwrap();
        apply(
            &mut m,
            Rq::Compaction(CompactionRequest {
                revision: 3,
                physical: true,
            }),
        )
        .unwrap();
        m.backend().flush().unwrap();
    }
    let m = open();
    assert_eq!(m.current_revision(), 4);
    assert_eq!(m.compact_revision(), 3);
    assert_eq!(get(&m, "a", 0).unwrap().unwrap().version, 2);
    assert!(m.leases()[&3].keys.contains(&b"l"[..]));
}

fn compact(m: &mut Mvcc, revision: i64) {
    apply(
        m,
        Rq::Compaction(CompactionRequest {
            revision,
            physical: false,
        }),
    )
    .unwrap();
}

/// Deletes what compactions left, as the state machine does after applying.
fn delete_compacted(m: &mut Mvcc) -> usize {
    let keys = m.take_compacted(usize::MAX);
    let mut batch = WriteBatch::default();
    for k in &keys {
        batch.delete(k.to_vec());
    }
    m.backend().write(batch).unwrap();
    keys.len()
}

fn records(m: &Mvcc) -> Vec<(i64, i64)> {
    m.backend()
        .range(b"r", b"s")
        .unwrap()
        .iter()
        .map(|(k, _)| keys::parse_rev_key(k).unwrap())
        .collect()
}

/// Two stores with the same history, one compacted while pinned by a dump.
fn twins() -> (Mvcc, Mvcc) {
    let (mut a, mut b) = (mvcc(), mvcc());
    for m in [&mut a, &mut b] {
        put(m, "a", "1"); // 2
        put(m, "a", "2"); // 3
        put(m, "b", "1"); // 4
        del(m, "b", ""); // 5
        put(m, "c", "1"); // 6
    }
    (a, b)
}

#[test]
fn compacted_records_leave_when_no_dump_runs_and_reads_never_see_them() {
    let (mut plain, mut pinned) = twins();
    compact(&mut plain, 5);
    // a@2, b@4 (the tombstone b@5 at the compaction revision stays).
    assert_eq!(delete_compacted(&mut plain), 2);
    pinned.pin();
    pinned.pin();
    compact(&mut pinned, 5);
    // The compaction took effect (reads, index) but its records are still on disk for the dump.
    assert_eq!(get(&pinned, "a", 2).unwrap_err(), StoreError::Compacted);
    assert_eq!(get(&pinned, "a", 5).unwrap().unwrap().value, b"2");
    assert_eq!(records(&plain), [(3, 0), (5, 0), (6, 0)]);
    assert_eq!(delete_compacted(&mut pinned), 0, "a dump runs");
    assert_eq!(records(&pinned), [(2, 0), (3, 0), (4, 0), (5, 0), (6, 0)]);
    // What the store reports does not depend on the leftovers.
    assert_eq!(plain.hash_kv(0).unwrap(), pinned.hash_kv(0).unwrap());
    assert_eq!(plain.hash_kv(5).unwrap(), pinned.hash_kv(5).unwrap());
    let all = KeyRange::new(b"\0", b"\0");
    assert_eq!(
        plain.events_between(5, 6, &all).unwrap(),
        pinned.events_between(5, 6, &all).unwrap(),
        "the tombstone at the compaction revision is in a watch's replay either way"
    );
    assert_eq!(plain.events_between(5, 6, &all).unwrap().len(), 2);
    pinned.unpin();
    assert_eq!(delete_compacted(&mut pinned), 0, "another dump still runs");
    pinned.unpin();
    assert_eq!(delete_compacted(&mut pinned), 2);
    assert_eq!(records(&pinned), records(&plain));
}

/// The delete kept at the compaction revision is left out of HashKV, as etcd leaves it, so a
/// member whose older build dropped it hashes the same.
#[test]
fn hash_kv_leaves_out_the_delete_kept_at_the_compaction_revision() {
    let (mut kept, mut dropped) = twins();
    for m in [&mut kept, &mut dropped] {
        compact(m, 5);
        delete_compacted(m);
    }
    let mut batch = WriteBatch::default();
    batch.delete(keys::rev_key(5, 0).to_vec());
    dropped.backend().write(batch).unwrap();
    assert_eq!(records(&kept), [(3, 0), (5, 0), (6, 0)]);
    assert_eq!(records(&dropped), [(3, 0), (6, 0)]);
    assert_eq!(kept.hash_kv(0).unwrap(), dropped.hash_kv(0).unwrap());
    assert_eq!(kept.hash_kv(6).unwrap(), dropped.hash_kv(6).unwrap());
}

#[test]
fn records_a_compaction_left_behind_are_removed_on_reload() {
    let (mut plain, mut pinned) = twins();
    compact(&mut plain, 5);
    delete_compacted(&mut plain);
    compact(&mut pinned, 5);
    // A crash before the deletes: the next start finds the compaction done but its records there.
    let reopened = Mvcc::open(pinned.backend().clone(), 2).unwrap();
    assert_eq!(records(&reopened), records(&plain));
    assert_eq!(reopened.compact_revision(), 5);
    assert_eq!(reopened.hash_kv(0).unwrap(), plain.hash_kv(0).unwrap());
}

/// A write checked for a user before an auth change committed is refused when it applies after
/// it, the same on every member, as is one checked while auth was off and applied once it is
/// on; the member's own writes are not checked. The auth state survives a reopen.
#[test]
fn writes_are_checked_again_against_the_auth_state_they_apply_in() {
    use crate::raft::pb::AuthChange;
    use crate::raft::pb::auth_change::Change;
    use keelson_etcdpb::authpb::Permission;
    use keelson_etcdpb::authpb::permission::Type as Perm;
    use keelson_etcdpb::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
        AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    };
    let backend = Arc::new(MemoryBackend::new());
    let mut m = Mvcc::open(backend.clone(), 2).unwrap();
    let auth = |m: &mut Mvcc, c: Change| {
        apply(m, Rq::Auth(AuthChange { change: Some(c) })).unwrap();
    };
    for user in ["root", "alice"] {
        auth(
            &mut m,
            Change::UserAdd(AuthUserAddRequest {
                name: user.into(),
                hashed_password: "h".into(),
                ..Default::default()
            }),
        );
    }
    auth(
        &mut m,
        Change::RoleAdd(AuthRoleAddRequest { name: "w".into() }),
    );
    auth(
        &mut m,
        Change::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: "w".into(),
            perm: Some(Permission {
                perm_type: Perm::Write as i32,
                key: b"a".to_vec(),
                range_end: vec![],
            }),
        }),
    );
    for (user, role) in [("alice", "w"), ("root", "root")] {
        auth(
            &mut m,
            Change::UserGrantRole(AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.into(),
            }),
        );
    }
    let write = |m: &mut Mvcc, user: &str, auth_revision: u64| {
        let resp = m.apply(&InternalRequest {
            request: Some(Rq::Put(PutRequest {
                key: b"a".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
            user: user.into(),
            auth_revision,
        });
        m.commit().unwrap();
        resp.response.unwrap()
    };
    let refused = |r: Rs| match r {
        Rs::Error(e) => StoreError::from_apply_code(e.code),
        other => panic!("applied: {other:?}"),
    };
    // Checked while auth was off (no user), applied after it went on.
    let off = m.auth().revision();
    auth(&mut m, Change::Enable(AuthEnableRequest {}));
    assert_eq!(
        m.auth().revision(),
        off,
        "enable does not move the revision"
    );
    assert!(matches!(
        refused(write(&mut m, "", off)),
        StoreError::UserEmpty
    ));
    let at = m.auth().revision();
    assert!(matches!(write(&mut m, "alice", at), Rs::Put(_)));
    // A change alice's permissions do not depend on still makes her checked write old.
    auth(
        &mut m,
        Change::RoleAdd(AuthRoleAddRequest { name: "x".into() }),
    );
    assert!(matches!(
        refused(write(&mut m, "alice", at)),
        StoreError::AuthOldRevision
    ));
    let now = m.auth().revision();
    assert!(matches!(write(&mut m, "alice", now), Rs::Put(_)));
    // As etcd's, only writes that touch keys are checked: an empty txn checked at the old
    // revision applies.
    let empty = m.apply(&InternalRequest {
        request: Some(Rq::Txn(TxnRequest::default())),
        user: "alice".into(),
        auth_revision: at,
    });
    m.commit().unwrap();
    assert!(matches!(empty.response, Some(Rs::Txn(_))), "{empty:?}");
    auth(
        &mut m,
        Change::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "w".into(),
            key: b"a".to_vec(),
            range_end: vec![],
        }),
    );
    // Checked before the revoke, or by an older build (no revision): refused.
    assert!(matches!(
        refused(write(&mut m, "alice", at + 1)),
        StoreError::AuthOldRevision
    ));
    assert!(matches!(
        refused(write(&mut m, "alice", 0)),
        StoreError::PermissionDenied
    ));
    // The member's own writes (no user, no revision): applied.
    put(&mut m, "a", "internal");
    let reopened = Mvcc::open(backend, 2).unwrap();
    assert!(reopened.auth().enabled());
    assert!(reopened.auth().is_root("root"));
    assert!(
        !reopened
            .auth()
            .permits("alice", crate::auth::Need::Write(b"a", b""))
    );
}

/// A client's change to the auth state is permitted or refused in the state it applies in, as
/// etcd's apply decides (`IsAdminPermitted`): with auth on it needs a user that exists and
/// holds the root role, whatever revision it was checked at; with auth off, anything goes.
/// Entries without a user or revision (a simple token's, or an older build's) are not checked.
#[test]
fn auth_changes_are_permitted_by_the_state_they_apply_in() {
    use crate::raft::pb::AuthChange;
    use crate::raft::pb::auth_change::Change;
    use keelson_etcdpb::etcdserverpb::{
        AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest,
        AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest,
    };
    let mut m = Mvcc::open(Arc::new(MemoryBackend::new()), 2).unwrap();
    let change = |m: &mut Mvcc, user: &str, auth_revision: u64, c: Change| {
        let resp = m.apply(&InternalRequest {
            request: Some(Rq::Auth(AuthChange { change: Some(c) })),
            user: user.into(),
            auth_revision,
        });
        m.commit().unwrap();
        match resp.response.unwrap() {
            Rs::Auth(_) => Ok(()),
            Rs::Error(e) => Err(StoreError::from_apply_code(e.code)),
            other => panic!("{other:?}"),
        }
    };
    let role = |name: &str| Change::RoleAdd(AuthRoleAddRequest { name: name.into() });
    let grant = |user: &str, role: &str| {
        Change::UserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
    };
    let rev = m.auth().revision();
    // Auth off: checked with no user, applied.
    for user in ["root", "alice", "bob"] {
        let add = Change::UserAdd(AuthUserAddRequest {
            name: user.into(),
            hashed_password: "h".into(),
            ..Default::default()
        });
        change(&mut m, "", rev, add).unwrap();
    }
    change(&mut m, "", rev, role("root")).unwrap();
    change(&mut m, "", rev, grant("root", "root")).unwrap();
    change(&mut m, "", rev, grant("alice", "root")).unwrap();
    change(&mut m, "", rev, Change::Enable(AuthEnableRequest {})).unwrap();
    // Auth on: a change checked while it was off, without a user, is refused.
    let on = m.auth().revision();
    let refused = |r: std::result::Result<(), StoreError>| r.unwrap_err().to_string();
    assert_eq!(
        refused(change(&mut m, "", rev, role("a"))),
        StoreError::UserEmpty.to_string()
    );
    assert_eq!(
        refused(change(&mut m, "bob", on, role("a"))),
        StoreError::PermissionDenied.to_string()
    );
    assert_eq!(
        refused(change(&mut m, "carol", on, role("a"))),
        StoreError::UserNotFound.to_string()
    );
    // Root, even at an old revision: admin changes look at the user alone.
    change(&mut m, "alice", rev, role("a")).unwrap();
    assert!(m.auth().revision() > on);
    // Alice's root role revoked: her change checked before the revoke is refused when it
    // applies after it.
    let revoke = Change::UserRevokeRole(AuthUserRevokeRoleRequest {
        name: "alice".into(),
        role: "root".into(),
    });
    change(&mut m, "root", on, revoke).unwrap();
    assert_eq!(
        refused(change(&mut m, "alice", on, role("b"))),
        StoreError::PermissionDenied.to_string()
    );
    assert!(m.auth().role("b").is_none());
    // An entry without user and revision (a simple token's, the member's own, or an older
    // build's) is not checked.
    let token = Change::Authenticate(crate::raft::pb::SimpleToken {
        user: "bob".into(),
        token: "t.1".into(),
        auth_revision: m.auth().revision(),
    });
    change(&mut m, "", 0, token).unwrap();
    assert_eq!(m.tokens().user("t.1").as_deref(), Some("bob"));
    change(&mut m, "", 0, role("c")).unwrap();
    // Auth turned off: a change checked while it was on, for a user who may not, applies.
    change(&mut m, "root", on, Change::Disable(AuthDisableRequest {})).unwrap();
    change(&mut m, "bob", on, role("d")).unwrap();
    change(&mut m, "", on, Change::Enable(AuthEnableRequest {})).unwrap();
    assert!(m.auth().enabled());
}

#[test]
fn read_txn_answers_as_applying_a_read_only_txn_does() {
    let mut m = mvcc();
    put(&mut m, "a", "1"); // 2
    put(&mut m, "b", "2"); // 3
    let read = |k: &str, rev: i64| RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        })),
    };
    let nested = |cmp_rev: i64| RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            compare: vec![cmp_mod("b", cmp_rev)],
            success: vec![read("b", 0)],
            failure: vec![read("a", 2)],
        })),
    };
    for (outer, inner) in [(2, 3), (2, 9), (9, 3), (9, 9)] {
        let t = TxnRequest {
            compare: vec![cmp_mod("a", outer)],
            success: vec![read("a", 0), nested(inner)],
            failure: vec![nested(inner), read("b", 0)],
        };
        let read_only = m.read_txn(&t).unwrap();
        let Rs::Txn(applied) = apply(&mut m, Rq::Txn(t)).unwrap() else {
            panic!()
        };
        assert_eq!(read_only, applied, "compares {outer}/{inner}");
        assert_eq!(m.current_revision(), 3);
    }
    // Errors as applying gives them: a compacted revision, a write.
    compact(&mut m, 3);
    let t = TxnRequest {
        success: vec![read("a", 2)],
        ..Default::default()
    };
    assert!(matches!(m.read_txn(&t), Err(StoreError::Compacted)));
    let t = TxnRequest {
        success: vec![op_put_kv("a", "x")],
        ..Default::default()
    };
    assert!(matches!(
        m.read_txn(&t),
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(m.current_revision(), 3);
}

#[test]
fn a_txn_whose_range_fails_writes_nothing() {
    let mut m = mvcc();
    put(&mut m, "a", "1"); // 2
    m.take_events();
    let range = |rev: i64| RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: "a".into(),
            revision: rev,
            ..Default::default()
        })),
    };
    // A put, then a range at a future revision (even the txn's own): etcd refuses the whole
    // txn before writing anything.
    for rev in [3, 99] {
        let err = apply(
            &mut m,
            txn(vec![], vec![op_put_kv("b", "x"), range(rev)], vec![]),
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::FutureRev), "{err:?}");
        assert_eq!(m.current_revision(), 2);
        assert_eq!(get(&m, "b", 0).unwrap(), None);
    }
    let events = m.take_events();
    assert!(events.is_none(), "no watch event for a refused txn");
    // The next write takes revision 3, and its record is its own.
    assert_eq!(put(&mut m, "c", "3"), 3);
    assert_eq!(get(&m, "c", 0).unwrap().unwrap().value, b"3");
    assert_eq!(get(&m, "a", 0).unwrap().unwrap().value, b"1");
}
