"""Alert rules: promtool accepts them, their unit tests pass, and the chart ships them intact.

promtool comes from Debian's `prometheus` package (`make test` installs it); the rules file is
checked as-is, and the PrometheusRule the chart renders must carry exactly its groups.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.schemas import crd_schema_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "maskfleet"
RULES = CHART / "rules" / "maskfleet.rules.yaml"
RULES_TEST = Path(__file__).with_name("rules_test.yaml")
CRD_SCHEMA = crd_schema_path("monitoring.coreos.com/v1", "PrometheusRule")
SEVERITIES = {"warning", "critical"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: run `make install` (installs Debian's prometheus)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_issue_s_alerts_exist() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert {
        "MaskfleetHighErrorRatio",  # high 5xx ratio
        "MaskfleetLatencyP95High", "MaskfleetLatencyP99High",  # latency objective
        "MaskfleetModelNotReady", "MaskfleetNoModelReady",  # model not ready
        "MaskfleetCacheErrors",
        "MaskfleetBatchBacklogGrowing", "MaskfleetBatchStalled",  # backlog
        "MaskfleetWorkerChunkFailures", "MaskfleetWorkerImageErrors",  # worker failures
        "MaskfleetRequestsShed",  # load shedding (admission control)
    } <= names


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_alert_is_actionable(rule: dict[str, Any]) -> None:
    """A page needs a severity to route on, words a human can act on, and a `for` so a single
    bad scrape does not wake anyone."""
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert len(rule["annotations"]["description"].split()) >= 10
    assert rule.get("for"), f"{rule['alert']} has no `for`"


def test_every_alert_is_shown_to_fire_and_to_stay_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def render_chart(values: dict[str, Any]) -> dict[str, str]:
    helm = pytest.importorskip("helm_python")
    chart = helm.Chart.load(str(CHART))
    rendered: dict[str, str] = chart.render(values, name="maskfleet", namespace="ml")
    return rendered


def prometheus_rules(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = [doc for name, text in rendered.items() if name.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]
    return [doc for doc in docs if doc.get("kind") == "PrometheusRule"]


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused (the API server would silently prune a
    misspelled `annotation:`), except under `metadata`, which the CRD leaves open."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        if "metadata" in out.get("properties", {}):
            out["properties"]["metadata"] = schema["properties"]["metadata"]
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def test_prometheusrule_is_off_by_default() -> None:
    assert prometheus_rules(render_chart({})) == []


def test_chart_ships_the_tested_rules_as_a_valid_prometheusrule() -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True,
                                             "labels": {"release": "kube-prometheus-stack"}}}}
    (rule,) = prometheus_rules(render_chart(values))

    schema = strict(json.loads(CRD_SCHEMA.read_text()))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(rule)]
    assert errors == []

    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "ml"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Byte-level YAML differs (Helm re-serialises), the rules must not.
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_schema_check_would_catch_a_misspelled_field() -> None:
    """Guards the guard: `strict` must make the CRD schema refuse unknown rule fields."""
    values = {"metrics": {"prometheusRule": {"enabled": True}}}
    (rule,) = prometheus_rules(render_chart(values))
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["anotations"] = {"summary": "typo"}
    validator = jsonschema.Draft7Validator(strict(json.loads(CRD_SCHEMA.read_text())))
    assert list(validator.iter_errors(broken))
