//! Pod Security Admission (the `PodSecurity` plugin): the Pod Security Standards' `baseline`
//! and `restricted` levels, chosen per namespace by the labels
//! `pod-security.kubernetes.io/{enforce,audit,warn}` (with optional `-version` labels; every
//! version is judged by the current checks, as `latest`). `enforce` refuses a violating pod,
//! `warn` returns a warning to the client, `audit` annotates the audit event. Workload objects
//! with a pod template (Deployments, Jobs, ...) are warned about and audited, never refused.

use serde_json::Value;

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// Known privilege escalations are forbidden.
    Baseline,
    /// Hardening best practices are required.
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A level with its version label (`latest` unless set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Level.
    pub level: Level,
    /// The `-version` label.
    pub version: String,
}

impl Policy {
    /// `restricted:latest`, as messages name a policy.
    pub fn label(&self) -> String {
        format!("{}:{}", self.level.name(), self.version)
    }
}

/// A namespace's three modes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modes {
    /// Refuse pods that violate it.
    pub enforce: Option<Policy>,
    /// Annotate the audit event.
    pub audit: Option<Policy>,
    /// Warn the client.
    pub warn: Option<Policy>,
}

/// The modes of a namespace from its labels; an unknown level is an error (upstream refuses such
/// labels when they are set, and treats a bad one as `restricted`).
pub fn modes(namespace: &Value) -> Modes {
    let label = |k: &str| {
        namespace
            .pointer(&format!(
                "/metadata/labels/pod-security.kubernetes.io~1{}",
                k
            ))
            .and_then(Value::as_str)
    };
    let mode = |m: &str| {
        let level = label(m)?;
        let level = Level::parse(level).unwrap_or(Level::Restricted);
        Some(Policy {
            level,
            version: label(&format!("{m}-version"))
                .filter(|v| !v.is_empty())
                .unwrap_or("latest")
                .to_string(),
        })
    };
    // Without their own labels, audit and warn follow enforce, as upstream.
    let enforce = mode("enforce");
    Modes {
        audit: mode("audit").or_else(|| enforce.clone()),
        warn: mode("warn").or_else(|| enforce.clone()),
        enforce,
    }
}

/// Checks a namespace label change is valid: levels must be known.
pub fn validate_labels(namespace: &Value) -> Result<(), String> {
    for m in ["enforce", "audit", "warn"] {
        if let Some(v) = namespace
            .pointer(&format!("/metadata/labels/pod-security.kubernetes.io~1{m}"))
            .and_then(Value::as_str)
            && Level::parse(v).is_none()
        {
            return Err(format!(
                "metadata.labels[pod-security.kubernetes.io/{m}]: Unsupported value: {v:?}: supported values: \"privileged\", \"baseline\", \"restricted\""
            ));
        }
    }
    Ok(())
}

fn names(list: &[String]) -> String {
    list.iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(list: &[String]) -> String {
    if list.len() == 1 {
        format!("container {}", names(list))
    } else {
        format!("containers {}", names(list))
    }
}

struct Container<'a> {
    name: String,
    v: &'a Value,
}

fn all_containers(spec: &Value) -> Vec<Container<'_>> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|g| spec.get(*g).and_then(Value::as_array).into_iter().flatten())
        .map(|c| Container {
            name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
            v: c,
        })
        .collect()
}

fn sc<'a>(c: &'a Value, field: &str) -> Option<&'a Value> {
    c.pointer(&format!("/securityContext/{field}"))
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The violations of `level` by a pod (`meta`, `spec`): (check, detail), in upstream's order.
pub fn check(level: Level, meta: &Value, spec: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let cs = all_containers(spec);
    let psc = spec.get("securityContext").unwrap_or(&Value::Null);
    let which = |f: &dyn Fn(&Value) -> bool| -> Vec<String> {
        cs.iter()
            .filter(|c| f(c.v))
            .map(|c| c.name.clone())
            .collect()
    };
    // Baseline.
    let host_process = psc
        .pointer("/windowsOptions/hostProcess")
        .and_then(Value::as_bool)
        == Some(true);
    let hp = which(&|c| sc(c, "windowsOptions/hostProcess").and_then(Value::as_bool) == Some(true));
    if host_process || !hp.is_empty() {
        out.push((
            "hostProcess".into(),
            if hp.is_empty() {
                "pod must not set securityContext.windowsOptions.hostProcess=true".into()
            } else {
                format!(
                    "{} must not set securityContext.windowsOptions.hostProcess=true",
                    containers_phrase(&hp)
                )
            },
        ));
    }
    let ns: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec.get(**k).and_then(Value::as_bool) == Some(true))
        .map(|k| format!("{k}=true"))
        .collect();
    if !ns.is_empty() {
        out.push(("host namespaces".into(), ns.join(", ")));
    }
    let privileged = which(&|c| sc(c, "privileged").and_then(Value::as_bool) == Some(true));
    if !privileged.is_empty() {
        out.push((
            "privileged".into(),
            format!(
                "{} must not set securityContext.privileged=true",
                containers_phrase(&privileged)
            ),
        ));
    }
    let added = |c: &Value| -> Vec<String> {
        sc(c, "capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    if level == Level::Baseline {
        let bad: Vec<String> = cs
            .iter()
            .filter_map(|c| {
                let extra: Vec<String> = added(c.v)
                    .into_iter()
                    .filter(|a| !BASELINE_CAPS.contains(&a.as_str()))
                    .collect();
                (!extra.is_empty()).then(|| {
                    format!(
                        "container {:?} must not include {} in securityContext.capabilities.add",
                        c.name,
                        names(&extra)
                    )
                })
            })
            .collect();
        if !bad.is_empty() {
            out.push(("non-default capabilities".into(), bad.join("; ")));
        }
    }
    let vols = spec
        .get("volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let host_path: Vec<String> = vols
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    // At restricted, the volume-type check covers hostPath (upstream's override).
    if !host_path.is_empty() && level != Level::Restricted {
        out.push((
            "hostPath volumes".into(),
            format!(
                "{} {}",
                if host_path.len() == 1 {
                    "volume"
                } else {
                    "volumes"
                },
                names(&host_path)
            ),
        ));
    }
    let ports: Vec<String> = cs
        .iter()
        .filter_map(|c| {
            let p: Vec<String> =
                c.v.get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("hostPort").and_then(Value::as_i64))
                    .filter(|p| *p != 0)
                    .map(|p| p.to_string())
                    .collect();
            (!p.is_empty()).then(|| {
                format!(
                    "container {:?} uses {} {}",
                    c.name,
                    if p.len() == 1 {
                        "hostPort"
                    } else {
                        "hostPorts"
                    },
                    p.join(", ")
                )
            })
        })
        .collect();
    if !ports.is_empty() {
        out.push(("hostPort".into(), ports.join(", ")));
    }
    let apparmor_bad =
        |t: Option<&str>| matches!(t, Some(t) if t != "RuntimeDefault" && t != "Localhost");
    let mut apparmor: Vec<String> = Vec::new();
    if apparmor_bad(psc.pointer("/appArmorProfile/type").and_then(Value::as_str)) {
        apparmor
            .push("pod must not set securityContext.appArmorProfile.type to \"Unconfined\"".into());
    }
    for (k, v) in meta
        .pointer("/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && v.as_str()
                .is_some_and(|v| v != "runtime/default" && !v.starts_with("localhost/"))
        {
            apparmor.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    if !apparmor.is_empty() {
        out.push(("forbidden AppArmor profile".into(), apparmor.join(", ")));
    }
    let se_bad = |o: &Value| {
        o.get("type").and_then(Value::as_str).is_some_and(|t| {
            !matches!(
                t,
                "" | "container_t" | "container_init_t" | "container_kvm_t"
            )
        }) || o
            .get("user")
            .and_then(Value::as_str)
            .is_some_and(|u| !u.is_empty())
            || o.get("role")
                .and_then(Value::as_str)
                .is_some_and(|r| !r.is_empty())
    };
    let se_pod = psc.get("seLinuxOptions").is_some_and(se_bad);
    let se = which(&|c| sc(c, "seLinuxOptions").is_some_and(se_bad));
    if se_pod || !se.is_empty() {
        out.push((
            "seLinuxOptions".into(),
            if se.is_empty() {
                "pod set forbidden securityContext.seLinuxOptions".into()
            } else {
                format!(
                    "{} set forbidden securityContext.seLinuxOptions",
                    containers_phrase(&se)
                )
            },
        ));
    }
    let proc = which(&|c| {
        sc(c, "procMount")
            .and_then(Value::as_str)
            .is_some_and(|p| p != "Default")
    });
    if !proc.is_empty() {
        out.push((
            "procMount".into(),
            format!(
                "{} must not set securityContext.procMount to \"Unmasked\"",
                containers_phrase(&proc)
            ),
        ));
    }
    fn seccomp_type(o: &Value) -> Option<&str> {
        o.pointer("/seccompProfile/type").and_then(Value::as_str)
    }
    let unconfined_pod = seccomp_type(psc) == Some("Unconfined");
    let unconfined = which(&|c| {
        c.get("securityContext")
            .and_then(|s| s.pointer("/seccompProfile/type"))
            .and_then(Value::as_str)
            == Some("Unconfined")
    });
    if level == Level::Baseline && (unconfined_pod || !unconfined.is_empty()) {
        out.push((
            "seccompProfile".into(),
            if unconfined.is_empty() {
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".into()
            } else {
                format!(
                    "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                    containers_phrase(&unconfined)
                )
            },
        ));
    }
    let sysctls: Vec<String> = psc
        .get("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(str::to_string)
        .collect();
    if !sysctls.is_empty() {
        out.push(("forbidden sysctls".into(), sysctls.join(", ")));
    }
    if level != Level::Restricted {
        return out;
    }
    // Restricted.
    let restricted_vols: Vec<String> = vols
        .iter()
        .filter_map(|v| {
            let o = v.as_object()?;
            let kind = o.keys().find(|k| *k != "name")?;
            (!RESTRICTED_VOLUMES.contains(&kind.as_str())).then(|| {
                format!(
                    "volume {:?} uses restricted volume type {kind:?}",
                    o.get("name").and_then(Value::as_str).unwrap_or("")
                )
            })
        })
        .collect();
    if !restricted_vols.is_empty() {
        out.push(("restricted volume types".into(), restricted_vols.join(", ")));
    }
    let escalation =
        which(&|c| sc(c, "allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false));
    if !escalation.is_empty() {
        out.push((
            "allowPrivilegeEscalation != false".into(),
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers_phrase(&escalation)
            ),
        ));
    }
    let caps: Vec<String> = cs
        .iter()
        .flat_map(|c| {
            let mut v = Vec::new();
            let drops_all = sc(c.v, "capabilities/drop")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")));
            if !drops_all {
                v.push(format!(
                    "container {:?} must set securityContext.capabilities.drop=[\"ALL\"]",
                    c.name
                ));
            }
            let extra: Vec<String> = added(c.v)
                .into_iter()
                .filter(|a| a != "NET_BIND_SERVICE")
                .collect();
            if !extra.is_empty() {
                v.push(format!(
                    "container {:?} must not include {} in securityContext.capabilities.add",
                    c.name,
                    names(&extra)
                ));
            }
            v
        })
        .collect();
    if !caps.is_empty() {
        out.push(("unrestricted capabilities".into(), caps.join("; ")));
    }
    let pod_non_root = psc.get("runAsNonRoot").and_then(Value::as_bool);
    let not_non_root = which(&|c| match sc(c, "runAsNonRoot").and_then(Value::as_bool) {
        Some(v) => !v,
        None => pod_non_root != Some(true),
    });
    if pod_non_root == Some(false) || !not_non_root.is_empty() {
        out.push((
            "runAsNonRoot != true".into(),
            if not_non_root.is_empty() {
                "pod must not set securityContext.runAsNonRoot=false".into()
            } else {
                format!(
                    "pod or {} must set securityContext.runAsNonRoot=true",
                    containers_phrase(&not_non_root)
                )
            },
        ));
    }
    let root_pod = psc.get("runAsUser").and_then(Value::as_i64) == Some(0);
    let root = which(&|c| sc(c, "runAsUser").and_then(Value::as_i64) == Some(0));
    if root_pod || !root.is_empty() {
        out.push((
            "runAsUser=0".into(),
            if root.is_empty() {
                "pod must not set runAsUser=0".into()
            } else {
                format!("{} must not set runAsUser=0", containers_phrase(&root))
            },
        ));
    }
    let ok_type = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
    let pod_ok = ok_type(seccomp_type(psc));
    let bad_seccomp = which(&|c| {
        let t = c
            .get("securityContext")
            .and_then(|s| s.pointer("/seccompProfile/type"))
            .and_then(Value::as_str);
        match t {
            Some(_) => !ok_type(t),
            None => !pod_ok,
        }
    });
    if (!pod_ok && seccomp_type(psc).is_some()) || !bad_seccomp.is_empty() {
        out.push((
            "seccompProfile".into(),
            if bad_seccomp.is_empty() {
                "pod must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"".into()
            } else {
                format!(
                    "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                    containers_phrase(&bad_seccomp)
                )
            },
        ));
    }
    out
}

/// `PodSecurity "restricted:latest": a (x), b (y)`, after "violates " or "would violate ".
pub fn describe(policy: &Policy, violations: &[(String, String)]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|(k, d)| format!("{k} ({d})"))
        .collect();
    format!("PodSecurity {:?}: {}", policy.label(), parts.join(", "))
}

/// The pod template of a workload object, `(metadata, spec)`; the pod itself for a Pod.
pub fn pod_of<'a>(kind: &str, obj: &'a Value) -> Option<(&'a Value, &'a Value)> {
    let t = match kind {
        "Pod" => obj,
        "CronJob" => obj.pointer("/spec/jobTemplate/spec/template")?,
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController"
        | "PodTemplate" => {
            if kind == "PodTemplate" {
                obj.get("template")?
            } else {
                obj.pointer("/spec/template")?
            }
        }
        _ => return None,
    };
    Some((t.get("metadata").unwrap_or(&Value::Null), t.get("spec")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn restricted_ok() -> Value {
        json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "x", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "d", "emptyDir": {}}]})
    }

    #[test]
    fn a_hardened_pod_passes_every_level() {
        for l in [Level::Privileged, Level::Baseline, Level::Restricted] {
            assert!(check(l, &json!({}), &restricted_ok()).is_empty(), "{l:?}");
        }
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let spec = json!({"hostNetwork": true, "hostPID": true,
            "containers": [
                {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}},
                 "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "securityContext": {"privileged": true}}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}});
        let v = check(Level::Baseline, &json!({}), &spec);
        let msg = describe(
            &Policy {
                level: Level::Baseline,
                version: "latest".into(),
            },
            &v,
        );
        assert_eq!(
            msg,
            r#"PodSecurity "baseline:latest": host namespaces (hostNetwork=true, hostPID=true), privileged (containers "a", "b" must not set securityContext.privileged=true), non-default capabilities (container "a" must not include "NET_ADMIN" in securityContext.capabilities.add), hostPath volumes (volume "root"), hostPort (container "a" uses hostPort 8080), forbidden sysctls (kernel.msgmax)"#
        );
        // Privileged allows all of it.
        assert!(check(Level::Privileged, &json!({}), &spec).is_empty());
    }

    #[test]
    fn restricted_requires_hardening() {
        let spec = json!({"containers": [{"name": "c", "image": "x"}]});
        let v = check(Level::Restricted, &json!({}), &spec);
        let names: Vec<&str> = v.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "allowPrivilegeEscalation != false",
                "unrestricted capabilities",
                "runAsNonRoot != true",
                "seccompProfile"
            ]
        );
        assert_eq!(
            v[3].1,
            r#"pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#
        );
        // Baseline has no opinion on those.
        assert!(check(Level::Baseline, &json!({}), &spec).is_empty());
        let mut s = restricted_ok();
        s["volumes"] = json!([{"name": "h", "hostPath": {"path": "/x"}}]);
        s["containers"][0]["securityContext"]["runAsUser"] = json!(0);
        let v = check(Level::Restricted, &json!({}), &s);
        let names: Vec<&str> = v.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["restricted volume types", "runAsUser=0"]);
    }

    #[test]
    fn namespace_labels_choose_the_modes() {
        let ns = json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/enforce-version": "v1.32",
            "pod-security.kubernetes.io/warn": "restricted"}}});
        let m = modes(&ns);
        assert_eq!(m.enforce.as_ref().unwrap().label(), "baseline:v1.32");
        assert_eq!(m.warn.as_ref().unwrap().label(), "restricted:latest");
        // No audit label: audit follows enforce.
        assert_eq!(m.audit.as_ref().unwrap().label(), "baseline:v1.32");
        assert!(validate_labels(&ns).is_ok());
        let bad = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "strict"}}});
        assert!(
            validate_labels(&bad)
                .unwrap_err()
                .contains("Unsupported value")
        );
    }
}
