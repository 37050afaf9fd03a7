//! `keelson-bench webhook`: what admission webhooks add to a pod create. One cluster, three
//! namespaces: `plain` (no webhook selects it), `validated` (one validating webhook) and
//! `mutated` (one mutating webhook that patches a label, and the validating one). Creates go
//! to the three in turn, so all see the same machine at the same moment; beside them, the same
//! HTTPS client the apiserver uses POSTs a review straight to the webhook server, which is the
//! round trip a webhook cannot avoid: once from this process, and once from a process of its
//! own (`webhook-probe`), as the apiserver's calls come. The apiserver's own timing of each
//! call (`apiserver_admission_webhook_admission_duration_seconds`, read before and after)
//! says how much of what a webhook adds is its call. Each webhook should add about one round
//! trip, no more.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::{row, start_cluster};
use keelson_bench::webhook_server::{self, reply};

/// Flags of `keelson-bench webhook`.
#[derive(clap::Args, Debug)]
pub struct WebhookArgs {
    /// The keelson binary used to start the cluster (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Pod creates per namespace, one at a time.
    #[arg(long, default_value_t = 1000)]
    ops: usize,
}

/// Flags of `keelson-bench webhook-probe`.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The webhook server's port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Its CA, base64-encoded PEM.
    #[arg(long)]
    ca_bundle: String,
}

/// `webhook-probe`: for each line on stdin, one review POSTed to the webhook server with the
/// apiserver's webhook client; prints the round trip in µs (or `error`), a line each.
pub async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let tls = client_tls(&args.ca_bundle)?;
    let body = bytes::Bytes::from(review()?);
    let client = keelson_apiserver::webhook::client::Client::default();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while lines.next_line().await?.is_some() {
        let (took, ok) = post_review(&client, args.port, &tls, body.clone()).await;
        let line = if ok {
            format!("{}\n", took.as_micros())
        } else {
            "error\n".to_string()
        };
        out.write_all(line.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

/// A client TLS configuration trusting the CA of `ca_bundle` (base64-encoded PEM).
fn client_tls(ca_bundle: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ca_bundle)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(c?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

/// An AdmissionReview of a pod, as the apiserver sends for a create.
fn review() -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "operation": "CREATE", "object": pod("x".into())}}),
    )?)
}

/// One review POSTed to the webhook server's `/validate`: how long it took, and whether it
/// was answered 200.
async fn post_review(
    client: &keelson_apiserver::webhook::client::Client,
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
    body: bytes::Bytes,
) -> (Duration, bool) {
    let start = Instant::now();
    let ok = client
        .post(
            "127.0.0.1",
            port,
            "127.0.0.1",
            tls,
            "/validate?timeout=10s",
            None,
            body,
        )
        .await
        .is_ok_and(|(code, _)| code == 200);
    (start.elapsed(), ok)
}

/// For each webhook of `names`, the sum (s) and count of the apiserver's timings of its calls
/// (`apiserver_admission_webhook_admission_duration_seconds`, every label set of it), from
/// one scrape.
async fn webhook_timings(client: &kube::Client, names: &[&str]) -> anyhow::Result<Vec<(f64, f64)>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let family = "apiserver_admission_webhook_admission_duration_seconds";
    let (sum_of, count_of) = (format!("{family}_sum{{"), format!("{family}_count{{"));
    Ok(names
        .iter()
        .map(|name| {
            let label = format!("name=\"{name}\"");
            let (mut sum, mut count) = (0.0, 0.0);
            for line in text.lines().filter(|l| l.contains(&label)) {
                let Some((series, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let value: f64 = value.parse().unwrap_or(0.0);
                if series.starts_with(&sum_of) {
                    sum += value;
                } else if series.starts_with(&count_of) {
                    count += value;
                }
            }
            (sum, count)
        })
        .collect())
}

fn pod(name: String) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "pause"}]}}))
    .expect("a valid pod")
}

fn configuration(kind: &str, hooks: Vec<Value>) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "bench"},
        "webhooks": hooks,
    }))?)
}

fn webhook(name: &str, url: String, ca: &str, namespaces: &[&str]) -> Value {
    json!({
        "name": name,
        "clientConfig": {"url": url, "caBundle": ca},
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "namespaceSelector": {"matchExpressions": [{"key": "bench.keelson.dev/webhooks", "operator": "In", "values": namespaces}]},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
    })
}

/// Runs the comparison and prints a markdown table.
pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    let keelson = match &args.keelson {
        Some(k) => k.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    let server = webhook_server::start(
        Arc::new(|path: &str, review: &Value| {
            let patch = (path == "/mutate").then(
                || json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}]),
            );
            (Duration::ZERO, reply(review, true, patch, None))
        }),
        &[],
        false,
    )
    .await?;
    let cluster = start_cluster(&keelson, 1)?;
    let client = crate::authz::client(&cluster.kubeconfig).await?;
    let spaces = ["plain", "validated", "mutated"];
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in spaces {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": ns, "labels": {"bench.keelson.dev/webhooks": ns}}}),
                )?,
            )
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
    }
    for (kind, plural, hooks) in [
        (
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            vec![webhook(
                "validate.bench.keelson.dev",
                server.url("/validate"),
                &server.ca_bundle,
                &["validated", "mutated"],
            )],
        ),
        (
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            vec![webhook(
                "mutate.bench.keelson.dev",
                server.url("/mutate"),
                &server.ca_bundle,
                &["mutated"],
            )],
        ),
    ] {
        let ar = ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        api.create(&PostParams::default(), &configuration(kind, hooks)?)
            .await
            .with_context(|| format!("creating the {kind}"))?;
    }
    let apis: Vec<Api<Pod>> = spaces
        .iter()
        .map(|ns| Api::namespaced(client.clone(), ns))
        .collect();
    // Warm-up, and the webhooks in force: until a pod in `mutated` comes back labelled.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut warm, mut tries) = (0, 0);
    while warm < 50 {
        tries += 1;
        let p = apis[2]
            .create(&PostParams::default(), &pod(format!("warm-{tries}")))
            .await?;
        if p.metadata.labels.is_some_and(|l| l.contains_key("mutated")) {
            warm += 1;
            for api in &apis[..2] {
                api.create(&PostParams::default(), &pod(format!("warm-{tries}")))
                    .await?;
            }
        } else {
            anyhow::ensure!(Instant::now() < deadline, "the webhooks never took effect");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The round trip alone: the apiserver's own webhook client, kept-alive, same review size,
    // from this process and from one of its own.
    let direct = keelson_apiserver::webhook::client::Client::default();
    let tls = client_tls(&server.ca_bundle)?;
    let review = bytes::Bytes::from(review()?);
    let mut prober = tokio::process::Command::new(std::env::current_exe()?)
        .args(["webhook-probe", "--port", &server.port.to_string()])
        .args(["--ca-bundle", &server.ca_bundle])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting webhook-probe")?;
    let mut probe_in = prober.stdin.take().context("the probe's stdin")?;
    let mut probe_out = {
        use tokio::io::AsyncBufReadExt;
        tokio::io::BufReader::new(prober.stdout.take().context("the probe's stdout")?).lines()
    };
    let mut probe = async || -> anyhow::Result<(Duration, bool)> {
        use tokio::io::AsyncWriteExt;
        probe_in.write_all(b"\n").await?;
        probe_in.flush().await?;
        let line = probe_out
            .next_line()
            .await?
            .context("webhook-probe ended")?;
        Ok(match line.parse::<u64>() {
            Ok(us) => (Duration::from_micros(us), true),
            Err(_) => (Duration::ZERO, false),
        })
    };
    // A first call each, for the connections.
    let _ = post_review(&direct, server.port, &tls, review.clone()).await;
    probe().await?;
    let hooks = ["validate.bench.keelson.dev", "mutate.bench.keelson.dev"];
    let before = webhook_timings(&client, &hooks).await?;
    let hist =
        || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds");
    let mut h = [hist(), hist(), hist(), hist(), hist()];
    let mut el = [Duration::ZERO; 5];
    let mut errors = [0usize; 5];
    let mut record = |side: usize, d: Duration, ok: bool| {
        if ok {
            el[side] += d;
            let _ = h[side].record(d.as_micros().max(1) as u64);
        } else {
            errors[side] += 1;
        }
    };
    for i in 0..args.ops {
        for (side, api) in apis.iter().enumerate() {
            let start = Instant::now();
            let ok = api
                .create(&PostParams::default(), &pod(format!("pod-{i}")))
                .await
                .is_ok();
            record(side, start.elapsed(), ok);
        }
        let (d, ok) = post_review(&direct, server.port, &tls, review.clone()).await;
        record(3, d, ok);
        let (d, ok) = probe().await?;
        record(4, d, ok);
    }
    let after = webhook_timings(&client, &hooks).await?;
    let timed: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|((sum, count), (s, c))| {
            if c > count {
                (s - sum) / (c - count) * 1e6
            } else {
                0.0
            }
        })
        .collect();
    drop(probe_in);
    let _ = prober.wait().await;
    let mut report = vec![
        "| phase | ops | throughput | p50 ms | p90 ms | p99 ms | max ms | errors |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for (side, name) in [
        "pod create, no webhook",
        "pod create, 1 validating webhook",
        "pod create, 1 mutating + 1 validating webhook",
        "webhook round trip alone (POST of a review)",
        "webhook round trip alone, from another process",
    ]
    .into_iter()
    .enumerate()
    {
        report.push(row(name, args.ops, el[side], &h[side], errors[side]));
    }
    println!("{}", report.join("\n"));
    let p50: Vec<u64> = h.iter().map(|h| h.value_at_quantile(0.5)).collect();
    println!(
        "\np50 µs: no webhook {}, validating {} ({:+}), mutating+validating {} ({:+}); round trip alone {}, from another process {}",
        p50[0],
        p50[1],
        p50[1] as i64 - p50[0] as i64,
        p50[2],
        p50[2] as i64 - p50[0] as i64,
        p50[3],
        p50[4],
    );
    let mean: Vec<f64> = el
        .iter()
        .zip(errors)
        .map(|(d, e)| d.as_secs_f64() * 1e6 / (args.ops - e).max(1) as f64)
        .collect();
    println!(
        "mean µs: no webhook {:.0}, validating {:.0} ({:+.0}), mutating+validating {:.0} ({:+.0}); \
         each call as the apiserver timed it (review built, POSTed, answer parsed): validating \
         {:.0}, mutating {:.0}; round trip alone {:.0}, from another process {:.0}",
        mean[0],
        mean[1],
        mean[1] - mean[0],
        mean[2],
        mean[2] - mean[0],
        timed[0],
        timed[1],
        mean[3],
        mean[4],
    );
    println!(
        "TLS connections to the webhook server: {} (the apiserver's, the direct client's and the probe's)",
        server
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
