//! `etcdserverpb.Watch`: many watchers per stream, history replay, filters, prev_kv, progress,
//! fragmentation and cancellation.
//!
//! # Guarantees
//! Each watcher receives every event of its range with revision >= its start, in order, exactly
//! once, or a cancel carrying `compact_revision` when history it needs was compacted.
//!
//! How: the stream subscribes to the applied-event broadcast before it serves any create
//! request. Each watcher remembers `next_rev`, the first revision it has not yet seen. A new
//! watcher replays `[start, current]` from the backend, then takes only broadcast events at or
//! after `next_rev`. When a batch starts later than `next_rev` (the stream fell behind the
//! bounded broadcast, or a snapshot was installed) the gap is replayed from the backend first.

use std::collections::BTreeMap;
use std::time::Duration;

use keelson_etcdpb::etcdserverpb::watch_create_request::FilterType;
use keelson_etcdpb::etcdserverpb::watch_request::RequestUnion;
use keelson_etcdpb::etcdserverpb::watch_server::Watch;
use keelson_etcdpb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use keelson_etcdpb::mvccpb::Event;
use keelson_etcdpb::mvccpb::event::EventType;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Need;
use crate::error::StoreError;
use crate::etcd::require_leader;
use crate::mvcc::{EventBatch, KeyRange};
use crate::server::node::Node;

/// The Watch service.
#[derive(Debug, Clone)]
pub struct WatchService {
    node: Node,
    progress_interval: Duration,
    max_response_bytes: usize,
}

impl WatchService {
    /// The service for `node`; `progress_interval` is etcd's
    /// `--experimental-watch-progress-notify-interval`.
    pub fn new(node: Node, progress_interval: Duration, max_response_bytes: usize) -> WatchService {
        WatchService {
            node,
            progress_interval,
            max_response_bytes,
        }
    }
}

struct Watcher {
    key: Vec<u8>,
    end: Vec<u8>,
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else { return false };
        let rev = kv.mod_revision;
        if rev < self.next_rev || !KeyRange::new(&self.key, &self.end).contains(&kv.key) {
            return false;
        }
        if e.r#type == EventType::Put as i32 {
            !self.no_put
        } else {
            !self.no_delete
        }
    }

    fn shape(&self, e: &Event) -> Event {
        if self.prev_kv || e.prev_kv.is_none() {
            e.clone()
        } else {
            Event {
                r#type: e.r#type,
                kv: e.kv.clone(),
                prev_kv: None,
            }
        }
    }
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

struct Stream_ {
    node: Node,
    out: Out,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    max_bytes: usize,
    /// The `token` the stream was opened with (auth).
    token: Option<String>,
}

/// The stream closed: stop serving it.
struct Closed;

impl Stream_ {
    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(resp)).await.map_err(|_| Closed)
    }

    async fn send_events(&self, id: i64, events: Vec<Event>, revision: i64) -> Result<(), Closed> {
        let w = &self.watchers[&id];
        let whole = WatchResponse {
            header: self.node.header(revision),
            watch_id: id,
            events,
            ..Default::default()
        };
        // As etcd: only a response of two events or more reaching `--max-request-bytes` is
        // split, into responses below the limit (or of one event) that say `fragment`, all but
        // the last.
        if !w.fragment || whole.events.len() < 2 || whole.encoded_len() < self.max_bytes {
            return self.send(whole).await;
        }
        let empty = WatchResponse {
            header: whole.header,
            watch_id: id,
            fragment: true,
            ..Default::default()
        };
        let base = empty.encoded_len();
        let total = whole.events.len();
        let mut events = whole.events.into_iter().peekable();
        let mut sent = 0;
        while sent < total {
            let mut cur = empty.clone();
            let mut size = base;
            while let Some(e) = events.peek() {
                let len = e.encoded_len();
                let grown = size + 1 + prost::encoding::encoded_len_varint(len as u64) + len;
                if !cur.events.is_empty() && grown >= self.max_bytes {
                    break;
                }
                size = grown;
                cur.events.push(events.next().expect("peeked"));
            }
            sent += cur.events.len();
            cur.fragment = sent < total;
            self.send(cur).await?;
        }
        Ok(())
    }

    /// Whether the stream's user may read what `c` watches (auth on): the refusal as etcd
    /// words a watch's cancel reason otherwise.
    fn permitted(&self, c: &WatchCreateRequest) -> Result<(), String> {
        let m = self.node.shared().mvcc.read();
        let need = [Need::Read(&c.key, &c.range_end)];
        crate::etcd::auth::permitted(&m, self.token.as_deref(), &need)
            .map(|_| ())
            .map_err(|e| format!("rpc error: code = {:?} desc = {e}", e.code()))
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Closed> {
        if let Err(reason) = self.permitted(&c) {
            let resp = WatchResponse {
                header: self.node.current_header(),
                watch_id: c.watch_id,
                created: true,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            };
            return self.send(resp).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                let resp = WatchResponse {
                    header: self.node.current_header(),
                    watch_id: c.watch_id,
                    created: true,
                    canceled: true,
                    cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                    ..Default::default()
                };
                return self.send(resp).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let current = self.node.shared().mvcc.read().current_revision();
        let w = Watcher {
            key: c.key.clone(),
            end: c.range_end.clone(),
            next_rev: if c.start_revision > 0 {
                c.start_revision
            } else {
                current + 1
            },
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
        };
        self.watchers.insert(id, w);
        self.send(WatchResponse {
            header: self.node.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.catch_up(id, current).await
    }

    /// Replays `[next_rev, upto]` from the backend for watcher `id`.
    async fn catch_up(&mut self, id: i64, upto: i64) -> Result<(), Closed> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        if w.next_rev > upto {
            return Ok(());
        }
        let replay = {
            let m = self.node.shared().mvcc.read();
            m.events_between(w.next_rev, upto, &KeyRange::new(&w.key, &w.end))
                .map_err(|e| (e, m.compact_revision()))
        };
        match replay {
            Ok(events) => {
                let events: Vec<Event> = events
                    .iter()
                    .filter(|e| w.wants(e))
                    .map(|e| w.shape(e))
                    .collect();
                if !events.is_empty() {
                    self.send_events(id, events, upto).await?;
                }
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.next_rev = upto + 1;
                }
                Ok(())
            }
            Err((StoreError::Compacted, compact_rev)) => {
                self.watchers.remove(&id);
                let resp = WatchResponse {
                    // etcd's header carries no revision here (its compaction notice has none),
                    // and no reason: the compact revision says it.
                    header: self.node.header(0),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compact_rev,
                    ..Default::default()
                };
                self.send(resp).await
            }
            Err((e, _)) => {
                self.watchers.remove(&id);
                let resp = WatchResponse {
                    header: self.node.current_header(),
                    watch_id: id,
                    canceled: true,
                    cancel_reason: e.to_string(),
                    ..Default::default()
                };
                self.send(resp).await
            }
        }
    }

    async fn deliver(&mut self, batch: EventBatch) -> Result<(), Closed> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let gap = self
                .watchers
                .get(&id)
                .is_some_and(|w| w.next_rev < batch.first_revision);
            if gap {
                self.catch_up(id, batch.first_revision - 1).await?;
            }
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let events: Vec<Event> = batch
                .events
                .iter()
                .filter(|e| w.wants(e))
                .map(|e| w.shape(e))
                .collect();
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = w.next_rev.max(batch.revision + 1);
            }
            if !events.is_empty() {
                self.send_events(id, events, batch.revision).await?;
            }
        }
        Ok(())
    }

    async fn catch_up_all(&mut self) -> Result<(), Closed> {
        let current = self.node.shared().mvcc.read().current_revision();
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id, current).await?;
        }
        Ok(())
    }

    /// The newest revision every watcher of this stream has fully seen.
    fn progress_revision(&self) -> i64 {
        let current = self.node.shared().mvcc.read().current_revision();
        self.watchers
            .values()
            .map(|w| w.next_rev - 1)
            .min()
            .unwrap_or(current)
            .min(current)
    }
}

async fn serve<S>(
    mut s: Stream_,
    mut input: S,
    mut events: broadcast::Receiver<EventBatch>,
    progress: Duration,
) where
    S: tokio_stream::Stream<Item = Result<WatchRequest, Status>> + Unpin,
{
    let mut tick = tokio::time::interval(progress);
    // Ticks missed while the client was slow to read are not made up in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        // In a fixed order, so that a run on a simulated clock replays exactly: the tick is
        // ready once per interval, and a client's own requests come before its events.
        let step = tokio::select! {
            biased;
            _ = tick.tick() => {
                let current = s.node.shared().mvcc.read().current_revision();
                let due: Vec<i64> = s.watchers.iter().filter(|(_, w)| w.progress_notify && w.next_rev > current).map(|(id, _)| *id).collect();
                let mut r = Ok(());
                for id in due {
                    r = s.send(WatchResponse { header: s.node.header(current), watch_id: id, ..Default::default() }).await;
                    if r.is_err() { break; }
                }
                r
            }
            req = input.next() => match req {
                Some(Ok(WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) })) => s.create(c).await,
                Some(Ok(WatchRequest { request_union: Some(RequestUnion::CancelRequest(c)) })) => {
                    if s.watchers.remove(&c.watch_id).is_some() {
                        s.send(WatchResponse { header: s.node.current_header(), watch_id: c.watch_id, canceled: true, ..Default::default() }).await
                    } else {
                        Ok(())
                    }
                }
                Some(Ok(WatchRequest { request_union: Some(RequestUnion::ProgressRequest(_)) })) => {
                    let rev = s.progress_revision();
                    s.send(WatchResponse { header: s.node.header(rev), watch_id: -1, ..Default::default() }).await
                }
                Some(Ok(WatchRequest { request_union: None })) => Ok(()),
                Some(Err(_)) | None => return,
            },
            ev = events.recv() => match ev {
                Ok(batch) => s.deliver(batch).await,
                Err(broadcast::error::RecvError::Lagged(_)) => s.catch_up_all().await,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if step.is_err() {
            return;
        }
    }
}

type WatchStream = require_leader::BoxStream<WatchResponse>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let token = crate::etcd::auth::token_of(&req).map(str::to_string);
        let metadata = req.metadata().clone();
        let out = Box::pin(self.open(req.into_inner(), token));
        Ok(Response::new(require_leader::guard(
            &self.node, &metadata, out,
        )))
    }
}

impl WatchService {
    /// Serves one watch stream: the requests of `input` (sent with the auth `token`, if
    /// any), answered on the stream returned, until `input` ends or the answers are dropped.
    /// The gRPC method runs every stream through it; so does the simulation, in process.
    pub fn open<S>(
        &self,
        input: S,
        token: Option<String>,
    ) -> ReceiverStream<Result<WatchResponse, Status>>
    where
        S: tokio_stream::Stream<Item = Result<WatchRequest, Status>> + Unpin + Send + 'static,
    {
        let events = self.node.shared().events.subscribe();
        let (tx, rx) = mpsc::channel(256);
        let s = Stream_ {
            node: self.node.clone(),
            out: tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            max_bytes: self.max_response_bytes,
            token,
        };
        tokio::spawn(serve(s, input, events, self.progress_interval));
        ReceiverStream::new(rx)
    }
}
