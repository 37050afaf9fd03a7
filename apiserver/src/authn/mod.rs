//! Authentication, as kube-apiserver's union of authenticators, asked in order: the client
//! certificate (CN = user, O = groups), a static token file (`--token-auth-file`),
//! service-account tokens, then anonymous when `--anonymous-auth` allows it. A bearer token
//! that no authenticator accepts is a 401, never anonymous.

pub mod jwt;
pub mod serviceaccount;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value;

use crate::config::Config;
use crate::filters::{PeerIdentity, UserInfo};
use crate::registry::Registry;
use serviceaccount::{TokenIssuer, TokenValidator};

/// The authenticators.
pub struct Authenticator {
    anonymous: bool,
    tokens: HashMap<String, UserInfo>,
    service_accounts: Option<TokenValidator>,
    /// For service-account lookups.
    registry: Option<(Registry, Arc<crate::cache::Cache>)>,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unauthenticated(pub String);

/// Reads a `--token-auth-file`: `token,user,uid[,"group1,group2"]` per line.
pub fn read_token_file(path: &Path) -> Result<HashMap<String, UserInfo>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-auth-file {}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut fields: Vec<String> = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for ch in line.chars() {
            match ch {
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
            return Err(format!(
                "--token-auth-file {} line {}: want token,user,uid[,\"groups\"]",
                path.display(),
                i + 1
            ));
        }
        let mut groups: Vec<String> = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        groups.push("system:authenticated".into());
        out.insert(
            fields[0].clone(),
            UserInfo {
                name: fields[1].clone(),
                groups,
                uid: fields[2].clone(),
                ..Default::default()
            },
        );
    }
    Ok(out)
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// The token issuer and validator of the service-account flags: `(issuer, validator)`, either
/// absent when the flags are not set. Refuses incomplete or unusable settings.
pub fn service_accounts(
    config: &Config,
) -> Result<(Option<TokenIssuer>, Option<TokenValidator>), String> {
    let issuers = &config.service_account_issuer;
    let signing = config.service_account_signing_key_file.as_deref();
    if issuers.is_empty() {
        if signing.is_some() || !config.service_account_key_file.is_empty() {
            return Err(
                "--service-account-issuer is required with --service-account-signing-key-file or --service-account-key-file"
                    .into(),
            );
        }
        return Ok((None, None));
    }
    let audiences = if config.api_audiences.is_empty() {
        issuers.clone()
    } else {
        config.api_audiences.clone()
    };
    let issuer = match signing {
        Some(p) => Some(TokenIssuer {
            key: jwt::SigningKey::from_pem(&read(p, "--service-account-signing-key-file")?)
                .map_err(|e| format!("--service-account-signing-key-file {}: {e}", p.display()))?,
            issuer: issuers[0].clone(),
            default_audiences: audiences.clone(),
            max_expiration: (!config.service_account_max_token_expiration.is_zero())
                .then_some(config.service_account_max_token_expiration),
        }),
        None => None,
    };
    let mut keys = Vec::new();
    for p in &config.service_account_key_file {
        keys.extend(
            jwt::verifying_keys(&read(p, "--service-account-key-file")?)
                .map_err(|e| format!("--service-account-key-file {}: {e}", p.display()))?,
        );
    }
    if keys.is_empty() {
        match &issuer {
            Some(i) => keys.push(i.key.verifying_key()),
            None => {
                return Err(
                    "--service-account-issuer needs --service-account-key-file or --service-account-signing-key-file"
                        .into(),
                );
            }
        }
    }
    Ok((
        issuer,
        Some(TokenValidator {
            keys,
            issuers: issuers.clone(),
            audiences,
            lookup: config.service_account_lookup,
        }),
    ))
}

impl Authenticator {
    /// The authenticators of the flags.
    pub fn new(
        anonymous: bool,
        tokens: HashMap<String, UserInfo>,
        service_accounts: Option<TokenValidator>,
        registry: Option<(Registry, Arc<crate::cache::Cache>)>,
    ) -> Self {
        Authenticator {
            anonymous,
            tokens,
            service_accounts,
            registry,
        }
    }

    /// Client certificates and anonymous only.
    pub fn certificates_only(anonymous: bool) -> Self {
        Self::new(anonymous, HashMap::new(), None, None)
    }

    /// The user of a request, or why there is none.
    pub async fn authenticate(
        &self,
        peer: &PeerIdentity,
        headers: &HeaderMap,
    ) -> Result<UserInfo, Unauthenticated> {
        if let Some(cn) = peer.common_name.as_ref().filter(|c| !c.is_empty()) {
            let mut groups = peer.organizations.clone();
            groups.push("system:authenticated".into());
            return Ok(UserInfo {
                name: cn.clone(),
                groups,
                ..Default::default()
            });
        }
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty());
        if let Some(token) = bearer {
            if let Some(u) = self.tokens.get(token) {
                return Ok(u.clone());
            }
            if let Some(v) = &self.service_accounts
                && TokenValidator::is_jwt(token)
            {
                return self.service_account(v, token).await;
            }
            return Err(Unauthenticated("invalid bearer token".into()));
        }
        if self.anonymous {
            return Ok(UserInfo {
                name: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
                ..Default::default()
            });
        }
        Err(Unauthenticated("no credentials".into()))
    }

    async fn service_account(
        &self,
        v: &TokenValidator,
        token: &str,
    ) -> Result<UserInfo, Unauthenticated> {
        let claims = v
            .check(token, serviceaccount::now())
            .map_err(Unauthenticated)?;
        if v.lookup
            && let Some((registry, cache)) = &self.registry
        {
            let sa = lookup(
                registry,
                cache,
                "serviceaccounts",
                &claims.namespace,
                &claims.name,
            )
            .await;
            serviceaccount::still_valid(sa.as_ref(), &claims.uid, "the service account")
                .map_err(Unauthenticated)?;
            if let Some(b) = &claims.bound {
                let (resource, ns) = match b.kind.as_str() {
                    "Pod" => ("pods", claims.namespace.as_str()),
                    "Secret" => ("secrets", claims.namespace.as_str()),
                    _ => ("nodes", ""),
                };
                let o = lookup(registry, cache, resource, ns, &b.name).await;
                serviceaccount::still_valid(o.as_ref(), &b.uid, &format!("the bound {}", b.kind))
                    .map_err(Unauthenticated)?;
            }
        }
        Ok(claims.user())
    }
}

/// An object from the watch cache, or from the store when the cache does not have it (yet).
pub async fn lookup(
    registry: &Registry,
    cache: &crate::cache::Cache,
    resource: &str,
    ns: &str,
    name: &str,
) -> Option<Value> {
    let res = crate::resources::find("", "v1", resource)?;
    if let Some(v) = cache.get(res).and_then(|c| c.peek(ns, name)) {
        return Some(v);
    }
    registry.get(res, ns, name).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.csv");
        std::fs::write(&p, "# comment\nabc,alice,1,\"devs,ops\"\ndef,bob,2\n").unwrap();
        let t = read_token_file(&p).unwrap();
        assert_eq!(t["abc"].name, "alice");
        assert_eq!(t["abc"].groups, ["devs", "ops", "system:authenticated"]);
        assert_eq!(t["def"].uid, "2");
        std::fs::write(&p, "onlytoken\n").unwrap();
        assert!(read_token_file(&p).unwrap_err().contains("line 1"));
    }

    #[tokio::test]
    async fn bearer_tokens_that_nobody_accepts_are_refused_not_anonymous() {
        let mut tokens = HashMap::new();
        tokens.insert(
            "good".to_string(),
            UserInfo {
                name: "alice".into(),
                ..Default::default()
            },
        );
        let a = Authenticator::new(true, tokens, None, None);
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        let none = PeerIdentity::default();
        assert_eq!(
            a.authenticate(&none, &h("Bearer good")).await.unwrap().name,
            "alice"
        );
        assert!(a.authenticate(&none, &h("Bearer bad")).await.is_err());
        assert_eq!(
            a.authenticate(&none, &HeaderMap::new()).await.unwrap().name,
            "system:anonymous"
        );
        let cert = PeerIdentity {
            common_name: Some("carol".into()),
            organizations: vec!["g".into()],
        };
        assert_eq!(
            a.authenticate(&cert, &h("Bearer bad"))
                .await
                .unwrap()
                .groups,
            ["g", "system:authenticated"]
        );
    }
}
