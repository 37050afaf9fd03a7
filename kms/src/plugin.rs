//! `keelson kms-plugin`: a KMS v2 plugin for local clusters.
//!
//! It serves `v2.KeyManagementService` on a unix socket and wraps the apiserver's data-key seeds
//! with AES-256-GCM under the primary key of its key file ([`crate::keys`]). The file is re-read
//! when it changes, so `keelson kms-plugin --keys-file F --rotate` (run beside the serving plugin)
//! makes a new key primary without a restart: Status reports the new key id, the apiserver
//! notices on its next poll and encrypts new writes under it, and old keys keep decrypting.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::keys::{KeyFile, KeyRing};
use crate::pb;
use crate::pb::key_management_service_server::{KeyManagementService, KeyManagementServiceServer};

/// `keelson kms-plugin` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// The endpoint to serve on (unix:///path/to/socket), the `endpoint` of the kms provider in
    /// the apiserver's EncryptionConfiguration.
    #[arg(long, default_value = "unix:///var/run/kmsplugin/socket.sock")]
    pub listen_addr: String,
    /// The JSON file holding the key-encryption keys; created with one new key if absent.
    #[arg(long)]
    pub keys_file: PathBuf,
    /// Add a new key to --keys-file, make it primary, print its id and exit. A running plugin
    /// picks it up without a restart.
    #[arg(long, conflicts_with = "remove_key")]
    pub rotate: bool,
    /// Remove the key with this id from --keys-file and exit (the primary key cannot be removed).
    #[arg(long, value_name = "KEY_ID")]
    pub remove_key: Option<String>,
}

/// What the plugin serves from: the key ring and the key file's stamp when it was read.
struct Keys {
    path: PathBuf,
    ring: KeyRing,
    stamp: Option<(SystemTime, u64)>,
    error: Option<String>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Keys {
    /// Re-reads the key file if it changed. A broken file keeps the keys already loaded and is
    /// reported by Status until it is fixed.
    fn refresh(&mut self) {
        let now = stamp(&self.path);
        if now == self.stamp {
            return;
        }
        self.stamp = now;
        match KeyFile::load(&self.path).and_then(|f| f.ring()) {
            Ok(ring) => {
                if ring.primary() != self.ring.primary() {
                    tracing::info!(key_id = %ring.primary(), "KMS primary key changed");
                }
                self.ring = ring;
                self.error = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the KMS key file; keeping the keys loaded before");
                self.error = Some(e);
            }
        }
    }
}

/// The gRPC service.
pub struct Plugin {
    keys: Mutex<Keys>,
}

impl Plugin {
    /// A plugin serving the keys of `path` (created if absent).
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = KeyFile::load_or_create(path)?;
        Ok(Plugin {
            keys: Mutex::new(Keys {
                path: path.to_path_buf(),
                ring: file.ring()?,
                stamp: stamp(path),
                error: None,
            }),
        })
    }
}

#[tonic::async_trait]
impl KeyManagementService for Plugin {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let mut k = self.keys.lock();
        k.refresh();
        Ok(Response::new(pb::StatusResponse {
            version: "v2".into(),
            healthz: match &k.error {
                None => "ok".into(),
                Some(e) => format!("key file: {e}"),
            },
            key_id: k.ring.primary().to_string(),
        }))
    }

    async fn encrypt(
        &self,
        req: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let req = req.into_inner();
        let mut k = self.keys.lock();
        k.refresh();
        let (ciphertext, key_id) = k.ring.encrypt(&req.plaintext).map_err(Status::internal)?;
        tracing::debug!(uid = %req.uid, key_id = %key_id, "encrypt");
        Ok(Response::new(pb::EncryptResponse {
            ciphertext,
            key_id,
            annotations: Default::default(),
        }))
    }

    async fn decrypt(
        &self,
        req: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let req = req.into_inner();
        let mut k = self.keys.lock();
        k.refresh();
        let plaintext = k
            .ring
            .decrypt(&req.key_id, &req.ciphertext)
            .map_err(Status::invalid_argument)?;
        tracing::debug!(uid = %req.uid, key_id = %req.key_id, "decrypt");
        Ok(Response::new(pb::DecryptResponse { plaintext }))
    }
}

/// Serves `plugin` on the unix socket `path` until `shutdown`; removes a stale socket first and
/// the socket at the end.
pub async fn serve(plugin: Plugin, path: &Path, shutdown: CancellationToken) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let r = tonic::transport::Server::builder()
        .add_service(KeyManagementServiceServer::new(plugin))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(|e| format!("kms plugin server: {e}"));
    let _ = std::fs::remove_file(path);
    r
}

/// `keelson kms-plugin`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), String> {
    if config.rotate {
        let id = KeyFile::update(&config.keys_file, |f| Ok(f.rotate()))?;
        println!("{id}");
        return Ok(());
    }
    if let Some(id) = &config.remove_key {
        KeyFile::update(&config.keys_file, |f| f.remove(id))?;
        println!("removed {id}");
        return Ok(());
    }
    let path =
        crate::socket_path(&config.listen_addr).map_err(|e| format!("--listen-addr: {e}"))?;
    let plugin = Plugin::open(&config.keys_file)?;
    tracing::info!(
        socket = %path.display(),
        key_id = %plugin.keys.lock().ring.primary(),
        "KMS v2 plugin serving"
    );
    serve(plugin, &path, shutdown).await
}
