use std::time::Duration;

use crate::cluster::{Cluster, etcdctl, etcdctl_stdin, ok};

#[test]
fn etcdctl_works_against_a_three_member_cluster() {
    let c = Cluster::start(3);
    let m0 = c.members[0].client.clone();
    let m1 = c.members[1].client.clone();

    // A write through one member is read back through another (the write reached the leader).
    assert_eq!(ok(etcdctl(&m1, &["put", "foo", "bar"])).trim(), "OK");
    assert_eq!(ok(etcdctl(&m0, &["get", "foo"])), "foo\nbar\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(etcdctl(&m0, &["get", "foo", "-w", "json"]))).unwrap();
    let kv = &json["kvs"][0];
    assert_eq!(
        kv["create_revision"], 2,
        "first write of a new cluster is revision 2, as in etcd"
    );
    assert_eq!(kv["version"], 1);

    // Txn: compare on value, then both branches.
    let txn = "value(\"foo\") = \"bar\"\n\nput foo baz\nput k2 v2\n\nput foo nope\n\n";
    let out = ok(etcdctl_stdin(&m0, &["txn"], Some(txn)));
    assert!(out.starts_with("SUCCESS"), "{out}");
    assert_eq!(
        ok(etcdctl(&m1, &["get", "--prefix", ""]))
            .lines()
            .collect::<Vec<_>>(),
        ["foo", "baz", "k2", "v2"]
    );
    let out = ok(etcdctl_stdin(&m0, &["txn"], Some(txn)));
    assert!(out.starts_with("FAILURE"), "{out}");
    assert_eq!(
        ok(etcdctl(&m0, &["get", "foo", "--print-value-only"])).trim(),
        "nope"
    );

    // Delete, then a watch from revision 1 replays the whole history in order.
    assert_eq!(ok(etcdctl(&m0, &["del", "k2"])).trim(), "1");
    let watch = std::process::Command::new("timeout")
        .args([
            "3",
            "etcdctl",
            &format!("--endpoints={m1}"),
            "watch",
            "--rev=1",
            "--prefix",
            "",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let events: Vec<String> = String::from_utf8_lossy(&watch.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        events,
        [
            "PUT", "foo", "bar", "PUT", "foo", "baz", "PUT", "k2", "v2", "PUT", "foo", "nope",
            "DELETE", "k2", ""
        ]
    );

    // Errors carry etcd's messages.
    let out = etcdctl(&m0, &["get", "foo", "--rev=99"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("required revision is a future revision")
    );
    assert_eq!(
        ok(etcdctl(&m0, &["compact", "4"])).trim(),
        "compacted revision 4"
    );
    let out = etcdctl(&m0, &["get", "foo", "--rev=2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"));

    // Leases: grant, attach, time-to-live with keys, list, and expiry deletes the key.
    let granted = ok(etcdctl(&m0, &["lease", "grant", "3"]));
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    ok(etcdctl(&m1, &["put", "--lease", &id, "leased", "v"]));
    let ttl = ok(etcdctl(&m1, &["lease", "timetolive", &id, "--keys"]));
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
    assert!(ok(etcdctl(&m0, &["lease", "list"])).contains(&id));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if ok(etcdctl(&m1, &["get", "leased"])).is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lease never expired");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(ok(etcdctl(&m0, &["lease", "timetolive", &id])).contains("already expired"));

    // Membership as etcdctl shows it.
    let members = ok(etcdctl(&m0, &["member", "list"]));
    assert_eq!(members.lines().count(), 3, "{members}");
    for m in &c.members {
        assert!(
            members.contains(&format!("{}, {}, {}", m.name, m.peer, m.client)),
            "{members}"
        );
    }

    // The per-endpoint commands, with the URLs as given (etcdctl 3.4 then sends the whole URL
    // as the HTTP/2 authority): one row per member, the same hash everywhere, one leader.
    let all: Vec<&str> = c.members.iter().map(|m| m.client.as_str()).collect();
    let all = all.join(",");
    let status: serde_json::Value =
        serde_json::from_str(&ok(etcdctl(&all, &["endpoint", "status", "-w", "json"]))).unwrap();
    let rows = status.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{status}");
    let leaders: Vec<_> = rows
        .iter()
        .filter(|r| r["Status"]["leader"] == r["Status"]["header"]["member_id"])
        .collect();
    assert_eq!(leaders.len(), 1, "{status}");
    assert!(
        rows.iter()
            .all(|r| r["Status"]["version"].as_str().unwrap().starts_with("3.5")),
        "{status}"
    );
    // Members apply at their own pace: the hashes agree once all have the same revision.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = ok(etcdctl(&all, &["endpoint", "hashkv", "-w", "json"]));
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 3, "{out}");
        let seen: std::collections::BTreeSet<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["HashKV"]["header"]["revision"], r["HashKV"]["hash"]
                )
            })
            .collect();
        if seen.len() == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "hashes differ: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // etcdctl 3.4 prints the health lines on stderr.
    let out = etcdctl(&all, &["endpoint", "health"]);
    let health = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{health}");
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");

    // Snapshot save produces a file etcdctl accepts (it checks the trailing sha256).
    let snap = c.members[0].dir.with_extension("snapshot.db");
    let out = etcdctl(&m0, &["snapshot", "save", snap.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&snap).unwrap().len() > 32);

    // Bad input changes nothing.
    let out = etcdctl(&m0, &["put", "", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("key is not provided"));
}

/// `etcdctl move-leader`: the leader hands over to the chosen voter; writes go on; a
/// transferee that is not a member is refused.
#[test]
fn etcdctl_move_leader_hands_leadership_to_the_chosen_member() {
    let c = Cluster::start(3);
    let all: Vec<&str> = c.members.iter().map(|m| m.client.as_str()).collect();
    let all = all.join(",");
    // The leader all members agree on (None while they do not), and the member IDs.
    let leaders = || -> (Option<u64>, Vec<u64>) {
        let out = ok(etcdctl(&all, &["endpoint", "status", "-w", "json"]));
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rows = rows.as_array().unwrap().clone();
        let leader = rows[0]["Status"]["leader"].as_u64();
        let agreed = rows
            .iter()
            .all(|r| r["Status"]["leader"].as_u64() == leader)
            .then_some(leader)
            .flatten();
        let ids = rows
            .iter()
            .map(|r| r["Status"]["header"]["member_id"].as_u64().unwrap())
            .collect();
        (agreed, ids)
    };
    let (before, ids) = leaders();
    let before = before.expect("the members agree on a leader once the cluster is ready");
    let target = *ids.iter().find(|id| **id != before).unwrap();
    let out = ok(etcdctl(&all, &["move-leader", &format!("{target:x}")]));
    assert_eq!(
        out.trim(),
        format!("Leadership transferred from {before:x} to {target:x}")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leaders().0 != Some(target) {
        assert!(
            std::time::Instant::now() < deadline,
            "the members never agreed on the new leader"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ok(etcdctl(&all, &["put", "after-move", "v"])).trim(), "OK");
    assert_eq!(
        ok(etcdctl(&all, &["get", "after-move", "--print-value-only"])).trim(),
        "v"
    );
    let out = etcdctl(&all, &["move-leader", "abcdef"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcdserver: bad leader transferee"), "{err}");
    assert_eq!(leaders().0, Some(target));
}
