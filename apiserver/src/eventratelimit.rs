//! The EventRateLimit admission plugin: creates and updates of core Events are limited by
//! token buckets, as upstream's `plugin/pkg/admission/eventratelimit`. Its configuration
//! (`eventratelimit.admission.k8s.io/v1alpha1` Configuration) comes from the
//! `--admission-control-config-file` (an AdmissionConfiguration naming the plugin, with the
//! configuration inline or in a file at `path`) and lists limits of four types:
//!
//! - `Server`: one bucket for the whole server;
//! - `Namespace`: a bucket per namespace;
//! - `User`: a bucket per user;
//! - `SourceAndObject`: a bucket per event source and involved object.
//!
//! Each has `qps` and `burst`; the per-key types keep the `cacheSize` most recently used
//! buckets (4096 by default). An event over any limit is refused with 429 TooManyRequests
//! ("limit reached on type Namespace for key default"); dry runs take no tokens.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::Value;

use crate::status::{ApiError, ApiResult};

/// Buckets kept per limit when `cacheSize` is not given.
const DEFAULT_CACHE_SIZE: usize = 4096;

/// What a limit is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LimitType {
    Server,
    Namespace,
    User,
    SourceAndObject,
}

impl LimitType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Server" => LimitType::Server,
            "Namespace" => LimitType::Namespace,
            "User" => LimitType::User,
            "SourceAndObject" => LimitType::SourceAndObject,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            LimitType::Server => "Server",
            LimitType::Namespace => "Namespace",
            LimitType::User => "User",
            LimitType::SourceAndObject => "SourceAndObject",
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    used: u64,
}

#[derive(Debug)]
struct Limit {
    kind: LimitType,
    qps: f64,
    burst: f64,
    cache_size: usize,
    buckets: Mutex<(HashMap<String, Bucket>, u64)>,
}

impl Limit {
    /// Takes a token for `key`, false when none is left.
    fn take(&self, key: &str, now: Instant) -> bool {
        let mut guard = self.buckets.lock();
        let (buckets, clock) = &mut *guard;
        *clock += 1;
        let tick = *clock;
        if !buckets.contains_key(key) && buckets.len() >= self.cache_size.max(1) {
            // The least recently used bucket makes room.
            if let Some(old) = buckets
                .iter()
                .min_by_key(|(_, b)| b.used)
                .map(|(k, _)| k.clone())
            {
                buckets.remove(&old);
            }
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            used: tick,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.qps).min(self.burst);
        b.at = now;
        b.used = tick;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The plugin with its limits.
#[derive(Debug)]
pub struct EventRateLimit {
    limits: Vec<Limit>,
}

/// The key of an event under a limit type.
fn key_of(kind: LimitType, user: &str, ns: &str, event: &Value) -> String {
    let s = |p: &str| event.pointer(p).and_then(Value::as_str).unwrap_or("");
    match kind {
        LimitType::Server => String::new(),
        LimitType::Namespace => ns.to_string(),
        LimitType::User => user.to_string(),
        LimitType::SourceAndObject => [
            s("/source/component"),
            s("/source/host"),
            s("/involvedObject/kind"),
            s("/involvedObject/namespace"),
            s("/involvedObject/name"),
            s("/involvedObject/uid"),
            s("/involvedObject/apiVersion"),
        ]
        .join(""),
    }
}

impl EventRateLimit {
    /// The plugin of a Configuration document.
    pub fn from_config(doc: &Value) -> Result<Self, String> {
        if doc.get("kind").and_then(Value::as_str) != Some("Configuration") {
            return Err("EventRateLimit: the configuration must be a Configuration of eventratelimit.admission.k8s.io/v1alpha1".into());
        }
        let items = doc
            .get("limits")
            .and_then(Value::as_array)
            .filter(|l| !l.is_empty())
            .ok_or("EventRateLimit: limits: Required value: must not be empty")?;
        let mut limits: Vec<Limit> = Vec::new();
        for (i, l) in items.iter().enumerate() {
            let t = l.get("type").and_then(Value::as_str).unwrap_or("");
            let kind = LimitType::parse(t).ok_or_else(|| {
                format!("EventRateLimit: limits[{i}].type: Unsupported value: {t:?}: supported values: \"Server\", \"Namespace\", \"User\", \"SourceAndObject\"")
            })?;
            if limits.iter().any(|x| x.kind == kind) {
                return Err(format!(
                    "EventRateLimit: limits[{i}].type: Duplicate value: {t:?}"
                ));
            }
            let positive = |f: &str| -> Result<f64, String> {
                l.get(f)
                    .and_then(Value::as_f64)
                    .filter(|v| *v > 0.0)
                    .ok_or_else(|| {
                        format!("EventRateLimit: limits[{i}].{f}: Invalid value: must be positive")
                    })
            };
            let cache_size = match l.get("cacheSize").and_then(Value::as_i64) {
                None | Some(0) => DEFAULT_CACHE_SIZE,
                Some(n) if n > 0 => n as usize,
                Some(n) => {
                    return Err(format!(
                        "EventRateLimit: limits[{i}].cacheSize: Invalid value: {n}: must not be negative"
                    ));
                }
            };
            limits.push(Limit {
                kind,
                qps: positive("qps")?,
                burst: positive("burst")?.floor(),
                cache_size,
                buckets: Mutex::new((HashMap::new(), 0)),
            });
        }
        Ok(EventRateLimit { limits })
    }

    /// The plugin's configuration from an AdmissionConfiguration file, if it names the plugin.
    pub fn from_admission_config(path: &Path) -> Result<Option<Self>, String> {
        let fail = |e: String| format!("--admission-control-config-file {}: {e}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if doc.get("kind").and_then(Value::as_str) != Some("AdmissionConfiguration") {
            return Err(fail("the file must hold an AdmissionConfiguration".into()));
        }
        for p in doc
            .get("plugins")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            if name != "EventRateLimit" {
                tracing::warn!(
                    plugin = name,
                    "--admission-control-config-file: no configuration is read for this plugin"
                );
                continue;
            }
            let config = match (
                p.get("configuration"),
                p.get("path").and_then(Value::as_str),
            ) {
                (Some(c), _) if !c.is_null() => c.clone(),
                (_, Some(file)) => {
                    let f = path.parent().unwrap_or(Path::new(".")).join(file);
                    let t = std::fs::read_to_string(&f)
                        .map_err(|e| fail(format!("EventRateLimit path {}: {e}", f.display())))?;
                    serde_yaml::from_str(&t).map_err(|e| fail(format!("{}: {e}", f.display())))?
                }
                _ => {
                    return Err(fail(
                        "EventRateLimit has neither configuration nor path".into(),
                    ));
                }
            };
            return Self::from_config(&config).map(Some).map_err(fail);
        }
        Ok(None)
    }

    /// Takes a token from each limit for an event `user` writes in `ns` (every limit is
    /// charged, as upstream); any limit with none left refuses it.
    pub fn accept(&self, user: &str, ns: &str, event: &Value) -> ApiResult<()> {
        let now = Instant::now();
        let refusals: Vec<String> = self
            .limits
            .iter()
            .filter_map(|l| {
                let key = key_of(l.kind, user, ns, event);
                (!l.take(&key, now))
                    .then(|| format!("limit reached on type {} for key {key}", l.kind.name()))
            })
            .collect();
        let why = match refusals.as_slice() {
            [] => return Ok(()),
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        Err(ApiError::new(
            429,
            "TooManyRequests",
            format!("Too many requests: {why}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configurations_are_checked() {
        let ok = json!({"kind": "Configuration", "limits": [
            {"type": "Namespace", "qps": 1, "burst": 2, "cacheSize": 10},
            {"type": "Server", "qps": 10, "burst": 20}]});
        assert_eq!(EventRateLimit::from_config(&ok).unwrap().limits.len(), 2);
        for (bad, why) in [
            (
                json!({"kind": "Configuration", "limits": []}),
                "must not be empty",
            ),
            (
                json!({"kind": "Configuration", "limits": [{"type": "Pod", "qps": 1, "burst": 1}]}),
                "Unsupported value",
            ),
            (
                json!({"kind": "Configuration", "limits": [{"type": "User", "qps": 0, "burst": 1}]}),
                "qps",
            ),
            (
                json!({"kind": "Configuration", "limits": [{"type": "User", "qps": 1, "burst": 1}, {"type": "User", "qps": 1, "burst": 1}]}),
                "Duplicate",
            ),
        ] {
            let e = EventRateLimit::from_config(&bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn buckets_refill_per_key_and_evict_the_least_recent() {
        let p = EventRateLimit::from_config(&json!({"kind": "Configuration", "limits": [
            {"type": "Namespace", "qps": 1, "burst": 2, "cacheSize": 2}]}))
        .unwrap();
        let ev = json!({});
        assert!(p.accept("u", "a", &ev).is_ok());
        assert!(p.accept("u", "a", &ev).is_ok());
        let e = p.accept("u", "a", &ev).unwrap_err();
        assert_eq!(e.code, 429);
        assert!(
            e.message
                .contains("limit reached on type Namespace for key a")
        );
        assert!(
            p.accept("u", "b", &ev).is_ok(),
            "another namespace has its own"
        );
        // A third key evicts "a", which comes back full.
        assert!(p.accept("u", "c", &ev).is_ok());
        assert!(p.accept("u", "a", &ev).is_ok());
        // Time refills.
        let l = &p.limits[0];
        let later = Instant::now() + std::time::Duration::from_secs(2);
        assert!(l.take("b", later));
        assert!(l.take("b", later));
    }

    #[test]
    fn source_and_object_keys_name_both() {
        let ev = json!({"source": {"component": "kubelet", "host": "n1"},
            "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "p", "uid": "1", "apiVersion": "v1"}});
        assert_eq!(
            key_of(LimitType::SourceAndObject, "u", "ns", &ev),
            "kubeletn1Podnsp1v1"
        );
        assert_eq!(key_of(LimitType::User, "alice", "ns", &ev), "alice");
    }
}
