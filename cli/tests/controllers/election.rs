//! Two controller-managers elect one leader through a Lease; kill -9 of the leader hands over
//! within the lease duration and no pod is created twice.

use std::time::{Duration, Instant};

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::ControllerManager;

use crate::component::FAST_LEASE as FAST;

fn holder(c: &ApiCluster) -> String {
    c.ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-controller-manager",
        "-o",
        "jsonpath={.spec.holderIdentity}/{.spec.leaseTransitions}",
    ])
}

fn pod_count(c: &ApiCluster) -> usize {
    c.ok(&["get", "pods", "-l", "app=ha", "-o", "name"])
        .lines()
        .count()
}

#[test]
fn leader_election_hands_over_without_duplicate_pods() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let mut cms = [
        ControllerManager::start(&c, "controller-manager", "cm0", FAST),
        ControllerManager::start(&c, "controller-manager", "cm1", FAST),
    ];
    eventually(Duration::from_secs(60), "a leader", || {
        c.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kube-controller-manager",
        ])
        .status
        .success()
    });
    let leads = |cm: &ControllerManager| cm.log_text().contains("successfully acquired lease");
    eventually(Duration::from_secs(10), "leader log", || {
        cms.iter().any(leads)
    });
    let leader = cms.iter().position(leads).unwrap();
    let other = 1 - leader;
    assert!(!leads(&cms[other]), "both lead");
    let (first_holder, transitions) = {
        let h = holder(&c);
        let (a, b) = h.split_once('/').unwrap();
        (a.to_string(), b.parse::<i32>().unwrap())
    };

    // Health and the leader-election metric on both.
    assert!(cms[leader].get("/healthz").starts_with("ok"));
    assert!(
        cms[leader]
            .get("/healthz?verbose")
            .contains("[+]leaderElection ok")
    );
    let m = cms[leader].get("/metrics");
    assert!(
        m.contains("leader_election_master_status{name=\"kube-controller-manager\"} 1"),
        "{m}"
    );
    let m = cms[other].get("/metrics");
    assert!(
        m.contains("leader_election_master_status{name=\"kube-controller-manager\"} 0"),
        "{m}"
    );

    let rs = r#"{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"ha"},
        "spec":{"replicas":5,"selector":{"matchLabels":{"app":"ha"}},
        "template":{"metadata":{"labels":{"app":"ha"}},"spec":{"containers":[{"name":"c","image":"nginx"}]}}}}"#;
    c.kubectl_stdin(&["apply", "-f", "-"], rs);
    eventually(Duration::from_secs(60), "5 pods", || pod_count(&c) == 5);

    // kill -9 the leader and ask for more pods at once: only the successor may create them.
    cms[leader].kill();
    let killed = Instant::now();
    c.ok(&["scale", "rs", "ha", "--replicas=8"]);
    eventually(Duration::from_secs(60), "8 pods after the handover", || {
        pod_count(&c) == 8
    });
    let took = killed.elapsed();
    let after = holder(&c);
    assert_ne!(after.split('/').next().unwrap(), first_holder, "{after}");
    assert_eq!(
        after.split('/').nth(1).unwrap().parse::<i32>().unwrap(),
        transitions + 1
    );
    assert!(leads(&cms[other]));
    // Nothing more appears: the set converged on exactly 8.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pod_count(&c),
        8,
        "duplicate pods after handover (took {took:?})"
    );

    // A clean stop releases the lease: the holder is emptied at once.
    let status = cms[other].stop();
    assert!(status.success(), "{status:?}\n{}", cms[other].log_text());
    let released = holder(&c);
    assert!(released.starts_with('/'), "{released}");
}
