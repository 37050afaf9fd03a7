use std::time::Duration;

use super::{Bug, Options, Outcome, run};
use crate::Verdict;

/// A run of `seed` for `secs` simulated seconds, its data on a memory filesystem when there is
/// one.
fn simulate(seed: u64, secs: u64, bug: Option<Bug>) -> Outcome {
    let dir = tempfile::Builder::new()
        .prefix("keelson-sim")
        .tempdir_in(super::scratch_dir())
        .expect("tempdir");
    let options = Options {
        seed,
        duration: Duration::from_secs(secs),
        bug,
        ..Options::default()
    };
    run(&options, dir.path()).expect("simulation")
}

#[test]
fn a_seed_replays_exactly_and_passes_the_checkers() {
    let first = simulate(7, 20, None);
    let again = simulate(7, 20, None);
    assert_eq!(first.verdict(), Verdict::Ok, "{}", first.summary());
    assert!(
        first.history.operations.len() > 100 && first.history.faults.len() > 4,
        "too little happened: {}",
        first.summary()
    );
    assert_eq!(first.history.operations, again.history.operations);
    assert_eq!(first.history.faults, again.history.faults);
    assert_eq!(first.history.watches, again.history.watches);
    assert_eq!(first.history.compactions, again.history.compactions);
    assert!(
        first
            .history
            .compactions
            .iter()
            .filter(|c| c.acknowledged)
            .count()
            >= 2,
        "too few compactions: {}",
        first.summary()
    );
    assert_eq!(first.history.leases, again.history.leases);
    let leases = first.checks.iter().find(|c| c.name == "leases").unwrap();
    assert!(leases.checked > 5, "too few leases: {}", first.summary());
    let watch = first.checks.iter().find(|c| c.name == "watch").unwrap();
    assert!(
        watch.checked > 100,
        "the watchers saw too little: {}",
        first.summary()
    );
    assert_eq!(
        first.digest,
        again.digest,
        "{}\n{}",
        first.summary(),
        again.summary()
    );
    let other = simulate(8, 20, None);
    assert_ne!(first.digest, other.digest);
    assert_eq!(other.verdict(), Verdict::Ok, "{}", other.summary());
}

/// Whether one of seeds 1 to 10, with `bug` planted, gets a violation from `checker`.
fn caught(bug: Bug, checker: &str) -> bool {
    (1..=10).any(|seed| {
        simulate(seed, 10, Some(bug))
            .checks
            .iter()
            .any(|c| c.name == checker && c.verdict == Verdict::Violation)
    })
}

#[test]
fn a_planted_stale_read_is_caught() {
    // Reads without the read barrier, from any member: some seed's partition or crash lets a
    // member that fell behind answer.
    assert!(
        caught(Bug::StaleReads, "linearizability"),
        "no seed of ten showed the stale reads"
    );
}

#[test]
fn a_planted_watch_gap_is_caught() {
    // A watch opened again one revision late: some seed's crash or stall breaks a stream
    // while writes go on, and the revision skipped is one a write or the other watcher has.
    assert!(
        caught(Bug::WatchGaps, "watch"),
        "no seed of ten showed the watch gap"
    );
}

#[test]
fn planted_lost_keep_alives_are_caught() {
    // Keep-alives answered without renewing: the leases kept alive expire a TTL after their
    // grant, though the client was promised a TTL from each keep-alive.
    assert!(
        caught(Bug::LostKeepAlives, "leases"),
        "no seed of ten showed the lost keep-alives"
    );
}

/// A member removed from the cluster, its data deleted, comes back empty as a learner, is
/// sent a snapshot (the leader's log is purged behind its snapshots), is promoted, and ends
/// with the others' keys: the checkers pass, every member's copy among them. Seed 1 draws a
/// removal in its 30 s.
#[test]
fn a_member_removed_and_added_back_empty_catches_up() {
    let outcome = simulate(1, 30, None);
    assert_eq!(outcome.verdict(), Verdict::Ok, "{}", outcome.summary());
    let steps: Vec<(&str, &str)> = outcome
        .history
        .faults
        .iter()
        .filter(|f| f.fault == "replace")
        .map(|f| (f.action.as_str(), f.detail.as_str()))
        .collect();
    let removed = steps.iter().position(|(action, detail)| {
        *action == "inject" && detail.contains("removed, started again empty")
    });
    let removed = removed.unwrap_or_else(|| panic!("no member was removed: {steps:?}"));
    assert_eq!(
        steps.get(removed + 1).map(|s| s.0),
        Some("heal"),
        "{steps:?}"
    );
    assert!(steps[removed + 1].1.ends_with("a voter again"), "{steps:?}");
    assert_eq!(outcome.history.replicas.len(), 3, "{}", outcome.summary());
    // Its log purged past where the member started over: it got a snapshot.
    assert!(outcome.installs > 0, "{}", outcome.summary());
}

/// A voter removal whose caller gives up once the joint configuration is proposed (openraft's
/// caller proposes both of its steps) leaves the joint configuration behind; the leader
/// finishes it with no caller left: the removed member is gone, the configuration uniform.
#[test]
fn a_joint_configuration_whose_caller_gave_up_is_finished_by_the_leader() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use tokio::time::{Instant, sleep};

    use super::net::World;
    use super::{Store, member, start};

    let dir = tempfile::Builder::new()
        .prefix("keelson-sim")
        .tempdir_in(super::scratch_dir())
        .expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let world = Arc::new(World::new(11, 3));
        let mut stores = Vec::new();
        for id in world.ids() {
            stores.push(Store::open(id, dir.path().join(format!("m{id}"))).unwrap());
        }
        let initial: BTreeMap<_, _> = world.ids().map(|id| (id, member(id))).collect();
        for s in &stores {
            start(&world, s, Some(&initial)).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let leader = loop {
            if let Some(l) = world.leader() {
                break l;
            }
            assert!(Instant::now() < deadline, "no leader");
            sleep(Duration::from_millis(10)).await;
        };
        let raft = world.raft(leader).unwrap();
        let victim = world.ids().find(|id| *id != leader).unwrap();
        let remove = openraft::ChangeMembers::RemoveVoters(BTreeSet::from([victim]));
        let caller = {
            let raft = raft.clone();
            tokio::spawn(async move { raft.change_membership(remove, false).await })
        };
        let configs = || {
            let m = raft.metrics().borrow().membership_config.clone();
            m.membership().get_joint_config().clone()
        };
        while configs().len() < 2 {
            assert!(Instant::now() < deadline, "no joint configuration");
            sleep(Duration::from_millis(1)).await;
        }
        caller.abort();
        let left = configs();
        let deadline = Instant::now() + Duration::from_secs(20);
        while configs().len() > 1 {
            assert!(Instant::now() < deadline, "still joint: {left:?}");
            sleep(Duration::from_millis(10)).await;
        }
        let rest: BTreeSet<_> = world.ids().filter(|id| *id != victim).collect();
        assert_eq!(configs(), vec![rest], "left {left:?}");
        let m = raft.metrics().borrow().membership_config.clone();
        assert!(m.membership().get_node(&victim).is_none(), "{m:?}");
        for id in world.ids() {
            if let Some((raft, _)) = world.take_running(id) {
                let _ = raft.shutdown().await;
            }
        }
    });
}
