//! Bootstrap tokens (`--enable-bootstrap-token-auth`), as upstream's: a bearer token
//! `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`) is checked against the Secret
//! `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token`, which must say
//! `usage-bootstrap-authentication: "true"`, hold the same `token-id` and `token-secret`, not
//! have passed its `expiration` and not be being deleted. The user is `system:bootstrap:<id>`
//! in `system:bootstrappers` and the secret's `auth-extra-groups`.
//!
//! A token that fails any check is simply not authenticated, without saying why to the client.

use serde_json::Value;

use crate::filters::UserInfo;

/// The namespace of bootstrap token secrets.
pub const NAMESPACE: &str = "kube-system";
/// The type of bootstrap token secrets.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The group every bootstrap token user is in.
pub const GROUP: &str = "system:bootstrappers";

/// `(id, secret)` of a well-formed bootstrap token.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The name of the secret of token `id`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// A value of the secret's `data` (base64), decoded.
fn data(secret: &Value, key: &str) -> Option<String> {
    let raw = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, raw).ok()?;
    String::from_utf8(bytes).ok()
}

/// Equal without revealing where they differ by timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Whether `g` may be an extra group: `system:bootstrappers:` and then `[a-z0-9:-]`, ending in
/// `[a-z0-9]`, at most 256 characters after the prefix.
fn valid_group(g: &str) -> bool {
    let Some(rest) = g.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 256
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
        && rest
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The user of token `(id, token_secret)` given its secret (None when there is none), or why
/// it is not accepted.
pub fn user_of(
    secret: Option<&Value>,
    id: &str,
    token_secret: &str,
    now: jiff::Timestamp,
) -> Result<UserInfo, String> {
    let name = secret_name(id);
    let s = secret.ok_or_else(|| format!("no secret {NAMESPACE}/{name}"))?;
    if s.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Err(format!("secret {name} is being deleted"));
    }
    if s.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
        return Err(format!("secret {name} is not of type {SECRET_TYPE}"));
    }
    let stored = data(s, "token-secret").unwrap_or_default();
    if !same(&stored, token_secret) {
        return Err(format!("secret {name} holds another token secret"));
    }
    if data(s, "token-id").as_deref() != Some(id) {
        return Err(format!("secret {name} holds another token id"));
    }
    if let Some(exp) = data(s, "expiration") {
        let at: jiff::Timestamp = exp
            .parse()
            .map_err(|_| format!("secret {name} has an unreadable expiration {exp:?}"))?;
        if now >= at {
            return Err(format!("secret {name} expired at {exp}"));
        }
    }
    if data(s, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!("secret {name} is not for authentication"));
    }
    let mut groups = vec![GROUP.to_string()];
    if let Some(extra) = data(s, "auth-extra-groups") {
        for g in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if !valid_group(g) {
                return Err(format!("secret {name} has an invalid extra group {g:?}"));
            }
            if !groups.iter().any(|x| x == g) {
                groups.push(g.to_string());
            }
        }
    }
    Ok(UserInfo {
        name: format!("system:bootstrap:{id}"),
        groups,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
    }

    fn secret(fields: &[(&str, &str)]) -> Value {
        let data: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), json!(b64(v))))
            .collect();
        json!({"metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
               "type": SECRET_TYPE, "data": data})
    }

    #[test]
    fn tokens_have_upstreams_shape() {
        assert_eq!(
            parse("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcdeff",
            "abcdef.0123456789abcde_",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_are_checked_as_upstream() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let good = [
            ("token-id", "abcdef"),
            ("token-secret", "0123456789abcdef"),
            ("usage-bootstrap-authentication", "true"),
            (
                "auth-extra-groups",
                "system:bootstrappers:worker,system:bootstrappers:a-b",
            ),
            ("expiration", "2026-01-02T00:00:00Z"),
        ];
        let u = user_of(Some(&secret(&good)), "abcdef", "0123456789abcdef", now).unwrap();
        assert_eq!(u.name, "system:bootstrap:abcdef");
        assert_eq!(
            u.groups,
            [
                "system:bootstrappers",
                "system:bootstrappers:worker",
                "system:bootstrappers:a-b"
            ]
        );
        let refused = |s: &Value, secret: &str, why: &str| {
            let e = user_of(Some(s), "abcdef", secret, now).unwrap_err();
            assert!(e.contains(why), "{e}");
        };
        refused(&secret(&good), "0123456789abcdee", "another token secret");
        let with = |k: &str, v: &str| {
            let mut f = good.to_vec();
            f.retain(|(x, _)| *x != k);
            if !v.is_empty() {
                f.push((k, v));
            }
            secret(&f)
        };
        refused(
            &with("expiration", "2025-12-31T00:00:00Z"),
            "0123456789abcdef",
            "expired",
        );
        refused(
            &with("usage-bootstrap-authentication", ""),
            "0123456789abcdef",
            "not for authentication",
        );
        refused(
            &with("auth-extra-groups", "system:masters"),
            "0123456789abcdef",
            "invalid extra group",
        );
        refused(&with("token-id", "zzzzzz"), "0123456789abcdef", "token id");
        let mut typed = secret(&good);
        typed["type"] = json!("Opaque");
        refused(&typed, "0123456789abcdef", "type");
        let mut deleting = secret(&good);
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        refused(&deleting, "0123456789abcdef", "being deleted");
        assert!(user_of(None, "abcdef", "0123456789abcdef", now).is_err());
    }
}
