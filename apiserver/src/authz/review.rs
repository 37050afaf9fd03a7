//! The review resources, created and answered on the spot, never stored:
//! `authorization.k8s.io/v1` SubjectAccessReview, LocalSubjectAccessReview,
//! SelfSubjectAccessReview (`kubectl auth can-i`), SelfSubjectRulesReview
//! (`kubectl auth can-i --list`), and `authentication.k8s.io/v1` SelfSubjectReview
//! (`kubectl auth whoami`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Attributes, Authorizer, Decision, UserInfo};
use crate::resources::Resource;
use crate::status::{ApiError, ApiResult, Cause};

fn invalid(kind: &str, field: &str, value: &Value, message: &str) -> ApiError {
    ApiError::invalid(
        "",
        kind,
        "",
        vec![Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {value}: {message}"),
        )],
    )
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// The user a SubjectAccessReview asks about.
fn subject(spec: &Value) -> UserInfo {
    use super::rbac::{string_list, strings};
    let extra: BTreeMap<String, Vec<String>> = spec
        .get("extra")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), string_list(Some(v))))
                .collect()
        })
        .unwrap_or_default();
    UserInfo {
        name: str_at(spec, "/user").to_string(),
        groups: strings(spec, "groups"),
        uid: str_at(spec, "/uid").to_string(),
        extra,
    }
}

/// Answers a review created by `requester` (already decoded and checked against its schema).
pub async fn answer(
    authz: &Authorizer,
    res: &Resource,
    namespace: &str,
    requester: &UserInfo,
    mut obj: Value,
) -> ApiResult<Value> {
    let kind = res.kind;
    match res.resource {
        "selfsubjectreviews" => {
            let mut info = json!({"username": requester.name, "groups": requester.groups});
            if !requester.uid.is_empty() {
                info["uid"] = json!(requester.uid);
            }
            if !requester.extra.is_empty() {
                info["extra"] = json!(requester.extra);
            }
            obj["status"] = json!({ "userInfo": info });
            Ok(obj)
        }
        "selfsubjectrulesreviews" => {
            let ns = str_at(&obj, "/spec/namespace").to_string();
            let rules = authz.rules_for(requester, &ns);
            let json = |rs: &[super::rbac::Rule]| -> Vec<Value> {
                rs.iter().map(super::rbac::Rule::to_json).collect()
            };
            let (resource_rules, non_resource_rules) =
                (json(&rules.resource_rules), json(&rules.non_resource_rules));
            obj["status"] = json!({
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                "incomplete": rules.incomplete,
            });
            Ok(obj)
        }
        "selfsubjectaccessreviews" | "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
            let ra = spec.get("resourceAttributes").filter(|v| !v.is_null());
            let nra = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
            if ra.is_some() == nra.is_some() {
                return Err(invalid(
                    kind,
                    "spec.resourceAttributes",
                    &json!(ra),
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                ));
            }
            let user = if res.resource == "selfsubjectaccessreviews" {
                requester.clone()
            } else {
                let u = subject(&spec);
                if u.name.is_empty() && u.groups.is_empty() {
                    return Err(invalid(
                        kind,
                        "spec.user",
                        &json!(""),
                        "at least one of user or group must be specified",
                    ));
                }
                u
            };
            let mut ra = ra.cloned();
            if res.resource == "localsubjectaccessreviews" {
                let Some(ra) = ra.as_mut() else {
                    return Err(invalid(
                        kind,
                        "spec.nonResourceAttributes",
                        &json!(nra),
                        "disallowed on this kind of request",
                    ));
                };
                match str_at(ra, "/namespace") {
                    "" => ra["namespace"] = json!(namespace),
                    n if n != namespace => {
                        return Err(ApiError::bad_request(format!(
                            "spec.resourceAttributes.namespace must match namespace: {namespace}"
                        )));
                    }
                    _ => {}
                }
                obj["spec"]["resourceAttributes"] = ra.clone();
                obj["metadata"]["namespace"] = json!(namespace);
            }
            let decision = match (&ra, nra) {
                (Some(ra), _) => {
                    authz
                        .authorize(&Attributes {
                            user: &user,
                            verb: str_at(ra, "/verb"),
                            namespace: str_at(ra, "/namespace"),
                            api_group: str_at(ra, "/group"),
                            api_version: str_at(ra, "/version"),
                            resource: str_at(ra, "/resource"),
                            subresource: str_at(ra, "/subresource"),
                            name: str_at(ra, "/name"),
                            path: "",
                            resource_request: true,
                        })
                        .await
                }
                (None, Some(nra)) => {
                    authz
                        .authorize(&Attributes {
                            user: &user,
                            verb: str_at(nra, "/verb"),
                            namespace: "",
                            api_group: "",
                            api_version: "",
                            resource: "",
                            subresource: "",
                            name: "",
                            path: str_at(nra, "/path"),
                            resource_request: false,
                        })
                        .await
                }
                (None, None) => unreachable!("exactly one of the attributes was checked above"),
            };
            let mut status = serde_json::Map::new();
            let (allowed, denied, reason) = match decision {
                Decision::Allow(r) => (true, false, r),
                Decision::Deny(r) => (false, true, r),
                Decision::NoOpinion(r) => (false, false, r),
                Decision::Error(e) => {
                    status.insert("evaluationError".into(), json!(e));
                    (false, false, String::new())
                }
            };
            status.insert("allowed".into(), json!(allowed));
            if denied {
                status.insert("denied".into(), json!(true));
            }
            if !reason.is_empty() {
                status.insert("reason".into(), json!(reason));
            }
            obj["status"] = Value::Object(status);
            Ok(obj)
        }
        other => Err(ApiError::internal(format!(
            "{other} is not a review resource"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Mode, RbacSource, rbac::Policy};

    fn authz() -> Authorizer {
        let policy = Policy::build(
            &[json!({"metadata": {"name": "view-pods"}, "rules": [
                {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]},
                {"verbs": ["get"], "nonResourceURLs": ["/version"]}]})],
            &[],
            &[
                json!({"metadata": {"name": "ops"}, "roleRef": {"kind": "ClusterRole", "name": "view-pods"},
                "subjects": [{"kind": "Group", "name": "ops"}]}),
            ],
            &[
                json!({"metadata": {"name": "b", "namespace": "dev"}, "roleRef": {"kind": "ClusterRole", "name": "view-pods"},
                "subjects": [{"kind": "Group", "name": "devs"}]}),
            ],
        );
        Authorizer::new(vec![Mode::Rbac], Some(RbacSource::fixed(policy)), None)
    }

    fn res(r: &str) -> &'static Resource {
        crate::resources::all()
            .iter()
            .find(|x| x.resource == r)
            .unwrap()
    }

    #[tokio::test]
    async fn access_reviews_answer_for_the_requester_or_the_subject() {
        let a = authz();
        let dev = UserInfo {
            name: "dana".into(),
            groups: vec!["devs".into()],
            ..Default::default()
        };
        let ssar = |verb: &str, ns: &str| {
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": verb, "resource": "pods", "namespace": ns}}})
        };
        let r = answer(
            &a,
            res("selfsubjectaccessreviews"),
            "",
            &dev,
            ssar("list", "dev"),
        )
        .await
        .unwrap();
        assert_eq!(r["status"]["allowed"], true);
        assert_eq!(
            r["status"]["reason"],
            "RBAC: allowed by RoleBinding \"b/dev\" of ClusterRole \"view-pods\" to Group \"devs\""
        );
        let r = answer(
            &a,
            res("selfsubjectaccessreviews"),
            "",
            &dev,
            ssar("delete", "dev"),
        )
        .await
        .unwrap();
        assert_eq!(r["status"], json!({"allowed": false}));
        let r = answer(
            &a,
            res("selfsubjectaccessreviews"),
            "",
            &dev,
            ssar("list", "prod"),
        )
        .await
        .unwrap();
        assert_eq!(r["status"]["allowed"], false);

        // A SubjectAccessReview asks about its spec's user, not the requester; paths are
        // granted only by cluster-wide bindings.
        let sar = |group: &str| {
            json!({"kind": "SubjectAccessReview", "spec": {"user": "x", "groups": [group],
            "nonResourceAttributes": {"path": "/version", "verb": "get"}}})
        };
        let r = answer(&a, res("subjectaccessreviews"), "", &dev, sar("ops"))
            .await
            .unwrap();
        assert_eq!(r["status"]["allowed"], true);
        let r = answer(&a, res("subjectaccessreviews"), "", &dev, sar("devs"))
            .await
            .unwrap();
        assert_eq!(r["status"]["allowed"], false);
        let empty = json!({"kind": "SubjectAccessReview", "spec": {"nonResourceAttributes": {"path": "/", "verb": "get"}}});
        let e = answer(&a, res("subjectaccessreviews"), "", &dev, empty)
            .await
            .unwrap_err();
        assert_eq!(e.code, 422);
        let both = json!({"kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {}, "nonResourceAttributes": {}}});
        assert_eq!(
            answer(&a, res("selfsubjectaccessreviews"), "", &dev, both)
                .await
                .unwrap_err()
                .code,
            422
        );

        // A local review is about its own namespace.
        let local = |ns: &str| {
            json!({"kind": "LocalSubjectAccessReview", "metadata": {"namespace": "dev"},
                "spec": {"groups": ["devs"], "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": ns}}})
        };
        let r = answer(&a, res("localsubjectaccessreviews"), "dev", &dev, local(""))
            .await
            .unwrap();
        assert_eq!(r["status"]["allowed"], true);
        assert_eq!(r["spec"]["resourceAttributes"]["namespace"], "dev");
        let e = answer(
            &a,
            res("localsubjectaccessreviews"),
            "dev",
            &dev,
            local("prod"),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[tokio::test]
    async fn rules_and_identity_reviews() {
        let a = authz();
        let dev = UserInfo {
            name: "dana".into(),
            groups: vec!["devs".into(), "system:authenticated".into()],
            ..Default::default()
        };
        let ssrr = |ns: &str| json!({"kind": "SelfSubjectRulesReview", "spec": {"namespace": ns}});
        let r = answer(&a, res("selfsubjectrulesreviews"), "", &dev, ssrr("dev"))
            .await
            .unwrap();
        assert_eq!(
            r["status"]["resourceRules"],
            json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}])
        );
        assert_eq!(
            r["status"]["nonResourceRules"],
            json!([{"verbs": ["get"], "nonResourceURLs": ["/version"]}])
        );
        assert_eq!(r["status"]["incomplete"], false);
        let r = answer(&a, res("selfsubjectrulesreviews"), "", &dev, ssrr("prod"))
            .await
            .unwrap();
        assert_eq!(r["status"]["resourceRules"], json!([]));

        let r = answer(
            &a,
            res("selfsubjectreviews"),
            "",
            &dev,
            json!({"kind": "SelfSubjectReview"}),
        )
        .await
        .unwrap();
        assert_eq!(
            r["status"]["userInfo"],
            json!({"username": "dana", "groups": ["devs", "system:authenticated"]})
        );
    }
}
