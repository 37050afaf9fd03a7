//! Lease guarantees: a lease's key is not deleted before the lease can have expired (its TTL after
//! the grant or after the last keep-alive answered with a TTL, both counted from when the request
//! was sent, which is no later than when the leader acted on it); a lease is not renewed after its
//! key was deleted; every expired lease's key is deleted, the deletion reaches the watches, and no
//! member keeps the key.

use std::collections::{HashMap, HashSet};

use crate::Check;
use crate::history::{LeaseLeftover, LeaseRecord, Operation, WatchEntry, WatchHistory};

const SECOND: u64 = 1_000_000_000;

/// Checks the leases of a run.
pub fn check(
    leases: &[LeaseRecord],
    operations: &[Operation],
    watches: &[WatchHistory],
    leftovers: &[LeaseLeftover],
) -> Check {
    let mut details = Vec::new();
    let mut note = |d: String| {
        if details.len() < 20 {
            details.push(d);
        }
    };
    // When each key's deletion and put were first seen by a watcher.
    let mut deleted: HashMap<&str, u64> = HashMap::new();
    let mut put_seen: HashMap<&str, u64> = HashMap::new();
    for w in watches {
        for e in &w.entries {
            let WatchEntry::Event(e) = e else { continue };
            let seen = if e.value.is_none() {
                &mut deleted
            } else {
                &mut put_seen
            };
            let t = seen.entry(e.key.as_str()).or_insert(e.at);
            *t = (*t).min(e.at);
        }
    }
    let written: HashSet<&str> = operations
        .iter()
        .filter(|o| o.output.mutated())
        .map(|o| o.input.key())
        .collect();
    for l in leases {
        let ns = |ttl: i64| ttl.max(0) as u64 * SECOND;
        let attached = put_seen.contains_key(l.key.as_str()) || written.contains(l.key.as_str());
        let Some(&gone) = deleted.get(l.key.as_str()) else {
            if attached {
                note(format!(
                    "lease {:x}: no watch saw its key {} deleted",
                    l.lease, l.key
                ));
            }
            continue;
        };
        let mut alive_until = l.granted + ns(l.ttl);
        for k in &l.keepalives {
            if k.ttl > 0 && k.invoke < gone {
                alive_until = alive_until.max(k.invoke + ns(k.ttl));
            }
            if k.ttl > 0 && k.invoke > gone {
                note(format!(
                    "lease {:x}: renewed (TTL {}) at {:.3} s, after its key was deleted at {:.3} s",
                    l.lease,
                    k.ttl,
                    k.invoke as f64 / 1e9,
                    gone as f64 / 1e9
                ));
            }
        }
        if gone < alive_until {
            note(format!(
                "lease {:x}: key {} deleted by {:.3} s, but the lease was granted or kept alive \
                 until at least {:.3} s",
                l.lease,
                l.key,
                gone as f64 / 1e9,
                alive_until as f64 / 1e9
            ));
        }
    }
    for left in leftovers {
        if !left.keys.is_empty() {
            note(format!(
                "{} still holds {} keys of expired leases: {}",
                left.member,
                left.keys.len(),
                left.keys
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Check::findings("leases", leases.len(), details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verdict;
    use crate::history::{KeepAlive, WatchEvent};

    fn lease(keepalives: Vec<KeepAlive>) -> LeaseRecord {
        LeaseRecord {
            lease: 7,
            ttl: 2,
            granted: 0,
            key: "/l/1".into(),
            keepalives,
        }
    }
    fn watch(put: u64, delete: Option<u64>) -> WatchHistory {
        let mut entries = vec![WatchEntry::Event(WatchEvent {
            key: "/l/1".into(),
            value: Some("v".into()),
            revision: 2,
            header_revision: 2,
            at: put,
            response: 1,
        })];
        if let Some(at) = delete {
            entries.push(WatchEntry::Event(WatchEvent {
                key: "/l/1".into(),
                value: None,
                revision: 3,
                header_revision: 3,
                at,
                response: 2,
            }));
        }
        WatchHistory {
            watcher: 0,
            prefix: "/l/".into(),
            entries,
        }
    }

    #[test]
    fn expiry_after_the_last_keepalive_passes() {
        let l = lease(vec![KeepAlive {
            invoke: SECOND,
            ttl: 2,
        }]);
        let c = check(&[l], &[], &[watch(10, Some(3 * SECOND + 1))], &[]);
        assert_eq!(c.verdict, Verdict::Ok, "{:?}", c.details);
    }

    #[test]
    fn early_expiry_late_renewal_and_leftovers_are_violations() {
        // Deleted 2.5 s in, though kept alive at 1 s with a 2 s TTL.
        let l = lease(vec![KeepAlive {
            invoke: SECOND,
            ttl: 2,
        }]);
        let c = check(&[l], &[], &[watch(10, Some(2 * SECOND + SECOND / 2))], &[]);
        assert_eq!(c.verdict, Verdict::Violation);
        // Renewed after its key was gone.
        let l = lease(vec![KeepAlive {
            invoke: 5 * SECOND,
            ttl: 2,
        }]);
        let c = check(&[l], &[], &[watch(10, Some(3 * SECOND))], &[]);
        assert_eq!(c.verdict, Verdict::Violation);
        // Never deleted, as far as the watches saw.
        let c = check(&[lease(vec![])], &[], &[watch(10, None)], &[]);
        assert_eq!(c.verdict, Verdict::Violation);
        // A member kept it.
        let c = check(
            &[lease(vec![])],
            &[],
            &[watch(10, Some(3 * SECOND))],
            &[LeaseLeftover {
                member: "m1".into(),
                keys: vec!["/l/1".into()],
            }],
        );
        assert_eq!(c.verdict, Verdict::Violation);
    }
}
