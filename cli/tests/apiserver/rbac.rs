//! `--authorization-mode=RBAC` driven by kubectl with users of their own client certificates:
//! the bootstrap policy, 403s worded as upstream's, `kubectl auth can-i` (with `--as` and
//! `--list`), `kubectl auth whoami`, impersonation checks, and the escalation check on roles and
//! bindings (nothing is written on a refusal).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually, ok};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).trim().to_string(),
    )
}

#[test]
fn rbac_decides_with_upstream_semantics_and_messages() {
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
        ],
    );
    let admin = |args: &[&str]| ok(c.kubectl(args), args);
    eventually(Duration::from_secs(30), "the bootstrap policy", || {
        c.kubectl(&["get", "--raw", "/readyz/poststarthook/rbac/bootstrap-roles"])
            .status
            .success()
    });
    // The bootstrap policy is there, as upstream's.
    let roles = admin(&[
        "get",
        "clusterroles",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {end}",
    ]);
    for r in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:node",
    ] {
        assert!(roles.split(' ').any(|x| x == r), "{r} missing: {roles}");
    }
    assert_eq!(
        admin(&[
            "get",
            "clusterrolebinding",
            "cluster-admin",
            "-o",
            "jsonpath={.subjects[0].name}",
        ]),
        "system:masters"
    );

    let alice = c.user_kubeconfig("alice", &["devs"]);
    let as_alice = |args: &[&str]| c.kubectl_with(&alice, args);
    // Discovery and whoami work for any authenticated user.
    let (out, err) = text(&as_alice(&[
        "api-resources",
        "--api-group=apps",
        "-o",
        "name",
    ]));
    assert!(out.contains("deployments.apps"), "{out}{err}");
    let (out, _) = text(&as_alice(&["auth", "whoami", "-o", "json"]));
    let who: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "alice");
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        serde_json::json!(["devs", "system:authenticated"])
    );
    // Nothing else.
    let o = as_alice(&["get", "pods"]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains(
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
        ),
        "{}",
        text(&o).1
    );
    let o = as_alice(&["get", "nodes", "n1"]);
    assert!(
        text(&o).1.contains(
            r#"nodes "n1" is forbidden: User "alice" cannot get resource "nodes" in API group "" at the cluster scope"#
        ),
        "{}",
        text(&o).1
    );
    let can = |who: &Path, args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        let o = c.kubectl_with(who, &a);
        (o.status.code(), text(&o).0)
    };
    let kc = c.kubeconfig();
    assert_eq!(
        can(
            &kc,
            &["list", "pods", "--as", "alice", "--as-group", "devs"]
        ),
        (Some(1), "no".to_string())
    );

    // A Role bound to alice's group, in one namespace.
    admin(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list,watch",
        "--resource=pods",
    ]);
    admin(&[
        "create",
        "rolebinding",
        "devs-read",
        "--role=pod-reader",
        "--group=devs",
    ]);
    eventually(Duration::from_secs(10), "alice may list pods", || {
        as_alice(&["get", "pods"]).status.success()
    });
    assert!(
        !as_alice(&["get", "pods", "-n", "kube-system"])
            .status
            .success()
    );
    assert_eq!(can(&alice, &["list", "pods"]), (Some(0), "yes".to_string()));
    assert_eq!(
        can(&alice, &["delete", "pods"]),
        (Some(1), "no".to_string())
    );
    assert_eq!(
        can(
            &kc,
            &["watch", "pods", "--as", "alice", "--as-group", "devs"]
        ),
        (Some(0), "yes".to_string())
    );
    let (list, _) = text(&as_alice(&["auth", "can-i", "--list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );

    // A WebSocket exec (a GET) needs `create` on pods/exec, not only `get`.
    admin(&[
        "create",
        "role",
        "exec-getter",
        "--verb=get",
        "--resource=pods/exec",
    ]);
    admin(&[
        "create",
        "rolebinding",
        "devs-exec-get",
        "--role=exec-getter",
        "--group=devs",
    ]);
    admin(&["run", "idle", "--image=busybox", "--", "sleep", "1"]);
    eventually(Duration::from_secs(10), "alice may get pods/exec", || {
        can(&alice, &["get", "pods", "--subresource=exec"]) == (Some(0), "yes".to_string())
    });
    // kubectl logs why its WebSocket (a GET) failed before it falls back to SPDY (a POST).
    let (_, err) = text(&as_alice(&["exec", "-v=6", "idle", "--", "true"]));
    assert!(
        err.lines().any(|l| l.contains(
            r#"RemoteCommand fallback: unable to upgrade streaming request: pods "idle" is forbidden: User "alice" cannot create resource "pods/exec" in API group "" in the namespace "default""#
        )),
        "{err}"
    );

    // Impersonation needs the `impersonate` verb.
    let o = as_alice(&["get", "pods", "--as", "bob"]);
    assert!(
        text(&o).1.contains(
            r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#
        ),
        "{}",
        text(&o).1
    );

    // Escalation: alice may write roles and bindings here, but only with permissions she has.
    admin(&[
        "create",
        "role",
        "rbac-writer",
        "--verb=create,get,list,update,patch",
        "--resource=roles,rolebindings",
    ]);
    admin(&[
        "create",
        "rolebinding",
        "alice-writes",
        "--role=rbac-writer",
        "--user=alice",
    ]);
    eventually(Duration::from_secs(10), "alice may list roles", || {
        as_alice(&["get", "roles"]).status.success()
    });
    let o = as_alice(&[
        "create",
        "role",
        "secret-reader",
        "--verb=get",
        "--resource=secrets",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains(
            r#"roles.rbac.authorization.k8s.io "secret-reader" is forbidden: user "alice" (groups=["devs" "system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#
        ) && text(&o).1.contains(r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#),
        "{}",
        text(&o).1
    );
    let o = as_alice(&[
        "create",
        "rolebinding",
        "grab",
        "--clusterrole=cluster-admin",
        "--user=alice",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o)
            .1
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        text(&o).1
    );
    for (kind, name) in [("role", "secret-reader"), ("rolebinding", "grab")] {
        let o = c.kubectl(&["get", kind, name]);
        assert!(
            text(&o).1.contains("NotFound") || text(&o).1.contains("not found"),
            "a refused {kind} was written: {:?}",
            text(&o)
        );
    }
    // What she holds she may grant.
    ok(
        as_alice(&[
            "create",
            "role",
            "pod-lister",
            "--verb=list",
            "--resource=pods",
        ]),
        &["create role pod-lister"],
    );
    ok(
        as_alice(&[
            "create",
            "rolebinding",
            "bob-lists",
            "--role=pod-lister",
            "--user=bob",
        ]),
        &["create rolebinding bob-lists"],
    );
    let bob = c.user_kubeconfig("bob", &[]);
    eventually(Duration::from_secs(10), "bob may list pods", || {
        c.kubectl_with(&bob, &["get", "pods"]).status.success()
    });
    let o = c.kubectl_with(&bob, &["get", "pod", "x"]);
    assert!(
        text(&o)
            .1
            .contains(r#"User "bob" cannot get resource "pods""#),
        "{:?}",
        text(&o)
    );

    // Node authorization: a kubelet reads the Secrets its pods use, no other node's, and no
    // list of them; it may renew its own Lease only.
    admin(&["create", "secret", "generic", "db", "--from-literal=p=s"]);
    admin(&["create", "secret", "generic", "other", "--from-literal=p=s"]);
    crate::harness::apply(
        &c,
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "uses-db", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "pause",
              "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}]}]}}"#,
    );
    let n1 = c.user_kubeconfig("system:node:n1", &["system:nodes"]);
    let n2 = c.user_kubeconfig("system:node:n2", &["system:nodes"]);
    eventually(Duration::from_secs(10), "n1 may read db", || {
        c.kubectl_with(&n1, &["get", "secret", "db"])
            .status
            .success()
    });
    let o = c.kubectl_with(&n2, &["get", "secret", "db"]);
    assert!(
        text(&o).1.contains(
            r#"secrets "db" is forbidden: User "system:node:n2" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'n2' and this object"#
        ),
        "{:?}",
        text(&o)
    );
    assert!(
        !c.kubectl_with(&n1, &["get", "secret", "other"])
            .status
            .success()
    );
    let o = c.kubectl_with(&n1, &["get", "secrets"]);
    assert!(
        text(&o)
            .1
            .contains("can only read individual secrets objects"),
        "{:?}",
        text(&o)
    );
    assert!(c.kubectl_with(&n1, &["get", "pods", "-A"]).status.success());
    let o = c.kubectl_with(&n1, &["-n", "kube-node-lease", "create", "configmap", "x"]);
    assert!(!o.status.success());
    // NodeRestriction: a node writes its own Node only, and creates only mirror pods.
    let n2_node = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}"#;
    let o = c.kubectl_with_stdin(&n1, &["create", "-f", "-"], n2_node);
    assert!(
        text(&o)
            .1
            .contains(r#"node "n1" is not allowed to modify node "n2""#),
        "{:?}",
        text(&o)
    );
    let n1_node = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}"#;
    let o = c.kubectl_with_stdin(&n1, &["create", "-f", "-"], n1_node);
    assert!(o.status.success(), "{:?}", text(&o));
    let plain = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mine", "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "pause"}]}}"#;
    let o = c.kubectl_with_stdin(&n1, &["create", "-f", "-"], plain);
    assert!(
        text(&o).1.contains("can only create mirror pods"),
        "{:?}",
        text(&o)
    );
    // The pod goes: so does n1's access.
    admin(&["delete", "pod", "uses-db", "--grace-period=0", "--force"]);
    eventually(Duration::from_secs(10), "n1 no longer reads db", || {
        !c.kubectl_with(&n1, &["get", "secret", "db"])
            .status
            .success()
    });
}
