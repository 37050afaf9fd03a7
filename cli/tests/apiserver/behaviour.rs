//! Storage-facing behaviour: failover across several `--etcd-servers`, exact-revision lists,
//! expired continue tokens, and field validation warnings.

use crate::cluster::{Cluster, etcdctl, ok as etcd_ok};
use crate::harness::{ApiCluster, Backend};

#[test]
fn apiserver_fails_over_between_store_members() {
    let mut store = Cluster::start(3);
    let urls: Vec<String> = store.members.iter().map(|m| m.client.clone()).collect();
    let c = ApiCluster::on_store(&urls.join(","), 1, &[]);
    c.ok(&["create", "configmap", "before", "--from-literal=a=1"]);
    // Kill the leader: until another is elected the members refuse the apiserver's calls
    // (it asks for a leader), and it waits the election out instead of failing them.
    let leader = urls
        .iter()
        .position(|u| {
            let status: serde_json::Value =
                serde_json::from_str(&etcd_ok(etcdctl(u, &["endpoint", "status", "-w", "json"])))
                    .unwrap();
            let s = &status[0]["Status"];
            s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"]
        })
        .expect("a leader");
    store.kill(leader);
    for i in 0..5 {
        let out = c.kubectl(&["create", "configmap", &format!("leaderless-{i}")]);
        assert!(
            out.status.success(),
            "write {i} after losing the store's leader: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.logs()
        );
    }
    store.start_member(leader);
    store.wait_ready(std::time::Duration::from_secs(30));
    // The apiserver talks to the first endpoint first: kill that member.
    store.kill(0);
    for i in 0..5 {
        let out = c.kubectl(&["create", "configmap", &format!("after-{i}")]);
        assert!(
            out.status.success(),
            "write {i} after losing a store member: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.logs()
        );
    }
    assert_eq!(
        c.ok(&["get", "cm", "before", "-o", "jsonpath={.data.a}"]),
        "1"
    );
}

#[test]
fn exact_lists_expired_continues_and_warnings() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    for i in 0..4 {
        c.ok(&["create", "configmap", &format!("c{i}")]);
    }
    let list: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]))
            .unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok(&["create", "configmap", "later"]);
    // resourceVersionMatch=Exact reads the list as it was at that revision.
    let exact: serde_json::Value = serde_json::from_str(&c.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"
        ),
    ]))
    .unwrap();
    let names: Vec<&str> = exact["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"later") && names.contains(&"c3"),
        "{names:?}"
    );
    let e = c.fails(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?resourceVersionMatch=Exact",
    ]);
    assert!(
        e.contains("BadRequest") || e.contains("resourceVersionMatch"),
        "{e}"
    );

    // A continue token whose revision the store has compacted is 410 Expired.
    let page: serde_json::Value = serde_json::from_str(&c.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?limit=2",
    ]))
    .unwrap();
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    c.ok(&["create", "configmap", "even-later"]);
    let now: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]))
            .unwrap();
    etcd_ok(etcdctl(
        &c.etcd_url,
        &[
            "compact",
            now["metadata"]["resourceVersion"].as_str().unwrap(),
        ],
    ));
    let e = c.fails(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?limit=2&continue={token}"),
    ]);
    assert!(
        e.contains("Expired") || e.contains("410") || e.contains("too old"),
        "{e}"
    );

    // fieldValidation=Warn: the object is stored without the unknown field, with a warning.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: warned}\ndata: {a: b}\nbogus: 1\n";
    let out = c.kubectl_stdin(&["create", "--validate=warn", "-f", "-"], cm);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field \"bogus\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = c.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps/warned",
    ]);
    assert!(!stored.contains("bogus"), "{stored}");
}

/// With no store reachable, requests get 503 ServiceUnavailable (not 500, not a hang) and
/// /readyz fails its etcd check while /livez stays ok.
#[test]
fn store_down_is_503() {
    let mut c = ApiCluster::start(Backend::Keelson, 1);
    c.ok(&["create", "configmap", "x"]);
    c.kill_store();
    let e = c.fails(&["create", "configmap", "y"]);
    assert!(e.contains("storage is unavailable"), "{e}");
    let e = c.fails(&["get", "--raw", "/api/v1/namespaces/default/configmaps/x"]);
    assert!(e.contains("ServiceUnavailable"), "{e}");
    let ready = c.kubectl(&["get", "--raw", "/readyz?verbose"]);
    assert!(!ready.status.success());
    assert_eq!(c.ok(&["get", "--raw", "/livez"]), "ok");
}

/// The revision of a `--write-out=json` etcdctl answer's header.
fn header_revision(json: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

#[test]
fn apiservers_compact_the_store_periodically_in_turns() {
    for backend in [Backend::Keelson, Backend::Etcd] {
        let c = ApiCluster::start_with(backend, 2, &["--etcd-compaction-interval=1s"]);
        c.ok(&["create", "configmap", "history", "--from-literal=v=0"]);
        let key = "/registry/configmaps/default/history";
        let first = header_revision(&etcd_ok(etcdctl(
            &c.etcd_url,
            &["get", key, "--write-out=json"],
        )));
        for v in 1..=3 {
            c.ok(&[
                "patch",
                "configmap",
                "history",
                "-p",
                &format!(r#"{{"data":{{"v":"{v}"}}}}"#),
            ]);
        }
        // Within a few rounds the store forgets the first revision: one interval of history
        // is kept, and the revision compacted to is recorded for the next apiserver.
        crate::harness::eventually(
            std::time::Duration::from_secs(20),
            "the store compacted past the first revision",
            || {
                let out = etcdctl(&c.etcd_url, &["get", key, &format!("--rev={first}")]);
                String::from_utf8_lossy(&out.stderr)
                    .contains("required revision has been compacted")
            },
        );
        let recorded: i64 = etcd_ok(etcdctl(
            &c.etcd_url,
            &["get", "compact_rev_key", "--print-value-only"],
        ))
        .trim()
        .parse()
        .expect("compact_rev_key holds a revision");
        assert!(recorded >= first, "{recorded} < {first}");
        // The newest state is untouched.
        assert_eq!(
            c.ok(&["get", "configmap", "history", "-o", "jsonpath={.data.v}"]),
            "3"
        );
    }
}

/// `--event-ttl`: Events (core and events.k8s.io, one storage) expire that long after their
/// last write through store leases, on keelson-store and on etcd; other objects stay.
#[test]
fn events_expire_after_the_event_ttl() {
    use std::time::{Duration, Instant};
    for backend in [Backend::Keelson, Backend::Etcd] {
        let c = ApiCluster::start_with(backend, 1, &["--event-ttl=10s"]);
        c.ok(&["create", "configmap", "stays"]);
        let created = Instant::now();
        crate::harness::apply(
            &c,
            &serde_json::json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "core"},
                "involvedObject": {"kind": "ConfigMap", "name": "stays", "namespace": "default"},
                "reason": "Tested", "message": "m", "type": "Normal", "count": 1})
            .to_string(),
        );
        crate::harness::apply(
            &c,
            &serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": "new-api"}, "eventTime": "2026-01-01T00:00:00.000000Z",
                "reportingController": "tests", "reportingInstance": "t", "action": "Test",
                "reason": "Tested", "type": "Normal",
                "regarding": {"kind": "ConfigMap", "name": "stays", "namespace": "default"}})
            .to_string(),
        );
        let events = || c.ok(&["get", "events", "-o", "name"]);
        assert!(events().contains("core"), "{}", events());
        assert!(events().contains("new-api"), "{}", events());
        // An update takes a fresh lease: the updated event outlives the other by as long as
        // the update came after their creation (5 s).
        std::thread::sleep(Duration::from_secs(5).saturating_sub(created.elapsed()));
        c.ok(&[
            "patch",
            "event",
            "core",
            "--type=merge",
            "-p",
            r#"{"count": 2}"#,
        ]);
        crate::harness::eventually(Duration::from_secs(40), "the first event expired", || {
            !events().contains("new-api")
        });
        assert!(
            events().contains("core"),
            "the updated event expired with the other: {}",
            events()
        );
        crate::harness::eventually(Duration::from_secs(40), "every event expired", || {
            events().is_empty()
        });
        assert_eq!(
            c.ok(&["get", "configmap", "stays", "-o", "name"]).trim(),
            "configmap/stays"
        );
    }
}
