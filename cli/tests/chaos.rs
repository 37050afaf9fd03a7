//! `keelson chaos` end to end: a CI-sized sweep runs every fault class (kills, pauses,
//! defragmentation, partitions and packet loss between members in network namespaces, a
//! follower removed and added back, the cluster grown by a member and shrunk again, a follower left behind the leader's log until it installs a
//! snapshot, every member killed with its unsynced writes lost, a crash at a failpoint inside
//! the store, a member's wall clock moved two hours, 100 ms more on every link between members)
//! against keelson-store and a subset
//! against a real etcd (the control), and every checker (linearizability, revisions, multi-key
//! txns, watches with their progress notifications, leases, replicas) passes; a crash at each
//! of the store's failpoints is survived; a recorded history that is tampered with (an
//! acknowledged write lost, a watch event dropped, a progress notification moved ahead of an
//! event, a txn's events split) fails `keelson chaos check`.

use std::path::Path;
use std::process::{Command, Output};

use keelson_chaos::history::{History, Input, Output as OpOutput, WatchEntry};

/// Held by the tests that start the heaviest clusters (the failpoint run and the control-plane
/// run), so they do not run at the same time: on two cores, side by side, the failpoint run
/// fell behind its schedule and did not reach its last point.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn chaos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keelson"))
        .arg("chaos")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run keelson chaos")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Short runs: each fault injected at least twice.
const CI_SIZED: &[&str] = &[
    "--duration=4s",
    "--fault-interval=500ms",
    "--fault-hold=1s",
    "--compact-interval=1s",
    "--qps=120",
];

fn sweep(dir: &Path, target: &str, faults: &str, extra: &[&str]) -> String {
    let out = dir.to_str().unwrap();
    let mut args = vec!["sweep", "--targets", target, "--out", out];
    args.extend(extra);
    if !faults.is_empty() {
        args.extend(["--faults", faults]);
    }
    args.extend(CI_SIZED);
    let o = chaos(&args);
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{}\n{}\n{}",
        text(&o),
        explain(dir, &summary),
        member_logs(dir)
    );
    summary
}

/// The last lines of every member's log under `dir` (which goes with the test's temporary
/// directory when the test fails).
fn member_logs(dir: &Path) -> String {
    let mut out = String::new();
    for run in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for log in std::fs::read_dir(run.path().join("members"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            // Without the frames of a backtrace, which would push the error that ended a
            // member out of the tail.
            let frame = |l: &&str| {
                let t = l.trim_start();
                t.starts_with("at ")
                    || t.split_once(": ")
                        .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
            };
            let lines: Vec<&str> = text.lines().filter(|l| !frame(l)).collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("\n{}:\n{tail}\n", log.path().display()));
        }
    }
    out
}

/// The summary, followed by the verdicts of every run that found a violation (the run
/// directories go with the test's temporary directory).
fn explain(dir: &Path, summary: &str) -> String {
    let mut out = summary.to_string();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let report = std::fs::read_to_string(entry.path().join("report.md")).unwrap_or_default();
        if report.contains("Violation") {
            out.push_str(&format!("\n{}:\n{report}", entry.path().display()));
        }
    }
    out
}

#[test]
fn every_fault_class_passes_the_checkers_on_keelson() {
    let dir = tempfile::tempdir().unwrap();
    let summary = sweep(dir.path(), "keelson", "", &[]);
    for fault in [
        "kill-leader",
        "kill-follower",
        "kill-majority",
        "kill-all",
        "pause-leader",
        "pause-follower",
        "defragment",
        "partition-leader",
        "partition-follower",
        "one-way-leader",
        "packet-loss",
        "replace-follower",
        "remove-leader",
        "add-member",
        "snapshot-install",
        "lose-unsynced",
        "failpoint",
        "clock-jump",
        "delay",
    ] {
        let row = summary
            .lines()
            .find(|l| l.contains(&format!("| {fault} |")))
            .unwrap_or_else(|| panic!("no row for {fault}:\n{summary}"));
        assert!(row.ends_with("| Ok |"), "{}", explain(dir.path(), &summary));
        // The run did something: operations and watch events were recorded and checked.
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let operations: usize = cells[3].parse().unwrap();
        let events: usize = cells[5].parse().unwrap();
        let faults: usize = cells[6].parse().unwrap();
        assert!(operations > 20 && events > 20 && faults >= 1, "{row}");
        let report =
            std::fs::read_to_string(dir.path().join(format!("keelson-{fault}/report.md"))).unwrap();
        assert!(report.contains(&format!("{fault} inject")), "{report}");
        if fault == "snapshot-install" {
            assert!(report.contains("it received a snapshot"), "{report}");
        }
        if fault == "add-member" {
            assert!(report.contains("as a new member (4 members)"), "{report}");
            assert!(
                report.contains("again, killed it and deleted its data (3 members)"),
                "{report}"
            );
        }
        if fault == "failpoint" {
            assert!(report.contains("it crashed there"), "{report}");
        }
        if fault == "delay" {
            // The delay was there: a read confirmed through a follower's proxy waited for it
            // both ways.
            let took: u64 = report
                .split("a linearizable read on ")
                .nth(1)
                .and_then(|t| t.split(" took ").nth(1))
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no timed read:\n{report}"));
            assert!(took >= 200, "{report}");
        }
        if fault == "clock-jump" {
            // The member's clock did move: two hours, give or take the seconds the reading
            // took.
            let off: i64 = report
                .split("its HTTP Date header is ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no clock reading:\n{report}"));
            assert!((7100..=7300).contains(&off), "{report}");
        }
        if fault == "lose-unsynced" {
            assert!(
                report.contains("lost what they had not fsynced: m"),
                "{report}"
            );
        }
        assert!(report.contains("**replicas**: Ok"), "{report}");
        // Leases were granted, kept alive and left to expire, and their checker ran. A fault
        // that stops the leader through most of a 4 s run may leave one grant answered.
        let leases: usize = report
            .split(" leases,")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(leases >= 1, "{report}");
        assert!(report.contains("**leases**: Ok"), "{report}");
        // Multi-key txns were made and checked; the watchers asked for progress.
        let txns: usize = report
            .split("**txns**: Ok (")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(txns >= 1, "{report}");
        let watches =
            std::fs::read_to_string(dir.path().join(format!("keelson-{fault}/watches.jsonl")))
                .unwrap();
        assert!(watches.contains(r#""entry":"progress""#), "{fault}");
    }
}

/// Every failpoint once: a member crashed there, was restarted, and every checker passed
/// (including replicas: the restarted member holds what the others hold). A crash after
/// openraft purged the log for a received snapshot but before the snapshot was installed left
/// a member that could never start again, until purges waited for the snapshot.
#[test]
fn a_crash_at_every_failpoint_is_survived() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = chaos(&[
        "run",
        "--faults=failpoint",
        // Each snapshot point takes 15-25 s on a loaded 2-core machine (filler writes, then a
        // snapshot sent to a member that was down): 100 s reached only 9 of the 10 in CI.
        "--duration=150s",
        "--fault-interval=500ms",
        "--fault-hold=1s",
        "--compact-interval=1s",
        "--qps=100",
        "--out",
        out.to_str().unwrap(),
    ]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{}\n{report}\n{}",
        text(&o),
        member_logs(dir.path())
    );
    for point in [
        "raftBeforeSave",
        "raftAfterSave",
        "raftBeforeApply",
        "raftAfterApply",
        "raftBeforeSaveSnap",
        "raftDuringSaveSnap",
        "raftAfterSaveSnap",
        "raftBeforeApplySnap",
        "raftDuringApplySnap",
        "raftAfterApplySnap",
    ] {
        let line = report
            .lines()
            .find(|l| l.contains("failpoint inject") && l.contains(&format!("{point}=panic")))
            .unwrap_or_else(|| panic!("{point} was not armed:\n{report}"));
        assert!(line.contains("it crashed there"), "{line}\n{report}");
    }
    assert!(report.contains("**replicas**: Ok"), "{report}");
    // The member that crashed half way through installing a snapshot finished the install
    // when it started again.
    let logs: String = (0..3)
        .map(|i| std::fs::read_to_string(out.join(format!("members/m{i}.log"))).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("finishing a snapshot install cut short"),
        "{report}"
    );
}

/// A member that exits with no fault on it (a crash of the store) is found before the next
/// fault, reported (the run reports it as a recovery error) and started again.
#[test]
fn a_member_that_exits_with_no_fault_on_it_is_found_and_started_again() {
    use keelson_chaos::cluster::{Cluster, Setup, Target};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_keelson"));
    let mut cluster =
        Cluster::start(Target::Keelson(bin), 1, dir.path(), Setup::default()).unwrap();
    rt.block_on(cluster.wait_healthy(Duration::from_secs(30)))
        .unwrap();
    assert!(cluster.restart_exited().is_empty());
    // Its process, found by its data directory, killed from outside the harness.
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                c.contains(&format!("--data-dir={}", dir.path().display())) && c.contains("store")
            })
        })
        .expect("the member's process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let by = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let found = cluster.restart_exited();
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < by, "the kill was not noticed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("m0 had exited (signal: 9") && found[0].ends_with("; started again"),
        "{found:?}"
    );
    rt.block_on(cluster.wait_healthy(Duration::from_secs(30)))
        .unwrap();
    assert!(cluster.restart_exited().is_empty());
}

#[test]
fn the_same_checks_pass_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    // Without progress requests: etcd 3.4.23 answers one with the store's revision even while
    // the watch still has older events to send (etcd issue 15220), which the watch checker
    // reports, in about one CI-sized sweep of five (chaos/RESULTS.md).
    let summary = sweep(
        dir.path(),
        "etcd",
        "kill-leader,pause-follower,kill-all,partition-leader,snapshot-install,add-member",
        &["--progress-interval=0"],
    );
    assert!(
        std::fs::read_to_string(dir.path().join("etcd-snapshot-install/report.md"))
            .unwrap()
            .contains("it received a snapshot"),
        "{summary}"
    );
    assert_eq!(
        summary.matches("| Ok |").count(),
        6,
        "{}",
        explain(dir.path(), &summary)
    );
}

#[test]
fn a_tampered_history_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = vec![
        "run",
        "--faults=kill-follower",
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend(CI_SIZED);
    let o = chaos(&args);
    assert!(o.status.success(), "{}", text(&o));
    let o = chaos(&["check", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let history = History::load(&run).unwrap();

    // A final read that sees an older value than the last acknowledged write of its key: the
    // store lost an acknowledged write.
    let mut lost = history.clone();
    let (i, key) = lost
        .operations
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, o)| match (&o.input, &o.output) {
            (Input::Get { key }, OpOutput::Get { value: Some(_), .. }) => Some((i, key.clone())),
            _ => None,
        })
        .expect("a final read that found a value");
    let older = lost
        .operations
        .iter()
        .filter(|o| o.input.key() == key && o.output.mutated())
        .filter_map(|o| Some((o.input.value()?.to_string(), o.output.revision()?)))
        .min_by_key(|(_, r)| *r)
        .expect("a write to the key");
    let latest = match &lost.operations[i].output {
        OpOutput::Get { value, .. } => value.clone(),
        _ => unreachable!(),
    };
    assert_ne!(
        Some(&older.0),
        latest.as_ref(),
        "the key was written more than once"
    );
    if let OpOutput::Get {
        value,
        mod_revision,
        ..
    } = &mut lost.operations[i].output
    {
        *value = Some(older.0.clone());
        *mod_revision = older.1;
    }
    let tampered = dir.path().join("lost");
    lost.save(&tampered).unwrap();
    let o = chaos(&["check", tampered.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("linearizability: Violation"),
        "{}",
        text(&o)
    );

    // A watch that skipped an event in the middle of its stream (one followed by another).
    let mut gap = history.clone();
    let w = &mut gap.watches[0];
    let inner: Vec<usize> = (0..w.entries.len().saturating_sub(1))
        .filter(|&i| {
            matches!(w.entries[i], WatchEntry::Event(_))
                && matches!(w.entries[i + 1], WatchEntry::Event(_))
        })
        .collect();
    w.entries.remove(inner[inner.len() / 2]);
    let tampered = dir.path().join("gap");
    gap.save(&tampered).unwrap();
    let o = chaos(&["check", tampered.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("missed"), "{}", text(&o));

    // A progress notification that overtakes an event it covers (etcd 3.4 can send one so).
    let mut early = history.clone();
    let w = &mut early.watches[0];
    let p = (1..w.entries.len())
        .find(|&i| {
            matches!(
                (&w.entries[i - 1], &w.entries[i]),
                (WatchEntry::Event(e), WatchEntry::Progress { revision, .. }) if e.revision <= *revision
            )
        })
        .expect("a progress notification right after an event");
    w.entries.swap(p - 1, p);
    let tampered = dir.path().join("early-progress");
    early.save(&tampered).unwrap();
    let o = chaos(&["check", tampered.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("after a progress notification"),
        "{}",
        text(&o)
    );

    // One put of a multi-key txn delivered in a response of its own.
    let mut split = history.clone();
    let txn_values: std::collections::HashSet<String> = split
        .operations
        .iter()
        .filter(|o| o.txn.is_some())
        .filter_map(|o| o.input.value().map(str::to_string))
        .collect();
    let event = split.watches[0]
        .entries
        .iter_mut()
        .find_map(|e| match e {
            WatchEntry::Event(e) if e.value.as_ref().is_some_and(|v| txn_values.contains(v)) => {
                Some(e)
            }
            _ => None,
        })
        .expect("a watch event of a txn");
    event.response += 1_000_000;
    let tampered = dir.path().join("split-txn");
    split.save(&tampered).unwrap();
    let o = chaos(&["check", tampered.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("split over responses"), "{}", text(&o));
}

/// The control plane: a `keelson up` cluster with hollow nodes under a workload (Deployments
/// scaled and rolled out, ConfigMaps created, patched and deleted) while every control-plane
/// fault class hits it once (an apiserver, a store member and the hollow nodes killed, every
/// component killed at once, the leading controller-manager and scheduler killed, then each
/// leader paused for longer than its Lease); nothing acknowledged is lost, no pod is bound twice, and the cluster converges. The
/// recorded run passes `keelson chaos check` again, and fails it once an acknowledged write is
/// made to be lost or a pod to be bound twice.
#[test]
fn the_control_plane_converges_and_loses_nothing_under_component_faults() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = chaos(&[
        "control-plane",
        "--duration=90s",
        "--fault-interval=3s",
        "--pause-hold=17s",
        "--progress-every=0",
        "--out",
        run.to_str().unwrap(),
    ]);
    let report = std::fs::read_to_string(run.join("report.md")).unwrap_or_default();
    let up_log = std::fs::read_to_string(run.join("cluster/up.log")).unwrap_or_default();
    assert!(o.status.success(), "{}\n{report}\n{up_log}", text(&o));
    for fault in [
        "kill-apiserver",
        "kill-store",
        "kill-nodes",
        "kill-controller-manager",
        "kill-scheduler",
        "pause-controller-manager",
        "kill-all",
        "pause-scheduler",
    ] {
        assert!(report.contains(&format!("{fault} inject")), "{report}");
    }
    // The HA faults hit the leaders; a paused leader was resumed.
    for what in ["controller-manager", "scheduler"] {
        let hit = report
            .lines()
            .filter(|l| l.contains(&format!("{what} inject")))
            .count();
        let leader = report
            .lines()
            .filter(|l| l.contains(&format!("{what} inject")) && l.contains(", leader)"))
            .count();
        assert!(hit == 2 && leader == 2, "{what}:\n{report}");
        assert!(
            report.contains(&format!("pause-{what} heal: SIGCONT")),
            "{report}"
        );
    }
    assert!(report.contains("**objects**: Ok"), "{report}");
    assert!(report.contains("**bound-once**: Ok"), "{report}");
    assert!(report.contains("**convergence**: Ok"), "{report}");
    // The workload did something: writes of every kind, pods made and bound.
    let writes = std::fs::read_to_string(run.join("writes.jsonl")).unwrap();
    for (verb, object) in [
        ("create", "configmap/"),
        ("patch", "configmap/"),
        ("delete", "configmap/"),
        ("patch", "/replicas"),
        ("patch", "/template"),
    ] {
        assert!(
            writes
                .lines()
                .any(|l| l.contains(&format!(r#""verb":"{verb}""#)) && l.contains(object)),
            "no {verb} of {object}"
        );
    }
    let pods = std::fs::read_to_string(run.join("pods.jsonl")).unwrap();
    assert!(
        pods.lines()
            .filter(|l| l.contains(r#""node":"hollow-node-"#))
            .count()
            > 10
    );

    let o = chaos(&["check", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    // An acknowledged configmap write made to be lost: the object is gone at the end.
    let finals_path = run.join("finals.json");
    let finals = std::fs::read_to_string(&finals_path).unwrap();
    let mut map: std::collections::BTreeMap<String, Option<String>> =
        serde_json::from_str(&finals).unwrap();
    // One whose writes were all answered (an unknown delete would allow it to be absent).
    let unsure: Vec<String> = writes
        .lines()
        .filter(|l| l.contains(r#""result":"unknown""#))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|w| w["object"].as_str().map(str::to_string))
        .collect();
    let present = map
        .iter()
        .find(|(k, v)| k.starts_with("configmap/") && v.is_some() && !unsure.contains(k))
        .map(|(k, _)| k.clone())
        .expect("a configmap left at the end");
    map.insert(present.clone(), None);
    std::fs::write(&finals_path, serde_json::to_vec(&map).unwrap()).unwrap();
    let o = chaos(&["check", run.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{present}: ends absent")),
        "{}",
        text(&o)
    );
    std::fs::write(&finals_path, finals).unwrap();

    // A pod seen on a second node.
    let pods_path = run.join("pods.jsonl");
    let bound = pods
        .lines()
        .find(|l| l.contains(r#""node":"hollow-node-0""#))
        .expect("a pod on hollow-node-0");
    let moved = bound.replace(r#""node":"hollow-node-0""#, r#""node":"hollow-node-1""#);
    std::fs::write(&pods_path, format!("{pods}{moved}\n")).unwrap();
    let o = chaos(&["check", run.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("was bound to hollow-node-0 and hollow-node-1"),
        "{}",
        text(&o)
    );
}
