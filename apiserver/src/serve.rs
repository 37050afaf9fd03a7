//! Serving: TLS (rustls, ALPN h2 and http/1.1), client-certificate identities per connection, the
//! filter chain around the handler, and the accept loop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::{ServiceBuilder, ServiceExt};

use crate::config::Config;
use crate::etcd::{Etcd, EtcdTls};
use crate::filters::{self, ChainConfig, PeerIdentity};
use crate::handlers::{self, ApiState};
use crate::registry::{Registry, WriteOpts};
use crate::request_info::RequestInfo;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| StartError(format!("{}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| StartError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(StartError(format!(
            "{}: no certificates found",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, StartError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| StartError(format!("{}: {e}", path.display())))
}

/// Writes (or reuses) a self-signed serving certificate in `dir`, as kube-apiserver does without
/// `--tls-cert-file`.
fn self_signed(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), StartError> {
    let cert = dir.join("apiserver.crt");
    let key = dir.join("apiserver.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| StartError(format!("--cert-dir {}: {e}", dir.display())))?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| StartError(format!("generating a self-signed certificate: {e}")))?;
    std::fs::write(&cert, ck.cert.pem())
        .map_err(|e| StartError(format!("{}: {e}", cert.display())))?;
    std::fs::write(&key, ck.signing_key.serialize_pem())
        .map_err(|e| StartError(format!("{}: {e}", key.display())))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed serving certificate");
    Ok((cert, key))
}

/// Which authorities vouch for a client certificate: `--client-ca-file` (its subject is the
/// user) and `--requestheader-client-ca-file` (an authenticating proxy, when its CommonName is
/// in `--requestheader-allowed-names` or that list is empty).
#[derive(Clone, Default)]
pub struct ClientCas {
    client: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    proxy: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    allowed_names: Vec<String>,
}

fn roots_of(files: &[(&Path, &str)]) -> Result<rustls::RootCertStore, StartError> {
    let mut roots = rustls::RootCertStore::empty();
    for (path, flag) in files {
        for c in load_certs(path)? {
            roots
                .add(c)
                .map_err(|e| StartError(format!("{flag} {}: {e}", path.display())))?;
        }
    }
    Ok(roots)
}

fn verifier_of(
    files: &[(&Path, &str)],
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, StartError> {
    rustls::server::WebPkiClientVerifier::builder(Arc::new(roots_of(files)?))
        .allow_unauthenticated()
        .build()
        .map_err(|e| StartError(format!("{}: {e}", files[0].1)))
}

impl ClientCas {
    /// The identity of a connection whose client presented `chain` (already verified against
    /// the union of the authorities by the handshake).
    pub fn identity(&self, chain: &[CertificateDer<'_>]) -> PeerIdentity {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return PeerIdentity::default();
        };
        let (user, proxy) = match &self.proxy {
            // Only the client CA: the handshake verified against it alone.
            None => (self.client.is_some(), false),
            Some(p) => {
                let now = rustls::pki_types::UnixTime::now();
                let by = |v: &Arc<dyn rustls::server::danger::ClientCertVerifier>| {
                    v.verify_client_cert(leaf, intermediates, now).is_ok()
                };
                (self.client.as_ref().is_some_and(by), by(p))
            }
        };
        let (common_name, organizations) = subject_of(leaf);
        let front_proxy = proxy
            && (self.allowed_names.is_empty()
                || common_name
                    .as_ref()
                    .is_some_and(|cn| self.allowed_names.contains(cn)));
        if user {
            PeerIdentity {
                common_name,
                organizations,
                front_proxy,
                unusable_certificate: false,
                certificate: true,
            }
        } else {
            PeerIdentity {
                front_proxy,
                unusable_certificate: true,
                certificate: true,
                ..Default::default()
            }
        }
    }
}

/// Builds the rustls server configuration from the flags, and what tells the client
/// certificates of users and of proxies apart.
pub fn tls_config(config: &Config) -> Result<(rustls::ServerConfig, ClientCas), StartError> {
    let (cert_path, key_path) = match (&config.tls_cert_file, &config.tls_private_key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => self_signed(&config.cert_dir)?,
        _ => {
            return Err(StartError(
                "--tls-cert-file and --tls-private-key-file must be given together".into(),
            ));
        }
    };
    let certs = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    let client = config
        .client_ca_file
        .as_deref()
        .map(|p| (p, "--client-ca-file"));
    let proxy = config
        .requestheader_client_ca_file
        .as_deref()
        .map(|p| (p, "--requestheader-client-ca-file"));
    let cas = ClientCas {
        client: client.map(|c| verifier_of(&[c])).transpose()?,
        proxy: proxy.map(|p| verifier_of(&[p])).transpose()?,
        allowed_names: config.requestheader_allowed_names.clone(),
    };
    let all: Vec<(&Path, &str)> = client.into_iter().chain(proxy).collect();
    let builder = rustls::ServerConfig::builder();
    let builder = if all.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(verifier_of(&all)?)
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| StartError(format!("--tls-cert-file/--tls-private-key-file: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((cfg, cas))
}

/// CommonName and Organizations of a certificate's subject.
fn subject_of(cert: &CertificateDer<'_>) -> (Option<String>, Vec<String>) {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, c)) => {
            let subject = c.subject();
            let common_name = subject
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_string);
            let organizations = subject
                .iter_organization()
                .filter_map(|a| a.as_str().ok().map(str::to_string))
                .collect();
            (common_name, organizations)
        }
        Err(_) => (None, Vec::new()),
    }
}

/// The auditor of the audit flags, if they ask for one.
fn audit_of(config: &Config) -> Result<Option<crate::audit::Auditor>, StartError> {
    let sinks = config.audit_log_path.is_some() || config.audit_webhook_config_file.is_some();
    let Some(policy_file) = &config.audit_policy_file else {
        if sinks {
            tracing::warn!(
                "--audit-log-path or --audit-webhook-config-file without --audit-policy-file: nothing is audited"
            );
        }
        return Ok(None);
    };
    if !sinks {
        return Ok(None);
    }
    let text = std::fs::read_to_string(policy_file).map_err(|e| {
        StartError(format!(
            "--audit-policy-file {}: {e}",
            policy_file.display()
        ))
    })?;
    let policy = crate::audit::policy::Policy::parse(&text).map_err(|e| {
        StartError(format!(
            "--audit-policy-file {}: {e}",
            policy_file.display()
        ))
    })?;
    let log = match &config.audit_log_path {
        Some(path) => Some(
            crate::audit::log::LogBackend::open(
                path,
                crate::audit::log::Rotation {
                    max_size_mb: config.audit_log_maxsize,
                    max_backups: config.audit_log_maxbackup,
                    max_age_days: config.audit_log_maxage,
                },
            )
            .map_err(StartError)?,
        ),
        None => None,
    };
    let webhook = match &config.audit_webhook_config_file {
        Some(file) => {
            use crate::audit::webhook::{Batching, Mode, WebhookBackend};
            let mode = Mode::parse(&config.audit_webhook_mode).map_err(StartError)?;
            let batching = Batching {
                buffer_size: config.audit_webhook_batch_buffer_size,
                max_size: config.audit_webhook_batch_max_size,
                max_wait: config.audit_webhook_batch_max_wait,
                throttle_qps: config
                    .audit_webhook_batch_throttle_enable
                    .then_some(config.audit_webhook_batch_throttle_qps),
                throttle_burst: config.audit_webhook_batch_throttle_burst,
                initial_backoff: config.audit_webhook_initial_backoff,
            };
            Some(
                WebhookBackend::new(file, mode, &config.audit_webhook_version, batching)
                    .map_err(StartError)?,
            )
        }
        None => None,
    };
    Ok(Some(crate::audit::Auditor {
        policy,
        log,
        webhook,
    }))
}

/// The router with the whole filter chain.
pub fn app(state: Arc<ApiState>, chain: Arc<ChainConfig>) -> Router {
    let handler = move |State(state): State<Arc<ApiState>>, req: Request| async move {
        let info = req
            .extensions()
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_default();
        handlers::handle(state, info, req).await
    };
    Router::new().fallback(handler).with_state(state).layer(
        ServiceBuilder::new()
            .layer(from_fn(filters::recover_panics))
            .layer(from_fn(filters::with_request_info))
            .layer(from_fn_with_state(chain.clone(), filters::with_metrics))
            .layer(from_fn_with_state(chain.clone(), filters::with_timeout))
            .layer(from_fn_with_state(chain.clone(), filters::authenticate))
            .layer(from_fn_with_state(chain.clone(), crate::audit::audit))
            .layer(from_fn_with_state(chain.clone(), filters::impersonate))
            .layer(from_fn_with_state(chain.clone(), filters::flow_control))
            .layer(from_fn_with_state(chain.clone(), filters::authorize)),
    )
}

/// The namespaces every cluster has (created by kube-apiserver's bootstrap controller).
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the system namespaces and the `kubernetes` Service once the store answers, then
/// keeps this server in the `kubernetes` Endpoints until `shutdown` (and takes it out then);
/// several apiservers racing is fine.
async fn bootstrap(registry: Registry, advertise: (String, u16), shutdown: CancellationToken) {
    let nsres = crate::resources::find("", "v1", "namespaces").expect("namespaces are served");
    let mut pending: Vec<&str> = SYSTEM_NAMESPACES.to_vec();
    while !pending.is_empty() && !shutdown.is_cancelled() {
        let mut left = Vec::new();
        for ns in pending {
            let obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match registry
                .create(nsres, "", obj, &WriteOpts::internal())
                .await
            {
                Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
                Err(e) if e.code == 409 => {}
                Err(e) => {
                    tracing::debug!(namespace = ns, error = %e, "system namespace not created yet");
                    left.push(ns);
                }
            }
        }
        pending = left;
        if !pending.is_empty() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    let svcres = crate::resources::find("", "v1", "services").expect("services are served");
    let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": registry.ranges().first_ip().to_string(), "type": "ClusterIP", "sessionAffinity": "None",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": advertise.1}]}});
    while !shutdown.is_cancelled() {
        match registry
            .create(svcres, "default", svc.clone(), &WriteOpts::internal())
            .await
        {
            Ok(_) | Err(crate::status::ApiError { code: 409, .. }) => break,
            Err(e) => tracing::debug!(error = %e, "kubernetes service not created yet"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    crate::endpoint_reconciler::run(registry, advertise.0, advertise.1, shutdown).await;
}

/// Runs `keelson apiserver` until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let modes =
        crate::authz::Authorizer::parse_modes(&config.authorization_mode).map_err(StartError)?;
    let cache_named =
        crate::config::watch_cache_settings(&config.watch_cache_sizes).map_err(StartError)?;
    if modes.contains(&crate::authz::Mode::AlwaysAllow) {
        tracing::warn!("authorization mode AlwaysAllow: every authenticated request is allowed");
    }
    let (sa_issuer, sa_validator) = crate::authn::service_accounts(&config).map_err(StartError)?;
    let tokens = match &config.token_auth_file {
        Some(p) => crate::authn::read_token_file(p).map_err(StartError)?,
        None => Default::default(),
    };
    let etcd = Etcd::new(
        &config.etcd_servers,
        &EtcdTls {
            ca_file: config.etcd_cafile.clone(),
            cert_file: config.etcd_certfile.clone(),
            key_file: config.etcd_keyfile.clone(),
        },
    )
    .map_err(StartError)?;
    let metrics = crate::metrics::Metrics::new();
    let (etcd, encryption) = match &config.encryption_provider_config {
        Some(path) => {
            let enc_metrics = metrics.with_registry(|r| {
                crate::encryption::metrics::EncryptionMetrics::new(
                    r,
                    &format!("apiserver-{}", uuid::Uuid::new_v4()),
                )
            });
            let enc = crate::encryption::Encryption::load(
                path,
                &config.etcd_prefix,
                config.encryption_provider_config_automatic_reload,
                Arc::new(enc_metrics),
                shutdown.clone(),
            )
            .await
            .map_err(|e| StartError(format!("--encryption-provider-config: {e}")))?;
            (etcd.with_encryption(enc.clone()), Some(enc))
        }
        None if config.encryption_provider_config_automatic_reload => {
            return Err(StartError(
                "--encryption-provider-config-automatic-reload needs --encryption-provider-config"
                    .into(),
            ));
        }
        None => (etcd, None),
    };
    let ranges = crate::alloc::Ranges::parse(
        &config.service_cluster_ip_range,
        &config.service_node_port_range,
        &config.etcd_prefix,
    )
    .map_err(StartError)?;
    let (tls, client_cas) = tls_config(&config)?;
    let (tls, client_cas) = (Arc::new(tls), Arc::new(client_cas));
    let advertise = format!(
        "{}:{}",
        config.advertise_address.unwrap_or(config.bind_address),
        config.secure_port
    );
    let admission = crate::admission::Plugins::from_flags(
        &config.enable_admission_plugins,
        &config.disable_admission_plugins,
    )
    .map_err(StartError)?;
    if !config.etcd_compaction_interval.is_zero() {
        tokio::spawn(compact_periodically(
            etcd.clone(),
            config.etcd_compaction_interval,
            shutdown.clone(),
        ));
    }
    let registry = Registry::new(etcd, &config.etcd_prefix, ranges)
        .with_service_account_admission(admission.service_account)
        .with_event_ttl(Some(config.event_ttl).filter(|t| !t.is_zero()));
    let cache = crate::cache::Cache::start(
        &registry,
        &metrics,
        config.default_watch_cache_size,
        &cache_named,
        &shutdown,
    );
    let rbac = modes
        .contains(&crate::authz::Mode::Rbac)
        .then(|| crate::authz::RbacSource::start(&cache, &shutdown));
    if let Some(src) = &rbac {
        tokio::spawn(crate::authz::bootstrap::ensure(
            registry.clone(),
            src.clone(),
            shutdown.clone(),
        ));
    }
    let node = match modes.contains(&crate::authz::Mode::Node) {
        true => {
            Some(crate::authz::node::NodeAuthorizer::start(&cache, &shutdown).map_err(StartError)?)
        }
        false => None,
    };
    let webhook_mode = modes.contains(&crate::authz::Mode::Webhook);
    let mut authz = crate::authz::Authorizer::new(modes, rbac, node);
    match (&config.authorization_webhook_config_file, webhook_mode) {
        (Some(file), true) => {
            authz = authz.with_webhook(
                crate::authz::webhook::WebhookAuthorizer::new(
                    file,
                    &config.authorization_webhook_version,
                    config.authorization_webhook_cache_authorized_ttl,
                    config.authorization_webhook_cache_unauthorized_ttl,
                )
                .map_err(StartError)?,
            );
        }
        (None, true) => {
            return Err(StartError(
                "--authorization-mode=Webhook needs --authorization-webhook-config-file".into(),
            ));
        }
        (Some(_), false) => {
            return Err(StartError(
                "--authorization-webhook-config-file is only used with --authorization-mode=...,Webhook"
                    .into(),
            ));
        }
        (None, false) => {}
    }
    let authz = Arc::new(authz);
    let webhooks =
        (admission.mutating_webhook || admission.validating_webhook || admission.validating_policy)
            .then(|| {
                crate::webhook::Webhooks::start(
                    &cache,
                    registry.clone(),
                    metrics.clone(),
                    admission.mutating_webhook,
                    admission.validating_webhook,
                    admission.validating_policy,
                    &shutdown,
                )
            });
    let apf = config.enable_priority_and_fairness.then(|| {
        let seats = config.max_requests_inflight + config.max_mutating_requests_inflight;
        crate::flowcontrol::Apf::start(
            u32::try_from(seats).unwrap_or(u32::MAX),
            config.request_timeout,
            &cache,
            registry.clone(),
            &metrics,
            &shutdown,
        )
    });
    let mut builtin = crate::admission::Builtin::start(&admission, &registry, &cache);
    if admission.event_rate_limit {
        let limiter = match &config.admission_control_config_file {
            Some(f) => crate::eventratelimit::EventRateLimit::from_admission_config(f)
                .map_err(StartError)?,
            None => None,
        };
        builtin.event_rate = Some(Arc::new(limiter.ok_or_else(|| {
            StartError("EventRateLimit needs its limits in --admission-control-config-file".into())
        })?));
    }
    let builtin = Arc::new(builtin);
    let state = Arc::new(ApiState {
        builtin,
        apf: apf.clone(),
        webhooks,
        admission,
        authz: authz.clone(),
        token_issuer: sa_issuer.map(Arc::new),
        registry,
        cache,
        min_request_timeout: config.min_request_timeout,
        advertise,
        metrics: metrics.clone(),
        encryption,
        kubelet: Arc::new(
            crate::kubelet::KubeletClient::new(
                config.kubelet_client_certificate.as_deref(),
                config.kubelet_client_key.as_deref(),
                config.kubelet_certificate_authority.as_deref(),
            )
            .map_err(StartError)?,
        ),
    });
    let limit = |n: usize| {
        if n == 0 {
            None
        } else {
            Some(Arc::new(Semaphore::new(n)))
        }
    };
    let mut authn = crate::authn::Authenticator::new(
        config.anonymous_auth,
        tokens,
        sa_validator,
        Some((state.registry.clone(), state.cache.clone())),
    );
    if config.enable_bootstrap_token_auth {
        authn = authn.with_bootstrap_tokens();
    }
    if config.requestheader_client_ca_file.is_some() {
        authn = authn.with_request_header(crate::authn::requestheader::RequestHeader {
            username: config.requestheader_username_headers.clone(),
            uid: config.requestheader_uid_headers.clone(),
            group: config.requestheader_group_headers.clone(),
            extra_prefixes: config.requestheader_extra_headers_prefix.clone(),
        });
    }
    if let Some(file) = &config.authentication_token_webhook_config_file {
        authn = authn.with_webhook(
            crate::authn::webhook::TokenWebhook::new(
                file,
                &config.authentication_token_webhook_version,
                config.authentication_token_webhook_cache_ttl,
                crate::authn::api_audiences(&config),
            )
            .map_err(StartError)?,
        );
    }
    let authn = Arc::new(authn);
    let audit = audit_of(&config)?;
    let chain = Arc::new(ChainConfig {
        request_timeout: config.request_timeout,
        audit,
        authn,
        readonly: limit(config.max_requests_inflight),
        mutating: limit(config.max_mutating_requests_inflight),
        metrics,
        authz,
        apf,
    });
    let endpoint_ip = match config.advertise_address.unwrap_or(config.bind_address) {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        ip => ip.to_string(),
    };
    let registry = state.registry.clone();
    let app = app(state, chain);
    let addr = SocketAddr::new(config.bind_address, config.secure_port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartError(format!("listen on {addr}: {e}")))?;
    // Only once it listens does this server say it serves (in the `kubernetes` Endpoints).
    let bootstrapped = tokio::spawn(bootstrap(
        registry,
        (endpoint_ip, config.secure_port),
        shutdown.clone(),
    ));
    tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), etcd = ?config.etcd_servers, "Serving securely");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let client_cas = client_cas.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(remote = %remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| client_cas.identity(c))
                .unwrap_or_default();
            let svc = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(identity.clone());
                req.extensions_mut()
                    .insert(crate::audit::RemoteAddr(remote));
                let app = app.clone();
                async move {
                    let req = req.map(Body::new);
                    app.oneshot(req).await.map(|r: Response| r)
                }
            });
            let conn = auto::Builder::new(TokioExecutor::new());
            let serve = conn
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc));
            tokio::select! {
                r = serve => {
                    if let Err(e) = r {
                        tracing::debug!(remote = %remote, error = %e, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }
    // Out of the `kubernetes` Endpoints before going (bounded: the store may be gone too).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), bootstrapped).await;
    Ok(())
}

/// Compacts the store every `interval`, keeping about one interval of history, in turns with
/// the other apiservers on the store ([`Etcd::compaction_round`]).
async fn compact_periodically(
    etcd: Etcd,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let (mut clock, mut revision) = (0, 0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        match etcd.compaction_round(clock, revision).await {
            Ok((c, r)) => (clock, revision) = (c, r),
            Err(e) => tracing::warn!(error = %e, "compacting the store failed"),
        }
    }
}
