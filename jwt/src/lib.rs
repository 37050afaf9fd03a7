//! JSON Web Tokens: compact JWS signed and verified with ring, with keys read from PEM files.
//!
//! Two users: the apiserver's service-account tokens (RS256 or ES256 by the key, a `kid`
//! header, keys as kube-apiserver reads `--service-account-key-file` and
//! `--service-account-signing-key-file`: public keys, RSA and PKCS#8 private keys,
//! certificates), and keelson-store's `--auth-token jwt` tokens (etcd's sign methods RS256,
//! RS384, RS512, PS256, PS384, PS512, ES256 and ES384; an `alg`/`typ` header as etcd's). A
//! key's `kid` is upstream's: the base64url SHA-256 of its DER `SubjectPublicKeyInfo`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};
use sha2::Digest;
use x509_parser::prelude::FromDer;

/// A JWS signature algorithm (the header's `alg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
}

/// What a key is, which decides the algorithms it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
}

impl Alg {
    const ALL: [Alg; 8] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
    ];

    /// The algorithm named `name` (`RS256`, ...).
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
        }
    }

    fn family(self) -> Family {
        match self {
            Alg::ES256 => Family::P256,
            Alg::ES384 => Family::P384,
            _ => Family::Rsa,
        }
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Alg::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        }
    }

    fn rsa_padding(self) -> &'static dyn signature::RsaEncoding {
        match self {
            Alg::RS384 => &signature::RSA_PKCS1_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_SHA512,
            Alg::PS256 => &signature::RSA_PSS_SHA256,
            Alg::PS384 => &signature::RSA_PSS_SHA384,
            Alg::PS512 => &signature::RSA_PSS_SHA512,
            _ => &signature::RSA_PKCS1_SHA256,
        }
    }
}

impl Family {
    /// The algorithm a key of this family signs with unless told otherwise.
    fn default_alg(self) -> Alg {
        match self {
            Family::Rsa => Alg::RS256,
            Family::P256 => Alg::ES256,
            Family::P384 => Alg::ES384,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Rsa => "an RSA key",
            Family::P256 => "a P-256 key",
            Family::P384 => "a P-384 key",
        }
    }
}

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair, Family),
}

/// A key that signs tokens, with the algorithm it signs with.
pub struct SigningKey {
    key: Key,
    alg: Alg,
}

/// A key that verifies tokens.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    family: Family,
    /// The key id.
    pub kid: String,
    /// PKCS#1 `RSAPublicKey` DER (RSA) or the uncompressed point (EC).
    key: Vec<u8>,
}

const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
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

/// The `AlgorithmIdentifier` of an EC key on the curve `curve_oid`.
fn ec_algorithm(curve_oid: &[u8]) -> Vec<u8> {
    der(0x30, &[EC_PUBLIC_KEY_OID, curve_oid].concat())
}

/// An EC key pair from PKCS#8 DER, on P-256 or P-384.
fn ec_from_pkcs8(pkcs8: &[u8]) -> Option<Key> {
    let rng = SystemRandom::new();
    if let Ok(k) =
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
    {
        return Some(Key::Ec(k, Family::P256));
    }
    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8, &rng)
        .ok()
        .map(|k| Key::Ec(k, Family::P384))
}

impl SigningKey {
    /// The first private key in `pem` (PKCS#8 RSA, P-256 or P-384, PKCS#1 RSA, or SEC1
    /// `EC PRIVATE KEY`), signing with RS256, ES256 or ES384 by its kind.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let p = p.map_err(|e| format!("reading PEM: {e}"))?;
            let key = match p.label.as_str() {
                "PRIVATE KEY" => match ec_from_pkcs8(&p.contents) {
                    Some(k) => k,
                    None => RsaKeyPair::from_pkcs8(&p.contents)
                        .map(Key::Rsa)
                        .map_err(|e| {
                            format!("a PKCS#8 key that is neither P-256, P-384 nor RSA: {e}")
                        })?,
                },
                "RSA PRIVATE KEY" => RsaKeyPair::from_der(&p.contents)
                    .map(Key::Rsa)
                    .map_err(|e| format!("an unusable RSA key: {e}"))?,
                "EC PRIVATE KEY" => {
                    // SEC1, as `openssl ecparam -genkey` writes it: wrapped as PKCS#8 for
                    // each curve until one fits.
                    [P256_OID, P384_OID]
                        .iter()
                        .find_map(|curve| {
                            let body = [
                                &[0x02, 0x01, 0x00][..],
                                &ec_algorithm(curve),
                                &der(0x04, &p.contents),
                            ]
                            .concat();
                            ec_from_pkcs8(&der(0x30, &body))
                        })
                        .ok_or("an EC key that is neither P-256 nor P-384")?
                }
                _ => continue,
            };
            let family = match &key {
                Key::Rsa(_) => Family::Rsa,
                Key::Ec(_, f) => *f,
            };
            return Ok(SigningKey {
                key,
                alg: family.default_alg(),
            });
        }
        Err("no private key found".into())
    }

    /// The same key signing with `alg`, which must suit it (RS* and PS* an RSA key, ES256 a
    /// P-256 key, ES384 a P-384 key).
    pub fn with_alg(self, alg: Alg) -> Result<Self, String> {
        let family = self.verifying_key().family;
        if alg.family() != family {
            return Err(format!("{} cannot sign {}", family.name(), alg.name()));
        }
        Ok(SigningKey { alg, ..self })
    }

    /// The algorithm it signs with.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        match &self.key {
            Key::Rsa(k) => {
                let pkcs1 = k.public().as_ref().to_vec();
                let mut bits = vec![0u8];
                bits.extend_from_slice(&pkcs1);
                let mut body = RSA_ALGORITHM.to_vec();
                body.extend(der(0x03, &bits));
                VerifyingKey {
                    family: Family::Rsa,
                    kid: kid_of(&der(0x30, &body)),
                    key: pkcs1,
                }
            }
            Key::Ec(k, family) => {
                let point = k.public_key().as_ref().to_vec();
                let curve = if *family == Family::P256 {
                    P256_OID
                } else {
                    P384_OID
                };
                let mut bits = vec![0u8];
                bits.extend_from_slice(&point);
                let spki = der(0x30, &[ec_algorithm(curve), der(0x03, &bits)].concat());
                VerifyingKey {
                    family: *family,
                    kid: kid_of(&spki),
                    key: point,
                }
            }
        }
    }

    /// A signed token of `claims`, its header naming the algorithm and the key (`kid`), as
    /// service-account tokens have it.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": self.alg.name(), "kid": self.verifying_key().kid});
        self.sign_with_header(&header, claims)
    }

    /// A signed token of `claims` with the header etcd's tokens have (`alg` and `typ`).
    pub fn sign_typed(&self, claims: &Value) -> Result<String, String> {
        self.sign_with_header(&json!({"alg": self.alg.name(), "typ": "JWT"}), claims)
    }

    fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, String> {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(self.alg.rsa_padding(), &rng, input.as_bytes(), &mut sig)
                    .map_err(|_| "RSA signing failed".to_string())?;
                sig
            }
            Key::Ec(k, _) => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| "ECDSA signing failed".to_string())?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", B64.encode(sig)))
    }
}

impl VerifyingKey {
    /// The algorithm tokens it verifies are taken to use unless told otherwise: RS256 for an
    /// RSA key, ES256 or ES384 for an EC key.
    pub fn alg(&self) -> &'static str {
        self.family.default_alg().name()
    }

    /// Whether it can verify `alg`'s signatures.
    pub fn suits(&self, alg: Alg) -> bool {
        alg.family() == self.family
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
                    family: Family::Rsa,
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
    let family = match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(_)) => Family::Rsa,
        Ok(x509_parser::public_key::PublicKey::EC(_)) if key.len() == 65 => Family::P256,
        Ok(x509_parser::public_key::PublicKey::EC(_)) if key.len() == 97 => Family::P384,
        _ => return Err("only RSA, P-256 and P-384 public keys are supported".into()),
    };
    Ok(VerifyingKey { family, kid, key })
}

/// The token's header and claims, and what its signature covers and is.
struct Parts {
    header: Value,
    claims: Value,
    input: String,
    sig: Vec<u8>,
}

fn split(token: &str) -> Result<Parts, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT".into());
    };
    let json = |part: &str| -> Option<Value> {
        B64.decode(part)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    };
    Ok(Parts {
        header: json(h).ok_or("malformed JWT header")?,
        claims: json(c).ok_or("malformed JWT claims")?,
        input: format!("{h}.{c}"),
        sig: B64.decode(s).map_err(|_| "malformed JWT signature")?,
    })
}

fn signed_by(key: &VerifyingKey, alg: Alg, parts: &Parts) -> bool {
    key.suits(alg)
        && UnparsedPublicKey::new(alg.verification(), &key.key)
            .verify(parts.input.as_bytes(), &parts.sig)
            .is_ok()
}

/// The claims of `token` if one of `keys` signed it with the algorithm it is taken to use
/// ([`VerifyingKey::alg`]) and its `kid`, if any, names that key (the claims are not checked
/// here).
pub fn verify(keys: &[VerifyingKey], token: &str) -> Result<Value, String> {
    let parts = split(token)?;
    let alg = parts
        .header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kid = parts.header.get("kid").and_then(Value::as_str);
    let ok = keys
        .iter()
        .filter(|k| k.alg() == alg && kid.is_none_or(|kid| kid == k.kid || k.kid.is_empty()))
        .any(|k| signed_by(k, k.family.default_alg(), &parts));
    if !ok {
        return Err("invalid signature".into());
    }
    Ok(parts.claims)
}

/// The claims of `token` if `key` signed it with `alg`, the algorithm its header must name
/// (the claims are not checked here).
pub fn verify_with(key: &VerifyingKey, alg: Alg, token: &str) -> Result<Value, String> {
    let parts = split(token)?;
    if parts.header.get("alg").and_then(Value::as_str) != Some(alg.name()) {
        return Err(format!("not signed with {}", alg.name()));
    }
    if !signed_by(key, alg, &parts) {
        return Err("invalid signature".into());
    }
    Ok(parts.claims)
}

/// An HMAC secret: HS256, HS384 or HS512, as etcd's `sign-method=HS*` with the bytes of its
/// `priv-key` file as the secret.
pub struct HmacKey {
    alg: &'static str,
    key: ring::hmac::Key,
}

impl HmacKey {
    /// A key for the algorithm named `alg` (`None` unless it is HS256, HS384 or HS512).
    pub fn new(alg: &str, secret: &[u8]) -> Option<HmacKey> {
        let (alg, hash) = match alg {
            "HS256" => ("HS256", ring::hmac::HMAC_SHA256),
            "HS384" => ("HS384", ring::hmac::HMAC_SHA384),
            "HS512" => ("HS512", ring::hmac::HMAC_SHA512),
            _ => return None,
        };
        Some(HmacKey {
            alg,
            key: ring::hmac::Key::new(hash, secret),
        })
    }

    /// A token of `claims` with the header etcd's tokens have (`alg` and `typ`).
    pub fn sign_typed(&self, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(json!({"alg": self.alg, "typ": "JWT"}).to_string()),
            B64.encode(claims.to_string())
        );
        let tag = ring::hmac::sign(&self.key, input.as_bytes());
        format!("{input}.{}", B64.encode(tag.as_ref()))
    }

    /// The claims of `token` if this key signed it, with its algorithm.
    pub fn verify(&self, token: &str) -> Result<Value, String> {
        let parts = split(token)?;
        if parts.header.get("alg").and_then(Value::as_str) != Some(self.alg) {
            return Err(format!("not signed with {}", self.alg));
        }
        ring::hmac::verify(&self.key, parts.input.as_bytes(), &parts.sig)
            .map_err(|_| "invalid signature".to_string())?;
        Ok(parts.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es256_and_rs256_round_trip_and_tampering_fails() {
        // P-256 from rcgen (PKCS#8), and an RSA key made by openssl in the test data.
        let ec = rcgen::KeyPair::generate().unwrap();
        let rsa_pem = include_str!("../testdata/sa-rsa.key");
        for (pem, pub_pem, alg) in [
            (ec.serialize_pem(), ec.public_key_pem(), "ES256"),
            (
                rsa_pem.to_string(),
                include_str!("../testdata/sa-rsa.pub").to_string(),
                "RS256",
            ),
        ] {
            let key = SigningKey::from_pem(pem.as_bytes()).unwrap();
            let claims = json!({"sub": "x", "n": 1});
            let token = key.sign(&claims).unwrap();
            let pubs = verifying_keys(pub_pem.as_bytes()).unwrap();
            assert_eq!(pubs[0].alg(), alg);
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

    #[test]
    fn every_etcd_sign_method_round_trips_and_no_other_alg_passes() {
        let rsa = include_str!("../testdata/sa-rsa.key");
        let ec256 = include_str!("../testdata/ec256-sec1.key");
        let ec384 = include_str!("../testdata/ec384-sec1.key");
        let public = |alg: Alg| match alg.family() {
            Family::Rsa => include_str!("../testdata/sa-rsa.pub"),
            Family::P256 => include_str!("../testdata/ec256.pub"),
            Family::P384 => include_str!("../testdata/ec384.pub"),
        };
        for alg in Alg::ALL {
            let pem = match alg.family() {
                Family::Rsa => rsa,
                Family::P256 => ec256,
                Family::P384 => ec384,
            };
            let key = SigningKey::from_pem(pem.as_bytes())
                .unwrap()
                .with_alg(alg)
                .unwrap();
            let claims = json!({"username": "root", "revision": 2});
            let token = key.sign_typed(&claims).unwrap();
            let pubkey = &verifying_keys(public(alg).as_bytes()).unwrap()[0];
            assert_eq!(pubkey.kid, key.verifying_key().kid, "{alg:?}");
            assert_eq!(verify_with(pubkey, alg, &token).unwrap(), claims, "{alg:?}");
            // Any other algorithm, even of the same key family, is refused.
            for other in Alg::ALL.into_iter().filter(|o| *o != alg) {
                assert!(
                    verify_with(pubkey, other, &token).is_err(),
                    "{alg:?} as {other:?}"
                );
            }
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
        }
        // A key cannot sign another family's algorithm.
        let ec = SigningKey::from_pem(ec256.as_bytes()).unwrap();
        assert_eq!(ec.alg(), Alg::ES256);
        assert!(ec.with_alg(Alg::RS256).is_err());
        assert!(
            SigningKey::from_pem(rsa.as_bytes())
                .unwrap()
                .with_alg(Alg::ES384)
                .is_err()
        );
        assert_eq!(Alg::from_name("HS256"), None);
    }

    #[test]
    fn hmac_tokens_verify_only_with_their_secret_and_algorithm() {
        let claims = json!({"username": "u", "revision": 1});
        let key = HmacKey::new("HS384", b"secret\n").unwrap();
        let token = key.sign_typed(&claims);
        assert_eq!(key.verify(&token).unwrap(), claims);
        assert!(
            HmacKey::new("HS384", b"other")
                .unwrap()
                .verify(&token)
                .is_err()
        );
        assert!(
            HmacKey::new("HS256", b"secret\n")
                .unwrap()
                .verify(&token)
                .is_err()
        );
        assert!(HmacKey::new("RS256", b"x").is_none());
        let (head, _) = token.rsplit_once('.').unwrap();
        assert!(key.verify(&format!("{head}.AAAA")).is_err());
    }
}
