//! The webhook authorizer (`--authorization-mode=...,Webhook` with
//! `--authorization-webhook-config-file`): each question goes to the webhook as an
//! `authorization.k8s.io/v1` SubjectAccessReview; `status.allowed` allows, `status.denied`
//! denies outright, anything else is no opinion (the next authorizer is asked). A webhook
//! that cannot be asked makes the request fail with a 500 unless another authorizer allows or
//! denies it, as upstream.
//!
//! As upstream, answers are kept by question: allowed ones for
//! `--authorization-webhook-cache-authorized-ttl` (5m), others for
//! `--authorization-webhook-cache-unauthorized-ttl` (30s); a failure is not kept.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{Attributes, Decision};
use crate::webhook::remote::{Remote, TtlCache};

/// The webhook and its settings.
pub struct WebhookAuthorizer {
    remote: Remote,
    api_version: String,
    allowed_ttl: Duration,
    refused_ttl: Duration,
    cache: TtlCache<String, Decision>,
}

impl WebhookAuthorizer {
    /// The webhook of the config file; `version` is `v1` or `v1beta1`.
    pub fn new(
        config_file: &std::path::Path,
        version: &str,
        allowed_ttl: Duration,
        refused_ttl: Duration,
    ) -> Result<Self, String> {
        if !matches!(version, "v1" | "v1beta1") {
            return Err(format!(
                "--authorization-webhook-version: {version:?} is not v1 or v1beta1"
            ));
        }
        Ok(WebhookAuthorizer {
            remote: Remote::from_kubeconfig(config_file, "--authorization-webhook-config-file")?,
            api_version: format!("authorization.k8s.io/{version}"),
            allowed_ttl,
            refused_ttl,
            cache: TtlCache::default(),
        })
    }

    /// The review's `spec` for a question (empty fields left out, as upstream sends them);
    /// `v1beta1` names the groups `group`.
    pub fn spec(a: &Attributes, v1beta1: bool) -> Value {
        let mut spec = Map::new();
        let put = |m: &mut Map<String, Value>, k: &str, v: &str| {
            if !v.is_empty() {
                m.insert(k.into(), json!(v));
            }
        };
        if a.resource_request {
            let mut ra = Map::new();
            put(&mut ra, "namespace", a.namespace);
            put(&mut ra, "verb", a.verb);
            put(&mut ra, "group", a.api_group);
            put(&mut ra, "version", a.api_version);
            put(&mut ra, "resource", a.resource);
            put(&mut ra, "subresource", a.subresource);
            put(&mut ra, "name", a.name);
            spec.insert("resourceAttributes".into(), Value::Object(ra));
        } else {
            let mut nra = Map::new();
            put(&mut nra, "path", a.path);
            put(&mut nra, "verb", a.verb);
            spec.insert("nonResourceAttributes".into(), Value::Object(nra));
        }
        put(&mut spec, "user", &a.user.name);
        put(&mut spec, "uid", &a.user.uid);
        if !a.user.groups.is_empty() {
            let key = if v1beta1 { "group" } else { "groups" };
            spec.insert(key.into(), json!(a.user.groups));
        }
        if !a.user.extra.is_empty() {
            spec.insert("extra".into(), json!(a.user.extra));
        }
        Value::Object(spec)
    }

    /// The webhook's decision on `a`, or why it could not be asked.
    pub async fn authorize(&self, a: &Attributes<'_>) -> Result<Decision, String> {
        let spec = Self::spec(a, self.api_version.ends_with("v1beta1"));
        let key = spec.to_string();
        if let Some(d) = self.cache.get(&key) {
            return Ok(d);
        }
        let review =
            json!({"apiVersion": self.api_version, "kind": "SubjectAccessReview", "spec": spec});
        let answer = self.remote.post(&review).await.map_err(|e| {
            tracing::warn!(error = %e, "the authorization webhook could not be asked");
            format!("the authorization webhook failed: {e}")
        })?;
        let d = decide(&answer);
        let ttl = match d {
            Decision::Allow(_) => self.allowed_ttl,
            _ => self.refused_ttl,
        };
        self.cache.put(key, d.clone(), ttl);
        Ok(d)
    }
}

/// The decision a SubjectAccessReview answer carries.
fn decide(review: &Value) -> Decision {
    let status = review.get("status");
    let flag = |k: &str| {
        status
            .and_then(|s| s.get(k))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let text = |k: &str| {
        status
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut reason = text("reason");
    let eval = text("evaluationError");
    if !eval.is_empty() {
        reason = if reason.is_empty() {
            eval
        } else {
            format!("{reason}: {eval}")
        };
    }
    if flag("allowed") {
        Decision::Allow(reason)
    } else if flag("denied") {
        Decision::Deny(reason)
    } else {
        Decision::NoOpinion(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::UserInfo;

    #[test]
    fn reviews_ask_what_upstream_asks() {
        let user = UserInfo {
            name: "alice".into(),
            groups: vec!["devs".into(), "system:authenticated".into()],
            ..Default::default()
        };
        let a = Attributes::resource(&user, "get", "ns", "apps", "deployments", "scale", "web");
        assert_eq!(
            WebhookAuthorizer::spec(&a, false),
            json!({"resourceAttributes": {"namespace": "ns", "verb": "get", "group": "apps",
                    "version": "*", "resource": "deployments", "subresource": "scale", "name": "web"},
                   "user": "alice", "groups": ["devs", "system:authenticated"]})
        );
        let path = Attributes {
            path: "/healthz",
            resource_request: false,
            ..Attributes::resource(&user, "get", "", "", "", "", "")
        };
        assert_eq!(
            WebhookAuthorizer::spec(&path, false)["nonResourceAttributes"],
            json!({"path": "/healthz", "verb": "get"})
        );
        // v1beta1 calls them `group`.
        assert_eq!(
            WebhookAuthorizer::spec(&a, true)["group"],
            json!(["devs", "system:authenticated"])
        );
    }

    #[test]
    fn answers_decide() {
        assert_eq!(
            decide(&json!({"status": {"allowed": true, "reason": "ok"}})),
            Decision::Allow("ok".into())
        );
        assert_eq!(
            decide(&json!({"status": {"allowed": false, "denied": true, "reason": "no"}})),
            Decision::Deny("no".into())
        );
        assert_eq!(
            decide(&json!({"status": {"allowed": false, "evaluationError": "bad"}})),
            Decision::NoOpinion("bad".into())
        );
        assert_eq!(decide(&json!({})), Decision::NoOpinion(String::new()));
    }
}
