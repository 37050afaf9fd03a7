//! `keelson bench density` and `load` end to end, CI-sized: a started cluster of 50 hollow nodes
//! with 500 saturation pods, every SLI computed from what the run saw (apiserver metrics, pod
//! watches, the watch probe, component processes), and nothing left behind; attached to a
//! cluster, density refuses namespaces it would delete and leaves the cluster as it found it,
//! and load creates, scales and deletes its Deployments and Services.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keelson_bench::cluster::Cluster;
use serde_json::Value;

/// The two runs would share two cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bench(workload: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args(["bench", workload])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run keelson bench")
}

fn density(args: &[&str]) -> Output {
    bench("density", args)
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("kubectl must be installed")
}

/// The saturation pods of `pods.csv` summed up: pods per ReplicaSet (from their generated
/// names), and the rows of any ReplicaSet whose count differs from the most common one.
fn pods_per_replicaset(run: &Path) -> String {
    let pods = std::fs::read_to_string(run.join("pods.csv")).unwrap_or_default();
    let mut by_set: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for line in pods.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.get(2) != Some(&"saturation") {
            continue;
        }
        let name = fields[1];
        let set = name.rsplit_once('-').map_or(name, |(set, _)| set);
        by_set.entry(set.to_string()).or_default().push(line);
    }
    let mut sizes: std::collections::HashMap<usize, usize> = Default::default();
    for rows in by_set.values() {
        *sizes.entry(rows.len()).or_default() += 1;
    }
    let usual = sizes
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or(0, |(size, _)| size);
    let mut out = String::new();
    for (set, rows) in &by_set {
        out += &format!("{set}: {} pods\n", rows.len());
    }
    for (set, rows) in by_set.iter().filter(|(_, rows)| rows.len() != usual) {
        out += &format!("{set}:\n{}\n", rows.join("\n"));
    }
    out
}

/// The one run directory under `out`.
fn run_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn summary(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

fn count_of(s: &Value, verb: &str, resource: &str) -> u64 {
    count_of_sub(s, verb, resource, "")
}

fn count_of_sub(s: &Value, verb: &str, resource: &str, subresource: &str) -> u64 {
    s["api_calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["verb"] == verb && c["resource"] == resource && c["subresource"] == subresource
        })
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn density_measures_every_sli_from_real_samples_and_cleans_up() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let o = density(&[
        "--nodes=50",
        "--pods-per-node=10",
        "--latency-pods=25",
        &format!("--out={}", out.display()),
    ]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    let run = run_dir(&out);
    let s = summary(&run);
    assert_eq!(s["missing"], serde_json::json!([]), "{log}");
    assert_eq!(s["workload"]["nodes"], 50);
    // Every pod was created once through the API, and the apiserver's own histogram saw it.
    assert!(count_of(&s, "POST", "pods") >= 525, "{log}");
    assert!(count_of(&s, "POST", "deployments.apps") >= 10, "{log}");
    assert!(count_of(&s, "LIST", "pods") >= 2, "{log}");
    // (On a miscount, the pods per ReplicaSet say which one made too many or too few.)
    assert_eq!(
        s["pod_startup"]["saturation"]["total"]["count"],
        500,
        "{}",
        pods_per_replicaset(&run)
    );
    assert_eq!(s["pod_startup"]["latency"]["total"]["count"], 25);
    assert!(s["scheduling_throughput"]["average"].as_f64().unwrap() > 0.0);
    assert!(s["watch_lag"]["count"].as_u64().unwrap() > 0);
    let verdicts = s["verdicts"].as_array().unwrap();
    assert!(
        verdicts
            .iter()
            .any(|v| v["subject"] == "POST pods (resource)")
    );
    assert!(verdicts.iter().any(|v| v["subject"] == "latency pods"));
    let components: Vec<&str> = s["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    for want in [
        "store member s0",
        "apiserver 0",
        "controller-manager 0",
        "scheduler 0",
        "50 hollow nodes",
    ] {
        assert!(components.contains(&want), "{want} not in {components:?}");
    }
    assert!(s["store_bytes_max"].as_u64().unwrap() > 0);
    // The raw samples behind them.
    let pods = std::fs::read_to_string(run.join("pods.csv")).unwrap();
    assert_eq!(pods.lines().count(), 1 + 525);
    assert!(
        pods.lines()
            .skip(1)
            .all(|l| l.split(',').skip(4).all(|t| !t.is_empty())),
        "a pod without a complete timeline:\n{pods}"
    );
    for csv in [
        "api-calls.csv",
        "api-latency-over-time.csv",
        "watch-lag.csv",
    ] {
        let body = std::fs::read_to_string(run.join(csv)).unwrap();
        assert!(body.lines().count() > 1, "{csv} is empty");
    }
    for svg in [
        "api-latency.svg",
        "pods.svg",
        "pod-startup-cdf.svg",
        "components.svg",
        "components-rss.svg",
    ] {
        let body = std::fs::read_to_string(run.join(svg)).unwrap();
        assert!(body.starts_with("<svg"), "{svg}");
    }
    let md = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(md.contains("## SLOs") && md.contains("| latency | create → running (SLI) | 25 |"));
    // The cluster it started is gone, processes and data.
    let data = log
        .lines()
        .find_map(|l| l.strip_prefix("density: cluster data in "))
        .expect("the run names its cluster's data directory");
    assert!(!Path::new(data).exists(), "{data} is left behind");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default();
        assert!(
            !cmd.contains(data),
            "a process of the run's cluster lives on: {cmd}"
        );
    }
}

/// `--compare etcd`: the same workload on keelson-store, then on etcd (Debian's 3.4, which
/// .ci/run installs) as the store, reported side by side; both clusters are gone afterwards.
#[test]
fn density_compares_keelson_store_with_etcd_side_by_side() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let o = density(&[
        "--nodes=5",
        "--pods-per-node=4",
        "--deployment-size=10",
        "--latency-pods=5",
        "--compare=etcd",
        &format!("--out={}", out.display()),
    ]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    let compare = dirs
        .iter()
        .find(|d| d.to_string_lossy().contains("density-compare-"))
        .expect("a comparison directory");
    let s = summary(compare);
    let runs = s["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let cluster = |i: usize| runs[i]["cluster"].as_str().unwrap().to_string();
    assert!(cluster(0).starts_with("keelson-store, "), "{}", cluster(0));
    assert!(cluster(1).starts_with("store etcd, "), "{}", cluster(1));
    for r in runs {
        let report = &r["report"];
        assert_eq!(report["missing"], serde_json::json!([]), "{log}");
        assert_eq!(report["pod_startup"]["latency"]["total"]["count"], 5);
        assert_eq!(report["pod_startup"]["saturation"]["total"]["count"], 20);
        assert!(count_of(report, "POST", "pods") >= 25, "{log}");
        let run = PathBuf::from(r["dir"].as_str().unwrap());
        assert!(dirs.contains(&run), "{run:?} not in {dirs:?}");
        assert_eq!(summary(&run)["workload"], report["workload"]);
    }
    let md = std::fs::read_to_string(compare.join("summary.md")).unwrap();
    assert!(
        md.contains(&format!("| cluster | {} | {} |", cluster(0), cluster(1))),
        "{md}"
    );
    assert!(md.contains("| POST | pods | resource |"), "{md}");
    assert!(md.contains("| store member s0 |"), "{md}");
    // Both clusters are gone, processes and data.
    let data: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("density: cluster data in "))
        .collect();
    assert_eq!(data.len(), 2, "{log}");
    for d in data {
        assert!(!Path::new(d).exists(), "{d} is left behind");
    }
}

#[test]
fn attached_runs_refuse_namespaces_they_would_delete_and_leave_the_cluster_as_it_was() {
    let _serial = SERIAL.lock();
    let cluster = Cluster::start(
        Path::new(env!("CARGO_BIN_EXE_keelson")),
        &[
            "--single".into(),
            "--nodes=0".into(),
            "--hollow-nodes=5".into(),
        ],
    )
    .unwrap();
    let kc = cluster.kubeconfig.clone();
    // An attached run takes the nodes Ready when it starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let o = kubectl(
            &kc,
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ],
        );
        let ready = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| *l == "True")
            .count();
        if ready == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ready} of 5 nodes Ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let args = |extra: &[&str]| -> Vec<String> {
        [
            format!("--kubeconfig={}", kc.display()),
            "--pods-per-node=4".into(),
            "--latency-pods=5".into(),
            format!("--out={}", out.display()),
        ]
        .into_iter()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        density(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Bad flags: a clear error, nothing made.
    let o = run(&["--rate=0"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--rate must be a positive number"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());

    // A namespace the run would delete exists: refused, and nothing changed.
    assert!(
        kubectl(&kc, &["create", "namespace", "density-latency"])
            .status
            .success()
    );
    let o = run(&[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("namespace density-latency exists"),
        "{}",
        text(&o)
    );
    assert!(
        kubectl(&kc, &["get", "namespace", "density-latency"])
            .status
            .success()
    );
    assert!(
        !kubectl(&kc, &["get", "namespace", "density"])
            .status
            .success()
    );
    assert!(!out.exists());
    assert!(
        kubectl(&kc, &["delete", "namespace", "density-latency", "--wait"])
            .status
            .success()
    );

    // The run uses the cluster's nodes as they are and deletes all it made.
    let o = run(&[]);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&run_dir(&out));
    assert_eq!(s["workload"]["nodes"], 5);
    assert_eq!(s["missing"], serde_json::json!([]));
    assert_eq!(s["pod_startup"]["saturation"]["total"]["count"], 20);
    assert_eq!(s["components"], serde_json::json!([]));
    for ns in ["density", "density-latency"] {
        assert!(!kubectl(&kc, &["get", "namespace", ns]).status.success());
    }
    let left = kubectl(
        &kc,
        &[
            "get",
            "pods",
            "-A",
            "-l",
            "bench.keelson.dev/group",
            "-o",
            "name",
        ],
    );
    assert!(left.status.success());
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");

    // Load: 50 pods in CL2's mix (here 1 of 10, 4 of 5, 10 of 2), half with Services, created,
    // scaled and deleted.
    let out = dir.path().join("load-runs");
    let o = bench(
        "load",
        &[
            &format!("--kubeconfig={}", kc.display()),
            "--pods-per-node=10",
            "--deployment-sizes=10,5,2",
            "--rate=25",
            &format!("--out={}", out.display()),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&run_dir(&out));
    assert_eq!(s["missing"], serde_json::json!([]));
    assert_eq!(s["workload"]["kind"], "load");
    assert_eq!(s["workload"]["params"]["pods"], 50);
    assert_eq!(s["workload"]["params"]["deployments"], 15);
    assert_eq!(s["workload"]["params"]["services"], 7);
    assert!(s["pod_startup"]["load"]["total"]["count"].as_u64().unwrap() >= 50);
    for (verb, resource, n) in [
        ("POST", "deployments.apps", 15),
        ("PATCH", "deployments.apps", 15),
        ("DELETE", "deployments.apps", 15),
        ("POST", "services", 7),
        ("DELETE", "services", 7),
    ] {
        assert!(
            count_of(&s, verb, resource) >= n,
            "{verb} {resource}: {}",
            count_of(&s, verb, resource)
        );
    }
    let verdicts = s["verdicts"].as_array().unwrap();
    assert!(verdicts.iter().any(|v| v["subject"] == "load pods"));
    assert!(
        !kubectl(&kc, &["get", "namespace", "load-1"])
            .status
            .success()
    );
}

/// Chaos and churn during a density run: hollow nodes fail and come back, apiservers are
/// killed and restarted by `up`, ConfigMaps, Secrets and node status are rewritten beside the
/// workload, and the workload still completes (its writes retried) with every SLI measured and
/// every fault in the report with when its target was back.
#[test]
fn density_under_chaos_and_churn_completes_and_reports_every_fault() {
    let _serial = SERIAL.lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let o = density(&[
        "--nodes=10",
        "--pods-per-node=20",
        "--rate=10",
        "--latency-pods=10",
        "--apiservers=2",
        "--chaos-node-failures=0.2",
        "--chaos-interval=3",
        "--chaos-node-downtime=4",
        "--chaos-kill-apiserver-every=6",
        "--churn-config-qps=20",
        "--churn-node-status-every=2",
        &format!("--out={}", out.display()),
    ]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    let run = run_dir(&out);
    let s = summary(&run);
    assert_eq!(s["missing"], serde_json::json!([]), "{log}");
    // At least the 200 pods asked for: an apiserver killed mid-create can leave a create whose
    // outcome the ReplicaSet controller does not learn, and (as upstream's) it makes another
    // pod and deletes the spare later; each started pod is measured.
    let started = s["pod_startup"]["saturation"]["total"]["count"]
        .as_u64()
        .unwrap();
    assert!(
        (200..=210).contains(&started),
        "{started} pods started\n{log}"
    );
    assert_eq!(s["pod_startup"]["latency"]["total"]["count"], 10);
    let faults = s["faults"].as_array().unwrap();
    let of = |kind: &str| -> Vec<&Value> { faults.iter().filter(|f| f["kind"] == kind).collect() };
    let (nodes, apiservers) = (of("node-failure"), of("apiserver-kill"));
    // Two nodes a round, a round every 3 s of a run of 20 s or more.
    assert!(nodes.len() >= 4, "{faults:?}");
    assert!(
        nodes.iter().any(|f| f["back_after"].as_f64().is_some()),
        "no failed node came back: {faults:?}"
    );
    assert!(!apiservers.is_empty(), "{faults:?}");
    assert!(
        apiservers
            .iter()
            .any(|f| f["back_after"].as_f64().is_some_and(|b| b > 0.0)),
        "no killed apiserver came back: {faults:?}"
    );
    // Churn: config changes beside the workload, and every node's status every 2 s rather
    // than on change or every 5 minutes.
    let written = s["churned"]["writes"].as_u64().unwrap();
    assert!(written >= 100, "{}", s["churned"]);
    assert!(count_of(&s, "APPLY", "configmaps") + count_of(&s, "PATCH", "configmaps") > 0);
    assert!(count_of(&s, "APPLY", "secrets") + count_of(&s, "PATCH", "secrets") > 0);
    // Ten nodes for 20 s or more, each down part of the time, and the calls a killed apiserver
    // served since its last scrape lost: 73 posts seen (without the churn: 9).
    let posts = count_of_sub(&s, "PATCH", "nodes", "status");
    assert!(posts >= 30, "{posts} node status posts");
    let md = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(md.contains("## Chaos"), "{md}");
    assert!(md.contains("Churn: 20 config changes/s"), "{md}");
    let csv = std::fs::read_to_string(run.join("chaos.csv")).unwrap();
    assert_eq!(csv.lines().count(), faults.len() + 1, "{csv}");
}
