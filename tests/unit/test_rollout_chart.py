"""The chart's rollout pieces: off by default, least privilege, settings the command accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from services.rollout.settings import RolloutSettings

CHART = Path(__file__).resolve().parents[2] / "charts" / "maskfleet"
ROLLOUT_KINDS = {"CronJob", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart for a cluster with the Gateway API (httpRoute forced on: offline rendering
    sees no cluster, and `auto` would leave the routes out)."""
    values = {"httpRoute": {"enabled": True}, **(values or {})}
    manifests = helm.Chart.load(CHART).render(values, name="maskfleet", namespace="ml")
    return [doc for path, text in manifests.items() if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def rollout_objects(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    docs = [d for d in render(values)
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "rollout"]
    return {d["kind"]: d for d in docs}


def enabled(**extra: Any) -> dict[str, Any]:
    return {"rollout": {"enabled": True}, **extra}


def test_nothing_of_the_rollout_is_rendered_by_default() -> None:
    assert rollout_objects({}) == {}


@pytest.mark.parametrize("kubernetes_version", ["1.29.0", "1.33.0"])
def test_rollout_objects_validate_against_the_kubernetes_schemas(kubernetes_version: str) -> None:
    objects = rollout_objects(enabled(ingress={"nginxCanary": {"enabled": True}}))
    assert set(objects) == ROLLOUT_KINDS
    for obj in objects.values():
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)


def test_role_allows_get_and_patch_on_the_one_route_and_the_one_ingress_only() -> None:
    with_nginx = rollout_objects(enabled(ingress={"nginxCanary": {"enabled": True}}))
    assert with_nginx["Role"]["rules"] == [
        {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
         "resourceNames": ["maskfleet-traffic"], "verbs": ["get", "patch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"],
         "resourceNames": ["maskfleet-canary"], "verbs": ["get", "patch"]},
    ]
    assert with_nginx["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "maskfleet-rollout", "namespace": "ml"}]
    assert with_nginx["RoleBinding"]["roleRef"]["name"] == "maskfleet-rollout"
    route_only = rollout_objects(enabled())
    assert [rule["resources"] for rule in route_only["Role"]["rules"]] == [["httproutes"]]


def test_without_anything_to_patch_there_is_no_role_and_no_token() -> None:
    objects = rollout_objects(enabled(httpRoute={"enabled": False}))
    assert "Role" not in objects
    assert "RoleBinding" not in objects
    pod = objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert all(e["name"] != "MASKFLEET_ROLLOUT_HTTPROUTE" for e in pod["containers"][0]["env"])


def test_cronjob_runs_the_command_in_the_inference_image_with_settings_it_accepts() -> None:
    docs = render(enabled(ingress={"nginxCanary": {"enabled": True}}))
    cronjob = next(d for d in docs if d["kind"] == "CronJob"
                   and d["metadata"]["name"] == "maskfleet-rollout")
    config = next(d for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == "maskfleet-config")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("maskfleet-inference:")
    assert container["command"] == ["python", "-m", "services.rollout"]
    assert "--exit-zero" in container["args"]
    assert "--dry-run" not in container["args"]
    assert pod["automountServiceAccountToken"] is True
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"

    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["MASKFLEET_ROLLOUT_NAMESPACE"] = "ml"  # from the downward API in the cluster
    fields = {f"MASKFLEET_{name.upper()}" for name in RolloutSettings.model_fields}
    assert set(env) <= fields, f"unknown settings: {set(env) - fields}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**config["data"], **env}.items():
            mp.setenv(name, value)
        settings = RolloutSettings()
    assert settings.environment == "production"
    assert settings.rollout_httproute == "maskfleet-traffic"
    assert settings.rollout_canary_weight == 10  # abTest.canaryWeight
    # Scoped to this release: its namespace and the jobs of its two Services.
    assert settings.jobs_regex == r"maskfleet\-inference\-stable|maskfleet\-inference\-canary"
    assert settings.rollout_nginx_canary_ingress == "maskfleet-canary"
    assert settings.rollout_canary_service == "maskfleet-inference-canary"
    assert settings.rollout_min_iou_delta == pytest.approx(-0.01)


def test_dry_run_value_makes_the_cronjob_change_nothing() -> None:
    objects = rollout_objects({"rollout": {"enabled": True, "dryRun": True}})
    (container,) = objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"]
    assert "--dry-run" in container["args"]


def test_rollout_pods_may_reach_prometheus_and_the_api_server_but_nobody_reaches_them() -> None:
    policy = rollout_objects(enabled())["NetworkPolicy"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {53, 443, 6443, 9090} <= ports
