//! `--auth-token jwt,...`: tokens that are JSON Web Tokens, as etcd's `jwt` token provider
//! makes them. A token is signed by the member that authenticated the user and carries the
//! user's name, the auth revision it was issued at and its expiry (`username`, `revision`,
//! `exp`); any member with the key verifies it without asking the others. A token issued before
//! the latest auth change (a user, role or permission changed) is refused with `revision of
//! auth store is old`, and the client authenticates again, as with etcd.
//!
//! Options, as etcd's: `sign-method` (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
//! HS256, HS384, HS512; required), `priv-key` and `pub-key` (PEM files; with `pub-key` alone
//! the member verifies tokens but cannot issue them; for HS* `priv-key` holds the secret),
//! `ttl` (5m). Unknown options are ignored, as etcd 3.4 ignores them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keelson_jwt::{Alg, HmacKey, SigningKey, VerifyingKey};
use serde_json::{Value, json};

use crate::error::StoreError;

/// How long a JWT token is valid unless `ttl` says otherwise (etcd's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// etcd's refusal of bad options at start.
const INVALID_OPTIONS: &str = "auth: invalid auth options";

enum Keys {
    Signature {
        alg: Alg,
        sign: Option<SigningKey>,
        verify: VerifyingKey,
    },
    Hmac(HmacKey),
}

/// The JWT token provider.
pub struct JwtTokens {
    keys: Keys,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn seconds_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The options after `--auth-token`'s token type, as etcd reads them for either type: each one
/// `key=value`, each key once.
pub fn split_options(options: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut seen = std::collections::HashSet::new();
    options
        .split(',')
        .map(|option| {
            option
                .split_once('=')
                .filter(|(k, v)| !v.contains('=') && seen.insert(*k))
                .ok_or_else(|| format!("{INVALID_OPTIONS} (bad option {option:?})"))
        })
        .collect()
}

impl JwtTokens {
    /// The provider `--auth-token jwt,<options>` describes (`options` is what follows
    /// `jwt,`); the error names what is wrong, in etcd's words where etcd has them.
    pub fn from_options(options: &str) -> Result<JwtTokens, String> {
        let mut method = "";
        let (mut public, mut private, mut ttl) = (None, None, DEFAULT_TTL);
        for (k, v) in split_options(options)? {
            let read = |path: &str| {
                std::fs::read(path).map_err(|e| {
                    format!("{INVALID_OPTIONS} (problem loading JWT options: open {path}: {e})")
                })
            };
            match k {
                "sign-method" => method = v,
                "pub-key" => public = Some(read(v)?),
                "priv-key" => private = Some(read(v)?),
                "ttl" => {
                    ttl = keelson_duration::parse_go_duration(v).map_err(|e| {
                        format!("{INVALID_OPTIONS} (problem loading JWT options: {e})")
                    })?;
                }
                _ => tracing::warn!(option = k, "unknown JWT option ignored"),
            }
        }
        let keys = if method.starts_with("HS") {
            let secret = private.unwrap_or_default();
            let key = HmacKey::new(method, &secret).ok_or_else(|| {
                format!("{INVALID_OPTIONS} (problem loading JWT options: auth: invalid auth signature method)")
            })?;
            // An empty secret would let anyone sign.
            if secret.is_empty() {
                return Err("auth: missing key data".into());
            }
            Keys::Hmac(key)
        } else {
            let alg = Alg::from_name(method).ok_or_else(|| {
                format!("{INVALID_OPTIONS} (problem loading JWT options: auth: invalid auth signature method)")
            })?;
            let sign = private
                .map(|pem| {
                    SigningKey::from_pem(&pem)
                        .and_then(|k| k.with_alg(alg))
                        .map_err(|e| format!("priv-key: {e}"))
                })
                .transpose()?;
            let verify = match (&public, &sign) {
                (Some(pem), _) => keelson_jwt::verifying_keys(pem)
                    .map_err(|e| format!("pub-key: {e}"))?
                    .swap_remove(0),
                (None, Some(k)) => k.verifying_key(),
                (None, None) => return Err("auth: missing key data".into()),
            };
            if !verify.suits(alg) {
                return Err(format!("pub-key: not a key for {}", alg.name()));
            }
            if let Some(k) = &sign
                && k.verifying_key().kid != verify.kid
            {
                return Err("auth: public and private keys don't match".into());
            }
            Keys::Signature { alg, sign, verify }
        };
        Ok(JwtTokens { keys, ttl })
    }

    /// A token for `user`, issued at auth revision `revision` (an error, in etcd's words, on a
    /// member that only verifies).
    pub fn assign(&self, user: &str, revision: u64) -> Result<String, String> {
        let claims = json!({
            "username": user,
            "revision": revision,
            "exp": seconds_now().saturating_add(self.ttl.as_secs()),
        });
        match &self.keys {
            Keys::Hmac(k) => Ok(k.sign_typed(&claims)),
            Keys::Signature { sign: None, .. } => {
                Err("auth: token signing attempted with verify-only key".into())
            }
            Keys::Signature { sign: Some(k), .. } => k
                .sign_typed(&claims)
                .map_err(|e| format!("signing a JWT: {e}")),
        }
    }

    /// The user `token` names, if it is valid now: a token that is not this provider's or has
    /// expired is `invalid auth token`; given the `current` auth revision, one issued at an
    /// older one is `revision of auth store is old`. With the user, the auth revision the token
    /// was issued at.
    pub fn user(&self, token: &str, current: Option<u64>) -> Result<(String, u64), StoreError> {
        let claims = match &self.keys {
            Keys::Hmac(k) => k.verify(token),
            Keys::Signature { alg, verify, .. } => keelson_jwt::verify_with(verify, *alg, token),
        }
        .map_err(|_| StoreError::InvalidAuthToken)?;
        let field = |name: &str| claims.get(name).cloned().unwrap_or(Value::Null);
        let (Some(user), Some(revision)) = (
            field("username").as_str().map(str::to_string),
            field("revision").as_u64(),
        ) else {
            return Err(StoreError::InvalidAuthToken);
        };
        if field("exp").as_u64().is_some_and(|exp| exp < seconds_now()) {
            return Err(StoreError::InvalidAuthToken);
        }
        if current.is_some_and(|c| revision < c) {
            return Err(StoreError::AuthOldRevision);
        }
        Ok((user, revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> String {
        format!("{}/../jwt/testdata/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn tokens_carry_user_and_revision_and_expire() {
        let rsa = testdata("sa-rsa.key");
        let p =
            JwtTokens::from_options(&format!("sign-method=RS512,priv-key={rsa},ttl=1m")).unwrap();
        let t = p.assign("alice", 7).unwrap();
        assert_eq!(p.user(&t, Some(7)).unwrap(), ("alice".into(), 7));
        assert_eq!(p.user(&t, Some(8)), Err(StoreError::AuthOldRevision));
        // Admin checks do not look at the revision.
        assert_eq!(p.user(&t, None).unwrap(), ("alice".into(), 7));
        assert_eq!(p.user("x.y.z", Some(7)), Err(StoreError::InvalidAuthToken));
        // Verify-only: checks tokens, issues none.
        let v = JwtTokens::from_options(&format!(
            "sign-method=RS512,pub-key={}",
            testdata("sa-rsa.pub")
        ))
        .unwrap();
        assert_eq!(v.user(&t, Some(7)).unwrap(), ("alice".into(), 7));
        assert!(v.assign("alice", 7).is_err());
        // Another algorithm over the same key does not verify it.
        let rs256 = JwtTokens::from_options(&format!("sign-method=RS256,priv-key={rsa}")).unwrap();
        assert_eq!(rs256.user(&t, Some(7)), Err(StoreError::InvalidAuthToken));
        // Expired.
        let expired = p.keys_sign(json!({"username": "alice", "revision": 7, "exp": 1}));
        assert_eq!(p.user(&expired, Some(7)), Err(StoreError::InvalidAuthToken));
    }

    impl JwtTokens {
        fn keys_sign(&self, claims: Value) -> String {
            match &self.keys {
                Keys::Hmac(k) => k.sign_typed(&claims),
                Keys::Signature { sign, .. } => sign.as_ref().unwrap().sign_typed(&claims).unwrap(),
            }
        }
    }

    #[test]
    fn bad_options_are_refused_as_etcd_refuses_them() {
        let rsa = testdata("sa-rsa.key");
        for (options, message) in [
            (
                format!("sign-method=XX256,priv-key={rsa}"),
                "auth: invalid auth options",
            ),
            ("sign-method=RS256".to_string(), "auth: missing key data"),
            (
                "sign-method=RS256,priv-key=/nonexistent".to_string(),
                "auth: invalid auth options",
            ),
            (
                format!("sign-method=RS256,priv-key={rsa},ttl=abc"),
                "auth: invalid auth options",
            ),
            (
                format!("sign-method=ES256,priv-key={rsa}"),
                "priv-key: an RSA key cannot sign ES256",
            ),
            (
                format!(
                    "sign-method=RS256,priv-key={rsa},pub-key={}",
                    testdata("ec256.pub")
                ),
                "pub-key: not a key for RS256",
            ),
        ] {
            let err = JwtTokens::from_options(&options).unwrap_err();
            assert!(err.contains(message), "{options}: {err}");
        }
        for options in [
            "sign-method=HS256,priv-key=/dev/null".to_string(),
            format!("sign-method=HS256,priv-key={rsa},"),
            format!("sign-method=HS256,priv-key={rsa},sign-method=HS256"),
            format!("sign-method=HS256,priv-key,{rsa}"),
            "sign-method=HS999".to_string(),
        ] {
            let err = JwtTokens::from_options(&options).unwrap_err();
            let message = if options.ends_with("/dev/null") {
                "auth: missing key data"
            } else {
                "auth: invalid auth options"
            };
            assert!(err.contains(message), "{options}: {err}");
        }
        // HMAC with the key file's bytes as the secret; an unknown option is ignored.
        let h =
            JwtTokens::from_options(&format!("sign-method=HS256,priv-key={rsa},bogus=1")).unwrap();
        let t = h.assign("bob", 1).unwrap();
        assert_eq!(h.user(&t, Some(1)).unwrap(), ("bob".into(), 1));
    }
}
