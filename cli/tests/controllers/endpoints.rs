//! Endpoints and EndpointSlices follow pod readiness.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::{ControllerManager, client, fake_kubelet};

#[test]
fn endpoints_and_slices_follow_pod_readiness() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(client(&c.kubeconfig()));
    let kubelet = {
        let _in_runtime = rt.enter();
        fake_kubelet(client, "default")
    };
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=3",
        "--port=8080",
    ]);
    c.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    let addresses = || {
        c.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={range .subsets[*].addresses[*]}{.ip} {end}",
        ])
        .split_whitespace()
        .count()
    };
    let slice_ready = || {
        c.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={range .items[*].endpoints[*]}{.conditions.ready} {end}",
        ])
    };
    // This wait has timed out under the full suite (see the session-5 note); on a timeout the
    // panic shows the pods' readiness and the Endpoints, to tell a lost update from a slow one.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while addresses() != 3 {
        if std::time::Instant::now() > deadline {
            let pods = c.kubectl(&[
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} ip={.status.podIP} ready={.status.conditions[?(@.type==\"Ready\")].status} rv={.metadata.resourceVersion}{\"\\n\"}{end}",
            ]);
            let eps = c.kubectl(&["get", "endpoints", "web", "-o", "yaml"]);
            panic!(
                "timed out waiting for 3 ready addresses\npods:\n{}\nendpoints:\n{}{}",
                String::from_utf8_lossy(&pods.stdout),
                String::from_utf8_lossy(&eps.stdout),
                String::from_utf8_lossy(&eps.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eventually(
        Duration::from_secs(30),
        "3 ready endpoints in slices",
        || {
            slice_ready()
                .split_whitespace()
                .filter(|r| *r == "true")
                .count()
                == 3
        },
    );
    let port = c.ok(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.subsets[0].ports[0].port}",
    ]);
    assert_eq!(port, "8080");
    let owner = c.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences[0].kind}/{.items[0].ports[0].port}",
    ]);
    assert_eq!(owner, "Service/8080");

    // One pod stops being ready: it moves to notReadyAddresses and ready=false.
    let pod = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    c.ok(&[
        "patch",
        "pod",
        &pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    ]);
    eventually(Duration::from_secs(60), "2 ready, 1 not ready", || {
        let not_ready = c.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={range .subsets[*].notReadyAddresses[*]}{.ip} {end}",
        ]);
        addresses() == 2 && not_ready.split_whitespace().count() == 1
    });
    eventually(
        Duration::from_secs(30),
        "slice shows the unready endpoint",
        || {
            let r = slice_ready();
            r.split_whitespace().filter(|r| *r == "false").count() == 1
                && r.split_whitespace().filter(|r| *r == "true").count() == 2
        },
    );

    // No pods: empty Endpoints, one placeholder slice.
    c.ok(&["scale", "deployment", "web", "--replicas=0"]);
    eventually(Duration::from_secs(60), "no addresses", || {
        c.ok(&["get", "endpoints", "web", "-o", "jsonpath={.subsets}"])
            .is_empty()
    });
    eventually(Duration::from_secs(60), "placeholder slice", || {
        let n = c.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ]);
        n.lines().count() == 1 && slice_ready().is_empty()
    });

    // The Service goes: so do its Endpoints and slices.
    c.ok(&["delete", "service", "web"]);
    eventually(
        Duration::from_secs(30),
        "endpoints and slices removed",
        || {
            !c.kubectl(&["get", "endpoints", "web"]).status.success()
                && c.ok(&[
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=web",
                    "-o",
                    "name",
                ])
                .is_empty()
        },
    );
    kubelet.abort();
}
