//! ResourceQuota and LimitRanger admission with the quota controller, through kubectl: a quota
//! is enforced once the controller has counted it; pods must state what it limits unless a
//! LimitRange fills it in; writes are charged as they are admitted, so concurrent creates
//! cannot overrun it; deletes are given back by the controller; dry runs are checked and not
//! charged; LimitRange bounds refuse containers and claims outside them.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::ControllerManager;

const LIMITS: &str = r#"{"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr", "namespace": "team"},
  "spec": {"limits": [
    {"type": "Container", "default": {"memory": "256Mi"}, "defaultRequest": {"cpu": "250m"}, "max": {"cpu": "1"}},
    {"type": "PersistentVolumeClaim", "max": {"storage": "1Gi"}}
  ]}}"#;

#[test]
fn quota_and_limit_ranges_charge_and_refuse() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);
    c.ok(&["create", "namespace", "team"]);
    c.ok(&[
        "create",
        "quota",
        "q",
        "-n",
        "team",
        "--hard=pods=3,requests.cpu=1,limits.memory=1Gi,services=1,count/secrets=1",
    ]);
    let used = |k: &str| {
        c.ok(&[
            "get",
            "quota",
            "q",
            "-n",
            "team",
            "-o",
            &format!("jsonpath={{.status.used.{}}}", k.replace('.', "\\.")),
        ])
    };
    eventually(Duration::from_secs(60), "the quota counted", || {
        used("pods") == "0"
    });

    // The quota limits cpu requests and memory limits: a pod must state them.
    let err = c.fails(&["run", "bare", "-n", "team", "--image=pause"]);
    assert!(
        err.contains(r#"pods "bare" is forbidden: failed quota: q: must specify limits.memory for: bare; requests.cpu for: bare"#),
        "{err}"
    );

    // A LimitRange fills them in (its max is also the default cpu limit) and says so.
    c.kubectl_stdin(&["apply", "-f", "-"], LIMITS);
    let lr = c.ok(&[
        "get",
        "limitrange",
        "lr",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.limits[0].default.cpu} {.spec.limits[0].defaultRequest.memory}",
    ]);
    assert_eq!(lr, "1 256Mi");
    c.ok(&["run", "a", "-n", "team", "--image=pause"]);
    let got = c.ok(&[
        "get",
        "pod",
        "a",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.containers[0].resources.requests.cpu} {.spec.containers[0].resources.requests.memory} {.spec.containers[0].resources.limits.cpu} {.spec.containers[0].resources.limits.memory}|{.metadata.annotations.kubernetes\\.io/limit-ranger}",
    ]);
    assert_eq!(
        got,
        "250m 256Mi 1 256Mi|LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a"
    );
    // Its max refuses a larger limit.
    let err = c.fails(&[
        "run",
        "big",
        "-n",
        "team",
        "--image=pause",
        r#"--overrides={"spec":{"containers":[{"name":"big","image":"pause","resources":{"limits":{"cpu":"2"}}}]}}"#,
    ]);
    assert!(
        err.contains(
            r#"pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#
        ),
        "{err}"
    );
    let err = String::from_utf8_lossy(
        &c.kubectl_stdin(
            &["apply", "-f", "-"],
            r#"{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "team"},
              "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}}"#,
        )
        .stderr,
    )
    .to_string();
    assert!(
        err.contains(r#"persistentvolumeclaims "data" is forbidden: maximum storage usage per PersistentVolumeClaim is 1Gi, but request is 2Gi"#),
        "{err}"
    );

    // Charged on admission: three pods fill the quota, a fourth is refused.
    c.ok(&["run", "b", "-n", "team", "--image=pause"]);
    c.ok(&["run", "c", "-n", "team", "--image=pause"]);
    eventually(Duration::from_secs(60), "three pods charged", || {
        used("pods") == "3" && used("requests.cpu") == "750m" && used("limits.memory") == "768Mi"
    });
    let err = c.fails(&["run", "d", "-n", "team", "--image=pause"]);
    assert!(
        err.contains(r#"pods "d" is forbidden: exceeded quota: q, requested: pods=1, used: pods=3, limited: pods=3"#),
        "{err}"
    );
    // Object counts: one service fits, a second does not.
    c.ok(&[
        "create",
        "service",
        "clusterip",
        "s1",
        "-n",
        "team",
        "--tcp=80",
    ]);
    let err = c.fails(&[
        "create",
        "service",
        "clusterip",
        "s2",
        "-n",
        "team",
        "--tcp=80",
    ]);
    assert!(
        err.contains(
            "exceeded quota: q, requested: services=1, used: services=1, limited: services=1"
        ),
        "{err}"
    );

    // Any counted kind is given back when deleted (the controller watches its deletes).
    c.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    let err = c.fails(&[
        "create",
        "secret",
        "generic",
        "s2",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    assert!(
        err.contains("exceeded quota: q, requested: count/secrets=1"),
        "{err}"
    );
    c.ok(&["delete", "secret", "s1", "-n", "team"]);
    eventually(Duration::from_secs(60), "the secret given back", || {
        c.kubectl(&[
            "create",
            "secret",
            "generic",
            "s2",
            "-n",
            "team",
            "--from-literal=a=b",
        ])
        .status
        .success()
    });

    // A delete is given back by the controller; a dry run is checked but not charged.
    c.ok(&["delete", "pod", "c", "-n", "team", "--wait=false"]);
    c.ok(&["delete", "pod", "b", "-n", "team", "--wait=false"]);
    eventually(Duration::from_secs(60), "deleted pods given back", || {
        used("pods") == "1"
    });
    c.ok(&[
        "run",
        "x",
        "-n",
        "team",
        "--image=pause",
        "--dry-run=server",
    ]);
    assert_eq!(used("pods"), "1");

    // Two slots left, five creates at once: exactly two are admitted.
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|i| {
                let c = &c;
                s.spawn(move || {
                    c.kubectl(&["run", &format!("racer{i}"), "-n", "team", "--image=pause"])
                        .status
                        .success()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 2, "{results:?}");
    let pods = c.ok(&["get", "pods", "-n", "team", "-o", "name"]);
    assert_eq!(pods.lines().count(), 3, "{pods}");
}
