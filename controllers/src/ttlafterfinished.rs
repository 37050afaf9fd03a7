//! The TTL-after-finished controller, as upstream's `pkg/controller/ttlafterfinished`: a Job
//! with `ttlSecondsAfterFinished` is deleted (foreground propagation, so its pods go first) that
//! many seconds after it finished (its Complete or Failed condition's transition time).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::util::{SyncResult, deleting, is_conflict, is_not_found, key_of, reconciler, split_key};

/// The TTL-after-finished controller.
pub struct TtlAfterFinished {
    client: Client,
    jobs: Store<Job>,
    queue: WorkQueue<String>,
}

/// When the Job finished, if it has.
fn finished_at(job: &Job) -> Option<jiff::Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(jiff::Timestamp::now)
        })
}

impl TtlAfterFinished {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers) -> Arc<Self> {
        let queue = WorkQueue::new();
        let jobs = informers.jobs().store();
        {
            let q = queue.clone();
            informers.jobs().on_change(move |c| {
                let j = c.object();
                if j.spec
                    .as_ref()
                    .and_then(|s| s.ttl_seconds_after_finished)
                    .is_some()
                    && finished_at(j).is_some()
                {
                    q.add(key_of(&j.metadata));
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            jobs,
            queue,
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(job) = self.jobs.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let (Some(ttl), Some(done)) = (
            job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished),
            finished_at(&job),
        ) else {
            return Ok(None);
        };
        if deleting(&job.metadata) {
            return Ok(None);
        }
        let now = jiff::Timestamp::now();
        let due = done
            .checked_add(jiff::SignedDuration::from_secs(i64::from(ttl)))
            .unwrap_or(now);
        if due > now {
            let left = Duration::try_from(due.duration_since(now)).unwrap_or(Duration::ZERO);
            return Ok(Some(left + Duration::from_millis(50)));
        }
        let api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            preconditions: Some(Preconditions {
                uid: job.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        tracing::info!(job = %key, "deleting finished job whose TTL expired");
        match api.delete(&job.name_any(), &dp).await {
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

reconciler!(TtlAfterFinished, "ttl-after-finished");
