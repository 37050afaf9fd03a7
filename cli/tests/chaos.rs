//! `keelson chaos` end to end: a CI-sized sweep runs every fault class (kills, pauses,
//! defragmentation, partitions and packet loss between members in network namespaces) against
//! keelson-store and a subset against a real etcd (the control), and every checker
//! (linearizability, revisions, watches, leases) passes; a recorded history that
//! is tampered with (an acknowledged write lost, a watch event dropped) fails `keelson chaos
//! check`.

use std::path::Path;
use std::process::{Command, Output};

use keelson_chaos::history::{History, Input, Output as OpOutput, WatchEntry};

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

fn sweep(dir: &Path, target: &str, faults: &str) -> String {
    let out = dir.to_str().unwrap();
    let mut args = vec!["sweep", "--targets", target, "--out", out];
    if !faults.is_empty() {
        args.extend(["--faults", faults]);
    }
    args.extend(CI_SIZED);
    let o = chaos(&args);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::read_to_string(dir.join("summary.md")).unwrap()
}

#[test]
fn every_fault_class_passes_the_checkers_on_keelson() {
    let dir = tempfile::tempdir().unwrap();
    let summary = sweep(dir.path(), "keelson", "");
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
    ] {
        let row = summary
            .lines()
            .find(|l| l.contains(&format!("| {fault} |")))
            .unwrap_or_else(|| panic!("no row for {fault}:\n{summary}"));
        assert!(row.ends_with("| Ok |"), "{row}");
        // The run did something: operations and watch events were recorded and checked.
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let operations: usize = cells[3].parse().unwrap();
        let events: usize = cells[5].parse().unwrap();
        let faults: usize = cells[6].parse().unwrap();
        assert!(operations > 20 && events > 20 && faults >= 1, "{row}");
        let report =
            std::fs::read_to_string(dir.path().join(format!("keelson-{fault}/report.md"))).unwrap();
        assert!(report.contains(&format!("{fault} inject")), "{report}");
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
    }
}

#[test]
fn the_same_checks_pass_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let summary = sweep(
        dir.path(),
        "etcd",
        "kill-leader,pause-follower,kill-all,partition-leader",
    );
    assert_eq!(summary.matches("| Ok |").count(), 4, "{summary}");
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
}
