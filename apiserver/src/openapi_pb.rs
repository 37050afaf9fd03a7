//! `GET /openapi/v2` as protobuf: the gnostic `openapi.v2.Document` that kubectl asks for (and
//! only accepts) when it validates on the client side, e.g. `kubectl replace -f -` of a `List`.
//!
//! The messages below carry gnostic's field numbers (a wire format), restricted to what a
//! Kubernetes schema uses; everything else is simply absent. Schemas are shaped the way
//! kube-apiserver publishes v2 (see [`schema`]), so kubectl's parser accepts every definition
//! and validates objects as it does against kube-apiserver.

use std::sync::OnceLock;

use serde_json::Value;

/// `openapi.v2.Document`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Document {
    /// `"2.0"`.
    #[prost(string, tag = "1")]
    pub swagger: String,
    /// Title and version.
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    /// Every definition.
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
}

/// `openapi.v2.Info`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Info {
    /// Title.
    #[prost(string, tag = "1")]
    pub title: String,
    /// Version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `openapi.v2.Definitions`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Definitions {
    /// Named schemas.
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// `openapi.v2.NamedSchema`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedSchema {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Schema.
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

/// `openapi.v2.Schema` (the fields Kubernetes schemas use).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Schema {
    /// `$ref`.
    #[prost(string, tag = "1")]
    pub xref: String,
    /// `format`.
    #[prost(string, tag = "2")]
    pub format: String,
    /// `description`.
    #[prost(string, tag = "4")]
    pub description: String,
    /// `default`.
    #[prost(message, optional, tag = "5")]
    pub default: Option<Any>,
    /// `required`.
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    /// `additionalProperties`.
    #[prost(message, optional, tag = "21")]
    pub additional_properties: Option<AdditionalPropertiesItem>,
    /// `type`.
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    /// `items`.
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    /// `properties` (its presence, even empty, makes an object a kind rather than a map).
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    /// `x-*` extensions.
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.TypeItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeItem {
    /// Type names.
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

/// `openapi.v2.ItemsItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemsItem {
    /// The item schema.
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

/// `openapi.v2.Properties`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Properties {
    /// Properties in document order.
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// `openapi.v2.AdditionalPropertiesItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdditionalPropertiesItem {
    /// Schema or boolean.
    #[prost(oneof = "additional_properties_item::Oneof", tags = "1, 2")]
    pub oneof: Option<additional_properties_item::Oneof>,
}

/// The oneof of [`AdditionalPropertiesItem`].
pub mod additional_properties_item {
    /// Schema or boolean.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        /// A value schema.
        #[prost(message, tag = "1")]
        Schema(Box<super::Schema>),
        /// `true` / `false`.
        #[prost(bool, tag = "2")]
        Boolean(bool),
    }
}

/// `openapi.v2.NamedAny`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedAny {
    /// Extension name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

/// `openapi.v2.Any`: the value as YAML (what kubectl reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    /// YAML text.
    #[prost(string, tag = "2")]
    pub yaml: String,
}

fn any(v: &Value) -> Any {
    Any {
        yaml: serde_yaml::to_string(v).unwrap_or_default(),
    }
}

/// One JSON schema as a gnostic Schema, shaped as kube-apiserver publishes v2: a `$ref` stands
/// alone (its siblings `type`/`properties` dropped); `allOf` with one `$ref` is that `$ref`;
/// `x-kubernetes-int-or-string` is a string of format `int-or-string`;
/// `x-kubernetes-preserve-unknown-fields` objects keep no `properties` (so any field is
/// accepted); `nullable`/multi-type or typeless arrays lose the type; `oneOf`/`anyOf`/`not` are
/// dropped.
pub fn schema(v: &Value) -> Schema {
    let mut s = Schema::default();
    let Some(o) = v.as_object() else {
        return s;
    };
    let str_of = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut xref = str_of("$ref");
    if xref.is_empty()
        && let Some([one]) = o.get("allOf").and_then(Value::as_array).map(Vec::as_slice)
        && let Some(r) = one.get("$ref").and_then(Value::as_str)
    {
        xref = r.to_string();
    }
    s.description = str_of("description");
    if let Some(d) = o.get("default") {
        s.default = Some(any(d));
    }
    for (k, v) in o {
        if k.starts_with("x-") {
            s.vendor_extension.push(NamedAny {
                name: k.clone(),
                value: Some(any(v)),
            });
        }
    }
    if !xref.is_empty() {
        s.xref = xref;
        return s;
    }
    s.format = str_of("format");
    let preserve = o
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    if o.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        s.r#type = Some(TypeItem {
            value: vec!["string".into()],
        });
        s.format = "int-or-string".into();
        return s;
    }
    let types: Vec<String> = match o.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let nullable = o.get("nullable").and_then(Value::as_bool) == Some(true);
    let ty = match types.as_slice() {
        [t] if !nullable && t != "null" => Some(t.clone()),
        _ => None,
    };
    s.required = o
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !preserve
        && !nullable
        && let Some(props) = o.get("properties").and_then(Value::as_object)
    {
        s.properties = Some(Properties {
            additional_properties: props
                .iter()
                .map(|(k, v)| NamedSchema {
                    name: k.clone(),
                    value: Some(schema(v)),
                })
                .collect(),
        });
    }
    match o.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            s.additional_properties = Some(AdditionalPropertiesItem {
                oneof: Some(additional_properties_item::Oneof::Boolean(*b)),
            })
        }
        Some(v @ Value::Object(_)) => {
            s.additional_properties = Some(AdditionalPropertiesItem {
                oneof: Some(additional_properties_item::Oneof::Schema(Box::new(schema(
                    v,
                )))),
            })
        }
        _ => {}
    }
    let items = (!preserve && !nullable)
        .then(|| o.get("items"))
        .flatten()
        .filter(|i| i.is_object());
    if let Some(i) = items {
        s.items = Some(ItemsItem {
            schema: vec![schema(i)],
        });
    }
    s.r#type = match ty.as_deref() {
        // An array without an item schema cannot be published typed.
        Some("array") if s.items.is_none() => None,
        Some(t @ ("object" | "array" | "string" | "number" | "integer" | "boolean")) => {
            Some(TypeItem {
                value: vec![t.to_string()],
            })
        }
        _ => None,
    };
    if s.r#type.as_ref().is_some_and(|t| t.value[0] != "array") {
        s.items = None;
    }
    // kubectl's parser reads a typeless schema with additionalProperties as a map of no type,
    // which it rejects; typeless means anything goes.
    if s.r#type.is_none() && s.properties.is_none() {
        s.additional_properties = None;
    }
    s
}

/// The encoded document for the served v2 JSON (`crate::openapi::v2`).
pub fn v2() -> &'static [u8] {
    static PB: OnceLock<Vec<u8>> = OnceLock::new();
    PB.get_or_init(|| {
        use prost::Message as _;
        let doc: Value = serde_json::from_slice(crate::openapi::v2()).unwrap_or_default();
        let definitions = doc["definitions"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| NamedSchema {
                name: k.clone(),
                value: Some(schema(v)),
            })
            .collect();
        Document {
            swagger: "2.0".into(),
            info: Some(Info {
                title: "Kubernetes".into(),
                version: crate::config::git_version(),
            }),
            definitions: Some(Definitions {
                additional_properties: definitions,
            }),
        }
        .encode_to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The checks kubectl's parser (kube-openapi `NewOpenAPIData`) makes on every definition;
    /// any failure there breaks client-side validation for every object.
    fn parses(name: &str, s: &Schema, defs: &std::collections::HashSet<String>) {
        if !s.xref.is_empty() {
            let target = s.xref.strip_prefix("#/definitions/").unwrap_or_else(|| {
                panic!("{name}: unallowed reference to non-definition {}", s.xref)
            });
            assert!(
                defs.contains(target),
                "{name}: unknown model in reference: {target:?}"
            );
            assert!(
                s.r#type.is_none(),
                "{name}: definition reference can't have a type"
            );
            assert!(
                s.properties
                    .as_ref()
                    .is_none_or(|p| p.additional_properties.is_empty()),
                "{name}: unallowed embedded type definition"
            );
            return;
        }
        if let Some(t) = &s.r#type {
            assert_eq!(t.value.len(), 1, "{name}: multiple types");
            match t.value[0].as_str() {
                "array" => assert_eq!(
                    s.items.as_ref().map(|i| i.schema.len()),
                    Some(1),
                    "{name}: array should have exactly one sub-item"
                ),
                "object" | "string" | "number" | "integer" | "boolean" => {}
                other => panic!("{name}: Unknown primitive type: {other:?}"),
            }
        }
        assert!(
            s.r#type.is_some() || s.properties.is_some() || s.additional_properties.is_none(),
            "{name}: a map without a type"
        );
        for p in s.properties.iter().flat_map(|p| &p.additional_properties) {
            parses(
                &format!("{name}.{}", p.name),
                p.value.as_ref().unwrap(),
                defs,
            );
        }
        if let Some(i) = &s.items {
            for i in &i.schema {
                parses(&format!("{name}[]"), i, defs);
            }
        }
        if let Some(AdditionalPropertiesItem {
            oneof: Some(additional_properties_item::Oneof::Schema(a)),
        }) = &s.additional_properties
        {
            parses(&format!("{name}{{}}"), a, defs);
        }
    }

    #[test]
    fn every_definition_parses_as_kubectl_would() {
        let doc = Document::decode(v2()).unwrap();
        let defs = doc.definitions.unwrap().additional_properties;
        assert!(defs.len() > 100);
        let names: std::collections::HashSet<String> =
            defs.iter().map(|d| d.name.clone()).collect();
        for d in &defs {
            parses(&d.name, d.value.as_ref().unwrap(), &names);
        }
        let pod = defs
            .iter()
            .find(|d| d.name == "io.k8s.api.core.v1.Pod")
            .and_then(|d| d.value.clone())
            .unwrap();
        let gvk = pod
            .vendor_extension
            .iter()
            .find(|e| e.name == "x-kubernetes-group-version-kind")
            .and_then(|e| e.value.clone())
            .unwrap();
        let parsed: Value = serde_yaml::from_str(&gvk.yaml).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([{"group": "", "kind": "Pod", "version": "v1"}])
        );
        assert!(pod.properties.is_some(), "a kind keeps its properties");
    }

    #[test]
    fn shapes_as_kube_apiserver_publishes() {
        let s = schema(
            &serde_json::json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
        );
        assert_eq!(s.r#type.unwrap().value, vec!["string"]);
        assert_eq!(s.format, "int-or-string");
        let s = schema(
            &serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"a": {"type": "string"}}}),
        );
        assert!(s.properties.is_none());
        let s = schema(
            &serde_json::json!({"allOf": [{"$ref": "#/definitions/X"}], "description": "d", "default": {}}),
        );
        assert_eq!(s.xref, "#/definitions/X");
        assert!(s.r#type.is_none());
        let s = schema(&serde_json::json!({"type": "array"}));
        assert!(s.r#type.is_none());
        let s = schema(
            &serde_json::json!({"type": ["object", "string"], "additionalProperties": {"type": "string"}}),
        );
        assert!(s.r#type.is_none() && s.additional_properties.is_none());
        let s = schema(&serde_json::json!({"type": "object", "properties": {}}));
        assert!(s.properties.is_some(), "an empty properties stays present");
        let encoded = s.encode_to_vec();
        assert!(
            encoded.windows(2).any(|w| w == [0xCA, 0x01]),
            "field 25 on the wire"
        );
    }
}
