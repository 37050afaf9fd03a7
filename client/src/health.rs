//! The endpoint every component serves over HTTPS: `/healthz` (also `/livez`, `/readyz`) with
//! named checks (`?verbose` lists them, as upstream), and `/metrics` in the Prometheus text format.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Serving flags (names as the upstream components').
#[derive(clap::Args, Debug, Clone)]
pub struct ServingArgs {
    /// The IP address on which to listen for the --secure-port port.
    #[arg(long = "bind-address", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// The port on which to serve HTTPS with authentication and authorization (/healthz,
    /// /metrics). 0 disables it. The default is the component's upstream port.
    #[arg(long = "secure-port")]
    pub secure_port: Option<u16>,
    /// File containing the x509 certificate for HTTPS; without it a self-signed one is made.
    #[arg(long = "tls-cert-file")]
    pub tls_cert_file: Option<PathBuf>,
    /// File containing the x509 private key matching --tls-cert-file.
    #[arg(long = "tls-private-key-file")]
    pub tls_private_key_file: Option<PathBuf>,
}

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Health checks and metrics of one component.
pub struct Health {
    registry: Mutex<Registry>,
    checks: Mutex<Vec<(String, Check)>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// No checks but `ping`, no metrics.
    pub fn new() -> Self {
        Self {
            registry: Mutex::new(Registry::default()),
            checks: Mutex::new(Vec::new()),
        }
    }

    /// Registers a metric family.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.lock().register(name, help, metric);
    }

    /// Adds a named health check.
    pub fn add_check(
        &self,
        name: &str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.checks.lock().push((name.to_string(), Box::new(check)));
    }

    /// Runs every check: the `?verbose` text and whether all passed.
    pub fn report(&self) -> (String, bool) {
        let mut out = String::from("[+]ping ok\n");
        let mut ok = true;
        for (name, check) in self.checks.lock().iter() {
            match check() {
                Ok(()) => out.push_str(&format!("[+]{name} ok\n")),
                Err(reason) => {
                    ok = false;
                    out.push_str(&format!("[-]{name} failed: {reason}\n"));
                }
            }
        }
        out.push_str(if ok {
            "healthz check passed\n"
        } else {
            "healthz check failed\n"
        });
        (out, ok)
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

async fn healthz(State(h): State<Arc<Health>>, RawQuery(q): RawQuery) -> impl IntoResponse {
    let (text, ok) = h.report();
    let verbose = q.is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let body = match (ok, verbose) {
        (true, false) => "ok".to_string(),
        _ => text,
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics_text(),
    )
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServeError(String);

fn tls_config(
    args: &ServingArgs,
    client_ca: Option<&std::path::Path>,
) -> Result<rustls::ServerConfig, ServeError> {
    let (certs, key) = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| ServeError(format!("{}: {e}", p.display())))
            };
            let certs = rustls::pki_types::pem::PemObject::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
                .map_err(|e| ServeError(format!("{}: {e}", cert.display())))?;
            let key: rustls::pki_types::PrivateKeyDer<'static> =
                rustls::pki_types::pem::PemObject::from_pem_slice(&read(key)?)
                    .map_err(|e| ServeError(format!("{}: {e}", key.display())))?;
            (certs, key)
        }
        (None, None) => {
            let ck = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .map_err(|e| ServeError(format!("self-signed certificate: {e}")))?;
            let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
                .map_err(|e| ServeError(format!("self-signed key: {e}")))?;
            (vec![ck.cert.der().clone()], key)
        }
        _ => {
            return Err(ServeError(
                "--tls-cert-file and --tls-private-key-file go together".into(),
            ));
        }
    };
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem =
                std::fs::read(ca).map_err(|e| ServeError(format!("{}: {e}", ca.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let c: rustls::pki_types::CertificateDer<'static> =
                    c.map_err(|e| ServeError(format!("{}: {e}", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| ServeError(format!("{}: {e}", ca.display())))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| ServeError(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServeError(format!("TLS: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds the endpoint (port `args.secure_port`, or `default_port`); serves until `shutdown`.
/// Returns the bound address, or `None` when the port is 0 (disabled).
pub async fn serve(
    args: &ServingArgs,
    default_port: u16,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<Option<SocketAddr>, ServeError> {
    let port = args.secure_port.unwrap_or(default_port);
    if port == 0 {
        return Ok(None);
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(health);
    let addr = SocketAddr::new(args.bind_address, port);
    serve_router(args, addr, None, app, shutdown)
        .await
        .map(Some)
}

/// Serves `app` over HTTPS on `addr` (port 0 picks one) until `shutdown`, with the serving
/// certificate of `args` (self-signed when none), requiring client certificates signed by
/// `client_ca` when given. Returns the bound address.
pub async fn serve_router(
    args: &ServingArgs,
    addr: SocketAddr,
    client_ca: Option<&std::path::Path>,
    app: Router,
    shutdown: CancellationToken,
) -> Result<SocketAddr, ServeError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(args, client_ca)?));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError(format!("listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServeError(e.to_string()))?;
    tracing::info!(address = %bound, "serving HTTPS");
    tokio::spawn(async move {
        loop {
            let Some((tcp, _)) = crate::net::accept(&listener, &shutdown, "https").await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                        .await
                else {
                    return;
                };
                let svc = tower::ServiceExt::map_request(
                    app,
                    |r: http::Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
                );
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tls),
                        TowerToHyperService::new(svc),
                    )
                    .await;
            });
        }
    });
    Ok(bound)
}
