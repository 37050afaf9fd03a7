//! VolumeBinding end to end: claims of a `WaitForFirstConsumer` class are bound by the
//! scheduler, before the pod, to a local PersistentVolume that the chosen node can reach; one PV
//! goes to one claim however many pods want it; pods that cannot be placed say why.

use std::time::Duration;

use serde_json::json;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::{Component, add_node, apply, node_of, pod, scheduled_condition, wait_bound};

/// A class without a provisioner, bound at first use, as upstream's local-volume guides set up.
const CLASS: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
"#;

/// A local PV of `size` on `node` only.
fn local_pv(name: &str, node: &str, size: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local",
            "persistentVolumeReclaimPolicy": "Retain",
            "local": {"path": format!("/mnt/{name}")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
        }
    })
    .to_string()
}

/// A claim of `size` in `class` ("" for none).
fn claim(name: &str, class: &str, size: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "resources": {"requests": {"storage": size}}
        }
    })
    .to_string()
}

/// A pod mounting claim `claim`.
fn pod_with(name: &str, claim: &str) -> String {
    pod(
        name,
        json!({"app": name}),
        "10m",
        json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}),
    )
}

fn get(c: &ApiCluster, kind: &str, name: &str, path: &str) -> String {
    c.ok(&["get", kind, name, "-o", &format!("jsonpath={path}")])
}

#[test]
fn wait_for_first_consumer_claims_get_a_reachable_pv_before_the_pod_is_bound() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    add_node(&c, "n1", "4", json!({}), json!([]));
    add_node(&c, "n2", "4", json!({}), json!([]));
    let _sched = Component::scheduler(&c, "sched");
    apply(&c, CLASS);

    // The only PV that fits is on n2 (the one on n1 is too small): the pod goes to n2, and the
    // claim and the PV name each other.
    apply(&c, &local_pv("small-n1", "n1", "512Mi"));
    apply(&c, &local_pv("big-n2", "n2", "2Gi"));
    apply(&c, &claim("data", "local", "1Gi"));
    apply(&c, &pod_with("app", "data"));
    assert_eq!(wait_bound(&c, "app"), "n2");
    assert_eq!(get(&c, "pvc", "data", "{.spec.volumeName}"), "big-n2");
    assert_eq!(
        get(
            &c,
            "pvc",
            "data",
            "{.status.phase}/{.status.capacity.storage}"
        ),
        "Bound/2Gi"
    );
    assert_eq!(
        get(
            &c,
            "pv",
            "big-n2",
            "{.spec.claimRef.namespace}/{.spec.claimRef.name}/{.status.phase}"
        ),
        "default/data/Bound"
    );
    assert_eq!(
        get(&c, "pv", "big-n2", "{.spec.claimRef.uid}"),
        get(&c, "pvc", "data", "{.metadata.uid}")
    );
    assert_eq!(
        get(&c, "pv", "small-n1", "{.spec.claimRef}"),
        "",
        "the PV that did not fit stays free"
    );

    // Two pods, each with a claim, and no PV left for either: both wait and say why.
    apply(&c, &claim("one", "local", "1Gi"));
    apply(&c, &claim("two", "local", "1Gi"));
    apply(&c, &pod_with("p1", "one"));
    apply(&c, &pod_with("p2", "two"));
    let want = "False/Unschedulable/0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind.";
    for p in ["p1", "p2"] {
        eventually(
            Duration::from_secs(30),
            &format!("{p} unschedulable"),
            || scheduled_condition(&c, p).starts_with(want),
        );
    }
    // One PV arrives for them: it wakes both, and exactly one gets it.
    apply(&c, &local_pv("new-n1", "n1", "1Gi"));
    let mut winner = String::new();
    eventually(Duration::from_secs(60), "one of p1, p2 bound", || {
        let bound: Vec<&str> = ["p1", "p2"]
            .into_iter()
            .filter(|p| !node_of(&c, p).is_empty())
            .collect();
        if let [p] = bound[..] {
            winner = p.to_string();
        }
        !bound.is_empty()
    });
    assert!(!winner.is_empty(), "both pods were bound to one PV");
    assert_eq!(node_of(&c, &winner), "n1");
    let (won, lost, loser) = if winner == "p1" {
        ("one", "two", "p2")
    } else {
        ("two", "one", "p1")
    };
    assert_eq!(get(&c, "pv", "new-n1", "{.spec.claimRef.name}"), won);
    assert_eq!(get(&c, "pvc", won, "{.spec.volumeName}"), "new-n1");
    // Give the loser time to be tried again against the PV it lost.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(node_of(&c, loser), "", "{loser} was bound without a PV");
    assert_eq!(get(&c, "pvc", lost, "{.spec.volumeName}"), "");
    assert!(scheduled_condition(&c, loser).starts_with(want));

    // A claim that does not exist, and an unbound claim of a class bound at once (left to the PV
    // controller, which this cluster does not run).
    apply(&c, &pod_with("orphan", "missing"));
    eventually(Duration::from_secs(30), "orphan reported", || {
        scheduled_condition(&c, "orphan").contains("persistentvolumeclaim \"missing\" not found")
    });
    apply(&c, &claim("instant", "", "1Gi"));
    apply(&c, &pod_with("eager", "instant"));
    eventually(Duration::from_secs(30), "eager reported", || {
        scheduled_condition(&c, "eager")
            .contains("pod has unbound immediate PersistentVolumeClaims")
    });
    assert_eq!(node_of(&c, "orphan"), "");
    assert_eq!(node_of(&c, "eager"), "");
}
