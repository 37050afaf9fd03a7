//! A shared informer: one list-watch per resource (kube-runtime's watcher, which relists on 410
//! and backs off on errors), a cache every controller reads, and handlers told what changed with
//! the old object as well as the new one, as client-go's `ResourceEventHandler`s are.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Whether an informer has synced: its first list is in the cache, the indexes, and the
/// handlers (client-go's `HasSynced`). The cache alone is ready a moment earlier, before the
/// indexes are rebuilt, so code that reads indexes waits for this. Cheap to clone.
#[derive(Clone, Default)]
pub struct Synced(Arc<(std::sync::atomic::AtomicBool, tokio::sync::Notify)>);

impl Synced {
    /// True once synced.
    pub fn is_synced(&self) -> bool {
        self.0.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until synced.
    pub async fn wait(&self) {
        loop {
            let notified = self.0.1.notified();
            futures::pin_mut!(notified);
            notified.as_mut().enable();
            if self.is_synced() {
                return;
            }
            notified.await;
        }
    }

    fn set(&self) {
        self.0.0.store(true, std::sync::atomic::Ordering::Release);
        self.0.1.notify_waiters();
    }
}

/// What changed, as a handler sees it.
#[derive(Debug)]
pub enum Change<'a, K> {
    /// A new object (also: an object seen for the first time after a relist).
    Added(&'a K),
    /// An object changed (or a relist returned it again: `old` may equal `new`).
    Updated {
        /// The cached object before the change.
        old: &'a K,
        /// The object now.
        new: &'a K,
    },
    /// An object is gone (the last state the cache had).
    Deleted(&'a K),
}

impl<'a, K> Change<'a, K> {
    /// The object as it is now (or was last, for a deletion).
    pub fn object(&self) -> &'a K {
        match self {
            Change::Added(o) | Change::Deleted(o) => o,
            Change::Updated { new, .. } => new,
        }
    }
}

/// The store's own copy of the object a change is about (the store holds the new object when
/// handlers run), so a handler can keep it rather than copy it; `None` for a deletion.
pub fn cached<K>(store: &Store<K>, c: &Change<'_, K>) -> Option<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    match c {
        Change::Deleted(_) => None,
        _ => store.get(&ObjectRef::from(c.object())),
    }
}

/// Drops what no controller reads but every object carries: managedFields (as client-go's
/// `TransformStripManagedFields`, which kube-controller-manager's informers use).
fn trim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

type Handler<K> = Box<dyn Fn(Change<'_, K>) + Send + Sync>;

type TrimFn<K> = Box<dyn Fn(&mut K) + Send + Sync>;

/// Index key -> the objects under it.
type Buckets<K> = HashMap<String, HashMap<ObjectRef<K>, Arc<K>>>;

type IndexFn<K> = Box<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// A secondary index over an informer's cache (client-go's `Indexer`): objects by the keys a
/// function gives them, e.g. pods by their controller's UID. Cheap to clone.
pub struct Index<K: Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    map: Arc<parking_lot::RwLock<Buckets<K>>>,
}

impl<K: Resource + 'static> Clone for Index<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<K: Resource + 'static> Index<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// The objects indexed under `key`.
    pub fn get(&self, key: &str) -> Vec<Arc<K>> {
        self.map
            .read()
            .get(key)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes an object out from under its old keys and puts its new version under its new
    /// keys, in one step: a reader in between would miss it (a ReplicaSet counting its pods
    /// while one of them changed would create one too many).
    fn replace(&self, old: Option<(Vec<String>, ObjectRef<K>)>, new: Option<(Vec<String>, Arc<K>)>)
    where
        K::DynamicType: Default,
    {
        let mut map = self.map.write();
        if let Some((keys, r)) = old {
            for k in keys {
                if let Some(m) = map.get_mut(&k) {
                    m.remove(&r);
                    if m.is_empty() {
                        map.remove(&k);
                    }
                }
            }
        }
        if let Some((keys, obj)) = new {
            let r = ObjectRef::from(obj.as_ref());
            for k in keys {
                map.entry(k).or_default().insert(r.clone(), obj.clone());
            }
        }
    }

    /// Indexes `objects` afresh (after a relist), swapping the new index in at once.
    fn rebuild(&self, f: &IndexFn<K>, objects: &[Arc<K>])
    where
        K::DynamicType: Default,
    {
        let mut fresh = Buckets::new();
        for obj in objects {
            let r = ObjectRef::from(obj.as_ref());
            for k in f(obj) {
                fresh
                    .entry(k)
                    .or_insert_with(HashMap::new)
                    .insert(r.clone(), obj.clone());
            }
        }
        *self.map.write() = fresh;
    }
}

/// A list-watch of one resource with a cache and change handlers. Register handlers, take
/// [`Informer::store`] handles, then [`Informer::run`] it.
pub struct Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    api: Api<K>,
    config: watcher::Config,
    store: Store<K>,
    writer: reflector::store::Writer<K>,
    handlers: Vec<Handler<K>>,
    indexes: Vec<(IndexFn<K>, Index<K>)>,
    /// The keys of a relist in progress (the objects wait in `writer`'s buffer, so a relist
    /// holds one new copy of each object, not two).
    relisted: Vec<ObjectRef<K>>,
    /// What this informer's owner trims from each object, beyond managedFields.
    trim_more: Option<TrimFn<K>>,
    synced: Synced,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// An informer over `api` (all namespaces or one) with the given watch configuration.
    pub fn new(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        Self {
            api,
            config,
            store,
            writer,
            handlers: Vec::new(),
            indexes: Vec::new(),
            relisted: Vec::new(),
            trim_more: None,
            synced: Synced::default(),
        }
    }

    /// Adds an index keyed by `f` (an object may have several keys, or none).
    pub fn add_index(&mut self, f: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) -> Index<K> {
        let index = Index {
            map: Arc::new(parking_lot::RwLock::new(HashMap::new())),
        };
        self.indexes.push((Box::new(f), index.clone()));
        index
    }

    /// Keeps the indexes in step with one object's change (`new` None: deleted).
    fn reindex(&self, old: Option<&K>, new: Option<Arc<K>>) {
        for (f, index) in &self.indexes {
            index.replace(
                old.map(|o| (f(o), ObjectRef::from(o))),
                new.as_ref().map(|n| (f(n), n.clone())),
            );
        }
    }

    /// Trims `f` from every object before it is cached (what its owner never reads, to save
    /// memory), after managedFields.
    pub fn trim_with(&mut self, f: impl Fn(&mut K) + Send + Sync + 'static) {
        self.trim_more = Some(Box::new(f));
    }

    fn trim(&self, obj: &mut K) {
        trim(obj);
        if let Some(f) = &self.trim_more {
            f(obj);
        }
    }

    /// A read handle on the cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Tells when the first list has reached the cache, the indexes and the handlers.
    pub fn synced(&self) -> Synced {
        self.synced.clone()
    }

    /// Adds a handler; it runs on the informer's task, so it must be quick (enqueue a key).
    pub fn on_change(&mut self, f: impl Fn(Change<'_, K>) + Send + Sync + 'static) {
        self.handlers.push(Box::new(f));
    }

    fn emit(&self, change: Change<'_, K>) {
        for h in &self.handlers {
            h(match &change {
                Change::Added(o) => Change::Added(o),
                Change::Updated { old, new } => Change::Updated { old, new },
                Change::Deleted(o) => Change::Deleted(o),
            });
        }
    }

    /// Lists and watches until `shutdown`, keeping the cache and calling the handlers.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let stream = watcher(self.api.clone(), self.config.clone()).default_backoff();
        futures::pin_mut!(stream);
        loop {
            let ev = tokio::select! {
                ev = stream.next() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
                _ = shutdown.cancelled() => return,
            };
            match ev {
                Ok(ev) => self.apply_event(ev),
                Err(e) => {
                    tracing::warn!(resource = %K::plural(&()), error = %e, "watch failed; retrying");
                }
            }
        }
    }

    /// Applies one watch event to the cache and indexes and tells the handlers (what `run` does
    /// for each event; tests feed objects through it without a server).
    pub fn apply_event(&mut self, ev: Event<K>) {
        match ev {
            Event::Apply(mut obj) => {
                self.trim(&mut obj);
                let key = ObjectRef::from(&obj);
                let old = self.store.get(&key);
                self.writer.apply_watcher_event(&Event::Apply(obj));
                let Some(new) = self.store.get(&key) else {
                    return;
                };
                self.reindex(old.as_deref(), Some(new.clone()));
                match old {
                    Some(old) => self.emit(Change::Updated {
                        old: &old,
                        new: &new,
                    }),
                    None => self.emit(Change::Added(&new)),
                }
            }
            Event::Delete(obj) => {
                let cached = self.store.get(&ObjectRef::from(&obj));
                self.writer.apply_watcher_event(&Event::Delete(obj.clone()));
                self.reindex(Some(cached.as_deref().unwrap_or(&obj)), None);
                // A deletion that a relist discovered carries the cached object.
                self.emit(Change::Deleted(cached.as_deref().unwrap_or(&obj)));
            }
            Event::Init => {
                self.relisted.clear();
                self.writer.apply_watcher_event(&Event::Init);
            }
            Event::InitApply(mut obj) => {
                self.trim(&mut obj);
                self.relisted.push(ObjectRef::from(&obj));
                self.writer.apply_watcher_event(&Event::InitApply(obj));
            }
            Event::InitDone => {
                let before: HashMap<ObjectRef<K>, Arc<K>> = self
                    .store
                    .state()
                    .into_iter()
                    .map(|o| (ObjectRef::from(o.as_ref()), o))
                    .collect();
                self.writer.apply_watcher_event(&Event::InitDone);
                if !self.indexes.is_empty() {
                    let objects = self.store.state();
                    for (f, index) in &self.indexes {
                        index.rebuild(f, &objects);
                    }
                }
                let mut seen = std::collections::HashSet::new();
                for key in std::mem::take(&mut self.relisted) {
                    let Some(obj) = self.store.get(&key) else {
                        continue;
                    };
                    match before.get(&key) {
                        Some(old) => self.emit(Change::Updated { old, new: &obj }),
                        None => self.emit(Change::Added(&obj)),
                    }
                    seen.insert(key);
                }
                for (key, old) in &before {
                    if !seen.contains(key) {
                        self.emit(Change::Deleted(old));
                    }
                }
                self.synced.set();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    /// A client for informers fed by hand: it is never called (it would answer 500). It
    /// needs a Tokio runtime entered.
    fn unused_client() -> kube::Client {
        kube::Client::new(
            tower::service_fn(|_req: http::Request<kube::client::Body>| async {
                http::Response::builder()
                    .status(500)
                    .body(kube::client::Body::from(Vec::new()))
            }),
            "default",
        )
    }

    #[tokio::test]
    async fn synced_once_the_list_is_in_the_index_and_the_handlers() {
        let client = unused_client();
        let mut inf: Informer<ConfigMap> =
            Informer::new(Api::all(client), watcher::Config::default());
        let index = inf.add_index(|c| c.metadata.namespace.clone().into_iter().collect());
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, synced_at_handler) = (seen.clone(), inf.synced());
        inf.on_change(move |_| {
            // Handlers run before the informer reports itself synced.
            assert!(!synced_at_handler.is_synced());
            s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let synced = inf.synced();
        let cm = |name: &str| ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        inf.apply_event(Event::Init);
        inf.apply_event(Event::InitApply(cm("a")));
        inf.apply_event(Event::InitApply(cm("b")));
        assert!(!synced.is_synced());
        inf.apply_event(Event::InitDone);
        assert!(synced.is_synced());
        synced.wait().await;
        assert_eq!(index.get("ns").len(), 2);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn readers_never_see_an_object_missing_from_an_index_while_it_changes() {
        // A ReplicaSet worker that counted its pods while one was between removal and
        // insertion (an update) or while a relist rebuilt the index created one pod too many.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let client = unused_client();
        let mut inf: Informer<ConfigMap> =
            Informer::new(Api::all(client), watcher::Config::default());
        let index = inf.add_index(|c| c.metadata.namespace.clone().into_iter().collect());
        let cm = |name: &str, version: usize| ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        inf.apply_event(Event::Init);
        inf.apply_event(Event::InitApply(cm("a", 0)));
        inf.apply_event(Event::InitApply(cm("b", 0)));
        inf.apply_event(Event::InitDone);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (index, done) = (index.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut reads, mut short) = (0u64, 0u64);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    reads += 1;
                    short += (index.get("ns").len() != 2) as u64;
                }
                (reads, short)
            })
        };
        for v in 1..=20_000 {
            if v % 100 == 0 {
                inf.apply_event(Event::Init);
                inf.apply_event(Event::InitApply(cm("a", v)));
                inf.apply_event(Event::InitApply(cm("b", v)));
                inf.apply_event(Event::InitDone);
            } else {
                inf.apply_event(Event::Apply(cm(if v % 2 == 0 { "a" } else { "b" }, v)));
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (reads, short) = reader.join().unwrap();
        assert!(reads > 0);
        assert_eq!(
            short, 0,
            "{short} of {reads} reads saw fewer than 2 objects"
        );
    }
}
