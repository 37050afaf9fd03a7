//! The built-in resources this server serves: one row per resource with what discovery, routing,
//! storage and OpenAPI need to know about it. Types come from k8s-openapi (for schemas); the rows
//! carry upstream's names, short names, categories and storage paths.

use k8s_openapi::api::{
    admissionregistration::v1 as admissionregistration, apps::v1 as apps,
    authentication::v1 as authentication, authorization::v1 as authorization, batch::v1 as batch,
    certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, events::v1 as events, flowcontrol::v1 as flowcontrol,
    networking::v1 as networking, node::v1 as node, policy::v1 as policy, rbac::v1 as rbac,
    scheduling::v1 as scheduling, storage::v1 as storage,
};
use schemars::{JsonSchema, Schema, SchemaGenerator};

/// A subresource of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// `/status`: get, update, patch of `.status` only.
    Status,
    /// `/scale`: an autoscaling/v1 Scale view of `.spec.replicas`.
    Scale,
    /// `pods/binding`: create a Binding to set `spec.nodeName`.
    Binding,
    /// `pods/eviction`: create a policy/v1 Eviction.
    Eviction,
    /// `namespaces/finalize`: update `spec.finalizers` of a namespace.
    Finalize,
    /// `pods/log`: a container's log, from the node's kubelet.
    Log,
    /// `pods/exec`: a command in a container, streamed (WebSocket) through the kubelet.
    Exec,
    /// `pods/attach`: a container's own streams, through the kubelet.
    Attach,
    /// `pods/portforward`: TCP connections into the pod's network, through the kubelet.
    PortForward,
    /// `serviceaccounts/token`: create an authentication.k8s.io/v1 TokenRequest.
    Token,
    /// `certificatesigningrequests/approval`: the Approved and Denied conditions.
    Approval,
}

impl Sub {
    /// The URL segment.
    pub fn name(self) -> &'static str {
        match self {
            Sub::Status => "status",
            Sub::Scale => "scale",
            Sub::Binding => "binding",
            Sub::Eviction => "eviction",
            Sub::Finalize => "finalize",
            Sub::Log => "log",
            Sub::Exec => "exec",
            Sub::Attach => "attach",
            Sub::PortForward => "portforward",
            Sub::Token => "token",
            Sub::Approval => "approval",
        }
    }

    /// `(group, version, kind)` of the subresource's own type.
    pub fn response_kind(self, res: &Resource) -> (&'static str, &'static str, &'static str) {
        match self {
            Sub::Status | Sub::Approval => (res.group, res.version, res.kind),
            Sub::Scale => ("autoscaling", "v1", "Scale"),
            Sub::Binding => ("", "v1", "Binding"),
            Sub::Eviction => ("policy", "v1", "Eviction"),
            Sub::Finalize => ("", "v1", "Namespace"),
            Sub::Log => ("", "v1", "Pod"),
            Sub::Exec => ("", "v1", "PodExecOptions"),
            Sub::Attach => ("", "v1", "PodAttachOptions"),
            Sub::PortForward => ("", "v1", "PodPortForwardOptions"),
            Sub::Token => ("authentication.k8s.io", "v1", "TokenRequest"),
        }
    }

    /// Verbs the subresource supports.
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Sub::Status | Sub::Scale | Sub::Approval => &["get", "patch", "update"],
            Sub::Binding | Sub::Eviction | Sub::Token => &["create"],
            Sub::Finalize => &["update"],
            Sub::Log => &["get"],
            Sub::Exec | Sub::Attach | Sub::PortForward => &["create", "get"],
        }
    }
}

/// Builds the JSON schema of a resource's type into a generator (returns a `$ref`).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct Resource {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural resource name (the URL segment).
    pub resource: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// `kubectl` short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Subresources.
    pub subresources: &'static [Sub],
    /// Storage path under the prefix (upstream's, e.g. `minions` for nodes).
    pub storage: &'static str,
    /// The OpenAPI definition name (`io.k8s.api.core.v1.Pod`).
    pub definition: &'static str,
    /// Schema builder.
    pub schema: SchemaFn,
}

impl Resource {
    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The list kind (`PodList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether the resource is only created, never read back: `bindings` (which writes the
    /// pod) and the reviews (answered, not stored; their storage path is empty).
    pub fn create_only(&self) -> bool {
        self.resource == "bindings" || self.storage.is_empty()
    }

    /// Standard verbs for the resource collection and items.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.create_only() {
            return &["create"];
        }
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    /// Whether `sub` is served.
    pub fn has_sub(&self, sub: Sub) -> bool {
        self.subresources.contains(&sub)
    }

    /// URL path prefix (`/api/v1` or `/apis/apps/v1`).
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

macro_rules! res {
    ($g:expr, $v:expr, $r:expr, $s:expr, $k:expr, $ns:expr, $short:expr, $cat:expr, $sub:expr, $st:expr, $def:expr, $t:ty) => {
        Resource {
            group: $g,
            version: $v,
            resource: $r,
            singular: $s,
            kind: $k,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
            storage: $st,
            definition: $def,
            schema: schema_of::<$t>,
        }
    };
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const STATUS: &[Sub] = &[Sub::Status];
const SCALE: &[Sub] = &[Sub::Scale, Sub::Status];
const NOSUB: &[Sub] = &[];

/// Every served resource, in discovery order per group-version.
pub fn all() -> &'static [Resource] {
    static TABLE: std::sync::OnceLock<Vec<Resource>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        vec![
            // core/v1
            res!(
                "",
                "v1",
                "bindings",
                "binding",
                "Binding",
                true,
                NONE,
                NONE,
                NOSUB,
                "bindings",
                "io.k8s.api.core.v1.Binding",
                core::Binding
            ),
            res!(
                "",
                "v1",
                "configmaps",
                "configmap",
                "ConfigMap",
                true,
                &["cm"],
                NONE,
                NOSUB,
                "configmaps",
                "io.k8s.api.core.v1.ConfigMap",
                core::ConfigMap
            ),
            res!(
                "",
                "v1",
                "endpoints",
                "endpoints",
                "Endpoints",
                true,
                &["ep"],
                NONE,
                NOSUB,
                "services/endpoints",
                "io.k8s.api.core.v1.Endpoints",
                core::Endpoints
            ),
            res!(
                "",
                "v1",
                "events",
                "event",
                "Event",
                true,
                &["ev"],
                NONE,
                NOSUB,
                "events",
                "io.k8s.api.core.v1.Event",
                core::Event
            ),
            res!(
                "",
                "v1",
                "limitranges",
                "limitrange",
                "LimitRange",
                true,
                &["limits"],
                NONE,
                NOSUB,
                "limitranges",
                "io.k8s.api.core.v1.LimitRange",
                core::LimitRange
            ),
            res!(
                "",
                "v1",
                "namespaces",
                "namespace",
                "Namespace",
                false,
                &["ns"],
                NONE,
                &[Sub::Status, Sub::Finalize],
                "namespaces",
                "io.k8s.api.core.v1.Namespace",
                core::Namespace
            ),
            res!(
                "",
                "v1",
                "nodes",
                "node",
                "Node",
                false,
                &["no"],
                NONE,
                STATUS,
                "minions",
                "io.k8s.api.core.v1.Node",
                core::Node
            ),
            res!(
                "",
                "v1",
                "persistentvolumeclaims",
                "persistentvolumeclaim",
                "PersistentVolumeClaim",
                true,
                &["pvc"],
                NONE,
                STATUS,
                "persistentvolumeclaims",
                "io.k8s.api.core.v1.PersistentVolumeClaim",
                core::PersistentVolumeClaim
            ),
            res!(
                "",
                "v1",
                "persistentvolumes",
                "persistentvolume",
                "PersistentVolume",
                false,
                &["pv"],
                NONE,
                STATUS,
                "persistentvolumes",
                "io.k8s.api.core.v1.PersistentVolume",
                core::PersistentVolume
            ),
            res!(
                "",
                "v1",
                "pods",
                "pod",
                "Pod",
                true,
                &["po"],
                ALL,
                &[
                    Sub::Status,
                    Sub::Binding,
                    Sub::Eviction,
                    Sub::Log,
                    Sub::Exec,
                    Sub::Attach,
                    Sub::PortForward
                ],
                "pods",
                "io.k8s.api.core.v1.Pod",
                core::Pod
            ),
            res!(
                "",
                "v1",
                "replicationcontrollers",
                "replicationcontroller",
                "ReplicationController",
                true,
                &["rc"],
                ALL,
                SCALE,
                "controllers",
                "io.k8s.api.core.v1.ReplicationController",
                core::ReplicationController
            ),
            res!(
                "",
                "v1",
                "resourcequotas",
                "resourcequota",
                "ResourceQuota",
                true,
                &["quota"],
                NONE,
                STATUS,
                "resourcequotas",
                "io.k8s.api.core.v1.ResourceQuota",
                core::ResourceQuota
            ),
            res!(
                "",
                "v1",
                "secrets",
                "secret",
                "Secret",
                true,
                NONE,
                NONE,
                NOSUB,
                "secrets",
                "io.k8s.api.core.v1.Secret",
                core::Secret
            ),
            res!(
                "",
                "v1",
                "serviceaccounts",
                "serviceaccount",
                "ServiceAccount",
                true,
                &["sa"],
                NONE,
                &[Sub::Token],
                "serviceaccounts",
                "io.k8s.api.core.v1.ServiceAccount",
                core::ServiceAccount
            ),
            res!(
                "",
                "v1",
                "services",
                "service",
                "Service",
                true,
                &["svc"],
                ALL,
                STATUS,
                "services/specs",
                "io.k8s.api.core.v1.Service",
                core::Service
            ),
            // apps/v1
            res!(
                "apps",
                "v1",
                "controllerrevisions",
                "controllerrevision",
                "ControllerRevision",
                true,
                NONE,
                NONE,
                NOSUB,
                "controllerrevisions",
                "io.k8s.api.apps.v1.ControllerRevision",
                apps::ControllerRevision
            ),
            res!(
                "apps",
                "v1",
                "daemonsets",
                "daemonset",
                "DaemonSet",
                true,
                &["ds"],
                ALL,
                STATUS,
                "daemonsets",
                "io.k8s.api.apps.v1.DaemonSet",
                apps::DaemonSet
            ),
            res!(
                "apps",
                "v1",
                "deployments",
                "deployment",
                "Deployment",
                true,
                &["deploy"],
                ALL,
                SCALE,
                "deployments",
                "io.k8s.api.apps.v1.Deployment",
                apps::Deployment
            ),
            res!(
                "apps",
                "v1",
                "replicasets",
                "replicaset",
                "ReplicaSet",
                true,
                &["rs"],
                ALL,
                SCALE,
                "replicasets",
                "io.k8s.api.apps.v1.ReplicaSet",
                apps::ReplicaSet
            ),
            res!(
                "apps",
                "v1",
                "statefulsets",
                "statefulset",
                "StatefulSet",
                true,
                &["sts"],
                ALL,
                SCALE,
                "statefulsets",
                "io.k8s.api.apps.v1.StatefulSet",
                apps::StatefulSet
            ),
            // authentication.k8s.io/v1 and authorization.k8s.io/v1: reviews, created and
            // answered, never stored.
            res!(
                "authentication.k8s.io",
                "v1",
                "selfsubjectreviews",
                "selfsubjectreview",
                "SelfSubjectReview",
                false,
                NONE,
                NONE,
                NOSUB,
                "",
                "io.k8s.api.authentication.v1.SelfSubjectReview",
                authentication::SelfSubjectReview
            ),
            res!(
                "authorization.k8s.io",
                "v1",
                "localsubjectaccessreviews",
                "localsubjectaccessreview",
                "LocalSubjectAccessReview",
                true,
                NONE,
                NONE,
                NOSUB,
                "",
                "io.k8s.api.authorization.v1.LocalSubjectAccessReview",
                authorization::LocalSubjectAccessReview
            ),
            res!(
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews",
                "selfsubjectaccessreview",
                "SelfSubjectAccessReview",
                false,
                NONE,
                NONE,
                NOSUB,
                "",
                "io.k8s.api.authorization.v1.SelfSubjectAccessReview",
                authorization::SelfSubjectAccessReview
            ),
            res!(
                "authorization.k8s.io",
                "v1",
                "selfsubjectrulesreviews",
                "selfsubjectrulesreview",
                "SelfSubjectRulesReview",
                false,
                NONE,
                NONE,
                NOSUB,
                "",
                "io.k8s.api.authorization.v1.SelfSubjectRulesReview",
                authorization::SelfSubjectRulesReview
            ),
            res!(
                "authorization.k8s.io",
                "v1",
                "subjectaccessreviews",
                "subjectaccessreview",
                "SubjectAccessReview",
                false,
                NONE,
                NONE,
                NOSUB,
                "",
                "io.k8s.api.authorization.v1.SubjectAccessReview",
                authorization::SubjectAccessReview
            ),
            // batch/v1
            res!(
                "batch",
                "v1",
                "cronjobs",
                "cronjob",
                "CronJob",
                true,
                &["cj"],
                ALL,
                STATUS,
                "cronjobs",
                "io.k8s.api.batch.v1.CronJob",
                batch::CronJob
            ),
            res!(
                "batch",
                "v1",
                "jobs",
                "job",
                "Job",
                true,
                NONE,
                ALL,
                STATUS,
                "jobs",
                "io.k8s.api.batch.v1.Job",
                batch::Job
            ),
            // certificates.k8s.io/v1
            res!(
                "certificates.k8s.io",
                "v1",
                "certificatesigningrequests",
                "certificatesigningrequest",
                "CertificateSigningRequest",
                false,
                &["csr"],
                NONE,
                &[Sub::Status, Sub::Approval],
                "certificatesigningrequests",
                "io.k8s.api.certificates.v1.CertificateSigningRequest",
                certificates::CertificateSigningRequest
            ),
            // coordination.k8s.io/v1
            res!(
                "coordination.k8s.io",
                "v1",
                "leases",
                "lease",
                "Lease",
                true,
                NONE,
                NONE,
                NOSUB,
                "leases",
                "io.k8s.api.coordination.v1.Lease",
                coordination::Lease
            ),
            // discovery.k8s.io/v1
            res!(
                "discovery.k8s.io",
                "v1",
                "endpointslices",
                "endpointslice",
                "EndpointSlice",
                true,
                NONE,
                NONE,
                NOSUB,
                "endpointslices",
                "io.k8s.api.discovery.v1.EndpointSlice",
                discovery::EndpointSlice
            ),
            // events.k8s.io/v1 (shares storage with core events)
            res!(
                "events.k8s.io",
                "v1",
                "events",
                "event",
                "Event",
                true,
                &["ev"],
                NONE,
                NOSUB,
                "events",
                "io.k8s.api.events.v1.Event",
                events::Event
            ),
            // networking.k8s.io/v1
            res!(
                "networking.k8s.io",
                "v1",
                "ingressclasses",
                "ingressclass",
                "IngressClass",
                false,
                NONE,
                NONE,
                NOSUB,
                "ingressclasses",
                "io.k8s.api.networking.v1.IngressClass",
                networking::IngressClass
            ),
            res!(
                "networking.k8s.io",
                "v1",
                "ingresses",
                "ingress",
                "Ingress",
                true,
                &["ing"],
                NONE,
                STATUS,
                "ingress",
                "io.k8s.api.networking.v1.Ingress",
                networking::Ingress
            ),
            res!(
                "networking.k8s.io",
                "v1",
                "networkpolicies",
                "networkpolicy",
                "NetworkPolicy",
                true,
                &["netpol"],
                NONE,
                NOSUB,
                "networkpolicies",
                "io.k8s.api.networking.v1.NetworkPolicy",
                networking::NetworkPolicy
            ),
            // node.k8s.io/v1
            res!(
                "node.k8s.io",
                "v1",
                "runtimeclasses",
                "runtimeclass",
                "RuntimeClass",
                false,
                NONE,
                NONE,
                NOSUB,
                "runtimeclasses",
                "io.k8s.api.node.v1.RuntimeClass",
                node::RuntimeClass
            ),
            // policy/v1
            res!(
                "policy",
                "v1",
                "poddisruptionbudgets",
                "poddisruptionbudget",
                "PodDisruptionBudget",
                true,
                &["pdb"],
                NONE,
                STATUS,
                "poddisruptionbudgets",
                "io.k8s.api.policy.v1.PodDisruptionBudget",
                policy::PodDisruptionBudget
            ),
            // rbac.authorization.k8s.io/v1
            res!(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterrolebindings",
                "clusterrolebinding",
                "ClusterRoleBinding",
                false,
                NONE,
                NONE,
                NOSUB,
                "clusterrolebindings",
                "io.k8s.api.rbac.v1.ClusterRoleBinding",
                rbac::ClusterRoleBinding
            ),
            res!(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterroles",
                "clusterrole",
                "ClusterRole",
                false,
                NONE,
                NONE,
                NOSUB,
                "clusterroles",
                "io.k8s.api.rbac.v1.ClusterRole",
                rbac::ClusterRole
            ),
            res!(
                "rbac.authorization.k8s.io",
                "v1",
                "rolebindings",
                "rolebinding",
                "RoleBinding",
                true,
                NONE,
                NONE,
                NOSUB,
                "rolebindings",
                "io.k8s.api.rbac.v1.RoleBinding",
                rbac::RoleBinding
            ),
            res!(
                "rbac.authorization.k8s.io",
                "v1",
                "roles",
                "role",
                "Role",
                true,
                NONE,
                NONE,
                NOSUB,
                "roles",
                "io.k8s.api.rbac.v1.Role",
                rbac::Role
            ),
            // scheduling.k8s.io/v1
            res!(
                "scheduling.k8s.io",
                "v1",
                "priorityclasses",
                "priorityclass",
                "PriorityClass",
                false,
                &["pc"],
                NONE,
                NOSUB,
                "priorityclasses",
                "io.k8s.api.scheduling.v1.PriorityClass",
                scheduling::PriorityClass
            ),
            // storage.k8s.io/v1
            res!(
                "storage.k8s.io",
                "v1",
                "storageclasses",
                "storageclass",
                "StorageClass",
                false,
                &["sc"],
                NONE,
                NOSUB,
                "storageclasses",
                "io.k8s.api.storage.v1.StorageClass",
                storage::StorageClass
            ),
            // flowcontrol.apiserver.k8s.io/v1
            res!(
                "flowcontrol.apiserver.k8s.io",
                "v1",
                "flowschemas",
                "flowschema",
                "FlowSchema",
                false,
                NONE,
                NONE,
                STATUS,
                "flowschemas",
                "io.k8s.api.flowcontrol.v1.FlowSchema",
                flowcontrol::FlowSchema
            ),
            res!(
                "flowcontrol.apiserver.k8s.io",
                "v1",
                "prioritylevelconfigurations",
                "prioritylevelconfiguration",
                "PriorityLevelConfiguration",
                false,
                NONE,
                NONE,
                STATUS,
                "prioritylevelconfigurations",
                "io.k8s.api.flowcontrol.v1.PriorityLevelConfiguration",
                flowcontrol::PriorityLevelConfiguration
            ),
            // admissionregistration.k8s.io/v1
            res!(
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
                "mutatingwebhookconfiguration",
                "MutatingWebhookConfiguration",
                false,
                NONE,
                &["api-extensions"],
                NOSUB,
                "mutatingwebhookconfigurations",
                "io.k8s.api.admissionregistration.v1.MutatingWebhookConfiguration",
                admissionregistration::MutatingWebhookConfiguration
            ),
            res!(
                "admissionregistration.k8s.io",
                "v1",
                "validatingwebhookconfigurations",
                "validatingwebhookconfiguration",
                "ValidatingWebhookConfiguration",
                false,
                NONE,
                &["api-extensions"],
                NOSUB,
                "validatingwebhookconfigurations",
                "io.k8s.api.admissionregistration.v1.ValidatingWebhookConfiguration",
                admissionregistration::ValidatingWebhookConfiguration
            ),
            res!(
                "admissionregistration.k8s.io",
                "v1",
                "validatingadmissionpolicies",
                "validatingadmissionpolicy",
                "ValidatingAdmissionPolicy",
                false,
                NONE,
                &["api-extensions"],
                STATUS,
                "validatingadmissionpolicies",
                "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicy",
                admissionregistration::ValidatingAdmissionPolicy
            ),
            res!(
                "admissionregistration.k8s.io",
                "v1",
                "validatingadmissionpolicybindings",
                "validatingadmissionpolicybinding",
                "ValidatingAdmissionPolicyBinding",
                false,
                NONE,
                &["api-extensions"],
                NOSUB,
                "validatingadmissionpolicybindings",
                "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicyBinding",
                admissionregistration::ValidatingAdmissionPolicyBinding
            ),
        ]
    })
}

/// The served API groups with their versions, in upstream's discovery order (core excluded).
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in all().iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

/// Looks a resource up by group, version and plural name.
pub fn find(group: &str, version: &str, resource: &str) -> Option<&'static Resource> {
    all()
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

/// Whether any resource is served under `group/version`.
pub fn has_group_version(group: &str, version: &str) -> bool {
    all()
        .iter()
        .any(|r| r.group == group && r.version == version)
}

/// Resources under one group-version.
pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Resource> + 'a {
    all()
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}
