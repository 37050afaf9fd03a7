//! `keelson-bench webhook`: what admission webhooks add to a pod create. One cluster, three
//! namespaces: `plain` (no webhook selects it), `validated` (one validating webhook) and
//! `mutated` (one mutating webhook that patches a label, and the validating one). Creates go
//! to the three in turn, so all see the same machine at the same moment; beside them, the same
//! HTTPS client the apiserver uses POSTs a review straight to the webhook server, which is the
//! round trip a webhook cannot avoid. Each webhook should add about one round trip, no more.

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
    // The round trip alone: the apiserver's own webhook client, kept-alive, same review size.
    let direct = keelson_apiserver::webhook::client::Client::default();
    let tls = {
        let pem = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            &server.ca_bundle,
        )?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(c?)?;
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    };
    let review = serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "operation": "CREATE", "object": pod("x".into())}}),
    )?;
    let hist =
        || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds");
    let mut h = [hist(), hist(), hist(), hist()];
    let mut el = [Duration::ZERO; 4];
    let mut errors = [0usize; 4];
    for i in 0..args.ops {
        for (side, api) in apis.iter().enumerate() {
            let start = Instant::now();
            let ok = api
                .create(&PostParams::default(), &pod(format!("pod-{i}")))
                .await
                .is_ok();
            let d = start.elapsed();
            el[side] += d;
            let _ = h[side].record(d.as_micros().max(1) as u64);
            errors[side] += usize::from(!ok);
        }
        let start = Instant::now();
        let ok = direct
            .post(
                "127.0.0.1",
                server.port,
                "127.0.0.1",
                &tls,
                "/validate?timeout=10s",
                None,
                bytes::Bytes::from(review.clone()),
            )
            .await
            .is_ok_and(|(code, _)| code == 200);
        let d = start.elapsed();
        el[3] += d;
        let _ = h[3].record(d.as_micros().max(1) as u64);
        errors[3] += usize::from(!ok);
    }
    let mut report = vec![
        "| phase | ops | throughput | p50 ms | p90 ms | p99 ms | max ms | errors |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for (side, name) in [
        "pod create, no webhook",
        "pod create, 1 validating webhook",
        "pod create, 1 mutating + 1 validating webhook",
        "webhook round trip alone (POST of a review)",
    ]
    .into_iter()
    .enumerate()
    {
        report.push(row(name, args.ops, el[side], &h[side], errors[side]));
    }
    println!("{}", report.join("\n"));
    let p50: Vec<u64> = h.iter().map(|h| h.value_at_quantile(0.5)).collect();
    println!(
        "\np50 µs: no webhook {}, validating {} ({:+}), mutating+validating {} ({:+}); round trip alone {}",
        p50[0],
        p50[1],
        p50[1] as i64 - p50[0] as i64,
        p50[2],
        p50[2] as i64 - p50[0] as i64,
        p50[3]
    );
    println!(
        "TLS connections to the webhook server: {} (the apiserver's and the direct client's)",
        server
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
