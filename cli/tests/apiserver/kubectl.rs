//! The kubectl walkthrough: every verb a user reaches for, through TLS with a client certificate,
//! on keelson-store and on etcd.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  namespace: team
  labels: {app: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{containerPort: 80}]
        resources: {limits: {cpu: "1", memory: 64Mi}}
      - name: sidecar
        image: busybox:1.36
        args: [sleep, "3600"]
---
apiVersion: v1
kind: Service
metadata:
  name: shop
  namespace: team
spec:
  type: NodePort
  selector: {app: shop}
  ports: [{port: 80, targetPort: 80}]
"#;

fn walkthrough(c: &ApiCluster) {
    // Version and discovery.
    let v = c.ok(&["version"]);
    assert!(v.contains("Server Version: v1.33"), "{v}");
    let r = c.ok(&["api-resources"]);
    for needle in [
        "deployments",
        "deploy",
        "apps/v1",
        "leases",
        "coordination.k8s.io/v1",
        "pods",
        "po ",
    ] {
        assert!(r.contains(needle), "api-resources lacks {needle}: {r}");
    }

    // kubectl sends these as protobuf.
    c.ok(&["create", "namespace", "team"]);
    c.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "team",
        "--from-literal=a=1",
    ]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "-n",
        "team",
        "--from-literal=password=s3cret",
    ]);
    assert_eq!(
        c.ok(&[
            "get",
            "secret",
            "pw",
            "-n",
            "team",
            "-o",
            "jsonpath={.data.password} {.type}"
        ]),
        "czNjcmV0 Opaque"
    );
    c.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "team",
        "--image=nginx:1.25",
        "--replicas=2",
        "--port=8080",
    ]);
    assert_eq!(
        c.ok(&["get", "deploy", "web", "-n", "team", "-o", "jsonpath={.spec.template.spec.restartPolicy} {.spec.strategy.type} {.metadata.generation}"]),
        "Always RollingUpdate 1"
    );

    // Tables, wide output, all namespaces.
    let t = c.ok(&["get", "deploy", "-n", "team"]);
    assert!(
        t.starts_with("NAME")
            && t.contains("READY")
            && t.contains("UP-TO-DATE")
            && t.contains("web")
            && t.contains("0/2"),
        "{t}"
    );
    let w = c.ok(&["get", "deploy", "-n", "team", "-o", "wide"]);
    assert!(
        w.contains("IMAGES") && w.contains("nginx:1.25") && w.contains("app=web"),
        "{w}"
    );
    // Pods (bound by hand: no scheduler here) and the kinds printed beyond the workloads.
    c.ok(&[
        "run",
        "p1",
        "-n",
        "team",
        "--image=nginx",
        "--overrides",
        r#"{"spec":{"nodeName":"n1"}}"#,
    ]);
    let lines = |t: &str| -> Vec<Vec<String>> {
        t.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let t = lines(&c.ok(&["get", "pods", "-n", "team", "-o", "wide"]));
    assert_eq!(
        t[0],
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
    );
    assert_eq!(t[1][..4], ["p1", "0/1", "Pending", "0"]);
    assert_eq!(t[1][5..], ["<none>", "n1", "<none>", "<none>"]);
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: slow, annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}}\nprovisioner: example.com/slow\n",
    );
    let t = lines(&c.ok(&["get", "storageclass"]));
    assert_eq!(
        t[0],
        [
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE"
        ]
    );
    assert_eq!(
        t[1][..6],
        [
            "slow",
            "(default)",
            "example.com/slow",
            "Delete",
            "Immediate",
            "false"
        ]
    );
    c.ok(&["create", "namespace", "printing"]);
    c.ok(&[
        "create",
        "quota",
        "q",
        "-n",
        "printing",
        "--hard=pods=10,limits.cpu=2",
    ]);
    let t = c.ok(&["get", "quota", "-n", "printing"]);
    assert!(
        t.starts_with("NAME")
            && t.contains("REQUEST")
            && t.contains("LIMIT")
            && t.contains("limits.cpu: "),
        "{t}"
    );
    c.ok(&[
        "create",
        "ingress",
        "web",
        "-n",
        "printing",
        "--class=nginx",
        "--rule=web.example/=web:80",
    ]);
    let t = lines(&c.ok(&["get", "ingress", "-n", "printing"]));
    assert_eq!(t[0], ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]);
    assert_eq!(t[1][..4], ["web", "nginx", "web.example", "80"]);
    let all = c.ok(&["get", "svc", "-A"]);
    assert!(
        all.contains("NAMESPACE") && all.contains("kubernetes") && all.contains("10.96.0.1"),
        "{all}"
    );

    // Client-side apply: create, unchanged, configured.
    let out = crate::harness::ok(c.kubectl_stdin(&["apply", "-f", "-"], APP), &["apply"]);
    assert!(
        out.contains("deployment.apps/shop created") && out.contains("service/shop created"),
        "{out}"
    );
    let out = crate::harness::ok(c.kubectl_stdin(&["apply", "-f", "-"], APP), &["apply"]);
    assert!(
        out.contains("deployment.apps/shop unchanged") && out.contains("service/shop unchanged"),
        "{out}"
    );
    let changed = APP.replace("replicas: 2", "replicas: 3");
    let out = crate::harness::ok(c.kubectl_stdin(&["apply", "-f", "-"], &changed), &["apply"]);
    assert!(out.contains("deployment.apps/shop configured"), "{out}");
    assert_eq!(c.ok(&["get", "deploy", "shop", "-n", "team", "-o", "jsonpath={.spec.replicas} {.metadata.generation} {.spec.template.spec.containers[0].resources.limits.cpu}"]), "3 2 1");
    let np = c.ok(&[
        "get",
        "svc",
        "shop",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    assert!(
        (30000..=32767).contains(&np.parse::<u32>().unwrap()),
        "{np}"
    );

    // Server dry-run changes nothing; diff reports differences with exit code 1.
    let four = APP.replace("replicas: 2", "replicas: 4");
    crate::harness::ok(
        c.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &four),
        &["apply", "--dry-run=server"],
    );
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "shop",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
    let diff = c.kubectl_stdin(&["diff", "-f", "-"], &four);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "diff: {}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(String::from_utf8_lossy(&diff.stdout).contains("replicas: 4"));
    let same = c.kubectl_stdin(&["diff", "-f", "-"], &changed);
    assert_eq!(
        same.status.code(),
        Some(0),
        "diff of the live state: {}{}",
        String::from_utf8_lossy(&same.stdout),
        String::from_utf8_lossy(&same.stderr)
    );

    // Server-side apply: create, re-apply, conflicts with another manager, force, and removal of
    // fields the manager stops applying.
    let ssa = APP
        .split("---")
        .next()
        .unwrap()
        .replace("name: shop", "name: ssa")
        .replace(
            "\n  labels: {app: shop}",
            "\n  labels: {app: ssa, extra: x}",
        )
        .replace("app: shop}", "app: ssa}");
    let out = crate::harness::ok(
        c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &ssa),
        &["apply", "--server-side"],
    );
    assert!(
        out.contains("deployment.apps/ssa serverside-applied"),
        "{out}"
    );
    let mf = c.ok(&[
        "get",
        "deploy",
        "ssa",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.managedFields[0].manager} {.metadata.managedFields[0].operation}",
    ]);
    assert_eq!(mf, "kubectl Apply");
    crate::harness::ok(
        c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &ssa),
        &["apply", "--server-side"],
    );
    c.ok(&["scale", "deploy", "ssa", "-n", "team", "--replicas=4"]);
    let more = ssa.replace("replicas: 2", "replicas: 3");
    let out = c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &more);
    assert!(!out.status.success(), "a conflicting apply must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Apply failed with 1 conflict") && err.contains(".spec.replicas"),
        "{err}"
    );
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "ssa",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "4"
    );
    crate::harness::ok(
        c.kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &more,
        ),
        &["apply", "--force-conflicts"],
    );
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "ssa",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
    let fewer = more.replace("labels: {app: ssa, extra: x}", "labels: {app: ssa}");
    crate::harness::ok(
        c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &fewer),
        &["apply", "--server-side"],
    );
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "ssa",
            "-n",
            "team",
            "-o",
            "jsonpath={.metadata.labels}"
        ]),
        r#"{"app":"ssa"}"#
    );
    let dry = fewer.replace("replicas: 3", "replicas: 7");
    crate::harness::ok(
        c.kubectl_stdin(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            &dry,
        ),
        &["apply", "--server-side", "--dry-run=server"],
    );
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "ssa",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
    c.ok(&["delete", "deploy", "ssa", "-n", "team"]);

    // Unknown fields: kubectl asks for strict validation.
    let bogus = APP.replace("replicas: 2", "replicas: 2\n  bogus: 1");
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &bogus);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field \"spec.bogus\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // label, annotate, scale, patch (strategic keeps the other container, merge, json).
    c.ok(&["label", "deploy", "shop", "-n", "team", "tier=fe"]);
    let l = c.ok(&["get", "deploy", "-n", "team", "-l", "tier=fe", "-o", "name"]);
    assert_eq!(l.trim(), "deployment.apps/shop");
    assert_eq!(
        c.ok(&[
            "get", "deploy", "-n", "team", "-l", "tier!=fe", "-o", "name"
        ])
        .trim(),
        "deployment.apps/web"
    );
    c.ok(&["annotate", "deploy", "shop", "-n", "team", "owner=ops"]);
    c.ok(&["scale", "deploy", "shop", "-n", "team", "--replicas=5"]);
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "shop",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.annotations.owner}"
        ]),
        "5 ops"
    );
    c.ok(&[
        "patch",
        "deploy",
        "shop",
        "-n",
        "team",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}}}}"#,
    ]);
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "shop",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}"
        ]),
        "nginx:1.27 busybox:1.36"
    );
    c.ok(&[
        "patch",
        "deploy",
        "shop",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":null}}}"#,
    ]);
    c.ok(&[
        "patch",
        "deploy",
        "shop",
        "-n",
        "team",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":1}]"#,
    ]);
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "shop",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.labels.tier}"
        ]),
        "1 "
    );
    let out = c.ok(&[
        "patch",
        "deploy",
        "shop",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":1}}"#,
    ]);
    assert!(out.contains("(no change)"), "{out}");

    // edit: kubectl opens $KUBE_EDITOR on the object and sends a strategic merge patch.
    let editor = c.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^  a: \"1\"$/  a: edited/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", c.kubeconfig())
        .env("HOME", c.dir.path())
        .env("KUBE_EDITOR", &editor)
        .args(["edit", "cm", "cfg", "-n", "team"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "edit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configmap/cfg edited"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        c.ok(&["get", "cm", "cfg", "-n", "team", "-o", "jsonpath={.data.a}"]),
        "edited"
    );

    // YAML output and describe.
    let y = c.ok(&["get", "cm", "cfg", "-n", "team", "-o", "yaml"]);
    assert!(
        y.contains("kind: ConfigMap") && y.contains("resourceVersion:") && y.contains("uid:"),
        "{y}"
    );
    let d = c.ok(&["describe", "svc", "shop", "-n", "team"]);
    assert!(
        d.contains("NodePort:") && d.contains("Selector:          app=shop")
            || d.contains("app=shop"),
        "{d}"
    );

    // Errors come back as Status objects kubectl prints.
    let e = c.fails(&["get", "deploy", "nope", "-n", "team"]);
    assert!(
        e.contains("Error from server (NotFound): deployments.apps \"nope\" not found"),
        "{e}"
    );
    let e = c.fails(&["create", "configmap", "Bad_Name", "-n", "team"]);
    assert!(
        e.contains("is invalid") && e.contains("metadata.name"),
        "{e}"
    );
    let e = c.fails(&["create", "configmap", "cfg", "-n", "team"]);
    assert!(e.contains("configmaps \"cfg\" already exists"), "{e}");
    let e = c.fails(&["create", "configmap", "x", "-n", "missing-ns"]);
    assert!(e.contains("namespaces \"missing-ns\" not found"), "{e}");

    // Finalizers hold a deleted object until they are removed.
    let fin = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: team\n  finalizers: [example.com/hold]\ndata: {a: b}\n";
    crate::harness::ok(c.kubectl_stdin(&["create", "-f", "-"], fin), &["create"]);
    c.ok(&["delete", "cm", "held", "-n", "team", "--wait=false"]);
    let ts = c.ok(&[
        "get",
        "cm",
        "held",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!ts.is_empty(), "deletionTimestamp not set");
    c.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let e = c.fails(&["get", "cm", "held", "-n", "team"]);
    assert!(e.contains("NotFound"), "{e}");

    // Watch: kubectl get -w sees an object created after it started.
    let out_path = c.dir.path().join("watch.out");
    let mut w = c.kubectl_spawn(
        &["get", "cm", "-n", "team", "-w", "--output-watch-events"],
        &out_path,
    );
    eventually(Duration::from_secs(20), "the watch to list", || {
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .contains("cfg")
    });
    c.ok(&[
        "create",
        "configmap",
        "late",
        "-n",
        "team",
        "--from-literal=x=y",
    ]);
    c.ok(&["delete", "configmap", "late", "-n", "team"]);
    eventually(Duration::from_secs(20), "ADDED and DELETED events", || {
        let s = std::fs::read_to_string(&out_path).unwrap_or_default();
        s.lines()
            .any(|l| l.starts_with("ADDED") && l.contains("late"))
            && s.lines()
                .any(|l| l.starts_with("DELETED") && l.contains("late"))
    });
    let _ = w.kill();
    let _ = w.wait();

    // explain reads the OpenAPI v3 schemas.
    let x = c.ok(&["explain", "deployment.spec.replicas"]);
    assert!(x.contains("replicas") && x.contains("integer"), "{x}");

    // Chunked lists follow continue tokens.
    for i in 0..5 {
        c.ok(&["create", "configmap", &format!("page-{i}"), "-n", "team"]);
    }
    let paged = c.ok(&["get", "cm", "-n", "team", "--chunk-size=2", "-o", "name"]);
    assert_eq!(
        paged.lines().filter(|l| l.contains("page-")).count(),
        5,
        "{paged}"
    );

    // A watch from a recent resourceVersion replays what followed it.
    let list: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/api/v1/namespaces/team/configmaps"]))
            .unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok(&["label", "cm", "cfg", "-n", "team", "replayed=yes"]);
    let replay = c.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/team/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=2"
        ),
    ]);
    let first = replay.lines().next().unwrap_or_default();
    assert!(
        first.contains("\"type\":\"MODIFIED\"") && first.contains("\"replayed\":\"yes\""),
        "{replay}"
    );

    // Bad requests: malformed bodies, oversized bodies, unknown resources, wrong kinds.
    let bad = c.dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let e = c.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/team/configmaps",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert!(
        e.contains("BadRequest") || e.contains("error decoding"),
        "{e}"
    );
    std::fs::write(&bad, format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{}\"}}}}", "x".repeat(4 << 20))).unwrap();
    let e = c.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/team/configmaps",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert!(
        e.contains("too large") || e.contains("RequestEntityTooLarge") || e.contains("413"),
        "{e}"
    );
    std::fs::write(
        &bad,
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"mismatch"}}"#,
    )
    .unwrap();
    let e = c.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/team/configmaps",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert!(e.contains("does not match the expected kind"), "{e}");
    let e = c.fails(&["get", "--raw", "/api/v1/namespaces/team/nopes"]);
    assert!(e.contains("NotFound"), "{e}");
    let e = c.fails(&["get", "cm", "big", "-n", "team"]);
    assert!(
        e.contains("NotFound"),
        "nothing may be written by a failed request: {e}"
    );

    // Delete a deployment and a service; the service's node port is released with it.
    c.ok(&["delete", "deploy", "shop", "-n", "team"]);
    c.ok(&["delete", "svc", "shop", "-n", "team"]);
    let e = c.fails(&["get", "svc", "shop", "-n", "team"]);
    assert!(e.contains("NotFound"), "{e}");
}

#[test]
fn kubectl_walkthrough_on_keelson_store() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| walkthrough(&c)));
    if let Err(e) = r {
        eprintln!("{}", c.logs());
        std::panic::resume_unwind(e);
    }
}

/// On etcd the watch cache is off, so lists and watches take the direct store path.
#[test]
fn kubectl_walkthrough_on_etcd_without_watch_cache() {
    let c = ApiCluster::start_with(Backend::Etcd, 1, &["--default-watch-cache-size=0"]);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| walkthrough(&c)));
    if let Err(e) = r {
        eprintln!("{}", c.logs());
        std::panic::resume_unwind(e);
    }
}

/// A watch cache of 20 events: resuming within the ring replays, older is 410 Expired; after a
/// store compaction the store path answers 410 too.
#[test]
fn watch_resume_and_expiry() {
    for (args, compact) in [
        (&["--default-watch-cache-size=20"][..], false),
        (&["--default-watch-cache-size=0"][..], true),
    ] {
        let c = ApiCluster::start_with(Backend::Keelson, 1, args);
        let mut rvs = Vec::new();
        for i in 0..30 {
            c.ok(&["create", "configmap", &format!("c{i}"), "-n", "default"]);
            rvs.push(c.ok(&[
                "get",
                "cm",
                &format!("c{i}"),
                "-n",
                "default",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ]));
        }
        if compact {
            let last = rvs.last().unwrap().clone();
            crate::cluster::ok(crate::cluster::etcdctl(&c.etcd_url, &["compact", &last]));
        }
        let old = c.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={}&timeoutSeconds=3", rvs[0])]);
        assert!(
            old.contains("\"type\":\"ERROR\"")
                && old.contains("\"code\":410")
                && old.contains("Expired"),
            "{args:?}: {old}"
        );
        if !compact {
            let recent = c.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={}&timeoutSeconds=2", rvs[25])]);
            let names: Vec<String> = recent
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["object"]["metadata"]
                            ["name"]
                            .as_str()
                            .unwrap_or("")
                            .to_string()
                })
                .collect();
            assert_eq!(names, ["c26", "c27", "c28", "c29"], "{recent}");
        }
    }
}

/// `kubectl get ... -o json | kubectl replace -f -`: kubectl validates a List on the client
/// side against `/openapi/v2` in protobuf, so the rewrite works and an unknown field is caught
/// before anything is sent.
#[test]
fn replace_of_a_list_validates_client_side() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    c.ok(&["create", "configmap", "a", "--from-literal=k=v"]);
    c.ok(&[
        "create",
        "deployment",
        "d",
        "--image=registry.k8s.io/pause:3.10",
    ]);
    let json = c.ok(&["get", "configmaps,deployments", "-o", "json"]);
    let out = c.kubectl_stdin(&["replace", "-f", "-"], &json);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("configmap/a replaced") && text.contains("deployment.apps/d replaced"),
        "{text}"
    );
    let mut list: serde_json::Value = serde_json::from_str(&json).unwrap();
    for item in list["items"].as_array_mut().unwrap() {
        if item["kind"] == "Deployment" {
            item["spec"]["replicaz"] = serde_json::json!(3);
        }
    }
    let out = c.kubectl_stdin(&["replace", "-f", "-"], &list.to_string());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field \"replicaz\" in io.k8s.api.apps.v1.DeploymentSpec"),
        "{err}"
    );
}
