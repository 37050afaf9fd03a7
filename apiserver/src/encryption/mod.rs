//! Encryption at rest: the `EncryptionConfiguration` providers between the registry and the
//! store.
//!
//! Every value crosses [`Encryption`] on its way to and from etcd (the store client calls it by
//! key, so lists, gets, watches and the watch cache all see plaintext and nothing reaches the
//! store unencrypted). Each provider is one [`Transformer`]; a resource's providers, in file
//! order, form a prefix list: writes use the first, reads pick by the stored prefix
//! (`k8s:enc:aescbc:v1:<key>:`, `k8s:enc:aesgcm:v1:<key>:`, `k8s:enc:secretbox:v1:<key>:`,
//! `k8s:enc:kms:v2:<name>:`, none for identity) and report the value stale when it was not
//! written by the first provider (or, for KMS, under the current key id), so that a rewrite
//! migrates it. Stored bytes match kube-apiserver's, so a store can move between the two.

pub mod aes;
pub mod config;
pub mod kms;
pub mod metrics;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use self::config::{Config, Provider};
use self::kms::Kms;
use self::metrics::EncryptionMetrics;

/// The marker every encrypted value starts with.
pub const ENCRYPTED: &[u8] = b"k8s:enc:";
/// How long the KMS health checks may take together before they count as failed.
const HEALTH_LIMIT: Duration = Duration::from_secs(5);
/// How often the configuration file is checked with automatic reload on. Upstream polls every
/// minute; the file is small and hashing it is cheap, so a change is picked up within seconds.
const RELOAD_POLL: Duration = Duration::from_secs(5);
/// How long a reloaded configuration's new KMS providers get to become healthy.
const RELOAD_HEALTH_WAIT: Duration = Duration::from_secs(10);

/// A value read back from storage.
#[derive(Debug)]
pub struct Read {
    /// The plaintext.
    pub data: Vec<u8>,
    /// Whether the value should be rewritten (written by an older key or a non-first provider).
    pub stale: bool,
}

/// One provider (one key of it, for the local-key providers). `ad` is the authenticated data:
/// the value's etcd key.
pub trait Transformer: Send + Sync {
    /// Decrypts what [`Transformer::write`] produced (the prefix already removed).
    fn read<'a>(&'a self, data: &'a [u8], ad: &'a [u8]) -> BoxFuture<'a, Result<Read, String>>;
    /// Encrypts `data` (the prefix is added by the caller).
    fn write<'a>(&'a self, data: &'a [u8], ad: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, String>>;
}

/// What `identity` (and a resource without providers) says about encrypted data: it is
/// refused, never handed out as if it were the object.
pub const IDENTITY_REFUSES: &str = "identity transformer tried to read encrypted data";

/// One entry of a resource's prefix list.
struct Entry {
    prefix: String,
    /// How errors name it: `aescbc key "k1"`, `kms provider "local"`, `identity`.
    label: String,
    /// None for `identity`, which passes values through (without a copy).
    transformer: Option<Arc<dyn Transformer>>,
}

/// A resource's providers in configuration order.
pub struct Providers {
    entries: Vec<Entry>,
}

/// The stored prefix of `data` (`k8s:enc:<provider>:<version>:<name>:`), for error messages.
fn stored_prefix(data: &[u8]) -> String {
    let mut colons = 0;
    let end = data
        .iter()
        .take(256)
        .position(|&b| {
            colons += usize::from(b == b':');
            colons == 5
        })
        .map(|i| i + 1)
        .unwrap_or(data.len().min(32));
    String::from_utf8_lossy(&data[..end]).into_owned()
}

impl Providers {
    fn build(provs: &[Provider], kms: &HashMap<String, Arc<Kms>>) -> Result<Self, String> {
        let mut entries = Vec::new();
        for p in provs {
            match p {
                Provider::Identity => entries.push(Entry {
                    prefix: String::new(),
                    label: "identity".into(),
                    transformer: None,
                }),
                Provider::AesGcm(keys) | Provider::AesCbc(keys) | Provider::Secretbox(keys) => {
                    let kind = match p {
                        Provider::AesGcm(_) => "aesgcm",
                        Provider::AesCbc(_) => "aescbc",
                        _ => "secretbox",
                    };
                    for (name, key) in keys {
                        let t: Arc<dyn Transformer> = match p {
                            Provider::AesGcm(_) => aes::Gcm::new(key).map(|t| Arc::new(t) as _),
                            Provider::AesCbc(_) => aes::Cbc::new(key).map(|t| Arc::new(t) as _),
                            _ => aes::SecretBox::new(key).map(|t| Arc::new(t) as _),
                        }
                        .ok_or_else(|| {
                            format!("{kind} key {name:?}: invalid key size {}", key.len())
                        })?;
                        entries.push(Entry {
                            prefix: format!("k8s:enc:{kind}:v1:{name}:"),
                            label: format!("{kind} key {name:?}"),
                            transformer: Some(t),
                        });
                    }
                }
                Provider::Kms { name, .. } => {
                    let k = kms
                        .get(name)
                        .ok_or_else(|| format!("kms provider {name:?} was not started"))?;
                    entries.push(Entry {
                        prefix: format!("k8s:enc:kms:v2:{name}:"),
                        label: format!("kms provider {name:?}"),
                        transformer: Some(k.clone()),
                    });
                }
            }
        }
        Ok(Providers { entries })
    }

    /// Reads by prefix: the first entry whose prefix matches and which decrypts wins; stale
    /// unless it is the first entry.
    async fn read(
        &self,
        data: Vec<u8>,
        ad: &[u8],
        m: &EncryptionMetrics,
    ) -> Result<(Vec<u8>, bool), String> {
        let mut errs = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let Some(t) = &e.transformer else {
                if data.starts_with(ENCRYPTED) {
                    continue;
                }
                m.transformation("from_storage", "identity", true, Duration::ZERO);
                return Ok((data, i != 0));
            };
            let Some(rest) = data.strip_prefix(e.prefix.as_bytes()) else {
                continue;
            };
            let start = Instant::now();
            let prefix = &e.prefix;
            match t.read(rest, ad).await {
                Ok(r) => {
                    m.transformation("from_storage", prefix, true, start.elapsed());
                    return Ok((r.data, r.stale || i != 0));
                }
                Err(err) => {
                    m.transformation("from_storage", prefix, false, start.elapsed());
                    errs.push(format!("{}: {err}", e.label));
                }
            }
        }
        Err(match errs.len() {
            0 if data.starts_with(ENCRYPTED) => format!(
                "no matching prefix found: the value was written with {:?}, which no configured provider reads",
                stored_prefix(&data)
            ),
            0 => "no matching prefix found: the value is not encrypted and identity is not a configured provider".into(),
            1 => errs.remove(0),
            _ => format!("[{}]", errs.join(", ")),
        })
    }

    /// Writes with the first entry.
    async fn write(
        &self,
        data: Vec<u8>,
        ad: &[u8],
        m: &EncryptionMetrics,
    ) -> Result<Vec<u8>, String> {
        let e = &self.entries[0];
        let Some(t) = &e.transformer else {
            m.transformation("to_storage", "", true, Duration::ZERO);
            return Ok(data);
        };
        let start = Instant::now();
        let prefix = &e.prefix;
        match t.write(&data, ad).await {
            Ok(sealed) => {
                m.transformation("to_storage", prefix, true, start.elapsed());
                let mut out = Vec::with_capacity(e.prefix.len() + sealed.len());
                out.extend_from_slice(e.prefix.as_bytes());
                out.extend_from_slice(&sealed);
                Ok(out)
            }
            Err(err) => {
                m.transformation("to_storage", prefix, false, start.elapsed());
                Err(format!("{}: {err}", e.label))
            }
        }
    }
}

/// A loaded configuration.
struct Loaded {
    hash: [u8; 32],
    /// Providers by storage path (`secrets`, `services/specs`, ...); absent means plaintext.
    by_storage: HashMap<&'static str, Arc<Providers>>,
    /// KMS providers in file order.
    kms: Vec<Arc<Kms>>,
    /// Stops the KMS pollers of this configuration.
    stop: CancellationToken,
}

/// Encryption at rest for one apiserver.
pub struct Encryption {
    path: PathBuf,
    prefix: Vec<u8>,
    current: RwLock<Arc<Loaded>>,
    metrics: Arc<EncryptionMetrics>,
    reload_error: Mutex<Option<String>>,
    reload: bool,
    /// Stops the file watch and every KMS poller.
    shutdown: CancellationToken,
}

fn build(
    config: &Config,
    hash: [u8; 32],
    reuse: &[Arc<Kms>],
    metrics: &Arc<EncryptionMetrics>,
    endpoints: &mut HashMap<String, (String, Duration)>,
    stop: CancellationToken,
) -> Result<Loaded, String> {
    let mut kms_by_name = HashMap::new();
    let mut kms = Vec::new();
    for (name, endpoint, timeout) in config.kms_providers() {
        let same = endpoints.get(&name) == Some(&(endpoint.clone(), timeout));
        let k = match reuse.iter().find(|k| k.name() == name) {
            Some(k) if same => k.clone(),
            _ => Kms::new(&name, &endpoint, timeout, metrics.clone())
                .map_err(|e| format!("kms provider {name:?}: {e}"))?,
        };
        endpoints.insert(name.clone(), (endpoint, timeout));
        kms_by_name.insert(name, k.clone());
        kms.push(k);
    }
    let mut by_storage = HashMap::new();
    for r in crate::resources::all() {
        if by_storage.contains_key(r.storage) {
            continue;
        }
        if let Some(provs) = config.providers_for(r.group, r.resource) {
            by_storage.insert(r.storage, Arc::new(Providers::build(&provs, &kms_by_name)?));
        }
    }
    Ok(Loaded {
        hash,
        by_storage,
        kms,
        stop,
    })
}

fn read_config(path: &Path) -> Result<(Config, [u8; 32]), String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "error reading encryption provider configuration file {:?}: {e}",
            path.display().to_string()
        )
    })?;
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    let config = config::load(&path.display().to_string(), &bytes)?;
    Ok((config, hash))
}

impl Encryption {
    /// Loads `path` (`--encryption-provider-config`) for a store under `prefix`
    /// (`--etcd-prefix`), starts its KMS providers and probes each once; background work (KMS
    /// polls, the file watch) stops with `shutdown`. An invalid file is an error naming the
    /// field.
    pub async fn load(
        path: &Path,
        prefix: &str,
        reload: bool,
        metrics: Arc<EncryptionMetrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, String> {
        let (config, hash) = read_config(path)?;
        let mut endpoints = HashMap::new();
        let loaded = build(
            &config,
            hash,
            &[],
            &metrics,
            &mut endpoints,
            shutdown.child_token(),
        )?;
        for k in &loaded.kms {
            // One probe before serving, so a reachable plugin has a write seed from the start.
            let _ = k.check().await;
            tokio::spawn(k.clone().poll(loaded.stop.clone()));
        }
        let mut prefix = prefix.trim_end_matches('/').as_bytes().to_vec();
        prefix.push(b'/');
        let enc = Arc::new(Encryption {
            path: path.to_path_buf(),
            prefix,
            current: RwLock::new(Arc::new(loaded)),
            metrics,
            reload_error: Mutex::new(None),
            reload,
            shutdown,
        });
        if reload {
            tokio::spawn(enc.clone().watch_file(endpoints));
        }
        Ok(enc)
    }

    fn providers(&self, key: &[u8]) -> Option<Arc<Providers>> {
        let rest = key.strip_prefix(self.prefix.as_slice())?;
        let rest = std::str::from_utf8(rest).ok()?;
        let cur = self.current.read();
        let mut parts = rest.splitn(3, '/');
        let first = parts.next()?;
        if let Some(p) = cur.by_storage.get(first) {
            return Some(p.clone());
        }
        let second = parts.next()?;
        // `first/second` as a slice of the key (no allocation per lookup).
        cur.by_storage
            .get(&rest[..first.len() + 1 + second.len()])
            .cloned()
    }

    /// Decrypts a value read from `key`; returns the plaintext and whether it is stale.
    pub async fn from_storage(
        &self,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<(Vec<u8>, bool), String> {
        match self.providers(key) {
            Some(p) => p.read(value, key, &self.metrics).await,
            None if value.starts_with(ENCRYPTED) => Err(IDENTITY_REFUSES.into()),
            None => Ok((value, false)),
        }
    }

    /// Encrypts a value to be written at `key`.
    pub async fn to_storage(&self, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>, String> {
        match self.providers(key) {
            Some(p) => p.write(value, key, &self.metrics).await,
            None => Ok(value),
        }
    }

    /// Health checks: `kms-providers` (every KMS provider, failures prefixed `kms-provider-N`,
    /// all within 5 s), and, with automatic reload on, whether the last change of the file
    /// could be loaded. Each provider's own result is also returned as `kms-provider-N`
    /// (addressable as `/healthz/kms-provider-N`; the aggregate already covers it).
    pub async fn health_checks(&self) -> Vec<(String, Result<(), String>)> {
        let kms = self.current.read().kms.clone();
        let mut out = Vec::new();
        let results = tokio::time::timeout(
            HEALTH_LIMIT,
            futures::future::join_all(kms.iter().map(|k| k.check())),
        )
        .await;
        let each: Vec<(String, Result<(), String>)> = match results {
            Ok(rs) => rs
                .into_iter()
                .enumerate()
                .map(|(i, r)| (format!("kms-provider-{i}"), r))
                .collect(),
            Err(_) => (0..kms.len())
                .map(|i| {
                    (
                        format!("kms-provider-{i}"),
                        Err(format!(
                            "KMS provider {:?} did not answer within {HEALTH_LIMIT:?}",
                            kms[i].name()
                        )),
                    )
                })
                .collect(),
        };
        let failures: Vec<String> = each
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect();
        if !kms.is_empty() || self.reload {
            out.push((
                "kms-providers".to_string(),
                if failures.is_empty() {
                    Ok(())
                } else {
                    Err(failures.join(", "))
                },
            ));
        }
        out.extend(each);
        if self.reload {
            let r = match self.reload_error.lock().clone() {
                None => Ok(()),
                Some(e) => Err(e),
            };
            out.push(("encryption-provider-config-automatic-reload".to_string(), r));
        }
        out
    }

    /// `--encryption-provider-config-automatic-reload`: checks the file every few seconds and
    /// swaps in a changed configuration once it loads and its KMS providers answer; a broken
    /// file keeps the configuration in use and is reported by the health check.
    async fn watch_file(self: Arc<Self>, mut endpoints: HashMap<String, (String, Duration)>) {
        let mut failed_hash = None;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_POLL) => {}
            }
            let bytes = match std::fs::read(&self.path) {
                Ok(b) => b,
                Err(e) => {
                    *self.reload_error.lock() = Some(format!(
                        "error reading encryption provider configuration file {:?}: {e}",
                        self.path.display().to_string()
                    ));
                    continue;
                }
            };
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            if hash == self.current.read().hash {
                *self.reload_error.lock() = None;
                continue;
            }
            if failed_hash == Some(hash) {
                continue;
            }
            match self.try_reload(&bytes, hash, &mut endpoints).await {
                Ok(()) => {
                    failed_hash = None;
                    *self.reload_error.lock() = None;
                    self.metrics.reload(true);
                    tracing::info!(path = %self.path.display(), "encryption configuration reloaded");
                }
                Err(e) => {
                    failed_hash = Some(hash);
                    let e = format!(
                        "error processing encryption config file {}: {e}",
                        self.path.display()
                    );
                    tracing::error!("{e}; keeping the configuration in use");
                    *self.reload_error.lock() = Some(e);
                    self.metrics.reload(false);
                }
            }
        }
    }

    async fn try_reload(
        &self,
        bytes: &[u8],
        hash: [u8; 32],
        endpoints: &mut HashMap<String, (String, Duration)>,
    ) -> Result<(), String> {
        let config = config::load(&self.path.display().to_string(), bytes)?;
        let old = self.current.read().clone();
        let mut new_endpoints = endpoints.clone();
        let loaded = build(
            &config,
            hash,
            &old.kms,
            &self.metrics,
            &mut new_endpoints,
            self.shutdown.child_token(),
        )?;
        let deadline = Instant::now() + RELOAD_HEALTH_WAIT;
        for k in &loaded.kms {
            loop {
                match k.check().await {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("health check for new transformers failed: {e}"));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        for k in &loaded.kms {
            tokio::spawn(k.clone().poll(loaded.stop.clone()));
        }
        *endpoints = new_endpoints;
        *self.current.write() = Arc::new(loaded);
        old.stop.cancel();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
