"""`helm upgrade` never undoes the rollout's weights: the weighted HTTPRoute and the nginx
canary annotation are rendered from what the live cluster says (Helm `lookup`), and only a
fresh install starts the canary at 0%.

Helm's real lookup code runs here (the Helm Go SDK through helm-python-sdk, rendering with a
cluster connection). No kube-apiserver can run on this machine, so a small HTTP server stands
in for it: it answers the two requests lookup makes (the API group's resource list, then a GET
of the object) from objects the test puts there, and records every request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import helm_python as helm
import pytest
import yaml
from helm_python import _native

from tests.k8s.cases import GKE_GATEWAY, Manifest, env_of, one
from tests.k8s.conftest import CHART

NAMESPACE, TOKEN = "maskfleet", "helm-test-token"
ROUTES = "/apis/gateway.networking.k8s.io/v1"
STABLE, CANARY = "maskfleet-inference-stable", "maskfleet-inference-canary"
ROUTE_PATH = f"{ROUTES}/namespaces/{NAMESPACE}/httproutes/maskfleet-traffic"
INGRESS_PATH = f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/ingresses/maskfleet-canary"
RESOURCE_LISTS = {
    "/apis/gateway.networking.k8s.io/v1": ("gateway.networking.k8s.io/v1", "httproutes",
                                           "HTTPRoute"),
    "/apis/networking.k8s.io/v1": ("networking.k8s.io/v1", "ingresses", "Ingress"),
}


@dataclass
class Cluster:
    """What the stand-in API server holds and what it was asked."""

    objects: dict[str, Manifest] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        self.requests.append(path)
        if path in RESOURCE_LISTS:
            group_version, plural, kind = RESOURCE_LISTS[path]
            return 200, {"kind": "APIResourceList", "apiVersion": "v1",
                         "groupVersion": group_version,
                         "resources": [{"name": plural, "singularName": kind.lower(),
                                        "namespaced": True, "kind": kind,
                                        "verbs": ["get", "list", "patch"]}]}
        if path in self.objects:
            return 200, self.objects[path]
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "reason": "NotFound", "code": 404, "message": f"{path} not found"}


@pytest.fixture
def cluster() -> Iterator[tuple[Cluster, str]]:
    state = Cluster()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, doc = state.answer(self.path.split("?")[0])
            payload = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def upgrade_render(url: str, values: dict[str, Any],
                   api_versions: tuple[str, ...] = GKE_GATEWAY) -> list[Manifest]:
    """What `helm upgrade` would apply against that cluster. helm-python-sdk 0.2.2's
    Config.render does not pass `api_versions` on (the cluster's served kinds, which `helm
    upgrade` discovers), so the SDK call is made with the same options directly."""
    options = {"name": "maskfleet", "namespace": NAMESPACE, "is_upgrade": True,
               "api_versions": list(api_versions)}
    with helm.Config(kube_apiserver=url, kube_token=TOKEN, namespace=NAMESPACE) as config, \
            helm.Chart.load(CHART) as chart:
        rendered = json.loads(_native.call_string(
            "helm_render_with_config", config._raw(), chart._raw(), json.dumps(values),
            json.dumps(options)))
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def live_route(stable: int, canary: int) -> Manifest:
    """The weighted route as the rollout left it."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "maskfleet-traffic", "namespace": NAMESPACE,
                         "resourceVersion": "4711"},
            "spec": {"parentRefs": [{"name": "maskfleet-gateway"}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "backendRefs": [
                                    {"name": STABLE, "port": 8080, "weight": stable},
                                    {"name": CANARY, "port": 8080, "weight": canary}]}]}}


def live_ingress(weight: str) -> Manifest:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "maskfleet-canary", "namespace": NAMESPACE,
                         "annotations": {"nginx.ingress.kubernetes.io/canary": "true",
                                         "nginx.ingress.kubernetes.io/canary-weight": weight}},
            "spec": {"rules": []}}


def split(objects: list[Manifest]) -> dict[str, int]:
    (rule,) = one(objects, "HTTPRoute", "maskfleet-traffic")["spec"]["rules"]
    return {ref["name"]: ref["weight"] for ref in rule["backendRefs"]}


def nginx_weight(objects: list[Manifest]) -> str:
    annotations = one(objects, "Ingress", "maskfleet-canary")["metadata"]["annotations"]
    return str(annotations["nginx.ingress.kubernetes.io/canary-weight"])


NGINX_ON = {"ingress": {"nginxCanary": {"enabled": True}}}


def test_a_fresh_install_gives_the_canary_nothing(cluster: tuple[Cluster, str]) -> None:
    state, url = cluster
    objects = upgrade_render(url, {**NGINX_ON, "abTest": {"canaryWeight": 50}})
    assert split(objects) == {STABLE: 100, CANARY: 0}
    assert nginx_weight(objects) == "0"
    assert ROUTE_PATH in state.requests, "the live route was looked up"
    assert INGRESS_PATH in state.requests


def test_upgrade_keeps_the_weights_of_a_candidate_under_test(
        cluster: tuple[Cluster, str]) -> None:
    state, url = cluster
    state.objects = {ROUTE_PATH: live_route(75, 25), INGRESS_PATH: live_ingress("25")}
    objects = upgrade_render(url, {**NGINX_ON, "abTest": {"canaryWeight": 10}})
    assert split(objects) == {STABLE: 75, CANARY: 25}
    assert nginx_weight(objects) == "25"


def test_upgrade_after_a_promotion_sends_no_traffic_back_to_the_canary(
        cluster: tuple[Cluster, str]) -> None:
    """The rollout promoted and drained the canary; an upgrade that changes the share for the
    next candidate reaches the rollout, not the route."""
    state, url = cluster
    state.objects = {ROUTE_PATH: live_route(100, 0)}
    objects = upgrade_render(url, {"abTest": {"canaryWeight": 30},
                                   "rollout": {"enabled": True}})
    assert split(objects) == {STABLE: 100, CANARY: 0}
    rollout = one(objects, "CronJob", "maskfleet-rollout")
    (c,) = rollout["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["MASKFLEET_ROLLOUT_CANARY_WEIGHT"] == "30"
    assert env_of(c)["MASKFLEET_ROLLOUT_HTTPROUTE"] == "maskfleet-traffic"


def test_upgrade_still_changes_what_helm_owns(cluster: tuple[Cluster, str]) -> None:
    state, url = cluster
    state.objects = {ROUTE_PATH: live_route(90, 10)}
    gateway = [{"name": "public", "namespace": "gateway-system"}]
    objects = upgrade_render(url, {"httpRoute": {"parentRefs": gateway,
                                                 "hostnames": ["seg.example.com"]}})
    route = one(objects, "HTTPRoute", "maskfleet-traffic")
    assert route["spec"]["parentRefs"] == gateway
    assert route["spec"]["hostnames"] == ["seg.example.com"]
    assert split(objects) == {STABLE: 90, CANARY: 10}


def test_a_weight_outside_0_to_100_is_clamped(cluster: tuple[Cluster, str]) -> None:
    state, url = cluster
    state.objects = {ROUTE_PATH: live_route(0, 250)}
    assert split(upgrade_render(url, {})) == {STABLE: 0, CANARY: 100}


def test_no_lookup_of_a_kind_the_cluster_does_not_serve(cluster: tuple[Cluster, str]) -> None:
    """A lookup of an unserved kind fails the whole render: the chart only looks where the
    Gateway API is installed (forcing httpRoute.enabled=true there then fails at apply time
    with Kubernetes' own 'no matches for kind' message)."""
    state, url = cluster
    objects = upgrade_render(url, {"httpRoute": {"enabled": True}}, api_versions=())
    assert split(objects) == {STABLE: 100, CANARY: 0}
    assert not [p for p in state.requests if "gateway.networking.k8s.io" in p]
