//! Unanswered writes resolved from the watch streams, as etcd's robustness suite patches its
//! histories: a put or compare-and-set whose (unique) value appears in a watch happened, at that
//! event's revision, before the event arrived; one that never appears, though the watches covered
//! every revision it could have had (from the last one answered before it was sent to the run's
//! last write, made seconds after the last fault healed), never happened. A delete event no answered delete explains
//! is given to an unanswered delete of that key sent before it; an unanswered delete left over
//! either never happened or found nothing, which is the same to the model. What cannot be
//! resolved stays unknown. This keeps the linearizability search small: every unanswered write
//! left in a history multiplies the orders it must try.
//!
//! The resolution trusts the watches; the watch checker checks them on the same history.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Input, Operation, Output, WatchEntry, WatchHistory};
use crate::watch::coverage;

/// What became of the unanswered writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Seen in a watch: happened.
    pub happened: usize,
    /// Not seen though every revision it could have had was watched: did not happen.
    pub dropped: usize,
    /// Left unknown.
    pub unknown: usize,
}

/// The history with unanswered writes resolved.
pub fn resolve(ops: &[Operation], watches: &[WatchHistory]) -> (Vec<Operation>, Resolved) {
    let mut puts: HashMap<&str, (i64, u64)> = HashMap::new();
    let mut deletes: BTreeMap<&str, BTreeMap<i64, u64>> = BTreeMap::new();
    // Revisions covered, per watched prefix (a watch says nothing of keys outside its prefix).
    let mut intervals: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for w in watches {
        intervals.entry(&w.prefix).or_default().extend(coverage(w));
        for e in &w.entries {
            let WatchEntry::Event(e) = e else { continue };
            match &e.value {
                Some(v) => {
                    let first = puts.entry(v).or_insert((e.revision, e.at));
                    first.1 = first.1.min(e.at);
                }
                None => {
                    let at = deletes
                        .entry(&e.key)
                        .or_default()
                        .entry(e.revision)
                        .or_insert(e.at);
                    *at = (*at).min(e.at);
                }
            }
        }
    }
    let covered: Vec<(&str, Vec<(i64, i64)>)> =
        intervals.into_iter().map(|(p, v)| (p, merge(v))).collect();
    // Every revision from `lo` to `hi` was watched on a prefix of `key`.
    let watched = |key: &str, lo: i64, hi: i64| {
        covered
            .iter()
            .any(|(p, merged)| key.starts_with(p) && covers(merged, lo, hi))
    };
    let last = ops
        .iter()
        .filter_map(|o| o.output.revision())
        .chain(puts.values().map(|p| p.0))
        .max()
        .unwrap_or(0);
    // Delete events an answered delete explains.
    let explained: HashSet<(&str, i64)> = ops
        .iter()
        .filter_map(|o| match (&o.input, &o.output) {
            (
                Input::Delete { key },
                Output::Delete {
                    deleted: 1,
                    revision,
                },
            ) => Some((key.as_str(), *revision)),
            _ => None,
        })
        .collect();
    let mut unexplained: BTreeMap<&str, Vec<(i64, u64)>> = deletes
        .iter()
        .map(|(k, revs)| {
            (
                *k,
                revs.iter()
                    .filter(|(r, _)| !explained.contains(&(*k, **r)))
                    .map(|(r, at)| (*r, *at))
                    .collect(),
            )
        })
        .collect();
    // The highest revision answered before a time: a lower bound for what a write sent then got.
    let mut answered: Vec<(u64, i64)> = ops
        .iter()
        .filter_map(|o| Some((o.complete, o.output.revision()?)))
        .collect();
    answered.sort_unstable();
    let mut best = 0;
    for a in &mut answered {
        best = best.max(a.1);
        a.1 = best;
    }
    let floor_at = |t: u64| {
        let i = answered.partition_point(|a| a.0 < t);
        if i == 0 { 0 } else { answered[i - 1].1 }
    };

    let mut stats = Resolved::default();
    let mut out = Vec::with_capacity(ops.len());
    let mut unknown_deletes: Vec<&Operation> = Vec::new();
    for o in ops {
        if !matches!(o.output, Output::Unknown { .. }) {
            out.push(o.clone());
            continue;
        }
        let seen_as = |at: u64, output: Output| Operation {
            complete: at.max(o.invoke),
            output,
            ..o.clone()
        };
        let whole_range_watched = watched(o.input.key(), floor_at(o.invoke) + 1, last);
        match &o.input {
            // Unanswered reads tell nothing; the linearizability check leaves them out.
            Input::Get { .. } => out.push(o.clone()),
            Input::Put { value, .. } | Input::Cas { value, .. } => {
                if let Some(&(revision, at)) = puts.get(value.as_str()) {
                    let output = match o.input {
                        Input::Put { .. } => Output::Put { revision },
                        _ => Output::Cas {
                            succeeded: true,
                            revision,
                        },
                    };
                    out.push(seen_as(at, output));
                    stats.happened += 1;
                } else if whole_range_watched {
                    stats.dropped += 1;
                } else {
                    out.push(o.clone());
                    stats.unknown += 1;
                }
            }
            Input::Delete { .. } => unknown_deletes.push(o),
        }
    }
    // Unexplained delete events go, in revision order, to the earliest unanswered delete of the
    // key sent before the event arrived.
    unknown_deletes.sort_by_key(|o| o.invoke);
    let mut used = vec![false; unknown_deletes.len()];
    for (key, events) in &mut unexplained {
        for &(revision, at) in events.iter() {
            let pick = (0..unknown_deletes.len()).find(|&i| {
                !used[i]
                    && unknown_deletes[i].input.key() == *key
                    && unknown_deletes[i].invoke <= at
            });
            if let Some(i) = pick {
                used[i] = true;
                let o = unknown_deletes[i];
                out.push(Operation {
                    complete: at.max(o.invoke),
                    output: Output::Delete {
                        deleted: 1,
                        revision,
                    },
                    ..o.clone()
                });
                stats.happened += 1;
            }
        }
    }
    for (i, o) in unknown_deletes.iter().enumerate() {
        if used[i] {
            continue;
        }
        if watched(o.input.key(), floor_at(o.invoke) + 1, last) {
            stats.dropped += 1;
        } else {
            out.push((*o).clone());
            stats.unknown += 1;
        }
    }
    (out, stats)
}

/// Sorted, merged intervals (adjacent ones joined).
fn merge(mut v: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    v.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 + 1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `lo..=hi` is not empty and lies within one of the merged intervals. (Empty: nothing was
/// written after the operation, so nothing shows it did not happen last.)
fn covers(merged: &[(i64, i64)], lo: i64, hi: i64) -> bool {
    lo <= hi && merged.iter().any(|&(s, e)| s <= lo && hi <= e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::WatchEvent;

    fn unknown_put(invoke: u64, key: &str, value: &str) -> Operation {
        Operation {
            client: 0,
            txn: None,
            invoke,
            complete: invoke + 10,
            input: Input::Put {
                key: key.into(),
                value: value.into(),
            },
            output: Output::Unknown {
                error: "timeout".into(),
            },
        }
    }

    #[test]
    fn writes_seen_in_a_watch_happened_and_unseen_ones_did_not() {
        let ops = vec![
            Operation {
                client: 1,
                txn: None,
                invoke: 0,
                complete: 5,
                input: Input::Put {
                    key: "/k/a".into(),
                    value: "0".into(),
                },
                output: Output::Put { revision: 2 },
            },
            unknown_put(10, "/k/a", "seen"),
            unknown_put(20, "/k/b", "lost"),
        ];
        let event = |key: &str, value: &str, revision: i64, at: u64| {
            WatchEntry::Event(WatchEvent {
                key: key.into(),
                value: Some(value.into()),
                revision,
                header_revision: revision,
                at,
                response: revision as u64,
            })
        };
        let w = WatchHistory {
            watcher: 0,
            prefix: "/k/".into(),
            entries: vec![
                WatchEntry::Opened {
                    start_revision: 1,
                    at: 0,
                },
                event("/k/a", "0", 2, 6),
                event("/k/a", "seen", 3, 40),
            ],
        };
        let (out, stats) = resolve(&ops, std::slice::from_ref(&w));
        assert_eq!(
            stats,
            Resolved {
                happened: 1,
                dropped: 1,
                unknown: 0
            }
        );
        assert_eq!(out[1].output, Output::Put { revision: 3 });
        assert_eq!(out[1].complete, 40);
        // Without a watch nothing is resolved.
        let (out, stats) = resolve(&ops, &[]);
        assert_eq!(stats.unknown, 2);
        assert_eq!(out.len(), 3);
    }
}
