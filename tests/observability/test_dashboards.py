"""Dashboards: the committed JSON is what the code generates, and every query is PromQL.

No Grafana server can run here, so the JSON is checked for what Grafana needs (a Prometheus
datasource variable, unique panel ids) and the queries are parsed by promtool: each one is
wrapped in a recording rule and `promtool check rules` parses it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from observability.dashboards import OUTPUT, load, render
from observability.dashboards.__main__ import main
from observability.dashboards.targets import panel_queries, substitute

REPO = Path(__file__).resolve().parents[2]
CATALOGUE = REPO / "docs" / "metrics.md"
RULES = REPO / "charts" / "maskfleet" / "rules" / "maskfleet.rules.yaml"

# What the issue asks each dashboard to show, by panel title.
REQUIRED_PANELS = {
    "maskfleet-overview": {"Requests by route and status", "Error ratio", "Prediction latency",
                           "In flight by pod", "Batch size", "Queue time", "Cache hit ratio"},
    "maskfleet-ab": {"Traffic share by role", "Latency p95 by role", "5xx ratio by role",
                     "Evaluation metrics", "Feedback IoU by version"},
    "maskfleet-batch": {"Backlog by queue", "Images processed", "Failures", "Job progress"},
}


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {name: load(text) for name, text in render().items()}


def test_committed_json_matches_the_code() -> None:
    """Fails when someone edits the JSON by hand or changes the code without `make dashboards`."""
    generated = render()
    committed = {path.name: path.read_text() for path in OUTPUT.glob("*.json")}
    assert sorted(committed) == sorted(generated), "run `make dashboards`"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is out of date: run `make dashboards`"


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "maskfleet-overview.json").write_text("{}\n")
    assert main(["--check", "--out", str(tmp_path)]) == 1


def test_file_names_are_uids(dashboards: dict[str, dict[str, Any]]) -> None:
    assert {name: model["uid"] + ".json" for name, model in dashboards.items()} == {
        name: name for name in dashboards}
    assert set(REQUIRED_PANELS) == {model["uid"] for model in dashboards.values()}


def test_required_panels_are_present(dashboards: dict[str, dict[str, Any]]) -> None:
    for model in dashboards.values():
        titles = {panel["title"] for panel in model["panels"]}
        assert REQUIRED_PANELS[model["uid"]] <= titles


def test_panels_query_the_datasource_variable(dashboards: dict[str, dict[str, Any]]) -> None:
    for model in dashboards.values():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [panel["id"] for panel in model["panels"]]
        assert len(ids) == len(set(ids)), f"{model['uid']}: duplicate panel ids"
        for panel in model["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], f"{model['uid']} / {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"


def test_every_query_filters_by_namespace(dashboards: dict[str, dict[str, Any]]) -> None:
    for model in dashboards.values():
        for query in panel_queries(model):
            selectors = re.findall(r"maskfleet_\w+\{[^}]*\}|maskfleet_\w+(?![\w{])", query.expr)
            unfiltered = [s for s in selectors if 'namespace=~"$namespace"' not in s]
            assert unfiltered == [], f"{query.dashboard} / {query.panel}: {unfiltered}"


def test_every_query_is_valid_promql(dashboards: dict[str, dict[str, Any]],
                                     tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run `make install` (installs Debian's prometheus)")
    queries = [q for model in dashboards.values() for q in panel_queries(model)]
    rules = [{"record": f"dashboard:query:{n}", "expr": substitute(q.expr)}
             for n, q in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def referenced_metrics(text: str) -> set[str]:
    names = set(re.findall(r"\bmaskfleet_[a-z0-9_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def test_dashboards_and_alerts_use_only_catalogued_metrics() -> None:
    """The catalogue is the contract with the services: a query on a metric nobody promised
    to export would show "No data" forever."""
    catalogue = set(re.findall(r"`(maskfleet_[a-z0-9_]+)`", CATALOGUE.read_text()))
    used = referenced_metrics("".join(render().values())) | referenced_metrics(RULES.read_text())
    assert used - catalogue == set()
