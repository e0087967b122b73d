"""Fixtures for the Kubernetes packaging tests: the chart rendered through the Helm Go SDK
(helm-python-sdk) and validators for the official Kubernetes schemas (kubernetes-validate)
and the CRD schemas vendored in tests/schemas/crds. Everything runs offline."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.k8s.cases import CLUSTERS, GKE_GATEWAY, VALUE_SETS, Manifest
from tests.schemas import CRDS

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "maskfleet"
CRD_SCHEMAS = CRDS
KUBE_VERSIONS = ("1.29", "1.33")

Render = Callable[..., list[Manifest]]
RenderSources = Callable[..., dict[str, list[Manifest]]]


def _load_render_script() -> ModuleType:
    """scripts/ is not a package: load render_manifests.py from its path."""
    path = REPO / "scripts" / "render_manifests.py"
    spec = importlib.util.spec_from_file_location("render_manifests", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def render_script() -> ModuleType:
    return _load_render_script()


@pytest.fixture(scope="session")
def render_sources(render_script: ModuleType) -> RenderSources:
    """render_sources(values, release=..., chart=..., api_versions=...) -> {template: objects};
    cached, since rendering is deterministic (callers get a copy they may change).
    `api_versions` are the custom kinds the pretend cluster serves (cases.CLUSTERS)."""
    memo: dict[str, dict[str, list[Manifest]]] = {}

    def _render(
        values: dict[str, Any] | None = None,
        *,
        release: str = "maskfleet",
        chart: Path = CHART,
        api_versions: tuple[str, ...] = GKE_GATEWAY,
    ) -> dict[str, list[Manifest]]:
        key = json.dumps([values, release, str(chart), api_versions], sort_keys=True)
        if key not in memo:
            memo[key] = render_script.render_sources(
                values, chart=chart, release=release, namespace="maskfleet",
                api_versions=api_versions,
            )
        return copy.deepcopy(memo[key])

    return _render


@pytest.fixture(scope="session")
def render(render_sources: RenderSources) -> Render:
    """render(values, release=..., chart=...) -> the rendered objects, in template order."""

    def _render(values: dict[str, Any] | None = None, **options: Any) -> list[Manifest]:
        sources = render_sources(values, **options)
        return [obj for objects in sources.values() for obj in objects]

    return _render


@pytest.fixture(params=list(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    name: str = request.param
    return name, VALUE_SETS[name]


@pytest.fixture
def rendered(value_set: tuple[str, dict[str, Any]], render: Render) -> list[Manifest]:
    """The chart rendered with one of the VALUE_SETS (every test using it runs once per set),
    for the cluster that value set is meant for (cases.CLUSTERS, GKE with the Gateway API when
    not listed)."""
    return render(value_set[1], api_versions=CLUSTERS.get(value_set[0], GKE_GATEWAY))


@pytest.fixture(scope="session")
def defaults(render: Render) -> list[Manifest]:
    return render()


@cache
def _kube_errors(document: str, version: str) -> tuple[str, ...] | None:
    """Strict schema errors of one object, None when Kubernetes has no schema for its kind."""
    obj = json.loads(document)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return None
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(p) for p in error.path)
        return (f"{error.message} at {where}",)
    return ()


@pytest.fixture(scope="session")
def kube_errors() -> Callable[[Manifest, str], tuple[str, ...] | None]:
    return lambda obj, version: _kube_errors(json.dumps(obj, sort_keys=True), version)


def _strict(schema: Any) -> Any:
    """Close every object schema that lists its properties, as `kubectl --validate=strict`
    would: the CRD schemas accept misspelled fields otherwise."""
    if isinstance(schema, dict):
        closed = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in closed
            and "additionalProperties" not in closed
            and not closed.get("x-kubernetes-preserve-unknown-fields")
        ):
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def _crd_validator(group: str, kind: str, version: str) -> jsonschema.Draft7Validator | None:
    path = CRD_SCHEMAS / f"{group}_{kind.lower()}_{version}.json"
    if not path.exists():
        return None
    return jsonschema.Draft7Validator(_strict(json.loads(path.read_text())))


@pytest.fixture(scope="session")
def crd_validator() -> Callable[[Manifest], jsonschema.Draft7Validator | None]:
    """The strict JSON Schema of a custom resource's kind, None for kinds without one."""
    assert CRD_SCHEMAS.is_dir(), f"missing {CRD_SCHEMAS} (vendored schemas)"

    def _for(obj: Manifest) -> jsonschema.Draft7Validator | None:
        group, _, version = obj["apiVersion"].rpartition("/")
        return _crd_validator(group, obj["kind"], version)

    return _for
