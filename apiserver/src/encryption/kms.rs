//! The KMS v2 provider: envelope encryption through a plugin, byte-compatible with
//! kube-apiserver's (KDF mode, the upstream default since 1.29).
//!
//! A 32-byte seed is made here and encrypted once by the plugin (`Encrypt`); every write derives
//! its own AES-256-GCM key from the seed with HKDF-SHA256 (expand only, the seed as the
//! pseudo-random key, 32 random bytes of `info` stored with the object) and stores
//! `k8s:enc:kms:v2:<name>:` ‖ `EncryptedObject{encryptedData = info ‖ nonce ‖ sealed, keyID,
//! encryptedDEKSource, annotations, type = HKDF_SHA256_XNONCE_AES_GCM_SEED}` with the etcd key as
//! associated data. So the plugin is called once per seed, never per object: reads decrypt a
//! seed once (`Decrypt`) and keep it in a cache.
//!
//! The write seed follows the plugin's key: a Status probe (every minute when healthy, every
//! 10 s when not, and from the health checks, cached 20 s / 3 s) makes a new seed when the key id
//! changes and extends the seed's life by 3 minutes otherwise; a seed not extended for 3 minutes
//! is no longer used for writes, so writes stop while the plugin stays unreachable. Reads of
//! objects whose seed is cached keep working while the plugin is down.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use futures::future::BoxFuture;
use hkdf::Hkdf;
use keelson_kms::pb;
use keelson_kms::pb::key_management_service_client::KeyManagementServiceClient;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

use super::metrics::EncryptionMetrics;
use super::{Read, Transformer};

/// How long a write seed stays usable after the last good Status (upstream's
/// `kmsv2PluginWriteDEKSourceMaxTTL`).
const WRITE_TTL: Duration = Duration::from_secs(180);
/// Status poll period while healthy / unhealthy.
const POLL_OK: Duration = Duration::from_secs(60);
const POLL_FAILING: Duration = Duration::from_secs(10);
/// How long a health-check result is reused after a success / failure.
const CHECK_CACHE_OK: Duration = Duration::from_secs(20);
const CHECK_CACHE_FAILED: Duration = Duration::from_secs(3);
/// Decrypted seeds are kept this long.
const SEED_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
const SEED: usize = 32;
const INFO: usize = 32;
const NONCE: usize = 12;
const MAX_KEY_ID: usize = 1024;
const MAX_DEK_SOURCE: usize = 1024;
const MAX_ANNOTATIONS: usize = 32 * 1024;

/// `sha256:<hex>` of a key id, as upstream logs and labels it (empty for an empty id).
pub fn key_id_hash(id: &str) -> String {
    if id.is_empty() {
        return String::new();
    }
    let d = Sha256::digest(id.as_bytes());
    use std::fmt::Write as _;
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in d {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Decrypted seeds by cache key, with the time each was stored.
type SeedCache = HashMap<[u8; 32], (Arc<Vec<u8>>, Instant)>;

/// The seed that encrypts new writes.
struct WriteState {
    seed: [u8; SEED],
    encrypted: Vec<u8>,
    key_id: String,
    annotations: HashMap<String, Vec<u8>>,
    expires: Instant,
    expires_wall: SystemTime,
}

/// Last health-check result.
struct Probe {
    at: Instant,
    result: Result<(), String>,
}

/// One KMS v2 provider (one plugin endpoint).
pub struct Kms {
    name: String,
    client: KeyManagementServiceClient<Channel>,
    timeout: Duration,
    state: RwLock<Option<Arc<WriteState>>>,
    seeds: Mutex<SeedCache>,
    probe: tokio::sync::Mutex<Option<Probe>>,
    version: OnceLock<String>,
    metrics: Arc<EncryptionMetrics>,
}

fn validate_key_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("keyID is empty".into());
    }
    if id.len() > MAX_KEY_ID {
        return Err(format!(
            "keyID is {} bytes, which exceeds the max size of {MAX_KEY_ID}",
            id.len()
        ));
    }
    Ok(())
}

fn validate_annotations(a: &HashMap<String, Vec<u8>>) -> Result<(), String> {
    let mut total = 0;
    for (k, v) in a {
        let labels: Vec<&str> = k.split('.').collect();
        let dns_ok = k.len() <= 253
            && labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !dns_ok {
            return Err(format!(
                "failed to validate annotations: annotations: Invalid value: {k:?}: should be a domain with at least two segments separated by dots"
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_ANNOTATIONS {
        return Err(format!(
            "failed to validate annotations: total size of annotations is {total}, which exceeds the max size of {MAX_ANNOTATIONS}"
        ));
    }
    Ok(())
}

fn validate_object(o: &pb::EncryptedObject) -> Result<(), String> {
    if !matches!(o.encrypted_dek_source_type, 0 | 1) {
        return Err(format!(
            "unknown encryptedDEKSourceType: {}",
            o.encrypted_dek_source_type
        ));
    }
    if o.encrypted_data.is_empty() {
        return Err("encrypted data is empty".into());
    }
    validate_dek_source(&o.encrypted_dek_source)?;
    validate_key_id(&o.key_id).map_err(|e| format!("failed to validate key id: {e}"))?;
    validate_annotations(&o.annotations)
}

fn validate_dek_source(s: &[u8]) -> Result<(), String> {
    if s.is_empty() {
        return Err(
            "failed to validate encrypted DEK source: encrypted DEK source is empty".into(),
        );
    }
    if s.len() > MAX_DEK_SOURCE {
        return Err(format!(
            "failed to validate encrypted DEK source: encrypted DEK source is {} bytes, which exceeds the max size of {MAX_DEK_SOURCE}",
            s.len()
        ));
    }
    Ok(())
}

/// The seed cache key: everything the plugin needs to decrypt, length-prefixed, hashed.
fn cache_key(o: &pb::EncryptedObject) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((o.encrypted_dek_source_type as u32).to_be_bytes());
    for part in [o.encrypted_dek_source.as_slice(), o.key_id.as_bytes()] {
        h.update((part.len() as u16).to_be_bytes());
        h.update(part);
    }
    if !o.annotations.is_empty() {
        h.update((o.annotations.len() as u32).to_be_bytes());
        let mut keys: Vec<&String> = o.annotations.keys().collect();
        keys.sort();
        for k in keys {
            let v = &o.annotations[k];
            h.update((k.len() as u16).to_be_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u16).to_be_bytes());
            h.update(v);
        }
    }
    h.finalize().into()
}

/// The per-object key: HKDF-SHA256 expand of the seed with `info`.
fn derive(seed: &[u8], info: &[u8]) -> Result<aes_gcm::Aes256Gcm, String> {
    if seed.len() < SEED {
        return Err(format!(
            "invalid seed length {} used for key generation",
            seed.len()
        ));
    }
    let hk = Hkdf::<Sha256>::from_prk(seed)
        .map_err(|e| format!("failed to derive read key from KDF: {e}"))?;
    let mut key = [0u8; 32];
    hk.expand(info, &mut key)
        .map_err(|e| format!("failed to derive read key from KDF: {e}"))?;
    Ok(aes_gcm::Aes256Gcm::new(&key.into()))
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

impl Kms {
    /// A provider for the plugin at `endpoint`; nothing is dialled until the first call.
    pub fn new(
        name: &str,
        endpoint: &str,
        timeout: Duration,
        metrics: Arc<EncryptionMetrics>,
    ) -> Result<Arc<Self>, String> {
        let channel = keelson_kms::connect(endpoint)?;
        Ok(Arc::new(Kms {
            name: name.to_string(),
            client: KeyManagementServiceClient::new(channel),
            timeout,
            state: RwLock::new(None),
            seeds: Mutex::new(HashMap::new()),
            probe: tokio::sync::Mutex::new(None),
            version: OnceLock::new(),
            metrics,
        }))
    }

    /// The provider name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id new writes are encrypted under, once a seed exists.
    pub fn current_key_id(&self) -> Option<String> {
        self.state.read().as_ref().map(|s| s.key_id.clone())
    }

    async fn call<T>(
        &self,
        method: &str,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        let start = Instant::now();
        let r = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        };
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics.kms_latency(
            &self.name,
            &format!("/v2.KeyManagementService/{method}"),
            &format!("{code:?}"),
            start.elapsed(),
        );
        r
    }

    /// Status, then a new seed if the key id changed (or there is none yet), else a longer life
    /// for the current one.
    pub(super) async fn probe_now(&self) -> Result<(), String> {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let status = self
            .call("Status", self.client.clone().status(pb::StatusRequest {}))
            .await
            .map_err(|e| {
                format!(
                    "failed to perform status section of the healthz check for KMS Provider {}, error: {}",
                    self.name,
                    e.message()
                )
            })?;
        let mut errs = Vec::new();
        if status.healthz != "ok" {
            errs.push(format!("got unexpected healthz status: {}", status.healthz));
        }
        if !matches!(status.version.as_str(), "v2" | "v2beta1") {
            errs.push(format!(
                "expected KMSv2 API version v2, got {}",
                status.version
            ));
        } else {
            let first = self.version.get_or_init(|| status.version.clone());
            if *first != status.version {
                errs.push(format!(
                    "KMSv2 API version should not change after the initial status response version {first}, got {}",
                    status.version
                ));
            }
        }
        let key_ok = match validate_key_id(&status.key_id) {
            Ok(()) => true,
            Err(e) => {
                self.metrics.invalid_key_id(&self.name, &e);
                errs.push(format!(
                    "got invalid KMSv2 KeyID hash {:?}: {e}",
                    key_id_hash(&status.key_id)
                ));
                false
            }
        };
        if key_ok {
            self.metrics
                .key_id_status(&self.name, &key_id_hash(&status.key_id));
            if let Err(e) = self
                .rotate_if_needed(&status.key_id, started, started_wall)
                .await
            {
                errs.push(e);
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            let joined = if errs.len() == 1 {
                errs.remove(0)
            } else {
                format!("[{}]", errs.join(", "))
            };
            Err(format!(
                "kmsv2 Provider {} is not healthy, error: {joined}",
                self.name
            ))
        }
    }

    async fn rotate_if_needed(
        &self,
        key_id: &str,
        started: Instant,
        started_wall: SystemTime,
    ) -> Result<(), String> {
        let current = self.state.read().clone();
        if let Some(s) = &current
            && s.key_id == key_id
            && Instant::now() < s.expires
        {
            *self.state.write() = Some(Arc::new(WriteState {
                seed: s.seed,
                encrypted: s.encrypted.clone(),
                key_id: s.key_id.clone(),
                annotations: s.annotations.clone(),
                expires: started + WRITE_TTL,
                expires_wall: started_wall + WRITE_TTL,
            }));
            return Ok(());
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let seed: [u8; SEED] = rand::random();
        let fail = |e: String| {
            format!(
                "failed to rotate DEK uid={uid:?}, useSeed=true, errGen={e}, statusKeyIDHash={:?}, stateKeyIDHash={:?}",
                key_id_hash(key_id),
                current
                    .as_ref()
                    .map(|s| key_id_hash(&s.key_id))
                    .unwrap_or_default()
            )
        };
        let resp = self
            .call(
                "Encrypt",
                self.client.clone().encrypt(pb::EncryptRequest {
                    plaintext: seed.to_vec(),
                    uid: uid.clone(),
                }),
            )
            .await
            .map_err(|e| fail(format!("failed to encrypt DEK, error: {}", e.message())))?;
        validate_dek_source(&resp.ciphertext).map_err(fail)?;
        validate_key_id(&resp.key_id)
            .map_err(|e| fail(format!("failed to validate key id: {e}")))?;
        validate_annotations(&resp.annotations).map_err(fail)?;
        if resp.key_id != key_id {
            return Err(fail(format!(
                "the key id of Encrypt ({}) differs from Status",
                key_id_hash(&resp.key_id)
            )));
        }
        // The new seed also decrypts what it writes without a plugin call.
        let obj = pb::EncryptedObject {
            encrypted_data: vec![0],
            key_id: resp.key_id.clone(),
            encrypted_dek_source: resp.ciphertext.clone(),
            annotations: resp.annotations.clone(),
            encrypted_dek_source_type: pb::EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed
                as i32,
        };
        self.remember_seed(cache_key(&obj), Arc::new(seed.to_vec()));
        if current.as_ref().is_none_or(|s| s.key_id != resp.key_id) {
            tracing::info!(provider = %self.name, key_id_hash = %key_id_hash(&resp.key_id), "KMS v2 write seed generated");
        }
        *self.state.write() = Some(Arc::new(WriteState {
            seed,
            encrypted: resp.ciphertext,
            key_id: resp.key_id,
            annotations: resp.annotations,
            expires: started + WRITE_TTL,
            expires_wall: started_wall + WRITE_TTL,
        }));
        Ok(())
    }

    fn remember_seed(&self, key: [u8; 32], seed: Arc<Vec<u8>>) {
        let mut seeds = self.seeds.lock();
        let now = Instant::now();
        seeds.retain(|_, (_, at)| now.duration_since(*at) < SEED_CACHE_TTL);
        seeds.insert(key, (seed, now));
        self.metrics.seed_cache_size(&self.name, seeds.len());
    }

    /// The health check: a probe, or the last result while it is fresh (20 s after a success,
    /// 3 s after a failure).
    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.probe.lock().await;
        if let Some(p) = last.as_ref() {
            let fresh = match p.result {
                Ok(()) => CHECK_CACHE_OK,
                Err(_) => CHECK_CACHE_FAILED,
            };
            if p.at.elapsed() < fresh {
                return p.result.clone();
            }
        }
        let result = self.probe_now().await;
        if let Err(e) = &result {
            tracing::warn!(provider = %self.name, error = %e, "KMS v2 provider unhealthy");
        }
        *last = Some(Probe {
            at: Instant::now(),
            result: result.clone(),
        });
        result
    }

    /// Polls the plugin until `stop`: every minute while healthy, every 10 s while not.
    pub async fn poll(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            let period = match self.check().await {
                Ok(()) => POLL_OK,
                Err(_) => POLL_FAILING,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    async fn seed_for(&self, o: &pb::EncryptedObject) -> Result<Arc<Vec<u8>>, String> {
        let key = cache_key(o);
        if let Some((s, _)) = self.seeds.lock().get(&key) {
            return Ok(s.clone());
        }
        let resp = self
            .call(
                "Decrypt",
                self.client.clone().decrypt(pb::DecryptRequest {
                    ciphertext: o.encrypted_dek_source.clone(),
                    uid: uuid::Uuid::new_v4().to_string(),
                    key_id: o.key_id.clone(),
                    annotations: o.annotations.clone(),
                }),
            )
            .await
            .map_err(|e| format!("failed to decrypt DEK, error: {}", e.message()))?;
        // Checked before it is cached: a bad answer must not stick for the cache's lifetime.
        let ok = if o.encrypted_dek_source_type == 1 {
            resp.plaintext.len() >= SEED
        } else {
            resp.plaintext.len() == 32
        };
        if !ok {
            return Err(format!(
                "failed to decrypt DEK, error: the plugin returned {} bytes, not a valid key or seed",
                resp.plaintext.len()
            ));
        }
        let seed = Arc::new(resp.plaintext);
        self.remember_seed(key, seed.clone());
        Ok(seed)
    }
}

impl Transformer for Kms {
    fn read<'a>(&'a self, data: &'a [u8], ad: &'a [u8]) -> BoxFuture<'a, Result<Read, String>> {
        Box::pin(async move {
            let o = pb::EncryptedObject::decode(data).map_err(|e| e.to_string())?;
            validate_object(&o)?;
            let source = self.seed_for(&o).await?;
            let plain = if o.encrypted_dek_source_type == 1 {
                if o.encrypted_data.len() < INFO {
                    return Err("the stored data was shorter than the required size".into());
                }
                let (info, rest) = o.encrypted_data.split_at(INFO);
                open(&derive(&source, info)?, rest, ad)?
            } else {
                let key = aes_gcm::Aes256Gcm::new_from_slice(&source)
                    .map_err(|_| format!("invalid DEK length {}", source.len()))?;
                open(&key, &o.encrypted_data, ad)?
            };
            self.metrics
                .key_id_used(&self.name, "from_storage", &key_id_hash(&o.key_id));
            let stale = o.encrypted_dek_source_type != 1
                || self
                    .state
                    .read()
                    .as_ref()
                    .is_some_and(|s| s.key_id != o.key_id);
            Ok(Read { data: plain, stale })
        })
    }

    fn write<'a>(&'a self, data: &'a [u8], ad: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let st = self.state.read().clone().ok_or_else(|| {
                format!(
                    "KMS provider {} has no data encryption key yet: the plugin has not answered Status and Encrypt",
                    self.name
                )
            })?;
            if Instant::now() > st.expires {
                return Err(format!(
                    "encryptedDEKSource with keyID hash {:?} expired at {} (current time is {})",
                    key_id_hash(&st.key_id),
                    rfc3339(st.expires_wall),
                    rfc3339(SystemTime::now())
                ));
            }
            let info: [u8; INFO] = rand::random();
            let nonce: [u8; NONCE] = rand::random();
            let sealed = derive(&st.seed, &info)?
                .encrypt(
                    aes_gcm::Nonce::from_slice(&nonce),
                    Payload { msg: data, aad: ad },
                )
                .map_err(|_| "AES-GCM encryption failed".to_string())?;
            let mut encrypted_data = Vec::with_capacity(INFO + NONCE + sealed.len());
            encrypted_data.extend_from_slice(&info);
            encrypted_data.extend_from_slice(&nonce);
            encrypted_data.extend_from_slice(&sealed);
            let o = pb::EncryptedObject {
                encrypted_data,
                key_id: st.key_id.clone(),
                encrypted_dek_source: st.encrypted.clone(),
                annotations: st.annotations.clone(),
                encrypted_dek_source_type: pb::EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed
                    as i32,
            };
            self.metrics
                .key_id_used(&self.name, "to_storage", &key_id_hash(&st.key_id));
            Ok(o.encode_to_vec())
        })
    }
}

fn open(key: &aes_gcm::Aes256Gcm, data: &[u8], ad: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < NONCE {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, sealed) = data.split_at(NONCE);
    key.decrypt(
        aes_gcm::Nonce::from_slice(nonce),
        Payload {
            msg: sealed,
            aad: ad,
        },
    )
    .map_err(|_| "cipher: message authentication failed".to_string())
}
