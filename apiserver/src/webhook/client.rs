//! HTTPS POSTs to admission webhooks over kept-alive HTTP/1.1 connections, so that a webhook
//! costs one round trip per request once a connection is open.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;

/// Largest answer read from a webhook.
const MAX_RESPONSE: usize = 16 << 20;
/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 16;

/// Where one connection goes: address, TLS server name and the TLS settings (by identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host: String,
    port: u16,
    server_name: String,
    tls: usize,
}

/// Keeps idle connections to webhooks.
#[derive(Default)]
pub struct Client {
    idle: parking_lot::Mutex<HashMap<Key, Vec<SendRequest<Full<Bytes>>>>>,
}

impl Client {
    /// Drops every idle connection (the configurations changed).
    pub fn clear(&self) {
        self.idle.lock().clear();
    }

    fn take(&self, key: &Key) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(key)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, key: Key, s: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock();
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(s);
        }
    }

    async fn connect(
        host: &str,
        port: u16,
        server_name: &str,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("invalid server name {server_name:?}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// POSTs `body` (JSON) to `path_and_query` at `host:port`, checking the certificate against
    /// `server_name`, with `bearer` as the token if given; returns the HTTP status and body. The
    /// caller bounds the time.
    #[allow(clippy::too_many_arguments)]
    pub async fn post(
        &self,
        host: &str,
        port: u16,
        server_name: &str,
        tls: &Arc<rustls::ClientConfig>,
        path_and_query: &str,
        bearer: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, Bytes), String> {
        let key = Key {
            host: host.to_string(),
            port,
            server_name: server_name.to_string(),
            tls: Arc::as_ptr(tls) as usize,
        };
        let authority = if server_name.contains(':') {
            format!("[{server_name}]:{port}")
        } else {
            format!("{server_name}:{port}")
        };
        let request = || {
            let mut r = http::Request::post(path_and_query)
                .header("host", authority.as_str())
                .header("content-type", "application/json")
                .header("accept", "application/json");
            if let Some(token) = bearer {
                r = r.header("authorization", format!("Bearer {token}"));
            }
            r.body(Full::new(body.clone())).map_err(|e| e.to_string())
        };
        // A kept connection the webhook has closed meanwhile fails before the request is
        // sent; then one fresh connection is tried.
        let (mut send, reused) = match self.take(&key) {
            Some(s) => (s, true),
            None => (Self::connect(host, port, server_name, tls).await?, false),
        };
        let resp = match send.try_send_request(request()?).await {
            Ok(r) => r,
            Err(mut e) => {
                // Only a request that was never sent is retried, so a webhook is not called
                // twice.
                if !reused || e.take_message().is_none() {
                    return Err(e.into_error().to_string());
                }
                send = Self::connect(host, port, server_name, tls).await?;
                send.send_request(request()?)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let status = resp.status().as_u16();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
            .to_bytes();
        self.put(key, send);
        Ok((status, bytes))
    }
}
