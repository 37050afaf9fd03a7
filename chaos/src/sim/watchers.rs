//! Watchers in the simulation: the store's own watch service, opened in process on a member,
//! its answers carried to the watcher with the network's delays, and held across faults as
//! `keelson chaos run`'s watchers are (a stream that breaks is opened again on another member
//! from the revision after its last event).

use std::time::Duration;

use futures::StreamExt;
use keelson_etcdpb::etcdserverpb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest, watch_request,
};
use keelson_etcdpb::mvccpb::event::EventType;
use keelson_store::etcd::watch::WatchService;
use tokio::time::{Instant, sleep};

use super::net::World;
use crate::history::{WatchEntry, WatchEvent, WatchHistory};
use crate::traffic::PREFIX;

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
    let mut next = 1i64;
    let mut seen = 0i64;
    let mut responses = 0u64;
    let done = |seen: i64, last: &tokio::sync::watch::Receiver<Option<(i64, Instant)>>| match *last
        .borrow()
    {
        Some((r, give_up)) => seen >= r || Instant::now() >= give_up,
        None => false,
    };
    'reopen: while !done(seen, &last) {
        let target = world.any();
        sleep(world.latency(0, target)).await;
        world.wait_resumed(target, target).await;
        let Some((node, epoch)) = world.node(target) else {
            history.entries.push(WatchEntry::Broken {
                error: format!("m{target}: connection refused"),
                at: world.now(),
            });
            sleep(world.millis(100, 300)).await;
            continue;
        };
        history.entries.push(WatchEntry::Opened {
            start_revision: next,
            at: world.now(),
        });
        let start = if gaps && seen > 0 { next + 1 } else { next };
        world.note(&[400, id as u64, target, next as u64]);
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
            if done(seen, &last) {
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
            let now = world.now();
            if response.compact_revision > 0 {
                history.entries.push(WatchEntry::Compacted {
                    compact_revision: response.compact_revision,
                    at: now,
                });
                if response.compact_revision <= next {
                    sleep(Duration::from_millis(100)).await;
                }
                next = response.compact_revision;
                continue 'reopen;
            }
            if response.canceled {
                history.entries.push(WatchEntry::Broken {
                    error: format!("cancelled: {}", response.cancel_reason),
                    at: now,
                });
                continue 'reopen;
            }
            if response.created {
                continue;
            }
            let header = response.header.map(|h| h.revision).unwrap_or(0);
            responses += 1;
            world.note(&[401, id as u64, header as u64, response.events.len() as u64]);
            if response.events.is_empty() {
                if header > seen {
                    advanced = Instant::now();
                }
                history.entries.push(WatchEntry::Progress {
                    revision: header,
                    at: now,
                });
                continue;
            }
            advanced = Instant::now();
            for e in response.events {
                let Some(kv) = e.kv else { continue };
                let delete = e.r#type == EventType::Delete as i32;
                history.entries.push(WatchEntry::Event(WatchEvent {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    value: (!delete).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
                    revision: kv.mod_revision,
                    header_revision: header,
                    at: now,
                    response: responses,
                }));
                seen = seen.max(kv.mod_revision);
                next = seen + 1;
            }
        }
    }
    history
}
