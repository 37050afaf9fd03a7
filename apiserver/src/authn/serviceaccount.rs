//! Service-account tokens as kube-apiserver issues and checks them: JWTs with the `iss`, `sub`,
//! `aud`, `exp`, `iat`, `nbf`, `jti` claims and the private `kubernetes.io` claim naming the
//! namespace, the service account and (for bound tokens) the pod, secret or node. Issued by the
//! TokenRequest API (`serviceaccounts/<name>/token`); accepted when signed by a known key, from
//! a known issuer, for one of the API's audiences, unexpired, and (with lookup) while the
//! account and what the token is bound to still exist with the same UIDs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::jwt::{SigningKey, VerifyingKey};
use crate::filters::UserInfo;

/// Clock skew allowed on `exp` and `nbf`, as upstream.
const LEEWAY: i64 = 60;

/// Signs tokens (`--service-account-signing-key-file`, the first `--service-account-issuer`).
pub struct TokenIssuer {
    /// The key.
    pub key: SigningKey,
    /// `iss`.
    pub issuer: String,
    /// The audiences a request without any gets.
    pub default_audiences: Vec<String>,
    /// `--service-account-max-token-expiration` (None: no limit).
    pub max_expiration: Option<Duration>,
}

/// Checks tokens.
pub struct TokenValidator {
    /// Keys that may have signed.
    pub keys: Vec<VerifyingKey>,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// `--api-audiences`.
    pub audiences: Vec<String>,
    /// `--service-account-lookup`.
    pub lookup: bool,
}

/// An object a token is bound to: (kind, name, uid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// `Pod`, `Secret` or `Node`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Namespace of the account.
    pub namespace: String,
    /// The account's name.
    pub name: String,
    /// The account's UID.
    pub uid: String,
    /// The object the token is bound to.
    pub bound: Option<Bound>,
    /// `jti`.
    pub id: String,
}

impl Claims {
    /// The user the token authenticates, as upstream names it.
    pub fn user(&self) -> UserInfo {
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(b) = &self.bound {
            let kind = b.kind.to_ascii_lowercase();
            extra.insert(
                format!("authentication.kubernetes.io/{kind}-name"),
                vec![b.name.clone()],
            );
            extra.insert(
                format!("authentication.kubernetes.io/{kind}-uid"),
                vec![b.uid.clone()],
            );
        }
        if !self.id.is_empty() {
            extra.insert(
                "authentication.kubernetes.io/credential-id".into(),
                vec![format!("JTI={}", self.id)],
            );
        }
        UserInfo {
            name: format!("system:serviceaccount:{}:{}", self.namespace, self.name),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", self.namespace),
                "system:authenticated".into(),
            ],
            uid: self.uid.clone(),
            extra,
        }
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl TokenIssuer {
    /// A signed token for the account, valid `seconds` from `now`: (token, expiry).
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
        bound: Option<&Bound>,
        now: i64,
    ) -> Result<(String, i64), String> {
        let exp = now + seconds;
        let mut k8s = json!({
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": uid},
        });
        if let Some(b) = bound {
            k8s[b.kind.to_ascii_lowercase()] = json!({"name": b.name, "uid": b.uid});
        }
        let audiences = if audiences.is_empty() {
            &self.default_audiences
        } else {
            audiences
        };
        let claims = json!({
            "aud": audiences,
            "exp": exp,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": k8s,
        });
        Ok((self.key.sign(&claims)?, exp))
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

impl TokenValidator {
    /// Whether `token` looks like a JWT this validator should judge (three dot-separated
    /// parts); other bearer tokens are left to other authenticators.
    pub fn is_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// The claims of a token signed by a known key, from a known issuer, for the API, and
    /// current at `now` (the store lookup is the caller's).
    pub fn check(&self, token: &str, now: i64) -> Result<Claims, String> {
        let c = super::jwt::verify(&self.keys, token)?;
        let iss = s(&c, "/iss");
        if !self.issuers.iter().any(|i| i == iss) {
            return Err(format!("token issuer {iss:?} is not accepted"));
        }
        let auds: Vec<&str> = match c.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !auds.iter().any(|a| self.audiences.iter().any(|x| x == a)) {
            return Err("token audiences are invalid".into());
        }
        let exp = c
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or("token has no expiry")?;
        if now > exp + LEEWAY {
            return Err("token has expired".into());
        }
        if let Some(nbf) = c.get("nbf").and_then(Value::as_i64)
            && now + LEEWAY < nbf
        {
            return Err("token is not valid yet".into());
        }
        let ns = s(&c, "/kubernetes.io/namespace");
        let name = s(&c, "/kubernetes.io/serviceaccount/name");
        if ns.is_empty()
            || name.is_empty()
            || s(&c, "/sub") != format!("system:serviceaccount:{ns}:{name}")
        {
            return Err("token names no service account".into());
        }
        let bound = ["pod", "secret", "node"].iter().find_map(|k| {
            let b = c.pointer(&format!("/kubernetes.io/{k}"))?;
            let kind = match *k {
                "pod" => "Pod",
                "secret" => "Secret",
                _ => "Node",
            };
            Some(Bound {
                kind: kind.into(),
                name: s(b, "/name").into(),
                uid: s(b, "/uid").into(),
            })
        });
        Ok(Claims {
            namespace: ns.into(),
            name: name.into(),
            uid: s(&c, "/kubernetes.io/serviceaccount/uid").into(),
            bound,
            id: s(&c, "/jti").into(),
        })
    }
}

/// Whether a looked-up object is the one a token names: there, same UID, not being deleted.
pub fn still_valid(obj: Option<&Value>, uid: &str, what: &str) -> Result<(), String> {
    let Some(o) = obj else {
        return Err(format!("{what} is gone"));
    };
    if s(o, "/metadata/uid") != uid {
        return Err(format!("{what} was recreated (the UID differs)"));
    }
    // A pod keeps its access through graceful termination: tokens stop a minute after the
    // deletion began, as upstream's.
    if let Some(t) = o
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        && t.as_second() < now() - LEEWAY
    {
        return Err(format!("{what} is being deleted"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TokenIssuer, TokenValidator) {
        let k = rcgen::KeyPair::generate().unwrap();
        let key = SigningKey::from_pem(k.serialize_pem().as_bytes()).unwrap();
        let vk = key.verifying_key();
        (
            TokenIssuer {
                key,
                issuer: "https://kubernetes.default.svc".into(),
                default_audiences: vec!["https://kubernetes.default.svc".into()],
                max_expiration: None,
            },
            TokenValidator {
                keys: vec![vk],
                issuers: vec!["https://kubernetes.default.svc".into()],
                audiences: vec!["https://kubernetes.default.svc".into()],
                lookup: true,
            },
        )
    }

    #[test]
    fn issued_tokens_check_and_name_their_user() {
        let (i, v) = pair();
        let pod = Bound {
            kind: "Pod".into(),
            name: "p".into(),
            uid: "pod-uid".into(),
        };
        let (t, exp) = i
            .issue("ns", "sa", "sa-uid", &[], 3600, Some(&pod), 1000)
            .unwrap();
        assert_eq!(exp, 4600);
        let c = v.check(&t, 1000).unwrap();
        assert_eq!(c.bound, Some(pod));
        let u = c.user();
        assert_eq!(u.name, "system:serviceaccount:ns:sa");
        assert_eq!(
            u.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
        assert_eq!(u.uid, "sa-uid");
        assert_eq!(u.extra["authentication.kubernetes.io/pod-name"], ["p"]);
        assert!(u.extra["authentication.kubernetes.io/credential-id"][0].starts_with("JTI="));
        // Expiry (with a minute of leeway), audience, issuer.
        assert!(v.check(&t, 4600 + 61).unwrap_err().contains("expired"));
        assert!(v.check(&t, 4600 + 59).is_ok());
        let (other, _) = i
            .issue("ns", "sa", "u", &["vault".to_string()], 600, None, 1000)
            .unwrap();
        assert!(v.check(&other, 1000).unwrap_err().contains("audiences"));
        let mut strict = pair().1;
        strict.keys = v.keys.clone();
        strict.issuers = vec!["https://elsewhere".into()];
        assert!(strict.check(&t, 1000).unwrap_err().contains("issuer"));
    }

    #[test]
    fn lookups_refuse_gone_recreated_and_deleting_objects() {
        let o = json!({"metadata": {"uid": "a"}});
        assert!(still_valid(Some(&o), "a", "pod").is_ok());
        assert!(still_valid(None, "a", "pod").unwrap_err().contains("gone"));
        assert!(
            still_valid(Some(&o), "b", "pod")
                .unwrap_err()
                .contains("recreated")
        );
        let d = json!({"metadata": {"uid": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}});
        assert!(
            still_valid(Some(&d), "a", "pod")
                .unwrap_err()
                .contains("deleted")
        );
        // Just begun: still valid for the grace of a minute.
        let soon = jiff::Timestamp::from_second(now()).unwrap().to_string();
        let d = json!({"metadata": {"uid": "a", "deletionTimestamp": soon}});
        assert!(still_valid(Some(&d), "a", "pod").is_ok());
    }
}
