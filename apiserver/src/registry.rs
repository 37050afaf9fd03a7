//! The generic registry: get, list, create, update, delete of any resource through the etcd v3
//! API, with Kubernetes semantics (resourceVersion = mod_revision, optimistic concurrency,
//! generateName, uid, finalizers and graceful deletion, namespace lifecycle). Resource-specific
//! rules come from [`crate::strategy`].

use base64::Engine;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::alloc::{Ranges, Requested};
use crate::etcd::{Etcd, EtcdError, WriteOutcome, prefix_end};
use crate::object::{self, meta, meta_str, set_meta};
use crate::resources::{self, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, Cause};
use crate::strategy;
use crate::webhook::Operation;

/// Upstream's checks of a list's `resourceVersionMatch`: 422 Invalid on `ListOptions`.
pub fn validate_list_options(opts: &ListOptions) -> ApiResult<()> {
    let Some(m) = opts.resource_version_match.as_deref() else {
        return Ok(());
    };
    let field = "resourceVersionMatch";
    let mut causes = Vec::new();
    if opts.resource_version.is_none() {
        causes.push(Cause::new(
            "FieldValueForbidden",
            field,
            "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    if opts.continue_token.is_some() {
        causes.push(Cause::new(
            "FieldValueForbidden",
            field,
            "Forbidden: resourceVersionMatch is forbidden when continue is provided",
        ));
    }
    if m != "Exact" && m != "NotOlderThan" {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""
            ),
        ));
    }
    if m == "Exact" && opts.resource_version.as_deref() == Some("0") {
        causes.push(Cause::new(
            "FieldValueForbidden",
            field,
            "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", causes))
    }
}

/// Options of a list request.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size (0 = everything).
    pub limit: i64,
    /// Continue token from a previous page.
    pub continue_token: Option<String>,
    /// `resourceVersion` parameter.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch` parameter.
    pub resource_version_match: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// Matching objects.
    pub items: Vec<Value>,
    /// The revision the list was read at.
    pub revision: i64,
    /// Token for the next page.
    pub continue_token: Option<String>,
    /// Items left after this page (unfiltered lists only).
    pub remaining: Option<i64>,
}

/// Options of a delete request.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace_period: Option<i64>,
    /// `propagationPolicy`: Orphan, Background, Foreground.
    pub propagation: Option<String>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// The admission webhooks of the request, if any may apply.
    pub hooks: Option<Arc<crate::webhook::Call>>,
}

/// Who is writing, for `managedFields`.
#[derive(Debug, Clone)]
pub struct FieldManager {
    /// Manager name (`fieldManager`, or from the User-Agent).
    pub name: String,
    /// Subresource written through (`status`, `scale`) or empty.
    pub subresource: String,
    /// The write is a server-side apply that has already set managedFields.
    pub applied: bool,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// `dryRun=All`: validate and answer, store nothing.
    pub dry_run: bool,
    /// The writer, for `managedFields` (None: internal writes, not tracked).
    pub manager: Option<FieldManager>,
    /// The request namespace was found (and not terminating) in the watch cache, so create
    /// need not read it from the store; a cache miss leaves this false and the store decides.
    pub namespace_checked: bool,
    /// A last check of the object about to be written, after defaulting and validation
    /// (validating admission; RBAC's escalation check).
    pub admit: Option<Admit>,
    /// The admission webhooks of the request, if any may apply.
    pub hooks: Option<Arc<crate::webhook::Call>>,
    /// The built-in admission plugins that read other objects (a client's write of a whole
    /// object only).
    pub builtin: Option<Arc<crate::admission::Builtin>>,
    /// The subresource written (`""`, `"status"`, `"approval"`, ...).
    pub subresource: &'static str,
    /// Who writes (a CertificateSigningRequest records its requester).
    pub requester: Option<crate::authz::UserInfo>,
}

/// Where the object an update starts from was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// From the store; `stale` when its stored form is due a rewrite (an older encryption key
    /// or storage version).
    Store { stale: bool },
    /// From the watch cache, which may lag the store (kube-apiserver's `cachedExistingObject`):
    /// the write's precondition catches a stale start, and a no-op is confirmed with the store.
    Cache,
}

/// Metadata a create may not carry in: the server sets it (uid and creationTimestamp are set
/// anew) or it belongs to later writes.
const SERVER_SET_ON_CREATE: &[&str] = &[
    "uid",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generation",
];

/// Sets a name from the object's generateName (at most 58 characters of it) and a random
/// suffix.
fn generate_name(obj: &mut Value) {
    let base = meta_str(obj, "generateName");
    let cut = base
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|end| *end <= 58)
        .last()
        .unwrap_or(0);
    let name = format!("{}{}", &base[..cut], object::random_suffix(5));
    set_meta(obj, "name", json!(name));
}

/// The check behind [`Admit`]: `(namespace, the object before (None on create), the object)`.
pub type AdmitFn = dyn Fn(&str, Option<&Value>, &Value) -> ApiResult<()> + Send + Sync;

/// A check of an object about to be written.
#[derive(Clone)]
pub struct Admit(pub Arc<AdmitFn>);

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admit")
    }
}

impl WriteOpts {
    fn admit(&self, ns: &str, old: Option<&Value>, obj: &Value) -> ApiResult<()> {
        match &self.admit {
            Some(a) => (a.0)(ns, old, obj),
            None => Ok(()),
        }
    }
}

impl WriteOpts {
    /// An internal write by the server itself.
    pub fn internal() -> Self {
        WriteOpts::default()
    }
}

/// The outcome of a delete.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// The object as deleted (or as marked for deletion).
    pub object: Value,
    /// Whether it is gone from the store now (false: deletion pending finalizers/grace).
    pub gone: bool,
}

/// The store of every resource.
#[derive(Clone)]
pub struct Registry {
    etcd: Etcd,
    prefix: String,
    ranges: std::sync::Arc<Ranges>,
    /// The ServiceAccount admission plugin is on.
    service_accounts: bool,
    /// Events expire (`--event-ttl`) through store leases.
    event_leases: Option<std::sync::Arc<Leases>>,
}

/// Store leases for keys that expire a while after each write (kube-apiserver's storage
/// lease manager): one lease is shared by the writes of a short window (at most
/// [`Leases::MAX_KEYS`] of them), granted for the TTL plus that window, so a key lives at
/// least the TTL after its last write, a little longer at most, and the store holds a lease
/// per minute rather than one per key.
pub struct Leases {
    ttl: std::time::Duration,
    reuse: std::time::Duration,
    /// The lease being shared, when it expires, and how many writes it carries.
    current: tokio::sync::Mutex<Option<(i64, std::time::Instant, usize)>>,
}

impl Leases {
    /// Writes one lease carries at most (upstream's default), so that its expiry deletes a
    /// bounded number of keys at once.
    pub const MAX_KEYS: usize = 1000;

    /// Leases for a TTL: a lease is shared for 5 % of the TTL, at most a minute.
    pub fn new(ttl: std::time::Duration) -> Self {
        Leases {
            ttl,
            reuse: (ttl / 20).min(std::time::Duration::from_secs(60)),
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// A lease that outlives now + TTL: the shared one while it does, else a new one.
    async fn get(&self, etcd: &Etcd) -> ApiResult<i64> {
        let mut current = self.current.lock().await;
        let now = std::time::Instant::now();
        if let Some((id, expires, attached)) = current.as_mut()
            && *expires > now + self.ttl
            && *attached < Self::MAX_KEYS
        {
            *attached += 1;
            return Ok(*id);
        }
        let ttl = self.ttl + self.reuse;
        let id = etcd.grant_lease(ttl).await?;
        *current = Some((id, now + ttl, 1));
        Ok(id)
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ContinueToken {
    v: String,
    pub(crate) rv: i64,
    pub(crate) start: String,
}

pub(crate) fn encode_continue(rv: i64, start: &str) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.into(),
    };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&t).unwrap_or_default())
}

pub(crate) fn decode_continue(s: &str) -> ApiResult<ContinueToken> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {s:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" || t.rv <= 0 || t.start.contains("..") || t.start.starts_with('/') {
        return Err(bad());
    }
    Ok(t)
}

/// Parses a resourceVersion parameter.
pub fn parse_rv(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

impl Registry {
    /// A registry on `etcd` under `prefix` (normally `/registry`), allocating Service addresses
    /// from `ranges`.
    pub fn new(etcd: Etcd, prefix: &str, ranges: Ranges) -> Self {
        Registry {
            etcd,
            prefix: prefix.trim_end_matches('/').to_string(),
            ranges: std::sync::Arc::new(ranges),
            service_accounts: false,
            event_leases: None,
        }
    }

    /// Events expire `ttl` after they were last written (`--event-ttl`); `None`: never.
    pub fn with_event_ttl(mut self, ttl: Option<std::time::Duration>) -> Self {
        self.event_leases = ttl.map(|t| std::sync::Arc::new(Leases::new(t)));
        self
    }

    /// The lease a write of `res` carries: the events' (core and events.k8s.io share their
    /// storage), else none.
    async fn lease_for(&self, res: &Resource) -> ApiResult<i64> {
        match &self.event_leases {
            Some(l) if res.resource == "events" && matches!(res.group, "" | "events.k8s.io") => {
                l.get(&self.etcd).await
            }
            _ => Ok(0),
        }
    }

    /// Turns the ServiceAccount admission plugin on (see [`Registry::admit_service_account`]).
    pub fn with_service_account_admission(mut self, on: bool) -> Self {
        self.service_accounts = on;
        self
    }

    /// Records the write in `managedFields` (not for internal writes or applies, which have
    /// set them already).
    fn record(&self, res: &Resource, old: Option<&Value>, obj: &mut Value, w: &WriteOpts) {
        if let Some(m) = w.manager.as_ref().filter(|m| !m.applied) {
            let sch = crate::managed::Schemas::of(res.group, res.version);
            crate::managed::record_update(
                &sch,
                res.definition,
                &res.api_version(),
                &m.subresource,
                old,
                obj,
                &m.name,
            );
        }
    }

    /// The Service ranges.
    pub fn ranges(&self) -> &Ranges {
        &self.ranges
    }

    /// Keys deleted together with an object (a Service's allocations).
    fn held_keys(&self, res: &Resource, obj: &Value) -> Vec<Vec<u8>> {
        if res.kind == "Service" {
            self.ranges.held_keys(obj)
        } else {
            Vec::new()
        }
    }

    /// Service allocations carried over an update: allocates new node ports first; returns the
    /// keys taken (released again if the update fails) and the keys to release once it is written.
    async fn carry_over(
        &self,
        res: &Resource,
        old: &Value,
        obj: &mut Value,
        skip: bool,
    ) -> ApiResult<(Vec<Vec<u8>>, Vec<Vec<u8>>)> {
        if res.kind != "Service" || skip {
            return Ok((Vec::new(), Vec::new()));
        }
        let (alloc, release) = self.ranges.carry_over(old, obj)?;
        let mut taken = Vec::new();
        for (k, v) in alloc {
            match self.etcd.create(&k, v).await? {
                WriteOutcome::Written(_) => taken.push(k),
                WriteOutcome::Failed(_) => {
                    self.release(&taken).await;
                    let port = String::from_utf8_lossy(&k)
                        .rsplit('/')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    return Err(ApiError::invalid(
                        "",
                        "Service",
                        object::name(obj),
                        vec![crate::status::Cause::new(
                            "FieldValueInvalid",
                            "spec.ports[].nodePort",
                            format!("Invalid value: {port}: provided port is already allocated"),
                        )],
                    ));
                }
            }
        }
        Ok((taken, release))
    }

    /// Deletes allocation keys (best effort; a leftover key only keeps an address reserved).
    async fn release(&self, keys: &[Vec<u8>]) {
        for k in keys {
            if let Ok(Some(kv)) = self.etcd.get(k).await {
                let _ = self.etcd.delete_all(k, kv.mod_revision, &[]).await;
            }
        }
    }

    /// The store client.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Reads one object.
    pub async fn get(&self, res: &Resource, ns: &str, name: &str) -> ApiResult<Value> {
        Ok(self.get_raw(res, ns, name).await?.0)
    }

    /// Reads one object with its revision and whether its stored form is stale (written with an
    /// encryption key or provider that is no longer the first, so an update must rewrite it).
    async fn get_raw(&self, res: &Resource, ns: &str, name: &str) -> ApiResult<(Value, i64, bool)> {
        let key = object::key(&self.prefix, res, ns, name);
        match self.etcd.get(&key).await? {
            Some(kv) => Ok((
                object::decode_stored(res, &kv.value, kv.mod_revision)?,
                kv.mod_revision,
                kv.stale,
            )),
            None => Err(ApiError::not_found(res.group, res.resource, name)),
        }
    }

    /// Lists objects of `res` in `ns` (all namespaces if empty).
    pub async fn list(&self, res: &Resource, ns: &str, opts: &ListOptions) -> ApiResult<ListPage> {
        validate_list_options(opts)?;
        let prefix = object::collection_prefix(&self.prefix, res, ns);
        let end = prefix_end(&prefix);
        // A continue token carries its own revision; the parameter is read only without one.
        let rv = match &opts.continue_token {
            Some(_) => None,
            None => opts.resource_version.as_deref().map(parse_rv).transpose()?,
        };
        let (mut start, mut revision, serializable) = match &opts.continue_token {
            Some(tok) => {
                let t = decode_continue(tok)?;
                let mut s = prefix.clone();
                s.extend_from_slice(t.start.as_bytes());
                (s, t.rv, false)
            }
            None => match (rv, opts.resource_version_match.as_deref()) {
                (Some(rv), Some("Exact")) => (prefix.clone(), rv, false),
                (Some(0), _) => (prefix.clone(), 0, true),
                _ => (prefix.clone(), 0, false),
            },
        };
        // Not older than a resourceVersion: the store must have reached it.
        let at_least = match (&opts.continue_token, opts.resource_version_match.as_deref()) {
            (None, None | Some("NotOlderThan")) => rv.unwrap_or(0),
            _ => 0,
        };
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::new();
        let mut remaining = None;
        let mut continue_token = None;
        loop {
            let want = if opts.limit > 0 {
                opts.limit - items.len() as i64
            } else {
                0
            };
            // Pages of at most 1000 keys keep each store response small.
            let page = match want {
                0 => 1000,
                w if filtered => w.clamp(100, 1000),
                w => w.min(1000),
            };
            let r = match self
                .etcd
                .range(&start, &end, page, revision, serializable)
                .await
            {
                Ok(r) => r,
                Err(EtcdError::Compacted { .. }) if opts.continue_token.is_some() => {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    ));
                }
                Err(EtcdError::Compacted { .. }) => {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {revision}"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            if revision == 0 {
                revision = r.revision;
                if at_least > revision {
                    return Err(ApiError::too_large_resource_version(at_least, revision));
                }
            }
            let n = r.kvs.len();
            let mut last_key = None;
            for (i, kv) in r.kvs.into_iter().enumerate() {
                let obj = object::decode_stored(res, &kv.value, kv.mod_revision)?;
                last_key = Some(kv.key);
                if opts.labels.matches_object(&obj) && opts.fields.matches_object(res, &obj) {
                    items.push(obj);
                }
                if opts.limit > 0 && items.len() as i64 >= opts.limit {
                    let more = i + 1 < n || r.more;
                    if more {
                        let lk = last_key.take().unwrap_or_default();
                        let suffix = String::from_utf8_lossy(&lk[prefix.len()..]).into_owned();
                        continue_token = Some(encode_continue(revision, &format!("{suffix}\u{0}")));
                        if !filtered {
                            remaining = Some(r.count - (i as i64 + 1));
                        }
                    }
                    return Ok(ListPage {
                        items,
                        revision,
                        continue_token,
                        remaining,
                    });
                }
            }
            if !r.more {
                break;
            }
            match last_key {
                Some(mut k) => {
                    k.push(0);
                    start = k;
                }
                None => break,
            }
        }
        Ok(ListPage {
            items,
            revision,
            continue_token,
            remaining,
        })
    }

    async fn check_namespace(&self, ns: &str) -> ApiResult<()> {
        let nsres = resources::find("", "v1", "namespaces").expect("namespaces are served");
        match self.get_raw(nsres, "", ns).await {
            Ok((n, _, _)) => admit_namespace(&n, ns),
            Err(e) if e.code == 404 => Err(ApiError::not_found("", "namespaces", ns)),
            Err(e) => Err(e),
        }
    }

    /// The Priority admission plugin: a pod's `priorityClassName` resolves to `spec.priority`
    /// (and `spec.preemptionPolicy`) from its PriorityClass; the two built-in system classes need
    /// no object. A pod naming a class that does not exist is refused.
    async fn admit_priority(&self, pod: &mut Value) -> ApiResult<()> {
        let class = pod
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (value, policy) = match class.as_str() {
            "" => (json!(0), json!("PreemptLowerPriority")),
            "system-node-critical" => (json!(2_000_001_000), json!("PreemptLowerPriority")),
            "system-cluster-critical" => (json!(2_000_000_000), json!("PreemptLowerPriority")),
            name => {
                let pcres = resources::find("scheduling.k8s.io", "v1", "priorityclasses")
                    .expect("priorityclasses are served");
                match self.get_raw(pcres, "", name).await {
                    Ok((pc, _, _)) => (
                        pc.get("value").cloned().unwrap_or(json!(0)),
                        pc.get("preemptionPolicy")
                            .cloned()
                            .unwrap_or(json!("PreemptLowerPriority")),
                    ),
                    Err(e) if e.code == 404 => {
                        return Err(ApiError::forbidden(format!(
                            "pods \"{}\" is forbidden: no PriorityClass with name {name} was found",
                            object::name(pod)
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if let Some(given) = pod.pointer("/spec/priority")
            && !given.is_null()
            && *given != value
        {
            return Err(ApiError::forbidden(format!(
                "pods \"{}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name",
                object::name(pod)
            )));
        }
        pod["spec"]["priority"] = value;
        if pod
            .pointer("/spec/preemptionPolicy")
            .is_none_or(Value::is_null)
        {
            pod["spec"]["preemptionPolicy"] = policy;
        }
        Ok(())
    }

    /// The ServiceAccount admission plugin, on pod creation: the pod runs as `default` unless
    /// it names an account; the account must exist; unless automounting is off (on the pod, or
    /// else on the account) every container gets the account's API credentials at
    /// `/var/run/secrets/kubernetes.io/serviceaccount` from a projected `kube-api-access-*`
    /// volume (a bound token, the cluster CA, the namespace); the account's image pull secrets
    /// are added to a pod that has none. Mirror pods are left alone.
    async fn admit_service_account(&self, pod: &mut Value, ns: &str) -> ApiResult<()> {
        if pod
            .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some()
        {
            return Ok(());
        }
        let name = match pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
        {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => "default".to_string(),
        };
        pod["spec"]["serviceAccountName"] = json!(name);
        pod["spec"]["serviceAccount"] = json!(name);
        let sares = resources::find("", "v1", "serviceaccounts").expect("served");
        let sa = match self.get_raw(sares, ns, &name).await {
            Ok((sa, _, _)) => sa,
            Err(e) if e.code == 404 => {
                return Err(ApiError::forbidden(format!(
                    "pods \"{}\" is forbidden: error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found",
                    object::name(pod)
                )));
            }
            Err(e) => return Err(e),
        };
        if pod
            .pointer("/spec/imagePullSecrets")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
            && let Some(ps) = sa
                .get("imagePullSecrets")
                .and_then(Value::as_array)
                .filter(|p| !p.is_empty())
        {
            pod["spec"]["imagePullSecrets"] = json!(ps);
        }
        let automount = pod
            .pointer("/spec/automountServiceAccountToken")
            .and_then(Value::as_bool)
            .or_else(|| {
                sa.get("automountServiceAccountToken")
                    .and_then(Value::as_bool)
            })
            .unwrap_or(true);
        if !automount {
            return Ok(());
        }
        const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        let containers = ["initContainers", "containers"];
        let mounted = containers.iter().any(|g| {
            pod.pointer(&format!("/spec/{g}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| {
                    c.get("volumeMounts")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT))
        });
        if mounted {
            return Ok(());
        }
        let volume = format!("kube-api-access-{}", object::random_suffix(5));
        let spec = pod["spec"].as_object_mut().expect("a pod has a spec");
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(v) = volumes.as_array_mut() {
            v.push(json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}));
        }
        for g in containers {
            for c in spec
                .get_mut(g)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let mounts = c
                    .as_object_mut()
                    .expect("a container is an object")
                    .entry("volumeMounts")
                    .or_insert_with(|| json!([]));
                if let Some(m) = mounts.as_array_mut() {
                    m.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT}));
                }
            }
        }
        Ok(())
    }

    /// Creates an object. `ns` is the request namespace.
    pub async fn create(
        &self,
        res: &Resource,
        ns: &str,
        mut obj: Value,
        w: &WriteOpts,
    ) -> ApiResult<Value> {
        if res.namespaced {
            let body_ns = object::namespace(&obj).to_string();
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            set_meta(&mut obj, "namespace", json!(ns));
            if !w.namespace_checked {
                self.check_namespace(ns).await?;
            }
        } else if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("namespace");
        }
        {
            let m = object::meta_mut(&mut obj);
            for f in SERVER_SET_ON_CREATE {
                m.remove(*f);
            }
            m.insert("uid".into(), json!(object::new_uid()));
            m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
        }
        strategy::default_for_create(res, &mut obj);
        // The built-in plugins fill in before the strategy prepares (a pod's QoS class counts
        // what they set).
        if let Some(b) = &w.builtin {
            b.mutate_create(res, ns, &mut obj).await?;
        }
        strategy::prepare_for_create(res, &mut obj);
        if res.resource == "pods" && res.group.is_empty() {
            self.admit_priority(&mut obj).await?;
            if self.service_accounts {
                self.admit_service_account(&mut obj, ns).await?;
            }
        }
        if let Some(h) = &w.hooks {
            let name = meta_str(&obj, "name").to_string();
            let fixed: Vec<(&str, Option<Value>)> = ["uid", "creationTimestamp", "namespace"]
                .into_iter()
                .map(|f| (f, meta(&obj).get(f).cloned()))
                .collect();
            if h.mutate(Operation::Create, ns, &name, None, &mut obj, w.dry_run)
                .await?
            {
                // A webhook may not set what the server sets.
                let m = object::meta_mut(&mut obj);
                for f in SERVER_SET_ON_CREATE {
                    m.remove(*f);
                }
                for (f, v) in fixed {
                    match v {
                        Some(v) => m.insert(f.into(), v),
                        None => m.remove(f),
                    };
                }
                strategy::default_for_create(res, &mut obj);
                strategy::prepare_for_create(res, &mut obj);
            }
        }
        // Who asked for a certificate is the server's to say, after any mutation.
        if res.kind == crate::certificates::KIND {
            crate::certificates::set_requester(&mut obj, &w.requester.clone().unwrap_or_default());
        }
        // The name is generated before validation, so validating admission sees it (a clash
        // when writing generates another).
        let generate =
            meta_str(&obj, "name").is_empty() && !meta_str(&obj, "generateName").is_empty();
        if generate {
            generate_name(&mut obj);
        }
        strategy::validate(res, &obj)?;
        w.admit(ns, None, &obj)?;
        if let Some(b) = &w.builtin {
            b.validate(res, ns, None, &obj).await?;
        }
        if let Some(h) = &w.hooks {
            let name = meta_str(&obj, "name").to_string();
            h.validate(Operation::Create, ns, &name, None, Some(&obj), w.dry_run)
                .await?;
        }
        if let Some(b) = &w.builtin {
            b.charge(res, ns, None, &obj, w.dry_run).await?;
        }
        self.record(res, None, &mut obj, w);
        let requested = Requested::of(&obj);
        let template = obj.clone();
        for attempt in 0..16 {
            let mut obj = template.clone();
            if generate && attempt > 0 {
                generate_name(&mut obj);
                strategy::validate(res, &obj)?;
            }
            let name = object::name(&obj).to_string();
            let extra = if res.kind == "Service" {
                self.ranges
                    .plan_create(&mut obj, &format!("{ns}/{name}"), &requested)?
            } else {
                Vec::new()
            };
            if w.dry_run {
                return Ok(obj);
            }
            let key = object::key(&self.prefix, res, ns, &name);
            let lease = self.lease_for(res).await?;
            match self
                .etcd
                .create_all(&key, object::encode_stored(res, &obj), lease, &extra)
                .await?
            {
                WriteOutcome::Written(rev) => {
                    set_meta(&mut obj, "resourceVersion", json!(rev.to_string()));
                    return Ok(obj);
                }
                WriteOutcome::Failed(Some(_)) if generate && attempt < 15 => continue,
                WriteOutcome::Failed(Some(_)) => {
                    return Err(ApiError::already_exists(res.group, res.resource, &name));
                }
                WriteOutcome::Failed(None) => {
                    // An address or port is taken: fail if the client asked for it, else retry.
                    for (k, _) in &extra {
                        if self.etcd.get(k).await?.is_none() {
                            continue;
                        }
                        let what = String::from_utf8_lossy(k)
                            .rsplit('/')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        if requested.cluster_ip.as_deref() == Some(what.as_str()) {
                            return Err(ApiError::invalid(
                                "",
                                "Service",
                                &name,
                                vec![crate::status::Cause::new(
                                    "FieldValueInvalid",
                                    "spec.clusterIPs",
                                    format!(
                                        "Invalid value: [{what:?}]: failed to allocate IP {what}: provided IP is already allocated"
                                    ),
                                )],
                            ));
                        }
                        let asked_port = template
                            .pointer("/spec/ports")
                            .and_then(Value::as_array)
                            .is_some_and(|ps| {
                                ps.iter().any(|p| {
                                    p.get("nodePort")
                                        .and_then(Value::as_i64)
                                        .is_some_and(|n| n.to_string() == what)
                                })
                            });
                        if asked_port {
                            return Err(ApiError::invalid(
                                "",
                                "Service",
                                &name,
                                vec![crate::status::Cause::new(
                                    "FieldValueInvalid",
                                    "spec.ports[].nodePort",
                                    format!(
                                        "Invalid value: {what}: provided port is already allocated"
                                    ),
                                )],
                            ));
                        }
                    }
                }
            }
        }
        Err(ApiError::internal(
            "could not allocate a unique name or address",
        ))
    }

    /// Replaces an object (PUT). `status_only` is the `/status` subresource; the body's
    /// resourceVersion (if any) is the precondition. The update may start from `cached`, the
    /// watch cache's copy, instead of reading the store.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        mut obj: Value,
        status_only: bool,
        w: &WriteOpts,
        cached: Option<Value>,
    ) -> ApiResult<Value> {
        let body_name = object::name(&obj).to_string();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if res.namespaced {
            let body_ns = object::namespace(&obj).to_string();
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let body_rv = meta_str(&obj, "resourceVersion").to_string();
        let mut next = self.cached_start(cached, w);
        loop {
            let (old, old_rv, origin) = self.start(res, ns, name, next.take()).await?;
            let r = if !body_rv.is_empty() && parse_rv(&body_rv)? != old_rv {
                Err(ApiError::modified(res.group, res.resource, name))
            } else {
                let obj = if origin == Origin::Cache {
                    obj.clone()
                } else {
                    std::mem::take(&mut obj)
                };
                self.prepare_and_write(res, ns, name, (old, origin), old_rv, obj, status_only, w)
                    .await
            };
            match r {
                Err(e) if origin == Origin::Cache => {
                    next = Some(self.behind(res, ns, name, old_rv, e).await?);
                }
                other => return other,
            }
        }
    }

    /// The cached object an update may start from, with its resourceVersion (not for a dry
    /// run, which writes nothing that would check it).
    fn cached_start(&self, cached: Option<Value>, w: &WriteOpts) -> Option<(Value, i64, Origin)> {
        let v = cached.filter(|_| !w.dry_run)?;
        let rv = parse_rv(meta_str(&v, "resourceVersion")).ok()?;
        Some((v, rv, Origin::Cache))
    }

    /// The object an update starts from: `given`, else the store's.
    async fn start(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        given: Option<(Value, i64, Origin)>,
    ) -> ApiResult<(Value, i64, Origin)> {
        match given {
            Some(s) => Ok(s),
            None => {
                let (old, rv, stale) = self.get_raw(res, ns, name).await?;
                Ok((old, rv, Origin::Store { stale }))
            }
        }
    }

    /// An update that started from the cached object at `cached_rv` failed with `e`: the
    /// store's object to try again from when the cache was behind, else `e` (as upstream, an
    /// error the store's own object would have given too stands). Errors of the store itself
    /// (5xx) are not retried.
    async fn behind(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        cached_rv: i64,
        e: ApiError,
    ) -> ApiResult<(Value, i64, Origin)> {
        if e.code >= 500 {
            return Err(e);
        }
        let (old, rv, stale) = self.get_raw(res, ns, name).await?;
        if rv == cached_rv {
            return Err(e);
        }
        Ok((old, rv, Origin::Store { stale }))
    }

    /// The update pipeline shared by PUT, patches and applies: keeps what a client may not
    /// change, applies the strategy (or the status-only rules), validates, records managed fields,
    /// carries Service allocations over, and writes with `old_rv` as the precondition.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_and_write(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        (old, origin): (Value, Origin),
        old_rv: i64,
        mut obj: Value,
        status_only: bool,
        w: &WriteOpts,
    ) -> ApiResult<Value> {
        // What a client (or a mutating webhook) may not change, then the strategy's rules.
        let prepare = |obj: &mut Value| {
            let om = meta(&old);
            let m = object::meta_mut(obj);
            m.insert("name".into(), json!(name));
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "generation",
            ] {
                match om.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            m.remove("selfLink");
            if status_only {
                strategy::prepare_for_status_update(&old, obj);
            } else {
                strategy::default(res, obj);
                strategy::prepare_for_update(res, &old, obj);
            }
            if res.kind == crate::certificates::KIND {
                crate::certificates::prepare_update(&old, obj, w.subresource);
            }
        };
        prepare(&mut obj);
        if let Some(h) = &w.hooks
            && h.mutate(Operation::Update, ns, name, Some(&old), &mut obj, w.dry_run)
                .await?
        {
            prepare(&mut obj);
        }
        strategy::validate_changed(res, &old, &obj)?;
        strategy::validate_update(res, &old, &obj)?;
        w.admit(ns, Some(&old), &obj)?;
        // Built-in plugins leave subresources alone, and an object on its way out.
        let leaving = !meta_str(&old, "deletionTimestamp").is_empty();
        if let Some(b) = w.builtin.as_ref().filter(|_| !status_only && !leaving) {
            b.validate(res, ns, Some(&old), &obj).await?;
        }
        if let Some(h) = &w.hooks {
            h.validate(
                Operation::Update,
                ns,
                name,
                Some(&old),
                Some(&obj),
                w.dry_run,
            )
            .await?;
        }
        if let Some(b) = w.builtin.as_ref().filter(|_| !status_only) {
            b.charge(res, ns, Some(&old), &obj, w.dry_run).await?;
        }
        self.record(res, Some(&old), &mut obj, w);
        let (taken, release) = self
            .carry_over(res, &old, &mut obj, w.dry_run || status_only)
            .await?;
        let r = self
            .write_update(res, ns, name, (old, origin), old_rv, obj, w.dry_run)
            .await;
        self.release(if r.is_ok() { &release } else { &taken })
            .await;
        r
    }

    /// Writes a status the server itself computed from `old` (as read, with its
    /// resourceVersion as the precondition): no admission, only the status rules and
    /// validation. A conflict means another writer came first.
    pub async fn write_status(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        old: &Value,
        mut obj: Value,
    ) -> ApiResult<Value> {
        let old_rv = parse_rv(meta_str(old, "resourceVersion"))?;
        strategy::prepare_for_status_update(old, &mut obj);
        strategy::validate_changed(res, old, &obj)?;
        self.write_update(
            res,
            ns,
            name,
            (old.clone(), Origin::Store { stale: false }),
            old_rv,
            obj,
            false,
        )
        .await
    }

    /// Writes an already prepared update with `old_rv` as the precondition; a no-op returns the old
    /// object unchanged (resourceVersion not bumped) unless its stored form is stale; removing the
    /// last finalizer of an object marked for deletion deletes it.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        (old, origin): (Value, Origin),
        old_rv: i64,
        mut obj: Value,
        dry_run: bool,
    ) -> ApiResult<Value> {
        set_meta(&mut obj, "resourceVersion", json!(old_rv.to_string()));
        let key = object::key(&self.prefix, res, ns, name);
        if obj == old {
            match origin {
                Origin::Store { stale: false } => return Ok(old),
                Origin::Store { stale: true } => {}
                // No change to the cached object: unchanged only if the store still holds it.
                Origin::Cache => match self.etcd.get(&key).await? {
                    Some(kv) if kv.mod_revision == old_rv && !kv.stale => return Ok(old),
                    Some(kv) if kv.mod_revision == old_rv => {}
                    _ => return Err(ApiError::modified(res.group, res.resource, name)),
                },
            }
        }
        let finalizers_empty = meta(&obj)
            .get("finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        let marked = !meta_str(&obj, "deletionTimestamp").is_empty();
        let grace = meta(&obj)
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        // A namespace also waits for its spec.finalizers (the namespace controller's).
        let ns_finalized = res.kind != "Namespace"
            || obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty());
        if marked && finalizers_empty && grace == 0 && ns_finalized {
            if dry_run {
                return Ok(obj);
            }
            return match self
                .etcd
                .delete_all(&key, old_rv, &self.held_keys(res, &old))
                .await?
            {
                WriteOutcome::Written(_) => Ok(obj),
                WriteOutcome::Failed(_) => Err(ApiError::modified(res.group, res.resource, name)),
            };
        }
        if dry_run {
            return Ok(obj);
        }
        let lease = self.lease_for(res).await?;
        match self
            .etcd
            .update(&key, object::encode_stored(res, &obj), old_rv, lease)
            .await?
        {
            WriteOutcome::Written(rev) => {
                set_meta(&mut obj, "resourceVersion", json!(rev.to_string()));
                Ok(obj)
            }
            WriteOutcome::Failed(None) => Err(ApiError::not_found(res.group, res.resource, name)),
            WriteOutcome::Failed(Some(_)) => Err(ApiError::modified(res.group, res.resource, name)),
        }
    }

    /// Read-modify-write: reads the object (or starts from `cached`, the watch cache's copy),
    /// applies `f` to it and writes the result, retrying on conflicts when the change carries no
    /// resourceVersion precondition of its own (patches).
    #[allow(clippy::too_many_arguments)]
    pub async fn guaranteed_update<F>(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        status_only: bool,
        w: &WriteOpts,
        cached: Option<Value>,
        f: F,
    ) -> ApiResult<Value>
    where
        F: Fn(&Value) -> ApiResult<Value>,
    {
        let mut attempts = 0;
        let mut next = self.cached_start(cached, w);
        loop {
            attempts += 1;
            let (old, old_rv, origin) = self.start(res, ns, name, next.take()).await?;
            let mut precondition = String::new();
            let r = match f(&old) {
                Err(e) => Err(e),
                Ok(obj) if !obj.is_object() => Err(ApiError::bad_request(
                    "the patched object is not a JSON object",
                )),
                Ok(obj) => {
                    precondition = meta_str(&obj, "resourceVersion").to_string();
                    let body_name = object::name(&obj).to_string();
                    if !precondition.is_empty() && parse_rv(&precondition)? != old_rv {
                        Err(ApiError::modified(res.group, res.resource, name))
                    } else if body_name != name {
                        Err(ApiError::bad_request(format!(
                            "the name of the object ({body_name}) does not match the name on the URL ({name})"
                        )))
                    } else {
                        self.prepare_and_write(
                            res,
                            ns,
                            name,
                            (old, origin),
                            old_rv,
                            obj,
                            status_only,
                            w,
                        )
                        .await
                    }
                }
            };
            match r {
                Err(e) if origin == Origin::Cache => {
                    next = Some(self.behind(res, ns, name, old_rv, e).await?);
                }
                Err(e)
                    if e.code == 409
                        && e.reason == "Conflict"
                        && precondition.is_empty()
                        && attempts < 10 =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Read-modify-write without the update strategy: for server-internal changes such as a pod
    /// binding, which set fields a client update may not. Retries on conflicts.
    pub async fn modify<F>(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        dry_run: bool,
        f: F,
    ) -> ApiResult<Value>
    where
        F: Fn(&Value) -> ApiResult<Value>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (old, old_rv, stale) = self.get_raw(res, ns, name).await?;
            let obj = f(&old)?;
            match self
                .write_update(
                    res,
                    ns,
                    name,
                    (old, Origin::Store { stale }),
                    old_rv,
                    obj,
                    dry_run,
                )
                .await
            {
                Err(e) if e.code == 409 && e.reason == "Conflict" && attempts < 10 => continue,
                other => return other,
            }
        }
    }

    /// Deletes an object, honouring finalizers, graceful pod deletion and propagation policy.
    pub async fn delete(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Deleted> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (old, old_rv, _) = self.get_raw(res, ns, name).await?;
            if let Some(uid) = &opts.uid
                && meta_str(&old, "uid") != uid
            {
                return Err(ApiError::conflict(
                    res.group,
                    res.resource,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old, "uid")
                    ),
                ));
            }
            if let Some(rv) = &opts.resource_version
                && parse_rv(rv)? != old_rv
            {
                return Err(ApiError::conflict(
                    res.group,
                    res.resource,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {old_rv}"
                    ),
                ));
            }
            if let Some(h) = &opts.hooks {
                h.delete(ns, name, &old, opts.dry_run).await?;
            }
            let mut obj = old.clone();
            let mut finalizers: Vec<Value> = meta(&obj)
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match opts.propagation.as_deref() {
                Some("Foreground") if !finalizers.contains(&json!("foregroundDeletion")) => {
                    finalizers.push(json!("foregroundDeletion"))
                }
                Some("Orphan") if !finalizers.contains(&json!("orphan")) => {
                    finalizers.push(json!("orphan"))
                }
                _ => {}
            }
            let graceful = res.kind == "Pod"
                && !pod_terminated_or_unbound(&old)
                && opts.grace_period != Some(0);
            let namespace = res.kind == "Namespace";
            let key = object::key(&self.prefix, res, ns, name);
            if finalizers.is_empty() && !graceful && !namespace {
                if opts.dry_run {
                    return Ok(Deleted {
                        object: old,
                        gone: true,
                    });
                }
                match self
                    .etcd
                    .delete_all(&key, old_rv, &self.held_keys(res, &old))
                    .await?
                {
                    WriteOutcome::Written(_) => {
                        return Ok(Deleted {
                            object: old,
                            gone: true,
                        });
                    }
                    WriteOutcome::Failed(_) if attempts < 10 => continue,
                    WriteOutcome::Failed(_) => {
                        return Err(ApiError::modified(res.group, res.resource, name));
                    }
                }
            }
            // Deferred deletion: mark it.
            if meta_str(&obj, "deletionTimestamp").is_empty() {
                let grace = if graceful {
                    opts.grace_period
                        .or_else(|| {
                            obj.pointer("/spec/terminationGracePeriodSeconds")
                                .and_then(Value::as_i64)
                        })
                        .unwrap_or(30)
                        .max(0)
                } else {
                    0
                };
                let at = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or_else(|_| jiff::Timestamp::now());
                set_meta(
                    &mut obj,
                    "deletionTimestamp",
                    json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                set_meta(&mut obj, "deletionGracePeriodSeconds", json!(grace));
            } else if graceful {
                // A shorter grace period may replace a longer one, as upstream.
                if let Some(g) = opts.grace_period {
                    let cur = meta(&obj)
                        .get("deletionGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::MAX);
                    if g < cur {
                        set_meta(&mut obj, "deletionGracePeriodSeconds", json!(g));
                    }
                }
            }
            if !finalizers.is_empty() {
                set_meta(&mut obj, "finalizers", Value::Array(finalizers));
            }
            if namespace {
                obj["status"] = json!({"phase": "Terminating"});
            }
            if obj == old {
                return Ok(Deleted {
                    object: old,
                    gone: false,
                });
            }
            if opts.dry_run {
                return Ok(Deleted {
                    object: obj,
                    gone: false,
                });
            }
            let lease = self.lease_for(res).await?;
            match self
                .etcd
                .update(&key, object::encode_stored(res, &obj), old_rv, lease)
                .await?
            {
                WriteOutcome::Written(rev) => {
                    set_meta(&mut obj, "resourceVersion", json!(rev.to_string()));
                    return Ok(Deleted {
                        object: obj,
                        gone: false,
                    });
                }
                WriteOutcome::Failed(_) if attempts < 10 => continue,
                WriteOutcome::Failed(_) => {
                    return Err(ApiError::modified(res.group, res.resource, name));
                }
            }
        }
    }
}

/// Namespace lifecycle: new content may not go into a namespace that is being terminated.
pub fn admit_namespace(n: &Value, ns: &str) -> ApiResult<()> {
    if !meta_str(n, "deletionTimestamp").is_empty()
        || n.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
    {
        let mut e = ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        ));
        // What controllers look for to stop creating there (upstream's NamespaceTerminating).
        e.details.causes.push(crate::status::Cause::new(
            "NamespaceTerminating",
            "metadata.namespace",
            format!("namespace {ns} is being terminated"),
        ));
        return Err(e);
    }
    Ok(())
}

/// Whether a pod can be deleted at once: not bound to a node, or already finished.
fn pod_terminated_or_unbound(pod: &Value) -> bool {
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    !bound || phase == "Succeeded" || phase == "Failed"
}

#[cfg(test)]
mod unknown_outcome_tests {
    //! A write whose answer is lost is not sent again.
    use super::*;
    use crate::fake_kv::FakeKv;

    async fn create(etcd: Etcd) -> ApiResult<Value> {
        let res = resources::find("", "v1", "configmaps").unwrap();
        let ranges = Ranges::parse("10.0.0.0/24", "30000-32767", "/registry").unwrap();
        let registry = Registry::new(etcd, "/registry", ranges);
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"generateName": "c-", "namespace": "default"}});
        let w = WriteOpts {
            namespace_checked: true,
            ..WriteOpts::internal()
        };
        registry.create(res, "default", obj, &w).await
    }

    /// Two servers on one store: two members.
    async fn two_members(kv: &FakeKv) -> Etcd {
        let urls = [kv.serve().await, kv.serve().await];
        Etcd::new(&urls, &crate::etcd::EtcdTls::default()).unwrap()
    }

    #[tokio::test]
    async fn a_create_whose_answer_is_lost_is_an_error_and_made_once() {
        let kv = FakeKv::default();
        let etcd = two_members(&kv).await;
        kv.lose_answers(1);
        // Sent again to the other member, the create would find its own object there, take it
        // for a clash of generated names and store the object a second time under another
        // name, with the same uid.
        let err = create(etcd.clone()).await.unwrap_err();
        assert_eq!(err.code, 503, "{err:?}");
        assert_eq!(kv.keys_under(b"/registry/configmaps/").len(), 1);
        // The next write goes to the other member.
        create(etcd).await.unwrap();
        assert_eq!(kv.keys_under(b"/registry/configmaps/").len(), 2);
    }

    #[tokio::test]
    async fn a_write_no_member_received_goes_to_the_next() {
        let kv = FakeKv::default();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let urls = [closed, kv.serve().await];
        let etcd = Etcd::new(&urls, &crate::etcd::EtcdTls::default()).unwrap();
        let created = create(etcd).await.unwrap();
        assert!(object::name(&created).starts_with("c-"));
        assert_eq!(kv.keys_under(b"/registry/configmaps/").len(), 1);
    }
}

#[cfg(test)]
mod cached_start_tests {
    //! Updates that start from the watch cache's copy of the object.
    use super::*;
    use crate::fake_kv::FakeKv;

    struct Setup {
        registry: Registry,
        kv: FakeKv,
        res: &'static Resource,
        key: Vec<u8>,
    }

    impl Setup {
        async fn new() -> Setup {
            let kv = FakeKv::default();
            let url = kv.serve().await;
            let etcd = Etcd::new(&[url], &crate::etcd::EtcdTls::default()).unwrap();
            let ranges = Ranges::parse("10.0.0.0/24", "30000-32767", "/registry").unwrap();
            let res = resources::find("", "v1", "configmaps").unwrap();
            Setup {
                registry: Registry::new(etcd, "/registry", ranges),
                kv,
                res,
                key: object::key("/registry", res, "default", "c"),
            }
        }

        /// Another writer stores the ConfigMap with `data`; returns the object as the cache
        /// would hold it.
        fn store(&self, data: Value) -> Value {
            let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "default", "uid": "u1",
                    "creationTimestamp": "2026-12-04T00:00:00Z"},
                "data": data});
            let rev = self
                .kv
                .put(&self.key, object::encode_stored(self.res, &obj));
            let (stored, at) = self.stored();
            assert_eq!(at, rev);
            stored
        }

        fn stored(&self) -> (Value, i64) {
            let (bytes, rev) = self.kv.get(&self.key).unwrap();
            (object::decode_stored(self.res, &bytes, rev).unwrap(), rev)
        }

        async fn patch(
            &self,
            cached: Option<Value>,
            f: impl Fn(&Value) -> ApiResult<Value>,
        ) -> ApiResult<Value> {
            self.registry
                .guaranteed_update(
                    self.res,
                    "default",
                    "c",
                    false,
                    &WriteOpts::internal(),
                    cached,
                    f,
                )
                .await
        }

        async fn put(&self, obj: Value, cached: Option<Value>) -> ApiResult<Value> {
            self.registry
                .update(
                    self.res,
                    "default",
                    "c",
                    obj,
                    false,
                    &WriteOpts::internal(),
                    cached,
                )
                .await
        }
    }

    fn set(key: &'static str, v: &'static str) -> impl Fn(&Value) -> ApiResult<Value> {
        move |old| {
            let mut o = old.clone();
            o["data"][key] = json!(v);
            Ok(object::without_rv(&o))
        }
    }

    #[tokio::test]
    async fn a_current_cached_copy_saves_the_read() {
        let s = Setup::new().await;
        let cached = s.store(json!({"x": "1"}));
        let reads = s.kv.reads();
        let out = s.patch(Some(cached), set("y", "2")).await.unwrap();
        assert_eq!(s.kv.reads(), reads, "the update read the store");
        assert_eq!(out["data"], json!({"x": "1", "y": "2"}));
        assert_eq!(s.stored().0["data"], json!({"x": "1", "y": "2"}));
    }

    #[tokio::test]
    async fn a_stale_cached_copy_loses_no_write() {
        let s = Setup::new().await;
        let cached = s.store(json!({"x": "1"}));
        s.store(json!({"x": "2"}));
        let out = s.patch(Some(cached), set("y", "3")).await.unwrap();
        assert_eq!(out["data"], json!({"x": "2", "y": "3"}));
        assert_eq!(s.stored().0["data"], json!({"x": "2", "y": "3"}));
    }

    #[tokio::test]
    async fn a_put_is_judged_by_the_store_not_the_cache() {
        let s = Setup::new().await;
        let cached = s.store(json!({"x": "1"}));
        let current = s.store(json!({"x": "2"}));
        // At the store's resourceVersion: written, though the cache is behind.
        let mut body = current.clone();
        body["data"] = json!({"x": "3"});
        let out = s.put(body, Some(cached.clone())).await.unwrap();
        assert_eq!(s.stored().0["data"], json!({"x": "3"}));
        // At the cache's (stale) resourceVersion: refused, and nothing written.
        let before = s.stored();
        let mut stale = cached.clone();
        stale["data"] = json!({"x": "4"});
        let e = s.put(stale, Some(cached)).await.unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        assert_eq!(s.stored(), before);
        assert_eq!(meta_str(&out, "resourceVersion"), before.1.to_string());
    }

    #[tokio::test]
    async fn a_no_op_against_a_stale_copy_is_written() {
        let s = Setup::new().await;
        let cached = s.store(json!({"x": "1"}));
        s.store(json!({"x": "2"}));
        let out = s.patch(Some(cached), set("x", "1")).await.unwrap();
        assert_eq!(out["data"], json!({"x": "1"}));
        let (now, rev) = s.stored();
        assert_eq!(now["data"], json!({"x": "1"}));
        assert_eq!(meta_str(&out, "resourceVersion"), rev.to_string());
    }

    #[tokio::test]
    async fn a_no_op_against_a_current_copy_writes_nothing() {
        let s = Setup::new().await;
        let cached = s.store(json!({"x": "1"}));
        let (_, rev) = s.stored();
        let out = s.patch(Some(cached), set("x", "1")).await.unwrap();
        assert_eq!(meta_str(&out, "resourceVersion"), rev.to_string());
        assert_eq!(s.stored().1, rev);
    }

    #[tokio::test]
    async fn a_cached_copy_of_a_deleted_object_is_not_found() {
        let s = Setup::new().await;
        let cached = s.store(json!({"x": "1"}));
        s.kv.delete(&s.key);
        let e = s.patch(Some(cached), set("y", "1")).await.unwrap_err();
        assert_eq!(e.code, 404);
        assert!(s.kv.get(&s.key).is_none());
    }

    #[tokio::test]
    async fn a_dry_run_starts_from_the_store() {
        let s = Setup::new().await;
        let cached = s.store(json!({"x": "1"}));
        s.store(json!({"x": "2"}));
        let before = s.stored();
        let w = WriteOpts {
            dry_run: true,
            ..WriteOpts::internal()
        };
        let out = s
            .registry
            .guaranteed_update(
                s.res,
                "default",
                "c",
                false,
                &w,
                Some(cached),
                set("y", "1"),
            )
            .await
            .unwrap();
        assert_eq!(out["data"], json!({"x": "2", "y": "1"}));
        assert_eq!(s.stored(), before);
    }

    #[tokio::test]
    async fn an_error_from_a_stale_copy_is_checked_against_the_store() {
        let s = Setup::new().await;
        // Refuses to change an object whose x is 1.
        let guarded = |old: &Value| {
            if old["data"]["x"] == "1" {
                return Err(ApiError::bad_request("x is 1"));
            }
            set("y", "1")(old)
        };
        let cached = s.store(json!({"x": "1"}));
        // The cache is current: the error stands.
        let e = s.patch(Some(cached.clone()), guarded).await.unwrap_err();
        assert_eq!(e.code, 400);
        // The cache is behind: the store's object decides.
        s.store(json!({"x": "2"}));
        let out = s.patch(Some(cached), guarded).await.unwrap();
        assert_eq!(out["data"], json!({"x": "2", "y": "1"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "default/b\u{0}");
        let d = decode_continue(&t).unwrap();
        assert_eq!((d.rv, d.start.as_str()), (42, "default/b\u{0}"));
        assert_eq!(decode_continue("!!").unwrap_err().code, 400);
        let evil = base64::engine::general_purpose::URL_SAFE
            .encode(br#"{"v":"meta.k8s.io/v1","rv":3,"start":"../x"}"#);
        assert_eq!(decode_continue(&evil).unwrap_err().code, 400);
    }
}
