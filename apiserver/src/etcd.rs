//! The apiserver's only door to storage: an etcd v3 gRPC client over several endpoints with
//! failover. It works against keelson-store and a real etcd alike, since both speak the same API
//! (the stubs come from `keelson-etcdpb`, generated without a system `protoc`).

pub use keelson_etcdpb::prefix_end;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keelson_etcdpb::etcdserverpb::{
    self as pb, compare, kv_client::KvClient, lease_client::LeaseClient, request_op, response_op,
    watch_client::WatchClient,
};
use keelson_etcdpb::mvccpb;
use tokio_stream::StreamExt;
use tonic::codegen::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::encryption::Encryption;
use crate::status::ApiError;

/// Errors from the store, mapped to API errors by the registry.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// The requested revision was compacted.
    #[error("required revision has been compacted")]
    Compacted {
        /// The store's compaction revision, when known.
        compact_revision: i64,
    },
    /// Any other gRPC error.
    #[error("etcd error: {0}")]
    Other(String),
    /// A value could not be encrypted or decrypted (encryption at rest).
    #[error("{0}")]
    Transform(String),
}

impl From<EtcdError> for ApiError {
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::Unavailable(m) => {
                ApiError::unavailable(format!("storage is unavailable: {m}"))
            }
            EtcdError::Compacted { .. } => ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ),
            EtcdError::Other(m) | EtcdError::Transform(m) => ApiError::internal(m),
        }
    }
}

/// TLS material for the store connection (`--etcd-cafile/--etcd-certfile/--etcd-keyfile`).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// CA bundle that signs the store's serving certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate.
    pub cert_file: Option<PathBuf>,
    /// Client key.
    pub key_file: Option<PathBuf>,
}

/// A key-value pair read from the store.
#[derive(Debug, Clone)]
pub struct Kv {
    /// Full key.
    pub key: Vec<u8>,
    /// Stored bytes.
    pub value: Vec<u8>,
    /// Revision of the last write to this key (the object's resourceVersion).
    pub mod_revision: i64,
    /// Whether the value was written by an encryption provider or key other than the current
    /// one, so that an update should rewrite it even when the object did not change.
    pub stale: bool,
}

impl From<mvccpb::KeyValue> for Kv {
    fn from(kv: mvccpb::KeyValue) -> Self {
        Kv {
            key: kv.key,
            value: kv.value,
            mod_revision: kv.mod_revision,
            stale: false,
        }
    }
}

/// Result of a range read.
#[derive(Debug, Clone)]
pub struct RangeResult {
    /// The keys found, in key order.
    pub kvs: Vec<Kv>,
    /// Whether more keys follow the last one (limit reached).
    pub more: bool,
    /// Number of keys in the whole range at this revision.
    pub count: i64,
    /// The store revision the read was served at.
    pub revision: i64,
}

/// Outcome of a conditional write.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// Applied; the new revision.
    Written(i64),
    /// The condition failed; the key's current state, if it exists (its value as stored, not
    /// decrypted).
    Failed(Option<Kv>),
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// A put; `prev` is the previous value when the key existed.
    Put {
        /// The new key-value.
        kv: Kv,
        /// The previous key-value.
        prev: Option<Kv>,
    },
    /// A delete at `revision`; `prev` is the deleted value.
    Delete {
        /// The deleted key.
        key: Vec<u8>,
        /// Revision of the delete.
        revision: i64,
        /// The value before the delete.
        prev: Option<Kv>,
    },
    /// The store has sent everything up to `revision` (progress notification).
    Progress {
        /// The store revision.
        revision: i64,
    },
}

/// The key whose version orders the apiservers' compactions and whose value is the last
/// revision compacted to (kube-apiserver's, at the root of the keyspace).
pub const COMPACT_REV_KEY: &str = "compact_rev_key";

type RequireLeader = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// What a member without a leader answers a require-leader call.
const NO_LEADER: &str = "etcdserver: no leader";

/// How long calls wait out an election in which no member has a leader (etcd's request
/// timeout with the default election timeout).
const LEADERLESS_WAIT: Duration = Duration::from_secs(7);

/// A connection to one store member whose every call asks for a leader (`hasleader: true`,
/// etcd's `WithRequireLeader`): a member without one refuses it at once, before anything runs,
/// so the call moves on to the next member certain that it did nothing, and a watch on a
/// member that lost its leader ends instead of waiting on it.
type StoreChannel = InterceptedService<Channel, RequireLeader>;

fn require_leader(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Ok(req)
}

/// An etcd v3 client over several endpoints. Requests go to the current endpoint; on a transport
/// failure the next endpoint is tried, so losing one store member is invisible to API clients.
#[derive(Clone)]
pub struct Etcd {
    channels: Arc<Vec<(String, StoreChannel)>>,
    current: Arc<AtomicUsize>,
    encryption: Option<Arc<Encryption>>,
}

/// Decrypts `kv`'s value in place.
async fn decrypt(enc: &Option<Arc<Encryption>>, mut kv: Kv) -> Result<Kv, EtcdError> {
    let Some(e) = enc else {
        // No encryption configured is identity for everything: encrypted data is refused, never
        // handed out as if it were the object.
        if kv.value.starts_with(crate::encryption::ENCRYPTED) {
            return Err(transform_error(
                &kv.key,
                crate::encryption::IDENTITY_REFUSES.into(),
            ));
        }
        return Ok(kv);
    };
    let value = std::mem::take(&mut kv.value);
    let (plain, stale) = e
        .from_storage(&kv.key, value)
        .await
        .map_err(|err| transform_error(&kv.key, err))?;
    kv.value = plain;
    kv.stale = stale;
    Ok(kv)
}

fn transform_error(key: &[u8], err: String) -> EtcdError {
    EtcdError::Transform(format!(
        "unable to transform key {:?}: {err}",
        String::from_utf8_lossy(key)
    ))
}

fn is_transport(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
    )
}

/// Whether a call certainly never reached the store: no connection could be made to the
/// endpoint, or the member had no leader (both stores refuse a require-leader call before it
/// runs).
fn never_sent(status: &tonic::Status) -> bool {
    if status.message() == NO_LEADER {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn map_status(status: tonic::Status) -> EtcdError {
    let msg = status.message();
    if msg.contains("required revision has been compacted") {
        EtcdError::Compacted {
            compact_revision: 0,
        }
    } else if is_transport(&status) {
        EtcdError::Unavailable(msg.to_string())
    } else {
        EtcdError::Other(format!("{:?}: {msg}", status.code()))
    }
}

impl Etcd {
    /// A client for `servers` (URLs like `http://127.0.0.1:2379` or `https://...`). Connections
    /// are made lazily, so this succeeds even while the store is still starting.
    pub fn new(servers: &[String], tls: &EtcdTls) -> Result<Self, String> {
        if servers.is_empty() {
            return Err("--etcd-servers must name at least one server".into());
        }
        let tls_config = if tls.ca_file.is_some() || tls.cert_file.is_some() {
            let mut cfg = ClientTlsConfig::new();
            if let Some(ca) = &tls.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("--etcd-cafile {}: {e}", ca.display()))?;
                cfg = cfg.ca_certificate(Certificate::from_pem(pem));
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(c), Some(k)) => {
                    let cert = std::fs::read(c)
                        .map_err(|e| format!("--etcd-certfile {}: {e}", c.display()))?;
                    let key = std::fs::read(k)
                        .map_err(|e| format!("--etcd-keyfile {}: {e}", k.display()))?;
                    cfg = cfg.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => return Err("--etcd-certfile and --etcd-keyfile must be given together".into()),
            }
            Some(cfg)
        } else {
            None
        };
        let mut channels = Vec::new();
        for s in servers {
            let url = if s.contains("://") {
                s.clone()
            } else {
                format!("http://{s}")
            };
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("--etcd-servers {s}: {e}"))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            if url.starts_with("https://") {
                let cfg = tls_config.clone().ok_or_else(|| {
                    format!("--etcd-servers {s}: an https server needs --etcd-cafile")
                })?;
                ep = ep
                    .tls_config(cfg)
                    .map_err(|e| format!("--etcd-servers {s}: {e}"))?;
            }
            channels.push((
                url,
                InterceptedService::new(ep.connect_lazy(), require_leader as RequireLeader),
            ));
        }
        Ok(Etcd {
            channels: Arc::new(channels),
            current: Arc::new(AtomicUsize::new(0)),
            encryption: None,
        })
    }

    /// Encrypts every value written and decrypts every value read with `encryption`.
    pub fn with_encryption(mut self, encryption: Arc<Encryption>) -> Self {
        self.encryption = Some(encryption);
        self
    }

    async fn encrypt(&self, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>, EtcdError> {
        match &self.encryption {
            Some(e) => e
                .to_storage(key, value)
                .await
                .map_err(|err| transform_error(key, err)),
            None => Ok(value),
        }
    }

    /// Runs `op` against the current endpoint, moving on to the next one on transport errors
    /// until every endpoint has been tried once. Reads (and calls as harmless to repeat) only:
    /// a write goes through [`Etcd::mutate`].
    async fn with_failover<T, F, Fut>(&self, op: F) -> Result<T, EtcdError>
    where
        F: Fn(StoreChannel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.failover(op, false).await
    }

    /// Runs the write `op` as [`Etcd::with_failover`] does, but moves on to the next endpoint
    /// only when the write certainly never reached the store (as etcd's client retries
    /// mutations): after a connection that broke, or a deadline, it may have been applied, and
    /// sent again it would fail its compare (a create would see its own object and report a
    /// clash, or take another generated name for the same object), so its error goes back to
    /// the caller as an unknown outcome. The next call starts on the next endpoint.
    async fn mutate<T, F, Fut>(&self, op: F) -> Result<T, EtcdError>
    where
        F: Fn(StoreChannel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.failover(op, true).await
    }

    async fn failover<T, F, Fut>(&self, op: F, write: bool) -> Result<T, EtcdError>
    where
        F: Fn(StoreChannel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.channels.len();
        // When every member refused for want of a leader (an election is going on), the
        // round is tried again until one is elected, for up to the store's request timeout.
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        let mut pause = Duration::from_millis(50);
        loop {
            let start = self.current.load(Ordering::Relaxed);
            let mut last = None;
            let mut leaderless = true;
            for i in 0..n {
                let idx = (start + i) % n;
                let (url, ch) = &self.channels[idx];
                match op(ch.clone()).await {
                    Ok(v) => {
                        if i > 0 {
                            self.current.store(idx, Ordering::Relaxed);
                        }
                        return Ok(v);
                    }
                    Err(s) if write && !never_sent(&s) => {
                        if is_transport(&s) {
                            let _ = self.current.compare_exchange(
                                start,
                                (idx + 1) % n,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                        return Err(map_status(s));
                    }
                    Err(s) if is_transport(&s) || s.message().contains("leader") => {
                        tracing::debug!(endpoint = %url, error = %s, "etcd endpoint failed; trying the next");
                        leaderless &= s.message() == NO_LEADER;
                        last = Some(s);
                    }
                    Err(s) => return Err(map_status(s)),
                }
            }
            if !leaderless || tokio::time::Instant::now() + pause > deadline {
                return Err(EtcdError::Unavailable(
                    last.map(|s| s.message().to_string()).unwrap_or_default(),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn range_request(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        self.with_failover(|ch| {
            let req = req.clone();
            async move { kv(ch).range(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Reads one key (linearizable).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let req = pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let resp = self.range_request(req).await?;
        match resp.kvs.into_iter().next() {
            Some(kv) => Ok(Some(decrypt(&self.encryption, Kv::from(kv)).await?)),
            None => Ok(None),
        }
    }

    /// Reads keys in `[start, end)` at `revision` (0 = latest), at most `limit` (0 = all).
    /// `serializable` answers from the member's local state without a quorum round.
    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: i64,
        revision: i64,
        serializable: bool,
    ) -> Result<RangeResult, EtcdError> {
        let req = pb::RangeRequest {
            key: start.to_vec(),
            range_end: end.to_vec(),
            limit,
            revision,
            serializable,
            ..Default::default()
        };
        let resp = self.range_request(req).await?;
        let mut kvs = Vec::with_capacity(resp.kvs.len());
        for kv in resp.kvs {
            kvs.push(decrypt(&self.encryption, Kv::from(kv)).await?);
        }
        Ok(RangeResult {
            revision: resp.header.map(|h| h.revision).unwrap_or(0),
            more: resp.more,
            count: resp.count,
            kvs,
        })
    }

    /// Grants a lease of `ttl` (whole seconds, rounded up): keys attached to it are deleted
    /// when it expires.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let req = pb::LeaseGrantRequest {
            ttl: secs.min(i64::MAX as u64) as i64,
            id: 0,
        };
        let resp = self
            .with_failover(|ch| async move { LeaseClient::new(ch).lease_grant(req).await })
            .await?
            .into_inner();
        if !resp.error.is_empty() {
            return Err(EtcdError::Other(format!(
                "granting a lease: {}",
                resp.error
            )));
        }
        Ok(resp.id)
    }

    /// The current store revision.
    pub async fn current_revision(&self) -> Result<i64, EtcdError> {
        let req = pb::RangeRequest {
            key: vec![0],
            limit: 1,
            count_only: true,
            ..Default::default()
        };
        let resp = self.range_request(req).await?;
        Ok(resp.header.map(|h| h.revision).unwrap_or(0))
    }

    async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.mutate(|ch| {
            let req = req.clone();
            async move { kv(ch).txn(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Runs `success` if every compare holds; on failure reads `key` back.
    async fn conditional(
        &self,
        key: &[u8],
        compare: Vec<pb::Compare>,
        success: Vec<pb::RequestOp>,
    ) -> Result<WriteOutcome, EtcdError> {
        let resp = self
            .txn(pb::TxnRequest {
                compare,
                success,
                failure: vec![range_op(key)],
            })
            .await?;
        if resp.succeeded {
            return Ok(WriteOutcome::Written(
                resp.header.map(|h| h.revision).unwrap_or(0),
            ));
        }
        let current = read_back(resp.responses).map(Kv::from);
        // Left as stored: callers only ask whether the key exists, and a value that cannot be
        // decrypted must not turn a conflict into an error.
        Ok(WriteOutcome::Failed(current))
    }

    /// Writes `key` whatever it holds, attached to `lease` (0: none).
    pub async fn put(&self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<i64, EtcdError> {
        let value = self.encrypt(key, value).await?;
        let resp = self
            .txn(pb::TxnRequest {
                success: vec![leased_put_op(key, value, lease)],
                ..Default::default()
            })
            .await?;
        Ok(resp.header.map(|h| h.revision).unwrap_or(0))
    }

    /// Deletes `key` if it exists.
    pub async fn delete(&self, key: &[u8]) -> Result<(), EtcdError> {
        self.txn(pb::TxnRequest {
            success: vec![delete_op(key)],
            ..Default::default()
        })
        .await
        .map(|_| ())
    }

    /// Writes `key` only if it does not exist.
    pub async fn create(&self, key: &[u8], value: Vec<u8>) -> Result<WriteOutcome, EtcdError> {
        self.create_all(key, value, 0, &[]).await
    }

    /// Writes `key` only if its mod_revision is `expected`, attached to `lease` (0: none; the
    /// key then outlives any lease it had).
    pub async fn update(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expected: i64,
        lease: i64,
    ) -> Result<WriteOutcome, EtcdError> {
        let value = self.encrypt(key, value).await?;
        self.conditional(
            key,
            vec![mod_is(key, expected)],
            vec![leased_put_op(key, value, lease)],
        )
        .await
    }

    /// Creates `key` (attached to `lease`, 0: none) and every key of `extra` in one
    /// transaction, only if none of them exists. On failure, returns the current state of `key`
    /// (None when only an extra key was taken).
    pub async fn create_all(
        &self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
        extra: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<WriteOutcome, EtcdError> {
        let mut compare = vec![absent(key)];
        let mut success = vec![leased_put_op(key, self.encrypt(key, value).await?, lease)];
        for (k, v) in extra {
            compare.push(absent(k));
            success.push(put_op(k, self.encrypt(k, v.clone()).await?));
        }
        self.conditional(key, compare, success).await
    }

    /// Deletes `key` (if its mod_revision is `expected`) together with `extra` keys, atomically.
    pub async fn delete_all(
        &self,
        key: &[u8],
        expected: i64,
        extra: &[Vec<u8>],
    ) -> Result<WriteOutcome, EtcdError> {
        let success = std::iter::once(key)
            .chain(extra.iter().map(Vec::as_slice))
            .map(delete_op)
            .collect();
        self.conditional(key, vec![mod_is(key, expected)], success)
            .await
    }

    /// One round of the periodic store compaction, as kube-apiserver's (storage/etcd3): the
    /// version of [`COMPACT_REV_KEY`] is a logical clock shared by every apiserver on the
    /// store. If it still is `clock`, this apiserver wins the round: it advances the clock and
    /// compacts the store to `last_revision`, the store's revision when it won the round
    /// before (so one interval of history is kept). Otherwise another apiserver compacted;
    /// this one only catches up with the clock. Returns the new clock and the revision to
    /// compact to next time.
    pub async fn compaction_round(
        &self,
        clock: i64,
        last_revision: i64,
    ) -> Result<(i64, i64), EtcdError> {
        let key = COMPACT_REV_KEY.as_bytes();
        let resp = self
            .txn(pb::TxnRequest {
                compare: vec![version_is(key, clock)],
                // Not through encryption: the key is outside the registry prefix and holds
                // only a revision number.
                success: vec![put_op(key, last_revision.to_string().into_bytes())],
                failure: vec![range_op(key)],
            })
            .await?;
        let now = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        if !resp.succeeded {
            let version = read_back(resp.responses).map_or(0, |kv| kv.version);
            return Ok((version, now));
        }
        if last_revision > 0 {
            let req = pb::CompactionRequest {
                revision: last_revision,
                physical: false,
            };
            match self
                .with_failover(
                    |ch| async move { kv(ch).compact(req).await.map(|r| r.into_inner()) },
                )
                .await
            {
                Ok(_) => tracing::info!(revision = last_revision, "compacted the store"),
                // Someone compacted further already (etcdctl, auto-compaction): fine.
                Err(EtcdError::Compacted { .. }) => {}
                // The round is won all the same (the clock has moved): the next one compacts
                // further.
                Err(e) => {
                    tracing::warn!(revision = last_revision, error = %e, "compacting the store failed")
                }
            }
        }
        Ok((clock + 1, now))
    }

    /// Watches `[start, end)` from `revision` (inclusive) with previous values. The stream ends
    /// with `Err(Compacted)` when `revision` is older than the store keeps, or with
    /// `Err(Unavailable)` when the store connection is lost.
    pub async fn watch(
        &self,
        start: &[u8],
        end: &[u8],
        revision: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<WatchEvent, EtcdError>>, EtcdError> {
        Ok(self
            .watch_with_progress(start, end, revision, true)
            .await?
            .0)
    }

    /// Like [`Etcd::watch`], also returning a handle that asks the store for a progress
    /// notification (answered as [`WatchEvent::Progress`] with the store's current revision).
    /// Without `prev_kv`, events carry no previous value (the watch cache has it already),
    /// which spares the bytes on the wire and a decryption per event on this side.
    pub async fn watch_with_progress(
        &self,
        start: &[u8],
        end: &[u8],
        revision: i64,
        prev_kv: bool,
    ) -> Result<
        (
            tokio::sync::mpsc::Receiver<Result<WatchEvent, EtcdError>>,
            ProgressHandle,
        ),
        EtcdError,
    > {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: start.to_vec(),
                    range_end: end.to_vec(),
                    start_revision: revision,
                    progress_notify: true,
                    prev_kv,
                    ..Default::default()
                },
            )),
        };
        let (req_tx, mut inbound) = self
            .with_failover(|ch| {
                let create = create.clone();
                async move {
                    let (req_tx, req_rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(4);
                    req_tx
                        .send(create)
                        .await
                        .map_err(|_| tonic::Status::cancelled("watch request channel closed"))?;
                    let stream = tokio_stream::wrappers::ReceiverStream::new(req_rx);
                    let inbound = WatchClient::new(ch)
                        .max_decoding_message_size(MAX_MESSAGE)
                        .watch(stream)
                        .await?
                        .into_inner();
                    Ok((req_tx, inbound))
                }
            })
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let handle = ProgressHandle { tx: req_tx.clone() };
        let encryption = self.encryption.clone();
        tokio::spawn(async move {
            // Keeps the request side open for as long as the watch lives.
            let _req_tx = req_tx;
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    _ = tx.closed() => return,
                };
                let resp = match msg {
                    Some(Ok(r)) => r,
                    Some(Err(s)) => {
                        let _ = tx.send(Err(map_status(s))).await;
                        return;
                    }
                    None => {
                        let _ = tx
                            .send(Err(EtcdError::Unavailable("watch stream closed".into())))
                            .await;
                        return;
                    }
                };
                if resp.compact_revision > 0 {
                    let _ = tx
                        .send(Err(EtcdError::Compacted {
                            compact_revision: resp.compact_revision,
                        }))
                        .await;
                    return;
                }
                if resp.canceled {
                    let _ = tx
                        .send(Err(EtcdError::Other(format!(
                            "watch canceled: {}",
                            resp.cancel_reason
                        ))))
                        .await;
                    return;
                }
                if resp.created {
                    continue;
                }
                let header_rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                if resp.events.is_empty() {
                    if tx
                        .send(Ok(WatchEvent::Progress {
                            revision: header_rev,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                for ev in resp.events {
                    let Some(kv) = ev.kv else { continue };
                    let delete = ev.r#type == mvccpb::event::EventType::Delete as i32;
                    // A value that cannot be decrypted ends the watch with the error, as the
                    // read of the same key would fail.
                    let prev = match ev.prev_kv {
                        Some(p) => match decrypt(&encryption, Kv::from(p)).await {
                            Ok(p) => Some(p),
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        },
                        None => None,
                    };
                    let kv = if delete {
                        Kv::from(kv)
                    } else {
                        match decrypt(&encryption, Kv::from(kv)).await {
                            Ok(kv) => kv,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    };
                    let event = if delete {
                        WatchEvent::Delete {
                            key: kv.key,
                            revision: kv.mod_revision,
                            prev,
                        }
                    } else {
                        WatchEvent::Put { kv, prev }
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok((rx, handle))
    }
}

/// Asks a store watch for progress notifications.
#[derive(Clone)]
pub struct ProgressHandle {
    tx: tokio::sync::mpsc::Sender<pb::WatchRequest>,
}

impl ProgressHandle {
    /// Requests a progress notification; false if the watch has ended.
    pub fn request(&self) -> bool {
        let req = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        };
        !matches!(
            self.tx.try_send(req),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_))
        )
    }
}

/// A compare that `key`'s `target` equals `value`.
fn equal(key: &[u8], target: compare::CompareTarget, value: compare::TargetUnion) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: target as i32,
        key: key.to_vec(),
        range_end: vec![],
        target_union: Some(value),
    }
}

fn absent(key: &[u8]) -> pb::Compare {
    equal(
        key,
        compare::CompareTarget::Create,
        compare::TargetUnion::CreateRevision(0),
    )
}

fn version_is(key: &[u8], version: i64) -> pb::Compare {
    equal(
        key,
        compare::CompareTarget::Version,
        compare::TargetUnion::Version(version),
    )
}

/// The key a failed transaction's [`range_op`] read back, if it exists.
fn read_back(responses: Vec<pb::ResponseOp>) -> Option<mvccpb::KeyValue> {
    responses.into_iter().find_map(|r| match r.response {
        Some(response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
        _ => None,
    })
}

fn mod_is(key: &[u8], rev: i64) -> pb::Compare {
    equal(
        key,
        compare::CompareTarget::Mod,
        compare::TargetUnion::ModRevision(rev),
    )
}

fn delete_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

fn put_op(key: &[u8], value: Vec<u8>) -> pb::RequestOp {
    leased_put_op(key, value, 0)
}

/// A put attached to `lease` (0: none).
fn leased_put_op(key: &[u8], value: Vec<u8>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

fn range_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// Largest store response accepted (pages are far smaller; one large object must still fit).
const MAX_MESSAGE: usize = 64 << 20;

fn kv(ch: StoreChannel) -> KvClient<StoreChannel> {
    KvClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn two_members() -> Etcd {
        let urls = [
            "http://127.0.0.1:9".to_string(),
            "http://127.0.0.1:10".into(),
        ];
        Etcd::new(&urls, &EtcdTls::default()).unwrap()
    }

    #[tokio::test]
    async fn calls_wait_out_an_election_in_which_no_member_has_a_leader() {
        let etcd = two_members();
        let calls = AtomicUsize::new(0);
        // Three rounds of both members refusing for want of a leader, then an answer.
        let r = etcd
            .mutate(|_| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n < 6 {
                        Err(tonic::Status::unavailable(NO_LEADER))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(r.unwrap(), 6);
        // Another refusal ends the call after one round; a write of unknown outcome at once.
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = etcd
            .with_failover(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(tonic::Status::unavailable("connection refused")) }
            })
            .await;
        assert!(matches!(r, Err(EtcdError::Unavailable(_))));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = etcd
            .mutate(|_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err(tonic::Status::unknown("context deadline exceeded")) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
