//! Authentication, as kube-apiserver's union of authenticators, asked in order: the
//! authenticating proxy's headers (`--requestheader-*`, for a client with a proxy
//! certificate), the client certificate (CN = user, O = groups), then for a bearer token the
//! static token file (`--token-auth-file`), service-account tokens, bootstrap tokens
//! (`--enable-bootstrap-token-auth`) and the token webhook
//! (`--authentication-token-webhook-config-file`), the first that accepts it winning; then
//! anonymous when `--anonymous-auth` allows it. A bearer token that no authenticator accepts is a
//! 401, never anonymous. Every authenticated user is in `system:authenticated`.

pub mod bootstrap;
pub use keelson_jwt as jwt;
pub mod requestheader;
pub mod serviceaccount;
pub mod webhook;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value;

use crate::config::Config;
use crate::filters::{PeerIdentity, UserInfo};
use crate::registry::Registry;
use requestheader::RequestHeader;
use serviceaccount::{TokenIssuer, TokenValidator};
use webhook::TokenWebhook;

/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";

/// The authenticators.
pub struct Authenticator {
    anonymous: bool,
    tokens: HashMap<String, UserInfo>,
    service_accounts: Option<TokenValidator>,
    bootstrap_tokens: bool,
    request_header: Option<RequestHeader>,
    webhook: Option<TokenWebhook>,
    /// For service-account and bootstrap-token lookups.
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
        let groups: Vec<String> = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
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

/// `--api-audiences`, by default the service-account issuers (as upstream).
pub fn api_audiences(config: &Config) -> Vec<String> {
    if config.api_audiences.is_empty() {
        config.service_account_issuer.clone()
    } else {
        config.api_audiences.clone()
    }
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
    let audiences = api_audiences(config);
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
            bootstrap_tokens: false,
            request_header: None,
            webhook: None,
            registry,
        }
    }

    /// Client certificates and anonymous only.
    pub fn certificates_only(anonymous: bool) -> Self {
        Self::new(anonymous, HashMap::new(), None, None)
    }

    /// Also accepts bootstrap tokens.
    pub fn with_bootstrap_tokens(mut self) -> Self {
        self.bootstrap_tokens = true;
        self
    }

    /// Also accepts the users an authenticating proxy names.
    pub fn with_request_header(mut self, rh: RequestHeader) -> Self {
        self.request_header = Some(rh);
        self
    }

    /// Also asks a token webhook.
    pub fn with_webhook(mut self, w: TokenWebhook) -> Self {
        self.webhook = Some(w);
        self
    }

    /// The user of a request, or why there is none. The credentials that authenticated it
    /// (the Authorization header, the proxy's headers) are removed from `headers`, as upstream.
    pub async fn authenticate(
        &self,
        peer: &PeerIdentity,
        headers: &mut HeaderMap,
    ) -> Result<UserInfo, Unauthenticated> {
        let mut user = self.find(peer, headers).await?;
        if user.name != ANONYMOUS && !user.groups.iter().any(|g| g == AUTHENTICATED) {
            user.groups.push(AUTHENTICATED.into());
        }
        Ok(user)
    }

    async fn find(
        &self,
        peer: &PeerIdentity,
        headers: &mut HeaderMap,
    ) -> Result<UserInfo, Unauthenticated> {
        if let Some(rh) = &self.request_header
            && peer.front_proxy
            && let Some(u) = rh.user(headers)
        {
            rh.clear(headers);
            return Ok(u);
        }
        if let Some(cn) = peer.common_name.as_ref().filter(|c| !c.is_empty()) {
            return Ok(UserInfo {
                name: cn.clone(),
                groups: peer.organizations.clone(),
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
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if let Some(token) = bearer {
            let user = self.token(&token).await?;
            headers.remove(http::header::AUTHORIZATION);
            return Ok(user);
        }
        if peer.unusable_certificate {
            // As upstream's x509 authenticator, whose error a failing union does not pass on
            // to anonymous.
            return Err(Unauthenticated(
                "the client certificate names no user".into(),
            ));
        }
        if self.anonymous {
            return Ok(UserInfo {
                name: ANONYMOUS.into(),
                groups: vec!["system:unauthenticated".into()],
                ..Default::default()
            });
        }
        Err(Unauthenticated("no credentials".into()))
    }

    /// The token authenticators in upstream's order; the first that accepts the token wins.
    async fn token(&self, token: &str) -> Result<UserInfo, Unauthenticated> {
        if let Some(u) = self.tokens.get(token) {
            return Ok(u.clone());
        }
        let mut why = Vec::new();
        if let Some(v) = &self.service_accounts
            && TokenValidator::is_jwt(token)
        {
            match self.service_account(v, token).await {
                Ok(u) => return Ok(u),
                Err(e) => why.push(e.0),
            }
        }
        if self.bootstrap_tokens
            && let Some((id, secret)) = bootstrap::parse(token)
        {
            let s = match &self.registry {
                Some((registry, cache)) => {
                    bootstrap_secret(registry, cache, &bootstrap::secret_name(id)).await
                }
                None => None,
            };
            match bootstrap::user_of(s.as_ref(), id, secret, jiff::Timestamp::now()) {
                Ok(u) => return Ok(u),
                Err(e) => why.push(e),
            }
        }
        if let Some(w) = &self.webhook {
            match w.authenticate(token).await {
                Ok(u) => return Ok(u),
                Err(e) => why.push(e),
            }
        }
        if why.is_empty() {
            why.push("invalid bearer token".into());
        }
        Err(Unauthenticated(why.join("; ")))
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

/// The anonymous user.
pub const ANONYMOUS: &str = "system:anonymous";

/// A bootstrap token's secret. Anyone can send a well-formed token, so once the secrets'
/// watch cache is ready it alone answers (a miss is no secret), as upstream's lister does;
/// the store is read only before that.
async fn bootstrap_secret(
    registry: &Registry,
    cache: &crate::cache::Cache,
    name: &str,
) -> Option<Value> {
    let res = crate::resources::find("", "v1", "secrets")?;
    match cache.get(res).filter(|c| c.is_ready()) {
        Some(c) => c.peek(bootstrap::NAMESPACE, name),
        None => registry.get(res, bootstrap::NAMESPACE, name).await.ok(),
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
        assert_eq!(t["abc"].groups, ["devs", "ops"]);
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
        let mut good = h("Bearer good");
        let alice = a.authenticate(&none, &mut good).await.unwrap();
        assert_eq!(
            (alice.name.as_str(), alice.groups.as_slice()),
            ("alice", ["system:authenticated".to_string()].as_slice())
        );
        assert!(good.is_empty(), "the token is not passed on");
        let mut bad = h("Bearer bad");
        assert!(a.authenticate(&none, &mut bad).await.is_err());
        assert_eq!(bad.len(), 1);
        let anon = a.authenticate(&none, &mut HeaderMap::new()).await.unwrap();
        assert_eq!(
            (anon.name.as_str(), anon.groups.as_slice()),
            (
                "system:anonymous",
                ["system:unauthenticated".to_string()].as_slice()
            )
        );
        let cert = PeerIdentity {
            common_name: Some("carol".into()),
            organizations: vec!["g".into()],
            ..Default::default()
        };
        assert_eq!(
            a.authenticate(&cert, &mut h("Bearer bad"))
                .await
                .unwrap()
                .groups,
            ["g", "system:authenticated"]
        );
    }

    #[tokio::test]
    async fn proxies_speak_for_users_only_with_a_proxy_certificate() {
        let a = Authenticator::certificates_only(false).with_request_header(RequestHeader {
            username: vec!["X-Remote-User".into()],
            group: vec!["X-Remote-Group".into()],
            ..Default::default()
        });
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "dave".parse().unwrap());
        h.insert("x-remote-group", "devs".parse().unwrap());
        // A client certificate of the client CA is its own user; the headers stay.
        let client = PeerIdentity {
            common_name: Some("carol".into()),
            ..Default::default()
        };
        assert_eq!(
            a.authenticate(&client, &mut h.clone()).await.unwrap().name,
            "carol"
        );
        // Without a certificate the headers mean nothing.
        assert!(
            a.authenticate(&PeerIdentity::default(), &mut h.clone())
                .await
                .is_err()
        );
        let proxy = PeerIdentity {
            front_proxy: true,
            unusable_certificate: true,
            ..Default::default()
        };
        let mut sent = h.clone();
        let u = a.authenticate(&proxy, &mut sent).await.unwrap();
        assert_eq!(u.name, "dave");
        assert_eq!(u.groups, ["devs", "system:authenticated"]);
        assert!(sent.is_empty());
        // A proxy that names nobody is not a user itself, nor anonymous.
        let anonymous_too =
            Authenticator::certificates_only(true).with_request_header(RequestHeader {
                username: vec!["X-Remote-User".into()],
                ..Default::default()
            });
        for a in [&a, &anonymous_too] {
            assert!(a.authenticate(&proxy, &mut HeaderMap::new()).await.is_err());
        }
    }
}
