//! Network probes and handlers as upstream's prober runs them: httpGet (HTTP and HTTPS without
//! certificate verification, 200–399 is success), tcpSocket (a connection opens), and grpc (the
//! `grpc.health.v1.Health/Check` call answers SERVING).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, GRPCAction, HTTPGetAction, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Resolves a probe port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {p}")),
        IntOrString::String(name) => {
            if let Ok(p) = name.parse::<u16>() {
                return Ok(p);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {name:?} in the container's ports"))
        }
    }
}

async fn connect(host: &str, port: u16, url: &str) -> Result<TcpStream, String> {
    TcpStream::connect((host, port)).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
            _ => e.to_string(),
        };
        format!("Get {url:?}: dial tcp {host}:{port}: {why}")
    })
}

/// An httpGet probe or handler.
pub async fn http_get(a: &HTTPGetAction, c: &Container, pod_ip: &str) -> Result<(), String> {
    let port = resolve_port(&a.port, c)?;
    let host = a
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    let scheme = a.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
    let mut path = a.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let url = format!("{scheme}://{host}:{port}{path}");
    let tcp = connect(&host, port, &url).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let has = |n: &str| {
        a.http_headers
            .iter()
            .flatten()
            .any(|h| h.name.eq_ignore_ascii_case(n))
    };
    if !has("host") {
        req.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    if !has("user-agent") {
        req.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for h in a.http_headers.iter().flatten() {
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("Connection: close\r\n\r\n");
    let code = if scheme == "https" {
        let cfg = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(
                rustls::crypto::ring::default_provider(),
            )))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        status_code(tls, &req, &url).await?
    } else {
        status_code(tcp, &req, &url).await?
    };
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn status_code<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
    url: &str,
) -> Result<u16, String> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| format!("Get {url:?}: malformed HTTP response"))
}

/// A tcpSocket probe.
pub async fn tcp(a: &TCPSocketAction, c: &Container, pod_ip: &str) -> Result<(), String> {
    let port = resolve_port(&a.port, c)?;
    let host = a
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    TcpStream::connect((host.as_str(), port))
        .await
        .map(drop)
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
}

/// A grpc probe: `grpc.health.v1.Health/Check` over cleartext HTTP/2.
pub async fn grpc(a: &GRPCAction, pod_ip: &str) -> Result<(), String> {
    use http_body_util::BodyExt;
    let port = u16::try_from(a.port).map_err(|_| format!("invalid port {}", a.port))?;
    let addr = format!("{pod_ip}:{port}");
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("failed to connect service {addr:?} within 1s: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| format!("failed to connect service {addr:?}: {e}"))?;
    tokio::spawn(conn);
    // HealthCheckRequest { string service = 1; } in a gRPC length-prefixed frame.
    let service = a.service.clone().unwrap_or_default();
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        msg.push(service.len() as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| "health rpc timed out".to_string())?
        .map_err(|e| format!("health rpc failed: {e}"))?;
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("health rpc failed: {e}"))?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string();
    if grpc_status != "0" {
        return Err(format!("health rpc failed: grpc-status {grpc_status}"));
    }
    let body = collected.to_bytes();
    // HealthCheckResponse { ServingStatus status = 1; } — SERVING is 1.
    let status = body
        .get(5..)
        .and_then(|m| m.windows(2).find(|w| w[0] == 0x08).map(|w| w[1]))
        .unwrap_or(0);
    if status == 1 {
        Ok(())
    } else {
        let name = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]
            .get(status as usize)
            .unwrap_or(&"UNKNOWN");
        Err(format!("service unhealthy (responded with {name:?})"))
    }
}

/// Accepts any server certificate (probes do not verify, as upstream's).
#[derive(Debug)]
struct NoVerify(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(status: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).contains("User-Agent: kube-probe/"));
            s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await
                .unwrap();
        });
        port
    }

    /// A gRPC health server answering every Check with `status` (1 SERVING, 2 NOT_SERVING).
    async fn grpc_health(status: u8) -> u16 {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let svc = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| async move {
                    assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                        Ok(Frame::data(bytes::Bytes::from(vec![
                            0, 0, 0, 0, 2, 0x08, status,
                        ]))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = StreamBody::new(futures::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap(),
                    )
                },
            );
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
        port
    }

    #[tokio::test]
    async fn grpc_probe_reads_the_serving_status() {
        let port = grpc_health(1).await;
        let a = GRPCAction {
            port: port as i32,
            service: Some("web".into()),
        };
        assert_eq!(grpc(&a, "127.0.0.1").await, Ok(()));
        let port = grpc_health(2).await;
        let a = GRPCAction {
            port: port as i32,
            service: None,
        };
        assert_eq!(
            grpc(&a, "127.0.0.1").await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
    }

    #[tokio::test]
    async fn http_probe_judges_status_codes() {
        let c = Container {
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("web".into()),
                container_port: 0,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let ok = serve_once("204 No Content").await;
        let a = HTTPGetAction {
            port: IntOrString::Int(ok as i32),
            path: Some("/healthz".into()),
            ..Default::default()
        };
        assert_eq!(http_get(&a, &c, "127.0.0.1").await, Ok(()));
        let bad = serve_once("500 Internal Server Error").await;
        let a = HTTPGetAction {
            port: IntOrString::Int(bad as i32),
            ..Default::default()
        };
        assert_eq!(
            http_get(&a, &c, "127.0.0.1").await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        let a = TCPSocketAction {
            port: IntOrString::String("nope".into()),
            ..Default::default()
        };
        assert!(tcp(&a, &c, "127.0.0.1").await.unwrap_err().contains("nope"));
    }
}
