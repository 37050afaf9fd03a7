//! Watch guarantees, checked against the KV history and across watchers: events in revision
//! order and never back in time (also across a reopened watch), no duplicates, no gaps (every
//! acknowledged write and every event another watcher saw, within the revisions a stream covered),
//! every event a write somebody made (with that write's revision), `ErrCompacted` only for a
//! revision that was really compacted, and every stream reaching the last acknowledged write.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::Check;
use crate::history::{Compaction, Input, LeaseRecord, Operation, Output, WatchEntry, WatchHistory};

/// At most this many lines of detail per check.
const MAX_DETAILS: usize = 20;

/// Checks every watch stream.
pub fn check(
    watches: &[WatchHistory],
    history: &[Operation],
    compactions: &[Compaction],
    leases: &[LeaseRecord],
) -> Check {
    // Keys deleted by their lease's expiry rather than by a client.
    let leased: HashSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
    let mut details = Vec::new();
    let mut note = |d: String| {
        if details.len() < MAX_DETAILS {
            details.push(d);
        }
    };

    // What happened at each revision: acknowledged writes, then every event any watcher saw.
    let mut truth: BTreeMap<i64, BTreeMap<String, Option<String>>> = BTreeMap::new();
    let mut writes_of_value: HashMap<&str, &Operation> = HashMap::new();
    let mut first_delete: HashMap<&str, u64> = HashMap::new();
    for o in history {
        if let Some(v) = o.input.value() {
            writes_of_value.insert(v, o);
        }
        if let Input::Delete { key } = &o.input {
            let t = first_delete.entry(key).or_insert(o.invoke);
            *t = (*t).min(o.invoke);
        }
        if !o.output.mutated() {
            continue;
        }
        let (Some(r), key) = (o.output.revision(), o.input.key()) else {
            continue;
        };
        let value = match o.output {
            Output::Delete { .. } => None,
            _ => o.input.value().map(str::to_string),
        };
        truth.entry(r).or_default().insert(key.to_string(), value);
    }
    let mut events = 0usize;
    for w in watches {
        for e in &w.entries {
            let WatchEntry::Event(e) = e else { continue };
            events += 1;
            let at = truth.entry(e.revision).or_default();
            match at.get(&e.key) {
                Some(v) if *v != e.value => note(format!(
                    "watcher {}: event {} at revision {} = {:?} contradicts {:?} (an acknowledged \
                     write or another watcher's event)",
                    w.watcher, e.key, e.revision, e.value, v
                )),
                Some(_) => {}
                None => {
                    at.insert(e.key.clone(), e.value.clone());
                }
            }
            match &e.value {
                Some(v) => match writes_of_value.get(v.as_str()) {
                    None => note(format!(
                        "watcher {}: event {}={v} at revision {} is a write nobody made",
                        w.watcher, e.key, e.revision
                    )),
                    Some(o) if o.invoke > e.at => note(format!(
                        "watcher {}: event {}={v} arrived before its write was sent",
                        w.watcher, e.key
                    )),
                    Some(o)
                        if o.output.revision().is_some_and(|r| r != e.revision)
                            && o.output.mutated() =>
                    {
                        note(format!(
                            "watcher {}: event {}={v} at revision {}, but the write was \
                             acknowledged at revision {}",
                            w.watcher,
                            e.key,
                            e.revision,
                            o.output.revision().unwrap_or(0)
                        ))
                    }
                    Some(_) => {}
                },
                None => {
                    if !leased.contains(e.key.as_str())
                        && first_delete.get(e.key.as_str()).is_none_or(|t| *t > e.at)
                    {
                        note(format!(
                            "watcher {}: delete event for {} at revision {} that no client asked for",
                            w.watcher, e.key, e.revision
                        ))
                    }
                }
            }
        }
    }

    let last_write = history
        .iter()
        .filter(|o| o.output.mutated())
        .filter_map(|o| o.output.revision())
        .max()
        .unwrap_or(0);
    let max_compaction = compactions.iter().map(|c| c.revision).max().unwrap_or(0);
    for w in watches {
        let mut seen: HashSet<(i64, &str)> = HashSet::new();
        let mut last = 0i64;
        let mut segment_start = 0i64;
        // The highest progress notification of the current stream.
        let mut promised = 0i64;
        for entry in &w.entries {
            match entry {
                WatchEntry::Opened { start_revision, .. } => {
                    segment_start = *start_revision;
                    promised = 0;
                }
                WatchEntry::Progress { revision, .. } => promised = promised.max(*revision),
                WatchEntry::Event(e) => {
                    if e.revision <= promised {
                        note(format!(
                            "watcher {}: event {} at revision {} after a progress notification \
                             at {promised}",
                            w.watcher, e.key, e.revision
                        ));
                    }
                    if e.revision < last {
                        note(format!(
                            "watcher {}: went back in time: revision {} after {last}",
                            w.watcher, e.revision
                        ));
                    }
                    if !seen.insert((e.revision, &e.key)) {
                        note(format!(
                            "watcher {}: duplicate event {} at revision {}",
                            w.watcher, e.key, e.revision
                        ));
                    }
                    if segment_start > 0 && e.revision < segment_start {
                        note(format!(
                            "watcher {}: event at revision {} on a watch from revision {segment_start}",
                            w.watcher, e.revision
                        ));
                    }
                    last = last.max(e.revision);
                }
                WatchEntry::Compacted {
                    compact_revision, ..
                } => {
                    if *compact_revision > max_compaction || segment_start >= *compact_revision {
                        note(format!(
                            "watcher {}: told revision {segment_start} was compacted at \
                             {compact_revision}, but the highest compaction asked for was \
                             {max_compaction}",
                            w.watcher
                        ));
                    }
                }
                WatchEntry::Broken { .. } => {}
            }
        }
        for (start, end) in coverage(w) {
            for (r, keys) in truth.range(start..=end) {
                for key in keys.keys() {
                    if key.starts_with(&w.prefix) && !seen.contains(&(*r, key.as_str())) {
                        note(format!(
                            "watcher {}: missed {key} at revision {r} (its stream covered \
                             {start}..={end})",
                            w.watcher
                        ));
                    }
                }
            }
        }
        if last < last_write {
            note(format!(
                "watcher {}: its last event is at revision {last}, the last acknowledged write at \
                 {last_write}",
                w.watcher
            ));
        }
    }
    Check::findings("watch", events, details)
}

/// The revisions a stream covered: each (re)opened watch from its start revision (or its first
/// event, for a watch from "now") to its last event or the last progress notification beyond it
/// (the server's word that nothing up to there is left to send; `check` holds it to that).
/// Segments whose events went back before their start are left out (`check` reports those).
pub fn coverage(w: &WatchHistory) -> Vec<(i64, i64)> {
    let mut covered = Vec::new();
    let mut segment: Option<(i64, Option<i64>)> = None;
    let mut close = |segment: &mut Option<(i64, Option<i64>)>| {
        if let Some((start, Some(end))) = segment.take()
            && start <= end
        {
            covered.push((start, end));
        }
    };
    for entry in &w.entries {
        match entry {
            WatchEntry::Opened { start_revision, .. } => {
                close(&mut segment);
                segment = Some((*start_revision, None));
            }
            WatchEntry::Event(e) => {
                if let Some((start, end)) = &mut segment {
                    if *start <= 0 {
                        *start = e.revision;
                    }
                    *end = Some(e.revision);
                }
            }
            WatchEntry::Progress { revision, .. } => {
                if let Some((start, end)) = &mut segment
                    && *start > 0
                    && *revision >= *start
                {
                    *end = Some(end.unwrap_or(*revision).max(*revision));
                }
            }
            WatchEntry::Compacted { .. } | WatchEntry::Broken { .. } => close(&mut segment),
        }
    }
    close(&mut segment);
    covered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verdict;
    use crate::history::WatchEvent;

    fn put(key: &str, value: &str, revision: i64, at: u64) -> Operation {
        Operation {
            client: 0,
            txn: None,
            invoke: at,
            complete: at + 5,
            input: Input::Put {
                key: key.into(),
                value: value.into(),
            },
            output: Output::Put { revision },
        }
    }
    fn event(key: &str, value: &str, revision: i64) -> WatchEntry {
        WatchEntry::Event(WatchEvent {
            key: key.into(),
            value: Some(value.into()),
            revision,
            header_revision: revision,
            at: 1000,
            response: revision as u64,
        })
    }
    fn opened(start_revision: i64) -> WatchEntry {
        WatchEntry::Opened {
            start_revision,
            at: 0,
        }
    }
    fn watch(entries: Vec<WatchEntry>) -> WatchHistory {
        WatchHistory {
            watcher: 0,
            prefix: "/k/".into(),
            entries,
        }
    }
    fn writes() -> Vec<Operation> {
        vec![
            put("/k/a", "1", 2, 10),
            put("/k/b", "2", 3, 20),
            put("/k/a", "3", 4, 30),
        ]
    }

    #[test]
    fn a_complete_ordered_stream_passes() {
        let w = watch(vec![
            opened(1),
            event("/k/a", "1", 2),
            WatchEntry::Broken {
                error: "connection reset".into(),
                at: 50,
            },
            opened(3),
            event("/k/b", "2", 3),
            event("/k/a", "3", 4),
        ]);
        let c = check(&[w], &writes(), &[], &[]);
        assert_eq!(c.verdict, Verdict::Ok, "{:?}", c.details);
    }

    #[test]
    fn gaps_duplicates_and_time_travel_are_violations() {
        let gap = watch(vec![
            opened(1),
            event("/k/a", "1", 2),
            event("/k/a", "3", 4),
        ]);
        let c = check(&[gap], &writes(), &[], &[]);
        assert_eq!(c.verdict, Verdict::Violation);
        assert!(c.details[0].contains("missed /k/b at revision 3"), "{c:?}");

        // The etcd bug found by the robustness suite: after a partition a watch reopened on
        // another member goes back in time.
        let back = watch(vec![
            opened(1),
            event("/k/a", "1", 2),
            event("/k/b", "2", 3),
            event("/k/a", "3", 4),
            WatchEntry::Broken {
                error: "member isolated".into(),
                at: 50,
            },
            opened(5),
            event("/k/b", "2", 3),
        ]);
        let c = check(&[back], &writes(), &[], &[]);
        assert_eq!(c.verdict, Verdict::Violation);
        assert!(
            c.details.iter().any(|d| d.contains("back in time")),
            "{c:?}"
        );
        assert!(c.details.iter().any(|d| d.contains("duplicate")), "{c:?}");

        let invented = watch(vec![
            opened(1),
            event("/k/a", "1", 2),
            event("/k/b", "2", 3),
            event("/k/a", "zzz", 4),
        ]);
        assert_eq!(
            check(&[invented], &writes(), &[], &[]).verdict,
            Verdict::Violation
        );

        let short = watch(vec![
            opened(1),
            event("/k/a", "1", 2),
            event("/k/b", "2", 3),
        ]);
        assert_eq!(
            check(&[short], &writes(), &[], &[]).verdict,
            Verdict::Violation
        );
    }

    #[test]
    fn compaction_excuses_only_what_was_compacted() {
        // The etcd bug: events lost around compaction. Told compacted at 3, reopened from 3.
        let honest = watch(vec![
            opened(1),
            WatchEntry::Compacted {
                compact_revision: 3,
                at: 40,
            },
            opened(3),
            event("/k/b", "2", 3),
            event("/k/a", "3", 4),
        ]);
        let compacted = [Compaction {
            revision: 3,
            at: 35,
            acknowledged: true,
        }];
        let c = check(std::slice::from_ref(&honest), &writes(), &compacted, &[]);
        assert_eq!(c.verdict, Verdict::Ok, "{:?}", c.details);
        // The same stream with no compaction asked for.
        let c = check(&[honest], &writes(), &[], &[]);
        assert_eq!(c.verdict, Verdict::Violation);
        // Compacted, but revision 3's event silently dropped after reopening.
        let lossy = watch(vec![
            opened(1),
            WatchEntry::Compacted {
                compact_revision: 3,
                at: 40,
            },
            opened(3),
            event("/k/a", "3", 4),
        ]);
        assert_eq!(
            check(&[lossy], &writes(), &compacted, &[]).verdict,
            Verdict::Violation
        );
    }

    #[test]
    fn watchers_must_agree() {
        // An event only watchers saw (its write unanswered) must reach every stream covering it.
        let mut h = writes();
        h.push(Operation {
            client: 1,
            txn: None,
            invoke: 25,
            complete: 29,
            input: Input::Put {
                key: "/k/c".into(),
                value: "x".into(),
            },
            output: Output::Unknown {
                error: "timeout".into(),
            },
        });
        h.push(put("/k/d", "y", 6, 40));
        let full = vec![
            opened(1),
            event("/k/a", "1", 2),
            event("/k/b", "2", 3),
            event("/k/a", "3", 4),
            event("/k/c", "x", 5),
            event("/k/d", "y", 6),
        ];
        let mut second = full.clone();
        second.remove(4);
        let c = check(
            &[
                watch(full),
                WatchHistory {
                    watcher: 1,
                    ..watch(second)
                },
            ],
            &h,
            &[],
            &[],
        );
        assert_eq!(c.verdict, Verdict::Violation);
        assert_eq!(c.details.len(), 1, "{c:?}");
        assert!(c.details[0].contains("missed /k/c at revision 5"), "{c:?}");
    }

    #[test]
    fn progress_notifications_must_be_honest() {
        let progress = |revision| WatchEntry::Progress { revision, at: 500 };
        // Honest: everything up to 3 came before the notification at 3.
        let honest = watch(vec![
            opened(1),
            event("/k/a", "1", 2),
            event("/k/b", "2", 3),
            progress(3),
            event("/k/a", "3", 4),
        ]);
        let c = check(&[honest], &writes(), &[], &[]);
        assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
        // The etcd 3.4 behaviour the robustness suite reported: a notification overtaking an
        // event it claims was sent.
        let early = watch(vec![
            opened(1),
            event("/k/a", "1", 2),
            progress(3),
            event("/k/b", "2", 3),
            event("/k/a", "3", 4),
        ]);
        let c = check(&[early], &writes(), &[], &[]);
        assert_eq!(c.verdict, Verdict::Violation);
        assert!(
            c.details[0].contains("revision 3 after a progress notification at 3"),
            "{c:?}"
        );
        // A notification claims what it covers: a write at or below it that never came is a
        // gap, though no later event shows the stream passed it.
        let lying = watch(vec![opened(1), event("/k/a", "1", 2), progress(4)]);
        let c = check(std::slice::from_ref(&lying), &writes(), &[], &[]);
        assert!(
            c.details
                .iter()
                .any(|d| d.contains("missed /k/b at revision 3")),
            "{c:?}"
        );
        assert_eq!(coverage(&lying), vec![(1, 4)]);
        // A reopened stream starts with no promise.
        let reopened = watch(vec![
            opened(1),
            event("/k/a", "1", 2),
            event("/k/b", "2", 3),
            progress(3),
            opened(3),
            event("/k/b", "2", 3),
            event("/k/a", "3", 4),
        ]);
        let c = check(&[reopened], &writes(), &[], &[]);
        assert!(c.details.iter().all(|d| !d.contains("progress")), "{c:?}");
    }
}
