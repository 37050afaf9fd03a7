//! Conversion between the served form of a resource and its stored form, for resources served
//! under two groups with one storage: `events.k8s.io/v1` Events are stored as core `v1` Events
//! (as upstream), so both APIs see the same objects.

use serde_json::{Map, Value, json};

use crate::resources::Resource;

/// `(core/v1 field, events.k8s.io/v1 field)` pairs that only differ in name.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn is_events_api(res: &Resource) -> bool {
    res.group == "events.k8s.io" && res.kind == "Event"
}

fn rename(obj: &mut Value, from_to: impl Iterator<Item = (&'static str, &'static str)>) {
    if let Some(m) = obj.as_object_mut() {
        let mut moved: Map<String, Value> = Map::new();
        for (from, to) in from_to {
            if let Some(v) = m.remove(from) {
                moved.insert(to.to_string(), v);
            }
        }
        m.extend(moved);
    }
}

/// The stored form of an object of `res` (identity for every resource but events.k8s.io Events).
pub fn to_storage(res: &Resource, mut obj: Value) -> Value {
    if is_events_api(res) {
        rename(&mut obj, EVENT_FIELDS.iter().map(|(core, ev)| (*ev, *core)));
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Event");
    }
    obj
}

/// The served form of a stored object of `res`.
pub fn from_storage(res: &Resource, mut obj: Value) -> Value {
    if is_events_api(res) {
        rename(&mut obj, EVENT_FIELDS.iter().map(|(core, ev)| (*core, *ev)));
        obj["apiVersion"] = json!("events.k8s.io/v1");
        obj["kind"] = json!("Event");
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn events_round_trip_between_the_two_apis() {
        let ev = find("events.k8s.io", "v1", "events").unwrap();
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled", "reportingController": "kubelet", "eventTime": "2024-01-01T00:00:00.000000Z"});
        let stored = to_storage(ev, new.clone());
        assert_eq!(stored["involvedObject"]["name"], "p");
        assert_eq!(stored["message"], "pulled");
        assert_eq!(stored["reportingComponent"], "kubelet");
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(from_storage(ev, stored), new);
        let core = find("", "v1", "events").unwrap();
        let c = json!({"message": "m"});
        assert_eq!(to_storage(core, c.clone()), c);
    }
}
