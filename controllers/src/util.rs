//! What several controllers share: object keys, controller references, selectors, pod
//! readiness, expectations, and the worker loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use keelson_client::queue::WorkQueue;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// `namespace/name` (or `name` for cluster-scoped objects), client-go's `MetaNamespaceKeyFunc`.
pub fn key_of(meta: &ObjectMeta) -> String {
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        _ => meta.name.clone().unwrap_or_default(),
    }
}

/// Splits a key into namespace and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// Index keys for an object by its controller: the controller's UID, or `orphan/<namespace>`
/// for objects without one (what a controller may adopt).
pub fn controller_index_keys(meta: &ObjectMeta) -> Vec<String> {
    match controller_of(meta) {
        Some(r) => vec![r.uid.clone()],
        None => vec![orphans_key(meta.namespace.as_deref().unwrap_or(""))],
    }
}

/// The index key of the orphans in `namespace`.
pub fn orphans_key(namespace: &str) -> String {
    format!("orphan/{namespace}")
}

/// A controller reference to `owner` (controller and blockOwnerDeletion set, as upstream).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A reference for Events about `obj`.
pub fn object_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    obj.object_ref(&())
}

/// True when the object is being deleted.
pub fn deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// A parsed label selector, or why it is invalid. An empty selector selects nothing here: the
/// workload controllers refuse to act on one (upstream validation forbids it).
pub fn parse_selector(sel: Option<&LabelSelector>) -> Result<Selector, String> {
    let sel = sel.cloned().unwrap_or_default();
    let parsed = Selector::try_from(sel).map_err(|e| format!("invalid selector: {e}"))?;
    if parsed.selects_all() {
        return Err("empty selector is not valid for a workload".into());
    }
    Ok(parsed)
}

/// True when `selector` matches `labels`.
pub fn matches(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    selector.matches(labels)
}

/// Succeeded or Failed.
pub fn pod_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Neither terminal nor being deleted: upstream's `IsPodActive`.
pub fn pod_active(pod: &Pod) -> bool {
    !pod_terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// When the pod's Ready condition became true, if it is true.
pub fn pod_ready_since(pod: &Pod) -> Option<Option<jiff::Timestamp>> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

/// Ready.
pub fn pod_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// Ready for at least `min_ready` (upstream's `IsPodAvailable`).
pub fn pod_available(pod: &Pod, min_ready: i32, now: jiff::Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since
            .checked_add(jiff::SignedDuration::from_secs(i64::from(min_ready)))
            .is_ok_and(|t| t <= now),
    }
}

/// How long after a controller asked for creations or deletions it stops waiting to see them.
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Expected {
    adds: i64,
    deletes: HashSet<String>,
    at: Option<Instant>,
}

/// Upstream's (UID-tracking) controller expectations: after creating or deleting pods, a
/// controller does not act on its cache again until the watch has shown it those changes (or
/// five minutes have passed), so it never creates twice for the same gap.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Expected>>,
}

impl Expectations {
    /// True when `key` may act on its cache.
    pub fn satisfied(&self, key: &str) -> bool {
        let m = self.inner.lock();
        match m.get(key) {
            None => true,
            Some(e) => {
                (e.adds <= 0 && e.deletes.is_empty())
                    || e.at.is_none_or(|t| t.elapsed() > EXPECTATIONS_TTL)
            }
        }
    }

    /// Expects `n` creations for `key`.
    pub fn expect_creations(&self, key: &str, n: usize) {
        let mut m = self.inner.lock();
        let e = m.entry(key.to_string()).or_default();
        e.adds = n as i64;
        e.at = Some(Instant::now());
    }

    /// Expects the deletion of the pods with these keys.
    pub fn expect_deletions(&self, key: &str, pods: impl IntoIterator<Item = String>) {
        let mut m = self.inner.lock();
        let e = m.entry(key.to_string()).or_default();
        e.deletes = pods.into_iter().collect();
        e.at = Some(Instant::now());
    }

    /// One creation seen (or one that will never happen).
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.inner.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// `n` creations that will never happen.
    pub fn creations_skipped(&self, key: &str, n: usize) {
        if let Some(e) = self.inner.lock().get_mut(key) {
            e.adds -= n as i64;
        }
    }

    /// The deletion of pod `pod` seen (or one that will never happen).
    pub fn deletion_observed(&self, key: &str, pod: &str) {
        if let Some(e) = self.inner.lock().get_mut(key) {
            e.deletes.remove(pod);
        }
    }

    /// Forgets `key` (its owner is gone).
    pub fn forget(&self, key: &str) {
        self.inner.lock().remove(key);
    }

    /// Counts a change to a pod of `key` against what `key` expects: a pod added (not being
    /// deleted) is a creation seen; one added while being deleted, marked for deletion, or
    /// deleted is a deletion seen.
    pub fn observe(&self, key: &str, change: &keelson_client::informer::Change<'_, Pod>) {
        use keelson_client::informer::Change;
        match change {
            Change::Added(p) if deleting(&p.metadata) => {
                self.deletion_observed(key, &key_of(&p.metadata))
            }
            Change::Added(_) => self.creation_observed(key),
            Change::Updated { old, new } if deleting(&new.metadata) && !deleting(&old.metadata) => {
                self.deletion_observed(key, &key_of(&new.metadata))
            }
            Change::Updated { .. } => {}
            Change::Deleted(p) => self.deletion_observed(key, &key_of(&p.metadata)),
        }
    }
}

/// The key (`ns/name`) of the object in `owners` that controls `pod`: kind, name and UID must
/// match, so a pod of an earlier object of the same name is not counted for a new one.
pub fn owner_key<K>(owners: &kube::runtime::reflector::Store<K>, pod: &Pod) -> Option<String>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let r = controller_of(&pod.metadata)?;
    if r.kind != K::kind(&()) || r.api_version != K::api_version(&()) {
        return None;
    }
    let ns = pod.namespace().unwrap_or_default();
    let owner = owners.get(&kube::runtime::reflector::ObjectRef::new(&r.name).within(&ns))?;
    (owner.uid().as_deref() == Some(r.uid.as_str())).then(|| format!("{ns}/{}", r.name))
}

/// What a sync asks of the queue afterwards.
pub type SyncResult = Result<Option<Duration>, kube::Error>;

/// Runs `workers` workers taking keys from `queue` until `token` is cancelled. A failed sync is
/// retried with the queue's backoff (up to 15 times, as upstream, then dropped until the next
/// change); a sync may ask to be run again after a delay.
pub async fn run_workers<F, Fut>(
    controller: &'static str,
    queue: WorkQueue<String>,
    workers: usize,
    token: CancellationToken,
    sync: F,
) where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = SyncResult> + Send + 'static,
{
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let token = token.clone();
        let sync = sync.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let key = tokio::select! {
                    k = queue.get() => match k {
                        Some(k) => k,
                        None => return,
                    },
                    _ = token.cancelled() => return,
                };
                match sync(key.clone()).await {
                    Ok(after) => {
                        queue.forget(&key);
                        if let Some(d) = after {
                            queue.add_after(key.clone(), d);
                        }
                    }
                    Err(e) if queue.num_requeues(&key) < 15 => {
                        tracing::info!(controller, key, error = %e, "sync failed; retrying");
                        queue.add_rate_limited(key.clone());
                    }
                    Err(e) => {
                        tracing::warn!(controller, key, error = %e, "dropping key after 15 retries");
                        queue.forget(&key);
                    }
                }
                queue.done(&key);
            }
        }));
    }
    token.cancelled().await;
    queue.shut_down();
    for t in tasks {
        let _ = t.await;
    }
}

/// Claims objects for `owner` as upstream's `ControllerRefManager`: owned objects that match
/// the selector are kept, owned ones that stopped matching are released, and matching orphans
/// are adopted if the owner (read fresh from the API) is still alive. Returns the owned ones.
pub async fn claim<K, O>(
    client: &Client,
    owner: &O,
    selector: &Selector,
    candidates: Vec<Arc<K>>,
) -> Result<Vec<Arc<K>>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    O: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let uid = owner.uid().unwrap_or_default();
    let ns = owner.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let mut owned = Vec::new();
    let mut may_adopt: Option<bool> = None;
    for obj in candidates {
        let meta = obj.meta();
        let refs = meta.owner_references.clone().unwrap_or_default();
        match controller_of(meta) {
            Some(r) if r.uid == uid => {
                if matches(selector, obj.labels()) {
                    owned.push(obj);
                } else if !deleting(owner.meta()) {
                    let rest: Vec<_> = refs.into_iter().filter(|r| r.uid != uid).collect();
                    patch_owners(&api, obj.as_ref(), rest).await?;
                }
            }
            Some(_) => {}
            None => {
                if !matches(selector, obj.labels()) || deleting(meta) {
                    continue;
                }
                if may_adopt.is_none() {
                    let fresh = Api::<O>::namespaced(client.clone(), &ns)
                        .get_opt(&owner.name_any())
                        .await?;
                    may_adopt = Some(fresh.is_some_and(|f| {
                        f.uid().as_deref() == Some(uid.as_str()) && !deleting(f.meta())
                    }));
                }
                if may_adopt != Some(true) {
                    continue;
                }
                let mut refs = refs;
                refs.push(controller_ref(owner));
                if patch_owners(&api, obj.as_ref(), refs).await? {
                    owned.push(obj);
                }
            }
        }
    }
    Ok(owned)
}

/// Sets an object's owner references with a merge patch that carries its resourceVersion and
/// UID, so a decision made on a stale cache fails instead of overwriting. False when the object
/// changed meanwhile or is gone.
async fn patch_owners<K>(
    api: &Api<K>,
    obj: &K,
    refs: Vec<OwnerReference>,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    // An emptied list is removed rather than stored as `[]`.
    let refs = if refs.is_empty() {
        serde_json::Value::Null
    } else {
        json!(refs)
    };
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": obj.resource_version(),
        "uid": obj.uid(),
    }});
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The objects `owner` owns or may adopt (from an index by controller UID) that pass `keep`,
/// claimed as [`claim`] does.
pub async fn claim_indexed<K, O>(
    client: &Client,
    index: &keelson_client::informer::Index<K>,
    owner: &O,
    selector: &Selector,
    keep: impl Fn(&K) -> bool,
) -> Result<Vec<Arc<K>>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    O: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let uid = owner.uid().unwrap_or_default();
    let ns = owner.namespace().unwrap_or_default();
    let candidates: Vec<Arc<K>> = index
        .get(&uid)
        .into_iter()
        .chain(index.get(&orphans_key(&ns)))
        .filter(|o| keep(o))
        .collect();
    claim(client, owner, selector, candidates).await
}

/// The owner's label selector, or `None` after recording a Warning event saying why it cannot
/// be used (the controller then leaves the object alone until it changes).
pub fn selector_or_event<O: Resource<DynamicType = ()>>(
    recorder: &keelson_client::events::Recorder,
    owner: &O,
    selector: Option<&LabelSelector>,
    reason: &str,
) -> Option<Selector> {
    match parse_selector(selector) {
        Ok(s) => Some(s),
        Err(msg) => {
            recorder.record(
                object_ref(owner),
                keelson_client::events::EventType::Warning,
                reason,
                msg,
            );
            None
        }
    }
}

/// A controller driven by a work queue of keys.
pub trait Reconciler: Send + Sync + Sized + 'static {
    /// Its name in logs.
    const NAME: &'static str;
    /// Its queue.
    fn queue(&self) -> &WorkQueue<String>;
    /// Brings the object with this key to its desired state.
    fn reconcile(self: Arc<Self>, key: String)
    -> impl Future<Output = SyncResult> + Send + 'static;
    /// Runs `workers` workers until `token` is cancelled.
    fn run(
        self: Arc<Self>,
        workers: usize,
        token: CancellationToken,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let queue = self.queue().clone();
            run_workers(Self::NAME, queue, workers, token, move |key| {
                self.clone().reconcile(key)
            })
            .await
        }
    }
}

/// Queues the `kind` controller of the changed object (before and after the change: a
/// controller that lost the object hears of it too), as `namespace/name`.
pub fn enqueue_controller<K: Resource>(
    queue: &WorkQueue<String>,
    kind: &str,
    change: &keelson_client::informer::Change<'_, K>,
) {
    let add = |obj: &K| {
        let meta = obj.meta();
        if let Some(r) = controller_of(meta)
            && r.kind == kind
        {
            queue.add(format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or(""),
                r.name
            ));
        }
    };
    add(change.object());
    if let keelson_client::informer::Change::Updated { old, .. } = change {
        add(old);
    }
}

/// Objects as a controller last wrote them, until its cache shows that version or a later
/// one: a sync on an older cached copy would act again on what the write already recorded.
pub struct Written<K>(Mutex<HashMap<String, Arc<K>>>);

impl<K> Default for Written<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Resource> Written<K> {
    /// Remembers `obj` as written.
    pub fn remember(&self, obj: K) {
        self.0.lock().insert(key_of(obj.meta()), Arc::new(obj));
    }

    /// Forgets the object of `key` (it is gone).
    pub fn forget(&self, key: &str) {
        self.0.lock().remove(key);
    }

    /// The newer of the cached object and the one last written (resourceVersions compared as
    /// numbers, as keelson's and etcd's are; a non-number leaves the cached one).
    pub fn newest(&self, key: &str, cached: Arc<K>) -> Arc<K> {
        let mut written = self.0.lock();
        let Some(mine) = written.get(key) else {
            return cached;
        };
        let rv = |o: &K| {
            o.meta()
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
        };
        match (rv(mine), rv(&cached)) {
            (Some(m), Some(c)) if m > c && mine.meta().uid == cached.meta().uid => mine.clone(),
            _ => {
                written.remove(key);
                cached
            }
        }
    }
}

/// Writes `updated`'s status through the status subresource (a conflict if its resourceVersion
/// is stale); the object as written. `Ok(None)` when it is gone, which is not an error for a
/// controller.
pub async fn replace_status<K>(client: &Client, updated: &K) -> Result<Option<K>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &updated.namespace().unwrap_or_default());
    match api
        .replace_status(
            &updated.name_any(),
            &kube::api::PostParams::default(),
            updated,
        )
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Implements [`Reconciler`] for a controller with a `queue` field and an
/// `async fn sync(self: Arc<Self>, key: String) -> SyncResult`.
macro_rules! reconciler {
    ($ty:ty, $name:expr) => {
        impl $crate::util::Reconciler for $ty {
            const NAME: &'static str = $name;

            fn queue(&self) -> &keelson_client::queue::WorkQueue<String> {
                &self.queue
            }

            fn reconcile(
                self: std::sync::Arc<Self>,
                key: String,
            ) -> impl std::future::Future<Output = $crate::util::SyncResult> + Send + 'static {
                self.sync(key)
            }
        }
    };
}
pub(crate) use reconciler;

/// True for a 404 from the API.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// True for a create refused because its namespace is being deleted (the `NamespaceTerminating`
/// cause): as upstream, a controller neither retries it nor reports it (an event could not be
/// written there either).
pub fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.details.as_ref().is_some_and(|d| {
        d.causes.iter().any(|c| c.reason == "NamespaceTerminating")
    }))
}

/// True for a 409 AlreadyExists/Conflict from the API.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_block_until_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        e.expect_deletions("ns/rs", ["ns/a".to_string(), "ns/b".to_string()]);
        e.deletion_observed("ns/rs", "ns/a");
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "ns/b");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn empty_selectors_are_refused() {
        assert!(parse_selector(None).is_err());
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        };
        let s = parse_selector(Some(&sel)).unwrap();
        assert!(matches(
            &s,
            &[("app".to_string(), "web".to_string())].into()
        ));
        assert!(!matches(&s, &BTreeMap::new()));
    }
}
