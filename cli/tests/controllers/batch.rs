//! Jobs (completions, failures, Indexed) and CronJobs; the test plays the kubelet by setting pod
//! phases.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::ControllerManager;

fn job(name: &str, extra: &str) -> String {
    format!(
        r#"{{"apiVersion":"batch/v1","kind":"Job","metadata":{{"name":"{name}"}},
        "spec":{{{extra}"template":{{"spec":{{"restartPolicy":"Never",
        "containers":[{{"name":"c","image":"busybox","command":["true"]}}]}}}}}}}}"#
    )
}

/// Sets the phase of every non-finished pod of job `name`; returns how many it changed.
fn finish_pods(c: &ApiCluster, name: &str, phase: &str) -> usize {
    let pods = c.ok(&[
        "get",
        "pods",
        "-l",
        &format!("batch.kubernetes.io/job-name={name}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase}={.metadata.deletionTimestamp} {end}",
    ]);
    let mut n = 0;
    for p in pods.split_whitespace() {
        let mut parts = p.split('=');
        let (pod, current, deleting) = (
            parts.next().unwrap(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if matches!(current, "Succeeded" | "Failed") || !deleting.is_empty() {
            continue;
        }
        let patch = format!(r#"{{"status":{{"phase":"{phase}"}}}}"#);
        c.ok(&[
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
        n += 1;
    }
    n
}

fn jsonpath(c: &ApiCluster, what: &str, path: &str) -> String {
    c.ok(&["get", what, "-o", &format!("jsonpath={path}")])
}

#[test]
fn jobs_complete_fail_and_index() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);

    // Three completions, two at a time.
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &job("work", r#""completions":3,"parallelism":2,"#),
    );
    eventually(Duration::from_secs(60), "two active pods", || {
        jsonpath(&c, "job/work", "{.status.active}") == "2"
    });
    let selector = jsonpath(&c, "job/work", "{.spec.selector.matchLabels}");
    assert!(
        selector.contains("batch.kubernetes.io/controller-uid"),
        "{selector}"
    );
    eventually(Duration::from_secs(60), "job complete", || {
        finish_pods(&c, "work", "Succeeded");
        jsonpath(&c, "job/work", "{.status.succeeded}") == "3"
    });
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/work",
        "--timeout=30s",
    ]);
    let finalizers = c.ok(&[
        "get",
        "pods",
        "-l",
        "batch.kubernetes.io/job-name=work",
        "-o",
        "jsonpath={.items[*].metadata.finalizers}",
    ]);
    assert!(
        finalizers.trim().is_empty(),
        "tracking finalizers left: {finalizers}"
    );
    assert!(jsonpath(&c, "job/work", "{.status.completionTime}").contains('T'));
    let pods = c.ok(&[
        "get",
        "pods",
        "-l",
        "batch.kubernetes.io/job-name=work",
        "-o",
        "name",
    ]);
    assert_eq!(pods.lines().count(), 3, "{pods}");

    // Failures beyond backoffLimit fail the Job.
    c.kubectl_stdin(&["apply", "-f", "-"], &job("flaky", r#""backoffLimit":1,"#));
    eventually(Duration::from_secs(60), "job failed", || {
        finish_pods(&c, "flaky", "Failed");
        jsonpath(
            &c,
            "job/flaky",
            "{.status.conditions[?(@.type==\"Failed\")].reason}",
        ) == "BackoffLimitExceeded"
    });
    assert_eq!(jsonpath(&c, "job/flaky", "{.status.failed}"), "2");

    // A parallelism alone makes a work queue: completions stay unset (as upstream defaults).
    c.kubectl_stdin(&["apply", "-f", "-"], &job("queue", r#""parallelism":2,"#));
    assert_eq!(
        jsonpath(
            &c,
            "job/queue",
            "{.spec.completions}/{.spec.parallelism}/{.spec.podReplacementPolicy}"
        ),
        "/2/TerminatingOrFailed"
    );
    eventually(Duration::from_secs(60), "work queue done", || {
        finish_pods(&c, "queue", "Succeeded");
        jsonpath(
            &c,
            "job/queue",
            "{.status.conditions[?(@.type==\"Complete\")].status}",
        ) == "True"
    });

    // Indexed: one pod per index, completed indexes in interval form.
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &job(
            "indexed",
            r#""completions":3,"parallelism":3,"completionMode":"Indexed","#,
        ),
    );
    eventually(Duration::from_secs(60), "three indexed pods", || {
        let idx = c.ok(&[
            "get",
            "pods",
            "-l",
            "batch.kubernetes.io/job-name=indexed",
            "-o",
            "jsonpath={.items[*].metadata.annotations.batch\\.kubernetes\\.io/job-completion-index}",
        ]);
        let mut v: Vec<&str> = idx.split_whitespace().collect();
        v.sort();
        v == ["0", "1", "2"]
    });
    eventually(Duration::from_secs(60), "indexes complete", || {
        finish_pods(&c, "indexed", "Succeeded");
        jsonpath(&c, "job/indexed", "{.status.completedIndexes}") == "0-2"
    });
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/indexed",
        "--timeout=30s",
    ]);

    // A limit per index: only for Indexed Jobs.
    let refused = c.kubectl_stdin(
        &["apply", "-f", "-"],
        &job("per-index-plain", r#""backoffLimitPerIndex":1,"#),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("requires indexed completion mode"),
        "{err}"
    );
    // With a limit of 0 an index fails at its first failure and is not retried; the other
    // index still runs to success, and the Job then fails for its failed index.
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &job(
            "per-index",
            r#""completions":2,"parallelism":2,"completionMode":"Indexed","backoffLimitPerIndex":0,"#,
        ),
    );
    assert_eq!(
        jsonpath(&c, "job/per-index", "{.spec.backoffLimit}"),
        "2147483647",
        "the Job-wide limit is off"
    );
    let by_index = || -> Vec<(String, String)> {
        let out = c.ok(&[
            "get",
            "pods",
            "-l",
            "batch.kubernetes.io/job-name=per-index",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.metadata.annotations.batch\\.kubernetes\\.io/job-completion-index}={.metadata.annotations.batch\\.kubernetes\\.io/job-index-failure-count} {end}",
        ]);
        out.split_whitespace()
            .map(|p| {
                let v: Vec<&str> = p.split('=').collect();
                assert_eq!(v[2], "0", "no failures yet: {p}");
                (v[0].to_string(), v[1].to_string())
            })
            .collect()
    };
    eventually(Duration::from_secs(60), "two indexed pods", || {
        by_index().len() == 2
    });
    for (pod, index) in by_index() {
        let phase = if index == "0" { "Failed" } else { "Succeeded" };
        c.ok(&[
            "patch",
            "pod",
            &pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{{"phase":"{phase}"}}}}"#),
        ]);
    }
    eventually(Duration::from_secs(60), "job failed by its index", || {
        jsonpath(
            &c,
            "job/per-index",
            "{.status.conditions[?(@.type==\"Failed\")].reason}",
        ) == "FailedIndexes"
    });
    assert_eq!(
        jsonpath(&c, "job/per-index", "{.status.failedIndexes}"),
        "0"
    );
    assert_eq!(
        jsonpath(&c, "job/per-index", "{.status.completedIndexes}"),
        "1"
    );
    assert_eq!(by_index().len(), 2, "the failed index was not retried");

    // A success policy: one succeeded index is enough. The Job says so at once
    // (SuccessCriteriaMet), its other pods are deleted, and it is Complete once they are gone.
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &job(
            "any-one",
            r#""completions":3,"parallelism":3,"completionMode":"Indexed","successPolicy":{"rules":[{"succeededCount":1}]},"#,
        ),
    );
    let pods = || {
        c.ok(&[
            "get",
            "pods",
            "-l",
            "batch.kubernetes.io/job-name=any-one",
            "-o",
            "name",
        ])
    };
    eventually(Duration::from_secs(60), "three indexed pods", || {
        pods().lines().count() == 3
    });
    let first = pods().lines().next().unwrap().to_string();
    c.ok(&[
        "patch",
        &first,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ]);
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/any-one",
        "--timeout=60s",
    ]);
    let reasons = jsonpath(
        &c,
        "job/any-one",
        "{range .status.conditions[*]}{.type}={.reason}={.message};{end}",
    );
    assert_eq!(
        reasons,
        "SuccessCriteriaMet=SuccessPolicy=Matched rules at index 0;Complete=SuccessPolicy=Matched rules at index 0;"
    );
    assert_eq!(pods().lines().collect::<Vec<_>>(), [first.as_str()]);
}

#[test]
fn cronjob_creates_a_job_each_minute() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);
    c.ok(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=* * * * *",
        "--",
        "true",
    ]);
    // The first run is at the next minute boundary.
    eventually(Duration::from_secs(90), "a job from the cronjob", || {
        !c.ok(&["get", "jobs", "-o", "name"]).trim().is_empty()
    });
    let job = c.ok(&["get", "jobs", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert!(job.starts_with("tick-"), "{job}");
    let minutes: i64 = job.trim_start_matches("tick-").parse().unwrap();
    assert!(
        minutes > 29_000_000,
        "name carries the scheduled minute: {job}"
    );
    let owner = c.ok(&[
        "get",
        "job",
        &job,
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(owner, "CronJob");
    eventually(Duration::from_secs(60), "status tracks the run", || {
        jsonpath(&c, "cronjob/tick", "{.status.active[0].name}") == job
            && !jsonpath(&c, "cronjob/tick", "{.status.lastScheduleTime}").is_empty()
    });
    // A bad schedule is reported, not crashed on.
    let bad = c.kubectl(&[
        "create",
        "cronjob",
        "bad",
        "--image=busybox",
        "--schedule=not a schedule",
    ]);
    // kubectl validates client-side too; if it got through, the controller reports it.
    if bad.status.success() {
        eventually(Duration::from_secs(60), "UnparseableSchedule event", || {
            c.ok(&[
                "get",
                "events",
                "--field-selector=involvedObject.name=bad",
                "-o",
                "name",
            ])
            .lines()
            .count()
                > 0
        });
    }
}
