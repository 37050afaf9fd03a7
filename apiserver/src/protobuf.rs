//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0` magic followed by
//! a `runtime.Unknown` envelope `{1: TypeMeta{1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding,
//! 4: contentType}` whose `raw` is the object's message.
//!
//! The wire schema (message names, tags, field types) is extracted at build time from the
//! `k8s-pb` prost bindings (see `build.rs`); JSON field names come from the OpenAPI schemas the
//! server publishes, so the decoded object is exactly what the same object sent as JSON would be.
//! Well-known apimachinery messages get their JSON forms: Time and MicroTime as RFC 3339 strings,
//! Quantity as a string, IntOrString as a number or string, RawExtension and FieldsV1 as embedded
//! JSON, Duration as a Go duration string; bytes are base64.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::status::{ApiError, ApiResult};

const WIRE: &str = include_str!(concat!(env!("OUT_DIR"), "/k8s_wire.txt"));

/// The magic prefix of Kubernetes protobuf bodies.
pub const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, Clone)]
struct Field {
    tag: u32,
    snake: String,
    kind: String,
    repeated: bool,
    target: String,
    /// The JSON name, or `None` for an inlined embedded struct (worked out once, at load).
    json: Option<String>,
}

type Schema = HashMap<String, HashMap<u32, Field>>;

fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let mut out: Schema = HashMap::new();
        let mut cur: Option<String> = None;
        for line in WIRE.lines() {
            if let Some(m) = line.strip_prefix("M ") {
                cur = Some(m.to_string());
                out.entry(m.to_string()).or_default();
            } else if let (Some(rest), Some(msg)) = (line.strip_prefix("F "), cur.as_ref()) {
                let parts: Vec<&str> = rest.split(' ').collect();
                if parts.len() == 5 {
                    let f = Field {
                        tag: parts[0].parse().unwrap_or(0),
                        snake: parts[1].to_string(),
                        kind: parts[2].to_string(),
                        repeated: parts[3] == "1",
                        target: parts[4].to_string(),
                        json: None,
                    };
                    out.entry(msg.clone()).or_default().insert(f.tag, f);
                }
            }
        }
        for (msg, fields) in out.iter_mut() {
            for f in fields.values_mut() {
                f.json = json_name(msg, f);
            }
        }
        out
    })
}

/// The OpenAPI property names of a message (`api.core.v1.Pod` → `io.k8s.api.core.v1.Pod`).
fn json_names(message: &str) -> Option<&'static Map<String, Value>> {
    crate::openapi::all_definitions()
        .get(&format!("io.k8s.{message}"))
        .and_then(|d| d.get("properties"))
        .and_then(Value::as_object)
}

fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The JSON name of a field, or `None` when the field is inlined (Go embedded struct).
fn json_name(message: &str, f: &Field) -> Option<String> {
    match json_names(message) {
        Some(props) => {
            let n = normalize(&f.snake);
            if let Some(k) = props.keys().find(|k| normalize(k) == n) {
                return Some(k.clone());
            }
            if f.kind == "message" && !f.repeated {
                None
            } else {
                Some(lower_camel(&f.snake))
            }
        }
        None => Some(lower_camel(&f.snake)),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn malformed(what: &str) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf body: {what}"))
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> ApiResult<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| malformed("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("varint too long"))
    }

    fn bytes(&mut self) -> ApiResult<&'a [u8]> {
        let n = usize::try_from(self.varint()?).map_err(|_| malformed("length overflow"))?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| malformed("truncated field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed(&mut self, n: usize) -> ApiResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| malformed("truncated fixed field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Reads a key and returns `(tag, wire type)`.
    fn key(&mut self) -> ApiResult<(u32, u8)> {
        let k = self.varint()?;
        Ok(((k >> 3) as u32, (k & 7) as u8))
    }

    fn skip(&mut self, wire: u8) -> ApiResult<()> {
        match wire {
            0 => {
                self.varint()?;
            }
            1 => {
                self.fixed(8)?;
            }
            2 => {
                self.bytes()?;
            }
            5 => {
                self.fixed(4)?;
            }
            _ => return Err(malformed("unsupported wire type")),
        }
        Ok(())
    }
}

fn scalar(kind: &str, wire: u8, r: &mut Reader<'_>) -> ApiResult<Value> {
    Ok(match (kind, wire) {
        ("string", 2) => Value::String(
            String::from_utf8(r.bytes()?.to_vec())
                .map_err(|_| malformed("invalid UTF-8 in a string field"))?,
        ),
        ("bytes" | "bytes = \"vec\"", 2) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(r.bytes()?))
        }
        ("int32", 0) => json!(r.varint()? as i64 as i32),
        ("int64", 0) => json!(r.varint()? as i64),
        ("bool", 0) => json!(r.varint()? != 0),
        ("double", 1) => {
            let b = r.fixed(8)?;
            json!(f64::from_le_bytes(
                b.try_into().map_err(|_| malformed("double"))?
            ))
        }
        _ => {
            return Err(malformed(&format!(
                "field of type {kind} has wire type {wire}"
            )));
        }
    })
}

fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let neg = nanos < 0;
    let mut n = nanos.unsigned_abs();
    let h = n / 3_600_000_000_000;
    n %= 3_600_000_000_000;
    let m = n / 60_000_000_000;
    n %= 60_000_000_000;
    let s = n as f64 / 1e9;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{s}s"));
    out
}

/// Decodes one message of type `message` into JSON.
fn message(message: &str, buf: &[u8], depth: usize) -> ApiResult<Value> {
    if depth > 64 {
        return Err(malformed("message nesting too deep"));
    }
    // Well-known apimachinery types with their own JSON forms.
    match message {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (mut secs, mut nanos) = (0i64, 0i64);
            let mut r = Reader::new(buf);
            while !r.done() {
                match r.key()? {
                    (1, 0) => secs = r.varint()? as i64,
                    (2, 0) => nanos = r.varint()? as i64 as i32 as i64,
                    (_, w) => r.skip(w)?,
                }
            }
            if secs == 0 && nanos == 0 {
                // Go's zero time: the field is unset.
                return Ok(Value::Null);
            }
            let t = jiff::Timestamp::new(secs, nanos as i32)
                .map_err(|_| malformed("time out of range"))?;
            let fmt = if message.ends_with("MicroTime") {
                "%Y-%m-%dT%H:%M:%S%.6fZ"
            } else {
                "%Y-%m-%dT%H:%M:%SZ"
            };
            return Ok(Value::String(t.strftime(fmt).to_string()));
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            let mut r = Reader::new(buf);
            let mut s = String::new();
            while !r.done() {
                match r.key()? {
                    (1, 2) => s = String::from_utf8_lossy(r.bytes()?).into_owned(),
                    (_, w) => r.skip(w)?,
                }
            }
            return Ok(Value::String(s));
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let (mut ty, mut i, mut s) = (0u64, 0i64, String::new());
            let mut r = Reader::new(buf);
            while !r.done() {
                match r.key()? {
                    (1, 0) => ty = r.varint()?,
                    (2, 0) => i = r.varint()? as i64 as i32 as i64,
                    (3, 2) => s = String::from_utf8_lossy(r.bytes()?).into_owned(),
                    (_, w) => r.skip(w)?,
                }
            }
            return Ok(if ty == 1 { Value::String(s) } else { json!(i) });
        }
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let mut r = Reader::new(buf);
            let mut raw: &[u8] = &[];
            while !r.done() {
                match r.key()? {
                    (1, 2) => raw = r.bytes()?,
                    (_, w) => r.skip(w)?,
                }
            }
            if raw.is_empty() {
                return Ok(json!({}));
            }
            return serde_json::from_slice(raw)
                .map_err(|e| malformed(&format!("embedded JSON: {e}")));
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let mut r = Reader::new(buf);
            let mut n = 0i64;
            while !r.done() {
                match r.key()? {
                    (1, 0) => n = r.varint()? as i64,
                    (_, w) => r.skip(w)?,
                }
            }
            return Ok(Value::String(go_duration(n)));
        }
        _ => {}
    }
    let fields = schema()
        .get(message)
        .ok_or_else(|| malformed(&format!("unknown message {message}")))?;
    let mut out = Map::new();
    let mut r = Reader::new(buf);
    while !r.done() {
        let (tag, wire) = r.key()?;
        let Some(f) = fields.get(&tag) else {
            r.skip(wire)?;
            continue;
        };
        let name = f.json.clone();
        if let Some(value_kind) = f.kind.strip_prefix("map:") {
            let entry = r.bytes()?;
            let mut er = Reader::new(entry);
            let (mut k, mut v) = (String::new(), Value::Null);
            while !er.done() {
                match er.key()? {
                    (1, 2) => k = String::from_utf8_lossy(er.bytes()?).into_owned(),
                    (2, w) => {
                        v = if value_kind == "message" {
                            if w != 2 {
                                return Err(malformed("map value is not a message"));
                            }
                            message_value(&f.target, er.bytes()?, depth)?
                        } else {
                            scalar(value_kind, w, &mut er)?
                        }
                    }
                    (_, w) => er.skip(w)?,
                }
            }
            if v.is_null() {
                v = match value_kind {
                    "string" | "bytes" => json!(""),
                    _ => json!({}),
                };
            }
            let key = name.unwrap_or_else(|| lower_camel(&f.snake));
            let m = out.entry(key).or_insert_with(|| json!({}));
            if let Some(m) = m.as_object_mut() {
                m.insert(k, v);
            }
            continue;
        }
        let values: Vec<Value> = if f.kind == "message" {
            if wire != 2 {
                return Err(malformed(&format!(
                    "field {} is not length-delimited",
                    f.snake
                )));
            }
            vec![message_value(&f.target, r.bytes()?, depth)?]
        } else if f.repeated && wire == 2 && f.kind != "string" && !f.kind.starts_with("bytes") {
            // Packed scalars.
            let mut pr = Reader::new(r.bytes()?);
            let mut vs = Vec::new();
            let w = if f.kind == "double" { 1 } else { 0 };
            while !pr.done() {
                vs.push(scalar(&f.kind, w, &mut pr)?);
            }
            vs
        } else {
            vec![scalar(&f.kind, wire, &mut r)?]
        };
        match name {
            None => {
                // Inlined embedded struct: its fields go into this object.
                for v in values {
                    if let Value::Object(m) = v {
                        out.extend(m);
                    }
                }
            }
            Some(n) if f.repeated => {
                let arr = out.entry(n).or_insert_with(|| json!([]));
                if let Some(a) = arr.as_array_mut() {
                    a.extend(values);
                }
            }
            Some(n) => {
                // Go writes unset non-pointer strings as "" and zero times as empty messages;
                // JSON would omit both, so they are dropped here. Likewise false and 0 of the
                // non-pointer fields Go's JSON omits when zero.
                match values.into_iter().last() {
                    Some(Value::Null) => {}
                    Some(Value::String(s)) if s.is_empty() && f.kind == "string" => {}
                    Some(Value::Bool(false)) if omitted_when_zero(message, &n) => {}
                    Some(Value::Number(z))
                        if z.as_i64() == Some(0) && omitted_when_zero(message, &n) => {}
                    Some(v) => {
                        out.insert(n, v);
                    }
                    None => {}
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// Whether field `field` (JSON name) of `message` is a non-pointer Go bool or integer tagged
/// `omitempty`: Go's protobuf writes its zero, Go's JSON leaves it out, and so does this
/// decoder (so that a template sent as protobuf stores, compares and hashes as the same one
/// sent as JSON). Pointer fields (`replicas`, `automountServiceAccountToken`, ...) keep a zero.
fn omitted_when_zero(message: &str, field: &str) -> bool {
    let short = message.rsplit('.').next().unwrap_or(message);
    matches!(
        (short, field),
        ("ObjectMeta", "generation")
            | ("PodSpec", "hostNetwork" | "hostPID" | "hostIPC")
            | (
                "Container" | "EphemeralContainerCommon",
                "stdin" | "stdinOnce" | "tty"
            )
            | ("ContainerPort", "hostPort")
            | ("VolumeMount", "readOnly")
            | (
                "Probe",
                "initialDelaySeconds"
                    | "timeoutSeconds"
                    | "periodSeconds"
                    | "successThreshold"
                    | "failureThreshold"
            )
            | (
                "DeploymentSpec" | "ReplicaSetSpec" | "StatefulSetSpec" | "DaemonSetSpec",
                "minReadySeconds"
            )
            | ("DeploymentSpec", "paused")
            | ("ServiceSpec", "publishNotReadyAddresses")
            | ("ServicePort", "nodePort")
            | (
                "GCEPersistentDiskVolumeSource" | "AWSElasticBlockStoreVolumeSource",
                "readOnly" | "partition"
            )
            | ("ScaleIOVolumeSource", "readOnly" | "sslEnabled")
            | (
                "ISCSIVolumeSource",
                "readOnly" | "chapAuthDiscovery" | "chapAuthSession"
            )
            | (
                "PersistentVolumeClaimVolumeSource"
                    | "NFSVolumeSource"
                    | "RBDVolumeSource"
                    | "CephFSVolumeSource"
                    | "CinderVolumeSource"
                    | "FCVolumeSource"
                    | "AzureFileVolumeSource"
                    | "FlexVolumeSource"
                    | "QuobyteVolumeSource"
                    | "PortworxVolumeSource"
                    | "StorageOSVolumeSource",
                "readOnly"
            )
            | ("SubjectAccessReviewStatus", "denied")
    )
}

fn message_value(target: &str, buf: &[u8], depth: usize) -> ApiResult<Value> {
    message(target, buf, depth + 1)
}

/// The proto package of an API group: `apps` → `api.apps`, `rbac.authorization.k8s.io` →
/// `api.rbac`, core → `api.core`; meta types live in apimachinery.
fn package(group: &str, version: &str, kind: &str) -> String {
    if group.is_empty() && matches!(kind, "DeleteOptions" | "Status" | "ListOptions") {
        return format!("apimachinery.pkg.apis.meta.{version}");
    }
    let g = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    format!("api.{g}.{version}")
}

/// Decodes a protobuf request body into the JSON form of the object, with `apiVersion` and `kind`
/// from the envelope.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| malformed("missing the k8s\\0 prefix"))?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), &[][..], String::new());
    while !r.done() {
        match r.key()? {
            (1, 2) => {
                let mut tr = Reader::new(r.bytes()?);
                while !tr.done() {
                    match tr.key()? {
                        (1, 2) => api_version = String::from_utf8_lossy(tr.bytes()?).into_owned(),
                        (2, 2) => kind = String::from_utf8_lossy(tr.bytes()?).into_owned(),
                        (_, w) => tr.skip(w)?,
                    }
                }
            }
            (2, 2) => raw = r.bytes()?,
            (3, 2) => encoding = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (_, w) => r.skip(w)?,
        }
    }
    if !encoding.is_empty() {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("protobuf content encoding {encoding:?} is not supported"),
        ));
    }
    if kind.is_empty() || api_version.is_empty() {
        return Err(malformed("the envelope has no apiVersion or kind"));
    }
    let msg = message_name(&api_version, &kind);
    if !schema().contains_key(&msg) {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("no protobuf schema for {api_version}, Kind={kind}"),
        ));
    }
    let mut obj = message(&msg, raw, 0)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

/// Encodes an object (with `apiVersion` and `kind`) as a protobuf body: the `k8s\0` magic and
/// a `runtime.Unknown` envelope. `None` when the kind has no protobuf schema or the object does
/// not fit it (the caller answers in JSON then).
pub fn encode(obj: &Value) -> Option<Vec<u8>> {
    encode_with(obj, false)
}

/// As [`encode`], but a field that does not fit its message is left out rather than failing
/// the whole object: for watch streams, which cannot fall back to JSON midway.
pub fn encode_lenient(obj: &Value) -> Option<Vec<u8>> {
    encode_with(obj, true)
}

fn encode_with(obj: &Value, lenient: bool) -> Option<Vec<u8>> {
    let api_version = obj.get("apiVersion")?.as_str()?;
    let kind = obj.get("kind")?.as_str()?;
    let msg = message_name(api_version, kind);
    schema().get(&msg)?;
    let raw = encode_message(&msg, obj, 0, lenient).ok()?;
    let mut tm = Vec::new();
    encode_bytes(1, api_version.as_bytes(), &mut tm);
    encode_bytes(2, kind.as_bytes(), &mut tm);
    let mut out = MAGIC.to_vec();
    encode_bytes(1, &tm, &mut out);
    encode_bytes(2, &raw, &mut out);
    Some(out)
}

/// Whether objects of `api_version` and `kind` have a protobuf form.
pub fn has_schema(api_version: &str, kind: &str) -> bool {
    schema().contains_key(&message_name(api_version, kind))
}

/// The proto message of `kind` in `api_version` (`apps/v1`, `Deployment` →
/// `api.apps.v1.Deployment`).
fn message_name(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    format!("{}.{kind}", package(group, version, kind))
}

/// One frame of a protobuf watch stream (`application/vnd.kubernetes.protobuf;stream=watch`):
/// a 4-byte big-endian length, then a `meta.v1.WatchEvent {1: type, 2: RawExtension {1: raw}}`
/// written bare (no magic, no envelope), whose `raw` is the object's own protobuf body, magic
/// and envelope included, as [`encode`] makes it.
pub fn watch_frame(ty: &str, object: &[u8]) -> bytes::Bytes {
    let mut raw = Vec::with_capacity(object.len() + 4);
    encode_bytes(1, object, &mut raw);
    let mut event = Vec::with_capacity(raw.len() + ty.len() + 8);
    encode_bytes(1, ty.as_bytes(), &mut event);
    encode_bytes(2, &raw, &mut event);
    let mut out = Vec::with_capacity(event.len() + 4);
    out.extend_from_slice(&(event.len() as u32).to_be_bytes());
    out.extend_from_slice(&event);
    bytes::Bytes::from(out)
}

fn encode_scalar(kind: &str, tag: u32, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match kind {
        "string" => encode_bytes(tag, v.as_str().ok_or("not a string")?.as_bytes(), out),
        k if k.starts_with("bytes") => {
            let s = v.as_str().ok_or("bytes not a string")?;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| e.to_string())?;
            encode_bytes(tag, &b, out);
        }
        "int32" | "int64" => {
            encode_varint_field(tag, v.as_i64().ok_or("not an integer")? as u64, out)
        }
        "bool" => encode_varint_field(tag, u64::from(v.as_bool().ok_or("not a bool")?), out),
        "double" => {
            encode_varint(u64::from(tag) << 3 | 1, out);
            out.extend_from_slice(&v.as_f64().ok_or("not a number")?.to_le_bytes());
        }
        other => return Err(format!("unsupported field type {other}")),
    }
    Ok(())
}

fn parse_go_duration_nanos(s: &str) -> Option<i64> {
    crate::config::parse_go_duration(s.trim_start_matches('-'))
        .ok()
        .map(|d| {
            let n = d.as_nanos() as i64;
            if s.starts_with('-') { -n } else { n }
        })
}

/// Encodes the JSON object `v` as message `message`.
fn encode_message(
    message: &str,
    v: &Value,
    depth: usize,
    lenient: bool,
) -> Result<Vec<u8>, String> {
    if depth > 64 {
        return Err("nesting too deep".into());
    }
    let mut out = Vec::new();
    match message {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let t: jiff::Timestamp = v
                .as_str()
                .ok_or("time not a string")?
                .parse()
                .map_err(|e: jiff::Error| e.to_string())?;
            encode_varint_field(1, t.as_second() as u64, &mut out);
            let nanos = t.subsec_nanosecond();
            if nanos != 0 {
                encode_varint_field(2, nanos as i64 as u64, &mut out);
            }
            return Ok(out);
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err("quantity".into()),
            };
            encode_bytes(1, s.as_bytes(), &mut out);
            return Ok(out);
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            match v {
                Value::Number(n) => {
                    encode_varint_field(1, 0, &mut out);
                    encode_varint_field(2, n.as_i64().ok_or("int-or-string")? as u64, &mut out);
                }
                Value::String(s) => {
                    encode_varint_field(1, 1, &mut out);
                    encode_bytes(3, s.as_bytes(), &mut out);
                }
                _ => return Err("int-or-string".into()),
            }
            return Ok(out);
        }
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            encode_bytes(
                1,
                &serde_json::to_vec(v).map_err(|e| e.to_string())?,
                &mut out,
            );
            return Ok(out);
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let n = parse_go_duration_nanos(v.as_str().ok_or("duration")?).ok_or("duration")?;
            encode_varint_field(1, n as u64, &mut out);
            return Ok(out);
        }
        _ => {}
    }
    let fields = schema()
        .get(message)
        .ok_or_else(|| format!("unknown message {message}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{message} is not an object"))?;
    let mut tags: Vec<&u32> = fields.keys().collect();
    tags.sort();
    for tag in tags {
        let f = &fields[tag];
        let mark = out.len();
        match encode_field(f, v, obj, depth, lenient, &mut out) {
            Ok(()) => {}
            // Lenient: a field that does not fit its message is left out, the rest goes.
            Err(e) if lenient => {
                tracing::debug!(message, field = %f.snake, error = %e, "protobuf: field left out");
                out.truncate(mark);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Encodes field `f` of the JSON object `obj` (whose value is `v`) into `out`.
fn encode_field(
    f: &Field,
    v: &Value,
    obj: &Map<String, Value>,
    depth: usize,
    lenient: bool,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    {
        let Some(name) = f.json.clone() else {
            // Inlined embedded struct: its fields sit in this object.
            let sub = encode_message(&f.target, v, depth + 1, lenient)?;
            encode_bytes(f.tag, &sub, out);
            return Ok(());
        };
        let Some(val) = obj.get(&name).filter(|x| !x.is_null()) else {
            return Ok(());
        };
        if let Some(value_kind) = f.kind.strip_prefix("map:") {
            for (k, item) in val
                .as_object()
                .ok_or_else(|| format!("{name} is not a map"))?
            {
                let mut entry = Vec::new();
                encode_bytes(1, k.as_bytes(), &mut entry);
                if value_kind == "message" {
                    encode_bytes(
                        2,
                        &encode_message(&f.target, item, depth + 1, lenient)?,
                        &mut entry,
                    );
                } else {
                    encode_scalar(value_kind, 2, item, &mut entry)?;
                }
                encode_bytes(f.tag, &entry, out);
            }
            return Ok(());
        }
        let items: Vec<&Value> = if f.repeated {
            val.as_array()
                .ok_or_else(|| format!("{name} is not a list"))?
                .iter()
                .collect()
        } else {
            vec![val]
        };
        for item in items {
            if f.kind == "message" {
                encode_bytes(
                    f.tag,
                    &encode_message(&f.target, item, depth + 1, lenient)?,
                    out,
                );
            } else {
                encode_scalar(&f.kind, f.tag, item, out)?;
            }
        }
    }
    Ok(())
}

/// Encodes protobuf fields for tests and clients: a length-delimited field.
pub fn encode_bytes(tag: u32, data: &[u8], out: &mut Vec<u8>) {
    encode_varint(u64::from(tag) << 3 | 2, out);
    encode_varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// Encodes a varint field.
pub fn encode_varint_field(tag: u32, v: u64, out: &mut Vec<u8>) {
    encode_varint(u64::from(tag) << 3, out);
    encode_varint(v, out);
}

fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        encode_bytes(1, api_version.as_bytes(), &mut tm);
        encode_bytes(2, kind.as_bytes(), &mut tm);
        let mut body = MAGIC.to_vec();
        encode_bytes(1, &tm, &mut body);
        encode_bytes(2, raw, &mut body);
        body
    }

    #[test]
    fn secret_from_k8s_pb_bytes() {
        use k8s_pb::api::core::v1::Secret;
        use k8s_pb::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
        let s = Secret {
            metadata: Some(ObjectMeta {
                name: Some("s".into()),
                labels: [("a".to_string(), "b".to_string())].into_iter().collect(),
                creation_timestamp: Some(Time {
                    seconds: Some(1_700_000_000),
                    nanos: Some(0),
                }),
                ..Default::default()
            }),
            data: [("k".to_string(), b"\x00\x01v".to_vec())]
                .into_iter()
                .collect(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let body = envelope("v1", "Secret", &s.encode_to_vec());
        let v = decode(&body).unwrap();
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["name"], "s");
        assert_eq!(v["metadata"]["labels"]["a"], "b");
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["data"]["k"], "AAF2");
        assert_eq!(v["type"], "Opaque");
        let empty = Secret {
            metadata: Some(ObjectMeta {
                name: Some("e".into()),
                namespace: Some(String::new()),
                creation_timestamp: Some(Time {
                    seconds: Some(0),
                    nanos: Some(0),
                }),
                ..Default::default()
            }),
            r#type: Some(String::new()),
            ..Default::default()
        };
        let v = decode(&envelope("v1", "Secret", &empty.encode_to_vec())).unwrap();
        assert_eq!(v["metadata"], json!({"name": "e"}));
        assert!(v.get("type").is_none());
    }

    #[test]
    fn deployment_with_inline_and_special_types() {
        use k8s_pb::api::apps::v1::{
            Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
        };
        use k8s_pb::api::core::v1::{
            ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, LocalObjectReference,
            PodSpec, PodTemplateSpec, ResourceRequirements,
        };
        use k8s_pb::apimachinery::pkg::api::resource::Quantity;
        use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
        let d = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(0),
                strategy: Some(DeploymentStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString {
                            r#type: Some(1),
                            int_val: None,
                            str_val: Some("25%".into()),
                        }),
                        max_unavailable: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(2),
                            str_val: None,
                        }),
                    }),
                }),
                template: Some(PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: Some("c".into()),
                            image: Some("nginx".into()),
                            ports: vec![ContainerPort {
                                container_port: Some(80),
                                ..Default::default()
                            }],
                            env_from: vec![EnvFromSource {
                                config_map_ref: Some(ConfigMapEnvSource {
                                    local_object_reference: Some(LocalObjectReference {
                                        name: Some("cm".into()),
                                    }),
                                    optional: Some(true),
                                }),
                                ..Default::default()
                            }],
                            resources: Some(ResourceRequirements {
                                limits: [(
                                    "cpu".to_string(),
                                    Quantity {
                                        string: Some("500m".into()),
                                    },
                                )]
                                .into_iter()
                                .collect(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        host_ipc: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = decode(&envelope("apps/v1", "Deployment", &d.encode_to_vec())).unwrap();
        assert_eq!(v["spec"]["replicas"], 0);
        assert_eq!(
            v["spec"]["strategy"]["rollingUpdate"],
            json!({"maxSurge": "25%", "maxUnavailable": 2})
        );
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["ports"], json!([{"containerPort": 80}]));
        assert_eq!(
            c["envFrom"][0]["configMapRef"],
            json!({"name": "cm", "optional": true})
        );
        assert_eq!(c["resources"]["limits"]["cpu"], "500m");
        // Go's JSON leaves out a non-pointer false; a pointer zero stays.
        assert_eq!(v["spec"]["template"]["spec"].get("hostIPC"), None);
        assert_eq!(v["spec"]["replicas"], 0);
    }

    #[test]
    fn encoding_round_trips_and_k8s_pb_reads_it() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "labels": {"a": "b"}, "creationTimestamp": "2024-05-06T07:08:09Z", "resourceVersion": "12",
                "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]},
            "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "500m"}}, "envFrom": [{"configMapRef": {"name": "cm"}}],
                "livenessProbe": {"httpGet": {"path": "/", "port": "http"}}}],
                "hostIPC": true, "terminationGracePeriodSeconds": 30},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]}});
        let body = encode(&pod).unwrap();
        assert_eq!(decode(&body).unwrap(), pod);
        let raw = &body[MAGIC.len()..];
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(raw).unwrap();
        let p = k8s_pb::api::core::v1::Pod::decode(unknown.raw.as_deref().unwrap()).unwrap();
        assert_eq!(p.metadata.as_ref().unwrap().name.as_deref(), Some("p"));
        assert_eq!(
            p.metadata
                .as_ref()
                .unwrap()
                .creation_timestamp
                .unwrap()
                .seconds,
            Some(1_714_979_289)
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.ports[0].container_port, Some(80));
        assert_eq!(
            c.env_from[0]
                .config_map_ref
                .as_ref()
                .unwrap()
                .local_object_reference
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("cm")
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .handler
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .port
                .as_ref()
                .unwrap()
                .str_val
                .as_deref(),
            Some("http")
        );
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5", "continue": "x"}, "items": [pod]});
        let l = k8s_pb::api::core::v1::PodList::decode(
            k8s_pb::apimachinery::pkg::runtime::Unknown::decode(&encode(&list).unwrap()[4..])
                .unwrap()
                .raw
                .as_deref()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(l.items.len(), 1);
        assert_eq!(l.metadata.unwrap().resource_version.as_deref(), Some("5"));
        assert!(encode(&json!({"apiVersion": "example.com/v1", "kind": "Widget"})).is_none());
    }

    #[test]
    fn a_watch_frame_is_a_length_prefixed_watch_event_that_k8s_pb_reads() {
        assert!(has_schema("v1", "ConfigMap"));
        assert!(has_schema("apps/v1", "Deployment"));
        assert!(has_schema("v1", "Status"));
        assert!(!has_schema("example.com/v1", "Widget"));
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "7"}, "data": {"k": "v"}});
        let object = encode(&cm).unwrap();
        let frame = watch_frame("MODIFIED", &object);
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let ev =
            k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent::decode(&frame[4..]).unwrap();
        assert_eq!(ev.r#type.as_deref(), Some("MODIFIED"));
        let raw = ev.object.unwrap().raw.unwrap();
        assert_eq!(raw, object);
        assert_eq!(decode(&raw).unwrap(), cm);
    }

    #[test]
    fn garbage_is_a_clear_400() {
        assert_eq!(decode(b"nope").unwrap_err().code, 400);
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&[0x0a, 0xff]);
        assert_eq!(decode(&bad).unwrap_err().code, 400);
        assert_eq!(decode(&envelope("v9", "Nope", b"")).unwrap_err().code, 415);
    }
}
