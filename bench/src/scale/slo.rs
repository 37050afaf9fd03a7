//! The SLIs of a run and the Kubernetes scalability SLOs judged on them.
//!
//! Thresholds are upstream's (sig-scalability's `slos.md`): mutating API calls for single objects
//! p99 ≤ 1 s per (resource, subresource, verb); read-only GET of one object p99 ≤ 1 s; LIST p99
//! ≤ 5 s in a namespace and ≤ 30 s across the cluster; pod startup (creation to every container
//! running, observed by watch) p99 ≤ 5 s.

use serde::Serialize;

use std::collections::BTreeMap;

use super::histograms::{Family, Histogram};

/// Latency of one kind of API call over the measured window, from the apiservers' own
/// `apiserver_request_sli_duration_seconds` (every client's calls, not only the load
/// generator's).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ApiCall {
    /// The resource, qualified by its group (`pods`, `deployments.apps`).
    pub resource: String,
    pub subresource: String,
    pub verb: String,
    /// `resource`, `namespace` or `cluster`.
    pub scope: String,
    pub count: u64,
    /// Seconds.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// p99 of the whole latency, with what the SLI leaves out (API Priority and Fairness
    /// queueing, admission webhooks); seconds.
    pub p99_whole: f64,
}

/// The API calls of `sli` (a window of `apiserver_request_sli_duration_seconds`), slowest p99
/// first, each with the p99 of its whole latency from `whole` (the same window of
/// `apiserver_request_duration_seconds`).
pub fn api_calls_with_whole(sli: &Family, whole: &Family) -> Vec<ApiCall> {
    let whole: BTreeMap<[String; 4], f64> = api_calls(whole)
        .into_iter()
        .map(|c| ([c.resource, c.subresource, c.verb, c.scope], c.p99))
        .collect();
    let mut calls = api_calls(sli);
    for c in &mut calls {
        let key = [
            c.resource.clone(),
            c.subresource.clone(),
            c.verb.clone(),
            c.scope.clone(),
        ];
        c.p99_whole = whole.get(&key).copied().unwrap_or(c.p99);
    }
    calls
}

/// The API calls of a window of a request latency histogram, slowest p99 first. The
/// versions of a resource are one SLI: their histograms are added.
pub fn api_calls(window: &Family) -> Vec<ApiCall> {
    let mut merged: BTreeMap<[String; 4], Histogram> = BTreeMap::new();
    for (labels, h) in window {
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let resource = match label("group").as_str() {
            "" => label("resource"),
            g => format!("{}.{g}", label("resource")),
        };
        let key = [
            resource,
            label("subresource"),
            label("verb"),
            label("scope"),
        ];
        merged.entry(key).or_default().add(h);
    }
    let mut out: Vec<ApiCall> = merged
        .into_iter()
        .filter(|(k, h)| h.count() > 0.0 && !k[0].is_empty())
        .map(|([resource, subresource, verb, scope], h)| {
            let p99 = h.quantile(0.99).unwrap_or(0.0);
            ApiCall {
                resource,
                subresource,
                verb,
                scope,
                count: h.count() as u64,
                p50: h.quantile(0.5).unwrap_or(0.0),
                p90: h.quantile(0.9).unwrap_or(0.0),
                p99,
                p99_whole: p99,
            }
        })
        .collect();
    out.sort_by(|a, b| b.p99.total_cmp(&a.p99));
    out
}

/// Exact percentiles of a sample (nearest rank), in the samples' unit.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Percentiles of `samples`; `None` when there are none.
pub fn percentiles(samples: &[f64]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    Some(Percentiles {
        count: s.len(),
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: s[s.len() - 1],
    })
}

/// Pod startup of one group of pods, per phase, in seconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Startup {
    /// Creation to bound to a node (queueing, scheduling and the binding write).
    pub schedule: Percentiles,
    /// Bound to every container running, as the kubelet reported it.
    pub run: Percentiles,
    /// Creation to every container running: the SLI.
    pub total: Percentiles,
}

/// One pod's timeline, in seconds since the run began.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PodTimes {
    pub created: Option<f64>,
    pub bound: Option<f64>,
    pub running: Option<f64>,
}

/// Startup percentiles of pods that ran; `None` when none did.
pub fn startup(pods: &[PodTimes]) -> Option<Startup> {
    let (mut schedule, mut run, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for p in pods {
        if let (Some(c), Some(b), Some(r)) = (p.created, p.bound, p.running) {
            schedule.push((b - c).max(0.0));
            run.push((r - b).max(0.0));
            total.push((r - c).max(0.0));
        }
    }
    Some(Startup {
        schedule: percentiles(&schedule)?,
        run: percentiles(&run)?,
        total: percentiles(&total)?,
    })
}

/// Scheduling throughput: pods bound per second, over one-second bins from the first binding
/// to the last.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Throughput {
    /// Pods bound over the span, per second.
    pub average: f64,
    /// Percentiles of the per-second bins.
    pub per_second: Percentiles,
}

/// Throughput of the binding times `bound` (seconds); `None` with fewer than two.
pub fn throughput(bound: &[f64]) -> Option<Throughput> {
    let first = bound.iter().copied().reduce(f64::min)?;
    let last = bound.iter().copied().reduce(f64::max)?;
    if bound.len() < 2 {
        return None;
    }
    let bins = ((last - first).floor() as usize) + 1;
    let mut counts = vec![0f64; bins];
    for b in bound {
        counts[(((b - first).floor()) as usize).min(bins - 1)] += 1.0;
    }
    Some(Throughput {
        average: bound.len() as f64 / (last - first).max(1.0),
        per_second: percentiles(&counts)?,
    })
}

/// One SLO judged.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Verdict {
    /// Which SLO.
    pub slo: String,
    /// What it was judged on (`POST pods (namespace)`, `latency pods`).
    pub subject: String,
    /// Observed p99, seconds.
    pub p99: f64,
    /// Seconds.
    pub threshold: f64,
    pub pass: bool,
}

const MUTATING: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

/// Which SLO an API call falls under, with its threshold; `None` for calls no SLO covers
/// (watches, collection deletes, proxies).
pub fn api_slo(call: &ApiCall) -> Option<(&'static str, f64)> {
    match (call.verb.as_str(), call.scope.as_str()) {
        (v, _) if MUTATING.contains(&v) => Some(("mutating API call latency", 1.0)),
        ("GET", "resource") => Some(("read-only API call latency (resource)", 1.0)),
        ("LIST", "namespace") => Some(("read-only API call latency (namespace LIST)", 5.0)),
        ("LIST", "cluster") => Some(("read-only API call latency (cluster LIST)", 30.0)),
        _ => None,
    }
}

/// Every SLO judged on the run's SLIs: one verdict per API call an SLO covers, and pod startup
/// of the latency pods when any started.
pub fn verdicts(api: &[ApiCall], judged: &str, startup: Option<&Startup>) -> Vec<Verdict> {
    let mut out: Vec<Verdict> = api
        .iter()
        .filter_map(|c| {
            let (slo, threshold) = api_slo(c)?;
            let sub = if c.subresource.is_empty() {
                String::new()
            } else {
                format!("/{}", c.subresource)
            };
            Some(Verdict {
                slo: slo.into(),
                subject: format!("{} {}{sub} ({})", c.verb, c.resource, c.scope),
                p99: c.p99,
                threshold,
                pass: c.p99 <= threshold,
            })
        })
        .collect();
    if let Some(st) = startup {
        out.push(Verdict {
            slo: "pod startup latency".into(),
            subject: format!("{judged} pods"),
            p99: st.total.p99,
            threshold: 5.0,
            pass: st.total.p99 <= 5.0,
        });
    }
    out
}

/// What a complete report needs and a run did not give: one line per missing SLI.
pub fn missing(
    api: &[ApiCall],
    judged: &str,
    expected: usize,
    startup: Option<&Startup>,
) -> Vec<String> {
    let mut out = Vec::new();
    let has = |pred: &dyn Fn(&ApiCall) -> bool| api.iter().any(pred);
    if !has(&|c| MUTATING.contains(&c.verb.as_str())) {
        out.push("no mutating API call was measured".to_string());
    }
    for scope in ["namespace", "cluster"] {
        if !has(&|c| c.verb == "LIST" && c.scope == scope) {
            out.push(format!("no {scope}-scoped LIST was measured"));
        }
    }
    match startup {
        None => out.push(format!("no {judged} pod started")),
        Some(s) if s.total.count < expected => out.push(format!(
            "{} of {expected} {judged} pods have a complete timeline",
            s.total.count
        )),
        Some(_) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::histograms::Labels;
    use super::*;

    fn call(verb: &str, resource: &str, scope: &str, p99: f64) -> ApiCall {
        ApiCall {
            resource: resource.into(),
            subresource: String::new(),
            verb: verb.into(),
            scope: scope.into(),
            count: 100,
            p50: p99 / 4.0,
            p90: p99 / 2.0,
            p99,
            p99_whole: p99,
        }
    }

    fn pods(totals: &[f64]) -> Vec<PodTimes> {
        totals
            .iter()
            .enumerate()
            .map(|(i, t)| PodTimes {
                created: Some(i as f64),
                bound: Some(i as f64 + t / 4.0),
                running: Some(i as f64 + t),
            })
            .collect()
    }

    #[test]
    fn verdicts_follow_the_upstream_thresholds() {
        let api = vec![
            call("POST", "pods", "namespace", 0.9),
            call("PATCH", "nodes", "resource", 1.2),
            call("GET", "pods", "resource", 1.0),
            call("LIST", "pods", "namespace", 5.5),
            call("LIST", "pods", "cluster", 29.0),
            call("WATCH", "pods", "cluster", 300.0),
            call("DELETECOLLECTION", "pods", "namespace", 9.0),
        ];
        // 99 pods start in 1 s, one in 6 s: the 99th of 100 is still 1 s.
        let mut totals = vec![1.0; 99];
        totals.push(6.0);
        let startup = startup(&pods(&totals)).unwrap();
        let v = verdicts(&api, "latency", Some(&startup));
        let got: Vec<(&str, bool)> = v.iter().map(|v| (v.subject.as_str(), v.pass)).collect();
        assert_eq!(
            got,
            vec![
                ("POST pods (namespace)", true),
                ("PATCH nodes (resource)", false),
                ("GET pods (resource)", true),
                ("LIST pods (namespace)", false),
                ("LIST pods (cluster)", true),
                ("latency pods", true),
            ]
        );
        // Without latency pods the API calls are still judged.
        assert_eq!(verdicts(&api, "load", None).len(), 5);
        // Two slow pods in a hundred break it.
        totals[0] = 5.1;
        let v = verdicts(&api, "load", Some(&startup_of(&totals)));
        assert_eq!(v.last().unwrap().subject, "load pods");
        assert!(!v.last().unwrap().pass);
        assert_eq!(v.last().unwrap().p99, 5.1);
    }

    fn startup_of(totals: &[f64]) -> Startup {
        startup(&pods(totals)).unwrap()
    }

    #[test]
    fn startup_splits_phases_and_skips_incomplete_pods() {
        let mut p = pods(&[4.0, 8.0]);
        p.push(PodTimes {
            created: Some(1.0),
            bound: Some(2.0),
            running: None,
        });
        let s = startup(&p).unwrap();
        assert_eq!(s.total.count, 2);
        assert_eq!((s.schedule.max, s.run.max, s.total.max), (2.0, 6.0, 8.0));
        assert_eq!(s.total.p50, 4.0);
        assert!(startup(&p[2..]).is_none());
    }

    #[test]
    fn throughput_bins_bindings_per_second() {
        // 10 pods in the first second, 20 in the next, 30 in the last.
        let mut bound = Vec::new();
        for (second, n) in [(0.0, 10), (1.0, 20), (2.0, 30)] {
            for i in 0..n {
                bound.push(second + i as f64 / 40.0);
            }
        }
        let t = throughput(&bound).unwrap();
        assert_eq!(t.per_second.max, 30.0);
        assert_eq!(t.per_second.p50, 20.0);
        assert!((t.average - 60.0 / (2.0 + 29.0 / 40.0)).abs() < 1e-9);
        assert!(throughput(&[1.0]).is_none());
    }

    #[test]
    fn a_report_without_data_names_what_is_missing() {
        assert_eq!(
            missing(&[], "latency", 10, None),
            vec![
                "no mutating API call was measured",
                "no namespace-scoped LIST was measured",
                "no cluster-scoped LIST was measured",
                "no latency pod started",
            ]
        );
        let api = vec![
            call("PUT", "leases.coordination.k8s.io", "namespace", 0.1),
            call("LIST", "pods", "namespace", 0.1),
            call("LIST", "pods", "cluster", 0.1),
        ];
        let s = startup_of(&[1.0; 9]);
        assert_eq!(
            missing(&api, "load", 10, Some(&s)),
            vec!["9 of 10 load pods have a complete timeline"]
        );
        assert!(missing(&api, "load", 9, Some(&s)).is_empty());
    }

    #[test]
    fn api_calls_qualify_groups_and_merge_versions() {
        let labels = |group: &str, version: &str| -> Labels {
            [
                ("verb", "POST"),
                ("group", group),
                ("version", version),
                ("resource", "deployments"),
                ("subresource", ""),
                ("scope", "namespace"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let h = |n: f64| Histogram {
            buckets: vec![(0.1, n), (1.0, n), (f64::INFINITY, n)],
            sum: 0.0,
        };
        let w = Family::from([
            (labels("apps", "v1"), h(7.0)),
            (labels("apps", "v1beta1"), h(2.0)),
        ]);
        let calls = api_calls(&w);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].resource, "deployments.apps");
        assert_eq!(calls[0].count, 9);
        // The SLI's calls carry the p99 of their whole latency (APF queueing included).
        let slow = |n: f64| Histogram {
            buckets: vec![(0.1, 0.0), (1.0, 0.0), (4.0, n), (f64::INFINITY, n)],
            sum: 0.0,
        };
        let whole = Family::from([(labels("apps", "v1"), slow(9.0))]);
        let calls = api_calls_with_whole(&w, &whole);
        assert!(calls[0].p99 <= 0.1, "{}", calls[0].p99);
        assert!(calls[0].p99_whole > 1.0, "{}", calls[0].p99_whole);
        // A call the whole histogram lacks keeps its own p99.
        let calls = api_calls_with_whole(&w, &Family::new());
        assert_eq!(calls[0].p99_whole, calls[0].p99);
    }
}
