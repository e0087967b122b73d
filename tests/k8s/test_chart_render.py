"""The chart lints strictly and every object it renders, for every value set, is valid for
the Kubernetes versions we support (official schemas, strict) or for its CRD schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.k8s.cases import CLUSTERS, VALUE_SETS, Manifest
from tests.k8s.conftest import CHART, KUBE_VERSIONS


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict_passes(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace="maskfleet")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def test_helm_lint_reports_a_broken_chart(tmp_path: Path) -> None:
    """Guards the lint test itself: a template error must show up as a lint error."""
    broken = tmp_path / "maskfleet"
    helm.Chart.load(CHART).save_dir(tmp_path)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.deeper }}\n")
    report = helm.lint(broken, strict=True, namespace="maskfleet")
    assert [m for m in report["messages"] if m["severity"] >= 2] or report["errors"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_is_valid_kubernetes(rendered: list[Manifest], version: str,
                                          kube_errors: Any, crd_validator: Any) -> None:
    assert rendered, "the chart rendered nothing"
    for obj in rendered:
        errors = kube_errors(obj, version)
        if errors is None:
            # Not a built-in kind: it must be a custom resource we hold a schema for.
            assert crd_validator(obj) is not None, f"no schema at all for {obj['kind']}"
            continue
        assert errors == (), f"{obj['kind']}/{obj['metadata']['name']} on {version}: {errors}"


def test_every_custom_resource_matches_its_crd(rendered: list[Manifest],
                                               crd_validator: Any) -> None:
    for obj in rendered:
        validator = crd_validator(obj)
        if validator is None:
            continue
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: {errors}"


def test_custom_resources_are_rendered_and_checked(render: Any, crd_validator: Any) -> None:
    """The CRD check above must not pass vacuously: the three custom resources are there."""
    kinds = {o["kind"] for o in render(VALUE_SETS["metrics-on"]) if crd_validator(o)}
    assert {"HTTPRoute", "ServiceMonitor", "PrometheusRule"} <= kinds


def test_validators_reject_misspelled_fields(defaults: list[Manifest], kube_errors: Any,
                                             crd_validator: Any) -> None:
    """Guards the validation tests: strict mode must catch an unknown field."""
    deployment = copy.deepcopy(next(o for o in defaults if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert kube_errors(deployment, "1.33")

    route = copy.deepcopy(next(o for o in defaults if o["kind"] == "HTTPRoute"))
    route["spec"]["rules"][0]["backendRefs"][0]["wieght"] = 5
    assert list(crd_validator(route).iter_errors(route))


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_each_template_renders_one_kind(render_sources: Any, name: str) -> None:
    """bitnami style: one object kind per template file, whatever the values."""
    for source, objects in render_sources(VALUE_SETS[name]).items():
        kinds = {o["kind"] for o in objects}
        assert len(kinds) <= 1, f"{source} renders {kinds}"


@pytest.mark.parametrize("release", [
    "segmentation-platform-production-europe-west4-blue-1",  # 53, Helm's longest
    "maskfleet-production-europe-west4-a",
    "segmentation-platform-prod",
])
def test_long_release_names_give_names_kubernetes_accepts(render: Any, release: str) -> None:
    """A Service's name is a DNS label of at most 63 characters (the API server refuses a longer
    one and the install fails half way), a StatefulSet's pods carry their own name plus an
    ordinal in a label (also 63), a CronJob's Jobs add 11 characters to its name (so 52), and
    every label value is at most 63; the release name is cut to fit, not refused."""
    objects = render(VALUE_SETS["everything-forced-on"], release=release,
                     api_versions=CLUSTERS["everything-forced-on"])
    assert any(o["metadata"]["name"].endswith("-inference-canary-metrics") for o in objects)
    limits = {"Service": 63, "StatefulSet": 60, "CronJob": 52}
    for obj in objects:
        name = obj["metadata"]["name"]
        limit = limits.get(obj["kind"], 253)
        assert len(name) <= limit, f"{obj['kind']} {name}: {len(name)} characters"
        for label, value in obj["metadata"].get("labels", {}).items():
            assert len(str(value)) <= 63, f"{obj['kind']} {name}: label {label}={value}"
