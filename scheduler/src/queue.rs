//! The scheduling queue (upstream `PriorityQueue`): activeQ ordered by the QueueSort plugin,
//! backoffQ for pods that failed recently (1 s doubling to 10 s by default), the unschedulable
//! pool whose pods move back when a cluster event could help the plugins that rejected them,
//! and pods held back by PreEnqueue plugins (scheduling gates).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::framework::{Event, Framework, QueuedPodRef};
use crate::types::PodInfo;

/// A pod in the queue.
#[derive(Clone)]
pub struct QueuedPod {
    /// The pod.
    pub info: Arc<PodInfo>,
    /// When it entered the queue (QueueSort's tie-breaker).
    pub timestamp: Instant,
    /// Scheduling attempts so far.
    pub attempts: u32,
    /// When the first attempt began (for the scheduling latency metric).
    pub initial_attempt: Option<Instant>,
    /// Plugins that rejected it in its last attempt.
    pub rejected_by: HashSet<&'static str>,
    /// The scheduling cycle of its last attempt.
    pub cycle: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    Gated,
    InFlight,
}

struct Inner {
    pods: HashMap<String, (QueuedPod, Place, u64)>,
    /// activeQ as a heap of (key, seq); stale entries are skipped when popped.
    heap: Vec<(String, u64)>,
    /// backoffQ: expiry -> keys.
    backoff: BTreeMap<(Instant, u64), String>,
    seq: u64,
    cycle: u64,
    /// The cycle in which the last move request happened.
    move_cycle: u64,
    closed: bool,
    unschedulable_since: HashMap<String, Instant>,
}

/// The queue.
pub struct SchedulingQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    fw: Arc<Vec<Framework>>,
    initial_backoff: Duration,
    max_backoff: Duration,
}

/// Upstream's `podMaxInUnschedulablePodsDuration`.
pub const MAX_IN_UNSCHEDULABLE: Duration = Duration::from_secs(5 * 60);

impl SchedulingQueue {
    /// A queue ordered by the (shared) QueueSort plugin of the profiles.
    pub fn new(fw: Arc<Vec<Framework>>, initial_backoff: Duration, max_backoff: Duration) -> Self {
        SchedulingQueue {
            inner: Mutex::new(Inner {
                pods: HashMap::new(),
                heap: Vec::new(),
                backoff: BTreeMap::new(),
                seq: 0,
                cycle: 0,
                move_cycle: 0,
                closed: false,
                unschedulable_since: HashMap::new(),
            }),
            notify: Notify::new(),
            fw,
            initial_backoff,
            max_backoff,
        }
    }

    fn profile(&self, p: &PodInfo) -> Option<&Framework> {
        crate::framework::profile_for(&self.fw, &p.pod)
    }

    fn less(&self, a: &QueuedPod, b: &QueuedPod) -> bool {
        self.fw[0].queue_sort.less(
            &QueuedPodRef {
                info: &a.info,
                timestamp: a.timestamp,
            },
            &QueuedPodRef {
                info: &b.info,
                timestamp: b.timestamp,
            },
        )
    }

    fn entry_less(&self, inner: &Inner, a: &(String, u64), b: &(String, u64)) -> bool {
        match (inner.pods.get(&a.0), inner.pods.get(&b.0)) {
            (Some(x), Some(y)) => self.less(&x.0, &y.0),
            _ => false,
        }
    }

    fn push_active(&self, inner: &mut Inner, key: &str) {
        inner.seq += 1;
        let seq = inner.seq;
        if let Some(e) = inner.pods.get_mut(key) {
            e.1 = Place::Active;
            e.2 = seq;
        }
        inner.heap.push((key.to_string(), seq));
        let mut i = inner.heap.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.entry_less(inner, &inner.heap[i], &inner.heap[parent]) {
                inner.heap.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
        self.notify.notify_one();
    }

    fn pop_heap(&self, inner: &mut Inner) -> Option<(String, u64)> {
        if inner.heap.is_empty() {
            return None;
        }
        let last = inner.heap.len() - 1;
        inner.heap.swap(0, last);
        let top = inner.heap.pop();
        let n = inner.heap.len();
        let mut i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut best = i;
            if l < n && self.entry_less(inner, &inner.heap[l], &inner.heap[best]) {
                best = l;
            }
            if r < n && self.entry_less(inner, &inner.heap[r], &inner.heap[best]) {
                best = r;
            }
            if best == i {
                break;
            }
            inner.heap.swap(i, best);
            i = best;
        }
        top
    }

    fn backoff_of(&self, attempts: u32) -> Duration {
        let mut d = self.initial_backoff;
        for _ in 1..attempts {
            d *= 2;
            if d >= self.max_backoff {
                return self.max_backoff;
            }
        }
        d.min(self.max_backoff)
    }

    /// Whether the pod passes the PreEnqueue plugins of its profile.
    fn admitted(&self, info: &PodInfo) -> bool {
        self.profile(info)
            .is_none_or(|fw| fw.pre_enqueue.iter().all(|p| p.pre_enqueue(info).is_ok()))
    }

    /// A new pending pod.
    pub fn add(&self, info: Arc<PodInfo>) {
        let mut inner = self.inner.lock();
        if inner.pods.contains_key(&info.key) {
            drop(inner);
            self.update(info);
            return;
        }
        let key = info.key.clone();
        let gated = !self.admitted(&info);
        let qp = QueuedPod {
            info,
            timestamp: Instant::now(),
            attempts: 0,
            initial_attempt: None,
            rejected_by: HashSet::new(),
            cycle: 0,
        };
        if gated {
            inner.pods.insert(key, (qp, Place::Gated, 0));
        } else {
            inner.pods.insert(key.clone(), (qp, Place::Active, 0));
            self.push_active(&mut inner, &key);
        }
    }

    /// A pending pod changed. Gated pods are re-checked; unschedulable pods whose spec or labels
    /// changed get another try.
    pub fn update(&self, info: Arc<PodInfo>) {
        let mut inner = self.inner.lock();
        let key = info.key.clone();
        let Some((qp, place, _)) = inner.pods.get_mut(&key) else {
            drop(inner);
            self.add(info);
            return;
        };
        let changed = qp.info.pod.spec != info.pod.spec || qp.info.labels != info.labels;
        qp.info = info.clone();
        match *place {
            Place::Gated if self.admitted(&info) => self.push_active(&mut inner, &key),
            Place::Unschedulable if changed => {
                inner.unschedulable_since.remove(&key);
                self.to_backoff_or_active(&mut inner, &key);
            }
            Place::Active if changed => self.push_active(&mut inner, &key),
            _ => {}
        }
    }

    /// A pending pod was deleted or bound by someone else.
    pub fn delete(&self, key: &str) {
        let mut inner = self.inner.lock();
        inner.pods.remove(key);
        inner.unschedulable_since.remove(key);
    }

    fn to_backoff_or_active(&self, inner: &mut Inner, key: &str) {
        let Some((qp, _, _)) = inner.pods.get(key) else {
            return;
        };
        let expiry = qp.timestamp + self.backoff_of(qp.attempts);
        if qp.attempts > 0 && expiry > Instant::now() {
            inner.seq += 1;
            let seq = inner.seq;
            if let Some(e) = inner.pods.get_mut(key) {
                e.1 = Place::Backoff;
                e.2 = seq;
            }
            inner.backoff.insert((expiry, seq), key.to_string());
        } else {
            self.push_active(inner, key);
        }
    }

    /// Waits for the next pod to schedule; None once closed.
    pub async fn pop(&self) -> Option<QueuedPod> {
        loop {
            {
                let mut inner = self.inner.lock();
                if inner.closed {
                    return None;
                }
                while let Some((key, seq)) = self.pop_heap(&mut inner) {
                    inner.cycle += 1;
                    let cycle = inner.cycle;
                    let Some(e) = inner.pods.get_mut(&key) else {
                        continue;
                    };
                    if e.2 != seq || e.1 != Place::Active {
                        continue;
                    }
                    e.1 = Place::InFlight;
                    e.0.attempts += 1;
                    e.0.cycle = cycle;
                    e.0.initial_attempt.get_or_insert_with(Instant::now);
                    return Some(e.0.clone());
                }
            }
            self.notify.notified().await;
        }
    }

    /// The current scheduling cycle.
    pub fn cycle(&self) -> u64 {
        self.inner.lock().cycle
    }

    /// A scheduling attempt failed: the pod waits in the unschedulable pool (or backoffQ, when a
    /// cluster event arrived while it was being scheduled, or when it failed for an error).
    pub fn requeue(&self, mut qp: QueuedPod, rejected_by: HashSet<&'static str>, error: bool) {
        let mut inner = self.inner.lock();
        let key = qp.info.key.clone();
        let Some(e) = inner.pods.get_mut(&key) else {
            return; // deleted meanwhile
        };
        // Keep the newest object the informer gave.
        qp.info = e.0.info.clone();
        qp.rejected_by = rejected_by;
        qp.timestamp = Instant::now();
        let moved_meanwhile = inner.move_cycle >= qp.cycle;
        inner
            .pods
            .insert(key.clone(), (qp, Place::Unschedulable, 0));
        if error || moved_meanwhile {
            self.to_backoff_or_active(&mut inner, &key);
        } else {
            inner.unschedulable_since.insert(key, Instant::now());
        }
    }

    /// The pod was scheduled (assumed); it leaves the queue.
    pub fn done(&self, key: &str) {
        let mut inner = self.inner.lock();
        if inner.pods.get(key).is_some_and(|e| e.1 == Place::InFlight) {
            inner.pods.remove(key);
        }
    }

    /// A cluster event: unschedulable pods rejected by a plugin interested in it move on.
    pub fn on_event(&self, ev: Event) {
        let mut inner = self.inner.lock();
        inner.move_cycle = inner.cycle;
        if inner.unschedulable_since.is_empty() {
            return;
        }
        let keys: Vec<String> = inner
            .unschedulable_since
            .keys()
            .filter_map(|k| inner.pods.get_key_value(k))
            .filter(|(_, (qp, place, _))| {
                *place == Place::Unschedulable && {
                    let fw = self.profile(&qp.info);
                    qp.rejected_by.is_empty()
                        || fw.is_none_or(|fw| {
                            fw.interest
                                .get(&ev)
                                .is_some_and(|i| qp.rejected_by.iter().any(|p| i.contains(p)))
                        })
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            inner.unschedulable_since.remove(&k);
            self.to_backoff_or_active(&mut inner, &k);
        }
    }

    /// Moves pods whose backoff expired to activeQ, and pods unschedulable for longer than
    /// [`MAX_IN_UNSCHEDULABLE`] back to the queue (upstream's periodic flushes).
    pub fn flush(&self) {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        while let Some(((t, seq), key)) = inner
            .backoff
            .first_key_value()
            .map(|(k, v)| (*k, v.clone()))
        {
            if t > now {
                break;
            }
            inner.backoff.remove(&(t, seq));
            if inner
                .pods
                .get(&key)
                .is_some_and(|e| e.1 == Place::Backoff && e.2 == seq)
            {
                self.push_active(&mut inner, &key);
            }
        }
        let stale: Vec<String> = inner
            .unschedulable_since
            .iter()
            .filter(|(_, t)| now - **t > MAX_IN_UNSCHEDULABLE)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            inner.unschedulable_since.remove(&k);
            if inner
                .pods
                .get(&k)
                .is_some_and(|e| e.1 == Place::Unschedulable)
            {
                self.to_backoff_or_active(&mut inner, &k);
            }
        }
    }

    /// Pending pods by queue: (active, backoff, unschedulable, gated).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let inner = self.inner.lock();
        let mut c = (0, 0, 0, 0);
        for (_, p, _) in inner.pods.values() {
            match p {
                Place::Active | Place::InFlight => c.0 += 1,
                Place::Backoff => c.1 += 1,
                Place::Unschedulable => c.2 += 1,
                Place::Gated => c.3 += 1,
            }
        }
        c
    }

    /// Whether the pod is queued (in any part).
    pub fn contains(&self, key: &str) -> bool {
        self.inner.lock().pods.contains_key(key)
    }

    /// Stops `pop`.
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}
