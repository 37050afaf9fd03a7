//! The fault classes and how each is injected and healed.

use std::time::Duration;

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
}

impl Fault {
    /// Every fault class, in the order a run cycles through them.
    pub const ALL: [Fault; 7] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::KillMajority,
        Fault::KillAll,
        Fault::PauseLeader,
        Fault::PauseFollower,
        Fault::Defragment,
    ];

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
    /// Nothing to undo.
    Nothing,
}

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
            let majority = cluster.members.len() / 2 + 1;
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
            let all: Vec<usize> = (0..cluster.members.len()).collect();
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
    })
}

/// Undoes an injected fault.
pub fn heal(heal: &Heal, cluster: &mut Cluster) -> anyhow::Result<String> {
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
        Heal::Resume(v) => {
            for &i in v {
                cluster.pause(i, false)?;
            }
            format!("resumed {}", names(cluster, v))
        }
        Heal::Nothing => "nothing to heal".into(),
    })
}
