//! The Job controller, as upstream's `pkg/controller/job`: runs pods until `completions` of
//! them succeed (or, without `completions`, until one succeeds and the rest finish), at most
//! `parallelism` at a time.
//!
//! - Pods carry the `batch.kubernetes.io/job-tracking` finalizer; a finished pod is first
//!   recorded in `status.uncountedTerminatedPods`, then its finalizer removed, then it is moved
//!   into `succeeded`/`failed`, so no finished pod is counted twice or lost even if it is deleted
//!   right away (upstream's tracking protocol).
//! - `Indexed` completion mode: one pod per index (annotation and label
//!   `batch.kubernetes.io/job-completion-index`), `status.completedIndexes` in upstream's
//!   interval form (`1,3-5`).
//! - Failure: more failed pods than `backoffLimit` (reason `BackoffLimitExceeded`), or running
//!   longer than `activeDeadlineSeconds` (`DeadlineExceeded`): the Job gets `FailureTarget`,
//!   its remaining pods are deleted, and it is `Failed` once none is left running or
//!   terminating (they count as failed as they go). Success (the completions reached, or a rule
//!   of an Indexed Job's `successPolicy`, reason `SuccessPolicy`): `SuccessCriteriaMet`, the
//!   remaining pods deleted, then `Complete` and `completionTime` likewise. `suspend` deletes
//!   active pods and sets `Suspended`.
//! - `podReplacementPolicy`: with `TerminatingOrFailed` (the default) a pod being deleted is
//!   replaced, and counted failed, at once; with `Failed` (the default when a
//!   `podFailurePolicy` is set) only once it has reached the Failed phase, and the pods still
//!   terminating count against `parallelism` (and hold their index). `status.terminating`
//!   counts them.
//! - Failed pods are replaced after upstream's back-off: 10 s after a failure, doubling with
//!   each failure since the last success, at most 10 minutes.
//! - `backoffLimitPerIndex` (Indexed Jobs): each index has its own limit and back-off. Its pods
//!   carry the index's failure count (`batch.kubernetes.io/job-index-failure-count`, and
//!   `...-ignored-failure-count` for failures an `Ignore` rule left uncounted); an index whose
//!   pod fails with the count at the limit, or matches a `FailIndex` rule, is failed
//!   (`status.failedIndexes`) and not retried. More failed indexes than `maxFailedIndexes`
//!   fail the Job (`MaxFailedIndexesExceeded`); so does every index being done with some
//!   failed (`FailedIndexes`).
//! - With `restartPolicy: OnFailure` containers restart in their pods, and the Job fails once
//!   the restarts in its running pods reach `backoffLimit`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_client::events::{EventType, Recorder};
use keelson_client::informer::{Change, Index};
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Informers;
use crate::replicaset::slow_start;
use crate::util::{
    Expectations, SyncResult, Written, claim_indexed, controller_of, controller_ref, deleting,
    is_not_found, key_of, namespace_terminating, object_ref, pod_ready, reconciler,
    selector_or_event, split_key,
};

/// The finalizer that keeps a finished pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The completion index of a pod of an Indexed Job.
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// With a `backoffLimitPerIndex`: the failures of the pod's index before it that counted...
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// ... and those an `Ignore` rule of the `podFailurePolicy` left uncounted (set when not 0).
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

/// The wait before a failed pod's replacement, after one failure; it doubles with each
/// further failure...
const FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// ... up to this.
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

/// The Job controller.
pub struct JobController {
    client: Client,
    jobs: Store<Job>,
    pods: Index<Pod>,
    queue: WorkQueue<String>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
    /// Each Job as this controller last wrote it, until the cache shows that version or a
    /// later one. Its status counts pods whose tracking finalizers were then removed: a sync
    /// on an older cached copy (the Job watch behind the pod watch) would count them nowhere
    /// and start their replacements.
    written: Written<Job>,
    /// Per Job, the pods whose tracking finalizer this controller removed, until the pod
    /// cache shows it gone (upstream's finalizer expectations): they are counted in the Job's
    /// status already, and a pod cache behind the removal would have them counted again.
    freed: Arc<Freed>,
    /// Per Job, its failures since its last success (upstream keeps them in memory too).
    backoff: parking_lot::Mutex<HashMap<String, Backoff>>,
}

/// A Job's pod failures since its last success, and when the last of them finished.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Backoff {
    failures: u32,
    last_failure: Option<jiff::Timestamp>,
}

impl Backoff {
    /// The record once newly finished pods are counted (their finish times): a success
    /// restarts the count from the failures after it.
    fn after(mut self, succeeded: &[jiff::Timestamp], failed: &[jiff::Timestamp]) -> Self {
        match succeeded.iter().max() {
            None => {
                if let Some(last) = failed.iter().max() {
                    self.failures += failed.len() as u32;
                    self.last_failure = Some(*last);
                }
            }
            Some(ok) => {
                let later: Vec<jiff::Timestamp> =
                    failed.iter().filter(|t| *t > ok).copied().collect();
                self.failures = later.len() as u32;
                self.last_failure = later.into_iter().max();
            }
        }
        self
    }

    /// How long a replacement must still wait.
    fn left(&self, now: jiff::Timestamp) -> Duration {
        self.last_failure
            .map_or(Duration::ZERO, |t| backoff_left(self.failures, t, now))
    }
}

/// What is left at `now` of the wait after `failures` failures, the last at `last`.
fn backoff_left(failures: u32, last: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let mut wait = FAILURE_BACKOFF;
    for _ in 1..failures {
        wait = wait.saturating_mul(2);
        if wait >= MAX_FAILURE_BACKOFF {
            wait = MAX_FAILURE_BACKOFF;
            break;
        }
    }
    let since = Duration::try_from(now.duration_since(last)).unwrap_or(Duration::ZERO);
    wait.saturating_sub(since)
}

/// When a pod finished, as upstream judges it: the last of its containers' finish times, else
/// when its Ready condition turned False, else when its deletion was asked, else its creation.
fn finished_at(p: &Pod) -> jiff::Timestamp {
    let st = p.status.as_ref();
    let containers = st.into_iter().flat_map(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
    });
    containers
        .filter_map(|c| {
            Some(
                c.state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .finished_at
                    .as_ref()?
                    .0,
            )
        })
        .max()
        .or_else(|| {
            let ready = st?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "False").then_some(ready.last_transition_time.as_ref()?.0)
        })
        .or_else(|| {
            let at = p.metadata.deletion_timestamp.as_ref()?.0;
            let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(0);
            at.checked_sub(jiff::SignedDuration::from_secs(grace)).ok()
        })
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or_else(jiff::Timestamp::now)
}

fn count_annotation(p: &Pod, key: &str) -> i32 {
    p.annotations()
        .get(key)
        .and_then(|v| v.parse().ok())
        .filter(|v| *v >= 0)
        .unwrap_or(0)
}

/// With `restartPolicy: OnFailure` (containers restart in their pods): whether the restarts
/// in the running and pending pods reached the backoff limit (with a limit of 0, any).
fn past_backoff_limit_on_failure(spec: &JobSpec, pods: &[Arc<Pod>]) -> bool {
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    if !on_failure {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    match spec.backoff_limit.unwrap_or(6) {
        0 => restarts > 0,
        limit => restarts >= limit,
    }
}

/// The limit per index, for an Indexed Job that has one.
fn limit_per_index(spec: &JobSpec) -> Option<i32> {
    spec.backoff_limit_per_index.filter(|_| indexed(spec))
}

/// Whether a pod counts as failed for its replacement: Failed, or being deleted when such
/// pods are replaced at once.
fn failed_for_replacement(spec: &JobSpec, p: &Pod) -> bool {
    phase(p) == "Failed" || (terminating(p) && !only_failed_replaced(spec))
}

/// Per index, the failed pod a new pod of it replaces: the one with the most failures
/// recorded, the last to finish among equals.
fn replaced_by_index<'a>(
    spec: &JobSpec,
    pods: impl Iterator<Item = &'a Arc<Pod>>,
) -> HashMap<i32, &'a Arc<Pod>> {
    let completions = spec.completions.unwrap_or(0);
    let all = |p: &Pod| {
        count_annotation(p, INDEX_FAILURE_COUNT)
            .saturating_add(count_annotation(p, INDEX_IGNORED_FAILURE_COUNT))
    };
    let mut out: HashMap<i32, &Arc<Pod>> = HashMap::new();
    for p in pods.filter(|p| failed_for_replacement(spec, p)) {
        let Some(i) = pod_index(p).filter(|i| (0..completions).contains(i)) else {
            continue;
        };
        let later = out
            .get(&i)
            .is_none_or(|cur| (all(cur), finished_at(cur)) <= (all(p), finished_at(p)));
        if later {
            out.insert(i, p);
        }
    }
    out
}

/// A pod to create: its index (Indexed Jobs) and, with a limit per index, the failures of the
/// index so far (counted, ignored).
#[derive(Debug, Clone, PartialEq)]
struct NewPod {
    index: Option<i32>,
    failures: Option<(i32, i32)>,
}

/// The pods to create now, and how long until more may be (a back-off still running).
/// `occupied` are the pods holding places; `done` and `failed` the finished indexes; `replaced`
/// (with a limit per index) the failed pod each waiting index replaces.
fn plan_pods(
    spec: &JobSpec,
    occupied: &[&Arc<Pod>],
    replaced: &HashMap<i32, &Arc<Pod>>,
    succeeded: i32,
    (done, failed): (&BTreeSet<i32>, &BTreeSet<i32>),
    backoff: Backoff,
    now: jiff::Timestamp,
) -> (Vec<NewPod>, Option<Duration>) {
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    // Which pods are wanted: indexes for an Indexed Job, a count otherwise.
    let wanted: Vec<Option<i32>> = if indexed(spec) {
        let completions = spec.completions.unwrap_or(1);
        let running: HashSet<i32> = occupied.iter().filter_map(|p| pod_index(p)).collect();
        let room = (parallelism as usize).saturating_sub(occupied.len());
        (0..completions)
            .filter(|i| !done.contains(i) && !failed.contains(i) && !running.contains(i))
            .take(room)
            .map(Some)
            .collect()
    } else {
        let want = match spec.completions {
            Some(c) => (c - succeeded).min(parallelism),
            // Work queue: keep parallelism running until one succeeds.
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        vec![None; (want - occupied.len() as i32).max(0) as usize]
    };
    if wanted.is_empty() {
        return (Vec::new(), None);
    }
    if limit_per_index(spec).is_none() {
        let left = backoff.left(now);
        if !left.is_zero() {
            return (Vec::new(), Some(left));
        }
        let new = wanted.into_iter().map(|index| NewPod {
            index,
            failures: None,
        });
        return (new.collect(), None);
    }
    // Each index on its own back-off, from the failures its last pod recorded.
    let (mut new, mut wait) = (Vec::new(), None::<Duration>);
    for i in wanted.into_iter().flatten() {
        let (failures, left) = match replaced.get(&i) {
            None => ((0, 0), Duration::ZERO),
            Some(p) => {
                let (counted, ignored) = (
                    count_annotation(p, INDEX_FAILURE_COUNT),
                    count_annotation(p, INDEX_IGNORED_FAILURE_COUNT),
                );
                let all = counted.saturating_add(ignored).saturating_add(1);
                let left = backoff_left(all as u32, finished_at(p), now);
                let ignore =
                    matches!(failure_policy_verdict(spec, p), Some((a, _)) if a == "Ignore");
                let failures = if ignore {
                    (counted, ignored.saturating_add(1))
                } else {
                    (counted.saturating_add(1), ignored)
                };
                (failures, left)
            }
        };
        if left.is_zero() {
            new.push(NewPod {
                index: Some(i),
                failures: Some(failures),
            });
        } else {
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
    }
    (new, wait)
}

fn owner_key(jobs: &Store<Job>, pod: &Pod) -> Option<String> {
    let r = controller_of(&pod.metadata)?;
    if r.kind != "Job" {
        return None;
    }
    let ns = pod.namespace().unwrap_or_default();
    let job = jobs.get(&ObjectRef::new(&r.name).within(&ns))?;
    (job.uid().as_deref() == Some(r.uid.as_str())).then(|| format!("{ns}/{}", r.name))
}

/// Whether a pod being deleted is replaced only once it has failed (`podReplacementPolicy:
/// Failed`, the default with a `podFailurePolicy`).
fn only_failed_replaced(spec: &JobSpec) -> bool {
    match spec.pod_replacement_policy.as_deref() {
        Some(p) => p == "Failed",
        None => spec.pod_failure_policy.is_some(),
    }
}

/// A pod running or about to, not being deleted.
fn active(p: &Pod) -> bool {
    matches!(phase(p), "Pending" | "Running" | "Unknown") && !deleting(&p.metadata)
}

/// Whether the Job is Indexed.
fn indexed(spec: &JobSpec) -> bool {
    spec.completion_mode.as_deref() == Some("Indexed")
}

/// A pod being deleted that has not reached a terminal phase.
fn terminating(p: &Pod) -> bool {
    deleting(&p.metadata) && !matches!(phase(p), "Succeeded" | "Failed")
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn pod_index(p: &Pod) -> Option<i32> {
    p.annotations()
        .get(INDEX_KEY)
        .or_else(|| p.labels().get(INDEX_KEY))
        .and_then(|v| v.parse().ok())
}

/// What a Job's `podFailurePolicy` does with a failed pod: the action of the first rule it
/// matches, with the message upstream gives a `FailJob` match; None when no rule matches (the
/// failure counts).
fn failure_policy_verdict(spec: &JobSpec, pod: &Pod) -> Option<(String, String)> {
    let rules = &spec.pod_failure_policy.as_ref()?.rules;
    let status = pod.status.as_ref();
    let (ns, name) = (
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or(""),
    );
    for (i, rule) in rules.iter().enumerate() {
        let action = rule.action.as_str();
        if let Some(req) = &rule.on_exit_codes {
            // Regular containers first, then init containers; exit code 0 never matches.
            let statuses = status
                .into_iter()
                .flat_map(|s| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .chain(s.init_container_statuses.iter().flatten())
                })
                .filter(|c| req.container_name.as_ref().is_none_or(|n| *n == c.name));
            for c in statuses {
                let Some(code) = c
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code)
                else {
                    continue;
                };
                let listed = req.values.contains(&code);
                let matched = match req.operator.as_str() {
                    "In" => listed,
                    "NotIn" => !listed,
                    _ => false,
                };
                if code != 0 && matched {
                    return Some((
                        action.to_string(),
                        format!(
                            "Container {} for pod {ns}/{name} failed with exit code {code} \
                             matching {action} rule at index {i}",
                            c.name
                        ),
                    ));
                }
            }
        }
        for want in rule.on_pod_conditions.iter().flatten() {
            // A pattern's status defaults to True.
            let want_status = Some(want.status.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("True");
            let has = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == want.type_ && c.status == want_status)
                });
            if has {
                return Some((
                    action.to_string(),
                    format!(
                        "Pod {ns}/{name} has condition {} matching {action} rule at index {i}",
                        want.type_
                    ),
                ));
            }
        }
    }
    None
}

fn has_condition(s: &JobStatus, t: &str) -> bool {
    s.conditions
        .as_ref()
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
}

fn set_condition(s: &mut JobStatus, t: &str, status: &str, reason: &str, message: &str) {
    let now = Time(jiff::Timestamp::now());
    let cs = s.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = cs.iter_mut().find(|c| c.type_ == t) {
        if c.status != status {
            c.last_transition_time = Some(now.clone());
        }
        c.status = status.to_string();
        c.reason = Some(reason.to_string());
        c.message = Some(message.to_string());
        c.last_probe_time = Some(now);
        return;
    }
    cs.push(JobCondition {
        type_: t.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
}

/// The reason and message of a true condition.
fn condition_text(s: &JobStatus, t: &str) -> Option<(String, String)> {
    let c = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == t && c.status == "True")?;
    Some((
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

/// The first rule of an Indexed Job's `successPolicy` that its succeeded indexes meet, as
/// upstream words it: all of `succeededIndexes` (those below `completions`), or
/// `succeededCount` of them, or `succeededCount` indexes at all.
fn success_policy_match(spec: &JobSpec, done: &BTreeSet<i32>) -> Option<String> {
    let rules = &spec.success_policy.as_ref()?.rules;
    if done.is_empty() || spec.completion_mode.as_deref() != Some("Indexed") {
        return None;
    }
    let completions = spec.completions.unwrap_or(0);
    let at_least = |n: i32| n.max(0) as usize;
    rules
        .iter()
        .position(|r| match (&r.succeeded_indexes, r.succeeded_count) {
            (Some(listed), count) => {
                let want: BTreeSet<i32> = parse_indexes(listed)
                    .into_iter()
                    .filter(|i| *i < completions)
                    .collect();
                !want.is_empty()
                    && want.intersection(done).count() >= count.map_or(want.len(), at_least)
            }
            (None, Some(count)) => done.len() >= at_least(count),
            (None, None) => false,
        })
        .map(|i| format!("Matched rules at index {i}"))
}

/// Upstream's interval form of a set of indexes: `0-2,5,7,8` (a run of three or more as its
/// ends).
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(match end - start {
            0 => start.to_string(),
            1 => format!("{start},{end}"),
            _ => format!("{start}-{end}"),
        });
    }
    out.join(",")
}

/// Parses the interval form back.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(v) = part.parse() {
                    out.insert(v);
                }
            }
        }
    }
    out
}

impl JobController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, recorder: Recorder) -> Arc<Self> {
        let queue = WorkQueue::new();
        let expectations = Arc::new(Expectations::default());
        let freed: Arc<Freed> = Arc::default();
        let jobs = informers.jobs().store();
        let pods = informers.pods_by_controller();
        {
            let q = queue.clone();
            informers
                .jobs()
                .on_change(move |c| q.add(key_of(&c.object().metadata)));
        }
        {
            let q = queue.clone();
            let exp = expectations.clone();
            let jobs = jobs.clone();
            let freed = freed.clone();
            informers.pods().on_change(move |c| {
                let Some(k) = owner_key(&jobs, c.object()) else {
                    return;
                };
                let tracked = c
                    .object()
                    .finalizers()
                    .iter()
                    .any(|f| f == TRACKING_FINALIZER);
                if matches!(c, Change::Deleted(_)) || !tracked {
                    unfree(&freed, &k, &c.object().uid().unwrap_or_default());
                }
                match &c {
                    Change::Added(p) if !deleting(&p.metadata) => exp.creation_observed(&k),
                    Change::Added(p) | Change::Deleted(p) => {
                        exp.deletion_observed(&k, &key_of(&p.metadata))
                    }
                    Change::Updated { old, new } => {
                        if deleting(&new.metadata) && !deleting(&old.metadata) {
                            exp.deletion_observed(&k, &key_of(&new.metadata));
                        }
                    }
                }
                q.add(k);
            });
        }
        Arc::new(Self {
            client: informers.client(),
            jobs,
            pods,
            queue,
            expectations,
            recorder,
            written: Default::default(),
            freed,
            backoff: Default::default(),
        })
    }

    /// Removes the pod's tracking finalizer and remembers that it did (before the call, as
    /// upstream: the pod watch may show the removal before the call returns).
    async fn free(&self, key: &str, api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
        let uid = pod.uid().unwrap_or_default();
        self.freed
            .lock()
            .entry(key.to_string())
            .or_default()
            .insert(uid.clone());
        let removed = remove_tracking_finalizer(api, pod).await;
        if !matches!(removed, Ok(true)) {
            unfree(&self.freed, key, &uid);
        }
        removed.map(drop)
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(job) = self.jobs.get(&ObjectRef::new(name).within(ns)) else {
            self.expectations.forget(&key);
            self.written.forget(&key);
            self.freed.lock().remove(&key);
            self.backoff.lock().remove(&key);
            return Ok(None);
        };
        let mut job = (*self.written.newest(&key, job)).clone();
        let api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let spec = job.spec.clone().unwrap_or_default();
        let Some(selector) = selector_or_event(
            &self.recorder,
            &job,
            spec.selector.as_ref(),
            "InvalidSelector",
        ) else {
            return Ok(None);
        };
        // Whether the cache has shown every pod this Job asked for, taken before the cache is
        // read: taken after, a pod seen in between would satisfy it without being in `pods`,
        // and the Job would create it again.
        let act = self.expectations.satisfied(&key);
        // Before the pods are read, for the same reason: a removal seen in between would leave
        // a pod that still shows its finalizer out of `freed`, and it would be counted again.
        let freed = self.freed.lock().get(&key).cloned().unwrap_or_default();
        let pods = claim_indexed(&self.client, &self.pods, &job, &selector, |_| true).await?;
        let mut status = job.status.clone().unwrap_or_default();
        let finished = has_condition(&status, "Complete") || has_condition(&status, "Failed");
        if finished {
            self.backoff.lock().remove(&key);
        }
        // Decided but not yet final (its pods still going): success, or failure.
        let met = has_condition(&status, "SuccessCriteriaMet");
        let failing = has_condition(&status, "FailureTarget");

        // 1. Count finished pods through uncountedTerminatedPods.
        let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let mut unc_ok: Vec<String> = uncounted.succeeded.clone().unwrap_or_default();
        let mut unc_failed: Vec<String> = uncounted.failed.clone().unwrap_or_default();
        let mut newly = false;
        // The finish times of the pods seen finished now, for the back-off.
        let (mut ok_at, mut failed_at) = (Vec::new(), Vec::new());
        let per_index = limit_per_index(&spec);
        let mut failed_indexes = parse_indexes(status.failed_indexes.as_deref().unwrap_or(""));
        let mut ignored: Vec<&Arc<Pod>> = Vec::new();
        for p in &pods {
            let tracked = p.finalizers().iter().any(|f| f == TRACKING_FINALIZER);
            let pid = p.uid().unwrap_or_default();
            if !tracked
                || freed.contains(&pid)
                || unc_ok.contains(&pid)
                || unc_failed.contains(&pid)
            {
                continue;
            }
            // A pod deleted before it finished counts as failed, as upstream — unless the Job
            // itself removed it (finished, succeeded or suspended): then it is only released.
            let failed = match phase(p) {
                "Succeeded" => false,
                "Failed" => true,
                _ if deleting(&p.metadata) && (finished || met || spec.suspend == Some(true)) => {
                    self.free(&key, &pod_api, p).await?;
                    continue;
                }
                // A failing Job's pods count as failed as they go.
                _ if deleting(&p.metadata) && failing => true,
                // Deleted before it finished (evicted, preempted): a failure, judged by the
                // policy like any other; with `podReplacementPolicy: Failed` only once its
                // phase says so (the kubelet, or PodGC for a vanished node, sets it).
                _ if deleting(&p.metadata) && !only_failed_replaced(&spec) => true,
                _ => continue,
            };
            if !failed {
                ok_at.push(finished_at(p));
                unc_ok.push(pid);
            } else {
                failed_at.push(finished_at(p));
                let verdict = failure_policy_verdict(&spec, p);
                // With a limit per index: a failed pod fails its index at a `FailIndex` rule,
                // or when the counted failures before it reached the limit.
                let in_range = |i: &i32| (0..spec.completions.unwrap_or(0)).contains(i);
                if let (Some(limit), Some(i), true) = (
                    per_index,
                    pod_index(p).filter(in_range),
                    failed_for_replacement(&spec, p),
                ) {
                    let action = verdict.as_ref().map(|(a, _)| a.as_str());
                    let counted = action != Some("Ignore");
                    if action == Some("FailIndex")
                        || (counted && count_annotation(p, INDEX_FAILURE_COUNT) >= limit)
                    {
                        failed_indexes.insert(i);
                    }
                }
                match verdict {
                    // Not counted towards the backoff limit: only released (with a limit per
                    // index, below, unless held for its index's next pod).
                    Some((action, _)) if action == "Ignore" => {
                        if per_index.is_some() {
                            ignored.push(p);
                        } else {
                            self.free(&key, &pod_api, p).await?;
                        }
                        continue;
                    }
                    // Once the Job succeeded (or finished), a FailJob match only counts.
                    Some((action, message)) if action == "FailJob" && !met && !finished => {
                        // Recorded with the failure, so it survives this sync.
                        if !has_condition(&status, "FailureTarget") {
                            set_condition(
                                &mut status,
                                "FailureTarget",
                                "True",
                                "PodFailurePolicy",
                                &message,
                            );
                        }
                        unc_failed.push(pid)
                    }
                    _ => unc_failed.push(pid),
                }
            }
            newly = true;
        }
        if per_index.is_some() {
            status.failed_indexes = Some(format_indexes(&failed_indexes));
        }
        if newly {
            uncounted.succeeded = Some(unc_ok.clone());
            uncounted.failed = Some(unc_failed.clone());
            status.uncounted_terminated_pods = Some(uncounted.clone());
            job = self.write_status(&api, &job, status.clone()).await?;
        }
        let backoff = if finished {
            Backoff::default()
        } else {
            let mut all = self.backoff.lock();
            let b = all.entry(key.clone()).or_default();
            *b = b.after(&ok_at, &failed_at);
            *b
        };
        // With a limit per index, the last failed pod of an index waiting for its next pod
        // keeps its tracking finalizer, and so stays (counted only then), until that pod
        // exists: the new pod takes its index's failure count from it.
        // Not once the Job is decided (a FailJob match above included), suspended or deleted.
        let deciding = has_condition(&status, "FailureTarget");
        let holding = per_index.is_some()
            && !(finished || met || failing || deciding)
            && spec.suspend != Some(true)
            && !deleting(&job.metadata);
        // The completed indexes, those of the pods counted now included.
        let mut done = parse_indexes(status.completed_indexes.as_deref().unwrap_or(""));
        done.extend(
            pods.iter()
                .filter(|p| unc_ok.contains(&p.uid().unwrap_or_default()))
                .filter_map(|p| pod_index(p)),
        );
        let held: HashMap<i32, &Arc<Pod>> = if holding {
            let busy: HashSet<i32> = pods
                .iter()
                .filter(|p| active(p))
                .filter_map(|p| pod_index(p))
                .collect();
            // Not the pods released above in this sync.
            let freed_now = self.freed.lock().get(&key).cloned().unwrap_or_default();
            let tracked = pods.iter().filter(|p| {
                p.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
                    && !freed_now.contains(&p.uid().unwrap_or_default())
            });
            let mut held = replaced_by_index(&spec, tracked);
            held.retain(|i, _| {
                !done.contains(i) && !failed_indexes.contains(i) && !busy.contains(i)
            });
            held
        } else {
            HashMap::new()
        };
        let kept: HashSet<String> = held.values().filter_map(|p| p.uid()).collect();
        let recorded: HashSet<&String> = unc_ok.iter().chain(unc_failed.iter()).collect();
        for p in pods.iter().filter(|p| {
            let pid = p.uid().unwrap_or_default();
            recorded.contains(&pid) && !freed.contains(&pid) && !kept.contains(&pid)
        }) {
            self.free(&key, &pod_api, p).await?;
        }
        for p in ignored {
            if !kept.contains(&p.uid().unwrap_or_default()) {
                self.free(&key, &pod_api, p).await?;
            }
        }
        // The held pods recorded as failed (an ignored one is not) stay uncounted.
        let uncounted_held: Vec<String> = unc_failed
            .iter()
            .filter(|u| kept.contains(*u))
            .cloned()
            .collect();
        let held_back = uncounted_held.len();
        unc_failed.retain(|u| !kept.contains(u));
        if !unc_ok.is_empty() || !unc_failed.is_empty() {
            status.succeeded = Some(status.succeeded.unwrap_or(0) + unc_ok.len() as i32);
            status.failed = Some(status.failed.unwrap_or(0) + unc_failed.len() as i32);
            if indexed(&spec) {
                status.completed_indexes = Some(format_indexes(&done));
            }
            status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
                failed: (!uncounted_held.is_empty()).then_some(uncounted_held),
                ..Default::default()
            });
        }

        let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| active(p)).collect();
        let succeeded = status.succeeded.unwrap_or(0);
        // The failures held back count too.
        let failed = status.failed.unwrap_or(0) + held_back as i32;
        let suspended = spec.suspend.unwrap_or(false);
        let now = jiff::Timestamp::now();
        let mut requeue = None;
        if !finished {
            let completions = spec.completions;
            let done_indexes = &done;
            let complete = match completions {
                Some(c) if indexed(&spec) => done_indexes.len() as i32 >= c,
                Some(c) => succeeded >= c,
                None => succeeded > 0 && active.is_empty(),
            };
            let backoff_limit = spec.backoff_limit.unwrap_or(6);
            let deadline_passed = spec.active_deadline_seconds.is_some_and(|d| {
                status.start_time.as_ref().is_some_and(|t| {
                    t.0.checked_add(jiff::SignedDuration::from_secs(d))
                        .is_ok_and(|end| end <= now)
                })
            });
            let target = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "FailureTarget" && c.status == "True")
                .map(|c| {
                    (
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                });
            let failure = if met {
                None
            } else if let Some(t) = target {
                Some(t)
            } else if failed > backoff_limit || past_backoff_limit_on_failure(&spec, &pods) {
                Some((
                    "BackoffLimitExceeded".to_string(),
                    "Job has reached the specified backoff limit".to_string(),
                ))
            } else if deadline_passed && !suspended {
                Some((
                    "DeadlineExceeded".to_string(),
                    "Job was active longer than specified deadline".to_string(),
                ))
            } else if per_index.is_some()
                && spec
                    .max_failed_indexes
                    .is_some_and(|m| failed_indexes.len() as i64 > m as i64)
            {
                Some((
                    "MaxFailedIndexesExceeded".to_string(),
                    "Job has exceeded the specified maximal number of failed indexes".to_string(),
                ))
            } else if per_index.is_some()
                && !failed_indexes.is_empty()
                && (failed_indexes.len() + done_indexes.len()) as i64
                    >= completions.unwrap_or(0) as i64
            {
                Some((
                    "FailedIndexes".to_string(),
                    "Job has failed indexes".to_string(),
                ))
            } else {
                None
            };
            // Success: criteria met before (kept), a rule of the success policy, or the
            // completions reached.
            let success = if met {
                condition_text(&status, "SuccessCriteriaMet")
            } else if failure.is_some() {
                None
            } else if let Some(message) = success_policy_match(&spec, done_indexes) {
                Some(("SuccessPolicy".to_string(), message))
            } else {
                complete.then(|| {
                    (
                        "CompletionsReached".to_string(),
                        "Reached expected number of succeeded pods".to_string(),
                    )
                })
            };
            if success.is_some() || failure.is_some() || suspended {
                self.delete_pods(&job, &key, &pod_api, &active).await?;
            }
            // Decided, the Job says so at once (SuccessCriteriaMet, FailureTarget); it is
            // Complete or Failed once none of its pods is left running or terminating.
            // Not before every pod asked for shows (expectations) and every finished one is
            // counted.
            let settled =
                act && held_back == 0 && active.is_empty() && !pods.iter().any(|p| terminating(p));
            if let Some((reason, message)) = success {
                if !met {
                    set_condition(&mut status, "SuccessCriteriaMet", "True", &reason, &message);
                }
                if settled {
                    set_condition(&mut status, "Complete", "True", &reason, &message);
                    status.completion_time = Some(Time(now));
                    self.recorder.record(
                        object_ref(&job),
                        EventType::Normal,
                        "Completed",
                        "Job completed".into(),
                    );
                }
            } else if let Some((reason, message)) = failure {
                if !has_condition(&status, "FailureTarget") {
                    set_condition(&mut status, "FailureTarget", "True", &reason, &message);
                }
                if settled {
                    set_condition(&mut status, "Failed", "True", &reason, &message);
                    self.recorder
                        .record(object_ref(&job), EventType::Warning, &reason, message);
                }
            } else if suspended {
                if !has_condition(&status, "Suspended") {
                    set_condition(
                        &mut status,
                        "Suspended",
                        "True",
                        "JobSuspended",
                        "Job suspended",
                    );
                    self.recorder.record(
                        object_ref(&job),
                        EventType::Normal,
                        "Suspended",
                        "Job suspended".into(),
                    );
                }
            } else {
                if has_condition(&status, "Suspended") {
                    set_condition(
                        &mut status,
                        "Suspended",
                        "False",
                        "JobResumed",
                        "Job resumed",
                    );
                    status.start_time = None;
                }
                if status.start_time.is_none() {
                    status.start_time = Some(Time(now));
                }
                // With `podReplacementPolicy: Failed` the pods still terminating keep their
                // places.
                let mut occupied = active.clone();
                if only_failed_replaced(&spec) {
                    occupied.extend(pods.iter().filter(|p| terminating(p)));
                }
                let (new, wait) = plan_pods(
                    &spec,
                    &occupied,
                    &held,
                    succeeded,
                    (done_indexes, &failed_indexes),
                    backoff,
                    now,
                );
                if act
                    && !deleting(&job.metadata)
                    && let Err(e) = self.create_pods(&job, &key, &pod_api, &new).await
                {
                    self.write_status(&api, &job, self.finish_status(&job, status, &pods))
                        .await?;
                    return Err(e);
                }
                requeue = wait;
                if let Some(d) = spec.active_deadline_seconds {
                    let d = Duration::from_secs(d.max(1) as u64);
                    requeue = Some(requeue.map_or(d, |w| w.min(d)));
                }
            }
        }
        let status = self.finish_status(&job, status, &pods);
        self.write_status(&api, &job, status).await?;
        Ok(requeue)
    }

    /// Active/ready counts on top of the computed status.
    fn finish_status(&self, job: &Job, mut status: JobStatus, pods: &[Arc<Pod>]) -> JobStatus {
        let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| active(p)).collect();
        let finished = has_condition(&status, "Complete") || has_condition(&status, "Failed");
        status.active = (!finished && !active.is_empty()).then_some(active.len() as i32);
        status.ready = Some(active.iter().filter(|p| pod_ready(p)).count() as i32);
        status.terminating = Some(pods.iter().filter(|p| terminating(p)).count() as i32);
        if status.succeeded == Some(0) {
            status.succeeded = None;
        }
        if status.failed == Some(0) {
            status.failed = None;
        }
        let _ = job;
        status
    }

    async fn write_status(
        &self,
        api: &Api<Job>,
        job: &Job,
        status: JobStatus,
    ) -> Result<Job, kube::Error> {
        if job.status.as_ref() == Some(&status) {
            return Ok(job.clone());
        }
        let mut updated = job.clone();
        updated.status = Some(status);
        // On a conflict the remembered copy stays: until the cache shows a later version,
        // it is still the newest this controller knows (and writes with it conflict anyway).
        let written = api
            .replace_status(&job.name_any(), &PostParams::default(), &updated)
            .await?;
        self.written.remember(written.clone());
        Ok(written)
    }

    async fn delete_pods(
        &self,
        job: &Job,
        key: &str,
        api: &Api<Pod>,
        pods: &[&Arc<Pod>],
    ) -> Result<(), kube::Error> {
        if pods.is_empty() {
            return Ok(());
        }
        self.expectations
            .expect_deletions(key, pods.iter().map(|p| key_of(&p.metadata)));
        for p in pods {
            match api.delete(&p.name_any(), &DeleteParams::background()).await {
                Ok(_) => self.recorder.record(
                    object_ref(job),
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", p.name_any()),
                ),
                Err(e) if is_not_found(&e) => self
                    .expectations
                    .deletion_observed(key, &key_of(&p.metadata)),
                Err(e) => {
                    self.expectations
                        .deletion_observed(key, &key_of(&p.metadata));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn create_pods(
        &self,
        job: &Job,
        key: &str,
        api: &Api<Pod>,
        to_create: &[NewPod],
    ) -> Result<(), kube::Error> {
        if to_create.is_empty() {
            return Ok(());
        }
        let spec = job.spec.clone().unwrap_or_default();
        self.expectations.expect_creations(key, to_create.len());
        let template = spec.template.clone();
        let (created, err) = slow_start(to_create.len(), |i| {
            let api = api.clone();
            let mut pod = Pod {
                metadata: template.metadata.clone().unwrap_or_default(),
                spec: template.spec.clone(),
                status: None,
            };
            pod.metadata.name = None;
            pod.metadata.namespace = job.namespace();
            pod.metadata.owner_references = Some(vec![controller_ref(job)]);
            pod.metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(TRACKING_FINALIZER.into());
            if let Some((counted, ignored)) = to_create[i].failures {
                let notes = pod
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default);
                notes.insert(INDEX_FAILURE_COUNT.into(), counted.to_string());
                if ignored > 0 {
                    notes.insert(INDEX_IGNORED_FAILURE_COUNT.into(), ignored.to_string());
                }
            }
            match to_create[i].index {
                Some(index) => {
                    pod.metadata.generate_name = Some(format!("{}-{index}-", job.name_any()));
                    pod.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(INDEX_KEY.into(), index.to_string());
                    pod.metadata
                        .labels
                        .get_or_insert_with(Default::default)
                        .insert(INDEX_KEY.into(), index.to_string());
                    if let Some(s) = pod.spec.as_mut()
                        && s.subdomain.is_some()
                    {
                        s.hostname = Some(format!("{}-{index}", job.name_any()));
                    }
                }
                None => pod.metadata.generate_name = Some(format!("{}-", job.name_any())),
            }
            async move { api.create(&PostParams::default(), &pod).await }
        })
        .await;
        for p in &created {
            self.recorder.record(
                object_ref(job),
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created pod: {}", p.name_any()),
            );
        }
        if let Some(e) = err {
            self.expectations
                .creations_skipped(key, to_create.len() - created.len());
            if namespace_terminating(&e) {
                return Ok(());
            }
            self.recorder.record(
                object_ref(job),
                EventType::Warning,
                "FailedCreate",
                format!("Error creating: {e}"),
            );
            return Err(e);
        }
        Ok(())
    }
}

reconciler!(JobController, "job");

/// Per Job key, the pods whose tracking finalizer the controller removed (see
/// `JobController::freed`).
type Freed = parking_lot::Mutex<HashMap<String, HashSet<String>>>;

/// Forgets that pod `uid` of Job `key` was freed; a Job left with none loses its entry.
fn unfree(freed: &Freed, key: &str, uid: &str) {
    let mut freed = freed.lock();
    if let Some(pods) = freed.get_mut(key) {
        pods.remove(uid);
        if pods.is_empty() {
            freed.remove(key);
        }
    }
}

/// Removes the pod's tracking finalizer; whether it had one.
async fn remove_tracking_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<bool, kube::Error> {
    let rest: Vec<&String> = pod
        .finalizers()
        .iter()
        .filter(|f| *f != TRACKING_FINALIZER)
        .collect();
    if rest.len() == pod.finalizers().len() {
        return Ok(false);
    }
    let patch = json!({"metadata": {
        "finalizers": if rest.is_empty() { serde_json::Value::Null } else { json!(rest) },
        "resourceVersion": pod.resource_version(),
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Calls, fake_client, taken};
    use kube::runtime::watcher::Event;

    /// A Job controller on a fake API, its informers, and the API's record of calls.
    fn on_fake_api() -> (Arc<JobController>, crate::Informers, Calls) {
        let (client, calls) = fake_client();
        let mut informers = crate::Informers::new(client.clone());
        let ctl = JobController::new(
            &mut informers,
            Recorder::new(client, "job-controller", None),
        );
        (ctl, informers, calls)
    }

    /// Job `pi` (uid `j-uid`, resourceVersion 10, one container `main`, restartPolicy Never)
    /// with the keys of `spec` set in its spec, and `status`.
    fn pi_job(spec: serde_json::Value, status: serde_json::Value) -> Job {
        let mut job = json!({
            "metadata": {"name": "pi", "namespace": "default", "uid": "j-uid", "resourceVersion": "10"},
            "spec": {
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j-uid"}},
                "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "j-uid"}},
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "perl"}]}}},
            "status": status,
        });
        for (k, v) in spec.as_object().expect("an object") {
            job["spec"][k] = v.clone();
        }
        serde_json::from_value(job).unwrap()
    }

    /// Pod `name` (uid `<name>-uid`) of Job pi, with `finalizers` and `status`.
    fn pi_pod(name: &str, finalizers: serde_json::Value, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                "resourceVersion": "9",
                "labels": {"batch.kubernetes.io/controller-uid": "j-uid"},
                "finalizers": finalizers,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi",
                    "uid": "j-uid", "controller": true}]},
            "spec": {"containers": [{"name": "main", "image": "perl"}]},
            "status": status,
        }))
        .unwrap()
    }

    /// The status of the controller's last status write.
    fn last_status(calls: &Calls) -> serde_json::Value {
        let puts = taken(
            calls,
            "PUT",
            "/apis/batch/v1/namespaces/default/jobs/pi/status",
        );
        puts.last().expect("a status write").1["status"].clone()
    }

    /// How many PATCHes pod `name` got (its tracking finalizer removed).
    fn patches(calls: &Calls, name: &str) -> usize {
        taken(
            calls,
            "PATCH",
            &format!("/api/v1/namespaces/default/pods/{name}"),
        )
        .len()
    }

    /// The `n`th pod the controller created, as the pod watch would show it, named `name`.
    fn created(calls: &Calls, n: usize, name: &str) -> Pod {
        let posts = taken(calls, "POST", "/api/v1/namespaces/default/pods");
        let mut pod: Pod = serde_json::from_value(posts[n].1.clone()).unwrap();
        pod.metadata.name = Some(name.into());
        pod.metadata.uid = Some(format!("{name}-uid"));
        pod
    }

    #[tokio::test]
    async fn pod_replacement_policy_decides_when_a_terminating_pod_is_replaced() {
        let terminating = || {
            let mut p = pi_pod(
                "going",
                json!([TRACKING_FINALIZER]),
                json!({"phase": "Running"}),
            );
            // Deleted a minute ago: its failure's back-off is over.
            let ago = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
            p.metadata.deletion_timestamp = Some(Time(ago));
            p
        };
        let running = pi_pod(
            "busy",
            json!([TRACKING_FINALIZER]),
            json!({"phase": "Running"}),
        );
        let status = json!({"active": 2, "startTime": "2026-12-06T09:00:00Z"});
        // Failed: the terminating pod keeps its place and is not counted failed yet.
        let (ctl, mut informers, calls) = on_fake_api();
        let job = pi_job(
            json!({"completions": 4, "parallelism": 2, "podReplacementPolicy": "Failed"}),
            status.clone(),
        );
        informers.jobs().apply_event(Event::Apply(job));
        informers.pods().apply_event(Event::Apply(running.clone()));
        informers.pods().apply_event(Event::Apply(terminating()));
        ctl.clone().sync("default/pi".into()).await.unwrap();
        assert!(taken(&calls, "POST", "/api/v1/namespaces/default/pods").is_empty());
        let st = last_status(&calls);
        assert_eq!(st["terminating"], 1, "{st}");
        assert_eq!(st["active"], 1, "{st}");
        assert!(st["failed"].is_null(), "{st}");
        // Once it has failed, it is counted and replaced.
        let mut failed = terminating();
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        informers.pods().apply_event(Event::Apply(failed));
        ctl.clone().sync("default/pi".into()).await.unwrap();
        let st = last_status(&calls);
        assert_eq!(st["failed"], 1, "{st}");
        assert_eq!(st["terminating"], 0, "{st}");
        assert_eq!(
            taken(&calls, "POST", "/api/v1/namespaces/default/pods").len(),
            1
        );
        // TerminatingOrFailed (the default without a podFailurePolicy): replaced at once, and
        // counted failed.
        let (ctl, mut informers, calls) = on_fake_api();
        let job = pi_job(json!({"completions": 4, "parallelism": 2}), status);
        informers.jobs().apply_event(Event::Apply(job));
        informers.pods().apply_event(Event::Apply(running));
        informers.pods().apply_event(Event::Apply(terminating()));
        ctl.clone().sync("default/pi".into()).await.unwrap();
        let st = last_status(&calls);
        assert_eq!(st["failed"], 1, "{st}");
        assert_eq!(
            taken(&calls, "POST", "/api/v1/namespaces/default/pods").len(),
            1
        );
    }

    #[test]
    fn completed_indexes_round_trip_in_interval_form() {
        let set: BTreeSet<i32> = [0, 1, 2, 5, 7, 8].into();
        assert_eq!(format_indexes(&set), "0-2,5,7,8");
        assert_eq!(parse_indexes("0-2,5,7,8"), set);
        assert_eq!(parse_indexes("0-2,5,7-8"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert!(parse_indexes("").is_empty());
    }

    #[tokio::test]
    async fn against_a_fake_api_a_job_starts_parallelism_tracked_pods() {
        let (ctl, mut informers, calls) = on_fake_api();
        let job = pi_job(
            json!({"completions": 5, "parallelism": 2, "completionMode": "Indexed"}),
            json!(null),
        );
        informers.jobs().apply_event(Event::Apply(job));
        ctl.clone().sync("default/pi".into()).await.unwrap();
        let pods = taken(&calls, "POST", "/api/v1/namespaces/default/pods");
        assert_eq!(pods.len(), 2);
        let mut indexes: Vec<String> = pods
            .iter()
            .map(|(_, p)| {
                p.pointer("/metadata/annotations/batch.kubernetes.io~1job-completion-index")
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        indexes.sort();
        assert_eq!(indexes, ["0", "1"]);
        for (_, p) in &pods {
            assert_eq!(
                p.pointer("/metadata/finalizers/0"),
                Some(&serde_json::json!(TRACKING_FINALIZER))
            );
        }
        let status = taken(
            &calls,
            "PUT",
            "/apis/batch/v1/namespaces/default/jobs/pi/status",
        );
        assert!(
            status
                .last()
                .unwrap()
                .1
                .pointer("/status/startTime")
                .is_some()
        );
    }

    /// A finish time whose failure back-off is long over.
    const LONG_AGO: &str = "2020-01-01T00:00:00Z";

    fn failed_pod(name: &str, exit: i32, conditions: serde_json::Value) -> Pod {
        pi_pod(
            name,
            json!([TRACKING_FINALIZER]),
            json!({"phase": "Failed", "conditions": conditions,
                "containerStatuses": [{"name": "main", "image": "perl", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"terminated": {"exitCode": exit, "finishedAt": LONG_AGO}}}]}),
        )
    }

    #[test]
    fn pod_failure_policy_rules_match_as_upstream() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "template": {},
            "podFailurePolicy": {"rules": [
                {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1, 2]}},
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [1]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
        }))
        .unwrap();
        let verdict = |p: &Pod| failure_policy_verdict(&spec, p).map(|(a, _)| a);
        assert_eq!(
            verdict(&failed_pod("a", 3, json!([]))).as_deref(),
            Some("Count")
        );
        let (action, message) =
            failure_policy_verdict(&spec, &failed_pod("b", 1, json!([]))).unwrap();
        assert_eq!(action, "FailJob");
        assert_eq!(
            message,
            "Container main for pod default/b failed with exit code 1 matching FailJob rule at index 1"
        );
        // Exit code 0 matches no exit-code rule, NotIn included.
        let evicted = failed_pod(
            "c",
            0,
            json!([{"type": "DisruptionTarget", "status": "True"}]),
        );
        assert_eq!(verdict(&evicted).as_deref(), Some("Ignore"));
        assert_eq!(verdict(&failed_pod("d", 0, json!([]))), None);
        // A condition with another status does not match.
        let other = failed_pod(
            "e",
            0,
            json!([{"type": "DisruptionTarget", "status": "False"}]),
        );
        assert_eq!(verdict(&other), None);
    }

    /// Ignore keeps a failure from counting towards the backoff limit; FailJob fails the Job
    /// at once, with upstream's reason and message.
    #[tokio::test]
    async fn against_a_fake_api_the_pod_failure_policy_ignores_and_fails() {
        let (ctl, mut informers, calls) = on_fake_api();
        let job = pi_job(
            json!({"completions": 3, "parallelism": 1, "backoffLimit": 0,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            ]}}),
            json!({"startTime": "2026-12-06T09:00:00Z"}),
        );
        informers.jobs().apply_event(Event::Apply(job));
        // Evicted: ignored, so backoffLimit 0 is not exceeded and a replacement starts.
        informers.pods().apply_event(Event::Apply(failed_pod(
            "pi-evicted",
            137,
            json!([{"type": "DisruptionTarget", "status": "True"}]),
        )));
        ctl.clone().sync("default/pi".into()).await.unwrap();
        let st = last_status(&calls);
        assert_eq!(st.get("failed"), None, "{st}");
        assert_eq!(st.get("conditions"), None, "{st}");
        assert_eq!(
            taken(
                &calls,
                "PATCH",
                "/api/v1/namespaces/default/pods/pi-evicted"
            )
            .len(),
            1,
            "the ignored pod is released"
        );
        assert_eq!(
            taken(&calls, "POST", "/api/v1/namespaces/default/pods").len(),
            1
        );
        // Exit code 42 in main: the Job fails, by the policy, not the backoff limit.
        informers
            .pods()
            .apply_event(Event::Apply(failed_pod("pi-fatal", 42, json!([]))));
        ctl.clone().sync("default/pi".into()).await.unwrap();
        let st = last_status(&calls);
        assert_eq!(st["failed"], json!(1), "{st}");
        let conditions: Vec<(String, String, String)> = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap().to_string(),
                    c["reason"].as_str().unwrap().to_string(),
                    c["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let message = "Container main for pod default/pi-fatal failed with exit code 42 matching FailJob rule at index 1";
        assert_eq!(
            conditions,
            [
                (
                    "FailureTarget".into(),
                    "PodFailurePolicy".into(),
                    message.into()
                ),
                ("Failed".into(), "PodFailurePolicy".into(), message.into()),
            ]
        );
    }

    #[test]
    fn failed_pods_wait_out_upstreams_backoff() {
        let now = jiff::Timestamp::now();
        let ago = |s: i64| now - jiff::SignedDuration::from_secs(s);
        // 10 s after one failure, doubling with each further one, at most 10 minutes.
        assert_eq!(backoff_left(1, ago(4), now), Duration::from_secs(6));
        assert_eq!(backoff_left(3, ago(0), now), Duration::from_secs(40));
        assert_eq!(backoff_left(30, ago(0), now), MAX_FAILURE_BACKOFF);
        assert_eq!(backoff_left(1, ago(11), now), Duration::ZERO);
        assert_eq!(backoff_left(0, ago(0), now), Duration::ZERO);
        // A success restarts the count from the failures after it.
        let b = Backoff::default().after(&[], &[ago(30), ago(5)]);
        assert_eq!((b.failures, b.last_failure), (2, Some(ago(5))));
        assert_eq!(b.left(now), Duration::from_secs(15));
        let b = b.after(&[ago(3)], &[ago(4), ago(2)]);
        assert_eq!((b.failures, b.last_failure), (1, Some(ago(2))));
        assert_eq!(b.after(&[ago(1)], &[]), Backoff::default());
        // A Job whose pod failed just now creates nothing, and comes back once the wait is
        // over.
        let spec: JobSpec =
            serde_json::from_value(json!({"template": {}, "completions": 2, "parallelism": 2}))
                .unwrap();
        let none = BTreeSet::new();
        let fresh = Backoff::default().after(&[], &[now]);
        let (new, wait) = plan_pods(&spec, &[], &HashMap::new(), 0, (&none, &none), fresh, now);
        assert!(new.is_empty());
        assert_eq!(wait, Some(FAILURE_BACKOFF));
        let (new, wait) = plan_pods(
            &spec,
            &[],
            &HashMap::new(),
            0,
            (&none, &none),
            Backoff::default(),
            now,
        );
        assert_eq!((new.len(), wait), (2, None));
    }

    #[test]
    fn restarts_in_place_count_against_the_backoff_limit() {
        let spec = |policy: &str, limit: i32| -> JobSpec {
            serde_json::from_value(json!({"backoffLimit": limit,
                "template": {"spec": {"restartPolicy": policy, "containers": []}}}))
            .unwrap()
        };
        let restarted = |phase: &str, n: i32| {
            Arc::new(pi_pod(
                "p",
                json!([]),
                json!({"phase": phase, "containerStatuses": [{"name": "main", "image": "perl",
                    "imageID": "", "ready": false, "restartCount": n}]}),
            ))
        };
        let pods = [restarted("Running", 1), restarted("Pending", 1)];
        assert!(past_backoff_limit_on_failure(&spec("OnFailure", 2), &pods));
        assert!(!past_backoff_limit_on_failure(&spec("OnFailure", 3), &pods));
        assert!(!past_backoff_limit_on_failure(&spec("Never", 1), &pods));
        // Restarts of finished pods no longer count; with a limit of 0 any restart fails.
        let done = [restarted("Failed", 5)];
        assert!(!past_backoff_limit_on_failure(&spec("OnFailure", 1), &done));
        assert!(past_backoff_limit_on_failure(
            &spec("OnFailure", 0),
            &[restarted("Running", 1)]
        ));
    }

    /// With `backoffLimitPerIndex`, each index is retried up to its limit on its own, its pods
    /// carrying its failure count; a `FailIndex` rule fails an index at once; more failed
    /// indexes than `maxFailedIndexes` fail the Job and stop the other indexes' pods.
    #[tokio::test]
    async fn against_a_fake_api_each_index_has_its_own_backoff_limit() {
        let (ctl, mut informers, calls) = on_fake_api();
        let job = pi_job(
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
                "backoffLimit": i32::MAX, "backoffLimitPerIndex": 1, "maxFailedIndexes": 1,
                "podFailurePolicy": {"rules": [
                    {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}}),
            json!({"startTime": "2026-12-06T09:00:00Z"}),
        );
        informers.jobs().apply_event(Event::Apply(job));
        let sync = || ctl.clone().sync("default/pi".into());
        let posts = || taken(&calls, "POST", "/api/v1/namespaces/default/pods");
        let note = |p: &serde_json::Value, key: &str| {
            p.pointer(&format!("/metadata/annotations/{}", key.replace('/', "~1")))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let patched = |name: &str| patches(&calls, name);
        // The controller's `n`th pod as the watch shows it, named `name`, with `status`.
        let shown = |n: usize, name: &str, status: serde_json::Value| {
            let mut p = created(&calls, n, name);
            p.status = Some(serde_json::from_value(status).unwrap());
            Event::Apply(p)
        };
        let failed = |exit: i32, at: &str, conditions: serde_json::Value| {
            json!({"phase": "Failed", "conditions": conditions,
                "containerStatuses": [{"name": "main", "image": "perl", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"terminated": {"exitCode": exit, "finishedAt": at}}}]})
        };
        let running = || json!({"phase": "Running"});
        assert_eq!(sync().await.unwrap(), None);
        let first = posts();
        assert_eq!(first.len(), 3);
        assert!(
            first
                .iter()
                .all(|(_, p)| note(p, INDEX_FAILURE_COUNT) == "0"),
            "{first:?}"
        );
        let of_index = |i: &str| {
            first
                .iter()
                .position(|(_, p)| note(p, INDEX_KEY) == i)
                .unwrap()
        };
        let (i0, i1, i2) = (of_index("0"), of_index("1"), of_index("2"));
        // Index 0 fails just now: no new pod until its back-off is over, and the sync comes
        // back then. The failed pod keeps its finalizer meanwhile, its failure uncounted.
        let pods = informers.pods();
        pods.apply_event(shown(
            i0,
            "pi-a",
            failed(1, &jiff::Timestamp::now().to_string(), json!([])),
        ));
        pods.apply_event(shown(i1, "pi-b", running()));
        pods.apply_event(shown(i2, "pi-c", running()));
        let wait = sync().await.unwrap().expect("a requeue for the back-off");
        assert!(
            wait <= FAILURE_BACKOFF && wait > Duration::from_secs(5),
            "{wait:?}"
        );
        assert_eq!(posts().len(), 3);
        assert_eq!(patched("pi-a"), 0);
        let st = last_status(&calls);
        assert_eq!(
            st["uncountedTerminatedPods"]["failed"],
            json!(["pi-a-uid"]),
            "{st}"
        );
        // The back-off over, index 0's new pod carries the failure; the failed pod is
        // released (and counted) once the new one shows.
        pods.apply_event(shown(i0, "pi-a", failed(1, LONG_AGO, json!([]))));
        sync().await.unwrap();
        let all = posts();
        assert_eq!(all.len(), 4);
        assert_eq!(note(&all[3].1, INDEX_KEY), "0");
        assert_eq!(note(&all[3].1, INDEX_FAILURE_COUNT), "1");
        assert_eq!(patched("pi-a"), 0, "held until its successor shows");
        pods.apply_event(shown(3, "pi-d", running()));
        sync().await.unwrap();
        assert_eq!(patched("pi-a"), 1);
        let st = last_status(&calls);
        assert_eq!(
            (st["failed"].clone(), st["failedIndexes"].clone()),
            (json!(1), json!("")),
            "{st}"
        );
        // Index 2 is evicted (an Ignore rule): replaced, its failure counted as ignored.
        let evicted = json!([{"type": "DisruptionTarget", "status": "True"}]);
        pods.apply_event(shown(i2, "pi-c", failed(137, LONG_AGO, evicted)));
        sync().await.unwrap();
        let all = posts();
        assert_eq!(all.len(), 5);
        assert_eq!(note(&all[4].1, INDEX_KEY), "2");
        assert_eq!(note(&all[4].1, INDEX_FAILURE_COUNT), "0");
        assert_eq!(note(&all[4].1, INDEX_IGNORED_FAILURE_COUNT), "1");
        pods.apply_event(shown(4, "pi-e", running()));
        // Index 0 fails again, at its limit: the index is failed and not retried. One failed
        // index is within maxFailedIndexes.
        pods.apply_event(shown(3, "pi-d", failed(1, LONG_AGO, json!([]))));
        sync().await.unwrap();
        assert_eq!(posts().len(), 5);
        let st = last_status(&calls);
        assert_eq!(st["failedIndexes"], "0", "{st}");
        assert_eq!(st["failed"], 2, "the ignored failure is not counted: {st}");
        assert_eq!(st.get("conditions"), None, "{st}");
        // Index 1 matches the FailIndex rule: failed at its first failure, a second failed
        // index, so the Job is failing and index 2's pod is deleted...
        pods.apply_event(shown(i1, "pi-b", failed(42, LONG_AGO, json!([]))));
        sync().await.unwrap();
        let st = last_status(&calls);
        assert_eq!(st["failedIndexes"], "0,1", "{st}");
        let condition = |st: &serde_json::Value, t: &str| {
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .cloned()
        };
        let target = condition(&st, "FailureTarget").unwrap();
        assert_eq!(target["reason"], "MaxFailedIndexesExceeded");
        assert_eq!(
            target["message"],
            "Job has exceeded the specified maximal number of failed indexes"
        );
        assert_eq!(
            taken(&calls, "DELETE", "/api/v1/namespaces/default/pods/pi-e").len(),
            1
        );
        assert_eq!(posts().len(), 5);
        // ... and Failed once that pod is gone.
        assert!(condition(&st, "Failed").is_none(), "{st}");
        pods.apply_event(Event::Delete(created(&calls, 4, "pi-e")));
        sync().await.unwrap();
        let st = last_status(&calls);
        let failed = condition(&st, "Failed").unwrap();
        assert_eq!(failed["reason"], "MaxFailedIndexesExceeded");
    }

    /// A per-index Job decided while failed pods wait, held, for their indexes' next pods:
    /// it is Complete only once they are released and counted; an ignored failure is never
    /// counted, held or not.
    #[tokio::test]
    async fn against_a_fake_api_a_decided_job_counts_its_held_pods_before_it_completes() {
        let (ctl, mut informers, calls) = on_fake_api();
        let job = pi_job(
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
                "backoffLimit": i32::MAX, "backoffLimitPerIndex": 2,
                "successPolicy": {"rules": [{"succeededIndexes": "1"}]},
                "podFailurePolicy": {"rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}}),
            json!({"startTime": "2026-12-06T09:00:00Z", "active": 3}),
        );
        informers.jobs().apply_event(Event::Apply(job));
        let now = jiff::Timestamp::now().to_string();
        let pod = |name: &str, index: i32, status: serde_json::Value| {
            let mut p = pi_pod(name, json!([TRACKING_FINALIZER]), status);
            p.metadata.annotations = Some(
                [
                    (INDEX_KEY.to_string(), index.to_string()),
                    (INDEX_FAILURE_COUNT.to_string(), "0".to_string()),
                ]
                .into(),
            );
            Event::Apply(p)
        };
        let failed = |exit: i32, conditions: serde_json::Value| {
            json!({"phase": "Failed", "conditions": conditions,
                "containerStatuses": [{"name": "main", "image": "perl", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"terminated": {"exitCode": exit, "finishedAt": now}}}]})
        };
        let evicted = json!([{"type": "DisruptionTarget", "status": "True"}]);
        informers
            .pods()
            .apply_event(pod("pi-0", 0, failed(137, evicted)));
        informers
            .pods()
            .apply_event(pod("pi-1", 1, json!({"phase": "Succeeded"})));
        informers
            .pods()
            .apply_event(pod("pi-2", 2, failed(1, json!([]))));
        // Index 1 meets the success policy while indexes 0 and 2 wait out their back-off.
        ctl.clone().sync("default/pi".into()).await.unwrap();
        let st = last_status(&calls);
        let types: Vec<&str> = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["SuccessCriteriaMet"], "{st}");
        assert_eq!(
            st["uncountedTerminatedPods"]["failed"],
            json!(["pi-2-uid"]),
            "{st}"
        );
        let patched = |name: &str| patches(&calls, name);
        assert_eq!((patched("pi-0"), patched("pi-2")), (0, 0));
        // Decided, nothing is held: both are released, the counted failure counted, and the
        // Job is Complete.
        ctl.clone().sync("default/pi".into()).await.unwrap();
        assert_eq!((patched("pi-0"), patched("pi-2")), (1, 1));
        let st = last_status(&calls);
        assert_eq!(st["failed"], 1, "{st}");
        assert_eq!(st["succeeded"], 1, "{st}");
        assert!(st["uncountedTerminatedPods"]["failed"].is_null(), "{st}");
        let complete = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Complete")
            .cloned();
        assert_eq!(complete.unwrap()["reason"], "SuccessPolicy", "{st}");
    }

    /// A success policy decides for an Indexed Job: SuccessCriteriaMet at once, with the
    /// rule's index; the other pods are deleted, and the Job is Complete once they are gone.
    #[tokio::test]
    async fn against_a_fake_api_a_success_policy_completes_the_job() {
        let (ctl, mut informers, calls) = on_fake_api();
        let job = pi_job(
            json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed",
                "successPolicy": {"rules": [
                    {"succeededIndexes": "0-2", "succeededCount": 3},
                    {"succeededIndexes": "1,3", "succeededCount": 1}]}}),
            json!({"startTime": "2026-12-06T09:00:00Z"}),
        );
        informers.jobs().apply_event(Event::Apply(job));
        ctl.clone().sync("default/pi".into()).await.unwrap();
        let posts = taken(&calls, "POST", "/api/v1/namespaces/default/pods");
        assert_eq!(posts.len(), 4);
        let index = |n: usize| {
            posts[n]
                .1
                .pointer("/metadata/annotations/batch.kubernetes.io~1job-completion-index")
                .and_then(|v| v.as_str())
                .unwrap()
                .to_string()
        };
        // Index 3 succeeds: rule 1 is met.
        for n in 0..4 {
            let mut p = created(&calls, n, &format!("pod-{}", index(n)));
            if index(n) == "3" {
                p.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
            }
            informers.pods().apply_event(Event::Apply(p));
        }
        ctl.clone().sync("default/pi".into()).await.unwrap();
        let st = last_status(&calls);
        let conditions: Vec<(&str, &str, &str)> = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap(),
                    c["reason"].as_str().unwrap(),
                    c["message"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            conditions,
            [(
                "SuccessCriteriaMet",
                "SuccessPolicy",
                "Matched rules at index 1"
            )]
        );
        for i in ["0", "1", "2"] {
            let path = format!("/api/v1/namespaces/default/pods/pod-{i}");
            assert_eq!(taken(&calls, "DELETE", &path).len(), 1, "{path}");
        }
        // The deleted pods go: Complete, with the same reason and message.
        for n in 0..4 {
            if index(n) != "3" {
                let p = created(&calls, n, &format!("pod-{}", index(n)));
                informers.pods().apply_event(Event::Delete(p));
            }
        }
        ctl.clone().sync("default/pi".into()).await.unwrap();
        let st = last_status(&calls);
        let complete = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Complete")
            .cloned()
            .unwrap();
        assert_eq!(complete["reason"], "SuccessPolicy");
        assert_eq!(complete["message"], "Matched rules at index 1");
        assert!(st["completionTime"].is_string(), "{st}");
        assert_eq!(st["completedIndexes"], "3", "{st}");
    }

    /// The pod watch can be behind the Job watch: a sync then sees the pod it counted and
    /// freed still carrying its tracking finalizer, on a Job whose status counts it. It must
    /// not count it again.
    #[tokio::test]
    async fn a_pod_cache_behind_a_finalizer_removal_counts_no_pod_twice() {
        let (ctl, mut informers, calls) = on_fake_api();
        let job = pi_job(
            json!({"completions": 3, "parallelism": 1}),
            json!({"active": 1, "startTime": "2026-12-06T09:00:00Z"}),
        );
        let pod = pi_pod(
            "pi-0",
            json!([TRACKING_FINALIZER]),
            json!({"phase": "Succeeded"}),
        );
        informers.jobs().apply_event(Event::Apply(job));
        informers.pods().apply_event(Event::Apply(pod));
        ctl.clone().sync("default/pi".into()).await.unwrap();
        assert_eq!(
            taken(&calls, "POST", "/api/v1/namespaces/default/pods").len(),
            1
        );
        informers
            .pods()
            .apply_event(Event::Apply(created(&calls, 0, "pi-1")));
        // pi-0 still shows its finalizer: the pod watch has not seen the removal yet.
        ctl.clone().sync("default/pi".into()).await.unwrap();
        assert_eq!(
            last_status(&calls).get("succeeded"),
            Some(&json!(1)),
            "pi-0 was counted twice"
        );
        assert_eq!(
            taken(&calls, "PATCH", "/api/v1/namespaces/default/pods/pi-0").len(),
            1,
            "the finalizer was removed twice"
        );
    }

    /// The Job watch can be behind the pod watch: a sync then sees a pod whose tracking
    /// finalizer this controller removed after counting it, on a Job whose status does not
    /// count it yet. It must not start that pod's replacement.
    #[tokio::test]
    async fn a_job_cache_behind_its_own_status_write_starts_no_extra_pod() {
        let (ctl, mut informers, calls) = on_fake_api();
        let job = pi_job(
            json!({"completions": 2, "parallelism": 2}),
            json!({"active": 1, "startTime": "2026-12-06T09:00:00Z"}),
        );
        let pod = |finalizers: serde_json::Value| {
            pi_pod("pi-0", finalizers, json!({"phase": "Succeeded"}))
        };
        informers.jobs().apply_event(Event::Apply(job));
        informers
            .pods()
            .apply_event(Event::Apply(pod(serde_json::json!([TRACKING_FINALIZER]))));
        // The first sync counts pi-0, removes its finalizer and starts the one pod left to run.
        ctl.clone().sync("default/pi".into()).await.unwrap();
        assert_eq!(
            taken(&calls, "POST", "/api/v1/namespaces/default/pods").len(),
            1
        );
        // The pod watch shows both changes; the Job watch still shows resourceVersion 10.
        informers.pods().apply_event(Event::Apply(pod(json!([]))));
        informers
            .pods()
            .apply_event(Event::Apply(created(&calls, 0, "pi-1")));
        ctl.clone().sync("default/pi".into()).await.unwrap();
        assert_eq!(
            taken(&calls, "POST", "/api/v1/namespaces/default/pods").len(),
            1,
            "a second pod was started for the one that succeeded"
        );
        assert_eq!(
            last_status(&calls).get("succeeded"),
            Some(&json!(1)),
            "the status went back on a count"
        );
    }
}
