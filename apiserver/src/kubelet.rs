//! Talking to kubelets: `pods/log` is proxied to the node's kubelet API
//! (`/containerLogs/{ns}/{pod}/{container}`), found from the Node's InternalIP and
//! `daemonEndpoints.kubeletEndpoint.port`, over HTTPS with `--kubelet-client-certificate/-key`;
//! the kubelet's serving certificate is checked against `--kubelet-certificate-authority` when
//! given (and, as upstream, not checked otherwise).

use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncWriteExt as _;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::status::{ApiError, ApiResult};

/// The client the apiserver uses for kubelets.
pub struct KubeletClient {
    tls: Arc<rustls::ClientConfig>,
}

fn read_pem_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", p.display()))
}

impl KubeletClient {
    /// A client from the `--kubelet-*` flags.
    pub fn new(cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_pem_certs(ca)? {
                    roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider))),
        };
        let tls = match (cert, key) {
            (Some(c), Some(k)) => {
                let certs = read_pem_certs(c)?;
                let pem = std::fs::read(k).map_err(|e| format!("{}: {e}", k.display()))?;
                let key: PrivateKeyDer<'static> =
                    rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
                        .map_err(|e| format!("{}: {e}", k.display()))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("--kubelet-client-certificate: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(
                    "--kubelet-client-certificate and --kubelet-client-key go together".into(),
                );
            }
        };
        Ok(Self { tls: Arc::new(tls) })
    }

    /// GETs `path_and_query` from the kubelet at `host:port`, streaming the answer back.
    pub async fn get(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
    ) -> ApiResult<Response<Body>> {
        let unreachable = |e: String| {
            ApiError::unavailable(format!(
                "Get \"https://{host}:{port}{path_and_query}\": {e}"
            ))
        };
        let tls = self.connect(host, port).await.map_err(unreachable)?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let req = http::Request::get(path_and_query)
            .header("host", format!("{host}:{port}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(kubelet_error(resp).await);
        }
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(Body::new(resp.into_body()))
            .expect("response"))
    }
}

impl KubeletClient {
    async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    }

    /// Proxies an upgrade request to the kubelet: a WebSocket, or for port forwarding
    /// (`spdy`) also an upgrade to SPDY/3.1. The client's method and upgrade headers go
    /// through, the kubelet's 101 comes back, then bytes flow both ways.
    pub async fn upgrade(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
        mut req: axum::http::Request<Body>,
        spdy: bool,
    ) -> ApiResult<Response<Body>> {
        let unreachable = |e: String| {
            ApiError::unavailable(format!("error dialing backend https://{host}:{port}: {e}"))
        };
        let upgrade = req
            .headers()
            .get("upgrade")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let allowed = upgrade.eq_ignore_ascii_case("websocket")
            || (spdy && upgrade.eq_ignore_ascii_case("SPDY/3.1"));
        if !allowed {
            return Err(ApiError::bad_request(if spdy {
                "Upgrade request required: port forwarding is streamed over WebSocket or SPDY/3.1"
            } else {
                "Upgrade request required: exec is streamed over WebSocket (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported"
            }));
        }
        let tls = self.connect(host, port).await.map_err(unreachable)?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn.with_upgrades());
        let mut up = http::Request::builder()
            .method(req.method().clone())
            .uri(path_and_query)
            .header("host", format!("{host}:{port}"));
        for (k, v) in req.headers() {
            let n = k.as_str();
            if n.starts_with("sec-websocket-")
                || n == "upgrade"
                || n == "connection"
                || n == "x-stream-protocol-version"
            {
                up = up.header(k, v);
            }
        }
        let up = up
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let mut resp = send
            .send_request(up)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(kubelet_error(resp).await);
        }
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        let backend = hyper::upgrade::on(&mut resp);
        let client = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let (Ok(b), Ok(c)) = (backend.await, client.await) else {
                return;
            };
            let (mut br, mut bw) = tokio::io::split(hyper_util::rt::TokioIo::new(b));
            let (mut cr, mut cw) = tokio::io::split(hyper_util::rt::TokioIo::new(c));
            // Each direction on its own: a failed write towards the kubelet (it has finished)
            // must not cut off what the kubelet still sends the client (the exit status and
            // the Close frame). The kubelet's side ends the exchange.
            let up = async {
                let _ = tokio::io::copy(&mut cr, &mut bw).await;
                let _ = bw.shutdown().await;
                std::future::pending::<()>().await
            };
            let down = async {
                let _ = tokio::io::copy(&mut br, &mut cw).await;
                let _ = cw.shutdown().await;
            };
            tokio::select! {
                _ = down => {}
                _ = up => {}
            }
        });
        Ok(out.body(Body::empty()).expect("response"))
    }
}

/// The kubelet's error answer as a Status: its code class and its text.
async fn kubelet_error(resp: http::Response<hyper::body::Incoming>) -> ApiError {
    use http_body_util::BodyExt;
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let msg = body.trim().to_string();
    match code {
        400 => ApiError::bad_request(msg),
        403 => ApiError::new(403, "Forbidden", msg),
        404 => ApiError::new(404, "NotFound", msg),
        _ => ApiError::internal(msg),
    }
}

/// The log query parameters passed on to the kubelet.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

/// The kubelet path of `pods/portforward`: the `ports` of the request (each may list several)
/// become the kubelet's `port` parameters, as upstream's apiserver passes them.
pub fn port_forward_path(ns: &str, name: &str, query: Option<&str>) -> ApiResult<String> {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "ports" {
            continue;
        }
        for p in v.split(',') {
            match p.trim().parse::<u16>() {
                Ok(n) if n > 0 => {
                    out.append_pair("port", &n.to_string());
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid port {p:?}: must be between 1 and 65535"
                    )));
                }
            }
        }
    }
    let q = out.finish();
    Ok(if q.is_empty() {
        format!("/portForward/{ns}/{name}")
    } else {
        format!("/portForward/{ns}/{name}?{q}")
    })
}

/// Which container `pods/log` reads, as upstream decides it; errors as upstream's.
pub fn log_container(pod: &Value, requested: Option<&str>) -> ApiResult<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (app, init, eph) = (
        names("containers"),
        names("initContainers"),
        names("ephemeralContainers"),
    );
    match requested.filter(|c| !c.is_empty()) {
        Some(c) => {
            if app.iter().chain(&init).chain(&eph).any(|n| n == c) {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None if app.len() == 1 => Ok(app[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                app.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// The kubelet path for a `pods/log` request.
pub fn log_path(
    ns: &str,
    pod: &str,
    container: &str,
    q: &std::collections::HashMap<String, String>,
) -> String {
    let mut path = format!("/containerLogs/{ns}/{pod}/{container}");
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for p in LOG_PARAMS {
        if let Some(v) = q.get(*p) {
            ser.append_pair(p, v);
        }
    }
    let qs = ser.finish();
    if !qs.is_empty() {
        path.push('?');
        path.push_str(&qs);
    }
    path
}

/// The kubelet's address from a Node object.
pub fn node_endpoint(node: &Value) -> Option<(String, u16)> {
    let addrs = node["status"]["addresses"].as_array()?;
    let ip = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|t| {
            addrs
                .iter()
                .find(|a| a["type"] == *t)
                .and_then(|a| a["address"].as_str())
        })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0)
        .unwrap_or(10250);
    Some((ip.to_string(), port as u16))
}

/// Accepts any kubelet serving certificate (no `--kubelet-certificate-authority`).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn port_forward_ports_become_the_kubelets_port_parameters() {
        assert_eq!(
            port_forward_path("ns", "p", None).unwrap(),
            "/portForward/ns/p"
        );
        assert_eq!(
            port_forward_path("ns", "p", Some("ports=80,8080&ports=9090&pretty=1")).unwrap(),
            "/portForward/ns/p?port=80&port=8080&port=9090"
        );
        for bad in ["ports=0", "ports=x", "ports=70000", "ports=80,"] {
            let e = port_forward_path("ns", "p", Some(bad)).unwrap_err();
            assert_eq!(e.code, 400, "{bad}");
        }
    }

    #[test]
    fn container_choice_and_errors_follow_upstream() {
        let pod = json!({"metadata": {"name": "web"}, "spec": {
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(log_container(&pod, Some("init")).unwrap(), "init");
        let e = log_container(&pod, None).unwrap_err();
        assert!(
            e.message.contains(
                "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [init]"
            ),
            "{}",
            e.message
        );
        assert!(log_container(&pod, Some("zz")).is_err());
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "only"}]}});
        assert_eq!(log_container(&one, None).unwrap(), "only");
        let q = [
            ("tailLines".to_string(), "5".to_string()),
            ("pretty".to_string(), "1".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            log_path("ns", "p", "c", &q),
            "/containerLogs/ns/p/c?tailLines=5"
        );
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.2"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}}}});
        assert_eq!(node_endpoint(&node), Some(("10.0.0.2".into(), 12345)));
    }
}
