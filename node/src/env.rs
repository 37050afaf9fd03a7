//! A container's environment as upstream's kubelet builds it: `envFrom` first, then `env` in
//! order with `$(VAR)` expansion, `valueFrom` field/resource/ConfigMap/Secret references. A
//! missing required ConfigMap or Secret (or key) is an error naming it
//! (CreateContainerConfigError). Service variables (`KUBERNETES_SERVICE_HOST` and the rest)
//! come after, for the names the container does not set.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::Client;
use kube::api::Api;

/// Reads `metadata.labels['x']`-style and plain field paths the downward API allows.
pub fn field_value(pod: &Pod, path: &str, pod_ip: &str, host_ip: &str) -> Result<String, String> {
    let m = &pod.metadata;
    let sel = |map: &Option<BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(v) = sel(&m.labels, "metadata.labels['") {
        return Ok(v);
    }
    if let Some(v) = sel(&m.annotations, "metadata.annotations['") {
        return Ok(v);
    }
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => kv_lines(m.labels.as_ref()),
        "metadata.annotations" => kv_lines(m.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        other => return Err(format!("unsupported fieldRef fieldPath {other:?}")),
    })
}

fn kv_lines(m: Option<&BTreeMap<String, String>>) -> String {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// `resourceFieldRef`: limits/requests of a container, divided by `divisor` (rounded up).
pub fn resource_value(
    pod: &Pod,
    own: &Container,
    container: Option<&str>,
    resource: &str,
    divisor: Option<&str>,
    node_alloc: Option<&BTreeMap<String, String>>,
) -> Result<String, String> {
    use keelson_scheduler::types::parse_quantity;
    let c = match container.filter(|c| !c.is_empty()) {
        Some(name) => pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| format!("resourceFieldRef: no container {name:?}"))?,
        None => own,
    };
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resourceFieldRef resource {resource:?}"))?;
    let list = c.resources.as_ref().and_then(|r| match kind {
        "limits" => r.limits.as_ref(),
        "requests" => r.requests.as_ref(),
        _ => None,
    });
    if kind != "limits" && kind != "requests" {
        return Err(format!(
            "unsupported resourceFieldRef resource {resource:?}"
        ));
    }
    let cpu = name == "cpu";
    let scale = if cpu { 1000 } else { 1 };
    let raw = list
        .and_then(|l| l.get(name))
        .map(|q| q.0.clone())
        .or_else(|| {
            // Unset limits read as the node's allocatable.
            (kind == "limits")
                .then(|| node_alloc.and_then(|a| a.get(name)).cloned())
                .flatten()
        })
        .unwrap_or_else(|| "0".into());
    let v = parse_quantity(&raw, scale).ok_or_else(|| format!("invalid quantity {raw:?}"))?;
    let d = match divisor {
        Some(d) if !d.is_empty() => {
            parse_quantity(d, scale).ok_or_else(|| format!("invalid divisor {d:?}"))?
        }
        _ => {
            if cpu {
                1000
            } else {
                1
            }
        }
    };
    if d <= 0 {
        return Err("divisor must be positive".into());
    }
    Ok(((v + d - 1) / d).to_string())
}

/// Expands `$(NAME)` from `vars`; `$$` escapes; unknown references stay as they are.
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some((_, v)) = vars.iter().rev().find(|(k, _)| k == name) {
                    out.push_str(v);
                } else {
                    out.push_str(&s[i..i + 3 + end]);
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().expect("char");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn set(vars: &mut Vec<(String, String)>, k: String, v: String) {
    if let Some(e) = vars.iter_mut().find(|(n, _)| *n == k) {
        e.1 = v;
    } else {
        vars.push((k, v));
    }
}

/// An environment variable name made from a Service or port name, as upstream's.
fn env_name(s: &str) -> String {
    s.replace('-', "_").to_ascii_uppercase()
}

/// The variables upstream's kubelet gives containers for `services` (those with a cluster IP):
/// `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT` (the first port) and
/// `<NAME>_SERVICE_PORT_<PORT NAME>`, and Docker's link variables (`<NAME>_PORT`,
/// `<NAME>_PORT_<port>_<PROTO>` with `_PROTO`, `_PORT` and `_ADDR`).
pub fn service_vars(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let spec = svc.spec.as_ref();
        let Some(ip) = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        let Some(first) = ports.first() else {
            continue;
        };
        let name = env_name(svc.metadata.name.as_deref().unwrap_or_default());
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{name}_SERVICE_PORT_{}", env_name(n)),
                    p.port.to_string(),
                ));
            }
        }
        let host_port = |port: i32| match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(_)) => format!("[{ip}]:{port}"),
            _ => format!("{ip}:{port}"),
        };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let url = format!("{}://{}", proto.to_ascii_lowercase(), host_port(p.port));
            if i == 0 {
                out.push((format!("{name}_PORT"), url.clone()));
            }
            let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
            out.push((format!("{prefix}_PROTO"), proto.to_ascii_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.to_string()));
            out.push((prefix, url));
        }
    }
    out
}

/// A pod's Service variables, as upstream's kubelet gives them: the `kubernetes` Service of
/// `default` always (what in-cluster clients find the API by), and with `enableServiceLinks`
/// (the default) every Service of the pod's namespace, which wins over `default/kubernetes` for
/// a Service of the same name.
pub async fn service_env(client: &Client, pod: &Pod) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    if links {
        let list = Api::<Service>::namespaced(client.clone(), ns)
            .list(&Default::default())
            .await
            .map_err(|e| format!("listing the services of {ns}: {e}"))?;
        for s in list.items {
            services.insert(s.metadata.name.clone().unwrap_or_default(), s);
        }
    }
    if !services.contains_key("kubernetes")
        && let Some(master) = Api::<Service>::namespaced(client.clone(), "default")
            .get_opt("kubernetes")
            .await
            .map_err(|e| format!("reading service default/kubernetes: {e}"))?
    {
        services.insert("kubernetes".into(), master);
    }
    let services: Vec<Service> = services.into_values().collect();
    Ok(service_vars(&services))
}

/// The container's environment, in order: its `envFrom` and `env`, then the Service variables
/// (`services`, from [`service_env`]) they do not set; `$(VAR)` sees both.
pub async fn resolve(
    client: &Client,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    host_ip: &str,
    services: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let get_cm = |name: String| {
        let cms = cms.clone();
        async move {
            cms.get_opt(&name)
                .await
                .map_err(|e| format!("configmap {name:?}: {e}"))
        }
    };
    let get_secret = |name: String| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt(&name)
                .await
                .map_err(|e| format!("secret {name:?}: {e}"))
        }
    };
    let mut vars: Vec<(String, String)> = Vec::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match get_cm(r.name.clone()).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match get_secret(r.name.clone()).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                Some(field_value(pod, &f.field_path, pod_ip, host_ip)?)
            } else if let Some(r) = &from.resource_field_ref {
                Some(resource_value(
                    pod,
                    c,
                    r.container_name.as_deref(),
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    None,
                )?)
            } else if let Some(r) = &from.config_map_key_ref {
                match get_cm(r.name.clone()).await? {
                    Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            ));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match get_secret(r.name.clone()).await? {
                    Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => Some(String::from_utf8_lossy(&v.0).into_owned()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            ));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(format!("secret {:?} not found", r.name)),
                }
            } else {
                None
            }
        } else {
            // Later entries win in `expand`: the container's own over the Services'.
            let lookup: Vec<(String, String)> =
                services.iter().chain(vars.iter()).cloned().collect();
            Some(expand(e.value.as_deref().unwrap_or(""), &lookup))
        };
        if let Some(v) = value {
            set(&mut vars, e.name.clone(), v);
        }
    }
    for (k, v) in services {
        if !vars.iter().any(|(n, _)| n == k) {
            vars.push((k.clone(), v.clone()));
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_variables_are_upstreams() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "my-db"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "sql", "port": 5432}, {"name": "metrics-http", "port": 9187, "protocol": "TCP"}]}}))
        .unwrap();
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}))
        .unwrap();
        let vars: BTreeMap<String, String> = service_vars(&[svc, headless]).into_iter().collect();
        let want = [
            ("MY_DB_SERVICE_HOST", "10.96.0.7"),
            ("MY_DB_SERVICE_PORT", "5432"),
            ("MY_DB_SERVICE_PORT_SQL", "5432"),
            ("MY_DB_SERVICE_PORT_METRICS_HTTP", "9187"),
            ("MY_DB_PORT", "tcp://10.96.0.7:5432"),
            ("MY_DB_PORT_5432_TCP", "tcp://10.96.0.7:5432"),
            ("MY_DB_PORT_5432_TCP_PROTO", "tcp"),
            ("MY_DB_PORT_5432_TCP_PORT", "5432"),
            ("MY_DB_PORT_5432_TCP_ADDR", "10.96.0.7"),
            ("MY_DB_PORT_9187_TCP", "tcp://10.96.0.7:9187"),
            ("MY_DB_PORT_9187_TCP_PROTO", "tcp"),
            ("MY_DB_PORT_9187_TCP_PORT", "9187"),
            ("MY_DB_PORT_9187_TCP_ADDR", "10.96.0.7"),
        ];
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(vars, want);
    }

    #[test]
    fn expansion_follows_upstream() {
        let vars = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("é$(A)", &vars), "éx");
    }

    #[test]
    fn field_refs() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}}}]}
        }))
        .unwrap();
        assert_eq!(
            field_value(&pod, "metadata.labels['app']", "1", "2").unwrap(),
            "web"
        );
        assert_eq!(field_value(&pod, "spec.nodeName", "1", "2").unwrap(), "n1");
        assert_eq!(field_value(&pod, "status.podIP", "1", "2").unwrap(), "1");
        assert!(field_value(&pod, "spec.bogus", "1", "2").is_err());
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            resource_value(&pod, c, None, "limits.cpu", None, None).unwrap(),
            "2"
        );
        assert_eq!(
            resource_value(&pod, c, None, "limits.memory", Some("1Mi"), None).unwrap(),
            "64"
        );
    }
}
