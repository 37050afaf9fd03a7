//! A data dir that is not what it claims is refused at start, never silently reset; and the
//! HTTP endpoints etcd serves beside gRPC (`/health`, `/metrics` with etcd's names).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// An HTTP/1.0 GET on the client port: (status line, body).
fn http_get(client_url: &str, path: &str) -> (String, String) {
    let addr = client_url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Waits for member `i`'s process to end; its stderr.
fn exit_of(c: &mut Cluster, i: usize) -> (std::process::ExitStatus, String) {
    let mut child = c.members[i].child.take().expect("started");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut err).unwrap();
            }
            return (status, err);
        }
        assert!(Instant::now() < deadline, "the member kept running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_member_without_its_database_or_with_a_corrupt_identity_refuses_to_start() {
    let mut c = Cluster::start(3);
    let (status, body) = http_get(&c.members[0].client, "/health");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body.trim(), r#"{"health":"true","reason":""}"#);
    let (_, metrics) = http_get(&c.members[0].client, "/metrics");
    for name in [
        "etcd_server_has_leader 1",
        "etcd_server_leader_changes_seen_total",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_mvcc_db_total_size_in_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // The database is gone but the identity is there: refused, nothing recreated.
    c.kill(1);
    let db = c.members[1].dir.join("db");
    std::fs::remove_dir_all(&db).unwrap();
    c.start_member_with_stderr(1);
    let (status, err) = exit_of(&mut c, 1);
    assert!(!status.success());
    assert!(err.contains("database is missing"), "{err}");
    assert!(!db.join("conf").exists(), "a new database was created");

    // A corrupt identity file: refused.
    c.kill(2);
    std::fs::write(c.members[2].dir.join("member.json"), b"{not json").unwrap();
    c.start_member_with_stderr(2);
    let (status, err) = exit_of(&mut c, 2);
    assert!(!status.success());
    assert!(err.contains("member.json"), "{err}");
}

#[test]
fn raft_timings_etcd_refuses_are_refused_before_the_data_dir_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    for (flags, message) in [
        (
            ["--heartbeat-interval=300", "--election-timeout=1000"],
            "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]",
        ),
        (
            ["--heartbeat-interval=100", "--election-timeout=60000"],
            "--election-timeout[60000ms] is too long, and should be set less than 50000ms",
        ),
    ] {
        let dir = tmp.path().join("member");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keelson"))
            .args(["store", "--data-dir"])
            .arg(&dir)
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} accepted");
        assert!(err.contains(message), "{flags:?}: {err}");
        assert!(!dir.exists(), "{flags:?}: the data dir was made");
    }
}
