//! A webhook described by a kubeconfig file, as kube-apiserver's token authenticator and
//! authorizer webhooks are (`--authentication-token-webhook-config-file`,
//! `--authorization-webhook-config-file`): the cluster of the current context gives the URL
//! (`server`) and the authority that verifies it; its user gives the client certificate or
//! bearer token the apiserver presents. Answers are kept for a while in a [`TtlCache`].

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

/// How long one call may take (client-go's default for these webhooks).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A webhook endpoint.
pub struct Remote {
    host: String,
    port: u16,
    server_name: String,
    path: String,
    tls: Arc<rustls::ClientConfig>,
    bearer: Option<String>,
    client: super::client::Client,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}:{}{}", self.host, self.port, self.path)
    }
}

/// Reads a file a kubeconfig names, relative to the kubeconfig's directory.
fn read_relative(base: &Path, file: &str, what: &str) -> Result<Vec<u8>, String> {
    let p = PathBuf::from(file);
    let p = if p.is_absolute() { p } else { base.join(p) };
    std::fs::read(&p).map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// `<field>-data` (base64) or `<field>` (a file), whichever is set.
fn data_or_file(section: &Value, field: &str, base: &Path) -> Result<Option<Vec<u8>>, String> {
    if let Some(d) = section
        .get(format!("{field}-data"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        return base64::Engine::decode(&base64::engine::general_purpose::STANDARD, d.trim())
            .map(Some)
            .map_err(|e| format!("{field}-data is not base64: {e}"));
    }
    match section
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(f) => read_relative(base, f, field).map(Some),
        None => Ok(None),
    }
}

/// The entry called `name` of a kubeconfig list (`clusters`, `users`, `contexts`), or the only
/// one when `name` is empty.
fn named<'a>(doc: &'a Value, list: &str, name: &str) -> Result<&'a Value, String> {
    let items = doc
        .get(list)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let key = list.trim_end_matches('s');
    if name.is_empty() {
        return match items {
            [one] => one
                .get(key)
                .ok_or_else(|| format!("{list}[0] has no {key}")),
            [] => Err(format!("no {list}")),
            _ => Err(format!(
                "several {list} and no current-context to choose one"
            )),
        };
    }
    items
        .iter()
        .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|i| i.get(key))
        .ok_or_else(|| format!("no {key} named {name:?}"))
}

impl Remote {
    /// The webhook of the kubeconfig at `path`; `flag` names it in errors.
    pub fn from_kubeconfig(path: &Path, flag: &str) -> Result<Self, String> {
        let fail = |e: String| format!("{flag} {}: {e}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_document(&doc, base).map_err(fail)
    }

    fn from_document(doc: &Value, base: &Path) -> Result<Self, String> {
        let current = doc
            .get("current-context")
            .and_then(Value::as_str)
            .unwrap_or("");
        let (cluster_name, user_name) = if current.is_empty() {
            match doc.get("contexts").and_then(Value::as_array).map(Vec::len) {
                Some(1) => {
                    let c = named(doc, "contexts", "")?;
                    (
                        c.get("cluster").and_then(Value::as_str).unwrap_or(""),
                        c.get("user").and_then(Value::as_str).unwrap_or(""),
                    )
                }
                _ => ("", ""),
            }
        } else {
            let c = named(doc, "contexts", current)?;
            (
                c.get("cluster").and_then(Value::as_str).unwrap_or(""),
                c.get("user").and_then(Value::as_str).unwrap_or(""),
            )
        };
        let cluster = named(doc, "clusters", cluster_name)?;
        let no_user = Value::Null;
        let user = match named(doc, "users", user_name) {
            Ok(u) => u,
            Err(_) if user_name.is_empty() => &no_user,
            Err(e) => return Err(e),
        };
        let server = cluster
            .get("server")
            .and_then(Value::as_str)
            .ok_or("the cluster has no server")?;
        let (host, port, path) =
            super::config::parse_url(server).map_err(|e| format!("server {server:?}: {e}"))?;
        if cluster
            .get("insecure-skip-tls-verify")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            return Err("insecure-skip-tls-verify is not supported: give the server's certificate-authority".into());
        }
        let ca = data_or_file(cluster, "certificate-authority", base)?;
        let builder = super::config::client_tls(ca.as_deref(), "certificate-authority")?;
        let cert = data_or_file(user, "client-certificate", base)?;
        let key = data_or_file(user, "client-key", base)?;
        let tls = match (cert, key) {
            (Some(c), Some(k)) => {
                let chain = CertificateDer::pem_slice_iter(&c)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client-certificate: {e}"))?;
                let key =
                    PrivateKeyDer::from_pem_slice(&k).map_err(|e| format!("client-key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client-certificate/client-key: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("client-certificate and client-key must be given together".into()),
        };
        let bearer = match user.get("token").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => Some(t.to_string()),
            _ => match user.get("tokenFile").and_then(Value::as_str) {
                Some(f) if !f.is_empty() => Some(
                    String::from_utf8_lossy(&read_relative(base, f, "tokenFile")?)
                        .trim()
                        .to_string(),
                ),
                _ => None,
            },
        };
        let server_name = cluster
            .get("tls-server-name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(&host)
            .to_string();
        Ok(Remote {
            host,
            port,
            server_name,
            path,
            tls: Arc::new(tls),
            bearer,
            client: super::client::Client::default(),
        })
    }

    /// POSTs `body` and returns the JSON answer; anything but a 2xx JSON object is an error.
    pub async fn post(&self, body: &Value) -> Result<Value, String> {
        let answer = self.send(body).await?;
        serde_json::from_slice::<Value>(&answer)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| format!("{self:?}: the answer is not a JSON object"))
    }

    /// POSTs `body` and returns the answer's body; anything but a 2xx is an error.
    pub async fn send(&self, body: &Value) -> Result<Bytes, String> {
        let body = Bytes::from(serde_json::to_vec(body).map_err(|e| e.to_string())?);
        let call = self.client.post(
            &self.host,
            self.port,
            &self.server_name,
            &self.tls,
            &self.path,
            self.bearer.as_deref(),
            body,
        );
        let (status, answer) = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| format!("{self:?}: no answer within {CALL_TIMEOUT:?}"))?
            .map_err(|e| format!("{self:?}: {e}"))?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&answer);
            let text: String = text.chars().take(200).collect();
            return Err(format!("{self:?}: HTTP {status}: {text}"));
        }
        Ok(answer)
    }
}

/// Most entries a [`TtlCache`] holds.
const CACHE_ENTRIES: usize = 4096;

/// Answers kept until they expire, at most [`CACHE_ENTRIES`] of them.
pub struct TtlCache<K, V> {
    entries: parking_lot::Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache {
            entries: parking_lot::Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// The answer for `key`, if one is kept and has not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock();
        entries
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v.clone())
    }

    /// Keeps `value` for `ttl` (not at all when `ttl` is zero).
    pub fn put(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= CACHE_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, (_, until)| now < *until);
            // Still full: the answer closest to expiring makes room (never the whole cache,
            // so a flood of new keys cannot push every kept answer out at once).
            if entries.len() >= CACHE_ENTRIES
                && let Some(k) = entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&k);
            }
        }
        entries.insert(key, (value, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfigs_name_the_server_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["hook".into()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        let doc: Value = serde_yaml::from_str(
            "clusters:\n- name: a\n  cluster: {server: 'https://127.0.0.1:9443/authn', certificate-authority: ca.pem}\n- name: b\n  cluster: {server: 'https://b.example/'}\nusers:\n- name: u\n  user: {token: secret}\ncontexts:\n- name: c\n  context: {cluster: a, user: u}\ncurrent-context: c\n",
        )
        .unwrap();
        let r = Remote::from_document(&doc, dir.path()).unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.path.as_str()),
            ("127.0.0.1", 9443, "/authn")
        );
        assert_eq!(r.bearer.as_deref(), Some("secret"));
        // Without a current context, a lone cluster is used; several are ambiguous.
        let lone: Value =
            serde_yaml::from_str("clusters:\n- name: a\n  cluster: {server: 'https://h:1/x'}\n")
                .unwrap();
        assert_eq!(Remote::from_document(&lone, dir.path()).unwrap().host, "h");
        let mut two = doc.clone();
        two.as_object_mut().unwrap().remove("current-context");
        two.as_object_mut().unwrap().remove("contexts");
        assert!(
            Remote::from_document(&two, dir.path())
                .unwrap_err()
                .contains("several clusters")
        );
        let plain: Value =
            serde_yaml::from_str("clusters:\n- name: a\n  cluster: {server: 'http://h:1/x'}\n")
                .unwrap();
        assert!(
            Remote::from_document(&plain, dir.path())
                .unwrap_err()
                .contains("https")
        );
        let missing: Value = serde_yaml::from_str(
            "clusters:\n- name: a\n  cluster: {server: 'https://h:1/x', certificate-authority: nope.pem}\n",
        )
        .unwrap();
        assert!(
            Remote::from_document(&missing, dir.path())
                .unwrap_err()
                .contains("nope.pem")
        );
    }

    #[test]
    fn cached_answers_expire() {
        let c: TtlCache<String, bool> = TtlCache::default();
        c.put("a".into(), true, Duration::from_secs(60));
        c.put("b".into(), false, Duration::ZERO);
        c.put("c".into(), true, Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.get(&"a".to_string()), Some(true));
        assert_eq!(c.get(&"b".to_string()), None);
        assert_eq!(c.get(&"c".to_string()), None);
    }
}
