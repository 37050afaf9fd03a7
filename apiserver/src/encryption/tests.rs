//! Transformer tests: known answers from independent implementations
//! (`testdata/gen_vectors.py`), round trips, staleness, tampering, and the KMS v2 provider
//! against the bundled plugin.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Encryption;
use super::metrics::EncryptionMetrics;

fn b64(v: &Value, k: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v[k].as_str().unwrap())
        .unwrap()
}

fn vectors() -> Value {
    serde_json::from_str(include_str!("../../testdata/encryption_vectors.json")).unwrap()
}

fn metrics() -> Arc<EncryptionMetrics> {
    let mut r = prometheus_client::registry::Registry::default();
    Arc::new(EncryptionMetrics::new(&mut r, "test"))
}

/// Starts the bundled plugin on `dir/kms.sock` with `kek` (base64) as key `kek-1`, or a fresh key.
fn start_plugin(dir: &Path, kek: Option<&str>) -> CancellationToken {
    let keys = dir.join("keys.json");
    if let Some(kek) = kek {
        std::fs::write(
            &keys,
            format!(r#"{{"primary":"kek-1","keys":[{{"id":"kek-1","secret":"{kek}"}}]}}"#),
        )
        .unwrap();
    }
    let plugin = keelson_kms::plugin::Plugin::open(&keys).unwrap();
    let stop = CancellationToken::new();
    let sock = dir.join("kms.sock");
    let s = stop.clone();
    tokio::spawn(async move { keelson_kms::plugin::serve(plugin, &sock, s).await });
    stop
}

async fn wait_for_socket(dir: &Path) {
    for _ in 0..100 {
        if dir.join("kms.sock").exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("plugin socket did not appear");
}

async fn load(dir: &Path, providers: &str) -> Arc<Encryption> {
    let v = vectors();
    let doc = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{}",
        providers
            .replace("$KEY16", v["key16"].as_str().unwrap())
            .replace("$KEY32", v["key32"].as_str().unwrap())
            .replace("$SOCK", &dir.join("kms.sock").display().to_string())
    );
    let path = dir.join("enc.yaml");
    std::fs::write(&path, doc).unwrap();
    Encryption::load(
        &path,
        "/registry",
        false,
        metrics(),
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

const ALL: &str = "  - kms: {apiVersion: v2, name: local, endpoint: \"unix://$SOCK\"}\n  - aesgcm: {keys: [{name: g1, secret: \"$KEY16\"}]}\n  - aescbc: {keys: [{name: c1, secret: \"$KEY32\"}]}\n  - secretbox: {keys: [{name: s1, secret: \"$KEY32\"}]}\n  - identity: {}\n";

#[tokio::test]
async fn reads_what_independent_implementations_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let v = vectors();
    let stop = start_plugin(dir.path(), v["kek"].as_str());
    wait_for_socket(dir.path()).await;
    let enc = load(dir.path(), ALL).await;
    let ad = v["ad"].as_str().unwrap().as_bytes();
    let plain = v["plain"].as_str().unwrap().as_bytes();
    for (name, stale) in [
        ("kms", false),
        ("aesgcm", true),
        ("aescbc", true),
        ("secretbox", true),
    ] {
        let (got, was_stale) = enc.from_storage(ad, b64(&v, name)).await.unwrap();
        assert_eq!(got, plain, "{name}");
        assert_eq!(was_stale, stale, "{name}");
    }
    // Plaintext is read through identity (last), and is stale.
    let (got, stale) = enc.from_storage(ad, plain.to_vec()).await.unwrap();
    assert_eq!((got.as_slice(), stale), (plain, true));
    // The associated data binds the value to its key: AES-GCM and KMS refuse it elsewhere.
    for name in ["kms", "aesgcm"] {
        let err = enc
            .from_storage(b"/registry/secrets/default/other", b64(&v, name))
            .await
            .unwrap_err();
        assert!(err.contains("authentication failed"), "{name}: {err}");
    }
    stop.cancel();
}

#[tokio::test]
async fn every_provider_round_trips_and_names_itself_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let stop = start_plugin(dir.path(), None);
    wait_for_socket(dir.path()).await;
    let ad = b"/registry/secrets/ns/s";
    let plain = br#"{"kind":"Secret"}"#.to_vec();
    let cases = [
        (
            "  - aesgcm: {keys: [{name: g1, secret: \"$KEY16\"}]}\n",
            "k8s:enc:aesgcm:v1:g1:",
            "aesgcm key \"g1\"",
        ),
        (
            "  - aescbc: {keys: [{name: c1, secret: \"$KEY32\"}]}\n",
            "k8s:enc:aescbc:v1:c1:",
            "aescbc key \"c1\"",
        ),
        (
            "  - secretbox: {keys: [{name: s1, secret: \"$KEY32\"}]}\n",
            "k8s:enc:secretbox:v1:s1:",
            "secretbox key \"s1\"",
        ),
        (
            "  - kms: {apiVersion: v2, name: local, endpoint: \"unix://$SOCK\"}\n",
            "k8s:enc:kms:v2:local:",
            "kms provider \"local\"",
        ),
    ];
    for (provider, prefix, label) in cases {
        let enc = load(dir.path(), provider).await;
        let stored = enc.to_storage(ad, plain.clone()).await.unwrap();
        assert!(stored.starts_with(prefix.as_bytes()), "{prefix}");
        assert!(
            !stored.windows(8).any(|w| w == b"\"Secret\""),
            "{prefix}: plaintext leaked"
        );
        let (back, stale) = enc.from_storage(ad, stored.clone()).await.unwrap();
        assert_eq!((back, stale), (plain.clone(), false), "{prefix}");
        // Tampered: the last byte flipped.
        let mut bad = stored.clone();
        *bad.last_mut().unwrap() ^= 1;
        let err = enc.from_storage(ad, bad).await.unwrap_err();
        assert!(err.starts_with(label), "{prefix}: {err}");
        // Truncated to the prefix and a few bytes.
        let err = enc
            .from_storage(ad, stored[..prefix.len() + 3].to_vec())
            .await
            .unwrap_err();
        assert!(err.starts_with(label), "{prefix}: {err}");
        // Plaintext without identity in the list is refused, not passed through.
        let err = enc.from_storage(ad, plain.clone()).await.unwrap_err();
        assert!(err.contains("no matching prefix found"), "{err}");
        // An unknown prefix names itself.
        let err = enc
            .from_storage(ad, b"k8s:enc:aescbc:v1:nope:xxxxxxxxxxxxxxxxxxxx".to_vec())
            .await
            .unwrap_err();
        assert!(err.contains("k8s:enc:aescbc:v1:nope:"), "{err}");
        // Resources without a rule stay plaintext, and encrypted data is never passed off as
        // plaintext for them.
        let cm = b"/registry/configmaps/ns/c";
        assert_eq!(
            enc.to_storage(cm, plain.clone()).await.unwrap(),
            plain.clone()
        );
        assert!(enc.from_storage(cm, stored).await.is_err());
    }
    stop.cancel();
}

#[tokio::test]
async fn key_order_decides_writes_and_staleness() {
    let dir = tempfile::tempdir().unwrap();
    let ad = b"/registry/secrets/ns/s";
    let old = load(
        dir.path(),
        "  - aescbc: {keys: [{name: k1, secret: \"$KEY32\"}]}\n",
    )
    .await;
    let stored = old.to_storage(ad, b"v".to_vec()).await.unwrap();
    // A new key first: the old value still reads, marked stale; new writes use the new key.
    let new = load(
        dir.path(),
        "  - aescbc: {keys: [{name: k2, secret: \"$KEY16\"}, {name: k1, secret: \"$KEY32\"}]}\n",
    )
    .await;
    assert_eq!(
        new.from_storage(ad, stored.clone()).await.unwrap(),
        (b"v".to_vec(), true)
    );
    let rewritten = new.to_storage(ad, b"v".to_vec()).await.unwrap();
    assert!(rewritten.starts_with(b"k8s:enc:aescbc:v1:k2:"));
    assert_eq!(
        new.from_storage(ad, rewritten).await.unwrap(),
        (b"v".to_vec(), false)
    );
    // A key of the same name with other bytes never gives the value back. CBC carries no
    // integrity check (as upstream's aescbc): most wrong keys fail the padding check, but about
    // one in 256 decrypts to garbage with valid padding.
    let wrong = load(
        dir.path(),
        "  - aescbc: {keys: [{name: k1, secret: \"$KEY16\"}]}\n",
    )
    .await;
    if let Ok((value, _)) = wrong.from_storage(ad, stored).await {
        assert_ne!(value, b"v".to_vec());
    }
}

#[tokio::test]
async fn kms_reads_cached_seeds_while_the_plugin_is_down_and_follows_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let stop = start_plugin(dir.path(), None);
    wait_for_socket(dir.path()).await;
    let enc = load(
        dir.path(),
        "  - kms: {apiVersion: v2, name: local, endpoint: \"unix://$SOCK\", timeout: 1s}\n",
    )
    .await;
    let ad = b"/registry/secrets/ns/s";
    let a = enc.to_storage(ad, b"a".to_vec()).await.unwrap();
    stop.cancel();
    while dir.path().join("kms.sock").exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Down: the seed is cached, so reads and (within the seed's life) writes go on.
    assert_eq!(enc.from_storage(ad, a.clone()).await.unwrap().0, b"a");
    let b = enc.to_storage(ad, b"b".to_vec()).await.unwrap();
    // The health check reuses a success for 20 s; the probe under it sees the plugin gone.
    let kms = enc.current.read().kms[0].clone();
    let err = kms.probe_now().await.unwrap_err();
    assert!(err.contains("failed to perform status section"), "{err}");
    // Another apiserver without the seed cannot read, and says why.
    let cold = load(
        dir.path(),
        "  - kms: {apiVersion: v2, name: local, endpoint: \"unix://$SOCK\", timeout: 1s}\n",
    )
    .await;
    let err = cold.from_storage(ad, a.clone()).await.unwrap_err();
    assert!(err.contains("failed to decrypt DEK"), "{err}");
    let err = cold.to_storage(ad, b"c".to_vec()).await.unwrap_err();
    assert!(err.contains("no data encryption key"), "{err}");
    // Rotate and restart: the old values read (stale after the next probe), new writes use
    // kek-2.
    let mut file = keelson_kms::keys::KeyFile::load(&dir.path().join("keys.json")).unwrap();
    assert_eq!(file.rotate(), "kek-2");
    file.save(&dir.path().join("keys.json")).unwrap();
    let stop = start_plugin(dir.path(), None);
    wait_for_socket(dir.path()).await;
    let mut healthy = false;
    for _ in 0..50 {
        if kms.probe_now().await.is_ok() {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(healthy, "the provider recovers by itself");
    assert_eq!(kms.current_key_id().as_deref(), Some("kek-2"));
    for v in [&a, &b] {
        let (_, stale) = enc.from_storage(ad, v.clone()).await.unwrap();
        assert!(stale, "written under kek-1");
    }
    let c = enc.to_storage(ad, b"c".to_vec()).await.unwrap();
    assert_eq!(
        enc.from_storage(ad, c.clone()).await.unwrap(),
        (b"c".to_vec(), false)
    );
    assert_eq!(cold.from_storage(ad, c).await.unwrap().0, b"c");
    stop.cancel();
}

#[tokio::test]
async fn every_resource_is_covered_by_a_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.yaml");
    std::fs::write(
        &path,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [\"*.*\"]\n  providers:\n  - secretbox: {keys: [{name: s, secret: \"MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=\"}]}\n",
    )
    .unwrap();
    let enc = Encryption::load(
        &path,
        "/registry",
        false,
        metrics(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    for r in crate::resources::all() {
        let key = crate::object::key("/registry", r, "ns", "name");
        let stored = enc.to_storage(&key, b"{}".to_vec()).await.unwrap();
        assert!(
            stored.starts_with(b"k8s:enc:secretbox:v1:s:"),
            "{} ({}) would be stored in plaintext",
            r.resource,
            String::from_utf8_lossy(&key)
        );
    }
}
