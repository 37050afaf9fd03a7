//! The audit policy (`audit.k8s.io/v1` `Policy`, `--audit-policy-file`): the first rule that
//! matches a request decides its level (None, Metadata, Request, RequestResponse) and the stages
//! left out; a request no rule matches is not audited.

use serde::Deserialize;

use crate::filters::UserInfo;
use crate::request_info::RequestInfo;

/// How much of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    /// Nothing.
    None,
    /// User, verb, resource, response code, timestamps.
    Metadata,
    /// Also the request body.
    Request,
    /// Also the response body.
    RequestResponse,
}

impl Level {
    /// The name as events carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

/// A stage of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Stage {
    /// The request arrived (before the handler).
    RequestReceived,
    /// The response headers went out (long-running requests only).
    ResponseStarted,
    /// The response is complete.
    ResponseComplete,
    /// The handler panicked.
    Panic,
}

impl Stage {
    /// The name as events carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

/// A parsed policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_json::Value>,
}

/// What the policy says of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The level.
    pub level: Level,
    /// Stages not recorded.
    pub omit_stages: Vec<Stage>,
    /// Leave `managedFields` out of recorded objects.
    pub omit_managed_fields: bool,
}

impl Policy {
    /// Parses a policy file (YAML or JSON).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let p: Policy = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if p.kind != "Policy" || !matches!(p.api_version.as_str(), "audit.k8s.io/v1") {
            return Err(format!(
                "want apiVersion audit.k8s.io/v1, kind Policy; got {:?}, {:?}",
                p.api_version, p.kind
            ));
        }
        if p.rules.is_empty() {
            return Err("the policy has no rules".into());
        }
        Ok(p)
    }

    /// The decision for a request by `user`.
    pub fn decide(&self, user: &UserInfo, info: &RequestInfo) -> Decision {
        let Some(rule) = self.rules.iter().find(|r| r.matches(user, info)) else {
            return Decision {
                level: Level::None,
                omit_stages: Vec::new(),
                omit_managed_fields: false,
            };
        };
        let mut omit = self.omit_stages.clone();
        omit.extend(rule.omit_stages.iter().copied());
        Decision {
            level: rule.level,
            omit_stages: omit,
            omit_managed_fields: rule.omit_managed_fields.unwrap_or(self.omit_managed_fields),
        }
    }
}

impl Rule {
    fn matches(&self, user: &UserInfo, info: &RequestInfo) -> bool {
        if !self.users.is_empty() && !self.users.contains(&user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&info.verb) {
            return false;
        }
        if !self.resources.is_empty() || !self.namespaces.is_empty() {
            if !info.is_resource_request {
                return false;
            }
            if !self.namespaces.is_empty() && !self.namespaces.contains(&info.namespace) {
                return false;
            }
            if !self.resources.is_empty() && !self.resources.iter().any(|g| g.matches(info)) {
                return false;
            }
        }
        if !self.non_resource_urls.is_empty()
            && (info.is_resource_request
                || !self
                    .non_resource_urls
                    .iter()
                    .any(|u| crate::authz::rbac::url_matches(u, &info.path)))
        {
            return false;
        }
        true
    }
}

impl GroupResources {
    fn matches(&self, info: &RequestInfo) -> bool {
        if self.group != info.api_group {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        if !self.resource_names.is_empty() && !self.resource_names.contains(&info.name) {
            return false;
        }
        let combined = if info.subresource.is_empty() {
            info.resource.clone()
        } else {
            format!("{}/{}", info.resource, info.subresource)
        };
        self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!info.subresource.is_empty() && r.strip_prefix("*/") == Some(&info.subresource))
                || r.strip_suffix("/*") == Some(&info.resource)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
  verbs: ["watch"]
- level: None
  nonResourceURLs: ["/healthz*", "/version"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets", "configmaps"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["pods/*"]
  - group: "apps"
- level: Request
  userGroups: ["system:authenticated"]
  namespaces: ["prod"]
  omitStages: [ResponseStarted]
- level: Metadata
"#;

    fn info(method: &str, uri: &str) -> RequestInfo {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        crate::request_info::parse(&method.parse().unwrap(), path, query)
    }

    fn user(name: &str) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: vec!["system:authenticated".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let p = Policy::parse(POLICY).unwrap();
        let level = |u: &str, m: &str, path: &str| p.decide(&user(u), &info(m, path)).level;
        assert_eq!(
            level("system:kube-proxy", "GET", "/api/v1/services?watch=1"),
            Level::None
        );
        assert_eq!(
            level("system:kube-proxy", "GET", "/api/v1/services"),
            Level::Metadata
        );
        assert_eq!(level("a", "GET", "/healthz/etcd"), Level::None);
        assert_eq!(level("a", "GET", "/version"), Level::None);
        assert_eq!(
            level("a", "POST", "/api/v1/namespaces/prod/secrets"),
            Level::Metadata,
            "secrets stay at Metadata, before the namespace rule"
        );
        assert_eq!(
            level("a", "GET", "/api/v1/namespaces/x/pods/p/log"),
            Level::RequestResponse
        );
        // `pods/*` is the pods and each of their subresources, as upstream's checker reads it.
        assert_eq!(
            level("a", "GET", "/api/v1/namespaces/x/pods/p"),
            Level::RequestResponse
        );
        assert_eq!(
            level("a", "GET", "/api/v1/namespaces/x/services/s"),
            Level::Metadata
        );
        assert_eq!(
            level("a", "PUT", "/apis/apps/v1/namespaces/x/deployments/d"),
            Level::RequestResponse
        );
        let d = p.decide(
            &user("a"),
            &info("POST", "/api/v1/namespaces/prod/services"),
        );
        assert_eq!(d.level, Level::Request);
        assert_eq!(
            d.omit_stages,
            [Stage::RequestReceived, Stage::ResponseStarted]
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Policy::parse("apiVersion: v1\nkind: Policy\nrules: [{level: None}]").is_err());
        assert!(Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: []").is_err());
        assert!(
            Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Loud}]")
                .is_err()
        );
        assert!(
            Policy::parse(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: None, colour: red}]"
            )
            .is_err()
        );
    }
}
