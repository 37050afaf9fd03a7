//! Differential: one scripted client session run against a real etcd 3.4 cluster (Debian's
//! etcd-server) and against keelson-store, both three members started with the same flags.
//! Every response is written down with what differs by nature (cluster and member IDs, raft
//! terms, a lease's remaining seconds, how a watch groups its events) left out, and the two
//! transcripts must be equal: revisions, versions, values, errors (code and message) and
//! watch events.

use std::fmt::Debug;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keelson_chaos::cluster::{Cluster, Target};
use keelson_etcdpb::etcdserverpb::cluster_client::ClusterClient;
use keelson_etcdpb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keelson_etcdpb::etcdserverpb::kv_client::KvClient;
use keelson_etcdpb::etcdserverpb::lease_client::LeaseClient;
use keelson_etcdpb::etcdserverpb::range_request::{SortOrder, SortTarget};
use keelson_etcdpb::etcdserverpb::watch_client::WatchClient;
use keelson_etcdpb::etcdserverpb::watch_create_request::FilterType;
use keelson_etcdpb::etcdserverpb::watch_request::RequestUnion;
use keelson_etcdpb::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest, PutRequest, RangeRequest,
    RequestOp, ResponseHeader, TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse,
    request_op,
};
use keelson_etcdpb::v3electionpb::election_client::ElectionClient;
use keelson_etcdpb::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use keelson_etcdpb::v3lockpb::lock_client::LockClient;
use keelson_etcdpb::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

/// Records one step: the response with its header's identities cleared, or the error.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    /// Records a call's response message (or error).
    fn add<T: Debug>(
        &mut self,
        step: &str,
        r: Result<tonic::Response<T>, tonic::Status>,
    ) -> Option<T> {
        self.note(step, r.map(tonic::Response::into_inner))
    }

    fn note<T: Debug>(&mut self, step: &str, r: Result<T, tonic::Status>) -> Option<T> {
        match r {
            Ok(v) => {
                let text = scrub(&format!("{v:?}"));
                self.0.push(format!("{step}: {text}"));
                Some(v)
            }
            Err(s) => {
                self.0
                    .push(format!("{step}: ERROR {:?} {}", s.code(), s.message()));
                None
            }
        }
    }
}

/// Clears what differs between two clusters by nature from a response's Debug text.
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // `name: <number>` for the fields that are identities, not data.
    while let Some(pos) = ["cluster_id: ", "member_id: ", "raft_term: ", "ttl: "]
        .iter()
        .filter_map(|f| rest.find(f).map(|p| (p, f.len())))
        .min()
        .map(|(p, l)| (p, p + l))
    {
        let (start, value) = pos;
        // `granted_ttl` is data; only a bare `ttl` (the seconds left) is cleared.
        let bare_ttl = rest[start..].starts_with("ttl: ") && rest[..start].ends_with("granted_");
        out.push_str(&rest[..value]);
        rest = &rest[value..];
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        if bare_ttl {
            out.push_str(&rest[..digits]);
        } else {
            out.push('_');
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn span(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(key, value))),
    }
}

fn op_get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(get(key))),
    }
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        key: key.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        ..Default::default()
    }
}

/// Every watch event from `start` on `key`..`end` until the stream reaches `until`, flattened
/// (how events are grouped into responses is the server's choice), plus the first response's
/// compaction/cancel fields.
async fn watch_events(
    ch: Channel,
    create: WatchCreateRequest,
    until: i64,
) -> Result<Vec<String>, tonic::Status> {
    let mut w = WatchClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .unwrap();
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(msg) = tokio::time::timeout(left, stream.message()).await else {
            out.push("(timed out)".to_string());
            return Ok(out);
        };
        let Some(r): Option<WatchResponse> = msg? else {
            out.push("(stream ended)".to_string());
            return Ok(out);
        };
        if r.created || r.canceled || r.compact_revision != 0 {
            out.push(format!(
                "created={} canceled={} compact_revision={} reason={:?}",
                r.created, r.canceled, r.compact_revision, r.cancel_reason
            ));
            if r.canceled {
                return Ok(out);
            }
        }
        for e in &r.events {
            out.push(scrub(&format!("{e:?}")));
        }
        if r.events
            .last()
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
            >= Some(until)
        {
            return Ok(out);
        }
    }
}

/// A watch on a quiet key, then a ProgressRequest: the progress response (no events) says the
/// revision the stream has reached.
async fn watch_progress(ch: Channel) -> Result<String, tonic::Status> {
    let mut w = WatchClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "quiet".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let created = stream.message().await?.expect("a created response");
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(
            keelson_etcdpb::etcdserverpb::WatchProgressRequest {},
        )),
    })
    .await
    .unwrap();
    let progress = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no progress response"))??
        .expect("a progress response");
    Ok(format!(
        "created watch_id={} created={}; progress watch_id={} events={} revision={}",
        created.watch_id,
        created.created,
        progress.watch_id,
        progress.events.len(),
        progress.header.map_or(0, |h| h.revision)
    ))
}

async fn session(endpoint: &str) -> Vec<String> {
    let ch = Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    let mut t = Transcript::default();

    // Puts: revisions and versions from a new cluster's first write (revision 2).
    t.add("put a", kv.put(put("a", "1")).await);
    t.add(
        "put a prev_kv",
        kv.put(PutRequest {
            prev_kv: true,
            ..put("a", "2")
        })
        .await,
    );
    for (k, v) in [
        ("b", "1"),
        ("c", "1"),
        ("d/x", "1"),
        ("d/y", "2"),
        ("e", ""),
    ] {
        t.add(&format!("put {k}"), kv.put(put(k, v)).await);
    }

    // Ranges with every option.
    t.add("get a", kv.range(get("a")).await);
    t.add("get missing", kv.range(get("zz")).await);
    t.add(
        "range a..e limit 2",
        kv.range(RangeRequest {
            limit: 2,
            ..span("a", "e")
        })
        .await,
    );
    t.add(
        "range all by mod desc",
        kv.range(RangeRequest {
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Mod as i32,
            ..span("\0", "\0")
        })
        .await,
    );
    t.add(
        "range by value asc",
        kv.range(RangeRequest {
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Value as i32,
            ..span("a", "\0")
        })
        .await,
    );
    t.add(
        "range keys_only",
        kv.range(RangeRequest {
            keys_only: true,
            ..span("a", "z")
        })
        .await,
    );
    t.add(
        "range count_only",
        kv.range(RangeRequest {
            count_only: true,
            ..span("a", "z")
        })
        .await,
    );
    t.add(
        "range at revision 2",
        kv.range(RangeRequest {
            revision: 2,
            ..span("a", "z")
        })
        .await,
    );
    t.add(
        "range min_mod 4 max_create 6",
        kv.range(RangeRequest {
            min_mod_revision: 4,
            max_create_revision: 6,
            ..span("a", "z")
        })
        .await,
    );
    t.add("range prefix d/", kv.range(span("d/", "d0")).await);
    t.add(
        "range serializable",
        kv.range(RangeRequest {
            serializable: true,
            ..get("b")
        })
        .await,
    );

    // Deletes.
    t.add(
        "delete b prev_kv",
        kv.delete_range(DeleteRangeRequest {
            key: "b".into(),
            prev_kv: true,
            ..Default::default()
        })
        .await,
    );
    t.add(
        "delete missing",
        kv.delete_range(DeleteRangeRequest {
            key: "zz".into(),
            ..Default::default()
        })
        .await,
    );
    t.add(
        "delete prefix d/",
        kv.delete_range(DeleteRangeRequest {
            key: "d/".into(),
            range_end: "d0".into(),
            prev_kv: true,
        })
        .await,
    );
    t.add("put b again", kv.put(put("b", "2")).await);

    // Transactions: every compare target, both branches, a nested txn.
    use CompareResult::*;
    use CompareTarget::*;
    t.add(
        "txn value and version",
        kv.txn(TxnRequest {
            compare: vec![
                cmp("a", Value, Equal, TargetUnion::Value("2".into())),
                cmp("a", Version, Greater, TargetUnion::Version(1)),
            ],
            success: vec![op_put("a", "3"), op_get("a")],
            failure: vec![op_get("b")],
        })
        .await,
    );
    t.add(
        "txn create and mod fail",
        kv.txn(TxnRequest {
            compare: vec![
                cmp("b", Create, Equal, TargetUnion::CreateRevision(3)),
                cmp("c", Mod, Less, TargetUnion::ModRevision(100)),
            ],
            success: vec![op_put("x", "no")],
            failure: vec![op_get("b"), op_put("f", "1")],
        })
        .await,
    );
    t.add(
        "txn value of a missing key",
        kv.txn(TxnRequest {
            compare: vec![cmp(
                "nokey",
                Value,
                NotEqual,
                TargetUnion::Value("v".into()),
            )],
            success: vec![op_get("a")],
            failure: vec![op_get("c")],
        })
        .await,
    );
    t.add(
        "txn nested, reads before and after writes",
        kv.txn(TxnRequest {
            compare: vec![
                cmp("a", Lease, Equal, TargetUnion::Lease(0)),
                cmp("nokey", Version, Equal, TargetUnion::Version(0)),
            ],
            success: vec![
                op_get("a"),
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: "nothing".into(),
                            ..Default::default()
                        },
                    )),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(TxnRequest {
                        compare: vec![cmp("c", Value, Equal, TargetUnion::Value("1".into()))],
                        success: vec![op_get("g"), op_put("g", "nested"), op_get("g")],
                        failure: vec![],
                    })),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: "nothing".into(),
                            ..Default::default()
                        },
                    )),
                },
                op_get("g"),
            ],
            failure: vec![],
        })
        .await,
    );
    t.add(
        "txn compare over a range",
        kv.txn(TxnRequest {
            compare: vec![Compare {
                range_end: "z".into(),
                ..cmp("a", Version, Greater, TargetUnion::Version(0))
            }],
            success: vec![op_get("a")],
            failure: vec![op_get("c")],
        })
        .await,
    );
    t.add(
        "txn read-only",
        kv.txn(TxnRequest {
            compare: vec![],
            success: vec![op_get("a"), op_get("g")],
            failure: vec![],
        })
        .await,
    );

    // Bad input: etcd's codes and messages, and nothing changes.
    t.add("put empty key", kv.put(put("", "v")).await);
    t.add(
        "range future revision",
        kv.range(RangeRequest {
            revision: 999,
            ..get("a")
        })
        .await,
    );
    t.add(
        "txn too many ops",
        kv.txn(TxnRequest {
            success: (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect(),
            ..Default::default()
        })
        .await,
    );
    t.add(
        "txn duplicate key",
        kv.txn(TxnRequest {
            success: vec![op_put("dup", "1"), op_put("dup", "2")],
            ..Default::default()
        })
        .await,
    );
    t.add(
        "put unknown lease",
        kv.put(PutRequest {
            lease: 0x4242,
            ..put("l", "v")
        })
        .await,
    );
    t.add(
        "put over --max-request-bytes",
        kv.put(put("big", &"v".repeat(1_600_000))).await,
    );
    t.add(
        "put ignore_value missing key",
        kv.put(PutRequest {
            ignore_value: true,
            ..put("nokey", "")
        })
        .await,
    );
    t.add(
        "put ignore_lease with a lease",
        kv.put(PutRequest {
            ignore_lease: true,
            lease: 5,
            ..put("a", "v")
        })
        .await,
    );
    t.add(
        "put ignore_value keeps the value",
        kv.put(PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put("a", "")
        })
        .await,
    );
    t.add(
        "revoke unknown lease",
        lease.lease_revoke(LeaseRevokeRequest { id: 0x4242 }).await,
    );
    t.add(
        "lease ttl too large",
        lease
            .lease_grant(LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0x99,
            })
            .await,
    );

    // Leases with a chosen ID: attach, time to live with keys, list, revoke.
    t.add(
        "lease grant",
        lease
            .lease_grant(LeaseGrantRequest {
                ttl: 60,
                id: 0x1234,
            })
            .await,
    );
    t.add(
        "lease grant twice",
        lease
            .lease_grant(LeaseGrantRequest {
                ttl: 60,
                id: 0x1234,
            })
            .await,
    );
    t.add(
        "put with lease",
        kv.put(PutRequest {
            lease: 0x1234,
            ..put("leased", "v")
        })
        .await,
    );
    t.add(
        "txn compare lease",
        kv.txn(TxnRequest {
            compare: vec![cmp("leased", Lease, Equal, TargetUnion::Lease(0x1234))],
            success: vec![op_get("leased")],
            failure: vec![],
        })
        .await,
    );
    t.add(
        "lease time to live",
        lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: 0x1234,
                keys: true,
            })
            .await,
    );
    t.add(
        "lease leases",
        lease.lease_leases(LeaseLeasesRequest {}).await,
    );
    t.add(
        "lease revoke",
        lease.lease_revoke(LeaseRevokeRequest { id: 0x1234 }).await,
    );
    t.add("get leased after revoke", kv.range(get("leased")).await);
    t.add(
        "lease time to live revoked",
        lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: 0x1234,
                keys: true,
            })
            .await,
    );

    // Watches: the whole history from revision 1 with prev_kv, a filtered one, then
    // compaction and a watch from before it.
    let now = kv.range(get("a")).await.unwrap().into_inner();
    let now = now.header.map_or(0, |h: ResponseHeader| h.revision);
    let history = watch_events(
        ch.clone(),
        WatchCreateRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            start_revision: 1,
            prev_kv: true,
            ..Default::default()
        },
        now,
    )
    .await;
    t.note("watch all from 1", history);
    let deletes = watch_events(
        ch.clone(),
        WatchCreateRequest {
            key: "a".into(),
            range_end: "z".into(),
            start_revision: 1,
            filters: vec![FilterType::Noput as i32],
            ..Default::default()
        },
        now,
    )
    .await;
    t.note("watch deletes only", deletes);
    t.add(
        "compact",
        kv.compact(CompactionRequest {
            revision: now - 3,
            physical: true,
        })
        .await,
    );
    t.add(
        "compact again",
        kv.compact(CompactionRequest {
            revision: now - 3,
            physical: false,
        })
        .await,
    );
    t.add(
        "compact future",
        kv.compact(CompactionRequest {
            revision: now + 100,
            physical: false,
        })
        .await,
    );
    t.add(
        "range compacted revision",
        kv.range(RangeRequest {
            revision: 2,
            ..get("a")
        })
        .await,
    );
    let compacted = watch_events(
        ch.clone(),
        WatchCreateRequest {
            key: "a".into(),
            start_revision: 2,
            ..Default::default()
        },
        now,
    )
    .await;
    t.note("watch from compacted", compacted);
    t.note("watch progress request", watch_progress(ch.clone()).await);
    // Left out: HashKV (keelson hashes its own record layout, not bbolt's, so hashes agree
    // between keelson members only) and the alarm list (etcd 3.4 sends it without a header).

    // Lock and Election with chosen leases.
    let mut locks = LockClient::new(ch.clone());
    let mut elections = ElectionClient::new(ch.clone());
    t.add(
        "lease for lock",
        lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0x51 })
            .await,
    );
    let held = t.add(
        "lock",
        locks
            .lock(LockRequest {
                name: "job".into(),
                lease: 0x51,
            })
            .await,
    );
    t.add(
        "unlock",
        locks
            .unlock(UnlockRequest {
                key: held.map(|h| h.key).unwrap_or_default(),
            })
            .await,
    );
    t.add(
        "lock unknown lease",
        locks
            .lock(LockRequest {
                name: "job".into(),
                lease: 0x52,
            })
            .await,
    );
    t.add(
        "election no leader",
        elections.leader(LeaderRequest { name: "ev".into() }).await,
    );
    let won = t.add(
        "campaign",
        elections
            .campaign(CampaignRequest {
                name: "ev".into(),
                lease: 0x51,
                value: "p1".into(),
            })
            .await,
    );
    let leader = won.and_then(|w| w.leader).unwrap_or_default();
    t.add(
        "proclaim",
        elections
            .proclaim(ProclaimRequest {
                leader: Some(leader.clone()),
                value: "p2".into(),
            })
            .await,
    );
    t.add(
        "leader",
        elections.leader(LeaderRequest { name: "ev".into() }).await,
    );
    t.add(
        "proclaim stale",
        elections
            .proclaim(ProclaimRequest {
                leader: Some(LeaderKey {
                    rev: leader.rev + 100,
                    ..leader.clone()
                }),
                value: "p3".into(),
            })
            .await,
    );
    t.add(
        "proclaim without leader",
        elections
            .proclaim(ProclaimRequest {
                leader: None,
                value: "p3".into(),
            })
            .await,
    );
    t.add(
        "resign",
        elections
            .resign(ResignRequest {
                leader: Some(leader),
            })
            .await,
    );
    t.add(
        "resign without leader",
        elections.resign(ResignRequest { leader: None }).await,
    );
    t.add(
        "leader after resign",
        elections.leader(LeaderRequest { name: "ev".into() }).await,
    );
    membership_session(&mut t, ch.clone()).await;
    auth_session(&mut t, ch).await;
    t.0
}

/// The Cluster API's answers to changes it must refuse, and to an update that changes nothing
/// (members are recorded by count: their URLs hold each run's own ports).
async fn membership_session(t: &mut Transcript, ch: Channel) {
    // Past the 5 s every voter must have been connected for before an add (the strict
    // reconfiguration check), so the add below is judged on its URL in both.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut cluster = ClusterClient::new(ch);
    let list = cluster
        .member_list(MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner();
    t.note("member list", Ok::<_, tonic::Status>(list.members.len()));
    let first = list.members[0].clone();
    let second_peer = list.members[1].peer_ur_ls.clone();
    const UNKNOWN: u64 = 0x0dea_dbee_f000_0001;
    t.add(
        "member update unknown",
        cluster
            .member_update(MemberUpdateRequest {
                id: UNKNOWN,
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
            })
            .await,
    );
    t.add(
        "member remove unknown",
        cluster
            .member_remove(MemberRemoveRequest { id: UNKNOWN })
            .await,
    );
    t.add(
        "member promote unknown",
        cluster
            .member_promote(MemberPromoteRequest { id: UNKNOWN })
            .await,
    );
    t.add(
        "member promote a voter",
        cluster
            .member_promote(MemberPromoteRequest { id: first.id })
            .await,
    );
    t.add(
        "member add a peer URL in use",
        cluster
            .member_add(MemberAddRequest {
                peer_ur_ls: first.peer_ur_ls.clone(),
                is_learner: false,
            })
            .await,
    );
    t.add(
        "member add a bad URL",
        cluster
            .member_add(MemberAddRequest {
                peer_ur_ls: vec!["not a url".into()],
                is_learner: false,
            })
            .await,
    );
    t.add(
        "member update to another member's URL",
        cluster
            .member_update(MemberUpdateRequest {
                id: first.id,
                peer_ur_ls: second_peer,
            })
            .await,
    );
    let same = cluster
        .member_update(MemberUpdateRequest {
            id: first.id,
            peer_ur_ls: first.peer_ur_ls.clone(),
        })
        .await
        .map(|r| r.into_inner().members.len());
    t.note("member update to its own URLs", same);
}

/// A request carrying a token, as etcd's clients send it.
pub fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("token", token.parse().expect("a token is ASCII"));
    r
}

type AuthResult =
    Result<tonic::Response<keelson_etcdpb::etcdserverpb::AuthenticateResponse>, tonic::Status>;

/// Records an Authenticate call by its header (tokens differ by nature); returns the token.
fn login(t: &mut Transcript, step: &str, r: AuthResult) -> String {
    let r = r.map(tonic::Response::into_inner);
    t.note(step, r.as_ref().map(|a| a.header).map_err(Clone::clone));
    r.map(|a| a.token).unwrap_or_default()
}

/// Users, roles, permissions, `auth enable`, and what tokens then allow (at the end: with
/// auth on, every later step would need a token). AuthStatus is left out: etcd 3.4 does not
/// have it (3.5 added it; `tests/store/auth.rs` checks keelson's).
async fn auth_session(t: &mut Transcript, ch: Channel) {
    use keelson_etcdpb::authpb::Permission;
    use keelson_etcdpb::authpb::permission::Type as Perm;
    use keelson_etcdpb::etcdserverpb::auth_client::AuthClient;
    use keelson_etcdpb::etcdserverpb::{
        AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleGetRequest,
        AuthRoleGrantPermissionRequest, AuthRoleListRequest, AuthRoleRevokePermissionRequest,
        AuthUserAddRequest, AuthUserDeleteRequest, AuthUserGetRequest, AuthUserGrantRoleRequest,
        AuthUserListRequest, AuthUserRevokeRoleRequest, AuthenticateRequest,
    };
    let mut auth = AuthClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    let user = |name: &str, password: &str| AuthUserAddRequest {
        name: name.into(),
        password: password.into(),
        ..Default::default()
    };
    let grant = |role: &str, perm: Perm, key: &str, end: &str| AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: perm as i32,
            key: key.into(),
            range_end: end.into(),
        }),
    };
    let grant_role = |u: &str, r: &str| AuthUserGrantRoleRequest {
        user: u.into(),
        role: r.into(),
    };
    let role = |name: &str| AuthRoleAddRequest { name: name.into() };
    let credentials = |name: &str, password: &str| AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    t.add("user add root", auth.user_add(user("root", "rootpw")).await);
    t.add(
        "user add alice",
        auth.user_add(user("alice", "alicepw")).await,
    );
    t.add(
        "user add alice again",
        auth.user_add(user("alice", "x")).await,
    );
    t.add("user add empty name", auth.user_add(user("", "x")).await);
    t.add("role add app", auth.role_add(role("app")).await);
    t.add("role add app again", auth.role_add(role("app")).await);
    t.add("role add empty", auth.role_add(role("")).await);
    t.add(
        "grant prefix",
        auth.role_grant_permission(grant("app", Perm::Readwrite, "app/", "app0"))
            .await,
    );
    t.add(
        "grant one key",
        auth.role_grant_permission(grant("app", Perm::Read, "shared", ""))
            .await,
    );
    t.add(
        "grant write-only prefix",
        auth.role_grant_permission(grant("app", Perm::Write, "wo/", "wo0"))
            .await,
    );
    t.add(
        "grant to a missing role",
        auth.role_grant_permission(grant("nope", Perm::Read, "k", ""))
            .await,
    );
    t.add(
        "grant role",
        auth.user_grant_role(grant_role("alice", "app")).await,
    );
    t.add(
        "grant a missing role",
        auth.user_grant_role(grant_role("alice", "nope")).await,
    );
    t.add(
        "grant to a missing user",
        auth.user_grant_role(grant_role("bob", "app")).await,
    );
    let get_user = |name: &str| AuthUserGetRequest { name: name.into() };
    t.add("user get", auth.user_get(get_user("alice")).await);
    t.add("user get missing", auth.user_get(get_user("bob")).await);
    let get_role = |name: &str| AuthRoleGetRequest { role: name.into() };
    t.add("role get", auth.role_get(get_role("app")).await);
    t.add("role get missing", auth.role_get(get_role("nope")).await);
    t.add("user list", auth.user_list(AuthUserListRequest {}).await);
    t.add("role list", auth.role_list(AuthRoleListRequest {}).await);
    t.add(
        "auth enable without the root role",
        auth.auth_enable(AuthEnableRequest {}).await,
    );
    t.add("role add root", auth.role_add(role("root")).await);
    t.add(
        "grant root",
        auth.user_grant_role(grant_role("root", "root")).await,
    );
    t.add("auth enable", auth.auth_enable(AuthEnableRequest {}).await);
    t.add(
        "authenticate wrong password",
        auth.authenticate(credentials("alice", "wrong")).await,
    );
    t.add(
        "authenticate unknown user",
        auth.authenticate(credentials("bob", "x")).await,
    );
    let r = auth.authenticate(credentials("alice", "alicepw")).await;
    let alice = login(t, "authenticate alice", r);
    t.add(
        "alice put app/x",
        kv.put(with_token(&alice, put("app/x", "1"))).await,
    );
    t.add(
        "alice put shared",
        kv.put(with_token(&alice, put("shared", "1"))).await,
    );
    t.add(
        "alice get shared",
        kv.range(with_token(&alice, get("shared"))).await,
    );
    t.add(
        "alice put write-only",
        kv.put(with_token(&alice, put("wo/k", "1"))).await,
    );
    let prev = PutRequest {
        prev_kv: true,
        ..put("wo/k", "2")
    };
    t.add(
        "alice put write-only asking prev_kv",
        kv.put(with_token(&alice, prev)).await,
    );
    let del = DeleteRangeRequest {
        key: "wo/".into(),
        range_end: "wo0".into(),
        prev_kv: true,
    };
    t.add(
        "alice delete write-only asking prev_kv",
        kv.delete_range(with_token(&alice, del)).await,
    );
    t.add(
        "alice range beyond her prefix",
        kv.range(with_token(&alice, span("app/", "b"))).await,
    );
    let txn = TxnRequest {
        compare: vec![],
        success: vec![op_put("app/y", "2")],
        failure: vec![op_put("other", "3")],
    };
    t.add(
        "alice txn touching another key",
        kv.txn(with_token(&alice, txn)).await,
    );
    t.add(
        "alice user list",
        auth.user_list(with_token(&alice, AuthUserListRequest {}))
            .await,
    );
    t.add("get without a token", kv.range(get("shared")).await);
    t.add(
        "get with a bad token",
        kv.range(with_token("bogus.1", get("shared"))).await,
    );
    let r = auth.authenticate(credentials("root", "rootpw")).await;
    let root = login(t, "authenticate root", r);
    // Leases: a lease whose keys alice cannot all write is not hers to attach a key to, nor
    // to revoke (etcd's checkLeasePuts).
    let mut leases = LeaseClient::new(ch.clone());
    let grant_lease = |id: i64| LeaseGrantRequest { ttl: 600, id };
    let lease_put = |key: &str, lease: i64| PutRequest {
        lease,
        ..put(key, "l")
    };
    t.add(
        "root grants lease 7001",
        leases
            .lease_grant(with_token(&root, grant_lease(7001)))
            .await,
    );
    t.add(
        "root puts other on lease 7001",
        kv.put(with_token(&root, lease_put("other", 7001))).await,
    );
    t.add(
        "alice puts app/l on lease 7001",
        kv.put(with_token(&alice, lease_put("app/l", 7001))).await,
    );
    t.add(
        "alice grants lease 7002",
        leases
            .lease_grant(with_token(&alice, grant_lease(7002)))
            .await,
    );
    t.add(
        "alice puts app/l on lease 7002",
        kv.put(with_token(&alice, lease_put("app/l", 7002))).await,
    );
    t.add(
        "alice puts app/l2 on lease 7002 in a txn",
        kv.txn(with_token(
            &alice,
            TxnRequest {
                compare: vec![],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(lease_put("app/l2", 7002))),
                }],
                failure: vec![],
            },
        ))
        .await,
    );
    let ttl = |id: i64| LeaseTimeToLiveRequest { id, keys: true };
    let ttl_keys = |r: Result<tonic::Response<_>, tonic::Status>| {
        r.map(
            |r: tonic::Response<keelson_etcdpb::etcdserverpb::LeaseTimeToLiveResponse>| {
                let mut keys = r.into_inner().keys;
                keys.sort();
                tonic::Response::new(keys)
            },
        )
    };
    t.add(
        "alice asks lease 7001's keys",
        ttl_keys(
            leases
                .lease_time_to_live(with_token(&alice, ttl(7001)))
                .await,
        ),
    );
    t.add(
        "alice asks lease 7002's keys",
        ttl_keys(
            leases
                .lease_time_to_live(with_token(&alice, ttl(7002)))
                .await,
        ),
    );
    t.add(
        "alice revokes lease 7001",
        leases
            .lease_revoke(with_token(&alice, LeaseRevokeRequest { id: 7001 }))
            .await,
    );
    t.add(
        "alice revokes lease 7002",
        leases
            .lease_revoke(with_token(&alice, LeaseRevokeRequest { id: 7002 }))
            .await,
    );
    t.add(
        "root revokes lease 7001",
        leases
            .lease_revoke(with_token(&root, LeaseRevokeRequest { id: 7001 }))
            .await,
    );
    let revoke = || AuthRoleRevokePermissionRequest {
        role: "app".into(),
        key: "shared".into(),
        range_end: vec![],
    };
    t.add(
        "revoke permission",
        auth.role_revoke_permission(with_token(&root, revoke()))
            .await,
    );
    t.add(
        "revoke it again",
        auth.role_revoke_permission(with_token(&root, revoke()))
            .await,
    );
    let not_granted = AuthUserRevokeRoleRequest {
        name: "alice".into(),
        role: "root".into(),
    };
    t.add(
        "revoke a role not granted",
        auth.user_revoke_role(with_token(&root, not_granted)).await,
    );
    let root_user = AuthUserDeleteRequest {
        name: "root".into(),
    };
    t.add(
        "delete root while enabled",
        auth.user_delete(with_token(&root, root_user)).await,
    );
    t.add(
        "alice get shared after the revoke",
        kv.range(with_token(&alice, get("shared"))).await,
    );
    t.add(
        "auth disable",
        auth.auth_disable(with_token(&root, AuthDisableRequest {}))
            .await,
    );
    t.add("get after disable", kv.range(get("shared")).await);
}

/// Runs `session` on a real etcd and on keelson, each with a directory of its own; returns
/// (etcd's, keelson's).
async fn on_both<F, Fut>(session: F) -> (Vec<String>, Vec<String>)
where
    F: Fn(Target, PathBuf) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let dir = tempfile::tempdir().unwrap();
    let etcd = session(Target::Etcd("etcd".into()), dir.path().join("etcd")).await;
    let keelson = session(
        Target::Keelson(env!("CARGO_BIN_EXE_keelson").into()),
        dir.path().join("keelson"),
    )
    .await;
    (etcd, keelson)
}

async fn ready(endpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut kv) = KvClient::connect(endpoint.to_string()).await
            && kv.range(get("ready")).await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{endpoint} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn transcript(target: Target, dir: PathBuf) -> Vec<String> {
    let cluster = Cluster::start(target, 3, &dir, Default::default()).unwrap();
    for e in cluster.endpoints() {
        ready(&e).await;
    }
    // A member that is likely a follower in both, so forwarding is part of the session.
    session(&cluster.endpoints()[1]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_gets_the_same_responses_from_etcd_and_keelson() {
    let (etcd, keelson) = on_both(transcript).await;
    if let Ok(path) = std::env::var("KEELSON_DIFF_DUMP") {
        std::fs::write(format!("{path}.etcd"), etcd.join("\n")).unwrap();
        std::fs::write(format!("{path}.keelson"), keelson.join("\n")).unwrap();
    }
    let differing: Vec<String> = etcd
        .iter()
        .zip(&keelson)
        .filter(|(e, k)| e != k)
        .map(|(e, k)| format!("etcd:    {e}\nkeelson: {k}"))
        .collect();
    assert!(
        differing.is_empty() && etcd.len() == keelson.len(),
        "{} of {} steps differ:\n{}",
        differing.len(),
        etcd.len(),
        differing.join("\n\n")
    );
}

/// MemberAdd of a voter that will never start; the member count it answers.
async fn add_voter(c: &mut ClusterClient<Channel>) -> Result<usize, tonic::Status> {
    c.member_add(MemberAddRequest {
        peer_ur_ls: vec!["http://127.0.0.1:9".into()],
        is_learner: false,
    })
    .await
    .map(|r| r.into_inner().members.len())
}

/// Three members, every one serving and connected to the others for longer than the strict
/// reconfiguration check's 5 s; and which leads.
async fn settled(target: Target, dir: &std::path::Path) -> (Cluster, usize) {
    let cluster = Cluster::start(target, 3, dir, Default::default()).unwrap();
    for e in cluster.endpoints() {
        ready(&e).await;
    }
    // Every voter connected for longer than the strict check's 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader.is_none() && Instant::now() < deadline {
        leader = cluster.leader().await;
    }
    let leader = leader.expect("a leader");
    (cluster, leader)
}

/// With a follower down: what adding a voter, removing a voter the quorum needs, and removing
/// the member that is down get, in order; then whether the cluster still takes writes.
async fn reconfig_with_a_follower_down(target: Target, dir: PathBuf) -> Vec<String> {
    let (mut cluster, leader) = settled(target, &dir).await;
    let down = (leader + 1) % 3;
    let other = 3 - leader - down;
    let ch = Channel::from_shared(cluster.endpoints()[leader].clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut members = ClusterClient::new(ch.clone());
    let list = members
        .member_list(MemberListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .members;
    let id_of = |i: usize| {
        let peer = cluster.members[i].peer.clone();
        list.iter()
            .find(|m| m.peer_ur_ls.contains(&peer))
            .map(|m| m.id)
            .expect("listed")
    };
    let (down_id, other_id) = (id_of(down), id_of(other));
    cluster.kill(down);
    // Long enough for the leader to find the member gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut t = Transcript::default();
    // Through the live follower first: keelson forwards it to the leader, etcd's member judges
    // it from its own peer links; the answer must be the same.
    let follower = Channel::from_shared(cluster.endpoints()[other].clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    t.note(
        "add a voter through a follower",
        add_voter(&mut ClusterClient::new(follower)).await,
    );
    t.note("add a voter", add_voter(&mut members).await);
    t.note(
        "remove a live voter",
        members
            .member_remove(MemberRemoveRequest { id: other_id })
            .await
            .map(|r| r.into_inner().members.len()),
    );
    t.note(
        "remove the member that is down",
        members
            .member_remove(MemberRemoveRequest { id: down_id })
            .await
            .map(|r| r.into_inner().members.len()),
    );
    t.add("put after", KvClient::new(ch).put(put("after", "1")).await);
    t.0
}

/// Right after MoveLeader, adding a voter through the old leader. etcd's members keep streams
/// to every peer, so its new leader knows each has been up for long; keelson's followers
/// probe their peers to know as much (before, its new leader refused changes for 5 s).
async fn reconfig_right_after_a_leader_change(target: Target, dir: PathBuf) -> Vec<String> {
    use keelson_etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
    use keelson_etcdpb::etcdserverpb::{MoveLeaderRequest, StatusRequest};
    let (cluster, leader) = settled(target, &dir).await;
    let channel = |i: usize| {
        Channel::from_shared(cluster.endpoints()[i].clone())
            .unwrap()
            .connect_lazy()
    };
    let next = (leader + 1) % 3;
    let status = MaintenanceClient::new(channel(next))
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let target_id = status.header.unwrap().member_id;
    let mut t = Transcript::default();
    t.add(
        "move leader",
        MaintenanceClient::new(channel(leader))
            .move_leader(MoveLeaderRequest { target_id })
            .await,
    );
    let mut old_leader = ClusterClient::new(channel(leader));
    t.note("add a voter at once", add_voter(&mut old_leader).await);
    t.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_knows_how_long_its_peers_have_been_up_as_etcds_does() {
    let (etcd, keelson) = on_both(reconfig_right_after_a_leader_change).await;
    assert_eq!(keelson, etcd);
    // What etcd answered, so a change on both sides cannot pass unnoticed.
    assert!(etcd[1].ends_with(": 4"), "{etcd:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfiguration_checks_refuse_what_etcd_refuses() {
    let (etcd, keelson) = on_both(reconfig_with_a_follower_down).await;
    assert_eq!(keelson, etcd);
    // What etcd answered, so a change on both sides cannot pass unnoticed.
    assert!(etcd[0].contains("unhealthy cluster"), "{etcd:?}");
    assert!(etcd[1].contains("unhealthy cluster"), "{etcd:?}");
    assert!(etcd[2].contains("ERROR"), "{etcd:?}");
    assert!(!etcd[3].contains("ERROR"), "{etcd:?}");
}

/// The responses a watch gets until it has seen `events` events (or, with 0, its first response
/// after creation): each as its event count and `fragment` flag (progress notifications as
/// their header's revision too).
async fn watch_shapes(ch: Channel, create: WatchCreateRequest, events: usize) -> Vec<String> {
    let mut w = WatchClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .unwrap();
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut out, mut seen) = (Vec::new(), 0);
    loop {
        let r = match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(r))) => r,
            other => {
                out.push(format!("(no response: {other:?})"));
                return out;
            }
        };
        if r.created {
            out.push("created".into());
            continue;
        }
        seen += r.events.len();
        out.push(format!(
            "events={} fragment={} revision={}",
            r.events.len(),
            r.fragment,
            r.header.map_or(0, |h| h.revision)
        ));
        if seen >= events {
            return out;
        }
    }
}

/// A one-member cluster started with `flags`, once it answers, and a channel to it.
async fn one_member(target: Target, dir: &std::path::Path, flags: &[&str]) -> (Cluster, Channel) {
    let cluster = Cluster::start_with(target, 1, dir, Default::default(), flags).unwrap();
    let endpoint = cluster.endpoints()[0].clone();
    ready(&endpoint).await;
    let ch = Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    (cluster, ch)
}

/// One member with `--max-request-bytes=4096` (watch responses are fragmented, for a watch
/// that asks, at that and etcd's 512 KiB of gRPC overhead: a catch-up of 400 events of 1.5 KB
/// splits in two) and a 1 s progress notification interval.
async fn fragments_and_progress(target: Target, dir: PathBuf) -> Vec<String> {
    let flags = [
        "--max-request-bytes=4096",
        "--experimental-watch-progress-notify-interval=1s",
    ];
    let (_cluster, ch) = one_member(target, &dir, &flags).await;
    let mut kv = KvClient::new(ch.clone());
    let mut first = 0;
    for i in 0..400 {
        let r = kv.put(put(&format!("f/{i:03}"), &"x".repeat(1500))).await;
        let rev = r.unwrap().into_inner().header.map_or(0, |h| h.revision);
        if i == 0 {
            first = rev;
        }
    }
    let catch_up = |fragment: bool| WatchCreateRequest {
        key: "f/".into(),
        range_end: "f0".into(),
        start_revision: first,
        fragment,
        ..Default::default()
    };
    let mut out = vec!["fragmented:".to_string()];
    out.extend(watch_shapes(ch.clone(), catch_up(true), 400).await);
    out.push("whole:".into());
    out.extend(watch_shapes(ch.clone(), catch_up(false), 400).await);
    out.push("progress notification:".into());
    let quiet = WatchCreateRequest {
        key: "quiet".into(),
        progress_notify: true,
        ..Default::default()
    };
    out.extend(watch_shapes(ch, quiet, 0).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_and_progress_notifications_match_etcd() {
    let (etcd, keelson) = on_both(fragments_and_progress).await;
    assert_eq!(keelson, etcd);
    // What etcd answers: the catch-up in two fragments, and a progress notification.
    assert!(etcd.iter().any(|l| l.contains("fragment=true")), "{etcd:?}");
    assert!(
        etcd.contains(&"events=0 fragment=false revision=401".to_string()),
        "{etcd:?}"
    );
}

/// One member with `--auto-compaction-mode=periodic --auto-compaction-retention=2s`: once the
/// writes stop, the history up to the last write is compacted away, and reads, compactions and
/// watches below it are refused as etcd refuses them.
async fn auto_compaction(target: Target, dir: PathBuf) -> Vec<String> {
    let flags = [
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=2s",
    ];
    let (_cluster, ch) = one_member(target, &dir, &flags).await;
    let mut kv = KvClient::new(ch.clone());
    let mut last = 0;
    for i in 0..5 {
        let r = kv
            .put(put("ac", &i.to_string()))
            .await
            .unwrap()
            .into_inner();
        last = r.header.map_or(0, |h| h.revision);
    }
    let at = |revision: i64| RangeRequest {
        revision,
        ..get("ac")
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while kv.range(at(last - 1)).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "revision {} was not compacted within 40 s",
            last - 1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut t = Transcript::default();
    t.add("range below the compaction", kv.range(at(last - 1)).await);
    t.add("range at the last write", kv.range(at(last)).await);
    let compact = CompactionRequest {
        revision: last - 1,
        physical: false,
    };
    t.add("compact below it", kv.compact(compact).await);
    let mut w = WatchClient::new(ch);
    // The request stream stays open (a closed one ends the watch stream).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "ac".into(),
            start_revision: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut responses: Vec<WatchResponse> = Vec::new();
    while responses.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(r))) => responses.push(r),
            other => {
                t.0.push(format!("watch from revision 1: ended with {other:?}"));
                break;
            }
        }
    }
    for r in responses {
        t.note("watch from revision 1", Ok::<_, tonic::Status>(r));
    }
    drop(tx);
    t.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_matches_etcd() {
    let (etcd, keelson) = on_both(auto_compaction).await;
    assert_eq!(keelson, etcd);
    assert!(
        etcd[0].contains("required revision has been compacted"),
        "{etcd:?}"
    );
}

/// `msg` with `hasleader: true` in its metadata (clientv3's `WithRequireLeader`).
fn require_leader<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("hasleader", "true".parse().unwrap());
    r
}

/// Whether a call took the request timeout (7 s in both) rather than answering at once.
fn waited(started: Instant) -> &'static str {
    if started.elapsed() >= Duration::from_secs(5) {
        "(after the request timeout)"
    } else {
        "(at once)"
    }
}

/// Calls without `hasleader` to a member without a leader: a write, a linearizable read and a
/// lease grant wait out the request timeout; a serializable read answers.
async fn without_a_leader_unasked(t: &mut Transcript, ch: Channel) {
    let mut kv = KvClient::new(ch.clone());
    let started = Instant::now();
    t.add("put", kv.put(put("nl/after", "1")).await);
    t.0.push(waited(started).into());
    let started = Instant::now();
    t.add("linearizable range", kv.range(get("nl/before")).await);
    t.0.push(waited(started).into());
    let serializable = RangeRequest {
        serializable: true,
        ..get("nl/before")
    };
    t.add("serializable range", kv.range(serializable).await);
    let started = Instant::now();
    let grant = LeaseGrantRequest { ttl: 60, id: 0 };
    t.add("lease grant", LeaseClient::new(ch).lease_grant(grant).await);
    t.0.push(waited(started).into());
}

/// Three members, then the leader and one follower killed (or both followers): what the last member answers with
/// no leader to reach. Without `hasleader` a write, a lease grant and a linearizable read wait
/// out the request timeout, a serializable read answers; with it, calls are refused at once,
/// and a watch that asked for a leader ends once the member has gone without one.
async fn without_a_leader(target: Target, dir: PathBuf, keep_leader: bool) -> Vec<String> {
    use keelson_etcdpb::etcdserverpb::StatusRequest;
    use keelson_etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
    let mut cluster = Cluster::start(target, 3, &dir, Default::default()).unwrap();
    let endpoints = cluster.endpoints();
    for e in &endpoints {
        ready(e).await;
    }
    let mut kv = KvClient::connect(endpoints[0].clone()).await.unwrap();
    kv.put(put("nl/before", "1")).await.unwrap();
    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader.is_none() {
        for (i, e) in endpoints.iter().enumerate() {
            let mut m = MaintenanceClient::connect(e.clone()).await.unwrap();
            let s = m.status(StatusRequest {}).await.unwrap().into_inner();
            if s.leader != 0 && Some(s.leader) == s.header.map(|h| h.member_id) {
                leader = Some(i);
            }
        }
        assert!(Instant::now() < deadline, "no leader");
    }
    let leader = leader.unwrap();
    // The member kept: a follower, or the leader itself (which loses its followers).
    let last = if keep_leader {
        leader
    } else {
        (0..3).find(|i| *i != leader).unwrap()
    };
    let gone: Vec<usize> = (0..3).filter(|i| *i != last).collect();
    let ch = Channel::from_shared(endpoints[last].clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A watch that asks for a leader, made while there is one.
    let (wtx, wrx) = tokio::sync::mpsc::channel(1);
    let create = |key: &str| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            ..Default::default()
        })),
    };
    wtx.send(create("nl/")).await.unwrap();
    let mut watch = WatchClient::new(ch.clone())
        .watch(require_leader(tokio_stream::wrappers::ReceiverStream::new(
            wrx,
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().unwrap().created);
    for i in gone {
        cluster.kill(i);
    }
    // Past an election timeout: the last member knows it has no leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut kv = KvClient::new(ch.clone());
    let mut t = Transcript::default();
    let serializable = RangeRequest {
        serializable: true,
        ..get("nl/before")
    };
    if !keep_leader {
        without_a_leader_unasked(&mut t, ch.clone()).await;
    }
    let started = Instant::now();
    t.add(
        "put, hasleader",
        kv.put(require_leader(put("nl/after", "1"))).await,
    );
    t.add(
        "serializable range, hasleader",
        kv.range(require_leader(serializable)).await,
    );
    t.0.push(waited(started).into());
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let refused = WatchClient::new(ch)
        .watch(require_leader(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
        .await;
    t.add("new watch, hasleader", refused.map(|r| r.map(|_| "stream")));
    // The watch made before: ended (within three election timeouts of the loss).
    let ended = tokio::time::timeout(Duration::from_secs(15), watch.message()).await;
    t.0.push(match ended {
        Ok(Err(s)) => format!("earlier watch: ended with {:?} {}", s.code(), s.message()),
        other => format!("earlier watch: {other:?}"),
    });
    drop(wtx);
    t.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_leader_requests_are_refused_as_etcd_refuses_them() {
    let (etcd, keelson) = on_both(|t, d| without_a_leader(t, d, false)).await;
    assert_eq!(keelson, etcd);
    // A leader whose followers are gone: it counts as having none once a majority stops
    // answering, and steps down (etcd's CheckQuorum).
    let (etcd_alone, keelson_alone) = on_both(|t, d| without_a_leader(t, d, true)).await;
    assert_eq!(keelson_alone, etcd_alone);
    assert!(
        etcd_alone
            .iter()
            .any(|l| l == "earlier watch: ended with Unavailable etcdserver: no leader"),
        "{etcd_alone:#?}"
    );
    // What etcd answers (so the comparison is not of two equally wrong transcripts).
    for line in [
        "put: ERROR Unknown context deadline exceeded",
        "linearizable range: ERROR Unavailable etcdserver: request timed out",
        "put, hasleader: ERROR Unavailable etcdserver: no leader",
        "earlier watch: ended with Unavailable etcdserver: no leader",
    ] {
        assert!(etcd.iter().any(|l| l == line), "{line:?} in {etcd:#?}");
    }
}

/// The leader's Raft status as `member` reports it, polled until it knows none (up to 20 s).
async fn leader_gone(ch: Channel) -> &'static str {
    use keelson_etcdpb::etcdserverpb::StatusRequest;
    use keelson_etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut m = MaintenanceClient::new(ch);
    loop {
        if let Ok(s) = m.status(StatusRequest {}).await
            && s.get_ref().leader == 0
        {
            return "no leader";
        }
        if Instant::now() > deadline {
            return "a leader still known after 20 s";
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Five members; the three that are neither the leader nor a chosen follower killed, so the
/// leader lacks a quorum. What the two left report, then whether the cluster writes again
/// once the three are back. etcd's leader steps down (CheckQuorum): neither of the two has a
/// leader, calls that ask for one are refused, and watches that asked for one end.
async fn a_minority_with_the_leader(target: Target, dir: PathBuf) -> Vec<String> {
    let mut cluster = Cluster::start(target, 5, &dir, Default::default()).unwrap();
    let endpoints = cluster.endpoints();
    for e in &endpoints {
        ready(e).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(l) = cluster.leader().await {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower = (0..5).find(|i| *i != leader).unwrap();
    let kept = [("leader", leader), ("follower", follower)];
    let mut watches = Vec::new();
    for (_, i) in kept {
        let ch = Channel::from_shared(endpoints[i].clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (wtx, wrx) = tokio::sync::mpsc::channel(1);
        wtx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"cq/".to_vec(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut watch = WatchClient::new(ch.clone())
            .watch(require_leader(tokio_stream::wrappers::ReceiverStream::new(
                wrx,
            )))
            .await
            .unwrap()
            .into_inner();
        assert!(watch.message().await.unwrap().unwrap().created);
        watches.push((ch, wtx, watch));
    }
    let gone: Vec<usize> = (0..5).filter(|i| *i != leader && *i != follower).collect();
    for &i in &gone {
        cluster.kill(i);
    }
    let mut t = Transcript::default();
    for ((role, _), (ch, _, watch)) in kept.iter().zip(&mut watches) {
        t.0.push(format!("{role}: {}", leader_gone(ch.clone()).await));
        t.add(
            &format!("{role}: put, hasleader"),
            KvClient::new(ch.clone())
                .put(require_leader(put("cq/after", "1")))
                .await,
        );
        let ended = tokio::time::timeout(Duration::from_secs(20), watch.message()).await;
        t.0.push(match ended {
            Ok(Err(s)) => format!("{role}: watch ended with {:?} {}", s.code(), s.message()),
            other => format!("{role}: watch {other:?}"),
        });
    }
    for &i in &gone {
        cluster.start_member(i).unwrap();
    }
    // Healed: a write through the follower goes through again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kv = KvClient::new(watches[1].0.clone());
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            kv.put(require_leader(put("cq/healed", "1"))),
        )
        .await;
        if let Ok(Ok(_)) = r {
            t.0.push("healed: a put goes through".into());
            break;
        }
        if Instant::now() > deadline {
            t.0.push(format!("healed: no put in 60 s, the last: {r:?}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_a_quorum_steps_down_as_etcds_does() {
    let (etcd, keelson) = on_both(a_minority_with_the_leader).await;
    assert_eq!(keelson, etcd);
    for line in [
        "leader: no leader",
        "follower: no leader",
        "follower: put, hasleader: ERROR Unavailable etcdserver: no leader",
        "follower: watch ended with Unavailable etcdserver: no leader",
        "healed: a put goes through",
    ] {
        assert!(etcd.iter().any(|l| l == line), "{line:?} in {etcd:#?}");
    }
}

/// The claims of a JWT, unverified (what a client could read of it).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let claims = token.split('.').nth(1).unwrap_or("");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Three members with `--auth-token jwt,<options>` (a TTL of 4 s): a token from one member
/// works on another; it names the user and the auth revision; once the auth state changes it
/// is refused as old, and a new one works; it expires; a token whose claims were changed is
/// refused.
async fn jwt_session(target: Target, dir: PathBuf, options: &str) -> Vec<String> {
    use keelson_etcdpb::authpb::Permission;
    use keelson_etcdpb::authpb::permission::Type as Perm;
    use keelson_etcdpb::etcdserverpb::auth_client::AuthClient;
    use keelson_etcdpb::etcdserverpb::{
        AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
        AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest,
    };
    let flag = format!("--auth-token=jwt,{options},ttl=4s");
    let cluster = Cluster::start_with(target, 3, &dir, Default::default(), &[&flag]).unwrap();
    let mut channels = Vec::new();
    for e in cluster.endpoints() {
        ready(&e).await;
        channels.push(Channel::from_shared(e).unwrap().connect().await.unwrap());
    }
    let mut t = Transcript::default();
    let mut auth = AuthClient::new(channels[0].clone());
    let grant = |perm: Perm, key: &str, end: &str| AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: Some(Permission {
            perm_type: perm as i32,
            key: key.into(),
            range_end: end.into(),
        }),
    };
    for (name, password) in [("root", "rootpw"), ("alice", "alicepw")] {
        let add = AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        };
        t.add(&format!("user add {name}"), auth.user_add(add).await);
    }
    for (user, role) in [("root", "root"), ("alice", "app")] {
        let add = AuthRoleAddRequest { name: role.into() };
        t.add(&format!("role add {role}"), auth.role_add(add).await);
        let g = AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        t.add(
            &format!("grant {role} to {user}"),
            auth.user_grant_role(g).await,
        );
    }
    t.add(
        "grant app/",
        auth.role_grant_permission(grant(Perm::Readwrite, "app/", "app0"))
            .await,
    );
    t.add("auth enable", auth.auth_enable(AuthEnableRequest {}).await);
    let credentials = |name: &str, password: &str| AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    let alice = login(
        &mut t,
        "authenticate alice",
        auth.authenticate(credentials("alice", "alicepw")).await,
    );
    let claims = jwt_claims(&alice);
    let mut fields: Vec<&String> = claims
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    fields.sort();
    t.0.push(format!(
        "token: {} parts, claims {fields:?}, username {}, revision {}",
        alice.split('.').count(),
        claims["username"],
        claims["revision"]
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    t.0.push(format!(
        "exp within the ttl: {}",
        (1..=5).contains(&(exp - now))
    ));
    // Another member accepts it.
    let mut kv1 = KvClient::new(channels[1].clone());
    t.add(
        "put app/a on another member",
        kv1.put(with_token(&alice, put("app/a", "1"))).await,
    );
    t.add(
        "put outside the role",
        kv1.put(with_token(&alice, put("other", "1"))).await,
    );
    // A token whose claims were rewritten (root's name) keeps alice's signature: refused.
    let parts: Vec<&str> = alice.split('.').collect();
    let forged_claims = {
        use base64::Engine as _;
        let mut c = claims.clone();
        c["username"] = "root".into();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string())
    };
    let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
    t.add(
        "put with a forged token",
        kv1.put(with_token(&forged, put("app/b", "1"))).await,
    );
    // An auth change makes the token old.
    let root = login(
        &mut t,
        "authenticate root",
        auth.authenticate(credentials("root", "rootpw")).await,
    );
    t.add(
        "grant shared (as root)",
        auth.role_grant_permission(with_token(&root, grant(Perm::Read, "shared", "")))
            .await,
    );
    // Admin calls look at the user only: the same token serves a second change.
    t.add(
        "role add more (as root, the token from before the change)",
        auth.role_add(with_token(
            &root,
            AuthRoleAddRequest {
                name: "more".into(),
            },
        ))
        .await,
    );
    t.add(
        "put with the token from before the change",
        kv1.put(with_token(&alice, put("app/a", "2"))).await,
    );
    let again = login(
        &mut t,
        "authenticate alice again",
        auth.authenticate(credentials("alice", "alicepw")).await,
    );
    t.add(
        "put with the new token",
        kv1.put(with_token(&again, put("app/a", "3"))).await,
    );
    // Past its TTL.
    tokio::time::sleep(Duration::from_secs(6)).await;
    t.add(
        "put with an expired token",
        kv1.put(with_token(&again, put("app/a", "4"))).await,
    );
    // Auth off and on again: the revision tokens name moves as etcd's does.
    let root = login(
        &mut t,
        "authenticate root again",
        auth.authenticate(credentials("root", "rootpw")).await,
    );
    let before_disable = login(
        &mut t,
        "authenticate alice before the disable",
        auth.authenticate(credentials("alice", "alicepw")).await,
    );
    t.add(
        "auth disable",
        auth.auth_disable(with_token(&root, AuthDisableRequest {}))
            .await,
    );
    t.add(
        "auth enable again",
        auth.auth_enable(AuthEnableRequest {}).await,
    );
    t.add(
        "put with a token from before the disable",
        kv1.put(with_token(&before_disable, put("app/a", "5")))
            .await,
    );
    let last = login(
        &mut t,
        "authenticate alice after re-enabling",
        auth.authenticate(credentials("alice", "alicepw")).await,
    );
    t.0.push(format!(
        "revision in the token after re-enabling: {}",
        jwt_claims(&last)["revision"]
    ));
    t.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_behave_as_etcds() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../jwt/testdata");
    for options in [
        format!("sign-method=RS256,pub-key={keys}/sa-rsa.pub,priv-key={keys}/sa-rsa.key"),
        // An EC key as `openssl ecparam -genkey` writes it (SEC1), and no pub-key.
        format!("sign-method=ES256,priv-key={keys}/ec256-sec1.key"),
    ] {
        let (etcd, keelson) = on_both(|t, d| {
            let options = options.clone();
            async move { jwt_session(t, d, &options).await }
        })
        .await;
        assert_eq!(keelson, etcd, "{options}");
        for line in [
            "exp within the ttl: true",
            "put with the token from before the change: ERROR InvalidArgument etcdserver: revision of auth store is old",
            "put with an expired token: ERROR Unauthenticated etcdserver: invalid auth token",
            "put with a forged token: ERROR Unauthenticated etcdserver: invalid auth token",
            "put with a token from before the disable: ERROR InvalidArgument etcdserver: revision of auth store is old",
        ] {
            assert!(etcd.iter().any(|l| l == line), "{line:?} in {etcd:#?}");
        }
    }
}
