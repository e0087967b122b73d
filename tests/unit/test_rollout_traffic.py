"""The patches a decision sends, checked against the chart's own objects and the official schemas.

The HTTPRoute and the nginx canary Ingress come from rendering charts/maskfleet, so a change of
the chart that the rollout no longer understands fails here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.rollout.errors import TrafficError
from services.rollout.traffic import (
    NGINX_WEIGHT,
    canary_weight_of,
    drain_httproute,
    drain_ingress,
    weigh_httproute,
    weigh_ingress,
)
from tests.schemas import crd_schema_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "maskfleet"
HTTPROUTE_SCHEMA = crd_schema_path("gateway.networking.k8s.io/v1", "HTTPRoute")
STABLE, CANARY = "maskfleet-inference-stable", "maskfleet-inference-canary"


def rendered(template: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    values = {"httpRoute": {"enabled": True}, **(values or {})}
    manifests = helm.Chart.load(CHART).render(values, name="maskfleet", namespace="ml")
    doc = yaml.safe_load(manifests[f"maskfleet/templates/{template}"])
    assert isinstance(doc, dict)
    return doc


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, so a misspelt field cannot pass."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def weights(route: dict[str, Any]) -> list[dict[str, int]]:
    return [{ref["name"]: ref.get("weight", 1) for ref in rule["backendRefs"]}
            for rule in route["spec"]["rules"]]


def test_a_fresh_install_sends_the_canary_nothing() -> None:
    """The chart creates the split; its weights are the rollout's, starting at 0."""
    route = rendered("httproute-traffic.yaml", {"abTest": {"canaryWeight": 25}})
    assert weights(route) == [{STABLE: 100, CANARY: 0}]
    assert canary_weight_of(route, CANARY) == 0
    assert route["metadata"]["annotations"]["maskfleet.io/weights-owner"] == "rollout"


def test_the_rollout_gives_a_ready_candidate_its_share_then_drains_it() -> None:
    route = rendered("httproute-traffic.yaml")
    route["metadata"]["resourceVersion"] = "4711"
    schema = strict(json.loads(HTTPROUTE_SCHEMA.read_text()))
    raise_patch, raised = weigh_httproute(route, STABLE, CANARY, 25)
    under_test = merge_patch(route, raise_patch)
    jsonschema.Draft7Validator(schema).validate(under_test)
    assert weights(under_test) == [{STABLE: 75, CANARY: 25}]
    assert raised == f"rules[0] {STABLE} weight 100 -> 75; rules[0] {CANARY} weight 0 -> 25"
    assert raise_patch["metadata"] == {"resourceVersion": "4711"}

    patch, summary = drain_httproute(under_test, STABLE, CANARY)
    patched = merge_patch(under_test, patch)
    jsonschema.Draft7Validator(schema).validate(patched)
    assert weights(patched) == [{STABLE: 100, CANARY: 0}]
    assert {k: v for k, v in patched["spec"].items() if k != "rules"} == {
        k: v for k, v in route["spec"].items() if k != "rules"}
    assert summary == (f"rules[0] {STABLE} weight 75 -> 100; rules[0] {CANARY} weight 25 -> 0")
    with pytest.raises(TrafficError, match="not a percentage"):
        weigh_httproute(route, STABLE, CANARY, 101)


def test_the_routes_helm_owns_carry_no_weight_to_fight_over() -> None:
    """Paths and header overrides route to one side each: nothing for the rollout to set."""
    route = rendered("httproute.yaml")
    assert all(len(rule["backendRefs"]) == 1 for rule in route["spec"]["rules"])
    with pytest.raises(TrafficError, match="no rule splitting traffic"):
        drain_httproute(route, STABLE, CANARY)


def test_a_route_without_a_stable_canary_split_is_refused() -> None:
    route = rendered("httproute-traffic.yaml", {"inference": {"canary": {"enabled": False}}})
    with pytest.raises(TrafficError, match="no rule splitting traffic"):
        drain_httproute(route, STABLE, CANARY)


def test_draining_twice_changes_nothing_the_second_time() -> None:
    route = merge_patch(rendered("httproute-traffic.yaml"),
                        weigh_httproute(rendered("httproute-traffic.yaml"), STABLE, CANARY,
                                        10)[0])
    once = merge_patch(route, drain_httproute(route, STABLE, CANARY)[0])
    patch, summary = drain_httproute(once, STABLE, CANARY)
    assert merge_patch(once, patch) == once
    assert summary == "canary weight already 0"


def test_nginx_canary_ingress_patch_touches_only_the_weight_and_stays_valid() -> None:
    ingress = rendered("ingress-nginx-canary.yaml", {"ingress": {"nginxCanary": {"enabled": True}}})
    assert ingress["metadata"]["annotations"][NGINX_WEIGHT] == "0"  # nothing before a candidate
    ingress = merge_patch(ingress, weigh_ingress(ingress["metadata"]["annotations"], 10)[0])
    patch, summary = drain_ingress(ingress["metadata"]["annotations"])

    patched = merge_patch(copy.deepcopy(ingress), patch)
    kubernetes_validate.validate(patched, "1.33.0", strict=True)
    annotations = patched["metadata"]["annotations"]
    assert annotations[NGINX_WEIGHT] == "0"
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert {k: v for k, v in annotations.items() if k != NGINX_WEIGHT} == {
        k: v for k, v in ingress["metadata"]["annotations"].items() if k != NGINX_WEIGHT}
    assert summary == f"{NGINX_WEIGHT} 10 -> 0"


def test_the_grpcroute_gets_the_same_split_as_the_httproute() -> None:
    route = rendered("grpcroute.yaml", {"grpcRoute": {"enabled": True}})
    assert route["kind"] == "GRPCRoute"
    assert route["metadata"]["annotations"]["maskfleet.io/weights-owner"] == "rollout"
    schema = strict(json.loads(
        crd_schema_path("gateway.networking.k8s.io/v1", "GRPCRoute").read_text()))
    patch, summary = weigh_httproute(route, STABLE, CANARY, 40)
    under_test = merge_patch(route, patch)
    jsonschema.Draft7Validator(schema).validate(under_test)
    assert weights(under_test)[-1] == {STABLE: 60, CANARY: 40}
    # the header overrides that force one side keep their single backend
    assert weights(under_test)[:-1] == weights(route)[:-1]
    assert summary.endswith(f"{CANARY} weight 0 -> 40")
    drained = merge_patch(under_test, drain_httproute(under_test, STABLE, CANARY)[0])
    assert weights(drained)[-1] == {STABLE: 100, CANARY: 0}
