"""values.yaml is fully documented and values.schema.json refuses what would break a
release: Helm itself (through the SDK) must reject each bad value before rendering."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.k8s.cases import VALUE_SETS, unflatten
from tests.k8s.conftest import CHART

BAD_VALUES: dict[str, dict[str, Any]] = {
    "weight above 100": {"abTest.canaryWeight": 101},
    "negative weight": {"abTest.canaryWeight": -1},
    "weight as text": {"abTest.canaryWeight": "ten"},
    "replicas as text": {"inference.stable.replicaCount": "two"},
    "unknown top-level key": {"replicas": 3},
    "misspelled nested key": {"inference.stable.autoscaling.targetCPU": 50},
    "pull policy not an enum": {"image.pullPolicy": "Sometimes"},
    "unknown stage": {"inference.canary.model.stage": "staging"},
    "negative pinned version": {"inference.canary.model.version": -3},
    "a cache that never evicts": {"redis.cache.maxmemoryPolicy": "noeviction"},
    "a state redis that evicts jobs": {"redis.state.maxmemoryPolicy": "allkeys-lru"},
    "state fsync policy unknown": {"redis.state.appendfsync": "sometimes"},
    "redis maxmemory without unit syntax": {"redis.cache.maxmemory": "lots"},
    "external redis without an address": {"redis.enabled": False},
    "external redis url not redis://": {"redis.enabled": False,
                                        "redis.external.url": "http://cache:6379"},
    "writable root filesystem": {"containerSecurityContext.readOnlyRootFilesystem": False},
    "root pods": {"podSecurityContext.runAsNonRoot": False},
    "privilege escalation": {"containerSecurityContext.allowPrivilegeEscalation": True},
    "capabilities kept": {"containerSecurityContext.capabilities.drop": ["NET_RAW"]},
    "bad memory quantity": {"inference.resources.limits.memory": "3 gigs"},
    "custom metric without a name": {
        "inference.stable.autoscaling.customMetric.enabled": True,
        "inference.stable.autoscaling.customMetric.name": ""},
    "cpu target above 100": {"worker.autoscaling.targetCPUUtilizationPercentage": 150},
    "pdb with both budgets": {"inference.stable.pdb.minAvailable": 1},
    "password in a plain redis url": {"redis.enabled": False,
                                      "redis.external.url": "redis://:hunter2@10.0.0.3:6379/0"},
    "workload identity and key secret": {
        "gcs.workloadIdentity.gcpServiceAccount": "maskfleet@proj-1.iam.gserviceaccount.com",
        "gcs.keySecret.name": "gcs-key"},
    "unknown environment": {"environment": "staging"},
    "cron schedule not cron": {"training.schedule": "every sunday"},
    "ingress path without slash": {"ingress.paths.stable": "model-a"},
    "header name with a space": {"abTest.header.name": "X Variant"},
    "privileged port for a non-root api": {"inference.port": 80},
    "tls without a secret": {"ingress.tls.enabled": True},
    "body limit above the production cap": {"inference.maxBodyBytes": 128 * 1024 * 1024},
    "visibility timeout that re-runs chunks": {"worker.visibilityTimeoutSeconds": 30},
    "gpu count zero": {"training.gpu.count": 0},
    "no parent gateway": {"httpRoute.parentRefs": []},
    "model repository not a URI": {"model.repository": "models"},
}

GOOD_VALUES: dict[str, dict[str, Any]] = {
    "all traffic to stable": {"abTest.canaryWeight": 0},
    "all traffic to canary": {"abTest.canaryWeight": 100},
    "pinned version": {"inference.stable.model.version": 12},
    "percent budget": {"inference.stable.pdb.minAvailable": "50%",
                       "inference.stable.pdb.maxUnavailable": ""},
    "lfu cache": {"redis.cache.maxmemoryPolicy": "allkeys-lfu"},
    "fsync always": {"redis.state.appendfsync": "always"},
    "state redis on an emptyDir": {"redis.state.persistence.enabled": False},
    "secret redis url": {"redis.enabled": False, "redis.external.existingSecret": "redis"},
    "digest": {"worker.image.digest": "sha256:" + "0" * 64},
    "development": {"environment": "development", "logLevel": "DEBUG"},
}


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_schema_rejects_bad_values(chart: helm.Chart, case: str) -> None:
    values = unflatten(BAD_VALUES[case])
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name="maskfleet", namespace="maskfleet")


@pytest.mark.parametrize("case", list(GOOD_VALUES) + [f"set:{n}" for n in VALUE_SETS])
def test_schema_accepts_good_values(chart: helm.Chart, case: str) -> None:
    values = (VALUE_SETS[case[4:]] if case.startswith("set:")
              else unflatten(GOOD_VALUES[case]))
    chart.validate_schema(values)


def test_schema_is_draft7_and_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)
    assert set(schema["properties"]) == set(defaults), "schema and values.yaml list the same keys"


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    """Paths of the values a user sets: scalars, lists and empty maps."""
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in _leaf_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) \S", text, flags=re.MULTILINE))
    values = yaml.safe_load(text)
    leaves = _leaf_paths(values)
    missing = [p for p in leaves
               if not any(p == d or p.startswith(d + ".") for d in documented)]
    assert not missing, f"undocumented values: {missing}"
    stale = [d for d in documented
             if not any(p == d or p.startswith(d + ".") for p in leaves)]
    assert not stale, f"@param for values that do not exist: {stale}"
