//! Discovery documents: legacy (`/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`) and aggregated
//! (`apidiscovery.k8s.io/v2`, chosen by the Accept header), built from the resource table.

use serde_json::{Value, json};

use crate::resources::{self, Resource};

/// The media type kubectl asks for to get aggregated discovery.
pub const AGGREGATED_CT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Which aggregated discovery version an Accept header asks for first, if any.
pub fn wants_aggregated(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=APIGroupDiscoveryList") && p.contains("g=apidiscovery.k8s.io") {
            if p.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if p.contains("v=v2") {
                return Some("v2");
            }
        }
        if p.starts_with("application/json") && !p.contains("as=") {
            return None;
        }
    }
    None
}

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0].clone()})
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = resources::groups()
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    resources::groups()
        .iter()
        .find(|(g, _)| *g == group)
        .map(|(g, vs)| {
            let mut e = group_entry(g, vs);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        })
}

/// `GET /api/v1` or `/apis/<g>/<v>`: the APIResourceList.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if !resources::has_group_version(group, version) {
        return None;
    }
    let mut list = Vec::new();
    for r in resources::in_group_version(group, version) {
        let mut e = json!({
            "name": r.resource,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        list.push(e);
        for sub in r.subresources {
            let (g, v, k) = sub.response_kind(r);
            let mut se = json!({
                "name": format!("{}/{}", r.resource, sub.name()),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": k,
                "verbs": sub.verbs(),
            });
            if g != group || v != version {
                se["group"] = json!(g);
                se["version"] = json!(v);
            }
            list.push(se);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

fn aggregated_resource(r: &Resource) -> Value {
    let mut e = json!({
        "resource": r.resource,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    if !r.subresources.is_empty() {
        e["subresources"] = Value::Array(
            r.subresources
                .iter()
                .map(|s| {
                    let (g, v, k) = s.response_kind(r);
                    json!({"subresource": s.name(), "responseKind": {"group": g, "version": v, "kind": k}, "verbs": s.verbs()})
                })
                .collect(),
        );
    }
    e
}

fn aggregated_group(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({
                "version": v,
                "freshness": "Current",
                "resources": resources::in_group_version(group, v).map(aggregated_resource).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vs})
}

/// Aggregated discovery for `/api` (core only) or `/apis` (every group).
pub fn aggregated(core: bool, version: &str) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("", &["v1"])]
    } else {
        resources::groups()
            .iter()
            .map(|(g, vs)| aggregated_group(g, vs))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_is_chosen_only_when_asked_first() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(wants_aggregated(kubectl), Some("v2"));
        assert_eq!(wants_aggregated("application/json"), None);
        assert_eq!(
            wants_aggregated(
                "application/json, application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            ),
            None
        );
    }

    #[test]
    fn core_resource_list_has_pods_and_subresources() {
        let l = resource_list("", "v1").unwrap();
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"pods/eviction")
        );
        let apps = aggregated(false, "v2");
        assert!(
            apps["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["metadata"]["name"] == "apps")
        );
        assert!(resource_list("nope", "v1").is_none());
    }
}
