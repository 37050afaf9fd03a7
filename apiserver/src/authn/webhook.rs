//! The webhook token authenticator (`--authentication-token-webhook-config-file`): a bearer
//! token no other authenticator accepts is sent to the webhook in an
//! `authentication.k8s.io/v1` TokenReview; `status.authenticated` and `status.user` answer.
//!
//! As upstream:
//! - With API audiences, the review asks for them (`spec.audiences`) and an answer naming
//!   audiences must share one with them.
//! - Answers, accepting or refusing, are kept for `--authentication-token-webhook-cache-ttl`
//!   (default 2m) by a digest of the token; a webhook that cannot be reached is asked again
//!   next time.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest as _;

use crate::filters::UserInfo;
use crate::webhook::remote::{Remote, TtlCache};

/// The webhook and its settings.
pub struct TokenWebhook {
    remote: Remote,
    api_version: String,
    ttl: Duration,
    audiences: Vec<String>,
    cache: TtlCache<[u8; 32], Result<UserInfo, String>>,
}

impl TokenWebhook {
    /// The webhook of the config file; `version` is `v1` or `v1beta1`, `audiences` the API's.
    pub fn new(
        config_file: &std::path::Path,
        version: &str,
        ttl: Duration,
        audiences: Vec<String>,
    ) -> Result<Self, String> {
        if !matches!(version, "v1" | "v1beta1") {
            return Err(format!(
                "--authentication-token-webhook-version: {version:?} is not v1 or v1beta1"
            ));
        }
        Ok(TokenWebhook {
            remote: Remote::from_kubeconfig(
                config_file,
                "--authentication-token-webhook-config-file",
            )?,
            api_version: format!("authentication.k8s.io/{version}"),
            ttl,
            audiences,
            cache: TtlCache::default(),
        })
    }

    /// The user of `token`, or why the webhook does not accept it.
    pub async fn authenticate(&self, token: &str) -> Result<UserInfo, String> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(answer) = self.cache.get(&key) {
            return answer;
        }
        let mut spec = json!({ "token": token });
        if !self.audiences.is_empty() {
            spec["audiences"] = json!(self.audiences);
        }
        let review = json!({"apiVersion": self.api_version, "kind": "TokenReview", "spec": spec});
        let answer = self.remote.post(&review).await?;
        let result = self.judge(&answer);
        self.cache.put(key, result.clone(), self.ttl);
        result
    }

    fn judge(&self, review: &Value) -> Result<UserInfo, String> {
        let status = review.get("status").cloned().unwrap_or(Value::Null);
        if status.get("authenticated").and_then(Value::as_bool) != Some(true) {
            let why = status
                .get("error")
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty())
                .unwrap_or("the webhook did not authenticate the token");
            return Err(why.to_string());
        }
        let answered: Vec<&str> = status
            .get("audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !self.audiences.is_empty()
            && !answered.is_empty()
            && !answered
                .iter()
                .any(|a| self.audiences.iter().any(|w| w == a))
        {
            return Err(format!(
                "token audiences {answered:?} is invalid for the target audiences {:?}",
                self.audiences
            ));
        }
        let user = status.get("user").cloned().unwrap_or(Value::Null);
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let name = user
            .get("username")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            return Err("the webhook authenticated the token without a username".into());
        }
        Ok(UserInfo {
            name,
            uid: user
                .get("uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            groups: strings(user.get("groups")),
            extra: user
                .get("extra")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), strings(Some(v))))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}
