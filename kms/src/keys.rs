//! The plugin's key-encryption keys, kept in one JSON file:
//!
//! ```json
//! {"primary": "kek-2",
//!  "keys": [{"id": "kek-1", "secret": "<base64 of 32 bytes>", "created": "2026-12-02T10:00:00Z"},
//!           {"id": "kek-2", "secret": "...", "created": "..."}]}
//! ```
//!
//! The primary key encrypts; every key in the file decrypts what it encrypted. Rotation adds a
//! key and makes it primary; an old key is removed once nothing needs it. The file is written
//! atomically (temporary file + rename) with mode 0600.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

const NONCE: usize = 12;

/// One key-encryption key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// The key id reported to the apiserver.
    pub id: String,
    /// Base64 of the 32-byte AES-256 key.
    pub secret: String,
    /// When the key was made (RFC 3339).
    #[serde(default)]
    pub created: String,
}

/// The key file's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Id of the key that encrypts.
    pub primary: String,
    /// Every key that may decrypt.
    pub keys: Vec<StoredKey>,
}

/// Keys ready for use.
pub struct KeyRing {
    primary: String,
    keys: Vec<(String, Aes256Gcm)>,
}

fn new_key(id: String) -> StoredKey {
    let secret: [u8; 32] = rand::random();
    StoredKey {
        id,
        secret: base64::engine::general_purpose::STANDARD.encode(secret),
        created: jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    }
}

impl KeyFile {
    /// A file with one fresh key, `kek-1`, as primary.
    pub fn generate() -> Self {
        KeyFile {
            primary: "kek-1".into(),
            keys: vec![new_key("kek-1".into())],
        }
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: KeyFile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: invalid key file: {e}", path.display()))?;
        f.ring().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(f)
    }

    /// Reads `path`, creating it with one fresh key when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        if path.exists() {
            return Self::load(path);
        }
        let f = Self::generate();
        f.save(path)?;
        tracing::warn!(
            path = %path.display(),
            key_id = %f.primary,
            "created a new KMS key file: data encrypted under keys of an earlier file cannot be decrypted with it"
        );
        Ok(f)
    }

    /// Runs `change` on the file at `path` under an exclusive lock (`<path>.lock`), so that two
    /// rotations at once cannot both mint the same key id, and saves the result.
    pub fn update<T>(
        path: &Path,
        change: impl FnOnce(&mut KeyFile) -> Result<T, String>,
    ) -> Result<T, String> {
        let lock_path = path.with_extension("lock");
        if let Some(d) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        lock.lock()
            .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
        let mut file = Self::load_or_create(path)?;
        let out = change(&mut file)?;
        file.save(path)?;
        Ok(out)
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(d) = dir {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        // A fresh file, so the 0600 mode applies (a leftover one could be wider).
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", tmp.display())),
        }
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Adds a new key and makes it primary; returns its id.
    pub fn rotate(&mut self) -> String {
        let next = self
            .keys
            .iter()
            .filter_map(|k| k.id.strip_prefix("kek-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let id = format!("kek-{next}");
        self.keys.push(new_key(id.clone()));
        self.primary = id.clone();
        id
    }

    /// Removes a key that is not primary.
    pub fn remove(&mut self, id: &str) -> Result<(), String> {
        if id == self.primary {
            return Err(format!(
                "key {id:?} is the primary key; rotate to a new key before removing it"
            ));
        }
        let before = self.keys.len();
        self.keys.retain(|k| k.id != id);
        if self.keys.len() == before {
            return Err(format!("no key {id:?} in the key file"));
        }
        Ok(())
    }

    /// The keys as ciphers, checking ids, lengths and the primary.
    pub fn ring(&self) -> Result<KeyRing, String> {
        let mut keys = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            if k.id.is_empty() || k.id.len() > 1024 {
                return Err(format!("keys[{i}].id: must be 1 to 1024 characters"));
            }
            if keys.iter().any(|(id, _)| *id == k.id) {
                return Err(format!("keys[{i}].id: duplicate key id {:?}", k.id));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(k.secret.trim())
                .map_err(|e| format!("keys[{i}].secret: invalid base64: {e}"))?;
            let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| {
                format!(
                    "keys[{i}].secret: must be 32 bytes (AES-256), got {}",
                    raw.len()
                )
            })?;
            keys.push((k.id.clone(), cipher));
        }
        if !keys.iter().any(|(id, _)| *id == self.primary) {
            return Err(format!("primary: no key with id {:?}", self.primary));
        }
        Ok(KeyRing {
            primary: self.primary.clone(),
            keys,
        })
    }
}

impl KeyRing {
    /// The id of the key that encrypts.
    pub fn primary(&self) -> &str {
        &self.primary
    }

    fn cipher(&self, id: &str) -> Option<&Aes256Gcm> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, c)| c)
    }

    /// Encrypts with the primary key: nonce (12 bytes) then AES-256-GCM ciphertext, the key id
    /// bound as associated data. Returns the ciphertext and the key id.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<(Vec<u8>, String), String> {
        let cipher = self.cipher(&self.primary).ok_or("no primary key")?;
        let nonce: [u8; NONCE] = rand::random();
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: self.primary.as_bytes(),
                },
            )
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok((out, self.primary.clone()))
    }

    /// Decrypts what [`KeyRing::encrypt`] returned under `key_id`.
    pub fn decrypt(&self, key_id: &str, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
        let cipher = self
            .cipher(key_id)
            .ok_or_else(|| format!("unknown key id {key_id:?}"))?;
        if ciphertext.len() < NONCE + 16 {
            return Err("ciphertext too short".into());
        }
        let (nonce, sealed) = ciphertext.split_at(NONCE);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| {
                format!("decryption with key {key_id:?} failed: wrong key or tampered data")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_keeps_old_keys_decrypting() {
        let mut f = KeyFile::generate();
        let (ct, id) = f.ring().unwrap().encrypt(b"seed").unwrap();
        assert_eq!(id, "kek-1");
        assert_eq!(f.rotate(), "kek-2");
        let ring = f.ring().unwrap();
        assert_eq!(ring.primary(), "kek-2");
        assert_eq!(ring.decrypt("kek-1", &ct).unwrap(), b"seed");
        let (ct2, id2) = ring.encrypt(b"other").unwrap();
        assert_eq!(id2, "kek-2");
        // The key id is bound: the right bytes under the wrong id do not decrypt.
        assert!(ring.decrypt("kek-1", &ct2).is_err());
        assert!(f.remove("kek-2").is_err(), "primary cannot go");
        f.remove("kek-1").unwrap();
        assert!(f.ring().unwrap().decrypt("kek-1", &ct).is_err());
        assert!(f.remove("kek-9").is_err());
    }

    #[test]
    fn tampered_or_short_ciphertext_fails() {
        let ring = KeyFile::generate().ring().unwrap();
        let (mut ct, id) = ring.encrypt(b"seed").unwrap();
        let last = ct.len() - 1;
        ct[last] ^= 1;
        assert!(ring.decrypt(&id, &ct).is_err());
        assert!(ring.decrypt(&id, &ct[..10]).is_err());
    }

    #[test]
    fn bad_files_name_the_field() {
        let mut f = KeyFile::generate();
        f.keys[0].secret = "AAAA".into();
        assert!(f.ring().err().unwrap().contains("keys[0].secret"));
        let mut f = KeyFile::generate();
        f.primary = "nope".into();
        assert!(f.ring().err().unwrap().starts_with("primary"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.json");
        let f = KeyFile::load_or_create(&p).unwrap();
        assert_eq!(KeyFile::load(&p).unwrap().primary, f.primary);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
