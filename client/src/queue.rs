//! A work queue with client-go's semantics: an item is queued at most once however often it is
//! added, is never handed to two workers at once (an add while it is being processed queues it
//! again once `done` is called), and failures are retried with per-item exponential backoff
//! (5 ms doubling to 1000 s) limited overall by a token bucket (10 qps, burst 100) — client-go's
//! `DefaultControllerRateLimiter`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::connect::Bucket;

struct State<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    bucket: Bucket,
    shutting_down: bool,
}

/// A de-duplicating, rate-limited work queue; cheap to clone.
pub struct WorkQueue<T> {
    shared: Arc<(Mutex<State<T>>, Notify)>,
    base_delay: Duration,
    max_delay: Duration,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            base_delay: self.base_delay,
            max_delay: self.max_delay,
        }
    }
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> WorkQueue<T> {
    /// A queue with client-go's default controller rate limiter.
    pub fn new() -> Self {
        Self::with_backoff(Duration::from_millis(5), Duration::from_secs(1000))
    }

    /// A queue whose per-item backoff runs from `base` doubling up to `max`.
    pub fn with_backoff(base: Duration, max: Duration) -> Self {
        Self {
            shared: Arc::new((
                Mutex::new(State {
                    queue: VecDeque::new(),
                    dirty: HashSet::new(),
                    processing: HashSet::new(),
                    failures: HashMap::new(),
                    bucket: Bucket::new(10.0, 100.0),
                    shutting_down: false,
                }),
                Notify::new(),
            )),
            base_delay: base,
            max_delay: max,
        }
    }

    /// Queues `item` unless it is already waiting.
    pub fn add(&self, item: T) {
        let (state, notify) = &*self.shared;
        let mut s = state.lock();
        if s.shutting_down || s.dirty.contains(&item) {
            return;
        }
        s.dirty.insert(item.clone());
        if s.processing.contains(&item) {
            return;
        }
        s.queue.push_back(item);
        drop(s);
        notify.notify_one();
    }

    /// Queues `item` after `delay`.
    pub fn add_after(&self, item: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(item);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(item);
        });
    }

    /// Queues `item` again after its backoff: call this when processing it failed.
    pub fn add_rate_limited(&self, item: T) {
        let delay = {
            let mut s = self.shared.0.lock();
            let n = s.failures.entry(item.clone()).or_insert(0);
            let exp = *n;
            *n += 1;
            let per_item = self
                .base_delay
                .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
                .unwrap_or(self.max_delay)
                .min(self.max_delay);
            per_item.max(s.bucket.reserve(Instant::now()))
        };
        self.add_after(item, delay);
    }

    /// Clears `item`'s failure count: call this when processing it succeeded.
    pub fn forget(&self, item: &T) {
        self.shared.0.lock().failures.remove(item);
    }

    /// How many times `item` has been re-queued after failures.
    pub fn num_requeues(&self, item: &T) -> u32 {
        self.shared
            .0
            .lock()
            .failures
            .get(item)
            .copied()
            .unwrap_or(0)
    }

    /// Waits for the next item; `None` once the queue is shut down.
    pub async fn get(&self) -> Option<T> {
        let (state, notify) = &*self.shared;
        loop {
            let notified = notify.notified();
            futures::pin_mut!(notified);
            notified.as_mut().enable();
            {
                let mut s = state.lock();
                if let Some(item) = s.queue.pop_front() {
                    s.dirty.remove(&item);
                    s.processing.insert(item.clone());
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        notify.notify_one();
                    }
                    return Some(item);
                }
                if s.shutting_down {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks `item` processed; if it was added meanwhile it is queued again.
    pub fn done(&self, item: &T) {
        let (state, notify) = &*self.shared;
        let mut s = state.lock();
        s.processing.remove(item);
        if s.dirty.contains(item) && !s.shutting_down {
            s.queue.push_back(item.clone());
            drop(s);
            notify.notify_one();
        }
    }

    /// Number of items waiting.
    pub fn len(&self) -> usize {
        self.shared.0.lock().queue.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out items: `get` returns `None` to every worker.
    pub fn shut_down(&self) {
        let (state, notify) = &*self.shared;
        state.lock().shutting_down = true;
        notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deduplicates_and_never_hands_out_an_item_twice() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        let a = q.get().await.unwrap();
        assert_eq!(a, "a");
        // Added again while being processed: not handed out until done.
        q.add("a");
        assert_eq!(q.get().await.unwrap(), "b");
        assert!(q.is_empty());
        q.done(&"b");
        q.done(&"a");
        assert_eq!(q.get().await.unwrap(), "a");
        q.done(&"a");
        q.shut_down();
        assert_eq!(q.get().await, None);
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_until_forgotten() {
        let q = WorkQueue::with_backoff(Duration::from_millis(20), Duration::from_secs(1));
        let t0 = Instant::now();
        for _ in 0..5 {
            q.add_rate_limited("x");
        }
        assert_eq!(q.num_requeues(&"x"), 5);
        q.forget(&"x");
        assert_eq!(q.num_requeues(&"x"), 0);
        q.add_rate_limited("y");
        q.add_rate_limited("y");
        // The first retries are due after 20 ms; nothing is handed out earlier.
        let first = q.get().await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(20));
        q.done(&first);
        let second = q.get().await.unwrap();
        let mut got = [first, second];
        got.sort();
        assert_eq!(got, ["x", "y"]);
    }
}
