//! The traffic of a run: KV clients (get, put, delete, compare-and-set on mod revisions) at a
//! bounded rate, watchers on the key prefix that reopen where they left off, and a compactor.
//! Every operation is recorded with its invoke and complete times; an error is an unknown outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keelson_etcdpb::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse, compare, kv_client::KvClient, lease_client::LeaseClient,
    request_op, watch_client::WatchClient, watch_request,
};
use keelson_etcdpb::mvccpb::event::EventType;
use tokio_util::sync::CancellationToken;

use crate::cluster::channel;
use crate::history::{
    Compaction, Input, KeepAlive, LeaseRecord, Operation, Output, WatchEntry, WatchEvent,
    WatchHistory,
};

/// Where the traffic's keys live.
pub const PREFIX: &str = "/chaos/";

/// Nanoseconds since the run started.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// What the KV clients do.
#[derive(Clone, Debug)]
pub struct Load {
    /// Keys live under this prefix.
    pub prefix: String,
    /// How many keys the clients share (few keys: more contention, more to check).
    pub keys: usize,
    /// Operations per second over all clients.
    pub qps: f64,
    /// A call without an answer within this is an unknown outcome.
    pub timeout: Duration,
    /// Operations done so far, for the progress lines.
    pub done: Arc<Done>,
}

/// Operations the clients have done so far.
#[derive(Debug, Default)]
pub struct Done {
    /// With an answer.
    pub answered: std::sync::atomic::AtomicUsize,
    /// Without one (unknown outcomes).
    pub unanswered: std::sync::atomic::AtomicUsize,
}

impl Done {
    fn count(&self, output: &Output) {
        let counter = if output.revision().is_some() {
            &self.answered
        } else {
            &self.unanswered
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A small seeded generator (xorshift64*), so a client's choices depend only on its number.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// A KV client that moves to the next endpoint after an error, like etcd's client does.
pub struct Kv {
    endpoints: Vec<String>,
    at: usize,
    timeout: Duration,
    client: KvClient<tonic::transport::Channel>,
}

impl Kv {
    /// A client on `endpoints[first % len]`.
    pub fn new(endpoints: &[String], first: usize, timeout: Duration) -> anyhow::Result<Kv> {
        let at = first % endpoints.len();
        Ok(Kv {
            client: KvClient::new(channel(&endpoints[at], Some(timeout))?),
            endpoints: endpoints.to_vec(),
            at,
            timeout,
        })
    }

    fn fail_over(&mut self) {
        self.at = (self.at + 1) % self.endpoints.len();
        if let Ok(ch) = channel(&self.endpoints[self.at], Some(self.timeout)) {
            self.client = KvClient::new(ch);
        }
    }

    /// Runs one operation and says what came back.
    pub async fn run(&mut self, input: &Input) -> Output {
        self.run_leased(input, 0).await
    }

    /// Runs one operation; a put is attached to `lease` (0: none).
    pub async fn run_leased(&mut self, input: &Input, lease: i64) -> Output {
        let result = self.call(input, lease).await;
        result.unwrap_or_else(|e| {
            self.fail_over();
            Output::Unknown {
                error: e.message().chars().take(200).collect(),
            }
        })
    }

    /// Puts every `(key, value)` in one txn (no compares): one revision for all of them. The
    /// answer is a put's, shared by every part.
    pub async fn run_txn(&mut self, puts: &[(String, String)]) -> Output {
        match self.client.txn(txn_puts(puts)).await {
            Ok(r) => Output::Put {
                revision: header_revision(r.into_inner().header),
            },
            Err(e) => {
                self.fail_over();
                Output::Unknown {
                    error: e.message().chars().take(200).collect(),
                }
            }
        }
    }

    async fn call(&mut self, input: &Input, lease: i64) -> Result<Output, tonic::Status> {
        let answer = match request(input, lease) {
            Request::Range(r) => Answer::Range(self.client.range(r).await?.into_inner()),
            Request::Put(r) => Answer::Put(self.client.put(r).await?.into_inner()),
            Request::Delete(r) => Answer::Delete(self.client.delete_range(r).await?.into_inner()),
            Request::Txn(r) => Answer::Txn(self.client.txn(r).await?.into_inner()),
        };
        Ok(output(answer))
    }
}

/// The etcd request an operation sends.
#[derive(Clone, Debug)]
pub enum Request {
    /// A linearizable range of one key.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete of one key.
    Delete(DeleteRangeRequest),
    /// A compare-and-set, or a txn of puts.
    Txn(TxnRequest),
}

/// What the store answered to a [`Request`].
#[derive(Clone, Debug)]
pub enum Answer {
    /// To a range.
    Range(keelson_etcdpb::etcdserverpb::RangeResponse),
    /// To a put.
    Put(keelson_etcdpb::etcdserverpb::PutResponse),
    /// To a delete.
    Delete(keelson_etcdpb::etcdserverpb::DeleteRangeResponse),
    /// To a txn.
    Txn(keelson_etcdpb::etcdserverpb::TxnResponse),
}

/// The request `input` sends; a put is attached to `lease` (0: none).
pub fn request(input: &Input, lease: i64) -> Request {
    match input {
        Input::Get { key } => Request::Range(RangeRequest {
            key: key.clone().into_bytes(),
            ..Default::default()
        }),
        Input::Put { key, value } => Request::Put(PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
            lease,
            ..Default::default()
        }),
        Input::Delete { key } => Request::Delete(DeleteRangeRequest {
            key: key.clone().into_bytes(),
            ..Default::default()
        }),
        Input::Cas {
            key,
            expected,
            value,
        } => Request::Txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: key.clone().into_bytes(),
                target_union: Some(compare::TargetUnion::ModRevision(*expected)),
                ..Default::default()
            }],
            success: vec![put_op(key, value)],
            failure: vec![],
        }),
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// A txn putting every `(key, value)` at once (no compares): one revision for all of them.
pub fn txn_puts(puts: &[(String, String)]) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success: puts.iter().map(|(k, v)| put_op(k, v)).collect(),
        failure: vec![],
    }
}

fn header_revision(h: Option<keelson_etcdpb::etcdserverpb::ResponseHeader>) -> i64 {
    h.map(|h| h.revision).unwrap_or(0)
}

/// What an answer says, as the history records it (a txn's as a compare-and-set).
pub fn output(answer: Answer) -> Output {
    match answer {
        Answer::Range(r) => {
            let kv = r.kvs.first();
            Output::Get {
                value: kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                mod_revision: kv.map(|kv| kv.mod_revision).unwrap_or(0),
                revision: header_revision(r.header),
            }
        }
        Answer::Put(r) => Output::Put {
            revision: header_revision(r.header),
        },
        Answer::Delete(r) => Output::Delete {
            deleted: r.deleted,
            revision: header_revision(r.header),
        },
        Answer::Txn(r) => Output::Cas {
            succeeded: r.succeeded,
            revision: header_revision(r.header),
        },
    }
}

/// What a client does next: one operation, or a txn putting several keys.
#[derive(Clone, Debug)]
pub enum Step {
    /// A single-key operation.
    One(Input),
    /// `(key, value)` pairs put in one txn.
    Txn(Vec<(String, String)>),
}

/// A client's choice of operations (seeded, so it depends only on the seed), with the mod
/// revision it last saw per key for its compare-and-sets.
pub struct Chooser {
    id: usize,
    prefix: String,
    keys: usize,
    rng: Rng,
    seq: u64,
    seen: HashMap<String, i64>,
}

impl Chooser {
    /// Client `id`'s choices among `keys` keys under `prefix`.
    pub fn new(id: usize, prefix: &str, keys: usize, seed: u64) -> Chooser {
        Chooser {
            id,
            prefix: prefix.to_string(),
            keys,
            rng: Rng::new(seed),
            seq: 0,
            seen: HashMap::new(),
        }
    }

    /// The next step: four in ten gets, three puts (or a txn of puts), a delete, two
    /// compare-and-sets on the last mod revision seen.
    pub fn choose(&mut self) -> Step {
        let key = format!("{}k{}", self.prefix, self.rng.below(self.keys));
        self.seq += 1;
        let value = format!("c{}-{}", self.id, self.seq);
        let choice = self.rng.below(10);
        if choice == 6 && self.keys >= 2 {
            // A txn putting two or three keys at once.
            let mut keys = vec![key];
            let want = 2 + self.rng.below(2).min(self.keys - 2);
            while keys.len() < want {
                let k = format!("{}k{}", self.prefix, self.rng.below(self.keys));
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            return Step::Txn(
                keys.into_iter()
                    .enumerate()
                    .map(|(i, k)| (k, format!("{value}.{i}")))
                    .collect(),
            );
        }
        Step::One(match choice {
            0..=3 => Input::Get { key },
            4..=6 => Input::Put { key, value },
            7 => Input::Delete { key },
            _ => Input::Cas {
                expected: self.seen.get(&key).copied().unwrap_or(0),
                key,
                value,
            },
        })
    }

    /// Records one finished step as operations (a txn as one per key, sharing a txn number)
    /// and notes the mod revisions its answer shows.
    pub fn record(
        &mut self,
        step: Step,
        invoke: u64,
        complete: u64,
        output: Output,
        history: &mut Vec<Operation>,
    ) {
        let input = match step {
            Step::Txn(puts) => {
                let txn = ((self.id as u64) << 32) | self.seq;
                for (key, value) in puts {
                    if let Output::Put { revision } = output {
                        self.seen.insert(key.clone(), revision);
                    }
                    history.push(Operation {
                        client: self.id,
                        txn: Some(txn),
                        invoke,
                        complete,
                        input: Input::Put { key, value },
                        output: output.clone(),
                    });
                }
                return;
            }
            Step::One(input) => input,
        };
        match (&input, &output) {
            (Input::Get { key }, Output::Get { mod_revision, .. }) => {
                self.seen.insert(key.clone(), *mod_revision);
            }
            (Input::Put { key, .. }, Output::Put { revision })
            | (
                Input::Cas { key, .. },
                Output::Cas {
                    succeeded: true,
                    revision,
                },
            ) => {
                self.seen.insert(key.clone(), *revision);
            }
            (Input::Delete { key }, Output::Delete { .. }) => {
                self.seen.insert(key.clone(), 0);
            }
            _ => {}
        }
        history.push(Operation {
            client: self.id,
            txn: None,
            invoke,
            complete,
            input,
            output,
        });
    }
}

/// One client: operations at `load.qps / clients` per second until `stop`.
pub async fn client(
    id: usize,
    clients: usize,
    endpoints: Arc<Vec<String>>,
    load: Load,
    clock: Clock,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Operation>> {
    let mut kv = Kv::new(&endpoints, id, load.timeout)?;
    let mut chooser = Chooser::new(id, &load.prefix, load.keys, id as u64 + 1);
    let period = Duration::from_secs_f64(clients as f64 / load.qps.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut history = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let step = chooser.choose();
        let invoke = clock.now();
        let output = match &step {
            Step::One(input) => kv.run(input).await,
            Step::Txn(puts) => kv.run_txn(puts).await,
        };
        let complete = clock.now();
        load.done.count(&output);
        chooser.record(step, invoke, complete, output, &mut history);
    }
    Ok(history)
}

/// Leases: one granted every `every` with a key put under `prefix` attached; every other one kept
/// alive three times, 600 ms apart, then left to expire like the rest. The puts are recorded as
/// operations of client `client`.
#[allow(clippy::too_many_arguments)]
pub async fn leases(
    client: usize,
    endpoints: Arc<Vec<String>>,
    prefix: String,
    ttl: i64,
    every: Duration,
    timeout: Duration,
    clock: Clock,
    stop: CancellationToken,
) -> (Vec<LeaseRecord>, Vec<Operation>) {
    let mut kv = match Kv::new(&endpoints, client, timeout) {
        Ok(kv) => kv,
        Err(_) => return (Vec::new(), Vec::new()),
    };
    let mut at = client;
    let Ok(ch) = channel(&endpoints[at % endpoints.len()], Some(timeout)) else {
        return (Vec::new(), Vec::new());
    };
    let mut leases = LeaseClient::new(ch);
    let mut records: Vec<LeaseRecord> = Vec::new();
    let mut puts = Vec::new();
    // (record index, keep-alives left, next one due)
    let mut kept: Vec<(usize, u32, Instant)> = Vec::new();
    let mut next_grant = Instant::now();
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut failed = false;
        if Instant::now() >= next_grant {
            next_grant = Instant::now() + every;
            let granted = clock.now();
            match leases.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await {
                Ok(g) => {
                    let g = g.into_inner();
                    n += 1;
                    let key = format!("{prefix}l{n}");
                    let input = Input::Put {
                        key: key.clone(),
                        value: format!("lease-{n}"),
                    };
                    let invoke = clock.now();
                    let output = kv.run_leased(&input, g.id).await;
                    puts.push(Operation {
                        client,
                        txn: None,
                        invoke,
                        complete: clock.now(),
                        input,
                        output,
                    });
                    records.push(LeaseRecord {
                        lease: g.id,
                        ttl: g.ttl,
                        granted,
                        key,
                        keepalives: Vec::new(),
                    });
                    if n.is_multiple_of(2) {
                        kept.push((
                            records.len() - 1,
                            3,
                            Instant::now() + Duration::from_millis(600),
                        ));
                    }
                }
                Err(_) => failed = true,
            }
        }
        for (record, left, due) in &mut kept {
            if *left == 0 || Instant::now() < *due {
                continue;
            }
            let lease = records[*record].lease;
            let invoke = clock.now();
            let request = LeaseKeepAliveRequest { id: lease };
            let answer = match leases
                .lease_keep_alive(futures::stream::once(async move { request }))
                .await
            {
                Ok(s) => s.into_inner().next().await.and_then(Result::ok),
                Err(_) => None,
            };
            match answer {
                Some(r) => records[*record]
                    .keepalives
                    .push(KeepAlive { invoke, ttl: r.ttl }),
                None => failed = true,
            }
            *left -= 1;
            *due = Instant::now() + Duration::from_millis(600);
        }
        kept.retain(|k| k.1 > 0);
        if failed {
            at += 1;
            if let Ok(ch) = channel(&endpoints[at % endpoints.len()], Some(timeout)) {
                leases = LeaseClient::new(ch);
            }
        }
    }
    (records, puts)
}

/// When a watcher may stop: once it has seen `revision` (the run's last write), or at `abort`.
#[derive(Clone)]
pub struct WatchEnd {
    /// The revision to reach, set when the traffic has stopped.
    pub revision: tokio::sync::watch::Receiver<Option<i64>>,
    /// Give up waiting.
    pub abort: CancellationToken,
}

/// A watch on `prefix` from `start` that survives faults: when the stream breaks it reopens on
/// the next endpoint from the revision after the last event; when told its revision was
/// compacted, from the compact revision. It asks for a progress notification every `progress`
/// (zero: never) and records the answers.
pub async fn watcher(
    id: usize,
    endpoints: Arc<Vec<String>>,
    prefix: String,
    start: i64,
    progress: Duration,
    clock: Clock,
    mut end: WatchEnd,
) -> WatchHistory {
    let mut history = WatchHistory {
        watcher: id,
        prefix: prefix.clone(),
        entries: Vec::new(),
    };
    let mut at = id % endpoints.len();
    let mut position = WatchPosition::from(start);
    // A stream that delivers nothing for this long while the run waits for it is reopened
    // elsewhere (its member may be paused).
    let stall = Duration::from_secs(3);
    'reopen: loop {
        if end.abort.is_cancelled() || end.revision.borrow().is_some_and(|r| position.last >= r) {
            break;
        }
        let Ok(ch) = channel(&endpoints[at], None) else {
            break;
        };
        at = (at + 1) % endpoints.len();
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: prefix.clone().into_bytes(),
                    range_end: keelson_etcdpb::prefix_end(prefix.as_bytes()),
                    start_revision: position.next,
                    ..Default::default()
                },
            )),
        };
        history.entries.push(WatchEntry::Opened {
            start_revision: position.next,
            at: clock.now(),
        });
        // The create, then a progress request every `progress` while the stream is open.
        let (mut asks, requests) = futures::channel::mpsc::channel::<WatchRequest>(4);
        let _ = asks.try_send(create);
        let mut progress_tick = tokio::time::interval(progress.max(Duration::from_millis(1)));
        progress_tick.tick().await;
        // When the stream last moved on (an event, or progress past the last event): progress
        // notifications that repeat an old revision do not keep a stalled stream alive.
        let mut advanced = tokio::time::Instant::now();
        let mut stream = match WatchClient::new(ch).watch(requests).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                history.entries.push(WatchEntry::Broken {
                    error: e.message().to_string(),
                    at: clock.now(),
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            let waiting = end.revision.borrow().is_some();
            let message = tokio::select! {
                _ = end.abort.cancelled() => break 'reopen,
                changed = end.revision.changed(), if !waiting => {
                    if changed.is_err() {
                        break 'reopen;
                    }
                    // The wait for the last write starts now.
                    advanced = tokio::time::Instant::now();
                    continue;
                }
                m = stream.next() => m,
                _ = progress_tick.tick(), if !progress.is_zero() => {
                    let ask = WatchRequest {
                        request_union: Some(watch_request::RequestUnion::ProgressRequest(
                            WatchProgressRequest {},
                        )),
                    };
                    // A full queue means the stream is not being read: skip this one.
                    let _ = asks.try_send(ask);
                    continue;
                }
                _ = tokio::time::sleep_until(advanced + stall), if waiting => {
                    history.entries.push(WatchEntry::Broken {
                        error: format!("no events for {stall:?} while the run waits"),
                        at: clock.now(),
                    });
                    continue 'reopen;
                }
            };
            let response = match message {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    history.entries.push(WatchEntry::Broken {
                        error: e.message().chars().take(200).collect(),
                        at: clock.now(),
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'reopen;
                }
                None => {
                    history.entries.push(WatchEntry::Broken {
                        error: "stream ended".into(),
                        at: clock.now(),
                    });
                    continue 'reopen;
                }
            };
            match position.take(&mut history, response, clock.now()) {
                Taken::Reopen { pause } => {
                    if pause {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue 'reopen;
                }
                Taken::Created => continue,
                Taken::Progress { moved_on } => {
                    if moved_on {
                        advanced = tokio::time::Instant::now();
                    }
                    continue;
                }
                Taken::Events => advanced = tokio::time::Instant::now(),
            }
            if end.revision.borrow().is_some_and(|r| position.last >= r) {
                break 'reopen;
            }
        }
    }
    history
}

/// Where a watcher stands over all its streams: the revision to open the next one from, the
/// highest event revision seen, and the responses with events or progress so far.
#[derive(Debug, Clone, Copy)]
pub struct WatchPosition {
    /// The revision the next stream opens from.
    pub next: i64,
    /// The highest event revision seen.
    pub last: i64,
    /// Responses with events or progress, over every stream.
    pub responses: u64,
}

impl From<i64> for WatchPosition {
    /// A watcher that has seen nothing and starts from `start`.
    fn from(start: i64) -> WatchPosition {
        WatchPosition {
            next: start,
            last: 0,
            responses: 0,
        }
    }
}

/// What a watch response meant for the watcher that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Open the stream again (it was cancelled, or its start was compacted).
    Reopen {
        /// The server named a compact revision it does not hold back from: reopening at
        /// once would spin.
        pause: bool,
    },
    /// The stream was created.
    Created,
    /// A progress notification.
    Progress {
        /// It moved past the last event seen.
        moved_on: bool,
    },
    /// Events, recorded.
    Events,
}

impl WatchPosition {
    /// Records `response`, received at `now`, in `history` as `keelson chaos run`'s watchers
    /// record it, and moves on past its events.
    pub fn take(&mut self, history: &mut WatchHistory, response: WatchResponse, now: u64) -> Taken {
        if response.compact_revision > 0 {
            history.entries.push(WatchEntry::Compacted {
                compact_revision: response.compact_revision,
                at: now,
            });
            let pause = response.compact_revision <= self.next;
            self.next = response.compact_revision;
            return Taken::Reopen { pause };
        }
        if response.canceled {
            history.entries.push(WatchEntry::Broken {
                error: format!("cancelled: {}", response.cancel_reason),
                at: now,
            });
            return Taken::Reopen { pause: false };
        }
        if response.created {
            return Taken::Created;
        }
        let header = response.header.map(|h| h.revision).unwrap_or(0);
        self.responses += 1;
        if response.events.is_empty() {
            history.entries.push(WatchEntry::Progress {
                revision: header,
                at: now,
            });
            return Taken::Progress {
                moved_on: header > self.last,
            };
        }
        for e in response.events {
            let Some(kv) = e.kv else { continue };
            let delete = e.r#type == EventType::Delete as i32;
            history.entries.push(WatchEntry::Event(WatchEvent {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value: (!delete).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
                revision: kv.mod_revision,
                header_revision: header,
                at: now,
                response: self.responses,
            }));
            self.last = self.last.max(kv.mod_revision);
            self.next = self.last + 1;
        }
        Taken::Events
    }
}

/// Compacts to `keep` revisions behind the head every `every` until `stop`.
pub async fn compactor(
    endpoints: Arc<Vec<String>>,
    every: Duration,
    keep: i64,
    clock: Clock,
    stop: CancellationToken,
) -> Vec<Compaction> {
    let mut done = Vec::new();
    let mut last = 0;
    let mut at = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        at += 1;
        let Ok(ch) = channel(
            &endpoints[at % endpoints.len()],
            Some(Duration::from_secs(2)),
        ) else {
            continue;
        };
        let mut kv = KvClient::new(ch);
        let Ok(head) = kv
            .range(RangeRequest {
                key: b"compaction-probe".to_vec(),
                ..Default::default()
            })
            .await
        else {
            continue;
        };
        let revision = head.into_inner().header.map(|h| h.revision).unwrap_or(0) - keep;
        if revision <= last {
            continue;
        }
        let asked = clock.now();
        let acknowledged = kv
            .compact(CompactionRequest {
                revision,
                physical: false,
            })
            .await
            .is_ok();
        last = revision;
        done.push(Compaction {
            revision,
            at: asked,
            acknowledged,
        });
    }
    done
}
