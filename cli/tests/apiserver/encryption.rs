//! Encryption at rest end to end: apiserver processes with `--encryption-provider-config`, the
//! bundled `keelson kms-plugin`, etcdctl reading what reached the store, kubectl reading it back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::harness::{ApiCluster, Backend, eventually};

const KEY_A: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI="; // 32 bytes
const KEY_B: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY="; // 32 bytes
const KEY_G: &str = "MDEyMzQ1Njc4OWFiY2RlZg=="; // 16 bytes

fn config(providers: &str, sock: &Path) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{}",
        providers
            .replace("$A", KEY_A)
            .replace("$B", KEY_B)
            .replace("$G", KEY_G)
            .replace("$SOCK", &sock.display().to_string())
    )
}

const CBC_A: &str = "  - aescbc: {keys: [{name: a, secret: \"$A\"}]}\n";
const GCM_G: &str = "  - aesgcm: {keys: [{name: g, secret: \"$G\"}]}\n";
const BOX_B: &str = "  - secretbox: {keys: [{name: b, secret: \"$B\"}]}\n";
const KMS: &str =
    "  - kms: {apiVersion: v2, name: local, endpoint: \"unix://$SOCK\", timeout: 2s}\n";
const IDENTITY: &str = "  - identity: {}\n";

/// What etcdctl reads at `key` (raw bytes).
fn stored(c: &ApiCluster, key: &str) -> Vec<u8> {
    let out = crate::cluster::ok(crate::cluster::etcdctl(
        &c.etcd_url,
        &["get", key, "-w", "json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b64 = v["kvs"][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{key} not in the store: {out}"));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn secret(c: &ApiCluster, name: &str, value: &str) {
    c.ok(&[
        "create",
        "secret",
        "generic",
        name,
        &format!("--from-literal=password={value}"),
    ]);
}

fn read_secret(c: &ApiCluster, name: &str) -> String {
    let b64 = c.ok(&["get", "secret", name, "-o", "jsonpath={.data.password}"]);
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap(),
    )
    .unwrap()
}

/// Waits until a new secret is stored with `prefix` (the reloaded configuration is in use).
fn wait_for_prefix(c: &ApiCluster, prefix: &str) {
    let mut n = 0;
    eventually(
        Duration::from_secs(40),
        &format!("writes with {prefix}"),
        || {
            n += 1;
            let name = format!(
                "probe-{}-{n}",
                prefix.replace(':', "-").trim_end_matches('-')
            );
            let out = c.kubectl(&["create", "secret", "generic", &name, "--from-literal=x=y"]);
            if !out.status.success() {
                return false;
            }
            stored(c, &format!("/registry/secrets/default/{name}")).starts_with(prefix.as_bytes())
        },
    );
}

/// The migration users run after a key change: `kubectl get secrets -o json | kubectl replace
/// -f -`.
fn rewrite_secrets(c: &ApiCluster) {
    let json = c.ok(&["get", "secrets", "-o", "json"]);
    let out = c.kubectl_stdin(&["replace", "-f", "-"], &json);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Successful automatic reloads so far (the apiserver's counter).
fn reloads(c: &ApiCluster) -> f64 {
    let text = c.ok(&["get", "--raw", "/metrics"]);
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_encryption_config_controller_automatic_reloads_total")
                && l.contains("status=\"success\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A running `keelson kms-plugin`, killed when dropped (a failing test leaves none behind).
struct PluginProcess(Child);

impl Drop for PluginProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_plugin(dir: &Path) -> PluginProcess {
    let sock = dir.join("kms.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .arg("kms-plugin")
        .arg(format!("--listen-addr=unix://{}", sock.display()))
        .arg(format!(
            "--keys-file={}",
            dir.join("kms-keys.json").display()
        ))
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("kms-plugin.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let plugin = PluginProcess(child);
    eventually(Duration::from_secs(20), "the kms plugin socket", || {
        sock.exists()
    });
    plugin
}

fn kill(plugin: PluginProcess) {
    drop(plugin);
}

fn keys_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("encryption.yaml");
    (d, p)
}

/// Every provider in turn (by reloading the file): each stores its prefix and no plaintext,
/// everything written earlier stays readable after the order changes, and rotating a key
/// (new key first, rewrite everything, drop the old key) keeps every secret readable.
#[test]
fn providers_reload_reorder_and_rotate() {
    let (dir, path) = keys_dir();
    let sock = dir.path().join("kms.sock");
    let plugin = start_plugin(dir.path());
    std::fs::write(&path, config(&format!("{CBC_A}{IDENTITY}"), &sock)).unwrap();
    let cfg = format!("--encryption-provider-config={}", path.display());
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[&cfg, "--encryption-provider-config-automatic-reload"],
    );
    let all = format!("{CBC_A}{GCM_G}{BOX_B}{KMS}{IDENTITY}");
    let orders = [
        ("k8s:enc:aescbc:v1:a:", CBC_A),
        ("k8s:enc:aesgcm:v1:g:", GCM_G),
        ("k8s:enc:secretbox:v1:b:", BOX_B),
        ("k8s:enc:kms:v2:local:", KMS),
    ];
    for (i, (prefix, first)) in orders.iter().enumerate() {
        // `first` first, then every other provider, so everything written so far stays readable.
        let rest = all.replace(first, "");
        std::fs::write(&path, config(&format!("{first}{rest}"), &sock)).unwrap();
        wait_for_prefix(&c, prefix);
        let name = format!("s{i}");
        secret(&c, &name, &format!("hunter{i}-plaintext"));
        let raw = stored(&c, &format!("/registry/secrets/default/{name}"));
        assert!(
            raw.starts_with(prefix.as_bytes()),
            "{name}: {:?}",
            String::from_utf8_lossy(&raw[..40])
        );
        assert!(!contains(&raw, "hunter"), "{name} stored in plaintext");
        assert!(!contains(&raw, "aHVudGVy"), "{name} stored as plain base64");
        for j in 0..=i {
            assert_eq!(
                read_secret(&c, &format!("s{j}")),
                format!("hunter{j}-plaintext"),
                "{}",
                c.logs()
            );
        }
    }
    // Rotation: secretbox `b` first, the rest still listed; rewrite everything; then only `b`.
    let only_new_first = format!("{BOX_B}{}", all.replace(BOX_B, ""));
    std::fs::write(&path, config(&only_new_first, &sock)).unwrap();
    wait_for_prefix(&c, "k8s:enc:secretbox:v1:b:");
    rewrite_secrets(&c);
    for i in 0..orders.len() {
        let raw = stored(&c, &format!("/registry/secrets/default/s{i}"));
        assert!(
            raw.starts_with(b"k8s:enc:secretbox:v1:b:"),
            "s{i} not rewritten"
        );
    }
    let before = reloads(&c);
    std::fs::write(&path, config(BOX_B, &sock)).unwrap();
    eventually(
        Duration::from_secs(30),
        "the reload without the old keys",
        || reloads(&c) > before,
    );
    // With the KMS provider gone, its per-provider check is gone too.
    assert!(
        !c.kubectl(&["get", "--raw", "/healthz/kms-provider-0"])
            .status
            .success()
    );
    for i in 0..orders.len() {
        assert_eq!(
            read_secret(&c, &format!("s{i}")),
            format!("hunter{i}-plaintext")
        );
    }
    // A broken file keeps the configuration in use and is reported, never a crash.
    std::fs::write(&path, "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: [{resources: [secrets], providers: [{aescbc: {keys: [{name: x, secret: AAAA}]}}]}]\n").unwrap();
    eventually(
        Duration::from_secs(30),
        "the failed reload reported",
        || {
            let out = c.kubectl(&[
                "get",
                "--raw",
                "/healthz/encryption-provider-config-automatic-reload",
            ]);
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("keys[0].secret")
        },
    );
    secret(&c, "after-bad-reload", "still-encrypted");
    let raw = stored(&c, "/registry/secrets/default/after-bad-reload");
    assert!(raw.starts_with(b"k8s:enc:secretbox:v1:b:"));
    kill(plugin);
}

/// The plugin killed mid-run: reads and writes go on from the cached seed; an apiserver that
/// starts while the plugin is down cannot encrypt and says so (other resources unaffected);
/// everything recovers by itself when the plugin returns; a rotated plugin key is picked up.
#[test]
fn kms_plugin_killed_and_restarted() {
    let (dir, path) = keys_dir();
    let sock = dir.path().join("kms.sock");
    let plugin = start_plugin(dir.path());
    std::fs::write(&path, config(KMS, &sock)).unwrap();
    let cfg = format!("--encryption-provider-config={}", path.display());
    let mut c = ApiCluster::start_with(Backend::Etcd, 1, &[&cfg]);
    secret(&c, "before", "v1");
    let raw = stored(&c, "/registry/secrets/default/before");
    assert!(raw.starts_with(b"k8s:enc:kms:v2:local:"));
    c.ok(&["get", "--raw", "/healthz/kms-providers"]);
    kill(plugin);
    // Cached seed: reads and writes continue.
    assert_eq!(read_secret(&c, "before"), "v1");
    secret(&c, "while-down", "v2");
    eventually(Duration::from_secs(40), "kms-providers failing", || {
        let out = c.kubectl(&["get", "--raw", "/healthz/kms-providers"]);
        !out.status.success()
    });
    // A fresh apiserver: no seed, no plugin.
    c.kill_apiserver(0);
    c.start_apiserver(0);
    let err = c.fails(&[
        "create",
        "secret",
        "generic",
        "refused",
        "--from-literal=a=b",
    ]);
    assert!(err.contains("kms provider \"local\""), "{err}");
    let err = c.fails(&["get", "secret", "before"]);
    assert!(
        err.contains("unable to transform key") && err.contains("kms provider \"local\""),
        "{err}"
    );
    c.ok(&["create", "configmap", "unaffected", "--from-literal=a=b"]);
    // The plugin returns with a rotated key: the apiserver recovers without a restart.
    let out = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .arg("kms-plugin")
        .arg(format!(
            "--keys-file={}",
            dir.path().join("kms-keys.json").display()
        ))
        .arg("--rotate")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "kek-2");
    let plugin = start_plugin(dir.path());
    let start = Instant::now();
    eventually(
        Duration::from_secs(40),
        "writes after the plugin returned",
        || {
            c.kubectl(&[
                "create",
                "secret",
                "generic",
                "after",
                "--from-literal=password=v3",
            ])
            .status
            .success()
        },
    );
    eprintln!("recovered {:?} after the plugin returned", start.elapsed());
    c.ok(&["get", "--raw", "/healthz/kms-providers"]);
    for (name, v) in [("before", "v1"), ("while-down", "v2"), ("after", "v3")] {
        assert_eq!(read_secret(&c, name), v);
    }
    // New writes are under the new key id; the old ones are stale and a rewrite migrates them.
    let key_id = |name: &str| {
        let raw = stored(&c, &format!("/registry/secrets/default/{name}"));
        if contains(&raw, "kek-2") {
            "kek-2"
        } else if contains(&raw, "kek-1") {
            "kek-1"
        } else {
            "?"
        }
    };
    assert_eq!(key_id("after"), "kek-2");
    assert_eq!(key_id("before"), "kek-1");
    rewrite_secrets(&c);
    assert_eq!(key_id("before"), "kek-2");
    assert_eq!(key_id("while-down"), "kek-2");
    // Nothing needs kek-1 any more: remove it; a fresh apiserver (no cached seeds) reads all.
    let out = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .arg("kms-plugin")
        .arg(format!(
            "--keys-file={}",
            dir.path().join("kms-keys.json").display()
        ))
        .args(["--remove-key", "kek-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.kill_apiserver(0);
    c.start_apiserver(0);
    eventually(
        Duration::from_secs(30),
        "reads after removing kek-1",
        || c.kubectl(&["get", "secret", "before"]).status.success(),
    );
    for (name, v) in [("before", "v1"), ("while-down", "v2"), ("after", "v3")] {
        assert_eq!(read_secret(&c, name), v);
    }
    kill(plugin);
}

/// An invalid file stops the apiserver at start-up with a message naming the field.
#[test]
fn invalid_config_stops_the_apiserver() {
    let (dir, path) = keys_dir();
    std::fs::write(
        &path,
        config(
            "  - aesgcm: {keys: [{name: g, secret: \"not base64!\"}]}\n",
            &dir.path().join("s"),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .arg("apiserver")
        .arg("--etcd-servers=http://127.0.0.1:1")
        .arg(format!("--encryption-provider-config={}", path.display()))
        .arg(format!("--cert-dir={}", dir.path().display()))
        .arg("--secure-port=0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resources[0].providers[0].aesgcm.keys[0].secret: Invalid value: \"REDACTED\": secrets must be base64 encoded"),
        "{err}"
    );
}
