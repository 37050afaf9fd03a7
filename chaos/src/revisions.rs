//! What ties keys together: one revision counter for the whole store. An operation sent after
//! another was answered sees at least its revision (a write gets a higher one), and no two writes
//! share a revision unless they are puts of one multi-key txn.

use std::collections::HashMap;

use crate::Check;
use crate::history::Operation;
use crate::linearizability::describe;

/// Checks the revisions of the answered operations.
pub fn check(history: &[Operation]) -> Check {
    let answered: Vec<&Operation> = history
        .iter()
        .filter(|o| o.output.revision().is_some())
        .collect();
    let mut details = Vec::new();

    let mut by_complete = answered.clone();
    by_complete.sort_by_key(|o| o.complete);
    let mut by_invoke = answered.clone();
    by_invoke.sort_by_key(|o| o.invoke);
    // The highest revision among operations answered before the current one was sent.
    let mut before: Option<&Operation> = None;
    let mut next = 0;
    for b in &by_invoke {
        while next < by_complete.len() && by_complete[next].complete < b.invoke {
            let a = by_complete[next];
            if before.is_none_or(|m| a.output.revision() > m.output.revision()) {
                before = Some(a);
            }
            next += 1;
        }
        let (Some(a), Some(rb)) = (before, b.output.revision()) else {
            continue;
        };
        let ra = a.output.revision().unwrap_or(0);
        let bad = rb < ra || (b.output.mutated() && rb == ra);
        if bad && details.len() < 10 {
            details.push(format!(
                "revision went back in real time: {} answered before {} was sent",
                describe(a),
                describe(b)
            ));
        }
    }

    let mut writes: HashMap<i64, &Operation> = HashMap::new();
    for o in &answered {
        if !o.output.mutated() {
            continue;
        }
        let r = o.output.revision().unwrap_or(0);
        if let Some(other) = writes.insert(r, o)
            && (other.txn.is_none() || other.txn != o.txn)
            && details.len() < 20
        {
            details.push(format!(
                "two writes got revision {r}: {} and {}",
                describe(other),
                describe(o)
            ));
        }
    }
    Check::findings("revisions", answered.len(), details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verdict;
    use crate::history::{Input, Output};

    fn put(invoke: u64, complete: u64, key: &str, revision: i64) -> Operation {
        Operation {
            client: 0,
            txn: None,
            invoke,
            complete,
            input: Input::Put {
                key: key.into(),
                value: format!("{key}{revision}"),
            },
            output: Output::Put { revision },
        }
    }
    fn get(invoke: u64, complete: u64, key: &str, revision: i64) -> Operation {
        Operation {
            client: 1,
            txn: None,
            invoke,
            complete,
            input: Input::Get { key: key.into() },
            output: Output::Get {
                value: None,
                mod_revision: 0,
                revision,
            },
        }
    }

    #[test]
    fn revisions_follow_real_time_across_keys() {
        let ok = vec![
            put(0, 10, "a", 2),
            put(5, 20, "b", 3),
            get(30, 40, "c", 3),
            put(50, 60, "a", 4),
        ];
        assert_eq!(check(&ok).verdict, Verdict::Ok);
        // A read of another key that is served from a stale replica.
        let stale = vec![put(0, 10, "a", 2), put(20, 30, "b", 3), get(40, 50, "c", 2)];
        let c = check(&stale);
        assert_eq!(c.verdict, Verdict::Violation, "{c:?}");
        // A write that does not advance the revision.
        let same = vec![get(0, 10, "c", 5), put(20, 30, "a", 5)];
        assert_eq!(check(&same).verdict, Verdict::Violation);
        let duplicate = vec![put(0, 10, "a", 2), put(0, 10, "b", 2)];
        assert_eq!(check(&duplicate).verdict, Verdict::Violation);
        // The puts of one txn share its revision; puts of two txns do not.
        let txn = |t, key| Operation {
            txn: Some(t),
            ..put(0, 10, key, 2)
        };
        assert_eq!(check(&[txn(1, "a"), txn(1, "b")]).verdict, Verdict::Ok);
        assert_eq!(
            check(&[txn(1, "a"), txn(2, "b")]).verdict,
            Verdict::Violation
        );
    }
}
