//! Pod volumes on disk: emptyDir, configMap, secret, downwardAPI, projected (including
//! service-account tokens through TokenRequest), hostPath, and PVCs bound to hostPath or local
//! PersistentVolumes. Each volume becomes a host directory (or file) that the runtime mounts.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, ServiceAccount,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// Writes a pod's volumes under `dir`; returns volume name → host path. `Err` is the
/// FailedMount message.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    dir: &Path,
) -> Result<HashMap<String, PathBuf>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = HashMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let target = dir.join("volumes").join(&v.name);
        let fail = |e: String| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name);
        let path = if v.empty_dir.is_some() {
            mkdir(&target).map_err(fail)?;
            target
        } else if let Some(cm) = &v.config_map {
            let files = config_map_files(client, ns, &cm.name, cm.items.as_deref(), cm.optional)
                .await
                .map_err(fail)?;
            write_files(&target, &files, cm.default_mode.unwrap_or(0o644)).map_err(fail)?;
            target
        } else if let Some(sv) = &v.secret {
            let name = sv.secret_name.clone().unwrap_or_default();
            let files = secret_files(client, ns, &name, sv.items.as_deref(), sv.optional)
                .await
                .map_err(fail)?;
            write_files(&target, &files, sv.default_mode.unwrap_or(0o644)).map_err(fail)?;
            target
        } else if let Some(d) = &v.downward_api {
            let files = downward(pod, d.items.as_deref().unwrap_or(&[])).map_err(fail)?;
            write_files(&target, &files, d.default_mode.unwrap_or(0o644)).map_err(fail)?;
            target
        } else if let Some(p) = &v.projected {
            let mut files = Vec::new();
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    files.extend(
                        config_map_files(client, ns, &cm.name, cm.items.as_deref(), cm.optional)
                            .await
                            .map_err(fail)?,
                    );
                }
                if let Some(sv) = &src.secret {
                    files.extend(
                        secret_files(client, ns, &sv.name, sv.items.as_deref(), sv.optional)
                            .await
                            .map_err(fail)?,
                    );
                }
                if let Some(d) = &src.downward_api {
                    files.extend(downward(pod, d.items.as_deref().unwrap_or(&[])).map_err(fail)?);
                }
                if let Some(t) = &src.service_account_token {
                    let sa = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_else(|| "default".into());
                    let token = request_token(client, ns, &sa, pod, t).await.map_err(fail)?;
                    files.push((t.path.clone(), token.into_bytes(), None));
                }
            }
            write_files(&target, &files, p.default_mode.unwrap_or(0o644)).map_err(fail)?;
            target
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => mkdir(&p).map_err(fail)?,
                "FileOrCreate" => {
                    if !p.exists() {
                        if let Some(parent) = p.parent() {
                            mkdir(parent).map_err(fail)?;
                        }
                        std::fs::write(&p, b"").map_err(|e| fail(format!("{}: {e}", h.path)))?;
                    }
                }
                "Directory" if !p.is_dir() => {
                    return Err(fail(format!(
                        "hostPath type check failed: {} is not a directory",
                        h.path
                    )));
                }
                "File" if !p.is_file() => {
                    return Err(fail(format!(
                        "hostPath type check failed: {} is not a file",
                        h.path
                    )));
                }
                "" | "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {}
                other => return Err(fail(format!("unsupported hostPath type {other:?}"))),
            }
            p
        } else if let Some(c) = &v.persistent_volume_claim {
            pvc_path(client, ns, &c.claim_name).await.map_err(fail)?
        } else {
            return Err(fail(
                "volume type not supported by the process runtime".into(),
            ));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

type File = (String, Vec<u8>, Option<i32>);

/// A ConfigMap's keys (data and binaryData) as files, all or the listed `items`.
async fn config_map_files(
    client: &Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> Result<Vec<File>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(obj) => {
            let mut data: BTreeMap<String, Vec<u8>> = obj
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                obj.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            select(&data, items, optional).map_err(|e| format!("configmap {name:?}: {e}"))
        }
        None if optional == Some(true) => Ok(Vec::new()),
        None => Err(format!("configmap {name:?} not found")),
    }
}

/// A Secret's keys as files, all or the listed `items`.
async fn secret_files(
    client: &Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> Result<Vec<File>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(obj) => {
            let data: BTreeMap<String, Vec<u8>> = obj
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            select(&data, items, optional).map_err(|e| format!("secret {name:?}: {e}"))
        }
        None if optional == Some(true) => Ok(Vec::new()),
        None => Err(format!("secret {name:?} not found")),
    }
}

fn select(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> Result<Vec<File>, String> {
    match items {
        None => Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), None))
            .collect()),
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                match data.get(&it.key) {
                    Some(v) => out.push((it.path.clone(), v.clone(), it.mode)),
                    None if optional == Some(true) => {}
                    None => return Err(format!("key {:?} not found", it.key)),
                }
            }
            Ok(out)
        }
    }
}

fn downward(pod: &Pod, items: &[DownwardAPIVolumeFile]) -> Result<Vec<File>, String> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    let host = pod
        .status
        .as_ref()
        .and_then(|s| s.host_ip.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            crate::env::field_value(pod, &f.field_path, &ip, &host)?
        } else if let Some(r) = &it.resource_field_ref {
            let spec = pod.spec.as_ref().ok_or("pod without spec")?;
            let name = r.container_name.as_deref().unwrap_or("");
            let c = spec
                .containers
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| format!("resourceFieldRef: no container {name:?}"))?;
            crate::env::resource_value(
                pod,
                c,
                None,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                None,
            )?
        } else {
            String::new()
        };
        out.push((it.path.clone(), value.into_bytes(), it.mode));
    }
    Ok(out)
}

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn write_files(dir: &Path, files: &[File], default_mode: i32) -> Result<(), String> {
    mkdir(dir)?;
    for (rel, data, mode) in files {
        if rel.starts_with('/') || rel.split('/').any(|p| p == "..") {
            return Err(format!("invalid path {rel:?}"));
        }
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            mkdir(parent)?;
        }
        let tmp = p.with_extension("keelson-tmp");
        std::fs::write(&tmp, data).map_err(|e| format!("{}: {e}", p.display()))?;
        let perm = std::fs::Permissions::from_mode(mode.unwrap_or(default_mode) as u32 & 0o7777);
        std::fs::set_permissions(&tmp, perm).map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

async fn request_token(
    client: &Client,
    ns: &str,
    sa: &str,
    pod: &Pod,
    t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
) -> Result<String, String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: t.audience.clone().into_iter().collect(),
            expiration_seconds: Some(t.expiration_seconds.unwrap_or(3607)),
            bound_object_ref: Some(k8s_openapi::api::authentication::v1::BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let out: TokenRequest = api
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await
        .map_err(|e| format!("failed to fetch token for service account {ns}/{sa}: {e}"))?;
    out.status
        .map(|s| s.token)
        .ok_or_else(|| "token request returned no token".into())
}

async fn pvc_path(client: &Client, ns: &str, claim: &str) -> Result<PathBuf, String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound"))?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs
        .get_opt(&pv_name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("persistentvolume {pv_name:?} not found"))?;
    let spec = pv.spec.unwrap_or_default();
    if let Some(h) = spec.host_path {
        let p = PathBuf::from(h.path);
        if h.type_.as_deref() == Some("DirectoryOrCreate") {
            mkdir(&p)?;
        }
        return Ok(p);
    }
    if let Some(l) = spec.local {
        return Ok(PathBuf::from(l.path));
    }
    Err(format!(
        "persistentvolume {pv_name:?} is neither hostPath nor local"
    ))
}
