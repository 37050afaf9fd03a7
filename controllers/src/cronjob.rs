//! The CronJob controller, as upstream's `pkg/controller/cronjob` (v2): creates a Job named
//! `<cronjob>-<scheduled time in minutes since the epoch>` at each scheduled time, honouring
//! `suspend`, `startingDeadlineSeconds`, `concurrencyPolicy` (Allow, Forbid, Replace) and
//! `timeZone`; tracks `status.active`, `lastScheduleTime` and `lastSuccessfulTime`; deletes
//! finished Jobs beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit`; and requeues
//! itself for the next scheduled time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use keelson_client::events::{EventType, Recorder};
use keelson_client::informer::Index;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::util::{
    SyncResult, Written, controller_of, controller_ref, deleting, is_conflict, is_not_found,
    key_of, object_ref, reconciler, replace_status, split_key,
};

/// A parsed cron schedule (five fields, or one of the `@` shorthands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: BTreeSet<u32>,
    hours: BTreeSet<u32>,
    days: BTreeSet<u32>,
    months: BTreeSet<u32>,
    weekdays: BTreeSet<u32>,
    /// Day-of-month or day-of-week was `*`/`?`: the two are ANDed, else ORed (as cron).
    day_star: bool,
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn field(
    s: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(BTreeSet<u32>, bool), String> {
    let mut out = BTreeSet::new();
    let mut star = false;
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return Ok(i as u32 + name_base);
        }
        v.parse::<u32>().map_err(|_| format!("invalid value {v:?}"))
    };
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => (
                r,
                st.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("invalid step {st:?}"))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            star = star || step == 1;
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{part:?} is out of range {min}-{max}"));
        }
        out.extend((lo..=hi).step_by(step as usize));
    }
    Ok((out, star))
}

impl Schedule {
    /// Parses a standard cron expression.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let expr = expr.trim();
        let expanded = match expr {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            e if e.starts_with('@') => return Err(format!("unrecognized descriptor: {e}")),
            e => e,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {expr}",
                fields.len()
            ));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[], 0)?;
        let (hours, _) = field(fields[1], 0, 23, &[], 0)?;
        let (days, dom_star) = field(fields[2], 1, 31, &[], 1)?;
        let (months, _) = field(fields[3], 1, 12, MONTHS, 1)?;
        let (mut weekdays, dow_star) = field(fields[4], 0, 7, WEEKDAYS, 0)?;
        if weekdays.remove(&7) {
            weekdays.insert(0);
        }
        Ok(Self {
            minutes,
            hours,
            days,
            months,
            weekdays,
            day_star: dom_star || dow_star,
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.days.contains(&(dt.day() as u32));
        let dow = self
            .weekdays
            .contains(&(dt.weekday().to_sunday_zero_offset() as u32));
        if self.day_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first scheduled time strictly after `t`, in `tz`; `None` within the next 5 years.
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = t.to_zoned(tz.clone()).datetime();
        let mut dt = start
            .checked_add(1.minute())
            .ok()?
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?;
        let limit = start.checked_add(5.years()).ok()?;
        while dt <= limit {
            if !self.months.contains(&(dt.month() as u32)) {
                dt = dt
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if !self.day_matches(dt) {
                dt = dt
                    .checked_add(1.day())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if !self.hours.contains(&(dt.hour() as u32)) {
                dt = dt
                    .checked_add(1.hour())
                    .ok()?
                    .with()
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if !self.minutes.contains(&(dt.minute() as u32)) {
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            let ts = dt.to_zoned(tz.clone()).ok()?.timestamp();
            if ts > t {
                return Some(ts);
            }
            dt = dt.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// The most recent scheduled time in `(after, now]`, and how many there were (up to `cap`).
pub fn most_recent(
    s: &Schedule,
    tz: &TimeZone,
    after: Timestamp,
    now: Timestamp,
    cap: usize,
) -> (Option<Timestamp>, usize) {
    let mut last = None;
    let mut n = 0;
    let mut t = after;
    while let Some(next) = s.next_after(t, tz) {
        if next > now {
            break;
        }
        last = Some(next);
        n += 1;
        t = next;
        if n >= cap {
            // Too many missed: jump to the last one before now directly.
            let mut back = now
                .checked_sub(jiff::SignedDuration::from_mins(1))
                .unwrap_or(now);
            for _ in 0..(60 * 24 * 366) {
                match s.next_after(back, tz) {
                    Some(x) if x <= now => return (Some(x), n),
                    _ => {}
                }
                back = back
                    .checked_sub(jiff::SignedDuration::from_mins(1))
                    .unwrap_or(back);
                if back <= t {
                    break;
                }
            }
            break;
        }
    }
    (last, n)
}

/// The CronJob controller.
pub struct CronJobController {
    client: Client,
    cronjobs: Store<CronJob>,
    jobs: Index<Job>,
    queue: WorkQueue<String>,
    recorder: Recorder,
    /// Each CronJob as this controller last wrote it, until the cache shows that version or a
    /// later one: a sync on an older copy (without its last `lastScheduleTime`) would start
    /// the Job of a schedule time it has handled again, had that Job since been deleted.
    written: Written<CronJob>,
}

fn job_finished(j: &Job) -> Option<&'static str> {
    let cs = j.status.as_ref()?.conditions.as_ref()?;
    cs.iter()
        .find_map(|c| match (c.type_.as_str(), c.status.as_str()) {
            ("Complete", "True") => Some("Complete"),
            ("Failed", "True") => Some("Failed"),
            _ => None,
        })
}

impl CronJobController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, recorder: Recorder) -> Arc<Self> {
        let queue = WorkQueue::new();
        let cronjobs = informers.cronjobs().store();
        let jobs = informers.jobs_by_controller();
        {
            let q = queue.clone();
            informers
                .cronjobs()
                .on_change(move |c| q.add(key_of(&c.object().metadata)));
        }
        {
            let q = queue.clone();
            informers.jobs().on_change(move |c| {
                let j = c.object();
                if let Some(r) = controller_of(&j.metadata)
                    && r.kind == "CronJob"
                {
                    q.add(format!("{}/{}", j.namespace().unwrap_or_default(), r.name));
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            cronjobs,
            jobs,
            queue,
            recorder,
            written: Written::default(),
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(cj) = self.cronjobs.get(&ObjectRef::new(name).within(ns)) else {
            self.written.forget(&key);
            return Ok(None);
        };
        let cj = (*self.written.newest(&key, cj)).clone();
        let spec = cj.spec.clone().unwrap_or_default();
        let job_api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let mut jobs: Vec<Arc<Job>> = self.jobs.get(&cj.uid().unwrap_or_default());
        jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let mut status = cj.status.clone().unwrap_or_default();

        // Active list and last success from the Jobs themselves.
        let mut active: Vec<ObjectReference> = Vec::new();
        for j in &jobs {
            match job_finished(j) {
                None => active.push(object_ref(j.as_ref())),
                Some("Complete") => {
                    let done = j.status.as_ref().and_then(|s| s.completion_time.clone());
                    if done.as_ref().map(|t| t.0)
                        > status.last_successful_time.as_ref().map(|t| t.0)
                    {
                        status.last_successful_time = done;
                    }
                }
                Some(_) => {}
            }
        }
        status.active = (!active.is_empty()).then_some(active.clone());

        // History limits.
        for (outcome, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let done: Vec<&Arc<Job>> = jobs
                .iter()
                .filter(|j| job_finished(j) == Some(outcome) && !deleting(&j.metadata))
                .collect();
            let excess = done.len().saturating_sub(limit.max(0) as usize);
            for j in done.into_iter().take(excess) {
                match job_api
                    .delete(&j.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => self.recorder.record(
                        object_ref(&cj),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted job {}", j.name_any()),
                    ),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }

        if deleting(&cj.metadata) {
            self.write_status(&cj, status).await?;
            return Ok(None);
        }
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                self.recorder.record(
                    object_ref(&cj),
                    EventType::Warning,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                );
                self.write_status(&cj, status).await?;
                return Ok(None);
            }
        };
        let tz = match spec.time_zone.as_deref() {
            None | Some("") | Some("UTC") | Some("Etc/UTC") => TimeZone::UTC,
            Some(name) => match TimeZone::get(name) {
                Ok(tz) => tz,
                Err(e) => {
                    self.recorder.record(
                        object_ref(&cj),
                        EventType::Warning,
                        "UnknownTimeZone",
                        format!("invalid timeZone: {name:?}: {e}"),
                    );
                    self.write_status(&cj, status).await?;
                    return Ok(None);
                }
            },
        };
        let now = Timestamp::now();
        let next = schedule.next_after(now, &tz);
        let requeue = next
            .map(|n| Duration::from_secs_f64(n.duration_since(now).as_secs_f64().max(0.0) + 0.1));
        if spec.suspend.unwrap_or(false) {
            self.write_status(&cj, status).await?;
            return Ok(None);
        }
        let earliest = status
            .last_schedule_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        let (scheduled, missed) = most_recent(&schedule, &tz, earliest, now, 100);
        let Some(scheduled) = scheduled else {
            self.write_status(&cj, status).await?;
            return Ok(requeue);
        };
        if missed >= 100 {
            self.recorder.record(object_ref(&cj), EventType::Warning, "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into());
        }
        if let Some(deadline) = spec.starting_deadline_seconds
            && scheduled
                .checked_add(jiff::SignedDuration::from_secs(deadline))
                .is_ok_and(|t| t < now)
        {
            self.recorder.record(
                object_ref(&cj),
                EventType::Warning,
                "MissSchedule",
                format!("Missed scheduled time to start a job: {scheduled}"),
            );
            self.write_status(&cj, status).await?;
            return Ok(requeue);
        }
        let job_name = format!("{}-{}", cj.name_any(), scheduled.as_second() / 60);
        if jobs.iter().any(|j| j.name_any() == job_name) {
            status.last_schedule_time = Some(Time(scheduled));
            self.write_status(&cj, status).await?;
            return Ok(requeue);
        }
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => {
                self.write_status(&cj, status).await?;
                return Ok(requeue);
            }
            Some("Replace") => {
                for r in &active {
                    let n = r.name.clone().unwrap_or_default();
                    match job_api.delete(&n, &DeleteParams::background()).await {
                        Ok(_) => self.recorder.record(
                            object_ref(&cj),
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("Deleted job {n}"),
                        ),
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                active.clear();
            }
            _ => {}
        }
        let template = spec.job_template.clone();
        let mut meta = template.metadata.clone().unwrap_or_default();
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(
                "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
                scheduled
                    .to_zoned(tz.clone())
                    .strftime("%Y-%m-%dT%H:%M:%S%:z")
                    .to_string(),
            );
        let job = Job {
            metadata: ObjectMeta {
                name: Some(job_name.clone()),
                namespace: Some(ns.to_string()),
                labels: meta.labels,
                annotations: meta.annotations,
                owner_references: Some(vec![controller_ref(&cj)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let created = match job_api.create(&PostParams::default(), &job).await {
            Ok(j) => {
                self.recorder.record(
                    object_ref(&cj),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created job {job_name}"),
                );
                Some(j)
            }
            Err(e) if is_conflict(&e) => None,
            Err(e) => {
                self.recorder.record(
                    object_ref(&cj),
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating job: {e}"),
                );
                return Err(e);
            }
        };
        if let Some(j) = created {
            active.push(object_ref(&j));
        }
        status.active = (!active.is_empty()).then_some(active);
        status.last_schedule_time = Some(Time(scheduled));
        self.write_status(&cj, status).await?;
        Ok(requeue)
    }

    async fn write_status(
        &self,
        cj: &CronJob,
        status: k8s_openapi::api::batch::v1::CronJobStatus,
    ) -> Result<(), kube::Error> {
        if cj.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = cj.clone();
        updated.status = Some(status);
        if let Some(written) = replace_status(&self.client, &updated).await? {
            self.written.remember(written);
        }
        Ok(())
    }
}

reconciler!(CronJobController, "cronjob");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fake_client, taken};
    use kube::runtime::watcher::Event;

    /// The cache can be behind the controller's own status write. A sync on the older copy
    /// (no `lastScheduleTime` yet) must not start the Job of a schedule time it has handled,
    /// even once that Job is gone (deleted by the history limit, or by hand).
    #[tokio::test]
    async fn a_cache_behind_its_own_status_write_starts_no_job_twice() {
        let (client, calls) = fake_client();
        let mut informers = crate::Informers::new(client.clone());
        let ctl = CronJobController::new(
            &mut informers,
            Recorder::new(client, "cronjob-controller", None),
        );
        let created = Timestamp::now() - jiff::SignedDuration::from_secs(180);
        let cj: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "tick", "namespace": "default", "uid": "cj-uid",
                "resourceVersion": "5", "creationTimestamp": created.to_string()},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}},
        }))
        .unwrap();
        informers.cronjobs().apply_event(Event::Apply(cj));
        let names = || -> Vec<String> {
            taken(&calls, "POST", "/apis/batch/v1/namespaces/default/jobs")
                .iter()
                .map(|(_, j)| j["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        ctl.clone().sync("default/tick".into()).await.unwrap();
        let first = names();
        assert_eq!(first.len(), 1, "{first:?}");
        let written = taken(
            &calls,
            "PUT",
            "/apis/batch/v1/namespaces/default/cronjobs/tick/status",
        );
        assert!(written[0].1["status"]["lastScheduleTime"].is_string());
        // The Job is not in the cache (gone), nor is the status write.
        ctl.clone().sync("default/tick".into()).await.unwrap();
        let again = names();
        assert_eq!(
            again.iter().filter(|n| **n == first[0]).count(),
            1,
            "{again:?}"
        );
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedules_parse_and_step_as_cron() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every5.next_after(ts("2026-12-01T10:02:30Z"), &TimeZone::UTC),
            Some(ts("2026-12-01T10:05:00Z"))
        );
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(
            daily.next_after(ts("2026-12-31T23:59:00Z"), &TimeZone::UTC),
            Some(ts("2027-01-01T00:00:00Z"))
        );
        // Mondays at 09:30, by name.
        let mon = Schedule::parse("30 9 * * MON").unwrap();
        assert_eq!(
            mon.next_after(ts("2026-12-01T10:00:00Z"), &TimeZone::UTC),
            Some(ts("2026-12-07T09:30:00Z"))
        );
        // Day-of-month and day-of-week both restricted: either matches.
        let either = Schedule::parse("0 0 1 * FRI").unwrap();
        assert_eq!(
            either.next_after(ts("2026-12-01T10:00:00Z"), &TimeZone::UTC),
            Some(ts("2026-12-04T00:00:00Z"))
        );
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("* * *").is_err());
        assert!(Schedule::parse("@fortnightly").is_err());
        assert!(Schedule::parse("*/0 * * * *").is_err());
    }

    #[test]
    fn most_recent_counts_missed_times() {
        let s = Schedule::parse("* * * * *").unwrap();
        let (last, n) = most_recent(
            &s,
            &TimeZone::UTC,
            ts("2026-12-01T10:00:00Z"),
            ts("2026-12-01T10:03:30Z"),
            100,
        );
        assert_eq!(last, Some(ts("2026-12-01T10:03:00Z")));
        assert_eq!(n, 3);
        let (last, n) = most_recent(
            &s,
            &TimeZone::UTC,
            ts("2026-12-01T00:00:00Z"),
            ts("2026-12-01T10:03:30Z"),
            100,
        );
        assert_eq!(last, Some(ts("2026-12-01T10:03:00Z")));
        assert_eq!(n, 100);
    }
}
