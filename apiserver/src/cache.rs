//! The watch cache: per resource, one store watch on the resource's key prefix feeds an
//! in-memory copy of every object (its JSON encoding and the fields selectors read) and a ring
//! of recent events.
//! Lists and watches are served from it; each event is encoded once and the same bytes go to
//! every watcher.
//!
//! Reads stay consistent (KEP-2340 style): a list or watch without a resourceVersion first reads
//! the store's current revision, asks the store watch for a progress notification, and waits
//! until the cache has caught up to that revision. A resourceVersion older than the ring holds
//! gets `410 Expired`; a cache that is not ready (starting, relisting) sends requests to the store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::RwLock;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::etcd::{EtcdError, ProgressHandle, WatchEvent, prefix_end};
use crate::metrics::Metrics;
use crate::object;
use crate::registry::{ListOptions, ListPage, Registry, encode_continue, parse_rv};
use crate::resources::{self, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiResult;
use crate::strategy;
use crate::watch::{Render, WatchParams, bookmark, encode_event, expired, protobuf_frame};

/// The RBAC API group, whose caches run even when caching is off (the authorizer reads them).
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// How long a consistent read waits for the cache before going to the store.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// A cached object: its JSON encoding (with kind, apiVersion, resourceVersion) and what selectors
/// read from it. The decoded object is not kept: as a `serde_json::Value` it takes about ten
/// times the memory of its encoding, and most reads send the encoding as it is.
pub struct Obj {
    /// Its JSON encoding.
    pub json: Bytes,
    /// `metadata.labels`.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// The values of the resource's selectable fields, in the order of
    /// [`strategy::field_selector_fields`].
    fields: Box<[Box<str>]>,
}

impl Obj {
    fn new(res: &Resource, mut value: Value) -> Arc<Obj> {
        if let Some(m) = value.as_object_mut() {
            m.insert("kind".into(), json!(res.kind));
            m.insert("apiVersion".into(), json!(res.api_version()));
        }
        let labels = value
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.as_str().into(), s.into())))
                    .collect()
            })
            .unwrap_or_default();
        let fields = strategy::field_selector_fields(res)
            .iter()
            .map(|f| strategy::field_value(res, &value, f).into_boxed_str())
            .collect();
        let mut json = serde_json::to_vec(&value).unwrap_or_default();
        // A vector whose length is its capacity becomes `Bytes` without keeping spare room.
        json.shrink_to_fit();
        Arc::new(Obj {
            json: Bytes::from(json),
            labels,
            fields,
        })
    }

    /// The object, decoded from its encoding.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// Whether the object matches both selectors; `res` is the resource it belongs to.
    fn selected(&self, res: &Resource, labels: &LabelSelector, fields: &FieldSelector) -> bool {
        labels.matches_with(|k| {
            self.labels
                .iter()
                .find(|(l, _)| &**l == k)
                .map(|(_, v)| &**v)
        }) && fields.matches_with(|f| {
            strategy::field_selector_fields(res)
                .iter()
                .position(|n| *n == f)
                .and_then(|i| self.fields.get(i))
                .map(|v| &**v)
        })
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Deleted (the object is its last state, with the delete's revision).
    Deleted,
    /// The store has been seen up to `rev`.
    Progress,
    /// The cache relisted: watchers must end so their clients resume.
    Reset,
}

/// One change.
pub struct Event {
    /// Kind.
    pub kind: Kind,
    /// Store revision.
    pub rev: i64,
    /// Store key.
    pub key: Vec<u8>,
    /// The object after the change.
    pub obj: Option<Arc<Obj>>,
    /// The object before the change.
    pub prev: Option<Arc<Obj>>,
    /// The protobuf encoding of `obj`, made by the first protobuf watcher that sends it and
    /// shared by the others (`None` inside when it has none).
    pb: OnceLock<Option<Bytes>>,
}

struct State {
    ready: bool,
    revision: i64,
    /// The ring holds every event with a revision greater than this.
    oldest: i64,
    objects: BTreeMap<Vec<u8>, Arc<Obj>>,
    ring: VecDeque<Arc<Event>>,
    /// When each event of `ring` arrived, in the same order.
    ring_times: VecDeque<Instant>,
}

/// History the ring keeps once it holds more than [`RING_MIN`] events. kube-apiserver sizes
/// its watch cache around the same `eventFreshDuration`, though it keeps at least that much
/// (growing the cache up to 102,400 events) where this keeps at most that much. A watch
/// resuming from further back gets 410 Gone and relists.
const RING_FRESH: Duration = Duration::from_secs(75);
/// Events the ring keeps whatever their age (kube-apiserver's lower bound).
const RING_MIN: usize = 100;

/// Adds `event`, arrived at `now`, to the ring and drops what it no longer keeps: beyond `max`
/// events, and beyond [`RING_MIN`] those older than [`RING_FRESH`]. Returns the revision of the
/// newest event dropped.
fn push_event(
    ring: &mut VecDeque<Arc<Event>>,
    times: &mut VecDeque<Instant>,
    event: Arc<Event>,
    now: Instant,
    max: usize,
) -> Option<i64> {
    ring.push_back(event);
    times.push_back(now);
    let mut dropped = None;
    while ring.len() > max
        || (ring.len() > RING_MIN
            && times
                .front()
                .is_some_and(|t| now.duration_since(*t) > RING_FRESH))
    {
        times.pop_front();
        if let Some(old) = ring.pop_front() {
            dropped = Some(old.rev);
        }
    }
    dropped
}

/// The cache of one resource.
pub struct Cacher {
    res: &'static Resource,
    registry: Registry,
    metrics: Metrics,
    /// `apiserver_storage_objects` of this resource, looked up once.
    objects_gauge: prometheus_client::metrics::gauge::Gauge,
    /// `apiserver_watch_events_total` of this resource, looked up once.
    events_counter: prometheus_client::metrics::counter::Counter,
    state: RwLock<State>,
    ring_size: usize,
    tx: broadcast::Sender<Arc<Event>>,
    progress: parking_lot::Mutex<Option<ProgressHandle>>,
    advanced: Notify,
}

/// The caches of every resource.
pub struct Cache {
    cachers: Vec<Arc<Cacher>>,
}

impl Cache {
    /// Starts one cacher per resource, each keeping `ring_size` recent events; they fill in the
    /// background. A size of 0 disables caching, except for the resources `named` turns on
    /// (`(group, resource)` to on, which also turns caches off).
    pub fn start(
        registry: &Registry,
        metrics: &Metrics,
        ring_size: usize,
        named: &std::collections::BTreeMap<(String, String), bool>,
        shutdown: &CancellationToken,
    ) -> Arc<Cache> {
        let mut cachers = Vec::new();
        for res in resources::all().iter().filter(|r| {
            let read_here = r.group == RBAC_GROUP
                || r.group == crate::webhook::GROUP
                || r.group == crate::flowcontrol::GROUP
                || (r.group.is_empty() && matches!(r.resource, "resourcequotas" | "limitranges"));
            let wanted = named
                .get(&(r.group.to_string(), r.resource.to_string()))
                .copied()
                .unwrap_or(ring_size > 0);
            !r.create_only() && (wanted || read_here)
        }) {
            // The authorizer reads RBAC objects, the webhook plugins and API Priority and
            // Fairness their configurations, and the ResourceQuota and LimitRanger plugins
            // their objects, from their caches, which therefore always run.
            let ring_size = if ring_size == 0 { 100 } else { ring_size };
            let (tx, _) = broadcast::channel(4096);
            let c = Arc::new(Cacher {
                res,
                registry: registry.clone(),
                metrics: metrics.clone(),
                objects_gauge: metrics.storage_objects(res),
                events_counter: metrics.watch_events_of(res),
                state: RwLock::new(State {
                    ready: false,
                    revision: 0,
                    oldest: 0,
                    objects: BTreeMap::new(),
                    ring: VecDeque::new(),
                    ring_times: VecDeque::new(),
                }),
                ring_size,
                tx,
                progress: parking_lot::Mutex::new(None),
                advanced: Notify::new(),
            });
            tokio::spawn(c.clone().run(shutdown.clone()));
            cachers.push(c);
        }
        Arc::new(Cache { cachers })
    }

    /// The cacher of `res`.
    pub fn get(&self, res: &Resource) -> Option<&Arc<Cacher>> {
        self.cachers.iter().find(|c| {
            c.res.group == res.group
                && c.res.version == res.version
                && c.res.resource == res.resource
        })
    }
}

/// Calls `rebuild` with the objects of every one of `cachers` (in their order) once all hold a
/// complete copy, and again after every change, until `shutdown`; changes that arrive together
/// make one rebuild. (The authorizer, the webhook plugins and API Priority and Fairness follow
/// their configurations this way.)
pub async fn follow(
    cachers: Vec<Arc<Cacher>>,
    shutdown: CancellationToken,
    mut rebuild: impl FnMut(Vec<Vec<Value>>) + Send,
) {
    let mut subs: Vec<_> = cachers.iter().map(|c| c.subscribe()).collect();
    loop {
        let all: Option<Vec<Vec<Value>>> = cachers
            .iter()
            .map(|c| c.entries().map(|e| e.into_iter().map(|(_, v)| v).collect()))
            .collect();
        match all {
            Some(v) => rebuild(v),
            // A cache that (re)lists is waited for.
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        }
        {
            let changed = futures::future::select_all(subs.iter_mut().map(|s| Box::pin(s.recv())));
            tokio::select! {
                _ = changed => {}
                _ = shutdown.cancelled() => return,
            }
        }
        for s in &mut subs {
            while !matches!(
                s.try_recv(),
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
            ) {}
        }
    }
}

impl Cacher {
    fn prefix(&self, ns: &str) -> Vec<u8> {
        object::collection_prefix(self.registry.prefix(), self.res, ns)
    }

    /// The cached object `ns/name`, when the cache is ready and holds it.
    pub fn peek(&self, ns: &str, name: &str) -> Option<Value> {
        let key = object::key(self.registry.prefix(), self.res, ns, name);
        let obj = {
            let st = self.state.read();
            if !st.ready {
                return None;
            }
            st.objects.get(&key).cloned()
        };
        // Decoded without the lock, which the cache's writer waits for.
        obj.map(|o| o.value())
    }

    /// The cached objects of namespace `ns`, when the cache is ready.
    pub fn in_namespace(&self, ns: &str) -> Option<Vec<Value>> {
        let prefix = self.prefix(ns);
        let objs: Vec<Arc<Obj>> = {
            let st = self.state.read();
            if !st.ready {
                return None;
            }
            st.objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, o)| o.clone())
                .collect()
        };
        Some(objs.iter().map(|o| o.value()).collect())
    }

    /// Whether namespace `ns` holds any object, when the cache is ready.
    pub fn any_in(&self, ns: &str) -> Option<bool> {
        let prefix = self.prefix(ns);
        let st = self.state.read();
        st.ready.then(|| {
            st.objects
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix))
        })
    }

    /// Every cached object with its store key, when the cache is ready.
    pub fn entries(&self) -> Option<Vec<(Vec<u8>, Value)>> {
        let objs: Vec<(Vec<u8>, Arc<Obj>)> = {
            let st = self.state.read();
            if !st.ready {
                return None;
            }
            st.objects
                .iter()
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect()
        };
        Some(objs.into_iter().map(|(k, o)| (k, o.value())).collect())
    }

    /// The cache's events from now on (a relist ends with a [`Kind::Reset`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// How many objects the cache holds, when it is ready.
    pub fn object_count(&self) -> Option<usize> {
        let st = self.state.read();
        st.ready.then(|| st.objects.len())
    }

    /// Whether the cache holds a complete copy.
    pub fn is_ready(&self) -> bool {
        self.state.read().ready
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.list_and_watch(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    if matches!(e, EtcdError::Transform(_)) {
                        // A value that cannot be decrypted fails every list until the key or
                        // the encryption configuration is fixed: say so loudly.
                        tracing::warn!(resource = self.res.resource, error = %e, "watch cache cannot list; retrying");
                    } else {
                        tracing::debug!(resource = self.res.resource, error = %e, "watch cache relists");
                    }
                    {
                        let mut st = self.state.write();
                        st.ready = false;
                        let _ = self.tx.send(Arc::new(Event {
                            kind: Kind::Reset,
                            rev: st.revision,
                            key: Vec::new(),
                            obj: None,
                            prev: None,
                            pb: OnceLock::new(),
                        }));
                    }
                    *self.progress.lock() = None;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn list_and_watch(&self, shutdown: &CancellationToken) -> Result<(), EtcdError> {
        let prefix = self.prefix("");
        let end = prefix_end(&prefix);
        let etcd = self.registry.etcd().clone();
        let mut objects = BTreeMap::new();
        let mut start = prefix.clone();
        let mut revision = 0;
        loop {
            let r = etcd.range(&start, &end, 1000, revision, false).await?;
            if revision == 0 {
                revision = r.revision;
            }
            let more = r.more;
            let mut last = None;
            for kv in r.kvs {
                if let Ok(v) = object::decode_stored(self.res, &kv.value, kv.mod_revision) {
                    objects.insert(kv.key.clone(), Obj::new(self.res, v));
                }
                last = Some(kv.key);
            }
            match (more, last) {
                (true, Some(mut k)) => {
                    k.push(0);
                    start = k;
                }
                _ => break,
            }
        }
        let (mut rx, handle) = etcd
            .watch_with_progress(&prefix, &end, revision + 1, false)
            .await?;
        {
            let mut st = self.state.write();
            st.objects = objects;
            st.revision = revision;
            st.oldest = revision;
            st.ring.clear();
            st.ring_times.clear();
            st.ready = true;
            self.set_object_count(st.objects.len());
        }
        *self.progress.lock() = Some(handle.clone());
        tracing::debug!(resource = self.res.resource, revision, "watch cache ready");
        self.advanced.notify_waiters();
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            let ev = tokio::select! {
                e = rx.recv() => e,
                _ = tick.tick() => {
                    handle.request();
                    continue;
                }
                _ = shutdown.cancelled() => return Ok(()),
            };
            match ev {
                None => return Err(EtcdError::Unavailable("watch ended".into())),
                Some(Err(e)) => return Err(e),
                Some(Ok(e)) => self.apply(e),
            }
        }
    }

    fn set_object_count(&self, n: usize) {
        self.objects_gauge.set(n as i64);
    }

    fn apply(&self, ev: WatchEvent) {
        let mut st = self.state.write();
        let event = match ev {
            WatchEvent::Progress { revision } => {
                if revision > st.revision {
                    st.revision = revision;
                    let _ = self.tx.send(Arc::new(Event {
                        kind: Kind::Progress,
                        rev: revision,
                        key: Vec::new(),
                        obj: None,
                        prev: None,
                        pb: OnceLock::new(),
                    }));
                }
                drop(st);
                self.advanced.notify_waiters();
                return;
            }
            WatchEvent::Put { kv, .. } => {
                let Ok(v) = object::decode_stored(self.res, &kv.value, kv.mod_revision) else {
                    return;
                };
                let obj = Obj::new(self.res, v);
                let prev = st.objects.insert(kv.key.clone(), obj.clone());
                let kind = if prev.is_some() {
                    Kind::Modified
                } else {
                    Kind::Added
                };
                Event {
                    kind,
                    rev: kv.mod_revision,
                    key: kv.key,
                    obj: Some(obj),
                    prev,
                    pb: OnceLock::new(),
                }
            }
            WatchEvent::Delete { key, revision, .. } => {
                let Some(prev) = st.objects.remove(&key) else {
                    st.revision = st.revision.max(revision);
                    return;
                };
                let mut last = prev.value();
                object::set_meta(&mut last, "resourceVersion", json!(revision.to_string()));
                let obj = Obj::new(self.res, last);
                Event {
                    kind: Kind::Deleted,
                    rev: revision,
                    key,
                    obj: Some(obj),
                    prev: Some(prev),
                    pb: OnceLock::new(),
                }
            }
        };
        st.revision = st.revision.max(event.rev);
        let event = Arc::new(event);
        let state = &mut *st;
        if let Some(dropped) = push_event(
            &mut state.ring,
            &mut state.ring_times,
            event.clone(),
            Instant::now(),
            self.ring_size,
        ) {
            state.oldest = dropped;
        }
        self.set_object_count(st.objects.len());
        let _ = self.tx.send(event);
        drop(st);
        self.advanced.notify_waiters();
    }

    /// Waits until the cache has seen revision `rev`; false on timeout or when not ready.
    async fn wait_for(&self, rev: i64) -> bool {
        let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
        loop {
            let notified = self.advanced.notified();
            {
                let st = self.state.read();
                if st.ready && st.revision >= rev {
                    return true;
                }
            }
            if let Some(h) = self.progress.lock().as_ref() {
                h.request();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// The revision a consistent read must see: the store's current revision.
    async fn consistent_revision(&self) -> ApiResult<i64> {
        Ok(self.registry.etcd().current_revision().await?)
    }

    /// Serves a list from the cache, or `None` when it must go to the store (continue tokens,
    /// exact resourceVersions, a cache that is not ready or not fresh enough in time).
    pub async fn list(&self, ns: &str, opts: &ListOptions) -> Option<ApiResult<CachedPage>> {
        if let Err(e) = crate::registry::validate_list_options(opts) {
            return Some(Err(e));
        }
        if opts.resource_version_match.as_deref() == Some("Exact") || !self.is_ready() {
            return None;
        }
        // A continue token is served here only while the cache is still at the token's
        // revision (nothing changed since the first page); otherwise the store serves it.
        let resume = match opts
            .continue_token
            .as_deref()
            .map(crate::registry::decode_continue)
        {
            Some(Ok(t)) => {
                if t.rv != self.state.read().revision {
                    return None;
                }
                Some(t)
            }
            Some(Err(e)) => return Some(Err(e)),
            None => None,
        };
        let min = match (&resume, opts.resource_version.as_deref()) {
            (Some(t), _) => t.rv,
            (None, Some(s)) => match parse_rv(s) {
                Ok(v) => v,
                Err(e) => return Some(Err(e)),
            },
            (None, None) => match self.consistent_revision().await {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            },
        };
        if !self.wait_for(min).await {
            return None;
        }
        let prefix = self.prefix(ns);
        let st = self.state.read();
        if !st.ready || resume.as_ref().is_some_and(|t| t.rv != st.revision) {
            return None;
        }
        let mut start = prefix.clone();
        if let Some(t) = &resume {
            start.extend_from_slice(t.start.as_bytes());
        }
        let mut items = Vec::new();
        let mut continue_token = None;
        let mut remaining = None;
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut range = st
            .objects
            .range(start..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .peekable();
        let mut seen = 0i64;
        while let Some((k, o)) = range.next() {
            seen += 1;
            if !o.selected(self.res, &opts.labels, &opts.fields) {
                continue;
            }
            items.push(o.clone());
            if opts.limit > 0 && items.len() as i64 >= opts.limit {
                if range.peek().is_some() {
                    let suffix = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                    continue_token = Some(encode_continue(st.revision, &format!("{suffix}\u{0}")));
                    if !filtered {
                        remaining = Some(range.count() as i64);
                    }
                }
                break;
            }
        }
        let _ = seen;
        Some(Ok(CachedPage {
            items,
            revision: st.revision,
            continue_token,
            remaining,
        }))
    }

    /// Serves a watch from the cache, or `None` when the cache cannot (not ready or not fresh).
    pub async fn watch(
        self: &Arc<Self>,
        ns: &str,
        p: WatchParams,
    ) -> Option<ApiResult<mpsc::Receiver<Bytes>>> {
        if !self.is_ready() {
            return None;
        }
        let rv = match p
            .resource_version
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_rv)
            .transpose()
        {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let initial = match crate::watch::initial_events(&p, rv) {
            Ok(i) => i,
            Err(e) => return Some(Err(e)),
        };
        let min = match rv {
            None => match self.consistent_revision().await {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            },
            Some(v) => v,
        };
        if !self.wait_for(min).await {
            return None;
        }
        let prefix = self.prefix(ns);
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let (first, sub, mut last_rev) = {
            let st = self.state.read();
            if !st.ready {
                return None;
            }
            let sub = self.tx.subscribe();
            if initial {
                let objs: Vec<Arc<Obj>> = st
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(_, o)| o.selected(self.res, &p.labels, &p.fields))
                    .map(|(_, o)| o.clone())
                    .collect();
                (First::Snapshot(objs, st.revision), sub, st.revision)
            } else {
                let from = rv.unwrap_or(0);
                if from < st.oldest {
                    (First::Expired(from, st.oldest), sub, st.revision)
                } else {
                    let replay: Vec<Arc<Event>> = st
                        .ring
                        .iter()
                        .filter(|e| e.rev > from && e.key.starts_with(&prefix))
                        .cloned()
                        .collect();
                    (First::Replay(replay), sub, st.revision)
                }
            }
        };
        let me = self.clone();
        let res = self.res;
        let guard = self.metrics.watcher_guard(res);
        tokio::spawn(async move {
            let _guard = guard;
            let deadline = tokio::time::sleep(p.timeout);
            tokio::pin!(deadline);
            let mut sub = sub;
            match first {
                First::Expired(from, oldest) => {
                    let _ = tx
                        .send(encode_event(res, &p, "ERROR", &expired(from, oldest)))
                        .await;
                    return;
                }
                First::Snapshot(objs, rev) => {
                    for o in objs {
                        if tx.send(me.line(&p, "ADDED", &o, None)).await.is_err() {
                            return;
                        }
                    }
                    if p.send_initial_events == Some(true)
                        && tx
                            .send(encode_event(res, &p, "BOOKMARK", &bookmark(res, rev, true)))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                First::Replay(events) => {
                    for e in events {
                        if let Some(l) = me.event_line(&p, &e)
                            && tx.send(l).await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
            loop {
                let e = tokio::select! {
                    e = sub.recv() => e,
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                };
                let e = match e {
                    Ok(e) => e,
                    // Too slow to keep up, or the cache relisted: end the watch; the client
                    // resumes from its last resourceVersion.
                    Err(_) => return,
                };
                if e.kind == Kind::Reset {
                    return;
                }
                if e.rev <= last_rev && e.kind != Kind::Progress {
                    continue;
                }
                if e.kind == Kind::Progress {
                    if p.bookmarks && e.rev > last_rev {
                        last_rev = e.rev;
                        if tx
                            .send(encode_event(
                                res,
                                &p,
                                "BOOKMARK",
                                &bookmark(res, e.rev, false),
                            ))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    continue;
                }
                last_rev = e.rev;
                if !e.key.starts_with(&prefix) {
                    continue;
                }
                if let Some(l) = me.event_line(&p, &e)
                    && tx.send(l).await.is_err()
                {
                    return;
                }
            }
        });
        Some(Ok(rx))
    }

    /// One watch line for `obj`; plain JSON watches reuse the object's encoding, protobuf
    /// watches the encoding in `pb` (the event's, shared by its watchers) when there is one.
    fn line(
        &self,
        p: &WatchParams,
        ty: &str,
        obj: &Obj,
        pb: Option<&OnceLock<Option<Bytes>>>,
    ) -> Bytes {
        self.events_counter.inc();
        match p.render {
            Render::Json => {}
            Render::Protobuf => {
                let encode = || crate::protobuf::encode_lenient(&obj.value()).map(Bytes::from);
                return match pb {
                    Some(cell) => protobuf_frame(ty, cell.get_or_init(encode).as_deref()),
                    None => protobuf_frame(ty, encode().as_deref()),
                };
            }
            Render::Table(_) | Render::Metadata => {
                return encode_event(self.res, p, ty, &obj.value());
            }
        }
        let mut b = BytesMut::with_capacity(obj.json.len() + 32);
        b.put_slice(b"{\"type\":\"");
        b.put_slice(ty.as_bytes());
        b.put_slice(b"\",\"object\":");
        b.put_slice(&obj.json);
        b.put_slice(b"}\n");
        b.freeze()
    }

    /// The line for a change, with selector transitions as upstream: an object that starts
    /// matching is ADDED, one that stops matching is DELETED.
    fn event_line(&self, p: &WatchParams, e: &Event) -> Option<Bytes> {
        let obj = e.obj.as_ref()?;
        let now = obj.selected(self.res, &p.labels, &p.fields);
        let before = e
            .prev
            .as_ref()
            .is_some_and(|o| o.selected(self.res, &p.labels, &p.fields));
        let ty = match (e.kind, before, now) {
            (Kind::Added, _, true) => "ADDED",
            (Kind::Modified, true, true) => "MODIFIED",
            (Kind::Modified, false, true) => "ADDED",
            (Kind::Modified, true, false) => "DELETED",
            (Kind::Deleted, true, _) => "DELETED",
            _ => return None,
        };
        Some(self.line(p, ty, obj, Some(&e.pb)))
    }
}

/// A list page served from the cache: the cached objects themselves, not copies.
pub struct CachedPage {
    /// Matching objects.
    pub items: Vec<Arc<Obj>>,
    /// The cache revision the page was read at.
    pub revision: i64,
    /// Token for the next page.
    pub continue_token: Option<String>,
    /// Items left after this page (unfiltered lists only).
    pub remaining: Option<i64>,
}

impl CachedPage {
    /// The page with copies of the objects, for renderings that rework them (tables, YAML).
    pub fn into_page(self) -> ListPage {
        ListPage {
            items: self.items.iter().map(|o| o.value()).collect(),
            revision: self.revision,
            continue_token: self.continue_token,
            remaining: self.remaining,
        }
    }

    /// The JSON list body, assembled from each object's stored encoding.
    pub fn encode_json(&self, res: &Resource) -> Vec<u8> {
        let mut md = json!({"resourceVersion": self.revision.to_string()});
        if let Some(c) = &self.continue_token {
            md["continue"] = json!(c);
        }
        if let Some(r) = self.remaining.filter(|r| *r > 0) {
            md["remainingItemCount"] = json!(r);
        }
        let head = serde_json::to_vec(
            &json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": md}),
        )
        .unwrap_or_default();
        let size: usize = self.items.iter().map(|o| o.json.len() + 1).sum();
        let mut out = Vec::with_capacity(head.len() + size + 16);
        out.extend_from_slice(&head[..head.len() - 1]);
        out.extend_from_slice(b",\"items\":[");
        for (i, o) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&o.json);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

enum First {
    Snapshot(Vec<Arc<Obj>>, i64),
    Replay(Vec<Arc<Event>>),
    Expired(i64, i64),
}

#[cfg(test)]
mod ring_tests {
    use super::*;

    fn event(rev: i64) -> Arc<Event> {
        Arc::new(Event {
            kind: Kind::Added,
            rev,
            key: Vec::new(),
            obj: None,
            prev: None,
            pb: OnceLock::new(),
        })
    }

    #[test]
    fn the_ring_keeps_at_most_max_events_and_beyond_the_minimum_only_fresh_ones() {
        let (mut ring, mut times) = (VecDeque::new(), VecDeque::new());
        let start = Instant::now();
        // 300 events over 300 s, one a second, into a ring of at most 250.
        let mut oldest = 0;
        for rev in 1..=300 {
            let at = start + Duration::from_secs(rev as u64);
            if let Some(d) = push_event(&mut ring, &mut times, event(rev), at, 250) {
                oldest = d;
            }
            if rev <= RING_MIN as i64 {
                assert_eq!(ring.len(), rev as usize, "young and few: all kept");
            }
        }
        // Only the last 75 s (76 events) are fresh, but the minimum of 100 stays.
        assert_eq!(ring.len(), RING_MIN);
        assert_eq!(ring.front().unwrap().rev, 201);
        assert_eq!(oldest, 200, "a resume from before revision 200 is expired");

        // A burst within the freshness window is bounded by `max` alone.
        let (mut ring, mut times) = (VecDeque::new(), VecDeque::new());
        for rev in 1..=1000 {
            push_event(&mut ring, &mut times, event(rev), start, 250);
        }
        assert_eq!(ring.len(), 250);
        assert_eq!(ring.front().unwrap().rev, 751);
    }
}

#[cfg(test)]
mod obj_tests {
    use super::*;

    #[test]
    fn a_cached_object_keeps_its_encoding_and_answers_selectors_as_the_decoded_object_would() {
        let pods = resources::find("", "v1", "pods").unwrap();
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "7",
                         "labels": {"app": "web", "tier": "fe"}},
            "spec": {"nodeName": "n1", "hostNetwork": true},
            "status": {"phase": "Running"},
        });
        let o = Obj::new(pods, pod.clone());
        let mut want = pod.clone();
        want["kind"] = json!("Pod");
        want["apiVersion"] = json!("v1");
        assert_eq!(o.value(), want, "the decoded object is the one cached");
        assert_eq!(o.json.len(), serde_json::to_vec(&want).unwrap().len());

        for (labels, fields) in [
            ("", ""),
            ("app=web", ""),
            ("app in (web,db),!missing", "spec.nodeName=n1"),
            ("tier", "status.phase!=Pending,spec.hostNetwork=true"),
            ("app!=web", ""),
            ("", "spec.nodeName="),
            ("", "spec.nodeName=n2"),
            ("missing notin (x)", "metadata.name=p,metadata.namespace=ns"),
            ("", "status.podIP="),
            ("app=db", "spec.nodeName=n1"),
        ] {
            let l = LabelSelector::parse(labels).unwrap();
            let f = FieldSelector::parse(fields, strategy::field_selector_fields(pods)).unwrap();
            assert_eq!(
                o.selected(pods, &l, &f),
                l.matches_object(&want) && f.matches_object(pods, &want),
                "labels {labels:?} fields {fields:?}"
            );
        }
        let l = LabelSelector::parse("app=web").unwrap();
        let f = FieldSelector::parse("spec.nodeName=n1", strategy::field_selector_fields(pods))
            .unwrap();
        assert!(o.selected(pods, &l, &f));
        let f = FieldSelector::parse("spec.nodeName=n2", strategy::field_selector_fields(pods))
            .unwrap();
        assert!(!o.selected(pods, &l, &f));
    }
}
