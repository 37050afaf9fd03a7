//! The fault classes and how each is injected and healed.

use std::time::Duration;

use anyhow::Context;
use keelson_etcdpb::etcdserverpb::{DefragmentRequest, maintenance_client::MaintenanceClient};

use crate::cluster::{Cluster, channel};

/// A named fault class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// kill -9 of the leader, restarted on heal.
    KillLeader,
    /// kill -9 of a follower, restarted on heal.
    KillFollower,
    /// kill -9 of a majority (the leader among them): no quorum until heal restarts them.
    KillMajority,
    /// kill -9 of every member at once (what was acknowledged must survive the crash).
    KillAll,
    /// SIGSTOP of the leader (a long GC pause or a stalled disk), SIGCONT on heal.
    PauseLeader,
    /// SIGSTOP of a follower, SIGCONT on heal.
    PauseFollower,
    /// Defragment every member while traffic and watches run.
    Defragment,
    /// Cut the leader off from the other members, both ways (clients still reach it).
    PartitionLeader,
    /// Cut a follower off from the other members, both ways.
    PartitionFollower,
    /// The leader hears no other member but they hear it (one-way loss).
    OneWayLeader,
    /// Every member drops 30 % of what the others send it.
    PacketLoss,
    /// A follower taken out of the cluster (MemberRemove), killed and its data deleted; on
    /// heal added back as a new member (MemberAdd) that catches up from the others.
    ReplaceFollower,
    /// The leader removed from the cluster (MemberRemove through another member, while it
    /// leads), killed and its data deleted; the others elect a new one. On heal it is added back
    /// as a new member that catches up from the others.
    RemoveLeader,
    /// The cluster grown by a new member (MemberAdd, started empty: it catches up from the
    /// others while the traffic runs); on heal the member is removed again (MemberRemove,
    /// killed, its data deleted), so each injection adds one that was never there before.
    /// Not with link faults (their namespaces are made at the start).
    AddMember,
    /// A follower killed while filler writes move the leader's log past it (by more than the
    /// log keeps after a snapshot); on heal it restarts and has to install a snapshot, which
    /// the heal waits for and reports.
    SnapshotInstall,
    /// kill -9 of every member, and what they had not fsynced is lost: their data directories
    /// are on a FUSE layer that drops every write since a file's last fsync (a power cut).
    /// Restarted on heal.
    LoseUnsynced,
    /// A member crashes at a failpoint inside the store (`GOFAIL_HTTP`; keelson built with the
    /// `failpoints` feature, or an etcd built with gofail): the points of `--failpoints` in
    /// turn, each armed with `panic` and reached by filler writes (or, for the snapshot
    /// install points, a snapshot sent to a follower that was down). Restarted on heal.
    Failpoint,
    /// A member's wall clock jumps two hours (forward and back in turn), back on heal: the
    /// members run under libfaketime (`LD_PRELOAD`, Debian's `faketime`), which the fault
    /// moves. keelson only: etcd is Go, which reads the clock without libc.
    ClockJump,
    /// Every message between members waits 100 ms more each way (a TCP proxy in front of
    /// each member's peer port holds what passes through it: this kernel has no netem);
    /// removed on heal. Not with link faults (their namespaces give the members addresses of
    /// their own).
    Delay,
}

impl Fault {
    /// Every fault class, in the order a run cycles through them.
    pub const ALL: [Fault; 19] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::KillMajority,
        Fault::KillAll,
        Fault::PauseLeader,
        Fault::PauseFollower,
        Fault::Defragment,
        Fault::PartitionLeader,
        Fault::PartitionFollower,
        Fault::OneWayLeader,
        Fault::PacketLoss,
        Fault::ReplaceFollower,
        Fault::RemoveLeader,
        Fault::AddMember,
        Fault::SnapshotInstall,
        Fault::LoseUnsynced,
        Fault::Failpoint,
        Fault::ClockJump,
        Fault::Delay,
    ];

    /// The fault cuts links, so the members need namespaces of their own.
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            Fault::PartitionLeader
                | Fault::PartitionFollower
                | Fault::OneWayLeader
                | Fault::PacketLoss
        )
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::KillMajority => "kill-majority",
            Fault::KillAll => "kill-all",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseFollower => "pause-follower",
            Fault::Defragment => "defragment",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionFollower => "partition-follower",
            Fault::OneWayLeader => "one-way-leader",
            Fault::PacketLoss => "packet-loss",
            Fault::ReplaceFollower => "replace-follower",
            Fault::RemoveLeader => "remove-leader",
            Fault::AddMember => "add-member",
            Fault::SnapshotInstall => "snapshot-install",
            Fault::LoseUnsynced => "lose-unsynced",
            Fault::Failpoint => "failpoint",
            Fault::ClockJump => "clock-jump",
            Fault::Delay => "delay",
        }
    }
}

/// What heals an injected fault.
#[derive(Debug)]
pub enum Heal {
    /// Restart these members.
    Restart(Vec<usize>),
    /// SIGCONT these members.
    Resume(Vec<usize>),
    /// Remove the link rules of these members.
    Reconnect(Vec<usize>),
    /// Add this removed member back and start it.
    Rejoin(usize),
    /// Remove this member, which grew the cluster, again.
    Shrink(usize),
    /// Restart this member, which is behind the leader's log, and wait for its snapshot.
    RestartBehind(usize),
    /// Set this member's clock right again.
    ClockBack(usize),
    /// Take the delay off the links.
    Undelay,
    /// Nothing to undo.
    Nothing,
}

/// What makes a failpoint's code run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    /// Any write: every member appends and applies it.
    Writes,
    /// A snapshot build: every member builds one each `--snapshot-count` entries.
    SnapshotBuild,
    /// A snapshot install: on a member that the leader's log has moved past.
    SnapshotInstall,
}

/// The failpoints the `failpoint` fault knows how to reach: keelson-store's (see
/// `keelson_store::failpoint::POINTS`). The names etcd's gofail build shares
/// (`raftBeforeSave`, `raftAfterSave`, `raftBeforeSaveSnap`, `raftAfterSaveSnap`,
/// `raftBeforeApplySnap`, `raftAfterApplySnap`) mean the same there.
pub const FAILPOINTS: [(&str, Reached); 10] = [
    ("raftBeforeSave", Reached::Writes),
    ("raftAfterSave", Reached::Writes),
    ("raftBeforeApply", Reached::Writes),
    ("raftAfterApply", Reached::Writes),
    ("raftBeforeSaveSnap", Reached::SnapshotBuild),
    ("raftDuringSaveSnap", Reached::SnapshotBuild),
    ("raftAfterSaveSnap", Reached::SnapshotBuild),
    ("raftBeforeApplySnap", Reached::SnapshotInstall),
    ("raftDuringApplySnap", Reached::SnapshotInstall),
    ("raftAfterApplySnap", Reached::SnapshotInstall),
];

/// How long writes go on before an armed failpoint counts as not reached.
const CRASH_WAIT: Duration = Duration::from_secs(10);
/// How long a member that may have reached its failpoint just then is given to exit (a
/// loaded machine may take a while to reap it).
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// How long `snapshot-install` writes filler before giving up on moving the log far enough.
const FILL_LIMIT: Duration = Duration::from_secs(60);
/// How long its heal waits for the restarted member to receive a snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(20);

/// The leader, waiting up to 5 s for an election to settle.
async fn leader(cluster: &Cluster) -> Option<usize> {
    for _ in 0..50 {
        if let Some(l) = cluster.leader().await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The leader and a follower, or why the fault is skipped.
async fn leader_and_follower(cluster: &Cluster) -> Result<(usize, usize), String> {
    let Some(l) = leader(cluster).await else {
        return Err("no leader elected within 5 s: skipped".into());
    };
    match cluster.live().into_iter().find(|&i| i != l) {
        Some(f) => Ok((l, f)),
        None => Err("no follower: skipped".into()),
    }
}

/// Kills follower `f`, then writes filler until leader `l`'s log has moved past what it keeps
/// after a snapshot; says what was done.
async fn leave_behind(cluster: &mut Cluster, l: usize, f: usize) -> anyhow::Result<String> {
    cluster.kill(f);
    let want = cluster.entries_past_the_log();
    let (written, grown, _) = cluster.fill(l, want, FILL_LIMIT, None).await?;
    let short = if grown < want {
        format!(" (short of the {want} wanted: {FILL_LIMIT:?} passed)")
    } else {
        String::new()
    };
    Ok(format!(
        "killed {} (follower), then {written} filler writes moved {}'s log {grown} entries \
         past it{short}",
        cluster.members[f].name, cluster.members[l].name
    ))
}

/// What the `delay` fault adds to each way of every link between members.
const LINK_DELAY: Duration = Duration::from_millis(100);

/// Injects `fault`; returns what was done and how to heal it.
pub async fn inject(fault: Fault, cluster: &mut Cluster) -> anyhow::Result<(String, Heal)> {
    let name = |c: &Cluster, i: usize| c.members[i].name.clone();
    let follower =
        |c: &Cluster, leader: Option<usize>| c.live().into_iter().find(|&i| Some(i) != leader);
    Ok(match fault {
        Fault::KillLeader | Fault::PauseLeader => {
            let Some(l) = leader(cluster).await else {
                return Ok((
                    "no leader elected within 5 s: skipped".into(),
                    Heal::Nothing,
                ));
            };
            if fault == Fault::KillLeader {
                cluster.kill(l);
                (
                    format!("killed {} (leader)", name(cluster, l)),
                    Heal::Restart(vec![l]),
                )
            } else {
                cluster.pause(l, true)?;
                (
                    format!("paused {} (leader)", name(cluster, l)),
                    Heal::Resume(vec![l]),
                )
            }
        }
        Fault::KillFollower | Fault::PauseFollower => {
            let l = leader(cluster).await;
            let Some(f) = follower(cluster, l) else {
                return Ok(("no follower: skipped".into(), Heal::Nothing));
            };
            if fault == Fault::KillFollower {
                cluster.kill(f);
                (
                    format!("killed {} (follower)", name(cluster, f)),
                    Heal::Restart(vec![f]),
                )
            } else {
                cluster.pause(f, true)?;
                (
                    format!("paused {} (follower)", name(cluster, f)),
                    Heal::Resume(vec![f]),
                )
            }
        }
        Fault::KillMajority => {
            let majority = cluster.in_cluster().len() / 2 + 1;
            let mut victims: Vec<usize> = leader(cluster).await.into_iter().collect();
            for i in cluster.live() {
                if victims.len() < majority && !victims.contains(&i) {
                    victims.push(i);
                }
            }
            for &i in &victims {
                cluster.kill(i);
            }
            let names: Vec<String> = victims.iter().map(|&i| name(cluster, i)).collect();
            (
                format!("killed {}", names.join(", ")),
                Heal::Restart(victims),
            )
        }
        Fault::KillAll => {
            let all = cluster.in_cluster();
            for &i in &all {
                cluster.kill(i);
            }
            ("killed every member".into(), Heal::Restart(all))
        }
        Fault::Defragment => {
            let mut done = Vec::new();
            for i in cluster.live() {
                let ch = channel(&cluster.members[i].client, Some(Duration::from_secs(10)))?;
                let r = MaintenanceClient::new(ch)
                    .defragment(DefragmentRequest {})
                    .await;
                done.push(format!(
                    "{}: {}",
                    name(cluster, i),
                    match r {
                        Ok(_) => "defragmented".to_string(),
                        Err(e) => format!("failed ({})", e.message()),
                    }
                ));
            }
            (done.join(", "), Heal::Nothing)
        }
        Fault::PartitionLeader | Fault::PartitionFollower | Fault::OneWayLeader => {
            let l = leader(cluster).await;
            let victim = if fault == Fault::PartitionFollower {
                follower(cluster, l)
            } else {
                l
            };
            let Some(v) = victim else {
                return Ok(("no such member: skipped".into(), Heal::Nothing));
            };
            let net = cluster
                .network
                .as_ref()
                .context("link faults need the members' namespaces")?;
            let one_way = fault == Fault::OneWayLeader;
            net.cut(v, true, !one_way, None)?;
            let role = if Some(v) == l { "leader" } else { "follower" };
            let how = if one_way {
                "hears no other member"
            } else {
                "cut off from the other members"
            };
            (
                format!("{} ({role}) {how}", name(cluster, v)),
                Heal::Reconnect(vec![v]),
            )
        }
        Fault::ReplaceFollower | Fault::RemoveLeader => {
            let (l, f) = match leader_and_follower(cluster).await {
                Ok(pair) => pair,
                Err(skipped) => return Ok((skipped, Heal::Nothing)),
            };
            let (i, role) = if fault == Fault::RemoveLeader {
                (l, "leader")
            } else {
                (f, "follower")
            };
            cluster.remove_member(i).await?;
            (
                format!(
                    "removed {} ({role}) from the cluster, killed it and deleted its data",
                    name(cluster, i)
                ),
                Heal::Rejoin(i),
            )
        }
        Fault::AddMember => {
            if cluster.network.is_some() {
                return Ok((
                    "the members run in namespaces made at the start: skipped".into(),
                    Heal::Nothing,
                ));
            }
            let i = cluster.grow().await?;
            (
                format!(
                    "added {} as a new member ({} members); it catches up from the others",
                    name(cluster, i),
                    cluster.in_cluster().len()
                ),
                Heal::Shrink(i),
            )
        }
        Fault::SnapshotInstall => {
            let (l, f) = match leader_and_follower(cluster).await {
                Ok(pair) => pair,
                Err(skipped) => return Ok((skipped, Heal::Nothing)),
            };
            (leave_behind(cluster, l, f).await?, Heal::RestartBehind(f))
        }
        Fault::Failpoint => return crash_at_failpoint(cluster).await,
        Fault::LoseUnsynced => {
            if let Err(why) = cluster.can_lose_unsynced() {
                return Ok((format!("no lazy disks ({why}): skipped"), Heal::Nothing));
            }
            let all = cluster.in_cluster();
            for &i in &all {
                cluster.kill(i);
            }
            match cluster.lose_unsynced(&all) {
                Ok(lost) => {
                    let files: Vec<String> =
                        lost.iter().map(|(f, b)| format!("{f} {b} B")).collect();
                    (
                        format!(
                            "killed every member and lost what they had not fsynced: {}",
                            if files.is_empty() {
                                "nothing".into()
                            } else {
                                files.join(", ")
                            }
                        ),
                        Heal::Restart(all),
                    )
                }
                Err(why) => anyhow::bail!("losing unsynced writes: {why}"),
            }
        }
        Fault::Delay => {
            if let Err(why) = cluster.can_delay() {
                return Ok((format!("no delay ({why}): skipped"), Heal::Nothing));
            }
            let on = leader(cluster)
                .await
                .or_else(|| cluster.live().first().copied());
            let read = async |c: &Cluster| match on {
                Some(i) => c.timed_read(i).await.ok().map(|d| d.as_millis()),
                None => None,
            };
            let before = read(cluster).await;
            cluster.set_delay(LINK_DELAY);
            let after = read(cluster).await;
            let shown = match (on, before, after) {
                (Some(i), Some(b), Some(a)) => format!(
                    "; a linearizable read on {} took {a} ms (before: {b} ms)",
                    name(cluster, i)
                ),
                _ => String::new(),
            };
            (
                format!(
                    "every message between members waits {} ms more each way{shown}",
                    LINK_DELAY.as_millis()
                ),
                Heal::Undelay,
            )
        }
        Fault::ClockJump => {
            if let Err(why) = cluster.can_jump_clocks() {
                return Ok((format!("no clock to move ({why}): skipped"), Heal::Nothing));
            }
            let l = leader(cluster).await;
            let Some(i) = l.or_else(|| cluster.live().first().copied()) else {
                return Ok(("no member running: skipped".into(), Heal::Nothing));
            };
            let offset = cluster.jump_clock(i)?;
            // hyper keeps the Date it rendered until the clock passes the next second it
            // expects, so only a jump forward shows there at once.
            let reads = if offset.starts_with('+') {
                cluster.clock_offset(i).await.map_or_else(
                    |e| format!("its clock could not be read: {e:#}"),
                    |o| format!("its HTTP Date header is {o:+} s off"),
                )
            } else {
                "a jump back does not show in its HTTP Date header".into()
            };
            (
                format!(
                    "{}'s wall clock moved {offset}{} ({reads})",
                    name(cluster, i),
                    if l == Some(i) { " (leader)" } else { "" }
                ),
                Heal::ClockBack(i),
            )
        }
        Fault::PacketLoss => {
            let net = cluster
                .network
                .as_ref()
                .context("link faults need the members' namespaces")?;
            let all: Vec<usize> = (0..cluster.members.len()).collect();
            for &i in &all {
                net.cut(i, true, false, Some(30))?;
            }
            (
                "every member drops 30 % of what the others send it".into(),
                Heal::Reconnect(all),
            )
        }
    })
}

/// How often member `i`'s log says it crashed at `point` (keelson-store's message, or
/// gofail's panic naming the point).
fn crashes_logged(cluster: &Cluster, i: usize, point: &str) -> usize {
    cluster
        .member_log(i)
        .lines()
        .filter(|l| {
            l.contains(&format!("failpoint {point}: crashing"))
                || (l.contains("failpoint panic") && l.contains(point))
        })
        .count()
}

/// Checks that member `i`, which exited with `status`, crashed at `point` (its log says so
/// once more than `before` times): any other exit is an error of the run.
fn crashed_there(
    cluster: &Cluster,
    i: usize,
    point: &str,
    before: usize,
    status: std::process::ExitStatus,
) -> anyhow::Result<String> {
    if crashes_logged(cluster, i, point) <= before {
        anyhow::bail!(
            "{} exited ({status}) but not at failpoint {point} (see its log)",
            cluster.members[i].name
        );
    }
    Ok(format!("it crashed there ({status})"))
}

/// `failpoint`: the next point of `cluster.failpoints`, armed on a member, reached, and the
/// member's crash awaited. Points that writes reach go on the leader and on a follower in
/// alternate rounds.
async fn crash_at_failpoint(cluster: &mut Cluster) -> anyhow::Result<(String, Heal)> {
    if cluster.failpoints.is_empty() {
        return Ok(("no failpoints chosen: skipped".into(), Heal::Nothing));
    }
    let taken = cluster.failpoints_taken;
    cluster.failpoints_taken += 1;
    let point = cluster.failpoints[taken % cluster.failpoints.len()].clone();
    let Some(&(_, reached)) = FAILPOINTS.iter().find(|(n, _)| *n == point) else {
        anyhow::bail!("unknown failpoint {point}");
    };
    let (l, f) = match leader_and_follower(cluster).await {
        Ok(pair) => pair,
        Err(skipped) => return Ok((skipped, Heal::Nothing)),
    };
    let name = |c: &Cluster, i: usize| c.members[i].name.clone();
    // The target's build must have the point: gofail lists every point it has on `GET /`.
    match cluster.failpoint_request(l, "GET", "/", "").await {
        Ok((200, list)) if list.lines().any(|l| l.split('=').next() == Some(&point)) => {}
        Ok((200, _)) => {
            return Ok((
                format!("the members have no failpoint {point}: skipped"),
                Heal::Nothing,
            ));
        }
        _ => {
            return Ok((
                "no failpoint server on GOFAIL_HTTP (a build without failpoints): skipped".into(),
                Heal::Nothing,
            ));
        }
    }
    let armed = format!("{point}=panic");
    if reached == Reached::SnapshotInstall {
        // As snapshot-install, with the point armed in the follower from its restart on.
        let behind = leave_behind(cluster, l, f).await?;
        let before = crashes_logged(cluster, f, &point);
        cluster.start_member_armed(f, &armed)?;
        let exit = exit_within(cluster, f, SNAPSHOT_WAIT).await;
        let setup = format!("{behind}, restarted it with {armed}");
        return Ok(match crash_seen(cluster, f, &point, before, exit).await? {
            Some(crash) => (format!("{setup}; {crash}"), Heal::Restart(vec![f])),
            None => (
                format!("{setup}; not reached within {SNAPSHOT_WAIT:?} (disarmed)"),
                Heal::Nothing,
            ),
        });
    }
    let round = taken / cluster.failpoints.len();
    let (victim, role, other) = if round.is_multiple_of(2) {
        (l, "leader", f)
    } else {
        (f, "follower", l)
    };
    let before = crashes_logged(cluster, victim, &point);
    let setup = format!("armed {armed} on {} ({role})", name(cluster, victim));
    let (when, exit) = match cluster
        .failpoint_request(victim, "PUT", &format!("/{point}"), "panic")
        .await
    {
        Ok((204, _)) => {
            // Writes reach every member's append and apply; twice the snapshot interval of
            // them reaches every member's snapshot build.
            let (entries, limit) = match reached {
                Reached::SnapshotBuild => (cluster.entries_past_the_log(), FILL_LIMIT),
                _ => (u64::MAX, CRASH_WAIT),
            };
            let (written, _, exit) = cluster.fill(other, entries, limit, Some(victim)).await?;
            (format!("after {written} filler writes"), exit)
        }
        Ok((status, body)) => anyhow::bail!(
            "arming {point} on {}: {status} {}",
            name(cluster, victim),
            body.trim()
        ),
        // The traffic's own writes may reach the point before the member has answered the
        // arming: its crash then ends the connection unanswered. (If it has not crashed, the
        // point is disarmed, should it have been armed all the same.)
        Err(e) => {
            let seen = crash_seen(cluster, victim, &point, before, None)
                .await
                .with_context(|| format!("{e:#}"))?;
            return match seen {
                Some(crash) => Ok((
                    format!("{setup}; {crash} before it answered the arming"),
                    Heal::Restart(vec![victim]),
                )),
                None => Err(e),
            };
        }
    };
    Ok(
        match crash_seen(cluster, victim, &point, before, exit).await? {
            Some(crash) => (
                format!("{setup}; {crash} {when}"),
                Heal::Restart(vec![victim]),
            ),
            None => (
                format!("{setup}; not reached {when} (disarmed)"),
                Heal::Nothing,
            ),
        },
    )
}

/// How member `i` exited, if it does within `wait`.
async fn exit_within(
    cluster: &mut Cluster,
    i: usize,
    wait: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(exit) = cluster.exited(i) {
            return Some(exit);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether member `i` crashed at `point` (`before` crashes there were logged earlier), given
/// how it exited if it did: if not, the point is disarmed and the member given
/// [`EXIT_WAIT`] to exit (it may have got there just before). `Some` says how it crashed; an
/// exit anywhere else, or a point that could not be disarmed, is an error of the run.
async fn crash_seen(
    cluster: &mut Cluster,
    i: usize,
    point: &str,
    before: usize,
    exit: Option<std::process::ExitStatus>,
) -> anyhow::Result<Option<String>> {
    let exit = match exit {
        Some(status) => Some(status),
        None => {
            let disarmed = cluster
                .failpoint_request(i, "DELETE", &format!("/{point}"), "")
                .await;
            let exit = exit_within(cluster, i, EXIT_WAIT).await;
            if exit.is_none() {
                let name = &cluster.members[i].name;
                match disarmed {
                    Ok((204, _)) => {}
                    Ok((status, body)) => {
                        anyhow::bail!("disarming {point} on {name}: {status} {}", body.trim())
                    }
                    Err(e) => return Err(e.context(format!("disarming {point} on {name}"))),
                }
            }
            exit
        }
    };
    exit.map(|status| crashed_there(cluster, i, point, before, status))
        .transpose()
}

/// Undoes an injected fault.
pub async fn heal(heal: &Heal, cluster: &mut Cluster) -> anyhow::Result<String> {
    let names = |c: &Cluster, v: &[usize]| {
        v.iter()
            .map(|&i| c.members[i].name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(match heal {
        Heal::Restart(v) => {
            for &i in v {
                cluster.start_member(i)?;
            }
            format!("restarted {}", names(cluster, v))
        }
        Heal::Undelay => {
            cluster.set_delay(Duration::ZERO);
            "the links' delay removed".into()
        }
        Heal::ClockBack(i) => {
            cluster.set_clock(*i, "+0")?;
            format!("set {}'s clock right", names(cluster, &[*i]))
        }
        Heal::Resume(v) => {
            for &i in v {
                cluster.pause(i, false)?;
            }
            format!("resumed {}", names(cluster, v))
        }
        Heal::Reconnect(v) => {
            if let Some(net) = &cluster.network {
                for &i in v {
                    net.heal(i)?;
                }
            }
            format!("reconnected {}", names(cluster, v))
        }
        Heal::RestartBehind(i) => {
            cluster.start_member(*i)?;
            let deadline = tokio::time::Instant::now() + SNAPSHOT_WAIT;
            let received = loop {
                let n = cluster.snapshots_received(*i).await.unwrap_or(0);
                if n > 0 || tokio::time::Instant::now() >= deadline {
                    break n;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let name = names(cluster, &[*i]);
            if received > 0 {
                format!(
                    "restarted {name}; it received a snapshot \
                     (etcd_network_snapshot_receive_success {received})"
                )
            } else {
                format!("restarted {name}; it received no snapshot within {SNAPSHOT_WAIT:?}")
            }
        }
        Heal::Rejoin(i) => {
            cluster.add_member(*i).await?;
            format!("added {} back as a new member", names(cluster, &[*i]))
        }
        Heal::Shrink(i) => {
            // First: what the member caught up to is what the others hold. (A member that
            // differs stays in the cluster, where the end of the run reads it again.)
            let same =
                crate::replicas::compare_member(cluster, *i, crate::traffic::PREFIX, SNAPSHOT_WAIT)
                    .await;
            if same.verdict != crate::Verdict::Ok {
                anyhow::bail!(
                    "{} does not hold what the others hold: {}",
                    names(cluster, &[*i]),
                    same.details.join("; ")
                );
            }
            cluster.remove_member(*i).await?;
            format!(
                "{}; removed {} again, killed it and deleted its data ({} members)",
                same.details.join("; "),
                names(cluster, &[*i]),
                cluster.in_cluster().len()
            )
        }
        Heal::Nothing => "nothing to heal".into(),
    })
}
