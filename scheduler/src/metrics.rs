//! The scheduler's metrics, with upstream's names and labels.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use keelson_client::health::Health;

type Labels = Vec<(&'static str, String)>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn attempts_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 5))
}

fn victims_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 7))
}

/// The metric families.
#[derive(Clone)]
pub struct Metrics {
    /// `scheduler_schedule_attempts_total{result,profile}`.
    pub attempts: Family<Labels, Counter>,
    /// `scheduler_scheduling_attempt_duration_seconds{result,profile}`.
    pub attempt_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// `scheduler_pending_pods{queue}`.
    pub pending: Family<Labels, Gauge>,
    /// `scheduler_pod_scheduling_attempts`.
    pub pod_attempts: Histogram,
    /// `scheduler_pod_scheduling_sli_duration_seconds{attempts}`: first attempt to bound.
    pub sli_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// `scheduler_preemption_attempts_total`.
    pub preemption_attempts: Counter,
    /// `scheduler_preemption_victims`.
    pub preemption_victims: Histogram,
    /// `scheduler_unschedulable_pods{plugin,profile}`.
    pub unschedulable: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(duration_histogram),
            pending: Family::default(),
            pod_attempts: attempts_histogram(),
            sli_duration: Family::new_with_constructor(duration_histogram),
            preemption_attempts: Counter::default(),
            preemption_victims: victims_histogram(),
            unschedulable: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every family with the component's `/metrics`.
    pub fn register(&self, h: &Health) {
        h.register(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
            self.attempts.clone(),
        );
        h.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            self.attempt_duration.clone(),
        );
        h.register(
            "scheduler_pending_pods",
            "Number of pending pods, by the queue type.",
            self.pending.clone(),
        );
        h.register(
            "scheduler_pod_scheduling_attempts",
            "Number of attempts to successfully schedule a pod.",
            self.pod_attempts.clone(),
        );
        h.register(
            "scheduler_pod_scheduling_sli_duration_seconds",
            "E2e latency for a pod being scheduled, from the time the pod enters the scheduling queue and might involve multiple scheduling attempts.",
            self.sli_duration.clone(),
        );
        h.register(
            "scheduler_preemption_attempts",
            "Total preemption attempts in the cluster till now",
            self.preemption_attempts.clone(),
        );
        h.register(
            "scheduler_preemption_victims",
            "Number of selected preemption victims",
            self.preemption_victims.clone(),
        );
        h.register(
            "scheduler_unschedulable_pods",
            "The number of unschedulable pods broken down by plugin name.",
            self.unschedulable.clone(),
        );
    }
}
