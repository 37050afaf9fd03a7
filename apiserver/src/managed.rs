//! Field management: `metadata.managedFields` (FieldsV1) kept on every write, and server-side
//! apply (`application/apply-patch+yaml`) with ownership, conflicts and removal of fields a
//! manager stops applying.
//!
//! Field sets are trees of path elements in FieldsV1 notation: `f:<name>` for object fields,
//! `k:{...}` for elements of list-maps (lists with `x-kubernetes-list-map-keys`), `v:<json>`
//! for elements of sets, and `.` for "this element itself". Lists without a list type are
//! atomic: the list is one field. List types come from the published OpenAPI schemas.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::patch::resolve;
use crate::status::{ApiError, ApiResult, Cause};

/// A set of field paths, as a tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    /// Whether the node itself is a member (a leaf field, or `.` of an element).
    pub own: bool,
    /// Children by FieldsV1 key (`f:name`, `k:{..}`, `v:..`).
    pub children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        !self.own && self.children.values().all(FieldSet::is_empty)
    }

    /// Parses FieldsV1 JSON.
    pub fn from_v1(v: &Value) -> FieldSet {
        let mut s = FieldSet::default();
        if let Some(m) = v.as_object() {
            for (k, child) in m {
                if k == "." {
                    s.own = true;
                } else {
                    let c = FieldSet::from_v1(child);
                    let c = if c.children.is_empty() && !c.own {
                        FieldSet {
                            own: true,
                            children: BTreeMap::new(),
                        }
                    } else {
                        c
                    };
                    s.children.insert(k.clone(), c);
                }
            }
        }
        s
    }

    /// Renders FieldsV1 JSON.
    pub fn to_v1(&self) -> Value {
        let mut m = Map::new();
        for (k, c) in &self.children {
            if c.is_empty() {
                continue;
            }
            if c.own && c.children.is_empty() {
                m.insert(k.clone(), json!({}));
            } else {
                let mut inner = c.to_v1();
                if c.own {
                    inner
                        .as_object_mut()
                        .map(|o| o.insert(".".into(), json!({})));
                }
                m.insert(k.clone(), inner);
            }
        }
        Value::Object(m)
    }

    /// Every member path.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut out);
        out
    }

    fn walk(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.own && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.walk(prefix, out);
            prefix.pop();
        }
    }

    /// Adds a path.
    pub fn insert(&mut self, path: &[String]) {
        let mut cur = self;
        for p in path {
            cur = cur.children.entry(p.clone()).or_default();
        }
        cur.own = true;
    }

    /// Whether a path is a member.
    pub fn contains(&self, path: &[String]) -> bool {
        let mut cur = self;
        for p in path {
            match cur.children.get(p) {
                Some(c) => cur = c,
                None => return false,
            }
        }
        cur.own
    }

    /// Removes a path (and nothing below it).
    pub fn remove(&mut self, path: &[String]) {
        fn rec(s: &mut FieldSet, path: &[String]) {
            match path.split_first() {
                None => s.own = false,
                Some((h, rest)) => {
                    if let Some(c) = s.children.get_mut(h) {
                        rec(c, rest);
                        if c.is_empty() {
                            s.children.remove(h);
                        }
                    }
                }
            }
        }
        rec(self, path);
    }

    /// Removes every path of `other`.
    pub fn subtract(&mut self, other: &FieldSet) {
        for p in other.paths() {
            self.remove(&p);
        }
    }
}

/// Schema context for list types.
pub struct Schemas<'a> {
    defs: Option<&'a Map<String, Value>>,
}

impl<'a> Schemas<'a> {
    /// The schemas of `group/version`.
    pub fn of(group: &str, version: &str) -> Schemas<'static> {
        Schemas {
            defs: crate::openapi::definitions(group, version),
        }
    }

    fn prop(&self, schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
        let defs = self.defs?;
        let s = resolve(defs, schema?);
        s.get("properties")
            .and_then(|p| p.get(field))
            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
    }

    fn items(&self, schema: Option<&'a Value>) -> Option<&'a Value> {
        let defs = self.defs?;
        resolve(defs, schema?).get("items")
    }

    fn root(&self, definition: &str) -> Option<&'a Value> {
        self.defs?.get(definition)
    }
}

enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

fn list_type(schema: Option<&Value>) -> ListType {
    let Some(s) = schema else {
        return ListType::Atomic;
    };
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            s.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListType::Atomic,
    }
}

/// The key value of a list-map element; a missing `protocol` key reads as its default, `TCP`.
fn key_of(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        match item.get(k) {
            Some(v) => {
                m.insert(k.clone(), v.clone());
            }
            None if k == "protocol" => {
                m.insert(k.clone(), json!("TCP"));
            }
            None => return None,
        }
    }
    Some(format!(
        "k:{}",
        serde_json::to_string(&Value::Object(m)).unwrap_or_default()
    ))
}

fn value_key(v: &Value) -> String {
    format!("v:{}", serde_json::to_string(v).unwrap_or_default())
}

/// Top-level fields never managed: identity and bookkeeping.
fn skip_top(path: &[String]) -> bool {
    match path {
        [a] if a == "f:apiVersion" || a == "f:kind" => true,
        [m, f] if m == "f:metadata" => matches!(
            f.as_str(),
            "f:managedFields"
                | "f:resourceVersion"
                | "f:uid"
                | "f:creationTimestamp"
                | "f:generation"
                | "f:selfLink"
                | "f:deletionTimestamp"
                | "f:deletionGracePeriodSeconds"
                | "f:name"
                | "f:namespace"
        ),
        _ => false,
    }
}

/// The field set of an object: every leaf, empty object, atomic list, set element and
/// list-map element (with its fields).
pub fn fields_of(sch: &Schemas<'_>, definition: &str, obj: &Value) -> FieldSet {
    let mut out = FieldSet::default();
    collect(sch, sch.root(definition), obj, &mut Vec::new(), &mut out);
    out
}

fn collect<'a>(
    sch: &Schemas<'a>,
    schema: Option<&'a Value>,
    v: &Value,
    path: &mut Vec<String>,
    out: &mut FieldSet,
) {
    if skip_top(path) {
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                collect(sch, sch.prop(schema, k), child, path, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let resolved = schema.map(|s| sch.defs.map(|d| resolve(d, s)).unwrap_or(s));
            match list_type(resolved) {
                ListType::Atomic => out.insert(path),
                ListType::Set => {
                    for it in items {
                        path.push(value_key(it));
                        out.insert(path);
                        path.pop();
                    }
                }
                ListType::Map(keys) => {
                    let item_schema = sch.items(schema);
                    for it in items {
                        match key_of(it, &keys) {
                            Some(k) => {
                                path.push(k);
                                out.insert(path);
                                collect(sch, item_schema, it, path, out);
                                path.pop();
                            }
                            None => out.insert(path),
                        }
                    }
                }
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path);
            }
        }
    }
}

/// The value at a field path, if present.
fn get<'v>(obj: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = obj;
    for p in path {
        cur = step(cur, p)?;
    }
    Some(cur)
}

/// Whether list element `it` is the one the path element `p` (`k:{..}` or `v:..`) names.
fn is_element(it: &Value, p: &str) -> bool {
    if let Some(k) = p.strip_prefix("k:") {
        let keys: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        return key_of(it, &keys).as_deref() == Some(p);
    }
    p.strip_prefix("v:")
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .is_some_and(|w| *it == w)
}

fn step<'v>(cur: &'v Value, p: &str) -> Option<&'v Value> {
    match p.strip_prefix("f:") {
        Some(f) => cur.get(f),
        None => cur.as_array()?.iter().find(|it| is_element(it, p)),
    }
}

/// Removes the value at a path.
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parent_path {
        let next = match p.strip_prefix("f:") {
            Some(f) => cur.get_mut(f),
            None => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|it| is_element(it, p))),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last.strip_prefix("f:") {
        Some(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        None => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|it| !is_element(it, last));
            }
        }
    }
}

/// Merges an applied configuration into `live`: objects field by field, list-maps by key, sets
/// by value, atomic lists replaced.
fn merge<'a>(sch: &Schemas<'a>, schema: Option<&'a Value>, live: &Value, applied: &Value) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, av) in a {
                let merged = match l.get(k) {
                    Some(lv) => merge(sch, sch.prop(schema, k), lv, av),
                    None => av.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => {
            let resolved = schema.map(|s| sch.defs.map(|d| resolve(d, s)).unwrap_or(s));
            match list_type(resolved) {
                ListType::Atomic => applied.clone(),
                ListType::Set => {
                    let mut out = l.clone();
                    for v in a {
                        if !out.contains(v) {
                            out.push(v.clone());
                        }
                    }
                    Value::Array(out)
                }
                ListType::Map(keys) => {
                    let item_schema = sch.items(schema);
                    let mut out = l.clone();
                    for av in a {
                        let k = key_of(av, &keys);
                        match out
                            .iter()
                            .position(|lv| k.is_some() && key_of(lv, &keys) == k)
                        {
                            Some(i) => out[i] = merge(sch, item_schema, &out[i], av),
                            None => out.push(av.clone()),
                        }
                    }
                    Value::Array(out)
                }
            }
        }
        _ => applied.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// apiVersion the fields were set through.
    pub api_version: String,
    /// Subresource (`status`, `scale`) or empty.
    pub subresource: String,
    /// Last change time.
    pub time: String,
    /// The owned fields.
    pub fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

/// The entry of `manager` for `operation` through `subresource`, created empty if missing, with
/// its time and apiVersion brought up to now.
fn upsert<'a>(
    list: &'a mut Vec<Entry>,
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: &str,
) -> &'a mut Entry {
    let i = match list
        .iter()
        .position(|e| e.is(manager, operation, subresource))
    {
        Some(i) => i,
        None => {
            list.push(Entry {
                manager: manager.to_string(),
                operation: operation.to_string(),
                api_version: String::new(),
                subresource: subresource.to_string(),
                time: String::new(),
                fields: FieldSet::default(),
            });
            list.len() - 1
        }
    };
    let e = &mut list[i];
    e.time = crate::object::now_rfc3339();
    e.api_version = api_version.to_string();
    e
}

/// Reads `metadata.managedFields`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let text = |k: &str, default: &str| {
                        e.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or(default)
                            .to_string()
                    };
                    Entry {
                        manager: text("manager", ""),
                        operation: text("operation", "Update"),
                        api_version: text("apiVersion", ""),
                        subresource: text("subresource", ""),
                        time: text("time", ""),
                        fields: e.get("fieldsV1").map(FieldSet::from_v1).unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, list: &[Entry]) {
    let arr: Vec<Value> = list
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version, "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": e.fields.to_v1()});
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if arr.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(arr));
        }
    }
}

/// The path in upstream's conflict notation: `.spec.replicas`,
/// `.spec.containers[name="c"].image`.
fn display(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if let Some(f) = p.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = p.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = p.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        }
    }
    s
}

/// Default manager name from the User-Agent, as upstream (`kubectl/v1.32 (linux...)` → `kubectl`).
pub fn manager_from_user_agent(ua: &str) -> String {
    let first = ua.split('/').next().unwrap_or("").trim();
    if first.is_empty() {
        "unknown".into()
    } else {
        first.chars().take(128).collect()
    }
}

/// Records an update (create, PUT, non-apply PATCH) by `manager`: fields whose values changed
/// move to the manager; removed fields leave every manager.
pub fn record_update(
    sch: &Schemas<'_>,
    definition: &str,
    api_version: &str,
    subresource: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
) {
    let mut list = match old {
        Some(o) => entries(o),
        None => Vec::new(),
    };
    // A client that sends managedFields explicitly replaces them (an empty list clears).
    if let Some(sent) = new.pointer("/metadata/managedFields") {
        let same = old.and_then(|o| o.pointer("/metadata/managedFields")) == Some(sent);
        if !same {
            list = entries(new);
            if sent.as_array().is_some_and(|a| {
                a.is_empty()
                    || a.iter()
                        .all(|e| e.as_object().is_some_and(|m| m.is_empty()))
            }) {
                list.clear();
                write_entries(new, &list);
                return;
            }
        }
    }
    let new_fields = fields_of(sch, definition, new);
    let old_fields = old
        .map(|o| fields_of(sch, definition, o))
        .unwrap_or_default();
    let mut changed = FieldSet::default();
    for p in new_fields.paths() {
        let before = old.and_then(|o| get(o, &p));
        if before != get(new, &p) || !old_fields.contains(&p) {
            changed.insert(&p);
        }
    }
    let mut removed = old_fields.clone();
    removed.subtract(&new_fields);
    for e in list.iter_mut() {
        e.fields.subtract(&removed);
        if !(e.is(manager, "Update", subresource)) {
            e.fields.subtract(&changed);
        }
    }
    if !changed.is_empty() {
        let e = upsert(&mut list, manager, "Update", api_version, subresource);
        for p in changed.paths() {
            e.fields.insert(&p);
        }
    }
    write_entries(new, &list);
}

/// Server-side apply of `applied` by `manager` onto `live` (None: the object does not exist).
/// Returns the new object with its managedFields, or a 409 with the conflicting fields unless
/// `force`.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    sch: &Schemas<'_>,
    definition: &str,
    api_version: &str,
    subresource: &str,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
) -> ApiResult<Value> {
    let applied_fields = fields_of(sch, definition, applied);
    let mut list = live.map(entries).unwrap_or_default();
    let base = live.cloned().unwrap_or_else(|| json!({}));
    // Conflicts: fields another manager owns whose value the apply would change.
    let mut conflicts: Vec<(String, String, String)> = Vec::new();
    for e in &list {
        if e.is(manager, "Apply", subresource) {
            continue;
        }
        for p in applied_fields.paths() {
            if e.fields.contains(&p) && get(&base, &p) != get(applied, &p) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), display(&p)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let n = conflicts.len();
        let mut msg = format!(
            "Apply failed with {n} conflict{}: ",
            if n == 1 { "" } else { "s" }
        );
        let parts: Vec<String> = conflicts
            .iter()
            .map(|(m, av, f)| format!("conflict with \"{m}\" using {av}: {f}"))
            .collect();
        msg.push_str(&parts.join("\n"));
        let mut e = ApiError::new(409, "Conflict", msg);
        e.details.causes = conflicts
            .iter()
            .map(|(m, av, f)| {
                Cause::new(
                    "FieldManagerConflict",
                    f,
                    format!("conflict with \"{m}\" using {av}"),
                )
            })
            .collect();
        return Err(e);
    }
    let defs_root = sch.root(definition);
    let mut merged = merge(sch, defs_root, &base, applied);
    // Fields this manager applied before and no longer applies are removed, unless someone
    // else owns them too.
    let previous = list
        .iter()
        .find(|e| e.is(manager, "Apply", subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut dropped = previous.clone();
    dropped.subtract(&applied_fields);
    for p in dropped.paths() {
        let owned_by_other = list
            .iter()
            .any(|e| !(e.is(manager, "Apply", subresource)) && e.fields.contains(&p));
        if !owned_by_other {
            remove_at(&mut merged, &p);
        }
    }
    if force {
        for e in list.iter_mut() {
            if !(e.is(manager, "Apply", subresource)) {
                for p in applied_fields.paths() {
                    if get(&base, &p) != get(applied, &p) {
                        e.fields.remove(&p);
                    }
                }
            }
        }
    }
    upsert(&mut list, manager, "Apply", api_version, subresource).fields = applied_fields;
    write_entries(&mut merged, &list);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "io.k8s.api.apps.v1.Deployment";

    fn dep(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": image, "ports": [{"containerPort": 80}]}]}}}})
    }

    #[test]
    fn fieldsv1_uses_keys_for_list_maps() {
        let sch = Schemas::of("apps", "v1");
        let f = fields_of(&sch, DEP, &dep(1, "nginx"));
        let v1 = f.to_v1();
        let c = &v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:image"], json!({}));
        assert!(
            c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object(),
            "{c}"
        );
        assert!(v1["f:metadata"].get("f:name").is_none());
        assert_eq!(FieldSet::from_v1(&v1), f);
    }

    #[test]
    fn apply_conflicts_with_other_managers_and_force_takes_over() {
        let sch = Schemas::of("apps", "v1");
        let created = apply(
            &sch,
            DEP,
            "apps/v1",
            "",
            None,
            &dep(1, "nginx"),
            "alice",
            false,
        )
        .unwrap();
        assert_eq!(entries(&created).len(), 1);
        // Another manager changes replicas with an update.
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(3);
        record_update(&sch, DEP, "apps/v1", "", Some(&created), &mut scaled, "hpa");
        let es = entries(&scaled);
        assert!(
            es.iter().any(|e| e.manager == "hpa"
                && e.fields.contains(&["f:spec".into(), "f:replicas".into()]))
        );
        // alice re-applies replicas: 1 → conflict with hpa.
        let e = apply(
            &sch,
            DEP,
            "apps/v1",
            "",
            Some(&scaled),
            &dep(1, "nginx"),
            "alice",
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(e.details.causes[0].field, ".spec.replicas");
        assert!(e.message.contains("conflict with \"hpa\""), "{}", e.message);
        // Applying the same value is shared ownership, not a conflict.
        apply(
            &sch,
            DEP,
            "apps/v1",
            "",
            Some(&scaled),
            &dep(3, "nginx"),
            "alice",
            false,
        )
        .unwrap();
        // Force takes the field.
        let forced = apply(
            &sch,
            DEP,
            "apps/v1",
            "",
            Some(&scaled),
            &dep(1, "nginx"),
            "alice",
            true,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 1);
        assert!(
            !entries(&forced).iter().any(|e| e.manager == "hpa"
                && e.fields.contains(&["f:spec".into(), "f:replicas".into()]))
        );
    }

    #[test]
    fn fields_no_longer_applied_are_removed() {
        let sch = Schemas::of("apps", "v1");
        let mut with_label = dep(1, "nginx");
        with_label["metadata"]["labels"]["extra"] = json!("x");
        let first = apply(&sch, DEP, "apps/v1", "", None, &with_label, "alice", false).unwrap();
        let second = apply(
            &sch,
            DEP,
            "apps/v1",
            "",
            Some(&first),
            &dep(1, "nginx"),
            "alice",
            false,
        )
        .unwrap();
        assert!(
            second["metadata"]["labels"].get("extra").is_none(),
            "{second}"
        );
        assert_eq!(second["metadata"]["labels"]["a"], "b");
    }
}
