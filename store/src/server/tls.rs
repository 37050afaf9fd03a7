//! TLS for the client and peer ports, with etcd's flags: `--cert-file/--key-file` (+
//! `--trusted-ca-file`, `--client-cert-auth`) serve `https://` client URLs, and
//! `--peer-cert-file/--peer-key-file` (+ `--peer-trusted-ca-file`, `--peer-client-cert-auth`)
//! serve `https://` peer URLs and are what this member presents when it dials other members.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::ServerError;

fn certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Config(format!("{flag} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Config(format!(
            "{flag} {}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

fn key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>, ServerError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| ServerError::Config(format!("{flag} {}: {e}", path.display())))
}

/// The TLS files of one port (client or peer).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles<'a> {
    /// Serving certificate (`--cert-file` / `--peer-cert-file`).
    pub cert: Option<&'a Path>,
    /// Its key.
    pub key: Option<&'a Path>,
    /// CA of the client certificates (`--trusted-ca-file` / `--peer-trusted-ca-file`).
    pub ca: Option<&'a Path>,
    /// Require a client certificate signed by `ca`.
    pub client_cert_auth: bool,
    /// Flag prefix for messages: `` or `peer-`.
    pub prefix: &'static str,
}

impl TlsFiles<'_> {
    /// The rustls server configuration, or None when no certificate is configured.
    pub fn server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, ServerError> {
        let p = self.prefix;
        let (cert, key_path) = match (self.cert, self.key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                if self.client_cert_auth {
                    return Err(ServerError::Config(format!(
                        "--{p}client-cert-auth needs --{p}cert-file and --{p}key-file"
                    )));
                }
                return Ok(None);
            }
            _ => {
                return Err(ServerError::Config(format!(
                    "--{p}cert-file and --{p}key-file must be given together"
                )));
            }
        };
        let builder = rustls::ServerConfig::builder();
        let builder = match self.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca, &format!("--{p}trusted-ca-file"))? {
                    roots.add(c).map_err(|e| {
                        ServerError::Config(format!("--{p}trusted-ca-file {}: {e}", ca.display()))
                    })?;
                }
                let v = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
                let v = if self.client_cert_auth {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(v.build().map_err(|e| {
                    ServerError::Config(format!("--{p}trusted-ca-file {}: {e}", ca.display()))
                })?)
            }
            None if self.client_cert_auth => {
                return Err(ServerError::Config(format!(
                    "--{p}client-cert-auth needs --{p}trusted-ca-file"
                )));
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder
            .with_single_cert(
                certs(cert, &format!("--{p}cert-file"))?,
                key(key_path, &format!("--{p}key-file"))?,
            )
            .map_err(|e| ServerError::Config(format!("--{p}cert-file/--{p}key-file: {e}")))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Arc::new(cfg)))
    }

    /// What this member presents when it dials `https://` peers: the CA that signs their
    /// serving certificates and its own certificate as the client identity.
    pub fn client_config(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, ServerError> {
        let p = self.prefix;
        let (Some(cert), Some(key)) = (self.cert, self.key) else {
            return Ok(None);
        };
        let read = |path: &Path, flag: &str| {
            std::fs::read(path)
                .map_err(|e| ServerError::Config(format!("--{p}{flag} {}: {e}", path.display())))
        };
        let ca = self.ca.ok_or_else(|| {
            ServerError::Config(format!(
                "--{p}cert-file needs --{p}trusted-ca-file: it verifies the other members when this one dials them"
            ))
        })?;
        let cfg = tonic::transport::ClientTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                read(cert, "cert-file")?,
                read(key, "key-file")?,
            ))
            .ca_certificate(tonic::transport::Certificate::from_pem(read(
                ca,
                "trusted-ca-file",
            )?));
        Ok(Some(cfg))
    }
}

/// A listener that hands axum TLS streams: TCP accepts are handshaken in their own tasks (10 s
/// limit), so a slow or broken client never holds up the others.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` with `config` until the listener is dropped.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = tokio::select! {
                    r = tcp.accept() => match r {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client = %addr, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
