//! `--use-service-account-credentials`, as kube-controller-manager's: each controller acts as
//! its own ServiceAccount in `kube-system` (`deployment-controller`, `node-controller`, ...),
//! which the bootstrap RBAC policy binds to its `system:controller:*` role; the
//! controller-manager's own identity only lists and watches (the shared informers), elects the
//! leader, and makes those accounts and their tokens.
//!
//! Tokens come from the TokenRequest API, valid for an hour, and are written to files only this
//! process reads; each is requested again when four fifths of its life has passed, and the
//! clients read the file again as it changes.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use keelson_client::connect::ClientArgs;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

use crate::util::is_conflict;

/// The namespace of the controllers' accounts.
pub const NAMESPACE: &str = "kube-system";
/// How long a token is asked for.
const TOKEN_SECONDS: i64 = 3600;

/// The ServiceAccount a controller acts as, by upstream's names.
pub fn account_of(controller: &str) -> Option<&'static str> {
    Some(match controller {
        "clusterrole-aggregation" => "clusterrole-aggregation-controller",
        "cronjob" => "cronjob-controller",
        "csrapproving" | "csrcleaner" | "csrsigning" => "certificate-controller",
        "daemonset" => "daemon-set-controller",
        "deployment" => "deployment-controller",
        "endpoint" => "endpoint-controller",
        "endpointslice" => "endpointslice-controller",
        "garbagecollector" => "generic-garbage-collector",
        "job" => "job-controller",
        "namespace" => "namespace-controller",
        "nodeipam" | "nodelifecycle" => "node-controller",
        "podgc" => "pod-garbage-collector",
        "pv-protection" => "pv-protection-controller",
        "pvc-protection" => "pvc-protection-controller",
        "replicaset" => "replicaset-controller",
        "replicationcontroller" => "replication-controller",
        "resourcequota" => "resourcequota-controller",
        "root-ca-cert-publisher" => "root-ca-cert-publisher",
        "serviceaccount" => "service-account-controller",
        "statefulset" => "statefulset-controller",
        "ttl-after-finished" => "ttl-after-finished-controller",
        _ => return None,
    })
}

/// Makes per-controller clients: one per account (controllers sharing an account share it).
pub struct Credentials {
    root: Client,
    args: ClientArgs,
    dir: PathBuf,
    token: CancellationToken,
    made: tokio::sync::Mutex<std::collections::HashMap<String, Client>>,
}

impl Credentials {
    /// Credentials made with `root` (the controller-manager's own client, from `args`), kept in
    /// a new private directory until `token` is cancelled.
    pub fn new(root: Client, args: ClientArgs, token: CancellationToken) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = std::env::temp_dir().join(format!(
            "keelson-controller-manager-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let cleanup = dir.clone();
        let t = token.clone();
        tokio::spawn(async move {
            t.cancelled().await;
            let _ = std::fs::remove_dir_all(cleanup);
        });
        Ok(Credentials {
            root,
            args,
            dir,
            token,
            made: Default::default(),
        })
    }

    /// A client acting as `account`: the account is made if missing, its token written and
    /// kept fresh.
    pub async fn client_for(&self, account: &str) -> Result<Client, String> {
        let mut made = self.made.lock().await;
        if let Some(c) = made.get(account) {
            return Ok(c.clone());
        }
        let accounts: Api<ServiceAccount> = Api::namespaced(self.root.clone(), NAMESPACE);
        if accounts
            .get_opt(account)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(account.to_string()),
                    namespace: Some(NAMESPACE.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match accounts.create(&PostParams::default(), &sa).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(format!("creating serviceaccount {account}: {e}")),
            }
        }
        let file = self.dir.join(format!("{account}.token"));
        let lifetime = write_token(&accounts, account, &file).await?;
        let client = keelson_client::connect::connect_with_token_file(&self.args, &file)
            .await
            .map_err(|e| e.to_string())?;
        // One refresher per account, started once its client exists.
        let (name, path, stop) = (account.to_string(), file.clone(), self.token.clone());
        tokio::spawn(async move {
            let mut wait = lifetime.mul_f64(0.8);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
                wait = match write_token(&accounts, &name, &path).await {
                    Ok(l) => l.mul_f64(0.8),
                    Err(e) => {
                        tracing::warn!(account = %name, error = %e, "refreshing a controller's token failed");
                        Duration::from_secs(10)
                    }
                };
            }
        });
        made.insert(account.to_string(), client.clone());
        Ok(client)
    }
}

/// Requests a token for `account` and writes it to `file` (replacing it whole); returns how
/// long it is valid.
async fn write_token(
    accounts: &Api<ServiceAccount>,
    account: &str,
    file: &std::path::Path,
) -> Result<Duration, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = accounts
        .create_token_request(account, &PostParams::default(), &tr)
        .await
        .map_err(|e| format!("requesting a token for {account}: {e}"))?;
    let status = answer
        .status
        .ok_or_else(|| format!("the token request for {account} has no status"))?;
    // A name of its own per write, renamed over the file whole.
    let tmp = file.with_extension(format!("new-{}", rand::random::<u64>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(status.token.as_bytes())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("{}: {e}", file.display()))?;
    let left = status
        .expiration_timestamp
        .0
        .duration_since(jiff::Timestamp::now());
    Ok(Duration::try_from(left)
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_controller_has_its_upstream_account() {
        for c in crate::KNOWN_CONTROLLERS {
            assert!(account_of(c).is_some(), "{c}");
        }
        assert_eq!(account_of("nodelifecycle"), Some("node-controller"));
        assert_eq!(
            account_of("garbagecollector"),
            Some("generic-garbage-collector")
        );
    }
}
