"""gRPC in the chart: the Service's h2c port, the container port and settings, the
NetworkPolicy, and the GRPCRoute with the HTTPRoutes' header override and live weights,
validated against the Gateway API's GRPCRoute schema (tests/schemas/crds)."""

from __future__ import annotations

from typing import Any

from tests.k8s.cases import GKE_GATEWAY, Manifest, by_kind, env_of, one
from tests.k8s.test_traffic_owner import (  # noqa: F401 (the stand-in API server fixture)
    CANARY,
    NAMESPACE,
    ROUTES,
    STABLE,
    Cluster,
    cluster,
    live_route,
    upgrade_render,
)

GRPC_GATEWAY = (*GKE_GATEWAY, "gateway.networking.k8s.io/v1/GRPCRoute")
ROUTE_PATH = f"{ROUTES}/namespaces/{NAMESPACE}/httproutes/maskfleet-traffic"


def test_the_inference_services_expose_grpc_as_h2c(render: Any) -> None:
    objects = render({})
    for name in (STABLE, CANARY):
        ports = {p["name"]: p for p in one(objects, "Service", name)["spec"]["ports"]}
        assert ports["grpc"] == {"name": "grpc", "port": 8081, "targetPort": "grpc",
                                 "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}
        assert ports["http"].get("appProtocol") is None
        deployment = one(objects, "Deployment", name)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
        env = env_of(container)
        assert (env["MASKFLEET_GRPC_ENABLED"], env["MASKFLEET_GRPC_PORT"]) == ("true", "8081")
    policy = one(objects, "NetworkPolicy", "maskfleet-inference")
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert {"http", "grpc"} <= allowed


def test_grpc_off_removes_port_policy_and_route(render: Any) -> None:
    objects = render({"inference": {"grpc": {"enabled": False}}, "grpcRoute": {"enabled": True}},
                     api_versions=GRPC_GATEWAY)
    assert not by_kind(objects, "GRPCRoute")
    for service in by_kind(objects, "Service"):
        assert all(p["name"] != "grpc" for p in service["spec"]["ports"])
    deployment = one(objects, "Deployment", STABLE)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["MASKFLEET_GRPC_ENABLED"] == "false"
    policy = one(objects, "NetworkPolicy", "maskfleet-inference")
    assert all(p["port"] != "grpc" for rule in policy["spec"]["ingress"] for p in rule["ports"])


def route_of(objects: list[Manifest]) -> Manifest:
    return one(objects, "GRPCRoute", "maskfleet-grpc")


def weights(route: Manifest) -> dict[str, int]:
    (weighted,) = [r for r in route["spec"]["rules"] if "matches" not in r]
    return {ref["name"]: ref["weight"] for ref in weighted["backendRefs"]}


def test_the_grpcroute_mirrors_the_httproutes(render: Any, crd_validator: Any) -> None:
    assert not by_kind(render({}), "GRPCRoute"), "auto: only where GRPCRoute is served"
    gateway = [{"name": "public", "namespace": "gateway-system"}]
    objects = render({"httpRoute": {"parentRefs": gateway, "hostnames": ["seg.example.com"]},
                      "abTest": {"header": {"name": "X-Variant"}}}, api_versions=GRPC_GATEWAY)
    route = route_of(objects)
    validator = crd_validator(route)
    assert validator is not None
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(route)]
    assert not errors
    assert route["spec"]["parentRefs"] == gateway
    assert route["spec"]["hostnames"] == ["seg.example.com"]
    forced = {rule["matches"][0]["headers"][0]["value"]: rule["backendRefs"][0]["name"]
              for rule in route["spec"]["rules"] if "matches" in rule}
    assert forced == {"canary": CANARY, "stable": STABLE}
    headers = {r["matches"][0]["headers"][0]["name"] for r in route["spec"]["rules"]
               if "matches" in r}
    assert headers == {"X-Variant"}
    assert weights(route) == {STABLE: 100, CANARY: 0}  # nothing live: a fresh install
    assert {ref["port"] for rule in route["spec"]["rules"] for ref in rule["backendRefs"]} \
        == {8081}
    canary_off = route_of(render({"inference": {"canary": {"enabled": False}}},
                                 api_versions=GRPC_GATEWAY))
    assert {ref["name"] for rule in canary_off["spec"]["rules"]
            for ref in rule["backendRefs"]} == {STABLE}


def test_the_grpcroute_follows_the_rollouts_live_weight(
        cluster: tuple[Cluster, str]) -> None:  # noqa: F811
    state, url = cluster
    state.objects = {ROUTE_PATH: live_route(70, 30)}
    objects = upgrade_render(url, {}, api_versions=GRPC_GATEWAY)
    assert weights(route_of(objects)) == {STABLE: 70, CANARY: 30}


def test_the_rollout_may_weigh_the_grpcroute(render: Any) -> None:
    objects = render({"rollout": {"enabled": True}}, api_versions=GRPC_GATEWAY)
    job = one(objects, "CronJob", "maskfleet-rollout")
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["MASKFLEET_ROLLOUT_GRPCROUTE"] == "maskfleet-grpc"
    role = one(objects, "Role", "maskfleet-rollout")
    assert {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["grpcroutes"],
            "resourceNames": ["maskfleet-grpc"], "verbs": ["get", "patch"]} in role["rules"]
    without = render({"rollout": {"enabled": True}})
    job = one(without, "CronJob", "maskfleet-rollout")
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "MASKFLEET_ROLLOUT_GRPCROUTE" not in env_of(container)
