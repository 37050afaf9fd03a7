//! JSON Web Tokens as service-account tokens use them: compact JWS with RS256 (RSA keys) or
//! ES256 (P-256 keys), signed and verified with ring; keys read from PEM files the way
//! kube-apiserver reads `--service-account-key-file` and `--service-account-signing-key-file`
//! (public keys, RSA and PKCS#8 private keys, certificates). A key's `kid` is upstream's: the
//! base64url SHA-256 of its DER `SubjectPublicKeyInfo`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};
use sha2::Digest;
use x509_parser::prelude::FromDer;

/// A key that signs tokens.
pub enum SigningKey {
    /// RS256.
    Rsa(RsaKeyPair),
    /// ES256.
    Ec(EcdsaKeyPair),
}

/// A key that verifies tokens.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    /// `RS256` or `ES256`.
    pub alg: &'static str,
    /// The key id.
    pub kid: String,
    /// PKCS#1 `RSAPublicKey` DER (RSA) or the uncompressed point (EC).
    key: Vec<u8>,
}

const EC_P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const RSA_ALGORITHM: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(body);
    out
}

fn kid_of(spki_der: &[u8]) -> String {
    B64.encode(sha2::Sha256::digest(spki_der))
}

impl SigningKey {
    /// The first private key in `pem` (PKCS#8 RSA or P-256, or PKCS#1 RSA).
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let p = p.map_err(|e| format!("reading PEM: {e}"))?;
            match p.label.as_str() {
                "PRIVATE KEY" => {
                    if let Ok(k) = EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        &p.contents,
                        &SystemRandom::new(),
                    ) {
                        return Ok(SigningKey::Ec(k));
                    }
                    return RsaKeyPair::from_pkcs8(&p.contents)
                        .map(SigningKey::Rsa)
                        .map_err(|e| format!("a PKCS#8 key that is neither P-256 nor RSA: {e}"));
                }
                "RSA PRIVATE KEY" => {
                    return RsaKeyPair::from_der(&p.contents)
                        .map(SigningKey::Rsa)
                        .map_err(|e| format!("an unusable RSA key: {e}"));
                }
                "EC PRIVATE KEY" => {
                    return Err(
                        "EC keys must be PKCS#8 (\"PRIVATE KEY\"); convert with `openssl pkcs8 -topk8 -nocrypt`"
                            .into(),
                    );
                }
                _ => {}
            }
        }
        Err("no private key found".into())
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            SigningKey::Rsa(k) => {
                let pkcs1 = k.public().as_ref().to_vec();
                let mut bits = vec![0u8];
                bits.extend_from_slice(&pkcs1);
                let mut body = RSA_ALGORITHM.to_vec();
                body.extend(der(0x03, &bits));
                VerifyingKey {
                    alg: "RS256",
                    kid: kid_of(&der(0x30, &body)),
                    key: pkcs1,
                }
            }
            SigningKey::Ec(k) => {
                let point = k.public_key().as_ref().to_vec();
                let mut spki = EC_P256_SPKI_PREFIX.to_vec();
                spki.extend_from_slice(&point);
                VerifyingKey {
                    alg: "ES256",
                    kid: kid_of(&spki),
                    key: point,
                }
            }
        }
    }

    /// A signed token of `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let vk = self.verifying_key();
        let header = json!({"alg": vk.alg, "kid": vk.kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| "RSA signing failed".to_string())?;
                sig
            }
            SigningKey::Ec(k) => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| "ECDSA signing failed".to_string())?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", B64.encode(sig)))
    }
}

/// Every public key in `pem`: public keys, certificates' keys, and the public halves of
/// private keys.
pub fn verifying_keys(pem: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let p = p.map_err(|e| format!("reading PEM: {e}"))?;
        match p.label.as_str() {
            "PUBLIC KEY" => out.push(from_spki(&p.contents)?),
            "CERTIFICATE" => {
                let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&p.contents)
                    .map_err(|e| format!("reading a certificate: {e}"))?;
                out.push(from_spki(cert.public_key().raw)?);
            }
            "RSA PUBLIC KEY" => {
                let mut bits = vec![0u8];
                bits.extend_from_slice(&p.contents);
                let mut body = RSA_ALGORITHM.to_vec();
                body.extend(der(0x03, &bits));
                out.push(VerifyingKey {
                    alg: "RS256",
                    kid: kid_of(&der(0x30, &body)),
                    key: p.contents.clone(),
                });
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                let block = format!(
                    "-----BEGIN {l}-----\n{}\n-----END {l}-----\n",
                    base64::engine::general_purpose::STANDARD.encode(&p.contents),
                    l = p.label
                );
                out.push(SigningKey::from_pem(block.as_bytes())?.verifying_key());
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err("no public or private key found".into());
    }
    Ok(out)
}

fn from_spki(der_bytes: &[u8]) -> Result<VerifyingKey, String> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der_bytes)
        .map_err(|e| format!("reading a public key: {e}"))?;
    let kid = kid_of(spki.raw);
    let key = spki.subject_public_key.data.to_vec();
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(_)) => Ok(VerifyingKey {
            alg: "RS256",
            kid,
            key,
        }),
        Ok(x509_parser::public_key::PublicKey::EC(_)) if key.len() == 65 => Ok(VerifyingKey {
            alg: "ES256",
            kid,
            key,
        }),
        _ => Err("only RSA and P-256 public keys are supported".into()),
    }
}

/// The claims of `token` if one of `keys` signed it (the claims are not checked here).
pub fn verify(keys: &[VerifyingKey], token: &str) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT".into());
    };
    let header: Value = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("malformed JWT header")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let kid = header.get("kid").and_then(Value::as_str);
    let sig = B64.decode(s).map_err(|_| "malformed JWT signature")?;
    let input = format!("{h}.{c}");
    let ok = keys
        .iter()
        .filter(|k| k.alg == alg && kid.is_none_or(|kid| kid == k.kid || k.kid.is_empty()))
        .any(|k| {
            let algo: &dyn signature::VerificationAlgorithm = if k.alg == "RS256" {
                &signature::RSA_PKCS1_2048_8192_SHA256
            } else {
                &signature::ECDSA_P256_SHA256_FIXED
            };
            UnparsedPublicKey::new(algo, &k.key)
                .verify(input.as_bytes(), &sig)
                .is_ok()
        });
    if !ok {
        return Err("invalid signature".into());
    }
    B64.decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| "malformed JWT claims".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es256_and_rs256_round_trip_and_tampering_fails() {
        // P-256 from rcgen (PKCS#8), and an RSA key made by openssl in the test data.
        let ec = rcgen::KeyPair::generate().unwrap();
        let rsa_pem = include_str!("../../testdata/sa-rsa.key");
        for (pem, pub_pem, alg) in [
            (ec.serialize_pem(), ec.public_key_pem(), "ES256"),
            (
                rsa_pem.to_string(),
                include_str!("../../testdata/sa-rsa.pub").to_string(),
                "RS256",
            ),
        ] {
            let key = SigningKey::from_pem(pem.as_bytes()).unwrap();
            let claims = json!({"sub": "x", "n": 1});
            let token = key.sign(&claims).unwrap();
            let pubs = verifying_keys(pub_pem.as_bytes()).unwrap();
            assert_eq!(pubs[0].alg, alg);
            // The kid from the public key file is the one the signer puts in the header.
            assert_eq!(pubs[0].kid, key.verifying_key().kid, "{alg}");
            assert_eq!(verify(&pubs, &token).unwrap(), claims);
            // The private key file verifies too.
            assert_eq!(
                verify(&verifying_keys(pem.as_bytes()).unwrap(), &token).unwrap(),
                claims
            );
            let (head, _) = token.rsplit_once('.').unwrap();
            let forged = format!(
                "{}.{}.{}",
                head.split('.').next().unwrap(),
                B64.encode(json!({"sub": "admin"}).to_string()),
                token.rsplit('.').next().unwrap()
            );
            assert!(verify(&pubs, &forged).is_err());
            assert!(verify(&pubs, "a.b").is_err());
        }
        let other = rcgen::KeyPair::generate().unwrap();
        let token = SigningKey::from_pem(ec.serialize_pem().as_bytes())
            .unwrap()
            .sign(&json!({}))
            .unwrap();
        assert!(
            verify(
                &verifying_keys(other.public_key_pem().as_bytes()).unwrap(),
                &token
            )
            .is_err()
        );
    }
}
