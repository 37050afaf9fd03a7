//! Leader election through a `coordination.k8s.io/v1` Lease with client-go's semantics.
//!
//! A candidate reads the Lease; it may take it when nobody holds it or when the holder's record
//! has not changed for `leaseDurationSeconds` *as observed on the candidate's own clock* (clocks
//! are never compared). Taking it over sets `acquireTime` and increments `leaseTransitions`;
//! renewing keeps both and moves `renewTime`. Every write is a compare-and-swap on the Lease's
//! resourceVersion, so two candidates never both succeed.
//!
//! The leader renews every `retryPeriod`; if it has not renewed within `renewDeadline` (measured
//! from the *start* of its last successful renewal) it stops acting. Because `renewDeadline <
//! leaseDuration`, it has stopped before any other candidate may take the Lease over. On a
//! clean shutdown the leader releases the Lease (empty holder, 1 s duration) so a successor
//! takes over at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ArgAction;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::duration::parse_go_duration;
use crate::health::Health;

/// The leader-election flags (names and defaults as kube-controller-manager's).
#[derive(clap::Args, Debug, Clone)]
pub struct LeaderElectionArgs {
    /// Start a leader election client and gain leadership before executing the main loop.
    /// Enable this when running replicated components for high availability.
    #[arg(long = "leader-elect", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub leader_elect: bool,
    /// The duration that non-leader candidates will wait after observing a leadership renewal
    /// until attempting to acquire leadership of a led but unrenewed leader slot.
    #[arg(long = "leader-elect-lease-duration", default_value = "15s", value_parser = parse_go_duration)]
    pub lease_duration: Duration,
    /// The interval between attempts by the acting master to renew a leadership slot before it
    /// stops leading. This must be less than the lease duration.
    #[arg(long = "leader-elect-renew-deadline", default_value = "10s", value_parser = parse_go_duration)]
    pub renew_deadline: Duration,
    /// The duration the clients should wait between attempting acquisition and renewal of a
    /// leadership.
    #[arg(long = "leader-elect-retry-period", default_value = "2s", value_parser = parse_go_duration)]
    pub retry_period: Duration,
    /// The type of resource object that is used for locking during leader election. Only
    /// `leases` is supported.
    #[arg(long = "leader-elect-resource-lock", default_value = "leases")]
    pub resource_lock: String,
    /// The name of resource object that is used for locking during leader election (default:
    /// the component's name).
    #[arg(long = "leader-elect-resource-name")]
    pub resource_name: Option<String>,
    /// The namespace of resource object that is used for locking during leader election.
    #[arg(
        long = "leader-elect-resource-namespace",
        default_value = "kube-system"
    )]
    pub resource_namespace: String,
}

/// Why leader election ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The flags are inconsistent.
    #[error("invalid leader election configuration: {0}")]
    Config(String),
    /// The leader could not renew within the renew deadline and stopped leading.
    #[error("leaderelection lost")]
    Lost,
}

/// The lease record as last observed, and when (on our clock) it last changed.
struct Observed {
    spec: Option<LeaseSpec>,
    at: Instant,
}

/// Runs for leadership of one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    observed: Mutex<Observed>,
    status: Gauge,
    last_renew: Arc<Mutex<Option<Instant>>>,
}

impl LeaderElector {
    /// A candidate `identity` for the Lease the flags name (`default_name` when unnamed).
    pub fn new(
        client: Client,
        args: &LeaderElectionArgs,
        default_name: &str,
        identity: String,
        health: &Health,
    ) -> Result<Self, LeaderError> {
        if args.resource_lock != "leases" {
            return Err(LeaderError::Config(format!(
                "--leader-elect-resource-lock={} is not supported (use leases)",
                args.resource_lock
            )));
        }
        if args.lease_duration <= args.renew_deadline {
            return Err(LeaderError::Config(
                "leaseDuration must be greater than renewDeadline".into(),
            ));
        }
        if args.renew_deadline.as_secs_f64() <= 1.2 * args.retry_period.as_secs_f64() {
            return Err(LeaderError::Config(
                "renewDeadline must be greater than retryPeriod*JitterFactor (1.2)".into(),
            ));
        }
        let name = args
            .resource_name
            .clone()
            .unwrap_or_else(|| default_name.to_string());
        let family = Family::<Vec<(String, String)>, Gauge>::default();
        family
            .get_or_create(&vec![("name".to_string(), name.clone())])
            .set(0);
        health.register(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease.",
            family.clone(),
        );
        let status = family
            .get_or_create(&vec![("name".to_string(), name.clone())])
            .clone();
        let last_renew: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let lease_duration = args.lease_duration;
        let check_renew = last_renew.clone();
        let lease_name = name.clone();
        // As client-go's HealthzAdaptor: unhealthy when leading but not renewed for a lease
        // duration plus 20 s of grace.
        health.add_check("leaderElection", move || match *check_renew.lock() {
            Some(t) if t.elapsed() > lease_duration + Duration::from_secs(20) => Err(format!(
                "failed election to renew leadership on lease {lease_name}"
            )),
            _ => Ok(()),
        });
        Ok(Self {
            api: Api::namespaced(client, &args.resource_namespace),
            name,
            identity,
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
            observed: Mutex::new(Observed {
                spec: None,
                at: Instant::now(),
            }),
            status,
            last_renew,
        })
    }

    /// This candidate's identity (the Lease's `holderIdentity` while it leads).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits for leadership, runs `lead` with a token cancelled when leadership ends, and keeps
    /// renewing. Returns `Ok` after a clean shutdown (the Lease released) and
    /// `Err(LeaderError::Lost)` when renewal failed, in which case the caller must stop acting
    /// at once (upstream components exit).
    pub async fn run<F, Fut>(self, shutdown: CancellationToken, lead: F) -> Result<(), LeaderError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        tracing::info!(lease = %self.name, identity = %self.identity, "attempting to acquire leader lease");
        loop {
            let started = Instant::now();
            if self.try_acquire_or_renew().await {
                *self.last_renew.lock() = Some(started);
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(jitter(self.retry_period)) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
        tracing::info!(lease = %self.name, identity = %self.identity, "successfully acquired lease");
        self.status.set(1);
        let leading = CancellationToken::new();
        let task = tokio::spawn(lead(leading.clone()));
        let outcome = self.renew_loop(&shutdown).await;
        leading.cancel();
        self.status.set(0);
        match outcome {
            Ok(()) => {
                // Give the leader's work a moment to stop before handing the lease over.
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                self.release().await;
                *self.last_renew.lock() = None;
                Ok(())
            }
            Err(e) => {
                task.abort();
                tracing::error!(lease = %self.name, "leaderelection lost");
                Err(e)
            }
        }
    }

    async fn renew_loop(&self, shutdown: &CancellationToken) -> Result<(), LeaderError> {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.retry_period) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            // Retry every retry period until renewed or the deadline since the last renewal.
            loop {
                let last = self.last_renew.lock().unwrap_or_else(Instant::now);
                let deadline = last + self.renew_deadline;
                let started = Instant::now();
                if started >= deadline {
                    return Err(LeaderError::Lost);
                }
                let renewed = tokio::select! {
                    r = tokio::time::timeout(deadline - started, self.try_acquire_or_renew()) => r.unwrap_or(false),
                    _ = shutdown.cancelled() => return Ok(()),
                };
                if renewed {
                    *self.last_renew.lock() = Some(started);
                    break;
                }
                tracing::warn!(lease = %self.name, "failed to renew lease");
                tokio::select! {
                    _ = tokio::time::sleep(self.retry_period.min(deadline.saturating_duration_since(Instant::now()))) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }

    /// One attempt, as client-go's `tryAcquireOrRenew`: true when we hold the lease afterwards.
    async fn try_acquire_or_renew(&self) -> bool {
        let now = MicroTime(jiff::Timestamp::now());
        let mine = |spec: Option<&LeaseSpec>| {
            let (acquire, transitions) = match spec {
                Some(s) if s.holder_identity.as_deref() == Some(self.identity.as_str()) => {
                    (s.acquire_time.clone(), s.lease_transitions.unwrap_or(0))
                }
                Some(s) => (Some(now.clone()), s.lease_transitions.unwrap_or(0) + 1),
                None => (Some(now.clone()), 0),
            };
            LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
                acquire_time: acquire,
                renew_time: Some(now.clone()),
                lease_transitions: Some(transitions),
                ..Default::default()
            }
        };
        let current = match self.api.get_opt(&self.name).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "error retrieving lease");
                return false;
            }
        };
        let Some(mut lease) = current else {
            let spec = mine(None);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec.clone()),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.observe(Some(spec));
                    true
                }
                Err(e) => {
                    tracing::debug!(lease = %self.name, error = %e, "creating lease failed");
                    false
                }
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(Some(spec.clone()));
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let observed_at = self.observed.lock().at;
        if !holder.is_empty() && holder != self.identity && observed_at.elapsed() < duration {
            tracing::debug!(lease = %self.name, holder, "lease is held by another candidate and has not expired");
            return false;
        }
        let new_spec = mine(Some(&spec));
        lease.spec = Some(new_spec.clone());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observe(Some(new_spec));
                true
            }
            Err(e) => {
                tracing::debug!(lease = %self.name, error = %e, "updating lease failed");
                false
            }
        }
    }

    fn observe(&self, spec: Option<LeaseSpec>) {
        let mut o = self.observed.lock();
        if o.spec != spec {
            o.spec = spec;
            o.at = Instant::now();
        }
    }

    /// Hands the lease over: empty holder and a 1 s duration, as client-go's `release`.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        let now = MicroTime(jiff::Timestamp::now());
        spec.holder_identity = Some(String::new());
        spec.lease_duration_seconds = Some(1);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released leader lease"),
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "failed to release lease"),
        }
    }
}

/// `d` plus up to 20 % (client-go's JitterFactor 1.2).
fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}

/// An identity as the upstream components make one: `<hostname>_<random uuid>`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let r: u128 = rand::random();
    let hex = format!("{r:032x}");
    format!(
        "{host}_{}-{}-4{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[16..20],
        &hex[20..32]
    )
}
