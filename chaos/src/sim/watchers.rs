//! Watchers in the simulation: the store's own watch service, opened in process on a member,
//! its answers carried to the watcher with the network's delays, and held across faults as
//! `keelson chaos run`'s watchers are (a stream that breaks is opened again on another member
//! from the revision after its last event).

use std::time::Duration;

use futures::StreamExt;
use keelson_etcdpb::etcdserverpb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest, watch_request,
};
use keelson_store::etcd::watch::WatchService;
use tokio::time::{Instant, sleep};

use super::net::World;
use crate::history::{WatchEntry, WatchHistory};
use crate::traffic::{PREFIX, Taken, WatchPosition};

/// A stream that delivers nothing for this long while the run waits for it is opened again
/// elsewhere (its member may be cut off from the others, and so learn nothing new).
const STALL: Duration = Duration::from_secs(3);

/// How often a watcher asks its stream for a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_millis(700);

/// Watcher `id`: a watch on the clients' keys from revision 1 until it has seen `last` (sent
/// once the run knows its last revision) or `give_up`, whichever comes first. With `gaps`
/// (a planted bug) a watch opened again starts a revision late.
pub(super) async fn watcher(
    world: std::sync::Arc<World>,
    id: usize,
    gaps: bool,
    last: tokio::sync::watch::Receiver<Option<(i64, Instant)>>,
) -> WatchHistory {
    let mut history = WatchHistory {
        watcher: id,
        prefix: PREFIX.into(),
        entries: Vec::new(),
    };
    let mut position = WatchPosition::from(1);
    let done = |seen: i64, last: &tokio::sync::watch::Receiver<Option<(i64, Instant)>>| match *last
        .borrow()
    {
        Some((r, give_up)) => seen >= r || Instant::now() >= give_up,
        None => false,
    };
    'reopen: while !done(position.last, &last) {
        let target = world.any();
        sleep(world.latency(0, target)).await;
        world.wait_resumed(target, target).await;
        let Some((node, epoch)) = world.node(target) else {
            // Once per break: while every member is down (a crash-all), the tries that
            // follow would add an entry every few hundred milliseconds.
            if !matches!(history.entries.last(), Some(WatchEntry::Broken { .. })) {
                history.entries.push(WatchEntry::Broken {
                    error: format!("m{target}: connection refused"),
                    at: world.now(),
                });
            }
            sleep(world.millis(100, 300)).await;
            continue;
        };
        history.entries.push(WatchEntry::Opened {
            start_revision: position.next,
            at: world.now(),
        });
        let start = position.next + i64::from(gaps && position.last > 0);
        world.note(&[400, id as u64, target, position.next as u64]);
        let (mut asks, requests) = futures::channel::mpsc::channel::<WatchRequest>(8);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: PREFIX.as_bytes().to_vec(),
                    range_end: keelson_etcdpb::prefix_end(PREFIX.as_bytes()),
                    start_revision: start,
                    ..Default::default()
                },
            )),
        };
        let _ = asks.try_send(create);
        let service = WatchService::new(node, Duration::from_secs(600), 1 << 20);
        let mut stream = service.open(requests.map(Ok), None);
        let mut progress_at = Instant::now() + PROGRESS_EVERY;
        // When the stream last moved on: an event, or progress past the last event.
        let mut advanced = Instant::now();
        let mut was_waiting = last.borrow().is_some();
        loop {
            if done(position.last, &last) {
                break 'reopen;
            }
            let waiting = last.borrow().is_some();
            if waiting && !was_waiting {
                // The wait for the last revision starts now.
                advanced = Instant::now();
                was_waiting = true;
            }
            // Polled at fixed points rather than raced in a `select!` on several timers, so
            // the order of what happens stays the seed's.
            let message = tokio::select! {
                biased;
                m = stream.next() => m,
                _ = sleep(Duration::from_millis(50)) => {
                    if !world.same_epoch(target, epoch) {
                        history.entries.push(WatchEntry::Broken {
                            error: "connection reset: the member crashed".into(),
                            at: world.now(),
                        });
                        continue 'reopen;
                    }
                    if waiting && Instant::now() >= advanced + STALL {
                        history.entries.push(WatchEntry::Broken {
                            error: format!("no events for {STALL:?} while the run waits"),
                            at: world.now(),
                        });
                        continue 'reopen;
                    }
                    if Instant::now() >= progress_at {
                        progress_at = Instant::now() + PROGRESS_EVERY;
                        let ask = WatchRequest {
                            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                                WatchProgressRequest {},
                            )),
                        };
                        let _ = asks.try_send(ask);
                    }
                    continue;
                }
            };
            // The answer on its way: lost with the connection if the member crashed.
            sleep(world.latency(target, 0)).await;
            world.wait_resumed(target, target).await;
            if !world.same_epoch(target, epoch) {
                history.entries.push(WatchEntry::Broken {
                    error: "connection reset: the member crashed".into(),
                    at: world.now(),
                });
                continue 'reopen;
            }
            let response = match message {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    history.entries.push(WatchEntry::Broken {
                        error: e.message().chars().take(200).collect(),
                        at: world.now(),
                    });
                    sleep(Duration::from_millis(100)).await;
                    continue 'reopen;
                }
                None => {
                    history.entries.push(WatchEntry::Broken {
                        error: "stream ended".into(),
                        at: world.now(),
                    });
                    continue 'reopen;
                }
            };
            let events = response.events.len() as u64;
            let header = response.header.as_ref().map_or(0, |h| h.revision);
            world.note(&[401, id as u64, header as u64, events]);
            match position.take(&mut history, response, world.now()) {
                Taken::Reopen { pause } => {
                    if pause {
                        sleep(Duration::from_millis(100)).await;
                    }
                    continue 'reopen;
                }
                Taken::Created => {}
                Taken::Progress { moved_on } => {
                    if moved_on {
                        advanced = Instant::now();
                    }
                }
                Taken::Events => advanced = Instant::now(),
            }
        }
    }
    history
}
