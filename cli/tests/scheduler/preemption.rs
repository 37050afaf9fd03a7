//! Preemption of lower-priority pods, and two schedulers electing one leader.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::{Component, add_node, apply, node_of, pod, wait_bound};

#[test]
fn preemption_evicts_a_lower_priority_pod() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    add_node(&c, "n1", "1", json!({}), json!([]));
    let _sched = Component::scheduler(&c, "sched");
    apply(
        &c,
        r#"{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "low"}, "value": 10}"#,
    );
    apply(
        &c,
        r#"{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "high"}, "value": 1000}"#,
    );
    apply(
        &c,
        &pod(
            "victim",
            json!({"app": "v"}),
            "800m",
            json!({"priorityClassName": "low"}),
        ),
    );
    assert_eq!(wait_bound(&c, "victim"), "n1");
    assert_eq!(
        c.ok(&["get", "pod", "victim", "-o", "jsonpath={.spec.priority}"]),
        "10",
        "the Priority admission resolved the class"
    );
    // A pod that may not preempt waits.
    apply(
        &c,
        &pod(
            "polite",
            json!({"app": "p"}),
            "800m",
            json!({"priorityClassName": "high", "preemptionPolicy": "Never"}),
        ),
    );
    eventually(Duration::from_secs(30), "polite reported", || {
        c.ok(&[
            "get",
            "pod",
            "polite",
            "-o",
            "jsonpath={.status.conditions[0].message}",
        ])
        .contains("preemption: not eligible due to preemptionPolicy=Never.")
    });
    c.ok(&["delete", "pod", "polite"]);
    apply(
        &c,
        &pod(
            "vip",
            json!({"app": "vip"}),
            "800m",
            json!({"priorityClassName": "high"}),
        ),
    );
    // The victim is marked and deleted gracefully; the preemptor is nominated to its node.
    eventually(Duration::from_secs(60), "the victim deleted", || {
        !c.ok(&[
            "get",
            "pod",
            "victim",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .is_empty()
    });
    let reason = c.ok(&[
        "get",
        "pod",
        "victim",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"DisruptionTarget\")].reason}",
    ]);
    assert_eq!(reason, "PreemptionByScheduler");
    eventually(Duration::from_secs(30), "vip nominated", || {
        c.ok(&[
            "get",
            "pod",
            "vip",
            "-o",
            "jsonpath={.status.nominatedNodeName}",
        ]) == "n1"
    });
    // While the victim terminates, vip waits for it rather than preempting more.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(node_of(&c, "vip"), "");
    // Play the kubelet: the victim's containers are gone.
    c.ok(&["delete", "pod", "victim", "--grace-period=0", "--force"]);
    assert_eq!(wait_bound(&c, "vip"), "n1");
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=victim,reason=Preempted",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("Preempted by pod"), "{events}");
    // A pod naming a class that does not exist is refused at admission.
    let out = c.kubectl_stdin(
        &["create", "-f", "-"],
        &pod(
            "nope",
            json!({}),
            "1m",
            json!({"priorityClassName": "missing"}),
        ),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no PriorityClass with name missing was found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn holder(c: &ApiCluster) -> String {
    c.ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-scheduler",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

#[test]
fn two_schedulers_one_leader_no_pod_bound_twice() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    for n in ["n1", "n2", "n3"] {
        add_node(&c, n, "8", json!({}), json!([]));
    }
    let mut scheds = [
        Component::start(&c, "scheduler", "sched0", crate::component::FAST_LEASE),
        Component::start(&c, "scheduler", "sched1", crate::component::FAST_LEASE),
    ];
    eventually(Duration::from_secs(60), "a leader", || {
        !holder(&c).is_empty()
    });
    for i in 0..15 {
        apply(
            &c,
            &pod(
                &format!("before-{i}"),
                json!({"app": "ha"}),
                "10m",
                json!({}),
            ),
        );
    }
    for i in 0..15 {
        wait_bound(&c, &format!("before-{i}"));
    }
    // kill -9 the leader; the other takes over within the lease duration.
    let leader = holder(&c);
    let leads = |s: &Component| s.log_text().contains("successfully acquired lease");
    eventually(Duration::from_secs(10), "leader log", || {
        scheds.iter().any(leads)
    });
    let idx = scheds.iter().position(leads).unwrap();
    assert!(!leads(&scheds[1 - idx]), "both lead");
    scheds[idx].kill();
    for i in 0..15 {
        apply(
            &c,
            &pod(
                &format!("after-{i}"),
                json!({"app": "ha"}),
                "10m",
                json!({}),
            ),
        );
    }
    for i in 0..15 {
        wait_bound(&c, &format!("after-{i}"));
    }
    assert_ne!(holder(&c), leader, "leadership moved");
    // Every pod was bound exactly once: one Scheduled event each, and no bind conflicts.
    let out = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=Scheduled",
        "-o",
        "jsonpath={range .items[*]}{.involvedObject.name} {.count}{\"\\n\"}{end}",
    ]);
    let mut per_pod: HashMap<String, u64> = HashMap::new();
    for l in out.lines() {
        let mut it = l.split_whitespace();
        let (Some(name), Some(n)) = (it.next(), it.next()) else {
            continue;
        };
        *per_pod.entry(name.to_string()).or_default() += n.parse::<u64>().unwrap_or(1);
    }
    assert_eq!(per_pod.len(), 30, "{out}");
    assert!(per_pod.values().all(|n| *n == 1), "{per_pod:?}");
    for s in &scheds {
        assert!(
            !s.log_text().contains("already assigned"),
            "{}",
            s.log_text()
        );
    }
    // The new leader's health and metrics, with upstream's names.
    let live = &scheds[1 - idx];
    assert!(live.get("/healthz").starts_with("ok"));
    let m = live.get("/metrics");
    for want in [
        "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"}",
        "scheduler_scheduling_attempt_duration_seconds_bucket",
        "scheduler_pending_pods{queue=\"active\"}",
        "leader_election_master_status{name=\"kube-scheduler\"} 1",
    ] {
        assert!(m.contains(want), "{want} missing from\n{m}");
    }
}
