//! An admission webhook server for benchmarks and tests: HTTPS on 127.0.0.1 with a certificate
//! of its own CA, answering `admission.k8s.io/v1` AdmissionReviews with a function of the path
//! and the review.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// How the server answers: `(path, review) -> (delay, answer)`.
pub type Answer = Arc<dyn Fn(&str, &Value) -> (Duration, Value) + Send + Sync>;

/// A running webhook server (it stops with the runtime it was started on).
pub struct WebhookServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its CA, base64-encoded PEM, as `clientConfig.caBundle` takes it.
    pub ca_bundle: String,
    /// Every review received, as `{"path": ..., "review": ..., "authorization": ...}` (the
    /// Authorization header, null without one), when recording.
    pub seen: Arc<Mutex<Vec<Value>>>,
    /// TLS connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl WebhookServer {
    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// A kubeconfig naming this server at `path` (its CA inline) and a bearer `token`, as the
    /// apiserver's webhook flags take it (`--authentication-token-webhook-config-file`, ...).
    pub fn kubeconfig(&self, path: &str, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: hook\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: apiserver\n  user: {{token: {token}}}\ncontexts:\n- name: hook\n  context: {{cluster: hook, user: apiserver}}\ncurrent-context: hook\n",
            self.url(path),
            self.ca_bundle
        )
    }

    /// The reviews received on `path`.
    pub fn reviews(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| c["path"] == path)
            .map(|c| c["review"].clone())
            .collect()
    }
}

/// An AdmissionReview answering `review`: allowed or not, with an optional JSON patch (as a
/// JSON value) and status.
pub fn reply(review: &Value, allowed: bool, patch: Option<Value>, status: Option<Value>) -> Value {
    let mut r = json!({"uid": review["request"]["uid"], "allowed": allowed});
    if let Some(p) = patch {
        r["patchType"] = json!("JSONPatch");
        r["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(p.to_string()));
    }
    if let Some(s) = status {
        r["status"] = s;
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})
}

/// [`start`] on a runtime of its own (one worker), for callers without one (tests driving
/// kubectl synchronously); the server stops when the runtime is dropped.
pub fn start_on_own_runtime(
    answer: Answer,
    names: &[&str],
    record: bool,
) -> anyhow::Result<(tokio::runtime::Runtime, WebhookServer)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server = rt.block_on(start(answer, names, record))?;
    Ok((rt, server))
}

/// Starts a server on the current tokio runtime whose certificate names 127.0.0.1 and
/// `names` (e.g. `hook.hooks.svc`); `record` keeps every review in [`WebhookServer::seen`].
pub async fn start(answer: Answer, names: &[&str], record: bool) -> anyhow::Result<WebhookServer> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let sans: Vec<String> = std::iter::once("127.0.0.1")
        .chain(names.iter().copied())
        .map(str::to_string)
        .collect();
    let cert = CertificateParams::new(sans)?.signed_by(&key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = record.then(|| seen.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tcp.set_nodelay(true);
            let (acceptor, log, answer) = (acceptor.clone(), log.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let (log, answer) = (log.clone(), answer.clone());
                        async move {
                            use http_body_util::BodyExt as _;
                            let path = req.uri().path().to_string();
                            let authorization = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let body = req.into_body().collect().await?.to_bytes();
                            let review: Value =
                                serde_json::from_slice(&body).unwrap_or(Value::Null);
                            if let Some(log) = &log {
                                log.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(json!({"path": path, "review": review, "authorization": authorization}));
                            }
                            let (delay, out) = answer(&path, &review);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(serde_json::to_vec(&out).unwrap_or_default()),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(WebhookServer {
        port,
        ca_bundle: base64::engine::general_purpose::STANDARD.encode(ca.pem()),
        seen,
        connections,
    })
}
