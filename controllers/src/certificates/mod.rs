//! The certificate controllers, as upstream's `pkg/controller/certificates`:
//!
//! - `csrsigning` issues approved CertificateSigningRequests of the four `kubernetes.io`
//!   signers with the cluster signing CA (`--cluster-signing-cert-file` and `-key-file`, or one
//!   CA per signer), after checking what each signer allows; a request a signer refuses gets a
//!   `Failed` condition;
//! - `csrapproving` approves kubelets' client-certificate requests when a SubjectAccessReview
//!   allows the requester `create` on `certificatesigningrequests/selfnodeclient` (a node
//!   renewing its own) or `certificatesigningrequests/nodeclient` (any node's);
//! - `csrcleaner` deletes, every hour, requests that are done with: issued, denied or failed
//!   an hour ago, pending for a day, or whose certificate has expired.

pub mod authority;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_client::informer::Change;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::util::{SyncResult, is_not_found, reconciler};
use authority::{Authority, Request};

/// Client certificates for the apiserver, any subject.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// Kubelets' client certificates for the apiserver.
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Kubelets' serving certificates.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// Whatever was asked before signers existed; no checks.
pub const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// The certificates group's resource the approver's SubjectAccessReviews ask about.
const GROUP: &str = "certificates.k8s.io";

/// `--cluster-signing-*` flags (kube-controller-manager's names).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SigningArgs {
    /// Filename containing a PEM-encoded X509 CA certificate used to issue cluster-scoped
    /// certificates. If specified, no more specific --cluster-signing-* flag may be specified.
    #[arg(long)]
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// Filename containing a PEM-encoded private key used to sign cluster-scoped certificates.
    /// If specified, no more specific --cluster-signing-* flag may be specified.
    #[arg(long)]
    pub cluster_signing_key_file: Option<PathBuf>,
    /// CA certificate for the kubernetes.io/kube-apiserver-client signer.
    #[arg(long)]
    pub cluster_signing_kube_apiserver_client_cert_file: Option<PathBuf>,
    /// Key for the kubernetes.io/kube-apiserver-client signer.
    #[arg(long)]
    pub cluster_signing_kube_apiserver_client_key_file: Option<PathBuf>,
    /// CA certificate for the kubernetes.io/kube-apiserver-client-kubelet signer.
    #[arg(long)]
    pub cluster_signing_kubelet_client_cert_file: Option<PathBuf>,
    /// Key for the kubernetes.io/kube-apiserver-client-kubelet signer.
    #[arg(long)]
    pub cluster_signing_kubelet_client_key_file: Option<PathBuf>,
    /// CA certificate for the kubernetes.io/kubelet-serving signer.
    #[arg(long)]
    pub cluster_signing_kubelet_serving_cert_file: Option<PathBuf>,
    /// Key for the kubernetes.io/kubelet-serving signer.
    #[arg(long)]
    pub cluster_signing_kubelet_serving_key_file: Option<PathBuf>,
    /// CA certificate for the kubernetes.io/legacy-unknown signer.
    #[arg(long)]
    pub cluster_signing_legacy_unknown_cert_file: Option<PathBuf>,
    /// Key for the kubernetes.io/legacy-unknown signer.
    #[arg(long)]
    pub cluster_signing_legacy_unknown_key_file: Option<PathBuf>,
    /// The max length of duration signed certificates will be given. Individual CSRs may
    /// request shorter certs by setting spec.expirationSeconds.
    #[arg(long, default_value = "8760h0m0s", value_parser = keelson_client::duration::parse_go_duration)]
    pub cluster_signing_duration: Duration,
}

impl SigningArgs {
    /// The CA of each signer the flags name (none when no flag is given); bad flags or
    /// unreadable files are an error.
    pub fn authorities(&self) -> Result<BTreeMap<&'static str, Arc<Authority>>, String> {
        let pair = |flag: &str, c: &Option<PathBuf>, k: &Option<PathBuf>| match (c, k) {
            (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
            (None, None) => Ok(None),
            _ => Err(format!(
                "--{flag}-cert-file and --{flag}-key-file must be given together"
            )),
        };
        let global = pair(
            "cluster-signing",
            &self.cluster_signing_cert_file,
            &self.cluster_signing_key_file,
        )?;
        let specific = [
            (
                KUBE_APISERVER_CLIENT,
                pair(
                    "cluster-signing-kube-apiserver-client",
                    &self.cluster_signing_kube_apiserver_client_cert_file,
                    &self.cluster_signing_kube_apiserver_client_key_file,
                )?,
            ),
            (
                KUBELET_CLIENT,
                pair(
                    "cluster-signing-kubelet-client",
                    &self.cluster_signing_kubelet_client_cert_file,
                    &self.cluster_signing_kubelet_client_key_file,
                )?,
            ),
            (
                KUBELET_SERVING,
                pair(
                    "cluster-signing-kubelet-serving",
                    &self.cluster_signing_kubelet_serving_cert_file,
                    &self.cluster_signing_kubelet_serving_key_file,
                )?,
            ),
            (
                LEGACY_UNKNOWN,
                pair(
                    "cluster-signing-legacy-unknown",
                    &self.cluster_signing_legacy_unknown_cert_file,
                    &self.cluster_signing_legacy_unknown_key_file,
                )?,
            ),
        ];
        if self.cluster_signing_duration.is_zero() {
            return Err("--cluster-signing-duration must be positive".into());
        }
        let mut out = BTreeMap::new();
        match global {
            Some((c, k)) => {
                if specific.iter().any(|(_, p)| p.is_some()) {
                    return Err(
                        "cannot specify default and per controller certs at the same time".into(),
                    );
                }
                let ca = Arc::new(Authority::load(&c, &k)?);
                for (signer, _) in specific {
                    out.insert(signer, ca.clone());
                }
            }
            None => {
                for (signer, p) in specific {
                    if let Some((c, k)) = p {
                        out.insert(signer, Arc::new(Authority::load(&c, &k)?));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The request's conditions.
fn conditions(csr: &CertificateSigningRequest) -> &[CertificateSigningRequestCondition] {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

/// The request's condition of this type, if it is True.
fn condition<'a>(
    csr: &'a CertificateSigningRequest,
    type_: &str,
) -> Option<&'a CertificateSigningRequestCondition> {
    conditions(csr)
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

fn issued(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

fn usage_set(usages: &[String]) -> BTreeSet<&str> {
    usages.iter().map(String::as_str).collect()
}

fn nodes_organization(req: &Request) -> Result<(), String> {
    if req.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    Ok(())
}

fn no_emails(req: &Request) -> Result<(), String> {
    if req.emails > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    Ok(())
}

fn no_uris(req: &Request) -> Result<(), String> {
    if req.uris > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    Ok(())
}

fn node_name(req: &Request) -> Result<(), String> {
    if !req.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    Ok(())
}

/// `usages` must be `required` (sorted), with or without key encipherment (not needed by
/// non-RSA keys).
fn exact_usages(usages: &[String], required: [&str; 3]) -> Result<(), String> {
    let got = usage_set(usages);
    let all: BTreeSet<&str> = required.into_iter().collect();
    let mut no_rsa = all.clone();
    no_rsa.remove("key encipherment");
    if got != all && got != no_rsa {
        return Err(format!("usages did not match [{}]", required.join(" ")));
    }
    Ok(())
}

/// A kubelet's client-certificate request, as upstream's `ValidateKubeletClientCSR` (the
/// checks in its order, so the first failure is reported as upstream's).
pub fn kubelet_client(req: &Request, usages: &[String]) -> Result<(), String> {
    nodes_organization(req)?;
    if !req.dns_names.is_empty() {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    no_emails(req)?;
    if req.ip_addresses > 0 {
        return Err("IP subjectAltNames are not allowed".into());
    }
    no_uris(req)?;
    node_name(req)?;
    exact_usages(
        usages,
        ["client auth", "digital signature", "key encipherment"],
    )
}

/// A kubelet's serving-certificate request, as upstream's `ValidateKubeletServingCSR`.
pub fn kubelet_serving(req: &Request, usages: &[String]) -> Result<(), String> {
    nodes_organization(req)?;
    if req.dns_names.is_empty() && req.ip_addresses == 0 {
        return Err("DNS or IP subjectAltName is required".into());
    }
    no_emails(req)?;
    no_uris(req)?;
    exact_usages(
        usages,
        ["digital signature", "key encipherment", "server auth"],
    )?;
    node_name(req)
}

/// What a signer allows of a request it is asked to issue.
pub fn signer_check(signer: &str, req: &Request, usages: &[String]) -> Result<(), String> {
    match signer {
        KUBE_APISERVER_CLIENT => {
            for u in usages {
                if !matches!(
                    u.as_str(),
                    "digital signature" | "key encipherment" | "client auth"
                ) {
                    return Err(format!("invalid usage for client certificate: {u}"));
                }
            }
            if !usages.iter().any(|u| u == "client auth") {
                return Err("missing required usage for client certificate: client auth".into());
            }
            Ok(())
        }
        KUBELET_CLIENT => kubelet_client(req, usages),
        KUBELET_SERVING => kubelet_serving(req, usages),
        _ => Ok(()),
    }
}

/// How long a certificate lives: the signer's duration, or the shorter one the request asks
/// (at least ten minutes).
pub fn lifetime(max: Duration, expiration_seconds: Option<i32>) -> Duration {
    let Some(s) = expiration_seconds else {
        return max;
    };
    let asked = Duration::from_secs(s.max(0) as u64);
    if asked > max {
        max
    } else {
        asked.max(Duration::from_secs(600))
    }
}

fn now_condition(type_: &str, reason: &str, message: String) -> CertificateSigningRequestCondition {
    let now = Time(jiff::Timestamp::now());
    CertificateSigningRequestCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Re-queues every request that is added or changed.
fn watch_requests(informers: &mut Informers, queue: &WorkQueue<String>) {
    let q = queue.clone();
    informers
        .certificate_signing_requests()
        .on_change(move |c| {
            if !matches!(c, Change::Deleted(_)) {
                q.add(c.object().name_any());
            }
        });
}

/// The signing controller.
pub struct CsrSigning {
    client: Client,
    csrs: Store<CertificateSigningRequest>,
    authorities: BTreeMap<&'static str, Arc<Authority>>,
    duration: Duration,
    queue: WorkQueue<String>,
}

impl CsrSigning {
    /// Issues for the signers in `authorities`, certificates at most `duration` long.
    pub fn new(
        informers: &mut Informers,
        authorities: BTreeMap<&'static str, Arc<Authority>>,
        duration: Duration,
    ) -> Arc<Self> {
        let queue = WorkQueue::new();
        watch_requests(informers, &queue);
        Arc::new(Self {
            client: informers.client(),
            csrs: informers.certificate_signing_requests().store(),
            authorities,
            duration,
            queue,
        })
    }

    async fn sync(self: Arc<Self>, name: String) -> SyncResult {
        let Some(csr) = self.csrs.get(&ObjectRef::new(&name)) else {
            return Ok(None);
        };
        if issued(&csr)
            || condition(&csr, "Approved").is_none()
            || condition(&csr, "Failed").is_some()
        {
            return Ok(None);
        }
        let Some(ca) = self.authorities.get(csr.spec.signer_name.as_str()) else {
            return Ok(None);
        };
        let usages = csr.spec.usages.clone().unwrap_or_default();
        // A request that does not parse or whose signature does not verify can never be
        // issued: it fails, rather than staying approved without a certificate.
        let checked = Request::parse(&csr.spec.request.0)
            .map_err(|e| format!("cannot use the request: {e}"))
            .and_then(|req| signer_check(&csr.spec.signer_name, &req, &usages).map(|()| req));
        let mut updated = (*csr).clone();
        let status = updated.status.get_or_insert_with(Default::default);
        match checked {
            Err(message) => {
                tracing::info!(csr = %name, %message, "the signer refuses the request");
                status
                    .conditions
                    .get_or_insert_with(Vec::new)
                    .push(now_condition("Failed", "SignerValidationFailure", message));
            }
            Ok(req) => {
                let ttl = lifetime(self.duration, csr.spec.expiration_seconds);
                match ca.sign(&req, &usages, ttl, jiff::Timestamp::now()) {
                    Ok(pem) => {
                        status.certificate = Some(k8s_openapi::ByteString(pem.into_bytes()));
                    }
                    Err(e) => {
                        tracing::error!(csr = %name, error = %e, "cannot sign; trying again in a minute");
                        return Ok(Some(Duration::from_secs(60)));
                    }
                }
            }
        }
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        match api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {
                if issued(&updated) {
                    tracing::info!(csr = %name, signer = %csr.spec.signer_name, "issued a certificate");
                }
                Ok(None)
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

reconciler!(CsrSigning, "csrsigning");

/// The approving controller.
pub struct CsrApproving {
    client: Client,
    csrs: Store<CertificateSigningRequest>,
    queue: WorkQueue<String>,
    /// How often each recognised request has been asked about without being approved.
    refused: parking_lot::Mutex<std::collections::HashMap<String, u32>>,
}

/// How long a recognised request its requester may not have approved waits before it is
/// asked about again (permissions may change): 200 ms doubling up to 1000 s, as upstream's
/// certificate controllers' queue.
fn unauthorized_retry(attempt: u32) -> Duration {
    Duration::from_millis(200)
        .saturating_mul(1u32 << attempt.min(20))
        .min(Duration::from_secs(1000))
}

impl CsrApproving {
    /// Watches every request.
    pub fn new(informers: &mut Informers) -> Arc<Self> {
        let queue = WorkQueue::new();
        watch_requests(informers, &queue);
        Arc::new(Self {
            client: informers.client(),
            csrs: informers.certificate_signing_requests().store(),
            queue,
            refused: Default::default(),
        })
    }

    /// Whether the requester may `create` the subresource of certificatesigningrequests.
    async fn allowed(
        &self,
        csr: &CertificateSigningRequest,
        subresource: &str,
    ) -> Result<bool, kube::Error> {
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: csr.spec.username.clone(),
                uid: csr.spec.uid.clone(),
                groups: csr.spec.groups.clone(),
                extra: csr.spec.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some("certificatesigningrequests".into()),
                    subresource: Some(subresource.into()),
                    verb: Some("create".into()),
                    version: Some("*".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &sar).await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    async fn sync(self: Arc<Self>, name: String) -> SyncResult {
        let retry = self.decide(&name).await?;
        if retry.is_none() {
            self.refused.lock().remove(&name);
        }
        Ok(retry)
    }

    async fn decide(&self, name: &str) -> SyncResult {
        let Some(csr) = self.csrs.get(&ObjectRef::new(name)) else {
            return Ok(None);
        };
        if issued(&csr)
            || condition(&csr, "Approved").is_some()
            || condition(&csr, "Denied").is_some()
            || csr.spec.signer_name != KUBELET_CLIENT
        {
            return Ok(None);
        }
        let Ok(req) = Request::parse(&csr.spec.request.0) else {
            return Ok(None);
        };
        let usages = csr.spec.usages.clone().unwrap_or_default();
        if kubelet_client(&req, &usages).is_err() {
            return Ok(None);
        }
        let own = csr.spec.username.as_deref() == Some(req.common_name.as_str());
        let recognizers = [
            (
                own,
                "selfnodeclient",
                "Auto approving self kubelet client certificate after SubjectAccessReview.",
            ),
            (
                true,
                "nodeclient",
                "Auto approving kubelet client certificate after SubjectAccessReview.",
            ),
        ];
        for (applies, subresource, message) in recognizers {
            if !applies || !self.allowed(&csr, subresource).await? {
                continue;
            }
            let mut updated = (*csr).clone();
            updated
                .status
                .get_or_insert_with(Default::default)
                .conditions
                .get_or_insert_with(Vec::new)
                .push(now_condition("Approved", "AutoApproved", message.into()));
            let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
            return match api
                .replace_subresource("approval", name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {
                    tracing::info!(csr = %name, %subresource, "approved a kubelet client certificate request");
                    Ok(None)
                }
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            };
        }
        tracing::debug!(csr = %name, "recognised as a kubelet client request, but its requester may not have it approved");
        let mut refused = self.refused.lock();
        let attempt = refused.entry(name.to_string()).or_default();
        *attempt += 1;
        Ok(Some(unauthorized_retry(*attempt - 1)))
    }
}

reconciler!(CsrApproving, "csrapproving");

/// How often the cleaner looks.
const CLEANER_PERIOD: Duration = Duration::from_secs(3600);
/// How long an issued, denied or failed request is kept.
const DONE_KEPT: Duration = Duration::from_secs(3600);
/// How long a pending request is kept.
const PENDING_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Why the cleaner deletes `csr` at `now`, if it does (upstream's deadlines).
pub fn stale(csr: &CertificateSigningRequest, now: jiff::Timestamp) -> Option<&'static str> {
    let older = |t: Option<&Time>, d: Duration| {
        t.is_some_and(|t| now.duration_since(t.0).as_secs() > d.as_secs() as i64)
    };
    // Conditions by type, whatever their status, as upstream's cleaner looks at them.
    let older_of = |t: &str| {
        conditions(csr)
            .iter()
            .any(|c| c.type_ == t && older(c.last_update_time.as_ref(), DONE_KEPT))
    };
    if issued(csr) {
        if older_of("Approved") {
            return Some("issued more than an hour ago");
        }
        if conditions(csr).iter().any(|c| c.type_ == "Approved") && certificate_expired(csr, now) {
            return Some("its certificate has expired");
        }
    }
    if older_of("Denied") {
        return Some("denied more than an hour ago");
    }
    if older_of("Failed") {
        return Some("failed more than an hour ago");
    }
    // Pending: no conditions at all.
    if conditions(csr).is_empty() && older(csr.metadata.creation_timestamp.as_ref(), PENDING_KEPT) {
        return Some("pending for more than a day");
    }
    None
}

fn certificate_expired(csr: &CertificateSigningRequest, now: jiff::Timestamp) -> bool {
    let Some(pem) = csr.status.as_ref().and_then(|s| s.certificate.as_ref()) else {
        return false;
    };
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(&pem.0) else {
        return false;
    };
    x509_parser::parse_x509_certificate(&block.contents)
        .is_ok_and(|(_, c)| c.validity().not_after.timestamp() < now.as_second())
}

/// The cleaning controller.
pub struct CsrCleaner {
    client: Client,
    csrs: Store<CertificateSigningRequest>,
}

impl CsrCleaner {
    /// Uses the shared request cache.
    pub fn new(informers: &mut Informers) -> Arc<Self> {
        Arc::new(Self {
            client: informers.client(),
            csrs: informers.certificate_signing_requests().store(),
        })
    }

    /// Runs a pass at once and then every hour until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        loop {
            self.pass().await;
            tokio::select! {
                _ = tokio::time::sleep(CLEANER_PERIOD) => {}
                _ = token.cancelled() => return,
            }
        }
    }

    async fn pass(&self) {
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let now = jiff::Timestamp::now();
        for csr in self.csrs.state() {
            let Some(why) = stale(&csr, now) else {
                continue;
            };
            let name = csr.name_any();
            let dp = DeleteParams {
                preconditions: csr.uid().map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(csr = %name, reason = why, "deleted a stale certificate signing request")
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    tracing::warn!(csr = %name, error = %e, "cannot delete a stale certificate signing request")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
