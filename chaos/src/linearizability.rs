//! Linearizability of a KV history against a model of one etcd key, Wing–Gong–Lowe style: a
//! depth-first search over the orders the real-time constraints allow, remembering the
//! (linearized set, model state) pairs already explored. Linearizability is local (Herlihy and
//! Wing), so the history is checked key by key; what ties keys together (one revision counter for
//! the whole store) is checked separately in [`crate::revisions`].
//!
//! An operation without an answer may have taken effect at any point after it was sent, or never:
//! it is placed after every answered operation it could follow, or left out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use crate::history::{Input, Operation, Output};
use crate::{Check, Verdict};

/// The model of one key: its value, its mod revision and the highest revision of a write to it
/// linearized so far (every later write gets a higher one, every later read sees at least it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct State {
    /// Interned value; `None` when absent.
    value: Option<u32>,
    /// `None` when the value was written by an unanswered operation (revision not known yet).
    mod_rev: Option<i64>,
    floor: i64,
}

const ABSENT: State = State {
    value: None,
    mod_rev: Some(0),
    floor: 0,
};

struct Op {
    invoke: u64,
    /// `u64::MAX` for an operation without an answer.
    complete: u64,
    input: Input,
    output: Output,
    /// The interned value the operation writes.
    value: Option<u32>,
    /// Index in the run's history (for reports).
    index: usize,
}

/// The model's transitions: the state `op` leads to from `s`, if it can happen there.
fn step(s: State, op: &Op) -> Option<State> {
    let written = |revision: Option<i64>| State {
        value: op.value,
        mod_rev: revision,
        floor: revision.unwrap_or(s.floor),
    };
    let deleted = |revision: Option<i64>| State {
        value: None,
        mod_rev: Some(0),
        floor: revision.unwrap_or(s.floor),
    };
    match (&op.input, &op.output) {
        (
            Input::Get { .. },
            Output::Get {
                value: _,
                mod_revision,
                revision,
            },
        ) => {
            if op.value != s.value || *revision < s.floor {
                return None;
            }
            match s.mod_rev {
                Some(m) if m == *mod_revision => Some(s),
                Some(_) => None,
                // The unanswered write that set the value is now seen: learn its revision.
                None if *mod_revision > s.floor && *revision >= *mod_revision => Some(State {
                    mod_rev: Some(*mod_revision),
                    floor: *mod_revision,
                    ..s
                }),
                None => None,
            }
        }
        (Input::Put { .. }, Output::Put { revision }) => {
            (*revision > s.floor).then(|| written(Some(*revision)))
        }
        (Input::Put { .. }, Output::Unknown { .. }) => Some(written(None)),
        (
            Input::Delete { .. },
            Output::Delete {
                deleted: d,
                revision,
            },
        ) => match (s.value.is_some(), *d) {
            (true, 1) if *revision > s.floor => Some(deleted(Some(*revision))),
            (false, 0) if *revision >= s.floor => Some(s),
            _ => None,
        },
        // An unanswered operation is placed only where it takes effect: one that would change
        // nothing is the same as one that never happened, which the search allows anyway.
        (Input::Delete { .. }, Output::Unknown { .. }) => s.value.is_some().then(|| deleted(None)),
        (
            Input::Cas { expected, .. },
            Output::Cas {
                succeeded,
                revision,
            },
        ) => {
            let holds = s.mod_rev.map(|m| m == *expected);
            if *succeeded {
                let possible = holds.unwrap_or(*expected > s.floor && *revision > *expected);
                (possible && *revision > s.floor).then(|| written(Some(*revision)))
            } else {
                (holds != Some(true) && *revision >= s.floor).then_some(s)
            }
        }
        (Input::Cas { .. }, Output::Unknown { .. }) => match s.mod_rev {
            Some(m) if m != op_expected(op) => None,
            _ => Some(written(None)),
        },
        // An answer of the wrong kind: the client recorded nonsense.
        _ => None,
    }
}

fn op_expected(op: &Op) -> i64 {
    match op.input {
        Input::Cas { expected, .. } => expected,
        _ => unreachable!("only compare-and-set has an expected revision"),
    }
}

/// How one key's history came out.
enum KeyResult {
    Linearizable,
    /// Not linearizable; the longest order found and the operations none of which could follow.
    Violation {
        order: Vec<usize>,
        stuck: Vec<usize>,
    },
    /// The search ran out of its budget.
    Unknown,
}

/// Searches one key's operations (sorted by invoke time) for a linearization.
fn search(ops: &[Op], deadline: Instant) -> KeyResult {
    let n = ops.len();
    let words = n.div_ceil(64);
    let known = ops.iter().filter(|o| o.complete != u64::MAX).count();
    struct Frame {
        done: Vec<u64>,
        count_known: usize,
        path_len: usize,
        children: Vec<(usize, State)>,
        next: usize,
    }
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    // The operations that can come next: those sent before every remaining one completed.
    let eligible = |done: &[u64]| -> Vec<usize> {
        let min_complete = (0..n)
            .filter(|&i| !is_done(done, i))
            .map(|i| ops[i].complete)
            .min()
            .unwrap_or(u64::MAX);
        (0..n)
            .take_while(|&i| ops[i].invoke <= min_complete)
            .filter(|&i| !is_done(done, i))
            .collect()
    };
    let children = |state: State, done: &[u64]| -> Vec<(usize, State)> {
        eligible(done)
            .into_iter()
            .filter_map(|i| step(state, &ops[i]).map(|s| (i, s)))
            .collect()
    };
    let mut visited: HashSet<(Vec<u64>, State)> = HashSet::new();
    let root = vec![0u64; words];
    let mut path: Vec<usize> = Vec::new();
    let mut best: (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    if known == 0 {
        return KeyResult::Linearizable;
    }
    let mut stack = vec![Frame {
        children: children(ABSENT, &root),
        done: root,
        count_known: 0,
        path_len: 0,
        next: 0,
    }];
    let mut steps = 0u64;
    while let Some(top) = stack.last_mut() {
        path.truncate(top.path_len);
        if top.next >= top.children.len() {
            if best.1.is_empty() || top.path_len > best.0.len() {
                best = (path.clone(), eligible(&top.done));
            }
            stack.pop();
            continue;
        }
        steps += 1;
        if steps.is_multiple_of(4096) && Instant::now() > deadline {
            return KeyResult::Unknown;
        }
        let (i, state) = top.children[top.next];
        top.next += 1;
        let mut done = top.done.clone();
        done[i / 64] |= 1 << (i % 64);
        let count_known = top.count_known + usize::from(ops[i].complete != u64::MAX);
        let path_len = top.path_len + 1;
        if count_known == known {
            return KeyResult::Linearizable;
        }
        if !visited.insert((done.clone(), state)) {
            continue;
        }
        path.push(i);
        let kids = children(state, &done);
        stack.push(Frame {
            children: kids,
            done,
            count_known,
            path_len,
            next: 0,
        });
    }
    KeyResult::Violation {
        order: best.0,
        stuck: best.1,
    }
}

/// Interns values so the model compares numbers.
#[derive(Default)]
struct Values(HashMap<String, u32>);

impl Values {
    fn id(&mut self, v: &str) -> u32 {
        let next = self.0.len() as u32;
        *self.0.entry(v.to_string()).or_insert(next)
    }
}

/// Splits the history by key (dropping reads without an answer: they tell nothing).
fn by_key(history: &[Operation]) -> BTreeMap<String, Vec<Op>> {
    let mut values = Values::default();
    let mut keys: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for (index, o) in history.iter().enumerate() {
        let unknown = matches!(o.output, Output::Unknown { .. });
        if unknown && matches!(o.input, Input::Get { .. }) {
            continue;
        }
        let value = match (&o.input, &o.output) {
            (Input::Get { .. }, Output::Get { value, .. }) => {
                value.as_deref().map(|v| values.id(v))
            }
            (i, _) => i.value().map(|v| values.id(v)),
        };
        keys.entry(o.input.key().to_string()).or_default().push(Op {
            invoke: o.invoke,
            complete: if unknown { u64::MAX } else { o.complete },
            input: o.input.clone(),
            output: o.output.clone(),
            value,
            index,
        });
    }
    for ops in keys.values_mut() {
        ops.sort_by_key(|o| (o.invoke, o.complete));
    }
    keys
}

/// Largest per-key history the failing sub-history is shrunk for (shrinking re-checks it once
/// per operation).
const SHRINK_LIMIT: usize = 300;

/// Checks the history, giving the search `budget` in all.
pub fn check(history: &[Operation], budget: std::time::Duration) -> Check {
    let deadline = Instant::now() + budget;
    let keys = by_key(history);
    let checked = keys.values().map(Vec::len).sum();
    let mut unknown_keys = Vec::new();
    for (key, ops) in &keys {
        match search(ops, deadline) {
            KeyResult::Linearizable => {}
            KeyResult::Unknown => unknown_keys.push(key.clone()),
            KeyResult::Violation { order, stuck } => {
                let mut details = vec![format!(
                    "key {key}: no linearization of its {} operations; the longest order found \
                     ({} operations) ends with:",
                    ops.len(),
                    order.len()
                )];
                for &i in order.iter().rev().take(5).rev() {
                    details.push(format!("  {}", describe(&history[ops[i].index])));
                }
                details.push("and none of these can come next:".to_string());
                for &i in stuck.iter().take(5) {
                    details.push(format!("  {}", describe(&history[ops[i].index])));
                }
                let minimal = shrink(history, ops, deadline);
                details.push(format!(
                    "a failing sub-history of {} operations (run order):",
                    minimal.len()
                ));
                for i in minimal {
                    details.push(format!("  {}", describe(&history[i])));
                }
                return Check {
                    name: "linearizability",
                    checked,
                    verdict: Verdict::Violation,
                    details,
                };
            }
        }
    }
    if unknown_keys.is_empty() {
        Check {
            name: "linearizability",
            checked,
            verdict: Verdict::Ok,
            details: vec![format!("{} keys", keys.len())],
        }
    } else {
        Check {
            name: "linearizability",
            checked,
            verdict: Verdict::Unknown,
            details: vec![format!(
                "the search ran out of its {budget:?} budget on keys {}",
                unknown_keys.join(", ")
            )],
        }
    }
}

/// Drops operations one at a time while the rest still has no linearization; returns the
/// history indices of what is left.
fn shrink(history: &[Operation], ops: &[Op], deadline: Instant) -> Vec<usize> {
    let mut keep: Vec<usize> = (0..ops.len()).collect();
    if ops.len() <= SHRINK_LIMIT {
        let subset = |keep: &[usize]| -> Vec<Operation> {
            keep.iter()
                .map(|&i| history[ops[i].index].clone())
                .collect()
        };
        let mut i = keep.len();
        while i > 0 && Instant::now() < deadline {
            i -= 1;
            let mut without = keep.clone();
            without.remove(i);
            let sub = subset(&without);
            let fails = by_key(&sub)
                .values()
                .any(|o| matches!(search(o, deadline), KeyResult::Violation { .. }));
            if fails {
                keep = without;
            }
        }
    }
    let mut out: Vec<usize> = keep.iter().map(|&i| ops[i].index).collect();
    out.sort_unstable();
    out
}

/// One line for an operation in a report.
pub fn describe(o: &Operation) -> String {
    let ms = |t: u64| t as f64 / 1e6;
    let input = match &o.input {
        Input::Get { key } => format!("get {key}"),
        Input::Put { key, value } => format!("put {key}={value}"),
        Input::Delete { key } => format!("delete {key}"),
        Input::Cas {
            key,
            expected,
            value,
        } => format!("cas {key} if mod_revision=={expected} then put {value}"),
    };
    let output = match &o.output {
        Output::Get {
            value,
            mod_revision,
            revision,
        } => format!(
            "{} (mod_revision {mod_revision}, revision {revision})",
            value.as_deref().unwrap_or("<absent>")
        ),
        Output::Put { revision } => format!("ok, revision {revision}"),
        Output::Delete { deleted, revision } => format!("deleted {deleted}, revision {revision}"),
        Output::Cas {
            succeeded,
            revision,
        } => format!(
            "{}, revision {revision}",
            if *succeeded { "succeeded" } else { "failed" }
        ),
        Output::Unknown { error } => format!("unknown ({error})"),
    };
    format!(
        "client {} [{:.3} ms .. {:.3} ms] {input} -> {output}",
        o.client,
        ms(o.invoke),
        ms(o.complete)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn op(client: usize, invoke: u64, complete: u64, input: Input, output: Output) -> Operation {
        Operation {
            client,
            txn: None,
            invoke,
            complete,
            input,
            output,
        }
    }
    fn put(key: &str, value: &str) -> Input {
        Input::Put {
            key: key.into(),
            value: value.into(),
        }
    }
    fn get(key: &str) -> Input {
        Input::Get { key: key.into() }
    }
    fn got(value: Option<&str>, mod_revision: i64, revision: i64) -> Output {
        Output::Get {
            value: value.map(Into::into),
            mod_revision,
            revision,
        }
    }
    fn unknown() -> Output {
        Output::Unknown {
            error: "timeout".into(),
        }
    }
    fn verdict(h: &[Operation]) -> Verdict {
        check(h, Duration::from_secs(5)).verdict
    }

    #[test]
    fn sequential_and_concurrent_histories_are_linearizable() {
        let h = vec![
            op(0, 0, 10, put("a", "1"), Output::Put { revision: 2 }),
            op(1, 20, 30, get("a"), got(Some("1"), 2, 2)),
            // Concurrent put and get: the get may see either value.
            op(0, 40, 60, put("a", "2"), Output::Put { revision: 3 }),
            op(1, 45, 50, get("a"), got(Some("1"), 2, 2)),
            op(
                2,
                70,
                80,
                Input::Cas {
                    key: "a".into(),
                    expected: 3,
                    value: "3".into(),
                },
                Output::Cas {
                    succeeded: true,
                    revision: 4,
                },
            ),
            op(
                0,
                90,
                95,
                Input::Delete { key: "a".into() },
                Output::Delete {
                    deleted: 1,
                    revision: 5,
                },
            ),
            op(1, 96, 99, get("a"), got(None, 0, 5)),
        ];
        assert_eq!(verdict(&h), Verdict::Ok);
    }

    #[test]
    fn a_stale_read_is_a_violation() {
        let h = vec![
            op(0, 0, 10, put("a", "1"), Output::Put { revision: 2 }),
            op(0, 20, 30, put("a", "2"), Output::Put { revision: 3 }),
            // Sent after the second put was acknowledged, yet sees the first.
            op(1, 40, 50, get("a"), got(Some("1"), 2, 3)),
        ];
        let c = check(&h, Duration::from_secs(5));
        assert_eq!(c.verdict, Verdict::Violation, "{:?}", c.details);
        assert!(c.details.iter().any(|d| d.contains("get a")), "{c:?}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        // The etcd robustness suite's "lost write on crash": acknowledged, then gone.
        let h = vec![
            op(0, 0, 10, put("a", "1"), Output::Put { revision: 2 }),
            op(0, 20, 30, put("a", "2"), Output::Put { revision: 3 }),
            op(1, 100, 110, get("a"), got(Some("1"), 2, 4)),
        ];
        assert_eq!(verdict(&h), Verdict::Violation);
    }

    #[test]
    fn an_unanswered_write_may_or_may_not_have_happened() {
        let took_effect = vec![
            op(0, 0, 10, put("a", "1"), Output::Put { revision: 2 }),
            op(0, 20, 30, put("a", "2"), unknown()),
            op(1, 100, 110, get("a"), got(Some("2"), 3, 3)),
            op(1, 120, 130, get("a"), got(Some("2"), 3, 3)),
        ];
        assert_eq!(verdict(&took_effect), Verdict::Ok);
        let did_not = vec![
            op(0, 0, 10, put("a", "1"), Output::Put { revision: 2 }),
            op(0, 20, 30, put("a", "2"), unknown()),
            op(1, 100, 110, get("a"), got(Some("1"), 2, 2)),
        ];
        assert_eq!(verdict(&did_not), Verdict::Ok);
        // But it cannot take effect before it was sent, nor come and go.
        let flicker = vec![
            op(0, 0, 10, put("a", "1"), Output::Put { revision: 2 }),
            op(0, 20, 30, put("a", "2"), unknown()),
            op(1, 100, 110, get("a"), got(Some("2"), 3, 3)),
            op(1, 120, 130, get("a"), got(Some("1"), 2, 3)),
        ];
        assert_eq!(verdict(&flicker), Verdict::Violation);
        let early = vec![
            op(1, 0, 5, get("a"), got(Some("2"), 3, 3)),
            op(0, 20, 30, put("a", "2"), unknown()),
        ];
        assert_eq!(verdict(&early), Verdict::Violation);
    }

    #[test]
    fn compare_and_set_follows_the_mod_revision() {
        let cas = |expected: i64, value: &str| Input::Cas {
            key: "a".into(),
            expected,
            value: value.into(),
        };
        // Two clients race on the same expected revision: only one may win.
        let both_win = vec![
            op(0, 0, 10, put("a", "1"), Output::Put { revision: 2 }),
            op(
                1,
                20,
                40,
                cas(2, "x"),
                Output::Cas {
                    succeeded: true,
                    revision: 3,
                },
            ),
            op(
                2,
                20,
                40,
                cas(2, "y"),
                Output::Cas {
                    succeeded: true,
                    revision: 4,
                },
            ),
        ];
        assert_eq!(verdict(&both_win), Verdict::Violation);
        let one_wins = vec![
            op(0, 0, 10, put("a", "1"), Output::Put { revision: 2 }),
            op(
                1,
                20,
                40,
                cas(2, "x"),
                Output::Cas {
                    succeeded: true,
                    revision: 3,
                },
            ),
            op(
                2,
                20,
                40,
                cas(2, "y"),
                Output::Cas {
                    succeeded: false,
                    revision: 3,
                },
            ),
            op(3, 50, 60, get("a"), got(Some("x"), 3, 3)),
        ];
        assert_eq!(verdict(&one_wins), Verdict::Ok);
        // A create (expected 0) on an absent key must succeed.
        let create_refused = vec![op(
            0,
            0,
            10,
            cas(0, "x"),
            Output::Cas {
                succeeded: false,
                revision: 1,
            },
        )];
        assert_eq!(verdict(&create_refused), Verdict::Violation);
    }

    #[test]
    fn the_failing_sub_history_is_small() {
        let mut h = Vec::new();
        for i in 0..50u64 {
            h.push(op(
                0,
                i * 10,
                i * 10 + 5,
                put("a", &format!("v{i}")),
                Output::Put {
                    revision: i as i64 + 2,
                },
            ));
        }
        h.push(op(1, 1000, 1010, get("a"), got(Some("v3"), 5, 51)));
        let c = check(&h, Duration::from_secs(5));
        assert_eq!(c.verdict, Verdict::Violation);
        let n: usize = c
            .details
            .iter()
            .find_map(|d| {
                d.strip_prefix("a failing sub-history of ")
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap();
        assert!(n <= 3, "{:#?}", c.details);
    }
}
