//! Server-side field validation (`fieldValidation=Strict|Warn|Ignore`): unknown fields are found
//! by walking the object against the same OpenAPI schemas the server publishes, then rejected
//! (Strict, 400 `strict decoding error`), reported as `Warning` headers (Warn, the default), or
//! dropped silently (Ignore). Unknown fields never reach storage, as with upstream's typed decoding.

use serde_json::{Map, Value};

use crate::patch::resolve;
use crate::status::{ApiError, ApiResult};

/// The `fieldValidation` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop them and warn (the default).
    Warn,
    /// Reject the request.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter.
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(o) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {o:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

/// What a walk found: unknown field paths and malformed quantities.
#[derive(Default)]
struct Findings {
    unknown: Vec<String>,
    malformed: Vec<String>,
}

fn walk(defs: &Map<String, Value>, schema: &Value, v: &mut Value, path: &str, out: &mut Findings) {
    // Quantities are stored in canonical form (`1000m` is `1`); JSON numbers are accepted.
    let direct = schema.get("$ref");
    let wrapped = schema
        .get("allOf")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|f| f.get("$ref"));
    if direct.or(wrapped).and_then(Value::as_str)
        == Some("#/components/schemas/io.k8s.apimachinery.pkg.api.resource.Quantity")
    {
        let text = match v {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => Some(s.clone()),
            _ => None,
        };
        match text.as_deref().and_then(crate::quantity::canonical) {
            Some(c) => *v = Value::String(c),
            None => out.malformed.push(path.to_string()),
        }
        return;
    }
    let schema = resolve(defs, schema);
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(obj) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let Some(props) = props else {
                if let Some(ap) = additional {
                    for (k, child) in obj.iter_mut() {
                        walk(defs, ap, child, &format!("{path}.{k}"), out);
                    }
                }
                // An object schema without properties (RawExtension, free-form maps) accepts anything.
                return;
            };
            let mut drop = Vec::new();
            for (k, child) in obj.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match props.get(k) {
                    Some(s) => walk(defs, s, child, &p, out),
                    None => match additional {
                        Some(ap) => walk(defs, ap, child, &p, out),
                        None => {
                            out.unknown.push(p);
                            drop.push(k.clone());
                        }
                    },
                }
            }
            for k in drop {
                obj.remove(&k);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, child) in items.iter_mut().enumerate() {
                    walk(defs, item_schema, child, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Checks `obj` (of OpenAPI definition `definition` in `group/version`) for unknown fields,
/// removing them; returns the warnings to send, or an error under Strict.
pub fn check(
    group: &str,
    version: &str,
    definition: &str,
    obj: &mut Value,
    fv: FieldValidation,
) -> ApiResult<Vec<String>> {
    let Some(defs) = crate::openapi::definitions(group, version) else {
        return Ok(Vec::new());
    };
    let Some(schema) = defs.get(definition) else {
        return Ok(Vec::new());
    };
    let mut found = Findings::default();
    walk(defs, schema, obj, "", &mut found);
    if let Some(p) = found.malformed.first() {
        return Err(ApiError::bad_request(format!(
            "{p}: {}",
            crate::quantity::MALFORMED
        )));
    }
    let msgs: Vec<String> = found
        .unknown
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    match fv {
        FieldValidation::Ignore => Ok(Vec::new()),
        FieldValidation::Warn => Ok(msgs),
        FieldValidation::Strict if msgs.is_empty() => Ok(Vec::new()),
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            msgs.join(", ")
        ))),
    }
}

/// Fields a JSON body gives twice (serde keeps the last, as Go's decoder does), as paths
/// (`spec.replicas`, `spec.containers[0].name`). The path is kept as a stack of segments and
/// written out only for a duplicate: this runs on every JSON create and update.
fn duplicate_paths(body: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    enum Seg {
        Key(String),
        Index(usize),
    }
    struct Walk<'a> {
        path: &'a RefCell<Vec<Seg>>,
        out: &'a RefCell<Vec<String>>,
    }
    fn written(path: &[Seg], last: &str) -> String {
        let mut s = String::new();
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(last);
        s
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen: std::collections::HashSet<String> = Default::default();
            while let Some(k) = m.next_key::<String>()? {
                if seen.contains(&k) {
                    let p = written(&self.path.borrow(), &k);
                    self.out.borrow_mut().push(p);
                }
                self.path.borrow_mut().push(Seg::Key(k));
                m.next_value_seed(Walk {
                    path: self.path,
                    out: self.out,
                })?;
                if let Some(Seg::Key(k)) = self.path.borrow_mut().pop() {
                    seen.insert(k);
                }
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            let mut i = 0;
            loop {
                self.path.borrow_mut().push(Seg::Index(i));
                let more = s
                    .next_element_seed(Walk {
                        path: self.path,
                        out: self.out,
                    })?
                    .is_some();
                self.path.borrow_mut().pop();
                if !more {
                    return Ok(());
                }
                i += 1;
            }
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let (path, out) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Walk {
        path: &path,
        out: &out,
    }
    .deserialize(&mut de);
    out.into_inner()
}

/// Duplicate fields of a JSON request body under `fv`: warnings, or an error under Strict (as
/// upstream's strict decoding). Bodies of other types are left to their own decoders.
pub fn check_duplicates(
    content_type: &str,
    body: &[u8],
    fv: FieldValidation,
) -> ApiResult<Vec<String>> {
    if fv == FieldValidation::Ignore || content_type != "application/json" {
        return Ok(Vec::new());
    }
    let msgs: Vec<String> = duplicate_paths(body)
        .into_iter()
        .map(|p| format!("duplicate field \"{p}\""))
        .collect();
    match fv {
        FieldValidation::Strict if !msgs.is_empty() => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            msgs.join(", ")
        ))),
        _ => Ok(msgs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicate_fields_are_found_with_their_paths() {
        let body = br#"{"metadata": {"name": "a", "name": "b"}, "spec": {"containers": [{"name": "c", "image": "i", "image": "j"}]}}"#;
        assert_eq!(
            duplicate_paths(body),
            ["metadata.name", "spec.containers[0].image"]
        );
        let warned = check_duplicates("application/json", body, FieldValidation::Warn).unwrap();
        assert_eq!(warned[0], "duplicate field \"metadata.name\"");
        let e = check_duplicates("application/json", body, FieldValidation::Strict).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            check_duplicates("application/json", body, FieldValidation::Ignore)
                .unwrap()
                .is_empty()
        );
        assert!(duplicate_paths(br#"{"a": {"b": 1}, "c": [1, {"b": 2}]}"#).is_empty());
    }

    #[test]
    fn unknown_fields_are_found_dropped_or_rejected() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}},
            "spec": {"replicaz": 3, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always", "bogus": 1, "resources": {"limits": {"cpu": "1"}}}]}}}});
        let w = check(
            "apps",
            "v1",
            "io.k8s.api.apps.v1.Deployment",
            &mut d,
            FieldValidation::Warn,
        )
        .unwrap();
        assert_eq!(
            w,
            vec![
                "unknown field \"spec.replicaz\"",
                "unknown field \"spec.template.spec.containers[0].bogus\""
            ]
        );
        assert!(d["spec"].get("replicaz").is_none());
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
        let mut q = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": 1, "memory": 0.5}}}]}});
        check(
            "",
            "v1",
            "io.k8s.api.core.v1.Pod",
            &mut q,
            FieldValidation::Strict,
        )
        .unwrap();
        assert_eq!(
            q["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "500m"})
        );
        let mut canon = json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1000m", "memory": "1024Ki"}}}]}});
        check(
            "",
            "v1",
            "io.k8s.api.core.v1.Pod",
            &mut canon,
            FieldValidation::Strict,
        )
        .unwrap();
        assert_eq!(
            canon["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "1", "memory": "1Mi"})
        );
        let mut bad = json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "lots"}}}]}});
        let e = check(
            "",
            "v1",
            "io.k8s.api.core.v1.Pod",
            &mut bad,
            FieldValidation::Ignore,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("spec.containers[0].resources.limits.cpu")
                && e.message.contains("quantities must match"),
            "{}",
            e.message
        );
        let mut again = json!({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "v"}, "extra": true});
        let e = check(
            "",
            "v1",
            "io.k8s.api.core.v1.ConfigMap",
            &mut again,
            FieldValidation::Strict,
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.contains("unknown field \"extra\""),
            "{}",
            e.message
        );
    }
}
