//! The run directory: raw samples as CSV, the SLIs and verdicts as JSON and markdown, and SVG
//! plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use super::chaos::Fault;
use super::churn::Churned;
use super::histograms;
use super::observe::{ComponentSample, PodRecord, Scrape};
use super::slo::{self, ApiCall, Percentiles, Startup, Throughput, Verdict};

/// The workload a report describes.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// `density` or `load`.
    pub kind: String,
    pub nodes: usize,
    /// One line for the summary.
    pub description: String,
    /// The workload's flags and the sizes they gave.
    pub params: serde_json::Value,
    /// `started` (by the run) or the kubeconfig the run attached to.
    pub cluster: String,
    /// The pod group the pod startup SLO is judged on, and how many of its pods must have a
    /// complete timeline.
    pub judged: String,
    pub judged_pods: usize,
    /// The pod group whose binding rate is the scheduling throughput, and how many of its
    /// first-bound pods were created while the scheduler was saturated (those are counted).
    pub saturating: String,
    pub saturating_pods: usize,
    /// The chaos injected, if any (one line).
    pub chaos: Option<String>,
    /// The churn beside the workload, if any (one line).
    pub churn: Option<String>,
}

/// A component's use over the run.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentUse {
    pub component: String,
    pub cpu_cores_avg: f64,
    pub cpu_cores_max: f64,
    pub rss_mib_max: f64,
}

/// Everything a run measured, summarised.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What ran.
    pub workload: Workload,
    /// How long the measured part took.
    pub seconds: f64,
    /// Latency of every kind of API call, slowest p99 first.
    pub api_calls: Vec<ApiCall>,
    /// Pod startup per group (`saturation`, `latency`).
    pub pod_startup: BTreeMap<String, Startup>,
    /// Pods bound per second.
    pub scheduling_throughput: Option<Throughput>,
    /// Watch event lag, seconds.
    pub watch_lag: Option<Percentiles>,
    /// CPU and memory of every component (a started cluster only).
    pub components: Vec<ComponentUse>,
    /// The largest store member's data directory, bytes.
    pub store_bytes_max: Option<u64>,
    /// The SLOs judged.
    pub verdicts: Vec<Verdict>,
    /// SLIs without data; a report with any is incomplete and the run fails.
    pub missing: Vec<String>,
    /// The faults injected (chaos), in order.
    pub faults: Vec<Fault>,
    /// What the config churn wrote, when on.
    pub churned: Option<Churned>,
}

/// The raw samples of a run.
pub struct Samples {
    pub pods: Vec<PodRecord>,
    pub scrapes: Vec<Scrape>,
    pub watch_lag: Vec<(f64, f64)>,
    pub components: Vec<ComponentSample>,
    pub store: Vec<(f64, u64)>,
    /// Whether the run could see the components' processes.
    pub sampled_components: bool,
    /// The faults injected (chaos).
    pub faults: Vec<Fault>,
    /// What the config churn wrote, when on.
    pub churned: Option<Churned>,
}

/// Computes the report from the samples.
pub fn summarise(workload: Workload, seconds: f64, s: &Samples) -> Report {
    // The sum of consecutive intervals, as Prometheus' increase() does: a server restarted
    // between two scrapes loses only that interval's calls before the restart.
    let (mut window, mut whole) = (histograms::Family::new(), histograms::Family::new());
    for w in s.scrapes.windows(2) {
        for (labels, h) in histograms::window(&w[0].servers, &w[1].servers) {
            window.entry(labels).or_default().add(&h);
        }
        for (labels, h) in histograms::window(&w[0].whole, &w[1].whole) {
            whole.entry(labels).or_default().add(&h);
        }
    }
    let api_calls = slo::api_calls_with_whole(&window, &whole);
    let mut pod_startup = BTreeMap::new();
    let groups: std::collections::BTreeSet<&str> =
        s.pods.iter().map(|p| p.group.as_str()).collect();
    for group in groups {
        let times: Vec<slo::PodTimes> = s
            .pods
            .iter()
            .filter(|p| p.group == group)
            .map(|p| p.times.clone())
            .collect();
        if let Some(st) = slo::startup(&times) {
            pod_startup.insert(group.to_string(), st);
        }
    }
    // Throughput while the scheduler is saturated: the saturating group's first-bound pods,
    // not the latency pods' trickle or a load's scale-ups.
    let mut bound: Vec<f64> = s
        .pods
        .iter()
        .filter(|p| p.group == workload.saturating)
        .filter_map(|p| p.times.bound)
        .collect();
    bound.sort_by(f64::total_cmp);
    bound.truncate(workload.saturating_pods);
    let lags: Vec<f64> = s.watch_lag.iter().map(|l| l.1).collect();
    let mut by_component: BTreeMap<&str, Vec<&ComponentSample>> = BTreeMap::new();
    for c in &s.components {
        by_component.entry(&c.component).or_default().push(c);
    }
    let components = by_component
        .into_iter()
        .map(|(name, v)| {
            // The first sample of a process has no interval behind it.
            let cpu: Vec<f64> = v.iter().skip(1).map(|c| c.cpu_cores).collect();
            ComponentUse {
                component: name.to_string(),
                cpu_cores_avg: cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
                cpu_cores_max: cpu.iter().copied().fold(0.0, f64::max),
                rss_mib_max: v.iter().map(|c| c.rss_mib).fold(0.0, f64::max),
            }
        })
        .collect::<Vec<_>>();
    let mut missing = slo::missing(
        &api_calls,
        &workload.judged,
        workload.judged_pods,
        pod_startup.get(&workload.judged),
    );
    let scheduling_throughput = slo::throughput(&bound);
    if scheduling_throughput.is_none() {
        missing.push("fewer than two pods were bound".into());
    }
    let watch_lag = slo::percentiles(&lags);
    if watch_lag.is_none() {
        missing.push("no watch lag sample".into());
    }
    if s.sampled_components && (components.is_empty() || s.store.is_empty()) {
        missing.push("no component or store sample".into());
    }
    if s.churned.as_ref().is_some_and(|c| c.writes == 0) {
        missing.push("config churn was asked for but no write succeeded".into());
    }
    if workload.chaos.is_some() && s.faults.is_empty() {
        missing.push("chaos was asked for but no fault was injected (the run ended first)".into());
    }
    let verdicts = slo::verdicts(
        &api_calls,
        &workload.judged,
        pod_startup.get(&workload.judged),
    );
    Report {
        workload,
        seconds,
        api_calls,
        pod_startup,
        scheduling_throughput,
        watch_lag,
        components,
        store_bytes_max: s.store.iter().map(|x| x.1).max(),
        verdicts,
        missing,
        faults: s.faults.clone(),
        churned: s.churned.clone(),
    }
}

fn csv(
    dir: &Path,
    name: &str,
    header: &str,
    rows: impl Iterator<Item = String>,
) -> anyhow::Result<()> {
    let mut body = format!("{header}\n");
    for r in rows {
        body.push_str(&r);
        body.push('\n');
    }
    std::fs::write(dir.join(name), body).with_context(|| format!("writing {name}"))
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_default()
}

/// Writes the raw samples, `summary.json`, `summary.md` and the plots into `dir`.
pub fn write(dir: &Path, report: &Report, s: &Samples) -> anyhow::Result<()> {
    csv(
        dir,
        "pods.csv",
        "namespace,name,group,node,created_s,bound_s,running_s",
        s.pods.iter().map(|p| {
            format!(
                "{},{},{},{},{},{},{}",
                p.namespace,
                p.name,
                p.group,
                p.node.clone().unwrap_or_default(),
                opt(p.times.created),
                opt(p.times.bound),
                opt(p.times.running)
            )
        }),
    )?;
    csv(
        dir,
        "api-calls.csv",
        "resource,subresource,verb,scope,count,p50_s,p90_s,p99_s,whole_p99_s",
        report.api_calls.iter().map(|c| {
            format!(
                "{},{},{},{},{},{:.4},{:.4},{:.4},{:.4}",
                c.resource,
                c.subresource,
                c.verb,
                c.scope,
                c.count,
                c.p50,
                c.p90,
                c.p99,
                c.p99_whole
            )
        }),
    )?;
    let intervals = api_intervals(&s.scrapes);
    csv(
        dir,
        "api-latency-over-time.csv",
        "end_s,resource,subresource,verb,scope,count,p50_s,p99_s,whole_p99_s",
        intervals.iter().flat_map(|(at, calls)| {
            calls.iter().map(move |c| {
                format!(
                    "{at:.1},{},{},{},{},{},{:.4},{:.4},{:.4}",
                    c.resource, c.subresource, c.verb, c.scope, c.count, c.p50, c.p99, c.p99_whole
                )
            })
        }),
    )?;
    csv(
        dir,
        "watch-lag.csv",
        "sent_s,lag_s",
        s.watch_lag
            .iter()
            .map(|(at, lag)| format!("{at:.3},{lag:.4}")),
    )?;
    csv(
        dir,
        "components.csv",
        "at_s,component,pid,cpu_cores,rss_mib",
        s.components.iter().map(|c| {
            format!(
                "{:.1},{},{},{:.3},{:.1}",
                c.at, c.component, c.pid, c.cpu_cores, c.rss_mib
            )
        }),
    )?;
    csv(
        dir,
        "store.csv",
        "at_s,bytes",
        s.store.iter().map(|(at, b)| format!("{at:.1},{b}")),
    )?;
    if report.workload.chaos.is_some() {
        csv(
            dir,
            "chaos.csv",
            "at_s,fault,target,back_after_s",
            s.faults
                .iter()
                .map(|f| format!("{:.1},{},{},{}", f.at, f.kind, f.target, opt(f.back_after))),
        )?;
    }
    std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(dir.join("summary.md"), markdown(report))?;
    plots(dir, report, s, &intervals)
}

/// The API calls of each interval between consecutive scrapes, by the interval's end.
fn api_intervals(scrapes: &[Scrape]) -> Vec<(f64, Vec<ApiCall>)> {
    scrapes
        .windows(2)
        .map(|w| {
            (
                w[1].at,
                slo::api_calls_with_whole(
                    &histograms::window(&w[0].servers, &w[1].servers),
                    &histograms::window(&w[0].whole, &w[1].whole),
                ),
            )
        })
        .collect()
}

/// The report as markdown.
pub fn markdown(r: &Report) -> String {
    let w = &r.workload;
    let mut s = String::new();
    let mut title = w.kind.clone();
    if let Some(first) = title.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    let _ = writeln!(s, "# {title} run\n");
    let _ = writeln!(
        s,
        "{}; cluster: {}; {:.0} s.\n",
        w.description, w.cluster, r.seconds
    );
    if let Some(churn) = &w.churn {
        let _ = write!(s, "Churn: {churn}");
        if let Some(c) = &r.churned {
            let _ = write!(s, "; {} config writes ({} failed)", c.writes, c.failed);
        }
        let _ = writeln!(s, ".\n");
    }
    if !r.missing.is_empty() {
        let _ = writeln!(s, "**Incomplete: {}.**\n", r.missing.join("; "));
    }
    let failed = r.verdicts.iter().filter(|v| !v.pass).count();
    let _ = writeln!(
        s,
        "## SLOs: {}\n\n| SLO | call or pods | p99 | threshold | |\n|---|---|---|---|---|",
        if failed == 0 {
            "all met".to_string()
        } else {
            format!("{failed} not met")
        }
    );
    for v in &r.verdicts {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} s | {} s | {} |",
            v.slo,
            v.subject,
            v.p99,
            v.threshold,
            if v.pass { "met" } else { "**NOT MET**" }
        );
    }
    let _ = writeln!(
        s,
        "\n## Pod startup (seconds)\n\n| pods | phase | count | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|"
    );
    for (group, st) in &r.pod_startup {
        for (phase, p) in [
            ("create → bound", &st.schedule),
            ("bound → running", &st.run),
            ("create → running (SLI)", &st.total),
        ] {
            let _ = writeln!(
                s,
                "| {group} | {phase} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                p.count, p.p50, p.p90, p.p99, p.max
            );
        }
    }
    if let Some(t) = &r.scheduling_throughput {
        let p = &t.per_second;
        let _ = writeln!(
            s,
            "\n## Scheduling throughput\n\n{:.1} pods/s on average; per second p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0}.",
            t.average, p.p50, p.p90, p.p99, p.max
        );
    }
    if let Some(l) = &r.watch_lag {
        let _ = writeln!(
            s,
            "\n## Watch event lag\n\nFrom the start of a write to its event at another client, {} samples: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms.",
            l.count,
            l.p50 * 1e3,
            l.p90 * 1e3,
            l.p99 * 1e3,
            l.max * 1e3
        );
    }
    let _ = writeln!(
        s,
        "\n## API calls (all clients, from the apiservers' metrics)\n\nLatency as the SLO counts it (`apiserver_request_sli_duration_seconds`: without time queued by API Priority and Fairness or spent in admission webhooks), and the p99 of the whole latency (`apiserver_request_duration_seconds`).\n\n| verb | resource | scope | count | p50 ms | p90 ms | p99 ms | whole p99 ms |\n|---|---|---|---|---|---|---|---|"
    );
    for c in &r.api_calls {
        let sub = if c.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", c.subresource)
        };
        let _ = writeln!(
            s,
            "| {} | {}{sub} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            c.verb,
            c.resource,
            c.scope,
            c.count,
            c.p50 * 1e3,
            c.p90 * 1e3,
            c.p99 * 1e3,
            c.p99_whole * 1e3
        );
    }
    if !r.components.is_empty() {
        let _ = writeln!(
            s,
            "\n## Components\n\n| component | CPU cores avg | CPU cores max | RSS max MiB |\n|---|---|---|---|"
        );
        for c in &r.components {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.2} | {:.0} |",
                c.component, c.cpu_cores_avg, c.cpu_cores_max, c.rss_mib_max
            );
        }
    }
    if let Some(b) = r.store_bytes_max {
        let _ = writeln!(
            s,
            "\nLargest store member data directory: {:.1} MiB.",
            b as f64 / 1048576.0
        );
    }
    if let Some(chaos) = &w.chaos {
        let _ = writeln!(s, "\n## Chaos\n\n{chaos}.\n");
        let _ = writeln!(
            s,
            "| fault | injected | back | back after p50 s | back after max s |\n|---|---|---|---|---|"
        );
        for kind in ["node-failure", "apiserver-kill"] {
            let of: Vec<&Fault> = r.faults.iter().filter(|f| f.kind == kind).collect();
            if of.is_empty() {
                continue;
            }
            let mut back: Vec<f64> = of.iter().filter_map(|f| f.back_after).collect();
            back.sort_by(f64::total_cmp);
            let (p50, max) = match back.len() {
                0 => ("-".to_string(), "-".to_string()),
                n => (
                    format!("{:.1}", back[(n - 1) / 2]),
                    format!("{:.1}", back[n - 1]),
                ),
            };
            let _ = writeln!(
                s,
                "| {kind} | {} | {} | {p50} | {max} |",
                of.len(),
                back.len()
            );
        }
        let _ = writeln!(
            s,
            "\nEvery fault, with when it was injected and when its target was back: `chaos.csv`."
        );
    }
    let _ = writeln!(
        s,
        "\nPlots: `api-latency.svg`, `pods.svg`, `pod-startup-cdf.svg`{}.",
        if r.components.is_empty() {
            ""
        } else {
            ", `components.svg`, `components-rss.svg`"
        }
    );
    s
}

/// One run of a comparison: what differed, where its directory is, what it measured.
pub struct Compared<'a> {
    pub label: String,
    pub dir: &'a Path,
    pub report: &'a Report,
}

/// `resource/subresource`.
fn call_resource(c: &ApiCall) -> String {
    if c.subresource.is_empty() {
        c.resource.clone()
    } else {
        format!("{}/{}", c.resource, c.subresource)
    }
}

/// The rest of a table's header with two columns per run (`A count | A p99 | ...`) after
/// `leading` columns, and its separator line.
fn run_columns(names: &[String], first: &str, second: &str, leading: usize) -> String {
    let cells: Vec<String> = names
        .iter()
        .map(|n| format!("{n} {first} | {n} {second}"))
        .collect();
    format!(
        "{} |\n|{}{}",
        cells.join(" | "),
        "---|".repeat(leading),
        "---|---|".repeat(names.len())
    )
}

/// Runs of one workload side by side (`--compare`): the SLO verdicts, pod startup, scheduling
/// throughput, watch lag, every kind of API call and every component, one column per run.
pub fn comparison(runs: &[Compared<'_>]) -> String {
    let mut s = String::new();
    let Some(first) = runs.first() else {
        return s;
    };
    let w = &first.report.workload;
    let _ = writeln!(
        s,
        "# Comparison of {} {} runs
",
        runs.len(),
        w.kind
    );
    let _ = writeln!(
        s,
        "{}.
",
        w.description
    );
    let names: Vec<String> = (0..runs.len())
        .map(|i| char::from(b'A' + (i % 26) as u8).to_string())
        .collect();
    let row = |s: &mut String, title: &str, cell: &dyn Fn(&Report) -> String| {
        let cells: Vec<String> = runs.iter().map(|r| cell(r.report)).collect();
        let _ = writeln!(s, "| {title} | {} |", cells.join(" | "));
    };
    let _ = writeln!(
        s,
        "| | {} |\n|---|{}",
        names.join(" | "),
        "---|".repeat(runs.len())
    );
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    let _ = writeln!(s, "| cluster | {} |", labels.join(" | "));
    let dirs: Vec<String> = runs.iter().map(|r| r.dir.display().to_string()).collect();
    let _ = writeln!(s, "| run directory | {} |", dirs.join(" | "));
    row(&mut s, "SLOs", &|r| {
        let failed: Vec<&str> = r
            .verdicts
            .iter()
            .filter(|v| !v.pass)
            .map(|v| v.subject.as_str())
            .collect();
        match (r.missing.is_empty(), failed.is_empty()) {
            (false, _) => format!("incomplete: {}", r.missing.join("; ")),
            (true, true) => "all met".into(),
            (true, false) => format!("not met: {}", failed.join(", ")),
        }
    });
    row(&mut s, "measured for", &|r| format!("{:.0} s", r.seconds));
    // (A load run judges the pods it saturates with: one row.)
    let groups = if w.judged == w.saturating {
        vec![(&w.judged, "judged")]
    } else {
        vec![(&w.judged, "judged"), (&w.saturating, "saturating")]
    };
    for (group, what) in groups {
        row(
            &mut s,
            &format!("pod startup p50 / p99, {group} pods ({what})"),
            &|r| match r.pod_startup.get(group) {
                Some(st) => format!("{:.3} / {:.3} s", st.total.p50, st.total.p99),
                None => "-".into(),
            },
        );
    }
    row(&mut s, "scheduling throughput", &|r| {
        r.scheduling_throughput
            .as_ref()
            .map_or("-".into(), |t| format!("{:.1} pods/s", t.average))
    });
    row(&mut s, "watch event lag p50 / p99", &|r| {
        r.watch_lag.as_ref().map_or("-".into(), |l| {
            format!("{:.1} / {:.1} ms", l.p50 * 1e3, l.p99 * 1e3)
        })
    });
    row(&mut s, "largest store data directory", &|r| {
        r.store_bytes_max
            .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
    });

    // Every kind of API call any run saw, the slowest (by its worst p99) first.
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for r in runs {
        for c in &r.report.api_calls {
            let k = (c.verb.clone(), call_resource(c), c.scope.clone());
            if !calls.contains(&k) {
                calls.push(k);
            }
        }
    }
    fn find<'a>(r: &'a Report, k: &(String, String, String)) -> Option<&'a ApiCall> {
        r.api_calls
            .iter()
            .find(|c| c.verb == k.0 && call_resource(c) == k.1 && c.scope == k.2)
    }
    let worst = |k: &(String, String, String)| {
        runs.iter()
            .filter_map(|r| find(r.report, k))
            .map(|c| c.p99)
            .fold(0.0, f64::max)
    };
    calls.sort_by(|a, b| worst(b).total_cmp(&worst(a)));
    let _ = writeln!(
        s,
        "\n## API calls: count and p99 ms (SLI)\n\n| verb | resource | scope | {}",
        run_columns(&names, "count", "p99", 3)
    );
    for k in &calls {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| match find(r.report, k) {
                Some(c) => format!("{} | {:.0}", c.count, c.p99 * 1e3),
                None => "- | -".into(),
            })
            .collect();
        let _ = writeln!(s, "| {} | {} | {} | {} |", k.0, k.1, k.2, cells.join(" | "));
    }

    let mut components: Vec<&str> = Vec::new();
    for r in runs {
        for c in &r.report.components {
            if !components.contains(&c.component.as_str()) {
                components.push(&c.component);
            }
        }
    }
    if !components.is_empty() {
        let _ = writeln!(
            s,
            "\n## Components: CPU cores (average) and RSS MiB (max)\n\n| component | {}",
            run_columns(&names, "CPU", "RSS", 1)
        );
        for name in components {
            let cells: Vec<String> = runs
                .iter()
                .map(
                    |r| match r.report.components.iter().find(|c| c.component == name) {
                        Some(c) => format!("{:.2} | {:.0}", c.cpu_cores_avg, c.rss_mib_max),
                        None => "- | -".into(),
                    },
                )
                .collect();
            let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
        }
    }
    s
}

type Series = (String, Vec<(f64, f64)>);

/// A line chart of `series` as an SVG file.
fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| s.1.iter());
    let x_max = points().map(|p| p.0).fold(1e-9, f64::max);
    let y_max = points().map(|p| p.1).fold(1e-9, f64::max) * 1.05;
    let root = SVGBackend::new(path, (1000, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(plot_error)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// Counts of `times` per `bin` seconds, as a rate.
fn rate(times: impl Iterator<Item = f64>, bin: f64) -> Vec<(f64, f64)> {
    let mut counts: BTreeMap<i64, f64> = BTreeMap::new();
    for t in times {
        *counts.entry((t / bin).floor() as i64).or_default() += 1.0;
    }
    let Some(&last) = counts.keys().last() else {
        return Vec::new();
    };
    (0..=last)
        .map(|b| {
            (
                (b as f64 + 1.0) * bin,
                counts.get(&b).copied().unwrap_or(0.0) / bin,
            )
        })
        .collect()
}

fn plots(
    dir: &Path,
    r: &Report,
    s: &Samples,
    intervals: &[(f64, Vec<ApiCall>)],
) -> anyhow::Result<()> {
    // p99 over time of the busiest calls an SLO covers.
    let mut busiest: Vec<&ApiCall> = r
        .api_calls
        .iter()
        .filter(|c| slo::api_slo(c).is_some())
        .collect();
    busiest.sort_by_key(|c| std::cmp::Reverse(c.count));
    let series: Vec<Series> = busiest
        .iter()
        .take(8)
        .map(|c| {
            let key = (&c.resource, &c.subresource, &c.verb, &c.scope);
            let pts = intervals
                .iter()
                .filter_map(|(at, calls)| {
                    calls
                        .iter()
                        .find(|x| (&x.resource, &x.subresource, &x.verb, &x.scope) == key)
                        .map(|x| (*at, x.p99))
                })
                .collect();
            (format!("{} {} ({})", c.verb, c.resource, c.scope), pts)
        })
        .collect();
    line_chart(
        &dir.join("api-latency.svg"),
        "API call latency p99 per sampling interval",
        "seconds since start",
        "p99 (s)",
        &series,
    )?;
    let bin = 5.0;
    let of = |f: fn(&PodRecord) -> Option<f64>| rate(s.pods.iter().filter_map(f), bin);
    line_chart(
        &dir.join("pods.svg"),
        "Pods created, bound and running (per second, 5 s bins)",
        "seconds since start",
        "pods/s",
        &[
            ("created".into(), of(|p| p.times.created)),
            ("bound".into(), of(|p| p.times.bound)),
            ("running".into(), of(|p| p.times.running)),
        ],
    )?;
    let cdf = |group: &str| -> Series {
        let mut v: Vec<f64> = s
            .pods
            .iter()
            .filter(|p| p.group == group)
            .filter_map(|p| Some(p.times.running? - p.times.created?))
            .collect();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let pts = v
            .iter()
            .enumerate()
            .map(|(i, x)| (*x, (i + 1) as f64 / n))
            .collect();
        (format!("{group} pods"), pts)
    };
    line_chart(
        &dir.join("pod-startup-cdf.svg"),
        "Pod startup latency (create to running, observed by watch): CDF",
        "seconds",
        "fraction of pods",
        &r.pod_startup.keys().map(|g| cdf(g)).collect::<Vec<_>>(),
    )?;
    if !s.components.is_empty() {
        let mut cpu: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        let mut rss: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for c in &s.components {
            cpu.entry(&c.component)
                .or_default()
                .push((c.at, c.cpu_cores));
            rss.entry(&c.component).or_default().push((c.at, c.rss_mib));
        }
        let named = |m: BTreeMap<&str, Vec<(f64, f64)>>| -> Vec<Series> {
            m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        };
        line_chart(
            &dir.join("components.svg"),
            "CPU of every component",
            "seconds since start",
            "cores",
            &named(cpu),
        )?;
        line_chart(
            &dir.join("components-rss.svg"),
            "Resident memory of every component",
            "seconds since start",
            "MiB",
            &named(rss),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_fill_empty_bins() {
        let r = rate([0.5, 1.0, 11.0].into_iter(), 5.0);
        assert_eq!(r, vec![(5.0, 0.4), (10.0, 0.0), (15.0, 0.2)]);
        assert!(rate(std::iter::empty(), 5.0).is_empty());
    }

    #[test]
    fn plots_are_svg_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.svg");
        line_chart(
            &path,
            "t",
            "x",
            "y",
            &[
                ("a".into(), vec![(0.0, 1.0), (2.0, 3.0)]),
                ("b".into(), vec![]),
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        // The title, the series' line and its legend entry.
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
        assert!(svg.contains("\nt\n") && svg.contains("\na\n"), "{svg}");
    }

    fn report(pod_p99: f64, post_pods_p99: f64, extra_call: bool, rss: f64) -> Report {
        let pct = |p99: f64| Percentiles {
            count: 10,
            p50: p99 / 2.0,
            p90: p99,
            p99,
            max: p99,
        };
        let call = |verb: &str, sub: &str, p99: f64| ApiCall {
            resource: "pods".into(),
            subresource: sub.into(),
            verb: verb.into(),
            scope: "resource".into(),
            count: 100,
            p50: p99 / 4.0,
            p90: p99 / 2.0,
            p99,
            p99_whole: p99,
        };
        let mut api_calls = vec![call("POST", "", post_pods_p99)];
        if extra_call {
            api_calls.push(call("POST", "binding", 0.9));
        }
        Report {
            workload: Workload {
                kind: "density".into(),
                nodes: 5,
                description: "5 nodes".into(),
                params: serde_json::json!({}),
                cluster: "started".into(),
                judged: "latency".into(),
                judged_pods: 10,
                saturating: "saturation".into(),
                saturating_pods: 10,
                chaos: None,
                churn: None,
            },
            seconds: 60.0,
            api_calls,
            pod_startup: [(
                "latency".to_string(),
                Startup {
                    schedule: pct(pod_p99),
                    run: pct(pod_p99),
                    total: pct(pod_p99),
                },
            )]
            .into(),
            scheduling_throughput: None,
            watch_lag: Some(pct(0.1)),
            components: vec![ComponentUse {
                component: "apiserver 0".into(),
                cpu_cores_avg: 0.25,
                cpu_cores_max: 0.5,
                rss_mib_max: rss,
            }],
            store_bytes_max: Some(1048576),
            verdicts: vec![Verdict {
                slo: "pod startup latency".into(),
                subject: "latency pods".into(),
                p99: pod_p99,
                threshold: 5.0,
                pass: pod_p99 <= 5.0,
            }],
            missing: Vec::new(),
            faults: Vec::new(),
            churned: None,
        }
    }

    #[test]
    fn a_comparison_puts_each_run_in_its_column_and_every_call_in_a_row() {
        let (a, b) = (
            report(0.5, 0.2, false, 100.0),
            report(6.0, 0.4, true, 300.0),
        );
        let md = comparison(&[
            Compared {
                label: "keelson-store".into(),
                dir: Path::new("/runs/a"),
                report: &a,
            },
            Compared {
                label: "store /usr/bin/etcd".into(),
                dir: Path::new("/runs/b"),
                report: &b,
            },
        ]);
        let line = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in\n{md}"))
                .to_string()
        };
        assert_eq!(
            line("| cluster"),
            "| cluster | keelson-store | store /usr/bin/etcd |"
        );
        assert_eq!(
            line("| run directory"),
            "| run directory | /runs/a | /runs/b |"
        );
        assert_eq!(line("| SLOs"), "| SLOs | all met | not met: latency pods |");
        assert_eq!(
            line("| pod startup p50 / p99, latency"),
            "| pod startup p50 / p99, latency pods (judged) | 0.250 / 0.500 s | 3.000 / 6.000 s |"
        );
        // A group neither run has, a figure neither has.
        assert_eq!(
            line("| pod startup p50 / p99, saturation"),
            "| pod startup p50 / p99, saturation pods (saturating) | - | - |"
        );
        assert_eq!(line("| scheduling"), "| scheduling throughput | - | - |");
        // Calls: the slowest first; one only B made.
        let calls: Vec<&str> = md.lines().filter(|l| l.starts_with("| POST")).collect();
        assert_eq!(
            calls,
            [
                "| POST | pods/binding | resource | - | - | 100 | 900 |",
                "| POST | pods | resource | 100 | 200 | 100 | 400 |",
            ]
        );
        assert_eq!(
            line("| apiserver 0"),
            "| apiserver 0 | 0.25 | 100 | 0.25 | 300 |"
        );
        // Every table row has as many cells as its header.
        for table in md.split("\n\n").filter(|t| t.starts_with('|')) {
            let widths: Vec<usize> = table.lines().map(|l| l.matches('|').count()).collect();
            assert!(widths.iter().all(|w| *w == widths[0]), "{table}");
        }
    }
}
