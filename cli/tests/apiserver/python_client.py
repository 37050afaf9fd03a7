"""CRUD and watch through the Python `kubernetes` client (run by python.rs with a kubeconfig)."""

import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "py"

v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
cm = v1.create_namespaced_config_map(
    ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c1", labels={"a": "b"}), data={"k": "v"})
)
assert cm.metadata.resource_version and cm.metadata.uid, cm.metadata
got = v1.read_namespaced_config_map("c1", ns)
assert got.data == {"k": "v"}, got.data
names = [i.metadata.name for i in v1.list_namespaced_config_map(ns, label_selector="a=b").items]
assert names == ["c1"], names
assert v1.list_namespaced_config_map(ns, label_selector="a=c").items == []

# A dict body is sent as a strategic merge patch.
v1.patch_namespaced_config_map("c1", ns, {"data": {"k2": "v2"}})
got = v1.read_namespaced_config_map("c1", ns)
assert got.data == {"k": "v", "k2": "v2"}, got.data

# Replace with the current resourceVersion works; with a stale one it is a 409.
stale = v1.read_namespaced_config_map("c1", ns)
got.data["k3"] = "v3"
v1.replace_namespaced_config_map("c1", ns, got)
stale.data["x"] = "y"
try:
    v1.replace_namespaced_config_map("c1", ns, stale)
    raise AssertionError("stale replace succeeded")
except ApiException as e:
    assert e.status == 409, e

dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="d"),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels={"app": "d"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "d"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx")]),
        ),
    ),
)
created = apps.create_namespaced_deployment(ns, dep)
assert created.spec.template.spec.restart_policy == "Always"
assert created.spec.strategy.rolling_update.max_surge == "25%"

# Watch from the list's resourceVersion sees ADDED, MODIFIED, DELETED in order.
rv = v1.list_namespaced_config_map(ns).metadata.resource_version


def produce():
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c2"), data={"a": "1"}))
    v1.patch_namespaced_config_map("c2", ns, {"data": {"a": "2"}})
    v1.delete_namespaced_config_map("c2", ns)


threading.Timer(0.5, produce).start()
events = []
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=20):
    events.append((ev["type"], ev["object"].metadata.name))
    if ev["type"] == "DELETED":
        w.stop()
assert events == [("ADDED", "c2"), ("MODIFIED", "c2"), ("DELETED", "c2")], events

# Without a resourceVersion the watch starts with the current objects as ADDED.
initial = []
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, ns, timeout_seconds=5):
    initial.append((ev["type"], ev["object"].metadata.name))
    w.stop()
assert initial == [("ADDED", "c1")], initial

try:
    v1.read_namespaced_config_map("nope", ns)
    raise AssertionError("read of a missing object succeeded")
except ApiException as e:
    assert e.status == 404, e

v1.delete_namespaced_config_map("c1", ns)
apps.delete_namespaced_deployment("d", ns)
print("OK")
