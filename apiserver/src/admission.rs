//! Admission plugins (`--enable-admission-plugins`, `--disable-admission-plugins`), and the
//! per-request write check they and RBAC's escalation rule feed ([`crate::registry::Admit`]).
//!
//! Built in and always on: NamespaceLifecycle (writes into a missing or terminating namespace
//! are refused), Priority and DefaultTolerationSeconds (in the pod strategy). On unless
//! disabled: ServiceAccount (pods run as an existing account and get its API credentials; see
//! [`crate::registry::Registry`]), PodSecurity ([`crate::podsecurity`]), and
//! MutatingAdmissionWebhook and ValidatingAdmissionWebhook ([`crate::webhook`]), LimitRanger
//! ([`crate::limitranger`]), ResourceQuota ([`crate::resourcequota`]), DefaultStorageClass,
//! DefaultIngressClass and PersistentVolumeClaimResize ([`crate::classes`]),
//! ValidatingAdmissionPolicy ([`crate::policy`]). Off unless
//! enabled: NodeRestriction (a kubelet may only write its own Node and the pods bound to it,
//! and only mirror pods).

use std::sync::Arc;

use serde_json::Value;

use crate::authz::node::node_name;
use crate::authz::{Authorizer, UserInfo};
use crate::registry::Admit;
use crate::resources::Resource;
use crate::status::{ApiError, ApiResult};

/// Plugins that run whatever the flags say.
const ALWAYS_ON: &[&str] = &["NamespaceLifecycle", "Priority", "DefaultTolerationSeconds"];
/// Plugins the flags turn on or off.
const OPTIONAL: &[&str] = &[
    "CertificateApproval",
    "CertificateSigning",
    "CertificateSubjectRestriction",
    "DefaultIngressClass",
    "DefaultStorageClass",
    "EventRateLimit",
    "LimitRanger",
    "MutatingAdmissionWebhook",
    "NodeRestriction",
    "PersistentVolumeClaimResize",
    "PodSecurity",
    "ResourceQuota",
    "RuntimeClass",
    "ServiceAccount",
    "StorageObjectInUseProtection",
    "TaintNodesByCondition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionWebhook",
];

/// The admission plugins in force.
#[derive(Debug, Clone)]
pub struct Plugins {
    /// NodeRestriction (off unless enabled, as upstream).
    pub node_restriction: bool,
    /// ServiceAccount (on unless disabled, as upstream).
    pub service_account: bool,
    /// PodSecurity (on unless disabled, as upstream).
    pub pod_security: bool,
    /// MutatingAdmissionWebhook (on unless disabled, as upstream).
    pub mutating_webhook: bool,
    /// ValidatingAdmissionWebhook (on unless disabled, as upstream).
    pub validating_webhook: bool,
    /// LimitRanger (on unless disabled, as upstream).
    pub limit_ranger: bool,
    /// ResourceQuota (on unless disabled, as upstream).
    pub resource_quota: bool,
    /// DefaultStorageClass (on unless disabled, as upstream).
    pub default_storage_class: bool,
    /// DefaultIngressClass (on unless disabled, as upstream).
    pub default_ingress_class: bool,
    /// PersistentVolumeClaimResize (on unless disabled, as upstream).
    pub pvc_resize: bool,
    /// ValidatingAdmissionPolicy (on unless disabled, as upstream).
    pub validating_policy: bool,
    /// TaintNodesByCondition (on unless disabled, as upstream): new nodes start with the
    /// `node.kubernetes.io/not-ready:NoSchedule` taint, which the node lifecycle controller
    /// removes once the node is Ready.
    pub taint_nodes_by_condition: bool,
    /// StorageObjectInUseProtection (on unless disabled, as upstream): new claims and volumes
    /// get the finalizers the pvc- and pv-protection controllers remove once they are unused.
    pub storage_protection: bool,
    /// CertificateApproval (on unless disabled, as upstream).
    pub certificate_approval: bool,
    /// CertificateSigning (on unless disabled, as upstream).
    pub certificate_signing: bool,
    /// CertificateSubjectRestriction (on unless disabled, as upstream).
    pub certificate_subject_restriction: bool,
    /// RuntimeClass (on unless disabled, as upstream).
    pub runtime_class: bool,
    /// EventRateLimit (off unless enabled, as upstream; needs --admission-control-config-file).
    pub event_rate_limit: bool,
}

impl Default for Plugins {
    fn default() -> Self {
        Plugins {
            node_restriction: false,
            service_account: true,
            pod_security: true,
            mutating_webhook: true,
            validating_webhook: true,
            limit_ranger: true,
            resource_quota: true,
            default_storage_class: true,
            default_ingress_class: true,
            pvc_resize: true,
            validating_policy: true,
            taint_nodes_by_condition: true,
            storage_protection: true,
            certificate_approval: true,
            certificate_signing: true,
            certificate_subject_restriction: true,
            runtime_class: true,
            event_rate_limit: false,
        }
    }
}

impl Plugins {
    /// Reads the flags. Naming a plugin this server does not have, or disabling one it always
    /// runs, is refused rather than ignored.
    pub fn from_flags(enable: &[String], disable: &[String]) -> Result<Plugins, String> {
        let mut p = Plugins::default();
        for name in enable.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if disable.iter().any(|d| d.trim() == name) {
                return Err(format!(
                    "admission plugin {name:?} is both enabled and disabled"
                ));
            }
            match name {
                "NodeRestriction" => p.node_restriction = true,
                "ServiceAccount" => p.service_account = true,
                "PodSecurity" => p.pod_security = true,
                "MutatingAdmissionWebhook" => p.mutating_webhook = true,
                "ValidatingAdmissionWebhook" => p.validating_webhook = true,
                "LimitRanger" => p.limit_ranger = true,
                "ResourceQuota" => p.resource_quota = true,
                "DefaultStorageClass" => p.default_storage_class = true,
                "DefaultIngressClass" => p.default_ingress_class = true,
                "PersistentVolumeClaimResize" => p.pvc_resize = true,
                "ValidatingAdmissionPolicy" => p.validating_policy = true,
                "TaintNodesByCondition" => p.taint_nodes_by_condition = true,
                "StorageObjectInUseProtection" => p.storage_protection = true,
                "CertificateApproval" => p.certificate_approval = true,
                "CertificateSigning" => p.certificate_signing = true,
                "CertificateSubjectRestriction" => p.certificate_subject_restriction = true,
                "RuntimeClass" => p.runtime_class = true,
                "EventRateLimit" => p.event_rate_limit = true,
                n if ALWAYS_ON.contains(&n) => {}
                n => {
                    return Err(format!(
                        "--enable-admission-plugins: {n:?} is not available in this build (available: {})",
                        ALWAYS_ON
                            .iter()
                            .chain(OPTIONAL)
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        for name in disable.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if ALWAYS_ON.contains(&name) {
                return Err(format!(
                    "--disable-admission-plugins: {name:?} cannot be turned off in this build"
                ));
            }
            match name {
                "NodeRestriction" => p.node_restriction = false,
                "ServiceAccount" => p.service_account = false,
                "PodSecurity" => p.pod_security = false,
                "MutatingAdmissionWebhook" => p.mutating_webhook = false,
                "ValidatingAdmissionWebhook" => p.validating_webhook = false,
                "LimitRanger" => p.limit_ranger = false,
                "ResourceQuota" => p.resource_quota = false,
                "DefaultStorageClass" => p.default_storage_class = false,
                "DefaultIngressClass" => p.default_ingress_class = false,
                "PersistentVolumeClaimResize" => p.pvc_resize = false,
                "ValidatingAdmissionPolicy" => p.validating_policy = false,
                "TaintNodesByCondition" => p.taint_nodes_by_condition = false,
                "StorageObjectInUseProtection" => p.storage_protection = false,
                "CertificateApproval" => p.certificate_approval = false,
                "CertificateSigning" => p.certificate_signing = false,
                "CertificateSubjectRestriction" => p.certificate_subject_restriction = false,
                "RuntimeClass" => p.runtime_class = false,
                "EventRateLimit" => p.event_rate_limit = false,
                _ => {
                    return Err(format!(
                        "--disable-admission-plugins: unknown plugin {name:?}"
                    ));
                }
            }
        }
        Ok(p)
    }
}

/// The built-in admission plugins that read other objects: LimitRanger, ResourceQuota and the
/// class plugins. They apply to clients' writes of whole objects, not of subresources.
#[derive(Debug, Default)]
pub struct Builtin {
    /// LimitRanger, when on.
    pub limit_ranger: Option<Arc<crate::limitranger::LimitRanger>>,
    /// ResourceQuota, when on.
    pub quota: Option<Arc<crate::resourcequota::QuotaAdmission>>,
    /// DefaultStorageClass, DefaultIngressClass and PersistentVolumeClaimResize.
    pub classes: Option<Arc<crate::classes::ClassPlugins>>,
    /// TaintNodesByCondition.
    pub taint_new_nodes: bool,
    /// StorageObjectInUseProtection.
    pub protect_storage: bool,
    /// EventRateLimit, when on.
    pub event_rate: Option<Arc<crate::eventratelimit::EventRateLimit>>,
}

impl Builtin {
    /// The plugins the flags turn on, reading from `cache`.
    pub fn start(
        plugins: &Plugins,
        registry: &crate::registry::Registry,
        cache: &crate::cache::Cache,
    ) -> Self {
        Builtin {
            limit_ranger: plugins
                .limit_ranger
                .then(|| crate::limitranger::LimitRanger::new(registry.clone(), cache)),
            quota: plugins
                .resource_quota
                .then(|| crate::resourcequota::QuotaAdmission::new(registry.clone(), cache)),
            classes: (plugins.default_storage_class
                || plugins.default_ingress_class
                || plugins.pvc_resize
                || plugins.runtime_class)
                .then(|| {
                    crate::classes::ClassPlugins::new(
                        registry.clone(),
                        cache,
                        plugins.default_storage_class,
                        plugins.default_ingress_class,
                        plugins.pvc_resize,
                        plugins.runtime_class,
                    )
                }),
            taint_new_nodes: plugins.taint_nodes_by_condition,
            protect_storage: plugins.storage_protection,
            event_rate: None,
        }
    }

    /// The mutating part, on create (before the webhooks): LimitRanger's defaults for pods,
    /// the default classes for claims and Ingresses, the not-ready taint of new nodes, the
    /// protection finalizers of claims and volumes.
    pub async fn mutate_create(&self, res: &Resource, ns: &str, obj: &mut Value) -> ApiResult<()> {
        if self.taint_new_nodes && res.group.is_empty() && res.resource == "nodes" {
            taint_not_ready(obj);
        }
        if self.protect_storage && res.group.is_empty() {
            match res.resource {
                "persistentvolumeclaims" => add_finalizer(obj, "kubernetes.io/pvc-protection"),
                "persistentvolumes" => add_finalizer(obj, "kubernetes.io/pv-protection"),
                _ => {}
            }
        }
        if let Some(l) = &self.limit_ranger
            && res.group.is_empty()
            && res.resource == "pods"
        {
            l.default_pod(ns, obj).await?;
        }
        if let Some(c) = &self.classes {
            c.default_class(res, obj).await?;
            c.runtime_class(res, obj).await?;
        }
        Ok(())
    }

    /// The validating part (before the webhooks; `old` on update): LimitRanger's bounds and
    /// claim resizing.
    pub async fn validate(
        &self,
        res: &Resource,
        ns: &str,
        old: Option<&Value>,
        obj: &Value,
    ) -> ApiResult<()> {
        if let Some(l) = &self.limit_ranger {
            l.validate(res, ns, old.is_some(), obj).await?;
        }
        if let (Some(c), Some(old)) = (&self.classes, old) {
            c.check_resize(res, old, obj).await?;
        }
        Ok(())
    }

    /// The last plugin (after the webhooks): ResourceQuota checks and charges the write.
    pub async fn charge(
        &self,
        res: &Resource,
        ns: &str,
        old: Option<&Value>,
        obj: &Value,
        dry_run: bool,
    ) -> ApiResult<()> {
        match &self.quota {
            Some(q) => q.admit(res, ns, old, obj, dry_run).await,
            None => Ok(()),
        }
    }
}

/// Adds `finalizer` to an object unless it has it.
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list = meta
        .entry("finalizers")
        .or_insert_with(|| Value::Array(Vec::new()));
    if list.is_null() {
        *list = Value::Array(Vec::new());
    }
    if let Some(l) = list.as_array_mut()
        && !l.iter().any(|f| f.as_str() == Some(finalizer))
    {
        l.push(Value::String(finalizer.into()));
    }
}

/// The taint TaintNodesByCondition gives new nodes.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// Adds `node.kubernetes.io/not-ready:NoSchedule` to a node unless it has it.
fn taint_not_ready(node: &mut Value) {
    let Some(n) = node.as_object_mut() else {
        return;
    };
    let spec = n
        .entry("spec")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let taints = spec
        .entry("taints")
        .or_insert_with(|| Value::Array(Vec::new()));
    if taints.is_null() {
        *taints = Value::Array(Vec::new());
    }
    let Some(list) = taints.as_array_mut() else {
        return;
    };
    let has = list.iter().any(|t| {
        t.get("key").and_then(Value::as_str) == Some(NOT_READY_TAINT)
            && t.get("effect").and_then(Value::as_str) == Some("NoSchedule")
    });
    if !has {
        list.push(serde_json::json!({"key": NOT_READY_TAINT, "effect": "NoSchedule"}));
    }
}

/// EventRateLimit around a write check: a write of a core Event by `user` takes tokens first.
pub fn with_event_rate(
    check: Option<Admit>,
    limiter: Arc<crate::eventratelimit::EventRateLimit>,
    user: &UserInfo,
) -> Admit {
    let user = user.name.clone();
    Admit(Arc::new(move |ns, old, obj| {
        limiter.accept(&user, ns, obj)?;
        match &check {
            Some(c) => (c.0)(ns, old, obj),
            None => Ok(()),
        }
    }))
}

/// The write check for `user`'s writes of `res`, if any applies: RBAC's escalation check on
/// roles and bindings, NodeRestriction on a node's writes of pods and nodes, and PodSecurity's
/// `enforce` level (`pod_security`, for pods) on new pods.
pub fn write_check(
    plugins: &Plugins,
    authz: &Arc<Authorizer>,
    res: &'static Resource,
    subresource: &str,
    user: &UserInfo,
    pod_security: Option<crate::podsecurity::Policy>,
) -> Option<Admit> {
    if res.kind == crate::certificates::KIND {
        // CertificateApproval on `/approval`; CertificateSigning when `/status` sets the
        // certificate; CertificateSubjectRestriction on create.
        let verb = match subresource {
            "approval" if plugins.certificate_approval => "approve",
            "status" if plugins.certificate_signing => "sign",
            // CertificateSubjectRestriction, on create (after the requester is recorded).
            "" if plugins.certificate_subject_restriction => {
                return Some(Admit(Arc::new(move |_, old, obj| {
                    if old.is_some() {
                        return Ok(());
                    }
                    crate::certificates::subject_restriction(obj).map_err(|m| {
                        forbidden_named(
                            res,
                            obj.pointer("/metadata/name")
                                .and_then(Value::as_str)
                                .unwrap_or(""),
                            &m,
                        )
                    })
                })));
            }
            _ => return None,
        };
        let (authz, user) = (authz.clone(), user.clone());
        return Some(Admit(Arc::new(move |_, old, obj| {
            if verb == "sign"
                && old.and_then(|o| o.pointer("/status/certificate"))
                    == obj.pointer("/status/certificate")
            {
                return Ok(());
            }
            let signer = obj
                .pointer("/spec/signerName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if crate::certificates::signer_allowed(&authz, &user, verb, signer) {
                return Ok(());
            }
            Err(forbidden_named(
                res,
                obj.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                &format!("user not permitted to {verb} requests with signerName {signer:?}"),
            ))
        })));
    }
    if res.group.is_empty() && res.resource == "namespaces" && plugins.pod_security {
        return Some(Admit(Arc::new(|_, _, obj| {
            crate::podsecurity::validate_labels(obj).map_err(|m| {
                ApiError::invalid(
                    "",
                    "Namespace",
                    obj.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    vec![crate::status::Cause::new(
                        "FieldValueNotSupported",
                        "metadata.labels",
                        m,
                    )],
                )
            })
        })));
    }
    let rbac = res.group == "rbac.authorization.k8s.io" && authz.rbac().is_some();
    let node = plugins
        .node_restriction
        .then(|| node_name(user).map(str::to_string))
        .flatten()
        .filter(|_| res.group.is_empty() && matches!(res.resource, "pods" | "nodes"));
    if !rbac && node.is_none() && pod_security.is_none() {
        return None;
    }
    let (authz, user) = (authz.clone(), user.clone());
    Some(Admit(Arc::new(move |ns, old, obj| {
        if rbac {
            authz.confirm_no_escalation(&user, res.resource, ns, obj)?;
        }
        if let Some(node) = &node {
            node_restriction(node, res.resource, old, obj)?;
        }
        // PodSecurity `enforce`: a new pod must meet its namespace's level.
        if let (Some(p), None) = (&pod_security, old) {
            let v = crate::podsecurity::check(
                p.level,
                obj.get("metadata").unwrap_or(&Value::Null),
                obj.get("spec").unwrap_or(&Value::Null),
            );
            if !v.is_empty() {
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                return Err(forbidden(format!(
                    "pods {name:?} is forbidden: violates {}",
                    crate::podsecurity::describe(p, &v)
                ))
                .with_details("", "pods", name));
            }
        }
        Ok(())
    })))
}

/// NodeRestriction on a delete by `node`: its own Node, and pods bound to it (`target`).
pub fn node_may_delete(
    node: &str,
    res: &Resource,
    name: &str,
    target: Option<&Value>,
) -> ApiResult<()> {
    if !res.group.is_empty() {
        return Ok(());
    }
    match res.resource {
        "nodes" if name != node => Err(forbidden(format!(
            "nodes {name:?} is forbidden: node {node:?} is not allowed to delete node {name:?}"
        ))),
        "pods" => {
            let on = target
                .and_then(|p| p.pointer("/spec/nodeName"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if on != node {
                return Err(forbidden(format!(
                    "pods {name:?} is forbidden: node {node:?} can only delete pods with spec.nodeName set to itself"
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An admission plugin's refusal of `obj`, as upstream words it:
/// `<resource>[.<group>] "<name>" is forbidden: <why>`, naming the object by its name, else
/// its generateName.
pub fn refusal(res: &Resource, obj: &Value, why: &str) -> ApiError {
    let meta = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let name = meta("name")
        .or_else(|| meta("generateName"))
        .unwrap_or("Unknown");
    forbidden_named(res, name, why)
}

/// `<resource>[.<group>] "<name>" is forbidden: <why>` (403, with details).
pub fn forbidden_named(res: &Resource, name: &str, why: &str) -> ApiError {
    let gr = if res.group.is_empty() {
        res.resource.to_string()
    } else {
        format!("{}.{}", res.resource, res.group)
    };
    ApiError::forbidden(format!("{gr} {name:?} is forbidden: {why}")).with_details(
        res.group,
        res.resource,
        name,
    )
}

/// Upstream's aggregate of error messages: one as itself, several de-duplicated in `[a, b]`.
pub fn aggregate(errors: Vec<String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for e in errors {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    if seen.len() == 1 {
        seen.remove(0)
    } else {
        format!("[{}]", seen.join(", "))
    }
}

fn forbidden(msg: String) -> ApiError {
    ApiError::forbidden(msg)
}

/// NodeRestriction on a write of a pod or node by `node`: `old` is the object before an update
/// (None on create).
pub fn node_restriction(
    node: &str,
    resource: &str,
    old: Option<&Value>,
    obj: &Value,
) -> ApiResult<()> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let bound = |o: &Value| {
        o.pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match resource {
        "nodes" if name != node => Err(forbidden(format!(
            "nodes {name:?} is forbidden: node {node:?} is not allowed to modify node {name:?}"
        ))),
        "pods" => match old {
            // A node creates only mirror pods, bound to itself, that reach nothing through
            // the API (no account, secret, configmap or claim: the Node authorizer would open
            // those to it).
            None => {
                let mirror = obj
                    .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                    .is_some();
                if !mirror {
                    return Err(forbidden(format!(
                        "pods {name:?} is forbidden: pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"
                    )));
                }
                if bound(obj) != node {
                    return Err(forbidden(format!(
                        "pods {name:?} is forbidden: node {node:?} can only create pods with spec.nodeName set to itself"
                    )));
                }
                if let Some((kind, _, _)) = crate::authz::node::pod_refs(obj).first() {
                    let what = match *kind {
                        "serviceaccounts" => "a service account",
                        "secrets" => "secrets",
                        "configmaps" => "configmaps",
                        _ => "persistentvolumeclaims",
                    };
                    return Err(forbidden(format!(
                        "pods {name:?} is forbidden: node {node:?} can not create pods that reference {what}"
                    )));
                }
                Ok(())
            }
            Some(old) if bound(old) != node => Err(forbidden(format!(
                "pods {name:?} is forbidden: node {node:?} can only update pod status for pods with spec.nodeName set to itself"
            ))),
            Some(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_and_volumes_get_their_finalizer_once() {
        let mut pvc = json!({"metadata": {"name": "c", "finalizers": ["mine"]}});
        add_finalizer(&mut pvc, "kubernetes.io/pvc-protection");
        add_finalizer(&mut pvc, "kubernetes.io/pvc-protection");
        assert_eq!(
            pvc["metadata"]["finalizers"],
            json!(["mine", "kubernetes.io/pvc-protection"])
        );
        let mut pv = json!({"metadata": {"name": "v"}});
        add_finalizer(&mut pv, "kubernetes.io/pv-protection");
        assert_eq!(
            pv["metadata"]["finalizers"],
            json!(["kubernetes.io/pv-protection"])
        );
    }

    #[test]
    fn new_nodes_are_tainted_not_ready_once() {
        let mut bare = json!({"metadata": {"name": "n"}});
        taint_not_ready(&mut bare);
        assert_eq!(
            bare["spec"]["taints"],
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}])
        );
        taint_not_ready(&mut bare);
        assert_eq!(bare["spec"]["taints"].as_array().unwrap().len(), 1);
        let mut other = json!({"spec": {"taints": [
            {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}});
        taint_not_ready(&mut other);
        assert_eq!(other["spec"]["taints"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn flags_name_only_what_exists() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(
            Plugins::from_flags(&s(&["NodeRestriction"]), &[])
                .unwrap()
                .node_restriction
        );
        assert!(Plugins::from_flags(&s(&["NamespaceLifecycle", "Priority"]), &[]).is_ok());
        assert!(
            Plugins::from_flags(&s(&["AlwaysPullImages"]), &[])
                .unwrap_err()
                .contains("not available")
        );
        assert!(Plugins::from_flags(&[], &s(&["Priority"])).is_err());
        assert!(Plugins::from_flags(&s(&["NodeRestriction"]), &s(&["NodeRestriction"])).is_err());
        assert!(
            !Plugins::from_flags(&[], &s(&["NodeRestriction"]))
                .unwrap()
                .node_restriction
        );
        assert!(Plugins::from_flags(&[], &[]).unwrap().service_account);
        let off = Plugins::from_flags(&[], &s(&["LimitRanger", "ResourceQuota"])).unwrap();
        assert!(!off.limit_ranger && !off.resource_quota);
        let on = Plugins::from_flags(&[], &[]).unwrap();
        assert!(on.limit_ranger && on.resource_quota);
        assert!(
            !Plugins::from_flags(&[], &s(&["ServiceAccount"]))
                .unwrap()
                .service_account
        );
    }

    #[test]
    fn nodes_write_only_themselves_and_their_pods() {
        let node = |n: &str| json!({"metadata": {"name": n}});
        assert!(node_restriction("n1", "nodes", None, &node("n1")).is_ok());
        let e = node_restriction("n1", "nodes", Some(&node("n2")), &node("n2")).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(e.message.contains("is not allowed to modify node \"n2\""));
        let pod = |bound: &str, mirror: bool| {
            let mut p = json!({"metadata": {"name": "p"}, "spec": {"nodeName": bound}});
            if mirror {
                p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
            }
            p
        };
        // Updates (status included) of its own pods only.
        assert!(node_restriction("n1", "pods", Some(&pod("n1", false)), &pod("n1", false)).is_ok());
        assert!(
            node_restriction("n1", "pods", Some(&pod("n2", false)), &pod("n1", false)).is_err()
        );
        // Creates: mirror pods bound to itself.
        assert!(node_restriction("n1", "pods", None, &pod("n1", true)).is_ok());
        let mut with_secret = pod("n1", true);
        with_secret["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "x"}}]);
        assert!(
            node_restriction("n1", "pods", None, &with_secret)
                .unwrap_err()
                .message
                .contains("can not create pods that reference secrets")
        );
        let pods = crate::resources::find("", "v1", "pods").unwrap();
        assert!(node_may_delete("n1", pods, "p", Some(&pod("n1", false))).is_ok());
        assert!(node_may_delete("n1", pods, "p", Some(&pod("n2", false))).is_err());
        let nodes = crate::resources::find("", "v1", "nodes").unwrap();
        assert!(node_may_delete("n1", nodes, "n2", None).is_err());
        assert!(node_restriction("n1", "pods", None, &pod("n2", true)).is_err());
        assert!(
            node_restriction("n1", "pods", None, &pod("n1", false))
                .unwrap_err()
                .message
                .contains("can only create mirror pods")
        );
    }
}
