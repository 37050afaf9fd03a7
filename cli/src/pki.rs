//! The local cluster's PKI: a CA, the apiservers' serving certificate and client certificates
//! for the admin (CN `kubernetes-admin`, O `system:masters`) and each control-plane component
//! (CN `system:kube-controller-manager`, `system:kube-scheduler`, as upstream), written once
//! under `<data>/pki` and reused by later runs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// Paths of the PEM files.
pub struct Pki {
    /// CA certificate.
    pub ca: PathBuf,
    /// Apiserver serving certificate.
    pub apiserver_cert: PathBuf,
    /// Its key.
    pub apiserver_key: PathBuf,
    /// Admin client certificate.
    pub admin_cert: PathBuf,
    /// Its key.
    pub admin_key: PathBuf,
    /// The controller-manager's client certificate and key.
    pub controller_manager: (PathBuf, PathBuf),
    /// The scheduler's client certificate and key.
    pub scheduler: (PathBuf, PathBuf),
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

/// The cluster CA's common name.
const CLUSTER_CA: &str = "keelson-ca";
/// The store's own CA (as kubeadm's etcd CA): only certificates it signs reach the store, so a
/// component's cluster certificate gives no direct access to etcd.
pub const ETCD_CA: &str = "keelson-etcd-ca";

/// A CA's parameters (its subject is what issued certificates name as their issuer).
fn ca_params_named(cn: &str) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name.push(DnType::CommonName, cn);
    Ok(p)
}

/// A CA named `cn` under `dir` (`ca.crt`, `ca.key`), made once; a new one removes every
/// certificate the old one signed there. Returns the CA certificate's path.
pub fn ensure_ca(dir: &Path, cn: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.exists() && key.exists() {
        return Ok(crt);
    }
    new_ca(dir, cn)?;
    Ok(crt)
}

/// Makes a new CA named `cn` in `dir`, removing every certificate of the one before; returns it
/// as an issuer.
fn new_ca(dir: &Path, cn: &str) -> anyhow::Result<Issuer<'static, KeyPair>> {
    remove_certificates(dir)?;
    let ca_key = KeyPair::generate()?;
    let params = ca_params_named(cn)?;
    let cert = params.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.crt"), cert.pem())?;
    write_private(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    Ok(Issuer::new(params, ca_key))
}

fn remove_certificates(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "crt" || x == "key") {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// A certificate and key signed by the CA under `dir` (made once, then reused): a client
/// certificate with `cn`/`org`, or a serving one when `names` is not empty.
pub fn issue(
    dir: &Path,
    file: &str,
    cn: &str,
    org: Option<&str>,
    names: &[String],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    issue_by(dir, CLUSTER_CA, file, cn, org, names)
}

/// [`issue`] by the CA named `ca` under `dir` (see [`ensure_ca`]).
pub fn issue_by(
    dir: &Path,
    ca: &str,
    file: &str,
    cn: &str,
    org: Option<&str>,
    names: &[String],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert_path = dir.join(format!("{file}.crt"));
    let key_path = dir.join(format!("{file}.key"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let (cert, key) = sign(dir, ca, cn, org.as_slice(), names)?;
    std::fs::write(&cert_path, cert)?;
    write_private(&key_path, &key)?;
    Ok((cert_path, key_path))
}

/// A new client certificate (CN `cn`, an O per group) signed by the CA named `ca` under `dir`:
/// (certificate PEM, key PEM).
pub fn sign(
    dir: &Path,
    ca: &str,
    cn: &str,
    orgs: &[&str],
    names: &[String],
) -> anyhow::Result<(String, String)> {
    let ca_pem = std::fs::read_to_string(dir.join("ca.key")).context("reading the CA key")?;
    let issuer = Issuer::new(ca_params_named(ca)?, KeyPair::from_pem(&ca_pem)?);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `keelson kubeconfig user`: a kubeconfig (certificates embedded) for a new user of a
/// `keelson up` cluster, as `kubeadm kubeconfig user` makes.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    /// The user name (the certificate's CommonName).
    #[arg(long)]
    pub client_name: String,
    /// A group of the user (the certificate's Organization); repeat for several.
    #[arg(long)]
    pub org: Vec<String>,
    /// The data directory of the cluster (`keelson up --data-dir`).
    #[arg(long, default_value = "keelson-data")]
    pub data_dir: PathBuf,
}

/// Prints the kubeconfig of [`UserArgs`] on stdout.
pub fn user_kubeconfig(args: &UserArgs) -> anyhow::Result<()> {
    use base64::Engine as _;
    if args.client_name.is_empty() {
        anyhow::bail!("--client-name must not be empty");
    }
    let dir = args.data_dir.join("pki");
    let admin =
        std::fs::read_to_string(args.data_dir.join("admin.kubeconfig")).with_context(|| {
            format!(
                "{} has no cluster (no admin.kubeconfig); start one with keelson up",
                args.data_dir.display()
            )
        })?;
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .context("admin.kubeconfig has no server")?
        .trim()
        .to_string();
    let orgs: Vec<&str> = args.org.iter().map(String::as_str).collect();
    let (cert, key) = sign(&dir, CLUSTER_CA, &args.client_name, &orgs, &[])?;
    let ca = std::fs::read(dir.join("ca.crt")).context("reading the cluster CA")?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    print!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keelson\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: {user}@keelson\n  context:\n    cluster: keelson\n    user: {user}\ncurrent-context: {user}@keelson\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(&ca),
        b64(cert.as_bytes()),
        b64(key.as_bytes()),
        user = args.client_name,
    );
    Ok(())
}

/// The service-account token key pair (`sa.key`, PKCS#8 P-256, and `sa.pub`) under `dir`, made
/// once, as kubeadm makes its `sa.key`/`sa.pub`: (private, public).
pub fn service_account_keys(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (private, public) = (dir.join("sa.key"), dir.join("sa.pub"));
    if !(private.exists() && public.exists()) {
        let key = KeyPair::generate()?;
        write_private(&private, &key.serialize_pem())?;
        std::fs::write(&public, key.public_key_pem())
            .with_context(|| format!("writing {}", public.display()))?;
    }
    Ok((private, public))
}

/// Loads the PKI under `dir`, creating whatever is missing. `service_ip` is the `kubernetes`
/// Service address, added to the serving certificate's names.
pub fn ensure(dir: &Path, service_ip: &str) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = Pki {
        ca: dir.join("ca.crt"),
        apiserver_cert: dir.join("apiserver.crt"),
        apiserver_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        controller_manager: (
            dir.join("controller-manager.crt"),
            dir.join("controller-manager.key"),
        ),
        scheduler: (dir.join("scheduler.crt"), dir.join("scheduler.key")),
    };
    let ca_key_path = dir.join("ca.key");
    if [
        &pki.ca,
        &ca_key_path,
        &pki.apiserver_cert,
        &pki.apiserver_key,
        &pki.admin_cert,
        &pki.admin_key,
        &pki.controller_manager.0,
        &pki.controller_manager.1,
        &pki.scheduler.0,
        &pki.scheduler.1,
    ]
    .iter()
    .all(|p| p.exists())
    {
        return Ok(pki);
    }
    // A new CA: every certificate of the old one goes, so `issue` makes them again rather than
    // handing out certificates the new CA does not sign.
    let issuer = new_ca(dir, CLUSTER_CA)?;

    let names: Vec<String> = [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        service_ip,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::write(&pki.apiserver_cert, cert.pem())?;
    write_private(&pki.apiserver_key, &key.serialize_pem())?;

    let client = |(cert_path, key_path): (&PathBuf, &PathBuf), cn: &str, org: Option<&str>| {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = org {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(cert_path, cert.pem())?;
        write_private(key_path, &key.serialize_pem())
    };
    client(
        (&pki.admin_cert, &pki.admin_key),
        "kubernetes-admin",
        Some("system:masters"),
    )?;
    client(
        (&pki.controller_manager.0, &pki.controller_manager.1),
        crate::grants::CONTROLLER_MANAGER,
        None,
    )?;
    client(
        (&pki.scheduler.0, &pki.scheduler.1),
        "system:kube-scheduler",
        None,
    )?;
    Ok(pki)
}

/// A kubeconfig for the admin user against `server`.
pub fn admin_kubeconfig(pki: &Pki, server: &str) -> anyhow::Result<String> {
    kubeconfig(pki, server, "admin", (&pki.admin_cert, &pki.admin_key))
}

/// A kubeconfig for `user` with the given client certificate and key against `server`.
pub fn kubeconfig(
    pki: &Pki,
    server: &str,
    user: &str,
    (cert, key): (&Path, &Path),
) -> anyhow::Result<String> {
    let abs = |p: &Path| -> anyhow::Result<String> {
        Ok(std::fs::canonicalize(p)?.display().to_string())
    };
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keelson\n  cluster:\n    server: {server}\n    certificate-authority: {}\ncontexts:\n- name: keelson\n  context:\n    cluster: keelson\n    user: {user}\n    namespace: default\ncurrent-context: keelson\nusers:\n- name: {user}\n  user:\n    client-certificate: {}\n    client-key: {}\n",
        abs(&pki.ca)?,
        abs(cert)?,
        abs(key)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_ca_reissues_what_the_old_one_signed() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), "10.96.0.1").unwrap();
        let (node, _) = issue(dir.path(), "node-0", "system:node:node-0", None, &[]).unwrap();
        let first = std::fs::read_to_string(&node).unwrap();
        // Reused while the CA stays.
        ensure(dir.path(), "10.96.0.1").unwrap();
        issue(dir.path(), "node-0", "system:node:node-0", None, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&node).unwrap(), first);
        // The CA key lost: a new CA, and the node certificate is made again under it.
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        ensure(dir.path(), "10.96.0.1").unwrap();
        assert!(!node.exists(), "a certificate of the old CA was kept");
        issue(dir.path(), "node-0", "system:node:node-0", None, &[]).unwrap();
        assert_ne!(std::fs::read_to_string(&node).unwrap(), first);
    }
}
