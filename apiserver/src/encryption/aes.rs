//! The local-key providers: `aesgcm`, `aescbc` and `secretbox`, byte-compatible with
//! kube-apiserver's (what follows the `k8s:enc:<provider>:v1:<key name>:` prefix):
//!
//! - aesgcm: nonce (12 random bytes) ‖ AES-GCM ciphertext and tag; the etcd key is the
//!   associated data, so a value copied under another key does not decrypt.
//! - aescbc: IV (16 random bytes) ‖ AES-CBC of the PKCS#7-padded value (no integrity check, as
//!   upstream; kept for compatibility).
//! - secretbox: nonce (24 random bytes) ‖ XSalsa20-Poly1305 (NaCl secretbox) output.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use futures::future::BoxFuture;

use super::{Read, Transformer};

const SHORT: &str = "the stored data was shorter than the required size";

/// An AES key of 16, 24 or 32 bytes.
#[derive(Clone)]
enum AesKey {
    A128([u8; 16]),
    A192([u8; 24]),
    A256([u8; 32]),
}

impl AesKey {
    fn new(key: &[u8]) -> Option<Self> {
        Some(match key.len() {
            16 => AesKey::A128(key.try_into().ok()?),
            24 => AesKey::A192(key.try_into().ok()?),
            32 => AesKey::A256(key.try_into().ok()?),
            _ => return None,
        })
    }
}

/// `aesgcm` with one key.
pub struct Gcm {
    cipher: GcmCipher,
}

enum GcmCipher {
    A128(Box<aes_gcm::Aes128Gcm>),
    A192(Box<aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>>),
    A256(Box<aes_gcm::Aes256Gcm>),
}

impl Gcm {
    /// A transformer for a 16-, 24- or 32-byte key.
    pub fn new(key: &[u8]) -> Option<Self> {
        let cipher = match AesKey::new(key)? {
            AesKey::A128(k) => GcmCipher::A128(Box::new(aes_gcm::Aes128Gcm::new(&k.into()))),
            AesKey::A192(k) => GcmCipher::A192(Box::new(aes_gcm::AesGcm::new(&k.into()))),
            AesKey::A256(k) => GcmCipher::A256(Box::new(aes_gcm::Aes256Gcm::new(&k.into()))),
        };
        Some(Gcm { cipher })
    }

    /// nonce ‖ sealed.
    pub fn seal(&self, data: &[u8], ad: &[u8]) -> Result<Vec<u8>, String> {
        let nonce: [u8; 12] = rand::random();
        let payload = Payload { msg: data, aad: ad };
        let n = aes_gcm::Nonce::from_slice(&nonce);
        let sealed = match &self.cipher {
            GcmCipher::A128(c) => c.encrypt(n, payload),
            GcmCipher::A192(c) => c.encrypt(n, payload),
            GcmCipher::A256(c) => c.encrypt(n, payload),
        }
        .map_err(|_| "AES-GCM encryption failed".to_string())?;
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens nonce ‖ sealed.
    pub fn open(&self, data: &[u8], ad: &[u8]) -> Result<Vec<u8>, String> {
        if data.len() < 12 {
            return Err(SHORT.into());
        }
        let (nonce, sealed) = data.split_at(12);
        let payload = Payload {
            msg: sealed,
            aad: ad,
        };
        let n = aes_gcm::Nonce::from_slice(nonce);
        match &self.cipher {
            GcmCipher::A128(c) => c.decrypt(n, payload),
            GcmCipher::A192(c) => c.decrypt(n, payload),
            GcmCipher::A256(c) => c.decrypt(n, payload),
        }
        .map_err(|_| "cipher: message authentication failed".to_string())
    }
}

impl Transformer for Gcm {
    fn read<'a>(&'a self, data: &'a [u8], ad: &'a [u8]) -> BoxFuture<'a, Result<Read, String>> {
        Box::pin(async move {
            Ok(Read {
                data: self.open(data, ad)?,
                stale: false,
            })
        })
    }

    fn write<'a>(&'a self, data: &'a [u8], ad: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move { self.seal(data, ad) })
    }
}

/// `aescbc` with one key.
pub struct Cbc {
    key: AesKey,
}

impl Cbc {
    /// A transformer for a 16-, 24- or 32-byte key.
    pub fn new(key: &[u8]) -> Option<Self> {
        Some(Cbc {
            key: AesKey::new(key)?,
        })
    }

    fn encrypt(&self, data: &[u8]) -> Vec<u8> {
        let iv: [u8; 16] = rand::random();
        let pad = 16 - data.len() % 16;
        let mut buf = Vec::with_capacity(16 + data.len() + pad);
        buf.extend_from_slice(&iv);
        buf.extend_from_slice(data);
        buf.resize(16 + data.len() + pad, pad as u8);
        let body = &mut buf[16..];
        let n = body.len();
        // The padding is added above (PKCS#7), so the cipher runs without its own.
        let r = match &self.key {
            AesKey::A128(k) => cbc::Encryptor::<aes::Aes128>::new(k.into(), &iv.into())
                .encrypt_padded_mut::<NoPadding>(body, n)
                .map(|_| ()),
            AesKey::A192(k) => cbc::Encryptor::<aes::Aes192>::new(k.into(), &iv.into())
                .encrypt_padded_mut::<NoPadding>(body, n)
                .map(|_| ()),
            AesKey::A256(k) => cbc::Encryptor::<aes::Aes256>::new(k.into(), &iv.into())
                .encrypt_padded_mut::<NoPadding>(body, n)
                .map(|_| ()),
        };
        debug_assert!(r.is_ok(), "the body is a whole number of blocks");
        buf
    }

    fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        if data.len() < 16 {
            return Err(SHORT.into());
        }
        let (iv, body) = data.split_at(16);
        if body.is_empty() || body.len() % 16 != 0 {
            return Err("the stored data is not a multiple of the block size".into());
        }
        let iv: [u8; 16] = iv.try_into().map_err(|_| SHORT.to_string())?;
        let mut buf = body.to_vec();
        let r = match &self.key {
            AesKey::A128(k) => cbc::Decryptor::<aes::Aes128>::new(k.into(), &iv.into())
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .map(|_| ()),
            AesKey::A192(k) => cbc::Decryptor::<aes::Aes192>::new(k.into(), &iv.into())
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .map(|_| ()),
            AesKey::A256(k) => cbc::Decryptor::<aes::Aes256>::new(k.into(), &iv.into())
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .map(|_| ()),
        };
        r.map_err(|_| "the stored data is not a multiple of the block size".to_string())?;
        let pad = *buf.last().unwrap_or(&0) as usize;
        if pad == 0 || pad > 16 || pad > buf.len() {
            return Err("invalid PKCS7 data (empty or not padded)".into());
        }
        if buf[buf.len() - pad..].iter().any(|&b| b as usize != pad) {
            return Err("invalid padding on input".into());
        }
        buf.truncate(buf.len() - pad);
        Ok(buf)
    }
}

impl Transformer for Cbc {
    fn read<'a>(&'a self, data: &'a [u8], _ad: &'a [u8]) -> BoxFuture<'a, Result<Read, String>> {
        Box::pin(async move {
            Ok(Read {
                data: self.decrypt(data)?,
                stale: false,
            })
        })
    }

    fn write<'a>(
        &'a self,
        data: &'a [u8],
        _ad: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move { Ok(self.encrypt(data)) })
    }
}

/// `secretbox` with one 32-byte key.
pub struct SecretBox {
    cipher: crypto_secretbox::XSalsa20Poly1305,
}

impl SecretBox {
    /// A transformer for a 32-byte key.
    pub fn new(key: &[u8]) -> Option<Self> {
        let key: [u8; 32] = key.try_into().ok()?;
        Some(SecretBox {
            cipher: crypto_secretbox::XSalsa20Poly1305::new(&key.into()),
        })
    }
}

impl Transformer for SecretBox {
    fn read<'a>(&'a self, data: &'a [u8], _ad: &'a [u8]) -> BoxFuture<'a, Result<Read, String>> {
        Box::pin(async move {
            if data.len() < 24 + 16 {
                return Err(SHORT.to_string());
            }
            let (nonce, sealed) = data.split_at(24);
            let data = self
                .cipher
                .decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed)
                .map_err(|_| "secretbox: message authentication failed".to_string())?;
            Ok(Read { data, stale: false })
        })
    }

    fn write<'a>(
        &'a self,
        data: &'a [u8],
        _ad: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let nonce: [u8; 24] = rand::random();
            let sealed = self
                .cipher
                .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), data)
                .map_err(|_| "secretbox encryption failed".to_string())?;
            let mut out = nonce.to_vec();
            out.extend_from_slice(&sealed);
            Ok(out)
        })
    }
}
