//! The replicas check: after the run, every member's copy of the traffic's keys, read from the
//! member itself (serializable) at the run's last revision, must be the same. A member that
//! came back from a crash (at a failpoint, say) with a state that is off shows here even when
//! no client read happened to reach the keys it got wrong.

use std::cmp::Ordering;
use std::time::Duration;

use keelson_etcdpb::etcdserverpb::{RangeRequest, kv_client::KvClient};
use serde::{Deserialize, Serialize};

use crate::Check;
use crate::cluster::{Cluster, channel};

/// One key as a member holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaKv {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// create_revision, mod_revision, version, lease.
    pub meta: [i64; 4],
}

/// What one member held at the run's last revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRead {
    /// The member.
    pub member: String,
    /// The revision read at.
    pub revision: i64,
    /// The keys, in key order (empty when the read failed).
    pub kvs: Vec<ReplicaKv>,
    /// Why the member could not be read, if it could not.
    pub error: Option<String>,
}

/// A member's own (serializable) read of the keys under `prefix` at `revision` (0: the
/// revision it has applied).
pub(crate) fn local_read(prefix: &str, revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: keelson_etcdpb::prefix_end(prefix.as_bytes()),
        revision,
        serializable: true,
        ..Default::default()
    }
}

/// What `member` answered to a range at `revision`.
pub(crate) fn copy(
    member: &str,
    revision: i64,
    r: keelson_etcdpb::etcdserverpb::RangeResponse,
) -> ReplicaRead {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    ReplicaRead {
        member: member.to_string(),
        revision,
        kvs: r
            .kvs
            .iter()
            .map(|kv| ReplicaKv {
                key: text(&kv.key),
                value: text(&kv.value),
                meta: [kv.create_revision, kv.mod_revision, kv.version, kv.lease],
            })
            .collect(),
        error: None,
    }
}

/// Reads the keys under `prefix` at `revision` from every member that is in the cluster,
/// each on its own; a member that has not applied `revision` yet (or does not answer) is asked
/// again until `limit` has passed. Without a revision (the run's last write failed) every
/// member counts as unread.
pub async fn read(
    cluster: &Cluster,
    prefix: &str,
    revision: Option<i64>,
    limit: Duration,
) -> Vec<ReplicaRead> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    for m in cluster.members.iter().filter(|m| !m.removed) {
        let Some(revision) = revision else {
            out.push(ReplicaRead {
                member: m.name.clone(),
                revision: 0,
                kvs: Vec::new(),
                error: Some("the run's last write failed: no revision to read at".into()),
            });
            continue;
        };
        let request = local_read(prefix, revision);
        let result = loop {
            let answer = match channel(&m.client, Some(Duration::from_secs(2))) {
                Ok(ch) => KvClient::new(ch)
                    .range(request.clone())
                    .await
                    .map_err(|e| e.message().to_string()),
                Err(e) => Err(e.to_string()),
            };
            if answer.is_ok() || tokio::time::Instant::now() >= deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        out.push(match result {
            Ok(r) => copy(&m.name, revision, r.into_inner()),
            Err(e) => ReplicaRead {
                member: m.name.clone(),
                revision,
                kvs: Vec::new(),
                error: Some(e),
            },
        });
    }
    out
}

/// Member `i`'s copy of the keys under `prefix`, read from itself at the revision it has
/// applied, against another live member's copy at that same revision: the check of the two
/// (as [`check`]). Read again (up to `limit`) while either cannot be read, the other has not
/// applied that revision yet, or has compacted it (the traffic goes on meanwhile).
pub async fn compare_member(cluster: &Cluster, i: usize, prefix: &str, limit: Duration) -> Check {
    let deadline = tokio::time::Instant::now() + limit;
    let range = |url: &str, revision: i64| {
        let request = local_read(prefix, revision);
        let ch = channel(url, Some(Duration::from_secs(2)));
        async move {
            KvClient::new(ch.map_err(|e| e.to_string())?)
                .range(request)
                .await
                .map(|r| r.into_inner())
                .map_err(|e| e.message().to_string())
        }
    };
    loop {
        let other = cluster.live().into_iter().find(|&j| j != i);
        let last = match other {
            None => "no other live member".to_string(),
            Some(j) => {
                let (a, b) = (&cluster.members[i], &cluster.members[j]);
                match range(&a.client, 0).await {
                    Err(e) => format!("{}: {e}", a.name),
                    Ok(mine) => {
                        let at = mine.header.as_ref().map(|h| h.revision).unwrap_or(0);
                        match range(&b.client, at).await {
                            Err(e) => format!("{} at revision {at}: {e}", b.name),
                            Ok(theirs) => {
                                return check(&[
                                    copy(&b.name, at, theirs),
                                    copy(&a.name, at, mine),
                                ]);
                            }
                        }
                    }
                }
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Check::findings(
                "replicas",
                0,
                vec![format!(
                    "{} could not be compared within {limit:?}: {last}",
                    cluster.members[i].name
                )],
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Differences shown per member before the rest are counted.
const SHOWN: usize = 5;

/// Checks that every member read holds what the first one read holds.
pub fn check(reads: &[ReplicaRead]) -> Check {
    let mut findings = Vec::new();
    for r in reads {
        if let Some(e) = &r.error {
            findings.push(format!(
                "{} could not be read at revision {}: {e}",
                r.member, r.revision
            ));
        }
    }
    let read: Vec<&ReplicaRead> = reads.iter().filter(|r| r.error.is_none()).collect();
    let Some(first) = read.first() else {
        let mut c = Check::findings("replicas", 0, findings);
        // A run recorded before this check has no reads, and nothing to find.
        c.details.push("no member was read".into());
        return c;
    };
    let mut checked = first.kvs.len();
    for other in &read[1..] {
        checked += other.kvs.len();
        let mut diffs = Vec::new();
        let (mut a, mut b) = (first.kvs.iter().peekable(), other.kvs.iter().peekable());
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => x.key.cmp(&y.key),
            };
            let (x, y) = match order {
                Ordering::Equal => (a.next(), b.next()),
                Ordering::Less => (a.next(), None),
                Ordering::Greater => (None, b.next()),
            };
            match (x, y) {
                (Some(x), Some(y)) if x != y => diffs.push(format!(
                    "{}: {} holds {:?} {:?}, {} holds {:?} {:?}",
                    x.key, first.member, x.value, x.meta, other.member, y.value, y.meta
                )),
                (Some(x), None) => diffs.push(format!(
                    "{}: only {} holds it ({:?})",
                    x.key, first.member, x.value
                )),
                (None, Some(y)) => diffs.push(format!(
                    "{}: only {} holds it ({:?})",
                    y.key, other.member, y.value
                )),
                _ => {}
            }
        }
        let n = diffs.len();
        findings.extend(diffs.into_iter().take(SHOWN));
        if n > SHOWN {
            findings.push(format!(
                "... {} more differences between {} and {}",
                n - SHOWN,
                first.member,
                other.member
            ));
        }
    }
    let mut c = Check::findings("replicas", checked, findings);
    if c.details.is_empty() {
        c.details.push(format!(
            "{} members hold the same {} keys at revision {}",
            read.len(),
            first.kvs.len(),
            first.revision
        ));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verdict;

    fn read(member: &str, kvs: &[(&str, &str, i64)]) -> ReplicaRead {
        ReplicaRead {
            member: member.into(),
            revision: 9,
            kvs: kvs
                .iter()
                .map(|(k, v, m)| ReplicaKv {
                    key: k.to_string(),
                    value: v.to_string(),
                    meta: [1, *m, 1, 0],
                })
                .collect(),
            error: None,
        }
    }

    #[test]
    fn same_copies_pass_and_any_difference_is_a_violation() {
        let a = read("m0", &[("/a", "1", 3), ("/b", "2", 4)]);
        assert_eq!(check(&[a.clone(), a.clone()]).verdict, Verdict::Ok);
        for bad in [
            read("m1", &[("/a", "1", 3)]),
            read("m1", &[("/a", "1", 3), ("/b", "2", 4), ("/c", "3", 5)]),
            read("m1", &[("/a", "1", 3), ("/b", "x", 4)]),
            read("m1", &[("/a", "1", 3), ("/b", "2", 5)]),
        ] {
            let c = check(&[a.clone(), bad.clone()]);
            assert_eq!(c.verdict, Verdict::Violation, "{bad:?}");
            assert_eq!(c.details.len(), 1, "{:?}", c.details);
        }
        let mut down = read("m2", &[]);
        down.error = Some("unavailable".into());
        assert_eq!(check(&[a, down]).verdict, Verdict::Violation);
    }
}
