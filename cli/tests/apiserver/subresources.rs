//! Subresources and cross-group storage: pod eviction with disruption budgets, namespace
//! finalization, and Events shared between core/v1 and events.k8s.io/v1.

use crate::harness::{ApiCluster, Backend, ok};

fn write(c: &ApiCluster, name: &str, body: &str) -> String {
    let p = c.dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn eviction_finalize_and_events() {
    let c = ApiCluster::start(Backend::Keelson, 1);

    // A pending pod is evicted at once; a running pod covered by a budget with no disruptions
    // allowed is refused with 429, and evicted once the budget allows it.
    c.ok(&["run", "pending", "--image=busybox"]);
    let ev = write(
        &c,
        "ev1.json",
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"pending"}}"#,
    );
    c.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/pending/eviction",
        "-f",
        &ev,
    ]);
    assert!(c.fails(&["get", "pod", "pending"]).contains("NotFound"));

    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  nodeName: n1\n  containers: [{name: c, image: nginx}]\n";
    ok(
        c.kubectl_stdin(&["create", "-f", "-"], pod),
        &["create", "pod"],
    );
    c.ok(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
    let pdb = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\nspec: {minAvailable: 1, selector: {matchLabels: {app: web}}}\n";
    ok(
        c.kubectl_stdin(&["create", "-f", "-"], pdb),
        &["create", "pdb"],
    );
    c.ok(&["patch", "pdb", "web", "--subresource=status", "--type=merge", "-p", r#"{"status":{"observedGeneration":1,"disruptionsAllowed":0,"currentHealthy":1,"desiredHealthy":1,"expectedPods":1}}"#]);
    let ev = write(
        &c,
        "ev2.json",
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"web"}}"#,
    );
    let e = c.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/web/eviction",
        "-f",
        &ev,
    ]);
    assert!(e.contains("disruption budget"), "{e}");
    assert!(
        c.ok(&[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}"
        ])
        .is_empty()
    );
    c.ok(&[
        "patch",
        "pdb",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"disruptionsAllowed":1}}"#,
    ]);
    c.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/web/eviction",
        "-f",
        &ev,
    ]);
    // A bound, running pod terminates gracefully: marked, not yet gone.
    assert!(
        !c.ok(&[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}"
        ])
        .is_empty()
    );
    assert_eq!(
        c.ok(&[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptionsAllowed}"
        ]),
        "0"
    );
    assert!(
        c.ok(&[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptedPods}"
        ])
        .contains("web")
    );

    // A deleted namespace waits for its spec.finalizers; finalize removes it.
    c.ok(&["create", "namespace", "doomed"]);
    c.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    assert_eq!(
        c.ok(&["get", "ns", "doomed", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    // (-v=8 shows the Status body: its cause is what controllers stop creating on.)
    let e = c.fails(&["create", "configmap", "late", "-n", "doomed", "-v=8"]);
    assert!(e.contains("being terminated"), "{e}");
    assert!(e.contains("NamespaceTerminating"), "{e}");
    let fin = write(
        &c,
        "fin.json",
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"doomed"},"spec":{"finalizers":[]}}"#,
    );
    c.ok(&[
        "replace",
        "--raw",
        "/api/v1/namespaces/doomed/finalize",
        "-f",
        &fin,
    ]);
    assert!(c.fails(&["get", "ns", "doomed"]).contains("NotFound"));

    // Events written through one API group are read through the other.
    let core = "apiVersion: v1\nkind: Event\nmetadata: {name: e1}\ninvolvedObject: {kind: Pod, name: web, namespace: default}\nreason: Pulled\nmessage: pulled the image\ntype: Normal\n";
    ok(
        c.kubectl_stdin(&["create", "-f", "-"], core),
        &["create", "event"],
    );
    assert_eq!(
        c.ok(&[
            "get",
            "events.v1.events.k8s.io",
            "e1",
            "-o",
            "jsonpath={.note} {.regarding.name}"
        ]),
        "pulled the image web"
    );
    let newer = write(
        &c,
        "e2.json",
        r#"{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"e2"},"eventTime":"2026-01-01T00:00:00.000000Z","reportingController":"keelson/test","reportingInstance":"t1","action":"Test","reason":"Tested","regarding":{"kind":"Pod","name":"web","namespace":"default"},"note":"through events.k8s.io","type":"Normal"}"#,
    );
    c.ok(&[
        "create",
        "--raw",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        "-f",
        &newer,
    ]);
    assert_eq!(
        c.ok(&[
            "get",
            "events.v1.",
            "e2",
            "-o",
            "jsonpath={.message} {.involvedObject.name} {.reportingComponent}"
        ]),
        "through events.k8s.io web keelson/test"
    );
}
