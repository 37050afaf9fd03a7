//! One store member: flags, bootstrap (new cluster, restart, or joining an existing cluster),
//! and serving the client (etcd v3 gRPC + `/metrics` + `/health`) and peer ports.
//!
//! Start with [`run`]; tests and `keelson up` start the binary with etcd's flags.

pub mod authority;
pub mod http;
pub mod lessor;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod quota;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keelson_etcdpb::etcdserverpb::CompactionRequest;
use keelson_etcdpb::etcdserverpb::auth_server::AuthServer;
use keelson_etcdpb::etcdserverpb::cluster_server::ClusterServer;
use keelson_etcdpb::etcdserverpb::kv_server::KvServer;
use keelson_etcdpb::etcdserverpb::lease_server::LeaseServer;
use keelson_etcdpb::etcdserverpb::maintenance_server::MaintenanceServer;
use keelson_etcdpb::etcdserverpb::watch_server::WatchServer;
use keelson_etcdpb::v3electionpb::election_server::ElectionServer;
use keelson_etcdpb::v3lockpb::lock_server::LockServer;
use openraft::SnapshotPolicy;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use self::lessor::Lessor;
use self::metrics::Metrics;
use self::node::{Node, RestoredLeader};
use self::peer::PeerService;
use self::quota::Quota;
pub use keelson_duration::parse_go_duration;

use crate::auth::jwt::JwtTokens;
use crate::backend::SledBackend;
use crate::etcd::auth::AuthService;
use crate::etcd::cluster::{ClusterService, fnv64, validate_urls};
use crate::etcd::concurrency::ConcurrencyService;
use crate::etcd::kv::KvService;
use crate::etcd::lease::LeaseService;
use crate::etcd::maintenance::MaintenanceService;
use crate::etcd::watch::WatchService;
use crate::raft::log_store::LogStore;
use crate::raft::network::{MAX_PEER_MESSAGE, Network, Peers};
use crate::raft::pb::raft_peer_server::RaftPeerServer;
use crate::raft::pb::{InternalRequest, MemberAttributes, MembersRequest, internal_request};
use crate::raft::snapshot::{SnapshotDir, migrate_legacy, resume_install};
use crate::raft::state_machine::{Shared, StateMachine};
use crate::raft::{Member, NodeId, Raft};

/// Flags of `keelson store`, with etcd's names and defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: `<name>.etcd`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, default_value = "http://localhost:2379")]
    pub listen_client_urls: String,
    /// This member's client URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (`name=peerURL,...`).
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// `new` to bootstrap a cluster, `existing` to join one (after MemberAdd).
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Initial cluster token, so clusters bootstrapped from the same configuration differ.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Raise an alarm and refuse writes when the backend exceeds this size (0 = 2 GiB).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Maximum client request size in bytes.
    #[arg(long, default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// `periodic` (retention is a duration) or `revision` (retention is a revision count).
    #[arg(long, default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,
    /// Auto compaction retention: `0` disables; `1h`/`30m`/`90s`, or a bare number of hours in
    /// periodic mode; a number of revisions in revision mode.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Number of committed entries that trigger a snapshot (and log purge).
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Time (ms) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (ms) for an election to time out.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// How often watchers that asked for progress notifications get one.
    #[arg(long = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = parse_duration)]
    pub watch_progress_notify_interval: Duration,
    /// Path to the client server TLS cert file (serves https:// client URLs).
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file (verifies client certificates).
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication: clients must present a certificate signed by
    /// --trusted-ca-file.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: bool,
    /// Path to the peer server TLS cert file (serves https:// peer URLs; also this member's
    /// client certificate towards its peers).
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file (verifies peers, both ways).
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication: peers must present a certificate signed by
    /// --peer-trusted-ca-file.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: bool,
    /// Reject membership changes that could cost the cluster its quorum: adding or promoting
    /// a voter while too few members have started or not every voter has been connected for
    /// 5 s, removing a voter the active quorum needs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub strict_reconfig_check: bool,
    /// The v3 authentication token type: `simple`, or `jwt,sign-method=...,priv-key=...,
    /// pub-key=...,ttl=...` as etcd's.
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// How long (seconds) a simple token stays valid after its last use.
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt's cost for hashing user passwords, 4 to 31 (another value is replaced by the
    /// default, 10, with a warning, as etcd does).
    #[arg(long, default_value_t = 10)]
    pub bcrypt_cost: u32,
}

/// Why a member could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A flag is wrong; the message says which.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory cannot be used.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// Which directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding a listener failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Joining an existing cluster failed.
    #[error("join existing cluster: {0}")]
    Join(String),
    /// Raft failed to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// Parses a Go duration (`90s`, `1h30m`, `250ms`, `1.5h`, `5m0s`; units ns, us, µs, ms, s,
/// m and h), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return parse_go_duration(&format!("{s}s"));
    }
    parse_go_duration(s)
}

/// Splits a comma-separated URL list.
fn url_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// The socket address of a listen URL (`localhost` means 127.0.0.1) and whether it is https.
fn listen_addr(u: &str) -> Result<(SocketAddr, bool), ServerError> {
    let parsed =
        url::Url::parse(u).map_err(|e| ServerError::Config(format!("listen URL {u:?}: {e}")))?;
    let https = match parsed.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(ServerError::Config(format!(
                "listen URL {u:?}: unsupported scheme {other:?} (http or https)"
            )));
        }
    };
    let host = match parsed.host_str() {
        Some("localhost") | None => "127.0.0.1".to_string(),
        Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
    };
    let port = parsed
        .port()
        .ok_or_else(|| ServerError::Config(format!("listen URL {u:?} has no port")))?;
    format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("[{host}]:{port}").parse())
        .map(|a| (a, https))
        .map_err(|e| ServerError::Config(format!("listen URL {u:?}: {e}")))
}

/// `name=url,name=url` into name -> sorted URLs.
fn parse_initial_cluster(s: &str) -> Result<BTreeMap<String, Vec<String>>, ServerError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part.split_once('=').ok_or_else(|| {
            ServerError::Config(format!("--initial-cluster entry {part:?} is not name=url"))
        })?;
        out.entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    for urls in out.values_mut() {
        urls.sort();
        validate_urls(urls).map_err(|_| {
            ServerError::Config(format!("--initial-cluster has an invalid URL in {urls:?}"))
        })?;
    }
    Ok(out)
}

/// Member ID as a function of its peer URLs and the cluster token (etcd derives it the same way,
/// with its own hash).
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    fnv64(&[urls.join(",").as_bytes(), token.as_bytes()])
}

#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    member_id: u64,
    cluster_id: u64,
    name: String,
}

const IDENTITY_FILE: &str = "member.json";

fn read_identity(dir: &Path) -> Result<Option<Identity>, ServerError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ServerError::DataDir {
                path: path.clone(),
                reason: format!("corrupt member identity: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ServerError::DataDir {
            path,
            reason: e.to_string(),
        }),
    }
}

fn write_identity(dir: &Path, id: &Identity) -> Result<(), ServerError> {
    let path = dir.join(IDENTITY_FILE);
    let tmp = dir.join("member.json.tmp");
    let bytes = serde_json::to_vec_pretty(id).expect("BUG: identity serializes");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| ServerError::DataDir {
            path,
            reason: e.to_string(),
        })
}

async fn discover_existing(
    config: &Config,
    my_urls: &[String],
    peers: &Peers,
) -> Result<Identity, ServerError> {
    let cluster = parse_initial_cluster(&config.initial_cluster)?;
    let mut last_err = String::from("no other member in --initial-cluster");
    for (name, urls) in &cluster {
        if name == &config.name {
            continue;
        }
        for url in urls {
            let Ok(mut client) = peers.client_for_url(url) else {
                continue;
            };
            let mut req = tonic::Request::new(MembersRequest {});
            req.set_timeout(Duration::from_secs(3));
            match client.members(req).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let mine = resp.members.iter().find(|m| {
                        let mut a = m.peer_ur_ls.clone();
                        a.sort();
                        a == my_urls
                    });
                    return match mine {
                        Some(m) => Ok(Identity {
                            member_id: m.id,
                            cluster_id: resp.cluster_id,
                            name: config.name.clone(),
                        }),
                        None => Err(ServerError::Join(format!(
                            "no member with peer URLs {my_urls:?} in the cluster; add it first (etcdctl member add {} --peer-urls=...)",
                            config.name
                        ))),
                    };
                }
                Err(e) => last_err = format!("{url}: {}", e.message()),
            }
        }
    }
    Err(ServerError::Join(last_err))
}

/// The deadline openraft gives each AppendEntries and leadership confirmation: its heartbeat
/// interval. At etcd's 100 ms, a peer whose answer takes longer (a link of 50 ms each way and
/// a slow fsync) could never answer in time, and every failed call backs replication off for
/// 500 ms: a cluster across such links stops committing where etcd only slows down. So
/// openraft's interval is three heartbeat intervals (etcd's tuning guide sets the heartbeat
/// near the round trip), at most half the election timeout, and [`Node::send_heartbeats`]
/// keeps the heartbeat rate.
///
/// The cost: openraft also checks its election timer every 1.5 of its intervals (450 ms at
/// the defaults, 150 ms before), so a follower calls an election up to 300 ms later after its
/// timeout (which is 3 to 4 s after the leader's last word, its lease included).
pub fn rpc_deadline(heartbeat_ms: u64, election_ms: u64) -> u64 {
    (3 * heartbeat_ms).min(election_ms / 2).max(heartbeat_ms)
}

/// Whether this member led before it stopped (its vote is its own and committed): openraft then
/// makes it leader again at once, in the same term (see [`RestoredLeader`]).
pub async fn restored_leader(
    id: NodeId,
    log: &mut LogStore,
) -> Result<Option<RestoredLeader>, openraft::StorageError<NodeId>> {
    use openraft::storage::RaftLogStorage;
    let Some(vote) = log.read_vote().await? else {
        return Ok(None);
    };
    if !vote.is_committed() || vote.leader_id().voted_for() != Some(id) {
        return Ok(None);
    }
    let last = log.get_log_state().await?.last_log_id;
    Ok(Some(RestoredLeader {
        term: vote.leader_id().term,
        last_index: last.map_or(0, |l| l.index),
    }))
}

/// Why [`ready_log`] failed.
#[derive(Debug)]
pub enum Unready {
    /// The snapshot install a crash cut short could not be finished.
    Install(crate::StoreError),
    /// The log could not be purged up to the current snapshot.
    Purge(Box<openraft::StorageError<NodeId>>),
}

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unready::Install(e) => write!(f, "cannot finish the snapshot install cut short: {e}"),
            Unready::Purge(e) => write!(f, "cannot purge the log up to the snapshot: {e}"),
        }
    }
}

impl std::error::Error for Unready {}

/// Readies a member's log over its loaded state, as a start does: finishes a snapshot install
/// a crash cut short, makes the log's purges wait until a snapshot that covers them is
/// installed and durable (current, no install pending, applied; see
/// `LogStore::with_snapshot_check`), and purges the log up to the current snapshot.
pub fn ready_log(shared: &Arc<Shared>, log: LogStore) -> Result<LogStore, Unready> {
    resume_install(shared).map_err(Unready::Install)?;
    let log = log.with_snapshot_check({
        let shared = shared.clone();
        Arc::new(move |index| {
            let covered = |l: Option<crate::raft::LogId>| l.is_some_and(|l| l.index >= index);
            covered(shared.snapshots.last_log_id())
                && covered(shared.applied.read().0)
                && !shared.snapshots.install_pending()
        })
    });
    if let Some(snapshot) = shared.snapshots.last_log_id() {
        log.purge_to_snapshot(snapshot)
            .map_err(|e| Unready::Purge(Box::new(e)))?;
    }
    Ok(log)
}

/// Starts a member and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let data_dir = config
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", config.name)));
    let mut my_peer_urls = url_list(&config.initial_advertise_peer_urls);
    my_peer_urls.sort();
    validate_urls(&my_peer_urls)
        .map_err(|_| ServerError::Config("--initial-advertise-peer-urls is invalid".into()))?;
    let client_urls = url_list(&config.advertise_client_urls);
    let client_addrs: Vec<(SocketAddr, bool)> = url_list(&config.listen_client_urls)
        .iter()
        .map(|u| listen_addr(u))
        .collect::<Result<_, _>>()?;
    let peer_addrs: Vec<(SocketAddr, bool)> = url_list(&config.listen_peer_urls)
        .iter()
        .map(|u| listen_addr(u))
        .collect::<Result<_, _>>()?;
    let client_files = tls::TlsFiles {
        cert: config.cert_file.as_deref(),
        key: config.key_file.as_deref(),
        ca: config.trusted_ca_file.as_deref(),
        client_cert_auth: config.client_cert_auth,
        prefix: "",
    };
    let peer_files = tls::TlsFiles {
        cert: config.peer_cert_file.as_deref(),
        key: config.peer_key_file.as_deref(),
        ca: config.peer_trusted_ca_file.as_deref(),
        client_cert_auth: config.peer_client_cert_auth,
        prefix: "peer-",
    };
    let client_tls = client_files.server_config()?;
    let peer_tls = peer_files.server_config()?;
    if client_addrs.iter().any(|(_, https)| *https) && client_tls.is_none() {
        return Err(ServerError::Config(
            "an https:// --listen-client-urls needs --cert-file and --key-file".into(),
        ));
    }
    if config.client_cert_auth && !client_addrs.iter().any(|(_, https)| *https) {
        return Err(ServerError::Config(
            "--client-cert-auth needs an https:// --listen-client-urls".into(),
        ));
    }
    if config.peer_client_cert_auth && !peer_addrs.iter().any(|(_, https)| *https) {
        return Err(ServerError::Config(
            "--peer-client-cert-auth needs an https:// --listen-peer-urls".into(),
        ));
    }
    if peer_addrs.iter().any(|(_, https)| *https) && peer_tls.is_none() {
        return Err(ServerError::Config(
            "an https:// --listen-peer-urls needs --peer-cert-file and --peer-key-file".into(),
        ));
    }
    if config.max_request_bytes == 0 {
        return Err(ServerError::Config(
            "--max-request-bytes must be positive".into(),
        ));
    }
    let retention = auto_compaction(&config)?;
    raft_timing(&config)?;
    let (jwt, bcrypt_cost) = auth_options(&config)?;
    crate::failpoint::from_env(shutdown.clone())
        .await
        .map_err(ServerError::Config)?;
    // Made once the flags have passed: bad flags leave nothing behind.
    std::fs::create_dir_all(&data_dir).map_err(|e| ServerError::DataDir {
        path: data_dir.clone(),
        reason: e.to_string(),
    })?;

    // Bind first, so a port clash fails fast and peers can reach us as soon as Raft starts.
    let mut client_listeners = Vec::new();
    for (a, https) in &client_addrs {
        let l = tokio::net::TcpListener::bind(a)
            .await
            .map_err(|e| ServerError::Listen {
                addr: a.to_string(),
                source: e,
            })?;
        client_listeners.push((l, if *https { client_tls.clone() } else { None }));
    }
    let mut peer_listeners = Vec::new();
    for (a, https) in &peer_addrs {
        let l = tokio::net::TcpListener::bind(a)
            .await
            .map_err(|e| ServerError::Listen {
                addr: a.to_string(),
                source: e,
            })?;
        peer_listeners.push((l, if *https { peer_tls.clone() } else { None }));
    }

    let db_path = data_dir.join("db");
    // A member that has an identity has a log: without it the member would restart empty
    // under its old ID and vote as if it had never promised anything. Refuse.
    if data_dir.join(IDENTITY_FILE).exists() && !db_path.join("conf").exists() {
        return Err(ServerError::DataDir {
            path: db_path.clone(),
            reason: "this member's database is missing (the data dir has a member identity): \
                     restore the data dir, or remove the member and add it back with \
                     --initial-cluster-state existing"
                .into(),
        });
    }
    let db =
        crate::backend::SledDb::open(&db_path, 256 << 20).map_err(|e| ServerError::DataDir {
            path: db_path.clone(),
            reason: format!(
                "cannot open the database (corrupt, or in use by another process): {e}"
            ),
        })?;
    let identity = read_identity(&data_dir)?;
    let peers = Peers::new(peer_files.client_config()?)
        .with_answer_gap(Duration::from_millis(config.election_timeout.max(1)));
    let (identity, bootstrap) = match identity {
        Some(id) => (id, None),
        None if config.initial_cluster_state == "existing" => (
            discover_existing(&config, &my_peer_urls, &peers).await?,
            None,
        ),
        None => {
            let cluster = parse_initial_cluster(&config.initial_cluster)?;
            let Some(mine) = cluster.get(&config.name) else {
                return Err(ServerError::Config(format!(
                    "--initial-cluster has no entry for --name {:?}",
                    config.name
                )));
            };
            if *mine != my_peer_urls {
                return Err(ServerError::Config(format!(
                    "--initial-cluster has {mine:?} for {:?} but --initial-advertise-peer-urls is {my_peer_urls:?}",
                    config.name
                )));
            }
            let members: BTreeMap<NodeId, Member> = cluster
                .iter()
                .map(|(name, urls)| {
                    (
                        member_id(urls, &config.initial_cluster_token),
                        Member {
                            name: name.clone(),
                            peer_urls: urls.clone(),
                        },
                    )
                })
                .collect();
            let ids: Vec<u8> = members.keys().flat_map(|id| id.to_be_bytes()).collect();
            let cluster_id = fnv64(&[&ids, config.initial_cluster_token.as_bytes()]);
            let id = Identity {
                member_id: member_id(&my_peer_urls, &config.initial_cluster_token),
                cluster_id,
                name: config.name.clone(),
            };
            (id, Some(members))
        }
    };
    let id = identity.member_id;

    let metrics = Metrics::new();
    let fsync = metrics.wal_fsync.clone();
    let log =
        LogStore::open(&db, Some(Arc::new(move |secs| fsync.observe(secs)))).map_err(|e| {
            ServerError::DataDir {
                path: db_path.clone(),
                reason: e.to_string(),
            }
        })?;
    let backend = SledBackend::open(&db, "mvcc").map_err(|e| ServerError::DataDir {
        path: db_path.clone(),
        reason: e.to_string(),
    })?;
    let snap_path = data_dir.join("snap");
    let snapshots = SnapshotDir::open(&snap_path).map_err(|e| ServerError::DataDir {
        path: snap_path.clone(),
        reason: e.to_string(),
    })?;
    // Snapshots were kept in the database before they were files.
    let legacy = db
        .db()
        .open_tree("snapshot")
        .map_err(|e| ServerError::DataDir {
            path: db_path.clone(),
            reason: e.to_string(),
        })?;
    migrate_legacy(&legacy, &snapshots).map_err(|e| ServerError::DataDir {
        path: snap_path.clone(),
        reason: e.to_string(),
    })?;
    let min_ttl = ((3 * config.election_timeout) as f64 / 2.0 / 1000.0).ceil() as i64;
    let shared = Shared::open(Arc::new(backend), snapshots, min_ttl.max(1)).map_err(|e| {
        ServerError::DataDir {
            path: db_path.clone(),
            reason: format!("cannot load state: {e}"),
        }
    })?;
    let mut log = ready_log(&shared, log).map_err(|e| ServerError::DataDir {
        path: match e {
            Unready::Install(_) => snap_path.clone(),
            Unready::Purge(_) => db_path.clone(),
        },
        reason: e.to_string(),
    })?;

    let raft_config = openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        // openraft's own heartbeats are off: the node sends them every --heartbeat-interval,
        // and openraft's interval is only the RPCs' deadline.
        heartbeat_interval: rpc_deadline(config.heartbeat_interval, config.election_timeout),
        enable_heartbeat: false,
        election_timeout_min: config.election_timeout,
        election_timeout_max: config.election_timeout * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count.max(1)),
        max_in_snapshot_log_to_keep: 5000.min(config.snapshot_count),
        max_payload_entries: 64,
        snapshot_max_chunk_size: 1 << 20,
        install_snapshot_timeout: 5000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ServerError::Config(e.to_string()))?;
    let restored = restored_leader(id, &mut log)
        .await
        .map_err(|e| ServerError::DataDir {
            path: db_path.clone(),
            reason: e.to_string(),
        })?;
    let raft = Raft::new(
        id,
        Arc::new(raft_config),
        Network::new(peers.clone()),
        log,
        StateMachine::new(shared.clone()),
    )
    .await
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    if let Some(members) = bootstrap {
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        if !initialized {
            // Every member of a new cluster initializes with the same membership; openraft
            // treats the identical initial entry as one.
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "cluster already initialized");
            }
        }
    }
    write_identity(&data_dir, &identity)?;
    tracing::info!(member = format!("{id:x}"), cluster = format!("{:x}", identity.cluster_id), name = %config.name, "store member started");

    let node = Node::new(
        id,
        identity.cluster_id,
        raft.clone(),
        shared,
        peers,
        metrics,
        restored,
    );
    node.send_heartbeats(
        Duration::from_millis(config.heartbeat_interval.max(1)),
        shutdown.clone(),
    );
    node.set_strict_reconfig(config.strict_reconfig_check);
    {
        let mvcc = node.shared().mvcc.read();
        mvcc.tokens()
            .set_ttl(Duration::from_secs(config.auth_token_ttl));
        if let Some(provider) = jwt {
            mvcc.tokens().set_jwt(provider);
        }
    }
    let lessor = Lessor::new(id);
    let quota = Quota::new(config.quota_backend_bytes);
    tokio::spawn(lessor.clone().run(node.clone(), shutdown.clone()));
    tokio::spawn(publish_attributes(
        node.clone(),
        config.name.clone(),
        client_urls,
        shutdown.clone(),
    ));
    tokio::spawn(watch_metrics(node.clone(), shutdown.clone()));
    tokio::spawn(node.clone().monitor_leader(shutdown.clone()));
    tokio::spawn(node.clone().probe_peers(shutdown.clone()));
    if let Some(r) = retention {
        tokio::spawn(auto_compact(node.clone(), r, shutdown.clone()));
    }

    // etcd's gRPC limit: `--max-request-bytes` and 512 KiB of overhead. Watch responses are
    // fragmented at the same size, as etcd's.
    let max_msg = config.max_request_bytes + 512 * 1024;
    let kv = KvService::new(node.clone(), quota, config.max_request_bytes);
    let leases = LeaseService::new(node.clone(), lessor.clone());
    let concurrency = ConcurrencyService::new(node.clone(), kv.clone(), leases.clone());
    let routes = tonic::service::Routes::new(KvServer::new(kv).max_decoding_message_size(max_msg))
        .add_service(
            WatchServer::new(WatchService::new(
                node.clone(),
                // etcd applies only an interval above zero.
                if config.watch_progress_notify_interval.is_zero() {
                    Duration::from_secs(600)
                } else {
                    config.watch_progress_notify_interval
                },
                max_msg,
            ))
            .max_decoding_message_size(max_msg),
        )
        .add_service(LeaseServer::new(leases))
        .add_service(LockServer::new(concurrency.clone()))
        .add_service(ElectionServer::new(concurrency))
        .add_service(AuthServer::new(AuthService::new(node.clone(), bcrypt_cost)))
        .add_service(ClusterServer::new(ClusterService::new(node.clone())))
        .add_service(MaintenanceServer::new(MaintenanceService::new(
            node.clone(),
            quota,
        )));
    let grpc = routes
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            crate::etcd::require_leader::check,
        ));
    let client_router = http::routes(grpc, node.clone());
    let peer_router = tonic::service::Routes::new(
        RaftPeerServer::new(PeerService::new(node.clone(), lessor))
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE),
    )
    .into_axum_router();

    let mut tasks = tokio::task::JoinSet::new();
    for (l, tls) in client_listeners {
        serve_on(
            &mut tasks,
            l,
            tls,
            client_router.clone(),
            true,
            shutdown.clone(),
        )?;
    }
    for (l, tls) in peer_listeners {
        serve_on(
            &mut tasks,
            l,
            tls,
            peer_router.clone(),
            false,
            shutdown.clone(),
        )?;
    }
    shutdown.cancelled().await;
    // Streams (watch, keep-alive) never end on their own: give servers a moment, then go.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let _ = raft.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || db.sync()).await;
    Ok(())
}

/// Serves `router` on `l`, over TLS when `tls` is set, until `shutdown`; with `clients`,
/// connections get [`authority::FixAuthority`] (etcdctl's per-endpoint commands need it).
fn serve_on(
    tasks: &mut tokio::task::JoinSet<std::io::Result<()>>,
    l: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    clients: bool,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    use authority::FixAuthorityListener;
    // Small request/response exchanges must not wait for delayed ACKs: no Nagle.
    use axum::serve::ListenerExt;
    let stop = shutdown.cancelled_owned();
    match tls {
        Some(cfg) => {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let l = tls::TlsListener::new(l, cfg)
                .map_err(|source| ServerError::Listen { addr, source })?;
            if clients {
                spawn_serve(tasks, FixAuthorityListener(l), router, stop);
            } else {
                spawn_serve(tasks, l, router, stop);
            }
        }
        None => {
            let l = l.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if clients {
                spawn_serve(tasks, FixAuthorityListener(l), router, stop);
            } else {
                spawn_serve(tasks, l, router, stop);
            }
        }
    }
    Ok(())
}

/// Serves `router` on `l` in a task of `tasks` until `stop`.
fn spawn_serve<L>(
    tasks: &mut tokio::task::JoinSet<std::io::Result<()>>,
    l: L,
    router: axum::Router,
    stop: tokio_util::sync::WaitForCancellationFutureOwned,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tasks.spawn(async move { axum::serve(l, router).with_graceful_shutdown(stop).await });
}

async fn publish_attributes(
    node: Node,
    name: String,
    client_urls: Vec<String>,
    shutdown: CancellationToken,
) {
    let attrs = MemberAttributes {
        id: node.id(),
        name,
        client_urls,
    };
    loop {
        if node.shared().mvcc.read().members().get(&node.id()) == Some(&attrs) {
            return;
        }
        let req = InternalRequest {
            request: Some(internal_request::Request::Publish(attrs.clone())),
            ..Default::default()
        };
        match node.propose(req).await {
            Ok(_) => {
                tracing::info!("published member attributes");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Keeps the leader gauges current: at once on a leader, vote or membership change
/// (openraft's server metrics, which change only then). The store's own gauges are read when
/// `/metrics` is scraped ([`refresh_store_metrics`]).
async fn watch_metrics(node: Node, shutdown: CancellationToken) {
    let mut rx = node.raft().server_metrics();
    let mut last_leader = None;
    loop {
        let leader = rx.borrow_and_update().current_leader;
        let m = node.metrics();
        m.has_leader.set(i64::from(leader.is_some()));
        m.is_leader.set(i64::from(leader == Some(node.id())));
        if leader.is_some() && leader != last_leader {
            m.leader_changes.inc();
            tracing::info!(leader = leader.map(|l| format!("{l:x}")), "leader changed");
            last_leader = leader;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// Sets the size, revision and snapshot metrics from the store as it is now.
pub(crate) fn refresh_store_metrics(node: &Node) {
    let m = node.metrics();
    let mvcc = node.shared().mvcc.read();
    m.db_size.set(mvcc.backend().size_bytes() as i64);
    m.db_size_in_use.set(mvcc.backend().size_in_use() as i64);
    m.current_revision.set(mvcc.current_revision());
    m.compact_revision.set(mvcc.compact_revision());
    drop(mvcc);
    // Concurrent scrapes count each install once.
    let installs = node.shared().installs();
    let counted = m
        .installs_counted
        .fetch_max(installs, std::sync::atomic::Ordering::Relaxed);
    m.snapshot_receives.inc_by(installs.saturating_sub(counted));
}

/// Checks the heartbeat and election timeout as etcd does: a leader that a majority has not
/// answered for an election timeout steps down, so the timeout must span several heartbeats.
fn raft_timing(config: &Config) -> Result<(), ServerError> {
    let (tick, election) = (config.heartbeat_interval, config.election_timeout);
    if tick == 0 {
        return Err(ServerError::Config(
            "--heartbeat-interval must be at least 1 ms".into(),
        ));
    }
    if 5 * tick > election {
        return Err(ServerError::Config(format!(
            "--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{tick}ms]"
        )));
    }
    if election > 50_000 {
        return Err(ServerError::Config(format!(
            "--election-timeout[{election}ms] is too long, and should be set less than 50000ms"
        )));
    }
    Ok(())
}

/// The auth flags checked: the JWT provider if `--auth-token` asks for one, and the bcrypt
/// cost to use.
fn auth_options(config: &Config) -> Result<(Option<JwtTokens>, u32), ServerError> {
    let (kind, options) = config
        .auth_token
        .split_once(',')
        .unwrap_or((&config.auth_token, ""));
    let jwt = match kind {
        "simple" => {
            // Options are checked as etcd's, and then unused.
            if config.auth_token.contains(',') {
                crate::auth::jwt::split_options(options)
                    .map_err(|e| ServerError::Config(format!("--auth-token: {e}")))?;
            }
            None
        }
        "jwt" => Some(
            JwtTokens::from_options(options)
                .map_err(|e| ServerError::Config(format!("--auth-token: {e}")))?,
        ),
        other => {
            return Err(ServerError::Config(format!(
                "--auth-token: auth: invalid auth options (unknown token type: {other})"
            )));
        }
    };
    if config.auth_token_ttl == 0 {
        return Err(ServerError::Config(
            "--auth-token-ttl must be at least 1 second".into(),
        ));
    }
    if !(4..=31).contains(&config.bcrypt_cost) {
        tracing::warn!(
            given = config.bcrypt_cost,
            default = 10,
            "use default bcrypt cost instead of the invalid given cost"
        );
        return Ok((jwt, 10));
    }
    Ok((jwt, config.bcrypt_cost))
}

#[derive(Debug, Clone, Copy)]
enum Retention {
    Periodic(Duration),
    Revisions(i64),
}

fn auto_compaction(config: &Config) -> Result<Option<Retention>, ServerError> {
    let r = config.auto_compaction_retention.trim();
    if r == "0" || r.is_empty() {
        return Ok(None);
    }
    match config.auto_compaction_mode.as_str() {
        "revision" => r
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| Some(Retention::Revisions(n)))
            .ok_or_else(|| {
                ServerError::Config(format!(
                    "--auto-compaction-retention {r:?} is not a revision count"
                ))
            }),
        _ => {
            // A bare integer counts hours, as etcd's; anything else needs a unit.
            let d = match r.parse::<u64>() {
                Ok(hours) => parse_go_duration(&format!("{hours}h")),
                Err(_) => parse_go_duration(r),
            }
            .map_err(|e| ServerError::Config(format!("--auto-compaction-retention: {e}")))?;
            // Zero in any unit turns compaction off, as etcd's.
            Ok((!d.is_zero()).then_some(Retention::Periodic(d)))
        }
    }
}

/// Leader-driven compaction, as etcd's compactors: `periodic` keeps at least `retention`
/// worth of history (sampling the revision every tenth of it, or every 6 minutes past an hour
/// of retention, at most every 100 ms, and compacting at most once per retention or hour),
/// `revision` keeps the last N revisions (checked every 5 minutes, as etcd does).
async fn auto_compact(node: Node, retention: Retention, shutdown: CancellationToken) {
    let mut compactor = Compactor::new(retention);
    let mut tick = tokio::time::interval(compactor.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (current, compacted) = {
            let m = node.shared().mvcc.read();
            (m.current_revision(), m.compact_revision())
        };
        let Some(target) = compactor.target(Instant::now(), current, compacted, node.is_leader())
        else {
            continue;
        };
        let req = InternalRequest {
            request: Some(internal_request::Request::Compaction(CompactionRequest {
                revision: target,
                physical: false,
            })),
            ..Default::default()
        };
        match node.propose(req).await {
            Ok(_) => {
                tracing::info!(revision = target, "auto-compacted");
                compactor.compacted(Instant::now());
            }
            Err(e) => tracing::warn!(revision = target, error = %e, "auto-compaction failed"),
        }
    }
}

/// What the auto-compactor decides, apart from its timer and its proposals.
struct Compactor {
    retention: Retention,
    /// Periodic mode: the revisions sampled at each look, oldest first.
    samples: std::collections::VecDeque<(Instant, i64)>,
    last_compaction: Option<Instant>,
}

impl Compactor {
    fn new(retention: Retention) -> Compactor {
        Compactor {
            retention,
            samples: Default::default(),
            last_compaction: None,
        }
    }

    /// How often it looks.
    fn interval(&self) -> Duration {
        match self.retention {
            Retention::Periodic(d) => (d.min(HOUR) / 10).max(Duration::from_millis(100)),
            Retention::Revisions(_) => Duration::from_secs(300),
        }
    }

    /// The revision to compact to, looking at `now` with the `current` and `compacted`
    /// revisions; only a `leader` compacts, but every member samples.
    fn target(&mut self, now: Instant, current: i64, compacted: i64, leader: bool) -> Option<i64> {
        let (target, every) = match self.retention {
            Retention::Periodic(d) => {
                self.samples.push_back((now, current));
                // The newest revision sampled at least `d` ago (stamped, so late looks do not
                // shorten the history kept).
                while self.samples.len() > 1 && now.duration_since(self.samples[1].0) >= d {
                    self.samples.pop_front();
                }
                match self.samples.front() {
                    Some((at, rev)) if now.duration_since(*at) >= d => (*rev, d.min(HOUR)),
                    _ => return None,
                }
            }
            Retention::Revisions(n) => (current - n, Duration::ZERO),
        };
        if !leader || target <= compacted || target <= 0 {
            return None;
        }
        if self
            .last_compaction
            .is_some_and(|t| now.duration_since(t) < every)
        {
            return None;
        }
        Some(target)
    }

    /// A compaction it asked for was applied at `now`.
    fn compacted(&mut self, now: Instant) {
        self.last_compaction = Some(now);
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod compactor_tests {
    use super::{Compactor, Retention};
    use std::time::{Duration, Instant};

    #[test]
    fn revision_mode_keeps_the_last_n_revisions_checked_every_five_minutes() {
        let mut c = Compactor::new(Retention::Revisions(100));
        assert_eq!(c.interval(), Duration::from_secs(300));
        let t = Instant::now();
        // Not before there are more than N revisions, and only on the leader.
        assert_eq!(c.target(t, 100, 0, true), None);
        assert_eq!(c.target(t, 1000, 0, false), None);
        assert_eq!(c.target(t, 1000, 0, true), Some(900));
        c.compacted(t);
        // Not again while the head is within N of the last compaction.
        assert_eq!(c.target(t, 950, 900, true), None);
        assert_eq!(
            c.target(t + Duration::from_secs(300), 1200, 900, true),
            Some(1100)
        );
    }

    #[test]
    fn periodic_mode_keeps_the_retention_of_history_and_compacts_once_per_period() {
        let minute = Duration::from_secs(60);
        let mut c = Compactor::new(Retention::Periodic(10 * minute));
        assert_eq!(c.interval(), minute);
        let t = Instant::now();
        // Revision 10 + k at minute k.
        let mut at = |k: u32, leader: bool, compacted: i64| {
            c.target(t + k * minute, 10 + i64::from(k), compacted, leader)
        };
        for k in 0..10 {
            assert_eq!(
                at(k, true, 0),
                None,
                "minute {k}: less than 10 minutes sampled"
            );
        }
        // At minute 10: what was current 10 minutes ago.
        assert_eq!(at(10, true, 0), Some(10));
        c.compacted(t + 10 * minute);
        // Once per period: nothing before minute 20, then minute 10's revision.
        for k in 11..20 {
            assert_eq!(c.target(t + k * minute, 10 + i64::from(k), 10, true), None);
        }
        assert_eq!(c.target(t + 20 * minute, 30, 10, true), Some(20));
        // A follower samples but does not compact.
        let mut f = Compactor::new(Retention::Periodic(10 * minute));
        for k in 0..=10 {
            assert_eq!(f.target(t + k * minute, 10 + i64::from(k), 0, false), None);
        }
        // Past an hour of retention: a look every 6 minutes, a compaction at most hourly.
        let long = Compactor::new(Retention::Periodic(5 * 60 * minute));
        assert_eq!(long.interval(), 6 * minute);
    }
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn go_durations_parse_and_bad_ones_are_refused() {
        for (text, want) in [
            ("90s", Duration::from_secs(90)),
            ("1h30m", Duration::from_secs(5400)),
            ("5m0s", Duration::from_secs(300)),
            ("250ms", Duration::from_millis(250)),
            ("1.5h", Duration::from_secs(5400)),
            ("10us", Duration::from_micros(10)),
            ("300", Duration::from_secs(300)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "abc",
            "5x",
            "1h30",
            "m",
            "1e400s",
            "99999999999999999999999h",
            "2562048h",
            "-1s",
            // Bare seconds are held to Go's range too.
            "99999999999999999999999",
            "-1",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
