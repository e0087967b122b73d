"""Value sets the chart must render with, and helpers to read the rendered objects.

Each value set is something a user will really type (`--set` or a values file); every test
that loops over them checks a property that must hold whatever the user chose.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Manifest = dict[str, Any]

# Custom kinds a cluster serves, as `helm template --api-versions` takes them: the chart
# renders a custom resource set to `auto` only where its kind is served.
GKE_GATEWAY = ("gateway.networking.k8s.io/v1/HTTPRoute", "networking.gke.io/v1/HealthCheckPolicy")
PROMETHEUS_OPERATOR = ("monitoring.coreos.com/v1/ServiceMonitor",
                       "monitoring.coreos.com/v1/PrometheusRule")
MANAGED_PROMETHEUS = ("monitoring.googleapis.com/v1/PodMonitoring",)
KEDA = ("keda.sh/v1alpha1/ScaledObject", "keda.sh/v1alpha1/TriggerAuthentication")
BARE_CLUSTER: tuple[str, ...] = ()

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "canary-off": {"inference": {"canary": {"enabled": False}}},
    "external-redis": {
        "redis": {"enabled": False, "external": {
            "url": "redis://state.example.internal:6379/2",
            "cacheUrl": "rediss://cache.example.internal:6380/0",
            "passwordSecret": "external-redis", "passwordKey": "password"}}
    },
    "external-redis-secret": {
        "redis": {"enabled": False, "external": {"existingSecret": "maskfleet-redis-url"}}
    },
    "autoscaling-off": {
        "inference": {
            "stable": {"autoscaling": {"enabled": False}, "replicaCount": 3},
            "canary": {"autoscaling": {"enabled": False}, "replicaCount": 2},
        },
        "worker": {"autoscaling": {"enabled": False}, "replicaCount": 4},
    },
    "ingress-off": {"ingress": {"enabled": False}},
    "pinned-version": {
        "inference": {
            "stable": {"model": {"version": 7}},
            "canary": {"model": {"version": 8}},
        },
        "worker": {"model": {"version": 7}},
    },
    "gpu-on": {
        "inference": {"gpu": {"enabled": True}},
        "worker": {"gpu": {"enabled": True, "count": 2}},
        "training": {"gpu": {"enabled": True, "nodeSelector": {"pool": "a100"}}},
    },
    "nginx-canary": {
        "ingress": {"nginxCanary": {"enabled": True}, "ingressClassName": "nginx"},
        "abTest": {"canaryWeight": 25},
    },
    "metrics-on": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True},
            "dashboards": {"enabled": True},
        },
        "inference": {"stable": {"autoscaling": {"customMetric": {"enabled": True}}}},
    },
    "gcs-key-secret": {"gcs": {"keySecret": {"name": "maskfleet-gcs-key"}}},
    "workload-identity": {
        "gcs": {
            "workloadIdentity": {
                "gcpServiceAccount": "maskfleet@my-project.iam.gserviceaccount.com"
            }
        }
    },
    "locked-down": {
        "networkPolicy": {
            "apiIngressFrom": [
                {"namespaceSelector": {"matchLabels": {"name": "gateway-system"}}}
            ],
            "httpsEgressCIDRs": ["199.36.153.4/30"],
        },
        "rbac": {
            "retrainTriggerSubjects": [
                {"kind": "Group", "name": "ml-engineers", "apiGroup": "rbac.authorization.k8s.io"}
            ]
        },
        "redis": {"state": {"persistence": {"size": "5Gi", "storageClass": "premium-rwo"}},
                  "auth": {"existingSecret": "redis-auth", "existingSecretKey": "pw"}},
        "image": {"registry": "europe-docker.pkg.dev/acme/ml", "pullSecrets": ["regcred"]},
        "inference": {"image": {"digest": "sha256:" + "a" * 64}},
        "ingress": {"tls": {"enabled": True, "secretName": "maskfleet-tls"}},
    },
    "keda": {"worker": {"autoscaling": {"keda": {"enabled": True}}}},
    "keda-external-redis": {
        "redis": {"enabled": False, "external": {"existingSecret": "maskfleet-redis-url"}},
        "worker": {"autoscaling": {"keda": {"enabled": True, "redis": {
            "address": "10.0.0.7:6379", "tls": True,
            "passwordSecret": {"name": "memorystore-auth", "key": "auth-string"}}}}},
    },
    "gke-managed-prometheus": {},
    "operator-and-managed-prometheus": {},
    "bare-cluster": {},
    "everything-forced-on": {
        "httpRoute": {"enabled": True, "healthCheckPolicy": {"enabled": True}},
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                    "podMonitoring": {"enabled": True}},
    },
    "minimal": {
        "networkPolicy": {"enabled": False},
        "rbac": {"create": False},
        "httpRoute": {"enabled": False},
        "inference": {
            "stable": {"pdb": {"create": False}},
            "canary": {"pdb": {"create": False}},
            "serviceAccount": {"create": False},
        },
        "worker": {"pdb": {"create": False}},
    },
}

# The cluster each value set is rendered for (GKE_GATEWAY when not listed).
CLUSTERS: dict[str, tuple[str, ...]] = {
    "metrics-on": GKE_GATEWAY + PROMETHEUS_OPERATOR,
    "keda": GKE_GATEWAY + KEDA,
    "keda-external-redis": GKE_GATEWAY + KEDA,
    "gke-managed-prometheus": GKE_GATEWAY + MANAGED_PROMETHEUS,
    "operator-and-managed-prometheus": GKE_GATEWAY + PROMETHEUS_OPERATOR + MANAGED_PROMETHEUS,
    "bare-cluster": BARE_CLUSTER,
    "everything-forced-on": BARE_CLUSTER,
    "minimal": BARE_CLUSTER,
}

POD_OWNERS = ("Deployment", "StatefulSet", "CronJob", "Job", "DaemonSet")


def by_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_template(obj: Manifest) -> Manifest:
    """The pod template of a workload (a CronJob nests it one level deeper)."""
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"])
    return dict(obj["spec"]["template"])


def workloads(objects: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(owner, pod template) of every object that creates pods."""
    for obj in objects:
        if obj["kind"] in POD_OWNERS:
            yield obj, pod_template(obj)


def container(obj: Manifest, name: str) -> Manifest:
    containers = pod_template(obj)["spec"]["containers"]
    found = [c for c in containers if c["name"] == name]
    assert len(found) == 1, f"no container {name} in {obj['kind']}/{obj['metadata']['name']}"
    return dict(found[0])


def env_of(c: Manifest) -> dict[str, Any]:
    """Inline env of a container: plain values as strings, valueFrom entries as dicts."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def unflatten(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}, as `helm --set` does."""
    nested: dict[str, Any] = {}
    for path, value in dotted.items():
        node = nested
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
