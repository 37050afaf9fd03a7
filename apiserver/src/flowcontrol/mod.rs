//! API Priority and Fairness (`--enable-priority-and-fairness`, on by default): requests are
//! classified by `flowcontrol.apiserver.k8s.io/v1` FlowSchemas into PriorityLevelConfigurations,
//! each with its share of the server's seats (`--max-requests-inflight` +
//! `--max-mutating-requests-inflight`); a level's excess waits in shuffle-sharded fair queues
//! or is refused with 429 and `Retry-After`.
//!
//! As upstream:
//! - The default schemas and levels are created at start and kept ([`bootstrap`]); until they
//!   exist, the mandatory `exempt` and `catch-all` act as if they did.
//! - Schemas match by precedence, then name; subjects, resource and non-resource rules as
//!   upstream (`["*"]` is a wildcard only alone; cluster-scoped requests need `clusterScope`;
//!   a URL rule covers its sub-paths).
//! - A level's nominal limit is `ceil(server seats × shares / sum of shares)`.
//! - LISTs take one seat per 100 objects they may return (at most 10, or less on small
//!   levels); other requests one. A watch holds its seat until it is set up. Long-running
//!   requests other than watches (exec, attach, logs, port-forward, proxy) pass.
//! - A queued request waits at most a quarter of `--request-timeout` (at most a minute).
//! - Responses carry `X-Kubernetes-PF-FlowSchema-UID` and `X-Kubernetes-PF-PriorityLevel-UID`;
//!   refusals are 429 with the plain-text body upstream sends and an adaptive `Retry-After`.
//! - Metrics: `apiserver_flowcontrol_{dispatched_requests_total, rejected_requests_total,
//!   current_inqueue_requests, current_executing_requests, current_executing_seats,
//!   request_wait_duration_seconds, nominal_limit_seats, current_limit_seats}`.
//!
//! Not as upstream: levels do not lend or borrow seats (each runs at its nominal limit), and
//! the Dangling condition is not written to FlowSchema status (a dangling schema is skipped).

pub mod bootstrap;
pub mod config;
pub mod queueset;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::authz::UserInfo;
use crate::authz::rbac::string_list;
use crate::request_info::RequestInfo;
use queueset::{Mode, QueueSet, Rejection, Start};

/// The API group of the configuration.
pub const GROUP: &str = "flowcontrol.apiserver.k8s.io";

/// Labels of the per-schema metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// The priority level.
    pub priority_level: String,
    /// The flow schema.
    pub flow_schema: String,
}

/// Labels of the rejection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// The priority level.
    pub priority_level: String,
    /// The flow schema.
    pub flow_schema: String,
    /// `queue-full`, `concurrency-limit`, `time-out`.
    pub reason: String,
}

/// Labels of the wait histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaitLabels {
    /// The priority level.
    pub priority_level: String,
    /// The flow schema.
    pub flow_schema: String,
    /// Whether the request went on to run.
    pub execute: String,
}

/// Labels of the per-level metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    /// The priority level.
    pub priority_level: String,
}

fn wait_histogram() -> Histogram {
    Histogram::new([
        0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0,
    ])
}

#[derive(Clone)]
struct Metrics {
    dispatched: Family<FlowLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    inqueue: Family<FlowLabels, Gauge>,
    executing: Family<FlowLabels, Gauge>,
    executing_seats: Family<FlowLabels, Gauge>,
    wait: Family<WaitLabels, Histogram, fn() -> Histogram>,
    nominal: Family<LevelLabels, Gauge>,
    current: Family<LevelLabels, Gauge>,
}

impl Metrics {
    fn register(m: &crate::metrics::Metrics) -> Self {
        let me = Metrics {
            dispatched: Family::default(),
            rejected: Family::default(),
            inqueue: Family::default(),
            executing: Family::default(),
            executing_seats: Family::default(),
            wait: Family::new_with_constructor(wait_histogram as fn() -> Histogram),
            nominal: Family::default(),
            current: Family::default(),
        };
        m.with_registry(|r| {
            r.register(
                "apiserver_flowcontrol_dispatched_requests",
                "Number of requests executed by API Priority and Fairness subsystem",
                me.dispatched.clone(),
            );
            r.register(
                "apiserver_flowcontrol_rejected_requests",
                "Number of requests rejected by API Priority and Fairness subsystem",
                me.rejected.clone(),
            );
            r.register(
                "apiserver_flowcontrol_current_inqueue_requests",
                "Number of requests currently pending in queues of the API Priority and Fairness subsystem",
                me.inqueue.clone(),
            );
            r.register(
                "apiserver_flowcontrol_current_executing_requests",
                "Number of requests in initial (for a WATCH) or any (for a non-WATCH) execution stage in the API Priority and Fairness subsystem",
                me.executing.clone(),
            );
            r.register(
                "apiserver_flowcontrol_current_executing_seats",
                "Concurrency (number of seats) occupied by the currently executing (initial stage for a WATCH, any stage otherwise) requests in the API Priority and Fairness subsystem",
                me.executing_seats.clone(),
            );
            r.register(
                "apiserver_flowcontrol_request_wait_duration_seconds",
                "Length of time a request spent waiting in its queue",
                me.wait.clone(),
            );
            r.register(
                "apiserver_flowcontrol_nominal_limit_seats",
                "Nominal number of execution seats configured for each priority level",
                me.nominal.clone(),
            );
            r.register(
                "apiserver_flowcontrol_current_limit_seats",
                "current derived number of execution seats available to each priority level",
                me.current.clone(),
            );
        });
        me
    }
}

/// Upstream's adaptive `Retry-After` of a level: 1 s, doubled (to 32 s) while drops keep
/// coming, lowered again as they stop.
#[derive(Debug)]
struct RetryAfter {
    value: u64,
    last_increase: u64,
    /// Drops per unix second, recent first.
    history: std::collections::VecDeque<(u64, u64)>,
}

impl Default for RetryAfter {
    fn default() -> Self {
        RetryAfter {
            value: 1,
            last_increase: 0,
            history: Default::default(),
        }
    }
}

impl RetryAfter {
    fn record(&mut self, now: u64) -> u64 {
        match self.history.front_mut() {
            Some((s, n)) if *s == now => *n += 1,
            _ => {
                let dropped: u64 = self
                    .history
                    .iter()
                    .filter(|(s, _)| *s + self.value >= now)
                    .map(|(_, n)| n)
                    .sum();
                if now.saturating_sub(self.last_increase) >= self.value && dropped >= 3 * self.value
                {
                    self.value = (self.value * 2).min(32);
                    self.last_increase = now;
                } else if dropped < self.value {
                    self.value = (self.value - 1).max(1);
                }
                self.history.push_front((now, 1));
                while self.history.len() > 64 {
                    self.history.pop_back();
                }
            }
        }
        self.value
    }
}

/// A priority level: its queues and seats.
struct Level {
    name: String,
    qs: Mutex<QueueSet>,
    retry: Mutex<RetryAfter>,
    /// The most seats one request may take.
    max_seats: std::sync::atomic::AtomicU32,
    /// Queued with more than one queue: flows are told apart.
    distinguishes: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Distinguisher {
    None,
    ByUser,
    ByNamespace,
}

#[derive(Debug, Clone)]
enum Subject {
    User(String),
    Group(String),
    ServiceAccount(String, String),
}

#[derive(Debug, Clone, Default)]
struct ResourceRule {
    verbs: Vec<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    cluster_scope: bool,
    namespaces: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct UrlRule {
    verbs: Vec<String>,
    urls: Vec<String>,
}

#[derive(Debug, Clone)]
struct PolicyRule {
    subjects: Vec<Subject>,
    resources: Vec<ResourceRule>,
    urls: Vec<UrlRule>,
}

/// A flow schema as the classifier uses it.
struct Schema {
    name: String,
    uid: String,
    precedence: i64,
    level: Arc<Level>,
    level_uid: String,
    distinguisher: Distinguisher,
    rules: Vec<PolicyRule>,
    metrics: FlowMetrics,
}

/// The metrics of one (level, schema) pair: each series is looked up in its family on first
/// use (when it appears in `/metrics`, as before), then kept, rather than on every request.
struct FlowMetrics {
    level: String,
    schema: String,
    dispatched: OnceLock<Counter>,
    inqueue: OnceLock<Gauge>,
    executing: OnceLock<(Gauge, Gauge)>,
    /// Waits of requests that went on to run, and of refused ones.
    waited: [OnceLock<Histogram>; 2],
    /// Refusals by reason (indexed by the reason's discriminant).
    rejected: [OnceLock<Counter>; 3],
}

impl FlowMetrics {
    fn new(level: &str, schema: &str) -> Self {
        FlowMetrics {
            level: level.to_string(),
            schema: schema.to_string(),
            dispatched: OnceLock::new(),
            inqueue: OnceLock::new(),
            executing: OnceLock::new(),
            waited: Default::default(),
            rejected: Default::default(),
        }
    }

    fn flow(&self) -> FlowLabels {
        FlowLabels {
            priority_level: self.level.clone(),
            flow_schema: self.schema.clone(),
        }
    }

    fn dispatched(&self, m: &Metrics) -> &Counter {
        self.dispatched
            .get_or_init(|| m.dispatched.get_or_create(&self.flow()).clone())
    }

    fn inqueue(&self, m: &Metrics) -> &Gauge {
        self.inqueue
            .get_or_init(|| m.inqueue.get_or_create(&self.flow()).clone())
    }

    /// `current_executing_requests` and `current_executing_seats`.
    fn executing(&self, m: &Metrics) -> &(Gauge, Gauge) {
        self.executing.get_or_init(|| {
            let flow = self.flow();
            (
                m.executing.get_or_create(&flow).clone(),
                m.executing_seats.get_or_create(&flow).clone(),
            )
        })
    }

    fn waited(&self, m: &Metrics, execute: bool) -> &Histogram {
        self.waited[usize::from(!execute)].get_or_init(|| {
            m.wait
                .get_or_create(&WaitLabels {
                    priority_level: self.level.clone(),
                    flow_schema: self.schema.clone(),
                    execute: execute.to_string(),
                })
                .clone()
        })
    }

    fn rejected(&self, m: &Metrics, why: Rejection) -> &Counter {
        self.rejected[why as usize].get_or_init(|| {
            m.rejected
                .get_or_create(&RejectLabels {
                    priority_level: self.level.clone(),
                    flow_schema: self.schema.clone(),
                    reason: why.label().into(),
                })
                .clone()
        })
    }
}

#[derive(Default)]
struct Config {
    schemas: Vec<Arc<Schema>>,
}

/// What a request is, for classification.
pub struct Request<'a> {
    /// Its request info.
    pub info: &'a RequestInfo,
    /// Its user (after impersonation).
    pub user: &'a UserInfo,
    /// Its HTTP method, lowercased, for non-resource rules.
    pub method: &'a str,
}

/// `["*"]` alone matches everything; otherwise the value must be listed.
fn has(list: &[String], v: &str) -> bool {
    (list.len() == 1 && list[0] == "*") || list.iter().any(|x| x == v)
}

impl Subject {
    fn matches(&self, u: &UserInfo) -> bool {
        match self {
            Subject::User(n) => n == "*" || *n == u.name,
            Subject::Group(g) => g == "*" || u.groups.iter().any(|x| x == g),
            Subject::ServiceAccount(ns, n) if n == "*" => u
                .name
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.strip_prefix(ns.as_str()))
                .is_some_and(|r| r.starts_with(':')),
            Subject::ServiceAccount(ns, n) => u.name == format!("system:serviceaccount:{ns}:{n}"),
        }
    }
}

impl ResourceRule {
    fn matches(&self, info: &RequestInfo) -> bool {
        let resource = if info.subresource.is_empty() {
            info.resource.clone()
        } else {
            format!("{}/{}", info.resource, info.subresource)
        };
        has(&self.verbs, &info.verb)
            && has(&self.resources, &resource)
            && has(&self.groups, &info.api_group)
            && if info.namespace.is_empty() {
                self.cluster_scope
            } else {
                has(&self.namespaces, &info.namespace)
            }
    }
}

impl UrlRule {
    fn matches(&self, method: &str, path: &str) -> bool {
        has(&self.verbs, method)
            && self.urls.iter().any(|u| {
                if u == "*" || u == path {
                    return true;
                }
                let mut p = u.strip_suffix('*').unwrap_or(u).to_string();
                if !p.ends_with('/') {
                    p.push('/');
                }
                path.starts_with(&p)
            })
    }
}

impl PolicyRule {
    fn matches(&self, r: &Request<'_>) -> bool {
        self.subjects.iter().any(|s| s.matches(r.user))
            && if r.info.is_resource_request {
                self.resources.iter().any(|x| x.matches(r.info))
            } else {
                self.urls.iter().any(|x| x.matches(r.method, &r.info.path))
            }
    }
}

fn parse_rule(r: &Value) -> PolicyRule {
    let subjects = r
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let f = |p: &str| s.pointer(p).and_then(Value::as_str).map(str::to_string);
            match s.get("kind").and_then(Value::as_str) {
                Some("User") => f("/user/name").map(Subject::User),
                Some("Group") => f("/group/name").map(Subject::Group),
                Some("ServiceAccount") => Some(Subject::ServiceAccount(
                    f("/serviceAccount/namespace")?,
                    f("/serviceAccount/name")?,
                )),
                _ => None,
            }
        })
        .collect();
    let resources = r
        .get("resourceRules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|x| ResourceRule {
            verbs: string_list(x.get("verbs")),
            groups: string_list(x.get("apiGroups")),
            resources: string_list(x.get("resources")),
            cluster_scope: x
                .get("clusterScope")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            namespaces: string_list(x.get("namespaces")),
        })
        .collect();
    let urls = r
        .get("nonResourceRules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|x| UrlRule {
            verbs: string_list(x.get("verbs")),
            urls: string_list(x.get("nonResourceURLs")),
        })
        .collect();
    PolicyRule {
        subjects,
        resources,
        urls,
    }
}

/// A level's mode and shares from its spec; None for a spec that cannot be used.
fn level_spec(name: &str, spec: &Value) -> Option<(Mode, i64)> {
    match spec.get("type").and_then(Value::as_str)? {
        "Exempt" if name == "exempt" => Some((
            Mode::Exempt,
            spec.pointer("/exempt/nominalConcurrencyShares")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        )),
        "Limited" if name != "exempt" => {
            let l = spec.get("limited")?;
            let shares = l
                .get("nominalConcurrencyShares")
                .and_then(Value::as_i64)
                .unwrap_or(30);
            let mode = match l.pointer("/limitResponse/type").and_then(Value::as_str)? {
                "Reject" => Mode::Reject,
                "Queue" => {
                    let q = l.pointer("/limitResponse/queuing");
                    let get = |k: &str, d: i64| {
                        q.and_then(|q| q.get(k))
                            .and_then(Value::as_i64)
                            .filter(|v| *v > 0)
                            .unwrap_or(d) as usize
                    };
                    let (queues, hand, length) = (
                        get("queues", 64),
                        get("handSize", 8),
                        get("queueLengthLimit", 50),
                    );
                    if hand > queues {
                        return None;
                    }
                    Mode::Queue {
                        queues,
                        hand,
                        length,
                    }
                }
                _ => return None,
            };
            Some((mode, shares.max(0)))
        }
        _ => None,
    }
}

/// The flow hash: the first 8 bytes, little-endian, of sha256(schema ‖ 0 ‖ distinguisher).
fn flow_hash(schema: &str, distinguisher: &str) -> u64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(schema.as_bytes());
    h.update([0u8]);
    h.update(distinguisher.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// API Priority and Fairness of one server.
pub struct Apf {
    server_seats: u32,
    wait_limit: Duration,
    config: RwLock<Arc<Config>>,
    levels: Mutex<HashMap<String, Arc<Level>>>,
    metrics: Metrics,
    cache: Option<Arc<crate::cache::Cache>>,
    synced: AtomicBool,
    bootstrapped: Arc<AtomicBool>,
}

impl Apf {
    /// APF with `server_seats` seats, following the configuration caches of `cache`, and the
    /// bootstrap ensurer writing through `registry`.
    pub fn start(
        server_seats: u32,
        request_timeout: Duration,
        cache: &Arc<crate::cache::Cache>,
        registry: crate::registry::Registry,
        metrics: &crate::metrics::Metrics,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let apf = Arc::new(Self::new(
            server_seats,
            request_timeout,
            metrics,
            Some(cache.clone()),
        ));
        tokio::spawn(bootstrap::run(
            registry,
            apf.bootstrapped.clone(),
            shutdown.clone(),
        ));
        let find = |r: &str| {
            let res =
                crate::resources::find(GROUP, "v1", r).expect("flowcontrol resources are served");
            cache
                .get(res)
                .expect("flowcontrol resources are always cached")
                .clone()
        };
        let cachers = [find("prioritylevelconfigurations"), find("flowschemas")];
        let me = apf.clone();
        tokio::spawn(crate::cache::follow(
            cachers.to_vec(),
            shutdown.clone(),
            move |v| {
                me.digest(&v[0], &v[1]);
                me.synced.store(true, Ordering::Release);
            },
        ));
        apf
    }

    fn new(
        server_seats: u32,
        request_timeout: Duration,
        metrics: &crate::metrics::Metrics,
        cache: Option<Arc<crate::cache::Cache>>,
    ) -> Self {
        let wait = if request_timeout.is_zero() {
            Duration::from_secs(15)
        } else {
            request_timeout / 4
        };
        let apf = Apf {
            server_seats: server_seats.max(1),
            wait_limit: wait.min(Duration::from_secs(60)),
            config: RwLock::new(Arc::new(Config::default())),
            levels: Mutex::new(HashMap::new()),
            metrics: Metrics::register(metrics),
            cache,
            synced: AtomicBool::new(false),
            bootstrapped: Arc::new(AtomicBool::new(false)),
        };
        // Until the caches are read, the mandatory objects as they are defined.
        apf.digest(&[], &[]);
        apf
    }

    /// APF over fixed objects (tests).
    pub fn fixed(
        server_seats: u32,
        request_timeout: Duration,
        levels: &[Value],
        schemas: &[Value],
    ) -> Arc<Self> {
        let apf = Self::new(
            server_seats,
            request_timeout,
            &crate::metrics::Metrics::new(),
            None,
        );
        apf.digest(levels, schemas);
        apf.synced.store(true, Ordering::Release);
        apf.bootstrapped.store(true, Ordering::Release);
        Arc::new(apf)
    }

    /// Rebuilds the classifier and the levels' limits from the stored objects.
    fn digest(&self, levels: &[Value], schemas: &[Value]) {
        let mut pls: Vec<(String, String, Mode, i64)> = Vec::new();
        for l in levels {
            let name = crate::object::name(l).to_string();
            match l.get("spec").and_then(|s| level_spec(&name, s)) {
                Some((mode, shares)) => {
                    let uid = crate::object::meta_str(l, "uid").to_string();
                    pls.push((name, uid, mode, shares));
                }
                None => {
                    tracing::warn!(level = %name, "ignoring a PriorityLevelConfiguration whose spec cannot be used")
                }
            }
        }
        // The mandatory levels and schemas act as defined until they are stored.
        for m in bootstrap::mandatory_levels() {
            let name = crate::object::name(&m).to_string();
            if !pls.iter().any(|p| p.0 == name)
                && let Some((mode, shares)) = level_spec(&name, &m["spec"])
            {
                pls.push((name, String::new(), mode, shares));
            }
        }
        let sum: i64 = pls.iter().map(|p| p.3).sum::<i64>().max(1);
        let mut map = self.levels.lock();
        let mut uids = HashMap::new();
        for (name, uid, mode, shares) in &pls {
            let nominal =
                ((f64::from(self.server_seats) * *shares as f64) / sum as f64).ceil() as u32;
            let max_seats = match mode {
                Mode::Queue { hand, .. } => {
                    let a = (0.15 * f64::from(nominal)).ceil() as u32;
                    let b = nominal / *hand as u32;
                    a.min(b).clamp(1, 10)
                }
                _ => 10,
            };
            let level = map
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(Level {
                        name: name.clone(),
                        qs: Mutex::new(QueueSet::new(*mode, nominal)),
                        retry: Mutex::new(RetryAfter::default()),
                        max_seats: std::sync::atomic::AtomicU32::new(max_seats),
                        distinguishes: AtomicBool::new(false),
                    })
                })
                .clone();
            level.qs.lock().reconfigure(*mode, nominal);
            level.max_seats.store(max_seats, Ordering::Relaxed);
            level.distinguishes.store(
                matches!(mode, Mode::Queue { queues, .. } if *queues > 1),
                Ordering::Relaxed,
            );
            let labels = LevelLabels {
                priority_level: name.clone(),
            };
            self.metrics
                .nominal
                .get_or_create(&labels)
                .set(i64::from(nominal));
            self.metrics
                .current
                .get_or_create(&labels)
                .set(i64::from(nominal));
            uids.insert(name.clone(), (level, uid.clone()));
        }
        drop(map);
        let mut out: Vec<Arc<Schema>> = Vec::new();
        let imagined: Vec<Value> = bootstrap::mandatory_schemas()
            .into_iter()
            .filter(|m| {
                !schemas
                    .iter()
                    .any(|s| crate::object::name(s) == crate::object::name(m))
            })
            .collect();
        for s in schemas.iter().chain(imagined.iter()) {
            let name = crate::object::name(s).to_string();
            let level_name = s
                .pointer("/spec/priorityLevelConfiguration/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let Some((level, level_uid)) = uids.get(level_name) else {
                // Dangling: its level does not exist.
                continue;
            };
            out.push(Arc::new(Schema {
                metrics: FlowMetrics::new(&level.name, &name),
                uid: crate::object::meta_str(s, "uid").to_string(),
                precedence: s
                    .pointer("/spec/matchingPrecedence")
                    .and_then(Value::as_i64)
                    .unwrap_or(1000),
                level: level.clone(),
                level_uid: level_uid.clone(),
                distinguisher: match s
                    .pointer("/spec/distinguisherMethod/type")
                    .and_then(Value::as_str)
                {
                    Some("ByUser") => Distinguisher::ByUser,
                    Some("ByNamespace") => Distinguisher::ByNamespace,
                    _ => Distinguisher::None,
                },
                rules: s
                    .pointer("/spec/rules")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(parse_rule)
                    .collect(),
                name,
            }));
        }
        out.sort_by(|a, b| {
            a.precedence
                .cmp(&b.precedence)
                .then_with(|| a.name.cmp(&b.name))
        });
        *self.config.write() = Arc::new(Config { schemas: out });
    }

    /// Every level's seat limit.
    pub fn limits(&self) -> Vec<(String, u32)> {
        self.levels
            .lock()
            .iter()
            .map(|(n, l)| (n.clone(), l.qs.lock().limit()))
            .collect()
    }

    /// `/readyz/poststarthook/apiserver/bootstrap-system-flowcontrol-configuration`.
    pub fn ready(&self) -> Result<(), String> {
        if !self.bootstrapped.load(Ordering::Acquire) {
            return Err("the default flow schemas and priority levels are not in place yet".into());
        }
        if !self.synced.load(Ordering::Acquire) {
            return Err("the flow schemas and priority levels are not loaded yet".into());
        }
        Ok(())
    }

    /// The first schema that matches `r`, and the request's flow hash.
    fn classify(&self, r: &Request<'_>) -> Option<(Arc<Schema>, u64)> {
        let cfg = self.config.read().clone();
        let s = cfg
            .schemas
            .iter()
            .find(|s| s.rules.iter().any(|rule| rule.matches(r)))
            .or_else(|| cfg.schemas.iter().find(|s| s.name == "catch-all"))?;
        let hash = if s.level.distinguishes.load(Ordering::Relaxed) {
            let d = match s.distinguisher {
                Distinguisher::ByUser => r.user.name.as_str(),
                Distinguisher::ByNamespace => r.info.namespace.as_str(),
                Distinguisher::None => "",
            };
            flow_hash(&s.name, d)
        } else {
            0
        };
        Some((s.clone(), hash))
    }

    /// The seats of a request: one, or for a LIST one per 100 objects it may return.
    fn seats(&self, info: &RequestInfo, query: Option<&str>, level: &Level) -> u32 {
        let max = level.max_seats.load(Ordering::Relaxed).max(1);
        if info.verb != "list" || !info.name.is_empty() {
            return 1;
        }
        let Some(res) = crate::resources::find(&info.api_group, &info.api_version, &info.resource)
        else {
            return 1;
        };
        let Some(stored) = self
            .cache
            .as_ref()
            .and_then(|c| c.get(res))
            .and_then(|c| c.object_count())
        else {
            // No count for the resource (its cache is off): one seat, as upstream when the
            // count is unknown.
            return 1;
        };
        let limit = query
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "limit")
                    .and_then(|(_, v)| v.parse::<usize>().ok())
            })
            .filter(|l| *l > 0 && *l < stored)
            .unwrap_or(stored);
        (limit.div_ceil(100) as u32).clamp(1, max)
    }

    /// Admits a request: runs `run` when it may, refuses it with a 429 otherwise.
    pub async fn handle<F, Fut>(
        &self,
        r: Request<'_>,
        query: Option<&str>,
        run: F,
    ) -> axum::response::Response
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = axum::response::Response>,
    {
        let Some((schema, hash)) = self.classify(&r) else {
            return run().await;
        };
        let level = &schema.level;
        let (m, family) = (&schema.metrics, &self.metrics);
        let seats = self.seats(r.info, query, level);
        let started = Instant::now();
        let start = level.qs.lock().start(seats, hash);
        let queue = match start {
            Start::Run(q) => Ok(q),
            Start::Reject(why) => Err(why),
            Start::Wait(rx, q, id) => {
                let gauge = m.inqueue(family).clone();
                gauge.inc();
                // If this future is dropped while queued (client gone, request timeout), the
                // guard withdraws it, or gives back the seats it was just dispatched to.
                let mut waiting = Waiting {
                    level: level.clone(),
                    queue: q,
                    id,
                    seats,
                    rx,
                    gauge,
                    settled: false,
                };
                let dispatched = tokio::select! {
                    r = &mut waiting.rx => r.is_ok(),
                    _ = tokio::time::sleep(self.wait_limit) => false,
                };
                waiting.settle(dispatched)
            }
        };
        let waited = started.elapsed();
        crate::metrics::exclude_from_sli(waited);
        if level.name != "exempt" {
            m.waited(family, queue.is_ok())
                .observe(waited.as_secs_f64());
        }
        let mut resp = match queue {
            Ok(q) => {
                m.dispatched(family).inc();
                let (executing, executing_seats) = m.executing(family).clone();
                executing.inc();
                executing_seats.inc_by(i64::from(seats));
                // Seats go back when the request is done, or dropped (client gone).
                let guard = SeatGuard {
                    level: level.clone(),
                    seats,
                    queue: q,
                    since: Instant::now(),
                    gauges: (executing, executing_seats),
                };
                let resp = run().await;
                if r.info.verb == "watch" {
                    // A watch holds its seats while it is set up, not while it streams.
                    drop(guard);
                    resp
                } else {
                    // Other requests hold them until the response is written, as upstream's
                    // handlers write theirs before returning.
                    let (parts, body) = resp.into_parts();
                    axum::response::Response::from_parts(
                        parts,
                        axum::body::Body::new(Held {
                            inner: body,
                            _guard: guard,
                        }),
                    )
                }
            }
            Err(why) => {
                m.rejected(family, why).inc();
                crate::metrics::mark_dropped();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let retry = level.retry.lock().record(now);
                tracing::debug!(level = %level.name, schema = %schema.name, reason = why.label(), "request refused by API Priority and Fairness");
                let mut r = axum::response::Response::new(axum::body::Body::from(
                    "Too many requests, please try again later.\n",
                ));
                *r.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                let h = r.headers_mut();
                h.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                h.insert(
                    "x-content-type-options",
                    http::HeaderValue::from_static("nosniff"),
                );
                h.insert(http::header::RETRY_AFTER, http::HeaderValue::from(retry));
                r
            }
        };
        let h = resp.headers_mut();
        for (k, v) in [
            ("x-kubernetes-pf-flowschema-uid", &schema.uid),
            ("x-kubernetes-pf-prioritylevel-uid", &schema.level_uid),
        ] {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                h.insert(k, v);
            }
        }
        resp
    }
}

/// A request waiting in a queue.
struct Waiting {
    level: Arc<Level>,
    queue: usize,
    id: u64,
    seats: u32,
    rx: tokio::sync::oneshot::Receiver<()>,
    gauge: Gauge,
    settled: bool,
}

impl Waiting {
    /// The wait is over (`dispatched`, or its time ran out): the queue to run on, or the
    /// refusal. A request dispatched just as its time ran out runs.
    fn settle(&mut self, dispatched: bool) -> Result<Option<usize>, Rejection> {
        self.settled = true;
        self.gauge.dec();
        if dispatched {
            return Ok(Some(self.queue));
        }
        let mut qs = self.level.qs.lock();
        if qs.withdraw(self.queue, self.id) {
            return Err(Rejection::TimeOut);
        }
        // Not queued any more: dispatched meanwhile (its seats are taken) unless it vanished.
        if self.rx.try_recv().is_ok() {
            Ok(Some(self.queue))
        } else {
            Err(Rejection::TimeOut)
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.gauge.dec();
        let mut qs = self.level.qs.lock();
        if !qs.withdraw(self.queue, self.id) && self.rx.try_recv().is_ok() {
            // Dispatched, but nobody will run it: give the seats back.
            qs.finish(self.seats, Some(self.queue), Duration::ZERO);
        }
    }
}

/// A response body that keeps its request's seats until it is sent or dropped.
struct Held {
    inner: axum::body::Body,
    _guard: SeatGuard,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

struct SeatGuard {
    level: Arc<Level>,
    seats: u32,
    queue: Option<usize>,
    since: Instant,
    gauges: (Gauge, Gauge),
}

impl Drop for SeatGuard {
    fn drop(&mut self) {
        self.gauges.0.dec();
        self.gauges.1.dec_by(i64::from(self.seats));
        self.level
            .qs
            .lock()
            .finish(self.seats, self.queue, self.since.elapsed());
    }
}

#[cfg(test)]
mod tests;
