//! The control-plane checkers: nothing acknowledged is lost (and nothing refused happened),
//! no pod is bound twice, and the cluster converged after the faults.

use std::collections::{BTreeMap, BTreeSet};

use super::history::{ControlHistory, Outcome, Write};
use crate::Check;

/// Runs every control-plane checker.
pub fn check_all(h: &ControlHistory) -> Vec<Check> {
    let objects = match &h.finals {
        Some(finals) => objects(&h.writes, finals),
        None => Check {
            name: "objects",
            checked: 0,
            verdict: crate::Verdict::Unknown,
            details: vec!["the objects could not be read at the end".into()],
        },
    };
    vec![recovery(h), objects, bound_once(h), convergence(h)]
}

/// Every fault was injected and healed, and the run could read what it needed at the end:
/// an error in the timeline (a fault that could not be injected ends the schedule early) is a
/// violation, so a run cut short never passes as a whole one.
pub fn recovery(h: &ControlHistory) -> Check {
    let errors: Vec<String> = h
        .faults
        .iter()
        .filter(|f| f.action == "error")
        .map(|f| format!("{:.3} s {}: {}", f.at as f64 / 1e9, f.fault, f.detail))
        .collect();
    let injected = h.faults.iter().filter(|f| f.action == "inject").count();
    Check::findings("recovery", injected, errors)
}

/// Every written object ends as its last acknowledged write left it, or as a write with an
/// unknown outcome left it: such a write may take effect at any time after it was sent (an
/// apiserver still retrying a patch after the client gave up, a store proposal committed
/// late), so any of them may be the last to land. An object never acknowledged must be absent
/// or hold what an unknown write set. A value only a refused write set is named as such.
pub fn objects(writes: &[Write], finals: &BTreeMap<String, Option<String>>) -> Check {
    let mut by_object: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
    for w in writes {
        by_object.entry(&w.object).or_default().push(w);
    }
    let mut details = Vec::new();
    for (object, ws) in &by_object {
        let last_ok = ws
            .iter()
            .filter(|w| w.outcome == Outcome::Ok)
            .max_by_key(|w| w.invoke);
        let mut allowed: Vec<(&Option<String>, String)> = Vec::new();
        let absent = None;
        match last_ok {
            Some(w) => allowed.push((&w.sets, format!("{} acknowledged", w.verb))),
            None => allowed.push((&absent, "never written".into())),
        }
        for w in ws
            .iter()
            .filter(|w| matches!(w.outcome, Outcome::Unknown { .. }))
        {
            allowed.push((&w.sets, format!("{} unknown", w.verb)));
        }
        let end = finals.get(*object).cloned().flatten();
        if allowed.iter().any(|(v, _)| **v == end) {
            continue;
        }
        let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "absent".into());
        let refused = ws.iter().find(|w| {
            matches!(w.outcome, Outcome::Refused { .. }) && w.sets.is_some() && w.sets == end
        });
        let mut d = format!(
            "{object}: ends {} but may only be {}",
            shown(&end),
            allowed
                .iter()
                .map(|(v, why)| format!("{} ({why})", shown(v)))
                .collect::<Vec<_>>()
                .join(" or ")
        );
        if let Some(r) = refused {
            d.push_str(&format!(
                "; {} was set only by a {} refused with {:?}",
                shown(&end),
                r.verb,
                r.outcome
            ));
        }
        details.push(d);
        // The object's writes, as the failing sub-history.
        for w in ws {
            details.push(format!(
                "    {:9.3}-{:9.3} s {} {} -> {:?}",
                w.invoke as f64 / 1e9,
                w.complete as f64 / 1e9,
                w.verb,
                shown(&w.sets),
                w.outcome
            ));
        }
    }
    Check::findings("objects", writes.len(), details)
}

/// A pod is bound to one node, once: the watch never sees its `nodeName` change or go back to
/// empty, and no two `Scheduled` events of one pod name different nodes (nor one the watch did
/// not see). Nor do two pods share a UID (one create stored twice).
pub fn bound_once(h: &ControlHistory) -> Check {
    let mut nodes: BTreeMap<&str, (&str, BTreeSet<&str>)> = BTreeMap::new();
    let mut details = Vec::new();
    let mut bound: BTreeMap<&str, bool> = BTreeMap::new();
    // A UID names one object: two pods with one UID are one object stored twice.
    let mut names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in &h.pods {
        names.entry(&p.uid).or_default().insert(&p.name);
    }
    for (uid, n) in &names {
        if n.len() > 1 {
            details.push(format!(
                "pods {} share the uid {uid}",
                n.iter().copied().collect::<Vec<_>>().join(" and ")
            ));
        }
    }
    for p in &h.pods {
        let e = nodes.entry(&p.uid).or_insert((&p.name, BTreeSet::new()));
        match &p.node {
            Some(n) if !n.is_empty() => {
                e.1.insert(n);
                bound.insert(&p.uid, true);
            }
            _ if !p.gone && bound.get(p.uid.as_str()) == Some(&true) => details.push(format!(
                "pod {} ({}): nodeName went back to empty at {:.3} s",
                p.name,
                p.uid,
                p.at as f64 / 1e9
            )),
            _ => {}
        }
    }
    for s in &h.scheduled {
        nodes
            .entry(&s.uid)
            .or_insert((&s.pod, BTreeSet::new()))
            .1
            .insert(&s.node);
    }
    for (uid, (name, on)) in &nodes {
        if on.len() > 1 {
            details.push(format!(
                "pod {name} ({uid}) was bound to {}",
                on.iter().copied().collect::<Vec<_>>().join(" and ")
            ));
        }
    }
    Check::findings("bound-once", nodes.len(), details)
}

/// The cluster converged within the time allowed: every component back, one leader per HA
/// pair, every Deployment at its replicas with only up-to-date pods, all running and ready.
pub fn convergence(h: &ControlHistory) -> Check {
    let c = &h.convergence;
    let mut details = Vec::new();
    match c.after {
        Some(s) => details.push(format!("converged {s:.1} s after the faults ended")),
        None => {
            details.push(format!(
                "not converged {:.0} s after the faults ended:",
                c.allowed
            ));
            details.extend(c.pending.iter().map(|p| format!("    {p}")));
        }
    }
    Check {
        name: "convergence",
        checked: 1,
        verdict: if c.after.is_some() {
            crate::Verdict::Ok
        } else {
            crate::Verdict::Violation
        },
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verdict;
    use crate::control::history::{Convergence, PodSeen, Scheduled};

    fn w(object: &str, verb: &str, sets: Option<&str>, at: u64, outcome: Outcome) -> Write {
        Write {
            writer: 0,
            object: object.into(),
            verb: verb.into(),
            sets: sets.map(str::to_string),
            invoke: at,
            complete: at + 1,
            outcome,
        }
    }

    fn unknown() -> Outcome {
        Outcome::Unknown {
            error: "no answer".into(),
        }
    }

    fn refused() -> Outcome {
        Outcome::Refused {
            code: 404,
            reason: "NotFound".into(),
        }
    }

    fn finals(entries: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn an_acknowledged_write_must_be_what_is_left() {
        let writes = vec![
            w("configmap/a", "create", Some("w1"), 10, Outcome::Ok),
            w("configmap/a", "patch", Some("w2"), 20, Outcome::Ok),
            w("configmap/b", "create", Some("w3"), 30, Outcome::Ok),
            w("configmap/b", "delete", None, 40, Outcome::Ok),
        ];
        let ok = objects(&writes, &finals(&[("configmap/a", Some("w2"))]));
        assert_eq!(ok.verdict, Verdict::Ok, "{:?}", ok.details);
        // The patch lost: the object went back to its first value.
        let lost = objects(&writes, &finals(&[("configmap/a", Some("w1"))]));
        assert_eq!(lost.verdict, Verdict::Violation);
        assert!(lost.details[0].contains("configmap/a: ends w1"), "{lost:?}");
        // The delete undone.
        let back = objects(
            &writes,
            &finals(&[("configmap/a", Some("w2")), ("configmap/b", Some("w3"))]),
        );
        assert_eq!(back.verdict, Verdict::Violation);
        // An acknowledged create lost.
        let gone = objects(&writes, &finals(&[]));
        assert_eq!(gone.verdict, Verdict::Violation);
    }

    #[test]
    fn an_unknown_write_may_land_at_any_time_a_refused_one_never() {
        let writes = vec![
            w("configmap/a", "create", Some("w1"), 10, Outcome::Ok),
            w("configmap/a", "patch", Some("w2"), 20, unknown()),
            w("configmap/a", "patch", Some("w3"), 30, Outcome::Ok),
            w("configmap/a", "patch", Some("w4"), 40, refused()),
            w("configmap/c", "create", Some("w5"), 50, unknown()),
        ];
        for end in [Some("w2"), Some("w3")] {
            let c = objects(&writes, &finals(&[("configmap/a", end)]));
            assert_eq!(c.verdict, Verdict::Ok, "{end:?}: {:?}", c.details);
        }
        let c = objects(&writes, &finals(&[("configmap/a", Some("w4"))]));
        assert_eq!(c.verdict, Verdict::Violation);
        assert!(
            c.details[0].contains("set only by a patch refused"),
            "{c:?}"
        );
        // An unknown create: there or not.
        for end in [None, Some("w5")] {
            let c = objects(
                &writes,
                &finals(&[("configmap/a", Some("w3")), ("configmap/c", end)]),
            );
            assert_eq!(c.verdict, Verdict::Ok, "{end:?}: {:?}", c.details);
        }
        // Something nobody wrote.
        let c = objects(&writes, &finals(&[("configmap/a", Some("w9"))]));
        assert_eq!(c.verdict, Verdict::Violation);
    }

    fn seen(at: u64, uid: &str, node: Option<&str>, gone: bool) -> PodSeen {
        PodSeen {
            at,
            uid: uid.into(),
            name: format!("pod-{uid}"),
            node: node.map(str::to_string),
            phase: "Running".into(),
            ready: true,
            deleting: gone,
            gone,
        }
    }

    #[test]
    fn a_pod_bound_twice_is_found() {
        let mut h = ControlHistory {
            pods: vec![
                seen(1, "u1", None, false),
                seen(2, "u1", Some("n1"), false),
                seen(3, "u1", Some("n1"), true),
                seen(4, "u2", Some("n2"), false),
            ],
            scheduled: vec![Scheduled {
                uid: "u2".into(),
                pod: "pod-u2".into(),
                node: "n2".into(),
                count: 1,
            }],
            ..Default::default()
        };
        assert_eq!(bound_once(&h).verdict, Verdict::Ok);
        h.pods.push(seen(5, "u2", Some("n3"), false));
        let c = bound_once(&h);
        assert_eq!(c.verdict, Verdict::Violation);
        assert!(c.details[0].contains("bound to n2 and n3"), "{c:?}");
        h.pods.pop();
        h.pods.push(seen(5, "u2", None, false));
        assert!(bound_once(&h).details[0].contains("went back to empty"));
        h.pods.pop();
        // One object stored twice under two names.
        let mut twin = seen(5, "u2", Some("n2"), false);
        twin.name = "pod-twin".into();
        h.pods.push(twin);
        assert!(
            bound_once(&h).details[0].contains("pods pod-twin and pod-u2 share the uid u2"),
            "{:?}",
            bound_once(&h)
        );
        h.pods.pop();
        // A second scheduler's event for another node, missed by the watch.
        h.scheduled.push(Scheduled {
            uid: "u1".into(),
            pod: "pod-u1".into(),
            node: "n2".into(),
            count: 1,
        });
        assert_eq!(bound_once(&h).verdict, Verdict::Violation);
    }

    #[test]
    fn an_error_in_the_timeline_fails_recovery_and_no_final_read_leaves_objects_undecided() {
        let step = |action: &str| crate::history::FaultStep {
            fault: "kill-all".into(),
            action: action.into(),
            detail: "x".into(),
            at: 1,
        };
        let mut h = ControlHistory {
            faults: vec![step("inject")],
            finals: Some(BTreeMap::new()),
            ..Default::default()
        };
        assert_eq!(recovery(&h).verdict, Verdict::Ok);
        h.faults.push(step("error"));
        assert_eq!(recovery(&h).verdict, Verdict::Violation);
        h.finals = None;
        let objects = check_all(&h)
            .into_iter()
            .find(|c| c.name == "objects")
            .unwrap();
        assert_eq!(objects.verdict, Verdict::Unknown);
    }

    #[test]
    fn convergence_is_a_violation_when_it_did_not_happen() {
        let mut h = ControlHistory {
            convergence: Convergence {
                after: Some(4.2),
                allowed: 120.0,
                pending: Vec::new(),
            },
            ..Default::default()
        };
        assert_eq!(convergence(&h).verdict, Verdict::Ok);
        h.convergence.after = None;
        h.convergence.pending = vec!["deployment web-0: 2 of 3 pods ready".into()];
        let c = convergence(&h);
        assert_eq!(c.verdict, Verdict::Violation);
        assert!(c.details[1].contains("web-0"));
    }
}
