//! The audit webhook backend (`--audit-webhook-config-file`, a kubeconfig): events are POSTed
//! as an `audit.k8s.io/v1` EventList.
//!
//! Modes, as upstream's `--audit-webhook-mode`:
//! - `batch` (the default): events wait in a buffer of `--audit-webhook-batch-buffer-size`
//!   (beyond which they are dropped, with an error logged) and leave in batches of at most
//!   `--audit-webhook-batch-max-size`, or sooner once the oldest has waited
//!   `--audit-webhook-batch-max-wait`; batches are sent at most
//!   `--audit-webhook-batch-throttle-qps` per second (bursts of
//!   `--audit-webhook-batch-throttle-burst`) when throttling is on, at most that burst of
//!   batches in flight, and retried with a growing delay from `--audit-webhook-initial-backoff`,
//!   a few times, before they are given up.
//! - `blocking`: each event is sent before the request goes on; a failure is logged.
//! - `blocking-strict`: as `blocking`, and a request whose RequestReceived event cannot be
//!   sent fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::webhook::remote::Remote;

/// How events are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Buffered and sent in batches.
    Batch,
    /// Sent one by one while the request waits.
    Blocking,
    /// As blocking; a request whose first event fails, fails.
    BlockingStrict,
}

impl Mode {
    /// Parses `--audit-webhook-mode`.
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "batch" => Ok(Mode::Batch),
            "blocking" => Ok(Mode::Blocking),
            "blocking-strict" => Ok(Mode::BlockingStrict),
            other => Err(format!(
                "--audit-webhook-mode: {other:?} is not one of batch, blocking, blocking-strict"
            )),
        }
    }
}

/// The batching flags.
#[derive(Debug, Clone)]
pub struct Batching {
    /// Events buffered before they are dropped.
    pub buffer_size: usize,
    /// Most events per request.
    pub max_size: usize,
    /// Longest an event waits for its batch to fill.
    pub max_wait: Duration,
    /// Batches per second, when throttled.
    pub throttle_qps: Option<f64>,
    /// Batches sent at once before the throttle applies.
    pub throttle_burst: usize,
    /// The first delay before a failed batch is sent again.
    pub initial_backoff: Duration,
}

/// Times a failed batch is sent again before it is given up.
const RETRIES: u32 = 4;

/// The backend.
pub struct WebhookBackend {
    mode: Mode,
    remote: Arc<Remote>,
    queue: Option<mpsc::Sender<Value>>,
    dropped: AtomicU64,
}

fn event_list(items: Vec<Value>) -> Value {
    json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items})
}

/// Sends `items`, retrying a few times with a growing delay.
async fn send_with_retries(remote: &Remote, items: Vec<Value>, initial: Duration) -> bool {
    let list = event_list(items);
    let mut delay = initial;
    for attempt in 0..=RETRIES {
        match remote.send(&list).await {
            Ok(_) => return true,
            Err(e) if attempt == RETRIES => {
                tracing::error!(error = %e, "the audit webhook failed: a batch of events is lost");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "the audit webhook failed");
                tokio::time::sleep(delay).await;
                delay = delay.mul_f64(1.5);
            }
        }
    }
    false
}

impl WebhookBackend {
    /// The backend of `--audit-webhook-config-file`; in batch mode its sender runs until the
    /// backend is dropped (and the buffer is emptied).
    pub fn new(
        config_file: &std::path::Path,
        mode: Mode,
        version: &str,
        batching: Batching,
    ) -> Result<Self, String> {
        if version != "audit.k8s.io/v1" {
            return Err(format!(
                "--audit-webhook-version: {version:?} is not served (audit.k8s.io/v1 is)"
            ));
        }
        if batching.max_size == 0 || batching.buffer_size == 0 {
            return Err(
                "--audit-webhook-batch-max-size and --audit-webhook-batch-buffer-size must be positive"
                    .into(),
            );
        }
        let remote = Arc::new(Remote::from_kubeconfig(
            config_file,
            "--audit-webhook-config-file",
        )?);
        let queue = (mode == Mode::Batch).then(|| {
            let (tx, rx) = mpsc::channel(batching.buffer_size);
            tokio::spawn(batcher(remote.clone(), rx, batching.clone()));
            tx
        });
        Ok(WebhookBackend {
            mode,
            remote,
            queue,
            dropped: AtomicU64::new(0),
        })
    }

    /// Hands over one event. In the blocking modes it is sent before this returns, and the
    /// error is returned in `blocking-strict`; otherwise failures are only logged.
    pub async fn write(&self, event: &Value) -> Result<(), String> {
        match self.mode {
            Mode::Batch => {
                let Some(q) = &self.queue else { return Ok(()) };
                if q.try_send(event.clone()).is_err()
                    && self
                        .dropped
                        .fetch_add(1, Ordering::Relaxed)
                        .is_multiple_of(1000)
                {
                    tracing::error!(
                        dropped = self.dropped.load(Ordering::Relaxed),
                        "the audit webhook buffer is full: events are being dropped"
                    );
                }
                Ok(())
            }
            Mode::Blocking | Mode::BlockingStrict => {
                let r = self.remote.send(&event_list(vec![event.clone()])).await;
                match r {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        tracing::error!(error = %e, "the audit webhook failed");
                        if self.mode == Mode::BlockingStrict {
                            Err(e)
                        } else {
                            Ok(())
                        }
                    }
                }
            }
        }
    }
}

/// Collects events into batches and sends them, each batch in a task of its own.
async fn batcher(remote: Arc<Remote>, mut rx: mpsc::Receiver<Value>, b: Batching) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(b.throttle_burst.max(1)));
    let mut tokens = b.throttle_burst.max(1) as f64;
    let mut refilled = tokio::time::Instant::now();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + b.max_wait;
        let mut closed = false;
        while batch.len() < b.max_size {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => batch.push(e),
                    None => {
                        closed = true;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if let Some(qps) = b.throttle_qps.filter(|q| *q > 0.0) {
            let burst = b.throttle_burst.max(1) as f64;
            let now = tokio::time::Instant::now();
            tokens = (tokens + now.duration_since(refilled).as_secs_f64() * qps).min(burst);
            refilled = now;
            if tokens < 1.0 {
                let wait = Duration::try_from_secs_f64((1.0 - tokens) / qps)
                    .unwrap_or(Duration::MAX)
                    .min(Duration::from_secs(3600));
                tokio::time::sleep(wait).await;
                tokens = 1.0;
                refilled = tokio::time::Instant::now();
            }
            tokens -= 1.0;
        }
        // At most `burst` batches in flight: with the webhook down, the buffer (and its
        // bound) holds what waits, not a pile of retrying tasks.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (remote, backoff) = (remote.clone(), b.initial_backoff);
        tokio::spawn(async move {
            send_with_retries(&remote, batch, backoff).await;
            drop(permit);
        });
        if closed {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_upstreams() {
        assert_eq!(Mode::parse("batch"), Ok(Mode::Batch));
        assert_eq!(Mode::parse("blocking-strict"), Ok(Mode::BlockingStrict));
        assert!(Mode::parse("async").is_err());
    }

    #[test]
    fn events_travel_as_event_lists() {
        let l = event_list(vec![json!({"auditID": "a"})]);
        assert_eq!(l["kind"], "EventList");
        assert_eq!(l["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(l["items"][0]["auditID"], "a");
    }
}
