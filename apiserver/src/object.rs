//! Helpers for objects held as JSON: metadata access, timestamps, storage keys and the
//! encode/decode of stored bytes (stored without `metadata.resourceVersion`, as upstream; it is
//! filled from the store's mod_revision on every read).

use serde_json::{Map, Value, json};

use crate::resources::Resource;
use crate::status::ApiError;

/// The current time as Kubernetes writes `metav1.Time` (RFC 3339, seconds, `Z`).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Parses an RFC 3339 timestamp (any offset) into seconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// `metadata` of an object (empty map if absent).
pub fn meta(obj: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    obj.get("metadata")
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// Mutable `metadata`, created if absent.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj).get(field).and_then(Value::as_str).unwrap_or("")
}

/// `metadata.name`.
pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name")
}

/// `metadata.namespace`.
pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace")
}

/// Sets a `metadata` field.
pub fn set_meta(obj: &mut Value, field: &str, v: Value) {
    meta_mut(obj).insert(field.to_string(), v);
}

/// The storage key of an object: `<prefix>/<storage>/<namespace>/<name>`.
pub fn key(prefix: &str, res: &Resource, ns: &str, name: &str) -> Vec<u8> {
    if res.namespaced {
        format!("{prefix}/{}/{ns}/{name}", res.storage).into_bytes()
    } else {
        format!("{prefix}/{}/{name}", res.storage).into_bytes()
    }
}

/// The key prefix of a collection (all namespaces when `ns` is empty). Ends with `/`.
pub fn collection_prefix(prefix: &str, res: &Resource, ns: &str) -> Vec<u8> {
    if res.namespaced && !ns.is_empty() {
        format!("{prefix}/{}/{ns}/", res.storage).into_bytes()
    } else {
        format!("{prefix}/{}/", res.storage).into_bytes()
    }
}

/// Decodes stored bytes of `res` into its served form and sets `resourceVersion` to the key's
/// mod_revision.
pub fn decode_stored(res: &Resource, bytes: &[u8], rv: i64) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("stored object does not decode: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::internal("stored object is not a JSON object"));
    }
    set_meta(&mut v, "resourceVersion", Value::String(rv.to_string()));
    Ok(crate::convert::from_storage(res, v))
}

/// A copy of `obj` without `metadata.resourceVersion` (so a write carries no precondition).
pub fn without_rv(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

/// Encodes an object of `res` in its stored form, without its resourceVersion.
pub fn encode_stored(res: &Resource, obj: &Value) -> Vec<u8> {
    let mut v = crate::convert::to_storage(res, obj.clone());
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Random lower-case alphanumerics for `generateName`, as upstream (5 characters, no vowels).
pub fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A new object UID.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The age column of tables (`5s`, `3m`, `2d4h`), as kubectl's `HumanDuration`.
pub fn human_age(created: &str) -> String {
    let Some(t) = parse_time(created) else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - t).max(0);
    human_duration(secs)
}

/// kubectl's `HumanDuration` for a number of seconds.
pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let y = d / 365;
        let dd = d % 365;
        if dd == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{dd}d")
        }
    } else {
        format!("{}y", d / 365)
    }
}

/// The autoscaling/v1 Scale view of a scalable object.
pub fn scale_of(res: &Resource, obj: &Value) -> Value {
    // matchLabels and matchExpressions both (an HPA selects pods with it), or a
    // ReplicationController's plain map.
    let selector = crate::table::label_selector(obj.pointer("/spec/selector"));
    let m = meta(obj);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"),
            "namespace": m.get("namespace"),
            "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"),
            "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(if res.kind == "StatefulSet" { 1 } else { 0 })},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
    }

    #[test]
    fn stored_bytes_drop_resource_version() {
        let v = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let cm = crate::resources::find("", "v1", "configmaps").unwrap();
        let b = encode_stored(cm, &v);
        assert!(!String::from_utf8_lossy(&b).contains("resourceVersion"));
        let back = decode_stored(cm, &b, 9).unwrap();
        assert_eq!(back["metadata"]["resourceVersion"], "9");
    }
}
