"""skaffold.yaml validates against the v4beta13 schema, builds the three images from the
Dockerfile targets, deploys them through the chart, and its profiles only set values the
chart accepts."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.k8s.cases import deep_merge, unflatten
from tests.k8s.conftest import CHART, REPO
from tests.schemas import SKAFFOLD

IMAGES = {"maskfleet-inference": "inference", "maskfleet-worker": "worker",
          "maskfleet-training": "training"}


@pytest.fixture(scope="module")
def skaffold() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((REPO / "skaffold.yaml").read_text()))
    assert len(docs) == 1
    config: dict[str, Any] = docs[0]
    return config


def test_skaffold_matches_the_v4beta13_schema(skaffold: dict[str, Any]) -> None:
    schema = json.loads(SKAFFOLD.read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(skaffold)]
    assert not errors
    assert skaffold["apiVersion"] == "skaffold/v4beta13"
    broken = deep_merge(skaffold, {"build": {"artifact": []}})
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken)), "schema is strict"


def test_three_artifacts_from_the_dockerfile_targets(skaffold: dict[str, Any]) -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, flags=re.MULTILINE))
    artifacts = {a["image"]: a for a in skaffold["build"]["artifacts"]}
    assert set(artifacts) == set(IMAGES)
    for image, target in IMAGES.items():
        docker = artifacts[image]["docker"]
        assert (REPO / artifacts[image]["context"] / docker["dockerfile"]).is_file()
        assert docker["target"] == target
        assert target in targets


def releases(skaffold: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(skaffold["deploy"]["helm"]["releases"])
    for profile in skaffold["profiles"]:
        found += profile.get("deploy", {}).get("helm", {}).get("releases", [])
    return found


def test_deploys_the_chart_with_the_built_images(skaffold: dict[str, Any]) -> None:
    assert {p["name"] for p in skaffold["profiles"]} >= {"dev", "prod"}
    for release in releases(skaffold):
        assert release["chartPath"] == "charts/maskfleet"
        assert (release["name"], release["namespace"]) == ("maskfleet", "maskfleet")
        templates = release["setValueTemplates"]
        for image, component in IMAGES.items():
            var = image.replace("-", "_")
            assert templates[f"{component}.image.repository"] == f"{{{{.IMAGE_REPO_{var}}}}}"
            assert templates[f"{component}.image.tag"].startswith(f"{{{{.IMAGE_TAG_{var}}}}}")


@pytest.mark.parametrize("profile", ["default", "dev", "prod"])
def test_profile_values_render(skaffold: dict[str, Any], profile: str) -> None:
    """What skaffold passes to helm (with a plausible image reference) must pass the schema."""
    release = (skaffold["deploy"]["helm"]["releases"][0] if profile == "default" else
               next(p for p in skaffold["profiles"] if p["name"] == profile)
               ["deploy"]["helm"]["releases"][0])
    values = dict(release.get("setValues", {}))
    for key, template in release["setValueTemplates"].items():
        values[key] = re.sub(r"\{\{\.IMAGE_REPO_\w+\}\}", "registry.example/maskfleet/img",
                             re.sub(r"\{\{\.IMAGE_TAG_\w+\}\}", "abc1234",
                                    re.sub(r"\{\{\.IMAGE_DIGEST_\w+\}\}",
                                           "sha256:" + "f" * 64, template)))
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(unflatten(values), name="maskfleet", namespace="maskfleet")
    assert any("registry.example/maskfleet/img:abc1234" in text for text in rendered.values())


# Switches of objects whose kind a cluster may not serve: forcing one to true makes
# `skaffold run` fail on every cluster without that CRD.
CRD_SWITCHES = ("httpRoute.enabled", "httpRoute.healthCheckPolicy.enabled",
                "metrics.serviceMonitor.enabled", "metrics.prometheusRule.enabled",
                "metrics.podMonitoring.enabled")


@pytest.mark.parametrize("profile", ["dev", "prod"])
def test_profiles_never_force_custom_resources_on(skaffold: dict[str, Any], profile: str) -> None:
    release = next(p for p in skaffold["profiles"] if p["name"] == profile)[
        "deploy"]["helm"]["releases"][0]
    values = release.get("setValues", {})
    forced = [key for key in CRD_SWITCHES if values.get(key) is True]
    assert not forced, f"profile {profile} forces {forced} on"


def test_prod_profile_leaves_monitoring_to_the_cluster(skaffold: dict[str, Any]) -> None:
    release = next(p for p in skaffold["profiles"] if p["name"] == "prod")[
        "deploy"]["helm"]["releases"][0]
    values = unflatten(dict(release.get("setValues", {})))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    merged = deep_merge(defaults, values)
    assert merged["metrics"]["serviceMonitor"]["enabled"] == "auto"
    assert merged["metrics"]["podMonitoring"]["enabled"] == "auto"
    assert merged["metrics"]["dashboards"]["enabled"] is True

