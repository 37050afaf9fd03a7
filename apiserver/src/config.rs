//! Flags of `keelson apiserver`, named as kube-apiserver's.

use std::net::IpAddr;
use std::path::PathBuf;

/// The Kubernetes minor version whose API this server serves (the k8s-openapi feature it is
/// built with, `v1_33`). kubectl dispatchers pick their client from it.
pub const KUBE_MINOR: u32 = 33;

/// The version string reported by `/version` (`gitVersion`).
pub fn git_version() -> String {
    format!("v1.{KUBE_MINOR}.0")
}

/// `keelson apiserver` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// The port on which to serve HTTPS.
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,
    /// The IP address on which to listen for the --secure-port port.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// File containing the default x509 certificate for HTTPS (CA cert, if any, concatenated after
    /// server cert). If unset, a self-signed certificate is generated in --cert-dir.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// File containing the default x509 private key matching --tls-cert-file.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// The directory where the generated self-signed certificate is written.
    #[arg(long, default_value = "/var/run/kubernetes")]
    pub cert_dir: PathBuf,
    /// If set, any request presenting a client certificate signed by one of the authorities in
    /// this file is authenticated with an identity of the certificate's CommonName (user) and
    /// Organizations (groups).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Enables anonymous requests to the secure port (user system:anonymous, group
    /// system:unauthenticated).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub anonymous_auth: bool,
    /// Ordered list of plug-ins to do authorization on secure port: AlwaysAllow, AlwaysDeny,
    /// Node, RBAC, Webhook.
    #[arg(long, default_value = "AlwaysAllow")]
    pub authorization_mode: String,
    /// Identifier of the service account token issuer (the `iss` of the tokens it issues);
    /// repeat to also accept tokens of earlier issuers (the first one issues).
    #[arg(long)]
    pub service_account_issuer: Vec<String>,
    /// File containing PEM public (or private) keys that verify service account tokens; repeat
    /// for several files. Defaults to --service-account-signing-key-file.
    #[arg(long)]
    pub service_account_key_file: Vec<PathBuf>,
    /// File containing the PEM private key that signs service account tokens (RSA or P-256).
    #[arg(long)]
    pub service_account_signing_key_file: Option<PathBuf>,
    /// Identifiers of the API: tokens must be for one of these audiences (default: the
    /// issuers).
    #[arg(long, value_delimiter = ',')]
    pub api_audiences: Vec<String>,
    /// The longest validity of a token the TokenRequest API issues (Go duration; 0 = no limit).
    #[arg(long, default_value = "0s", value_parser = parse_go_duration)]
    pub service_account_max_token_expiration: std::time::Duration,
    /// Whether service account tokens are checked against the store: the account, and the pod
    /// or secret a token is bound to, must still exist.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub service_account_lookup: bool,
    /// Admission plugins to enable besides the default ones (NamespaceLifecycle, Priority,
    /// DefaultTolerationSeconds, ServiceAccount): NodeRestriction.
    #[arg(long, value_delimiter = ',')]
    pub enable_admission_plugins: Vec<String>,
    /// Admission plugins to disable.
    #[arg(long, value_delimiter = ',')]
    pub disable_admission_plugins: Vec<String>,
    /// File with admission control configuration (an AdmissionConfiguration; EventRateLimit
    /// reads its limits from it).
    #[arg(long)]
    pub admission_control_config_file: Option<PathBuf>,
    /// Path to the file that defines the audit policy (audit.k8s.io/v1 Policy).
    #[arg(long)]
    pub audit_policy_file: Option<PathBuf>,
    /// If set, all requests coming to the apiserver are logged to this file ('-' means
    /// standard out), as the audit policy says.
    #[arg(long)]
    pub audit_log_path: Option<String>,
    /// The maximum number of days to retain old audit log files (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxage: u64,
    /// The maximum number of old audit log files to retain (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxbackup: usize,
    /// The maximum size in megabytes of the audit log file before it gets rotated (0 = never).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxsize: u64,
    /// Path to a kubeconfig formatted file that defines the audit webhook configuration.
    #[arg(long)]
    pub audit_webhook_config_file: Option<PathBuf>,
    /// Strategy for sending audit events: batch (buffer and send asynchronously), blocking
    /// (each event sent while the request waits) or blocking-strict (as blocking, and a failure
    /// at the RequestReceived stage fails the request).
    #[arg(long, default_value = "batch")]
    pub audit_webhook_mode: String,
    /// The size of the buffer to store events before batching and writing.
    #[arg(long, default_value_t = 10000)]
    pub audit_webhook_batch_buffer_size: usize,
    /// The maximum size of a batch.
    #[arg(long, default_value_t = 400)]
    pub audit_webhook_batch_max_size: usize,
    /// The amount of time to wait before force writing the batch that hadn't reached the max
    /// size.
    #[arg(long, default_value = "30s", value_parser = parse_go_duration)]
    pub audit_webhook_batch_max_wait: std::time::Duration,
    /// Whether batching throttling is enabled.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub audit_webhook_batch_throttle_enable: bool,
    /// Maximum average number of batches per second.
    #[arg(long, default_value_t = 10.0)]
    pub audit_webhook_batch_throttle_qps: f64,
    /// Maximum number of requests sent at the same moment if ThrottleQPS was not utilized
    /// before.
    #[arg(long, default_value_t = 15)]
    pub audit_webhook_batch_throttle_burst: usize,
    /// The amount of time to wait before retrying the first failed request.
    #[arg(long, default_value = "10s", value_parser = parse_go_duration)]
    pub audit_webhook_initial_backoff: std::time::Duration,
    /// API group and version used for serializing audit events written to webhook.
    #[arg(long, default_value = "audit.k8s.io/v1")]
    pub audit_webhook_version: String,
    /// A CSV file of static bearer tokens (`token,user,uid,"group1,group2"`), for tests.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// Enable to allow secrets of type 'bootstrap.kubernetes.io/token' in the 'kube-system'
    /// namespace to be used for TLS bootstrapping authentication.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_bootstrap_token_auth: bool,
    /// File with webhook configuration for token authentication in kubeconfig format. The API
    /// server will query the remote service to determine authentication for bearer tokens.
    #[arg(long)]
    pub authentication_token_webhook_config_file: Option<PathBuf>,
    /// The duration to cache responses from the webhook token authenticator.
    #[arg(long, default_value = "2m0s", value_parser = parse_go_duration)]
    pub authentication_token_webhook_cache_ttl: std::time::Duration,
    /// The API version of the authentication.k8s.io TokenReview to send to and expect from the
    /// webhook (v1 or v1beta1).
    #[arg(long, default_value = "v1")]
    pub authentication_token_webhook_version: String,
    /// Root certificate bundle to use to verify client certificates on incoming requests before
    /// trusting usernames in headers specified by --requestheader-username-headers.
    #[arg(long)]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// List of client certificate common names to allow to provide usernames in headers
    /// specified by --requestheader-username-headers. If empty, any client certificate
    /// validated by the authorities in --requestheader-client-ca-file is allowed.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,
    /// List of request headers to inspect for usernames. X-Remote-User is common.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_username_headers: Vec<String>,
    /// List of request headers to inspect for UIDs. X-Remote-Uid is suggested.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_uid_headers: Vec<String>,
    /// List of request headers to inspect for groups. X-Remote-Group is suggested.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_group_headers: Vec<String>,
    /// List of request header prefixes to inspect. X-Remote-Extra- is suggested.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// File with webhook configuration in kubeconfig format, used with
    /// --authorization-mode=Webhook. The API server will query the remote service to determine
    /// access on the API server's secure port.
    #[arg(long)]
    pub authorization_webhook_config_file: Option<PathBuf>,
    /// The API version of the authorization.k8s.io SubjectAccessReview to send to and expect
    /// from the webhook (v1 or v1beta1).
    #[arg(long, default_value = "v1")]
    pub authorization_webhook_version: String,
    /// The duration to cache 'authorized' responses from the webhook authorizer.
    #[arg(long, default_value = "5m0s", value_parser = parse_go_duration)]
    pub authorization_webhook_cache_authorized_ttl: std::time::Duration,
    /// The duration to cache 'unauthorized' responses from the webhook authorizer.
    #[arg(long, default_value = "30s", value_parser = parse_go_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: std::time::Duration,
    /// List of etcd servers to connect with (scheme://ip:port), comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd_servers: Vec<String>,
    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    /// SSL certification file used to secure etcd communication.
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    /// SSL key file used to secure etcd communication.
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    /// The prefix to prepend to all resource paths in etcd.
    #[arg(long, default_value = "/registry")]
    pub etcd_prefix: String,
    /// The interval of compaction requests. If 0, the compaction request from apiserver is
    /// disabled.
    #[arg(long, default_value = "5m0s", value_parser = parse_go_duration)]
    pub etcd_compaction_interval: std::time::Duration,
    /// Amount of time to retain events: each expires this long after its last write (through
    /// a store lease). 0 keeps them until deleted.
    #[arg(long, default_value = "1h0m0s", value_parser = parse_go_duration)]
    pub event_ttl: std::time::Duration,
    /// A CIDR notation IP range from which to assign service cluster IPs.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: String,
    /// A port range to reserve for services with NodePort visibility.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// API Priority and Fairness: requests are classified by FlowSchemas into priority levels
    /// that share `--max-requests-inflight` + `--max-mutating-requests-inflight` seats
    /// (instead of the two separate in-flight limits).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_priority_and_fairness: bool,
    /// The maximum number of non-mutating requests in flight at a given time (0 = no limit).
    #[arg(long, default_value_t = 400)]
    pub max_requests_inflight: usize,
    /// The maximum number of mutating requests in flight at a given time (0 = no limit).
    #[arg(long, default_value_t = 200)]
    pub max_mutating_requests_inflight: usize,
    /// An optional field indicating the duration a handler must keep a request open before timing
    /// it out (Go duration, e.g. 60s or 1m0s).
    #[arg(long, default_value = "1m0s", value_parser = parse_go_duration)]
    pub request_timeout: std::time::Duration,
    /// The minimum number of seconds a handler must keep a watch open; the actual timeout is
    /// random between this and twice this.
    #[arg(long, default_value_t = 1800)]
    pub min_request_timeout: u64,
    /// Most events kept per resource in the watch cache for watches that resume from a
    /// resourceVersion (beyond 100, only those of the last 75 s: kube-apiserver sizes its
    /// cache around the same 75 s); 0 disables the cache (lists and watches go to the store).
    #[arg(long, default_value_t = 16384)]
    pub default_watch_cache_size: usize,
    /// Watch cache settings for some resources, comma separated, each `resource[.group]#size`
    /// (resource plural and lowercase, group left out for the core API). As upstream's, the
    /// only meaningful size is 0, which turns the resource's cache off (its lists and watches
    /// go to the store); any other size turns it on (with --default-watch-cache-size 0 too).
    /// Events of both APIs are off unless named here, as kube-apiserver's defaults have them.
    /// The caches the apiserver reads itself (RBAC, webhook and flow-control configurations,
    /// quotas, limit ranges) stay on.
    #[arg(long, value_delimiter = ',')]
    pub watch_cache_sizes: Vec<String>,
    /// Client certificate for talking to kubelets (pods/log).
    #[arg(long)]
    pub kubelet_client_certificate: Option<PathBuf>,
    /// Key of --kubelet-client-certificate.
    #[arg(long)]
    pub kubelet_client_key: Option<PathBuf>,
    /// CA that signs kubelets' serving certificates; without it they are not verified.
    #[arg(long)]
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// The address advertised in discovery (`serverAddressByClientCIDRs`).
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// The file containing the EncryptionConfiguration (apiserver.config.k8s.io/v1) that says how
    /// resources are encrypted before they are stored.
    #[arg(long)]
    pub encryption_provider_config: Option<PathBuf>,
    /// Reload --encryption-provider-config when it changes. The file is checked every 5 seconds;
    /// a file that does not load keeps the configuration in use and fails the health check
    /// `encryption-provider-config-automatic-reload` until fixed.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub encryption_provider_config_automatic_reload: bool,
}

pub use keelson_duration::parse_go_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1m0s").unwrap().as_secs(), 60);
        assert_eq!(parse_go_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_go_duration("250ms").unwrap().as_millis(), 250);
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("3x").is_err());
    }
}

/// The resources whose watch cache is turned on or off by name, `(group, resource)` to on:
/// upstream's defaults (Events, of both APIs, off) with `--watch-cache-sizes` applied. The
/// others follow `--default-watch-cache-size`.
pub fn watch_cache_settings(
    sizes: &[String],
) -> Result<std::collections::BTreeMap<(String, String), bool>, String> {
    let mut set: std::collections::BTreeMap<(String, String), bool> = [
        ((String::new(), "events".to_string()), false),
        (("events.k8s.io".to_string(), "events".to_string()), false),
    ]
    .into();
    for entry in sizes.iter().filter(|e| !e.is_empty()) {
        let bad = || {
            format!(
                "--watch-cache-sizes {entry:?}: expected resource[.group]#size, e.g. pods#0 or deployments.apps#0"
            )
        };
        let (name, size) = entry.split_once('#').ok_or_else(bad)?;
        let size: u64 = size.trim().parse().map_err(|_| bad())?;
        let (resource, group) = name.trim().split_once('.').unwrap_or((name.trim(), ""));
        if resource.is_empty() {
            return Err(bad());
        }
        set.insert((group.to_string(), resource.to_string()), size > 0);
    }
    Ok(set)
}

#[cfg(test)]
mod watch_cache_tests {
    use super::watch_cache_settings;

    fn key(g: &str, r: &str) -> (String, String) {
        (g.to_string(), r.to_string())
    }

    #[test]
    fn events_are_uncached_unless_named_and_zero_sizes_turn_caches_off() {
        let set = watch_cache_settings(&[]).unwrap();
        assert_eq!(set.get(&key("", "events")), Some(&false));
        assert_eq!(set.get(&key("events.k8s.io", "events")), Some(&false));
        assert_eq!(set.get(&key("", "pods")), None);
        let set = watch_cache_settings(&[
            "pods#0".into(),
            "deployments.apps#0".into(),
            "events#100".into(),
        ])
        .unwrap();
        assert_eq!(set.get(&key("", "pods")), Some(&false));
        assert_eq!(set.get(&key("apps", "deployments")), Some(&false));
        assert_eq!(set.get(&key("", "events")), Some(&true));
        assert_eq!(set.get(&key("events.k8s.io", "events")), Some(&false));
        for bad in ["pods", "pods#x", "#0", "pods#-1"] {
            let err = watch_cache_settings(&[bad.into()]).unwrap_err();
            assert!(
                err.contains("expected resource[.group]#size"),
                "{bad}: {err}"
            );
        }
    }
}
