//! Transactions that put several keys: all or nothing, at one revision, and seen whole. A watch
//! that delivers any put of a txn delivers every put of it whose key it watches, at the same
//! revision and in the same response (etcd never splits a revision's events between responses
//! unless asked to fragment). The per-key checkers see each put on its own; this one ties them
//! together, for answered txns and for unanswered ones that the watches show happened.

use std::collections::{BTreeMap, HashMap};

use crate::Check;
use crate::history::{Operation, Output, WatchEntry, WatchHistory};

/// At most this many lines of detail.
const MAX_DETAILS: usize = 20;

/// Checks the multi-key txns of `history` against the watch streams.
pub fn check(history: &[Operation], watches: &[WatchHistory]) -> Check {
    let mut txns: BTreeMap<u64, Vec<&Operation>> = BTreeMap::new();
    for o in history {
        if let Some(t) = o.txn {
            txns.entry(t).or_default().push(o);
        }
    }
    // Which txn part wrote a value (values are unique to one put).
    let mut part_of: HashMap<&str, (u64, &str)> = HashMap::new();
    for (t, parts) in &txns {
        for o in parts {
            if let Some(v) = o.input.value() {
                part_of.insert(v, (*t, o.input.key()));
            }
        }
    }
    let mut details = Vec::new();
    let mut note = |d: String| {
        if details.len() < MAX_DETAILS {
            details.push(d);
        }
    };
    // The revision every sighting of a txn's parts agrees on, with where it was first seen.
    let mut revision_of: HashMap<u64, (i64, String)> = HashMap::new();
    for (t, parts) in &txns {
        if let Some(Output::Put { revision }) = parts.first().map(|o| &o.output) {
            revision_of.insert(*t, (*revision, "its answer".into()));
        }
    }
    for w in watches {
        // Per txn: the keys this watcher saw, with the revision and response of each.
        let mut sightings: BTreeMap<u64, Vec<(&str, i64, u64)>> = BTreeMap::new();
        for e in &w.entries {
            let WatchEntry::Event(e) = e else { continue };
            let Some(v) = e.value.as_deref() else {
                continue;
            };
            if let Some(&(t, key)) = part_of.get(v) {
                sightings
                    .entry(t)
                    .or_default()
                    .push((key, e.revision, e.response));
            }
        }
        for (t, seen) in sightings {
            let (_, first_revision, first_response) = seen[0];
            let agreed = revision_of
                .entry(t)
                .or_insert((first_revision, format!("watcher {}", w.watcher)));
            if seen.iter().any(|s| s.1 != agreed.0) {
                note(format!(
                    "watcher {}: txn {t:#x} seen at revisions {:?}; {} says {}",
                    w.watcher,
                    seen.iter().map(|s| s.1).collect::<Vec<_>>(),
                    agreed.1,
                    agreed.0
                ));
            }
            if seen.iter().any(|s| s.2 != first_response) {
                note(format!(
                    "watcher {}: txn {t:#x} split over responses {:?}",
                    w.watcher,
                    seen.iter().map(|s| s.2).collect::<Vec<_>>()
                ));
            }
            for o in &txns[&t] {
                let key = o.input.key();
                if key.starts_with(&w.prefix) && !seen.iter().any(|s| s.0 == key) {
                    note(format!(
                        "watcher {}: txn {t:#x} seen at revision {first_revision} without its \
                         put of {key}",
                        w.watcher
                    ));
                }
            }
        }
    }
    Check::findings("txns", txns.len(), details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verdict;
    use crate::history::{Input, WatchEvent};

    fn part(txn: u64, key: &str, value: &str, output: Output) -> Operation {
        Operation {
            client: 0,
            txn: Some(txn),
            invoke: 0,
            complete: 10,
            input: Input::Put {
                key: key.into(),
                value: value.into(),
            },
            output,
        }
    }
    fn event(key: &str, value: &str, revision: i64, response: u64) -> WatchEntry {
        WatchEntry::Event(WatchEvent {
            key: key.into(),
            value: Some(value.into()),
            revision,
            header_revision: revision,
            at: 20,
            response,
        })
    }
    fn watch(entries: Vec<WatchEntry>) -> WatchHistory {
        WatchHistory {
            watcher: 0,
            prefix: "/k/".into(),
            entries,
        }
    }

    #[test]
    fn a_txn_seen_whole_passes_and_a_split_or_partial_one_does_not() {
        let answered = vec![
            part(1, "/k/a", "1a", Output::Put { revision: 5 }),
            part(1, "/k/b", "1b", Output::Put { revision: 5 }),
        ];
        let whole = watch(vec![event("/k/a", "1a", 5, 1), event("/k/b", "1b", 5, 1)]);
        let c = check(&answered, &[whole]);
        assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
        assert_eq!(c.checked, 1);

        let split = watch(vec![event("/k/a", "1a", 5, 1), event("/k/b", "1b", 5, 2)]);
        let c = check(&answered, &[split]);
        assert_eq!(c.verdict, Verdict::Violation);
        assert!(c.details[0].contains("split over responses"), "{c:?}");

        let partial = watch(vec![event("/k/a", "1a", 5, 1)]);
        let c = check(&answered, &[partial]);
        assert!(c.details[0].contains("without its put of /k/b"), "{c:?}");

        let torn = watch(vec![event("/k/a", "1a", 5, 1), event("/k/b", "1b", 6, 1)]);
        let c = check(&answered, &[torn]);
        assert!(c.details[0].contains("revisions [5, 6]"), "{c:?}");
    }

    #[test]
    fn an_unanswered_txn_is_held_to_what_the_watches_show() {
        let unknown = Output::Unknown {
            error: "timeout".into(),
        };
        let ops = vec![
            part(2, "/k/a", "2a", unknown.clone()),
            part(2, "/k/b", "2b", unknown),
        ];
        // Seen whole by one watcher, at another revision by a second one.
        let one = watch(vec![event("/k/a", "2a", 7, 3), event("/k/b", "2b", 7, 3)]);
        let mut other = watch(vec![event("/k/a", "2a", 8, 1), event("/k/b", "2b", 8, 1)]);
        other.watcher = 1;
        assert_eq!(check(&ops, std::slice::from_ref(&one)).verdict, Verdict::Ok);
        let c = check(&ops, &[one, other]);
        assert!(c.details[0].contains("watcher 0 says 7"), "{c:?}");
        // A watcher whose prefix leaves a key out is not asked for that key's event.
        let mut narrow = watch(vec![event("/k/a", "2a", 7, 1)]);
        narrow.prefix = "/k/a".into();
        assert_eq!(check(&ops, &[narrow]).verdict, Verdict::Ok);
    }
}
