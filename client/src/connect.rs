//! Building a kube-rs [`Client`] the way the upstream components do: `--kubeconfig`, then
//! `$KUBECONFIG` / `~/.kube/config`, then the in-cluster service account; `--master` overrides the
//! server and may name several apiservers, between which requests fail over; `--kube-api-qps` and
//! `--kube-api-burst` limit the request rate as client-go's token bucket does.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kube::client::Body;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use parking_lot::Mutex;

/// The connection flags every component takes (names as kube-controller-manager's).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Path to a kubeconfig file with authorization and master location information.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The address of the Kubernetes API server (overrides any value in kubeconfig). Several,
    /// comma separated, are used in turn: a request that cannot reach one goes to the next.
    #[arg(long, value_delimiter = ',')]
    pub master: Vec<String>,
    /// QPS to use while talking with the Kubernetes API server (0 for no limit).
    #[arg(long = "kube-api-qps", default_value_t = 20.0)]
    pub kube_api_qps: f64,
    /// Burst to use while talking with the Kubernetes API server.
    #[arg(long = "kube-api-burst", default_value_t = 30)]
    pub kube_api_burst: u32,
}

impl ClientArgs {
    /// Arguments for a kubeconfig file, with client-go's default rate limits.
    pub fn from_kubeconfig(path: impl Into<PathBuf>) -> Self {
        Self {
            kubeconfig: Some(path.into()),
            master: Vec::new(),
            kube_api_qps: 20.0,
            kube_api_burst: 30,
        }
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// No kubeconfig and no in-cluster configuration.
    #[error("no configuration found: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// A `--master` address is not a URL.
    #[error("invalid --master {0:?}: {1}")]
    Master(String, String),
    /// The TLS or HTTP client could not be built.
    #[error("client: {0}")]
    Client(#[from] kube::Error),
}

/// Loads the configuration the flags describe.
pub async fn load_config(args: &ClientArgs) -> Result<Config, ConnectError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => match Config::infer().await {
            Ok(c) => c,
            Err(e) if args.master.is_empty() => return Err(e.into()),
            Err(_) => Config::new(parse_master(&args.master[0])?),
        },
    };
    Ok(config)
}

fn parse_master(s: &str) -> Result<http::Uri, ConnectError> {
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    with_scheme
        .parse::<http::Uri>()
        .map_err(|e| ConnectError::Master(s.to_string(), e.to_string()))
}

/// Builds a client from the flags: one connection pool per apiserver, failing over between them.
pub async fn connect(args: &ClientArgs) -> Result<Client, ConnectError> {
    let config = load_config(args).await?;
    connect_with(args, config)
}

/// Like [`connect`], authenticating with the bearer token in `token_file` instead of the
/// kubeconfig's credentials; the file is read again while it changes (a service account's
/// token that is refreshed).
pub async fn connect_with_token_file(
    args: &ClientArgs,
    token_file: &std::path::Path,
) -> Result<Client, ConnectError> {
    let mut config = load_config(args).await?;
    config.auth_info = kube::config::AuthInfo {
        token_file: Some(token_file.display().to_string()),
        ..Default::default()
    };
    connect_with(args, config)
}

fn connect_with(args: &ClientArgs, config: Config) -> Result<Client, ConnectError> {
    let urls = if args.master.is_empty() {
        vec![config.cluster_url.clone()]
    } else {
        args.master
            .iter()
            .map(|m| parse_master(m))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut endpoints = Vec::with_capacity(urls.len());
    for url in urls {
        let mut c = config.clone();
        c.cluster_url = url.clone();
        endpoints.push((url.to_string(), Client::try_from(c)?));
    }
    let limiter = (args.kube_api_qps > 0.0).then(|| {
        Mutex::new(Bucket::new(
            args.kube_api_qps,
            f64::from(args.kube_api_burst.max(1)),
        ))
    });
    let svc = Failover {
        inner: Arc::new(Shared {
            endpoints,
            current: AtomicUsize::new(0),
            limiter,
        }),
    };
    Ok(Client::new(svc, config.default_namespace))
}

/// A client that acts as `user` in `groups` through `base` (`Impersonate-User` and
/// `Impersonate-Group` on every request), sharing `base`'s connections: how one process of
/// many hollow nodes gives each node its own kubelet identity. `base`'s user needs the
/// `impersonate` verb on that user and those groups.
pub fn impersonating(
    base: &Client,
    user: &str,
    groups: &[&str],
) -> Result<Client, http::header::InvalidHeaderValue> {
    let mut headers = vec![(
        http::header::HeaderName::from_static("impersonate-user"),
        http::HeaderValue::from_str(user)?,
    )];
    for g in groups {
        headers.push((
            http::header::HeaderName::from_static("impersonate-group"),
            http::HeaderValue::from_str(g)?,
        ));
    }
    let svc = Impersonate {
        base: base.clone(),
        headers: Arc::new(headers),
    };
    Ok(Client::new(svc, base.default_namespace()))
}

#[derive(Clone)]
struct Impersonate {
    base: Client,
    headers: Arc<Vec<(http::header::HeaderName, http::HeaderValue)>>,
}

impl tower::Service<Request<Body>> for Impersonate {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // Replaces whatever impersonation the base client's configuration asks for.
        let h = req.headers_mut();
        for (k, _) in self.headers.iter() {
            h.remove(k);
        }
        for (k, v) in self.headers.iter() {
            h.append(k.clone(), v.clone());
        }
        let base = self.base.clone();
        Box::pin(async move { base.send(req).await })
    }
}

/// A token bucket as golang.org/x/time/rate's: `qps` tokens a second, at most `burst` saved.
/// Reservations may drive it negative; the caller then waits until its token exists.
#[derive(Debug)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(qps: f64, burst: f64) -> Self {
        Self {
            qps,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token and says how long to wait before using it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }
}

struct Shared {
    endpoints: Vec<(String, Client)>,
    current: AtomicUsize,
    limiter: Option<Mutex<Bucket>>,
}

/// The tower service under the public client: throttles, then sends to the current apiserver,
/// moving to the next one when the current one cannot be reached.
#[derive(Clone)]
struct Failover {
    inner: Arc<Shared>,
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some(limiter) = &inner.limiter {
                let wait = limiter.lock().reserve(Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let n = inner.endpoints.len();
            if n == 1 {
                return inner.endpoints[0].1.send(req).await;
            }
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await?;
            let idempotent = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            let start = inner.current.load(Ordering::Relaxed);
            let mut last = None;
            for i in 0..n {
                let idx = (start + i) % n;
                let mut attempt = Request::new(Body::from(bytes.clone()));
                *attempt.method_mut() = parts.method.clone();
                *attempt.uri_mut() = parts.uri.clone();
                *attempt.version_mut() = parts.version;
                *attempt.headers_mut() = parts.headers.clone();
                let (name, client) = &inner.endpoints[idx];
                match client.send(attempt).await {
                    Ok(resp) => {
                        if idx != start {
                            inner.current.store(idx, Ordering::Relaxed);
                            tracing::info!(apiserver = %name, "switched to another apiserver");
                        }
                        return Ok(resp);
                    }
                    Err(e) if idempotent || not_sent(&e) => {
                        tracing::warn!(apiserver = %name, error = %e, "apiserver unreachable, trying the next");
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(last.expect("at least two endpoints were tried"))
        })
    }
}

/// True when the error shows the request never reached the server (connection refused or
/// not established), so even a non-idempotent request may be sent elsewhere.
pub fn not_sent(e: &kube::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|h| h.is_connect())
        {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        src = s.source();
    }
    false
}

/// Whether a failed request is worth trying again: no connection (an apiserver restarting),
/// throttled (429), or a server error (5xx).
pub fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_paces() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 3.0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        let wait = b.reserve(t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        let wait = b.reserve(t0);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
        // A second later the debt is paid and 8 tokens are back (capped at the burst of 3).
        assert_eq!(b.reserve(t0 + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn master_addresses() {
        assert_eq!(
            parse_master("127.0.0.1:6443").unwrap().to_string(),
            "https://127.0.0.1:6443/"
        );
        assert!(parse_master("http://[::1").is_err());
    }
}
