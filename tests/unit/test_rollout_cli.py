"""What a user of the command sees: refused settings, the printed report, the exit codes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.rollout.actions import Plan, StageChange, stage_changes
from services.rollout.cli import canary_weight, main
from services.rollout.decision import Check, Decision
from services.rollout.readout import Readout, Side, readout_queries
from services.rollout.report import as_text, report
from services.rollout.settings import RolloutSettings
from services.rollout.traffic import Patch, httproute_path


def test_a_window_prometheus_would_not_understand_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a Prometheus duration"):
        RolloutSettings(rollout_window="30 minutes")


def test_production_refuses_a_prometheus_on_this_machine() -> None:
    with pytest.raises(ValidationError, match="prometheus_url points at this machine"):
        RolloutSettings(environment="production", model_repository="gs://models/m")
    ok = RolloutSettings(environment="production", model_repository="gs://models/m",
                         prometheus_url="http://prometheus-operated.monitoring.svc:9090")
    assert ok.rollout_min_requests == 500


def test_invalid_environment_exits_with_the_error_code(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MASKFLEET_ROLLOUT_ALPHA", "0.5")
    assert main(["--dry-run"]) == 1
    assert "rollout_alpha" in capsys.readouterr().err


def test_dry_run_report_shows_the_request_body_and_the_stage_move() -> None:
    decision = Decision("rollback", ["errors: too many"], 1, 2, [
        Check("errors", "fail", "5xx ratio stable 0.50%, canary 8.00%", {"increase": 0.075})])
    patch = Patch("HTTPRoute", "ml", "maskfleet", httproute_path("ml", "maskfleet"),
                  {"spec": {"rules": []}}, "rules[4] maskfleet-inference-canary weight 10 -> 0")
    plan = Plan(decision, [patch], stage_changes(decision))
    doc = report(plan, None, dry_run=True, applied=False,
                 evaluated_at=datetime(2026, 1, 1, tzinfo=UTC), window="30m")

    text = as_text(doc)
    assert text.splitlines()[0].startswith("decision: ROLLBACK  (candidate 2 vs production 1")
    assert "errors        FAIL          5xx ratio stable 0.50%, canary 8.00%" in text
    assert "actions would do (dry run, nothing changed):" in text
    assert ("PATCH /apis/gateway.networking.k8s.io/v1/namespaces/ml/httproutes/maskfleet"
            "?fieldManager=maskfleet-rollout  [application/merge-patch+json]") in text
    assert '"rules": []' in text
    assert text.endswith("clear stage candidate (was version 2)")


def test_promote_moves_production_and_rollback_clears_candidate() -> None:
    assert stage_changes(Decision("promote", [], 1, 2)) == [StageChange("set", "production", 2)]
    assert stage_changes(Decision("rollback", [], 1, 2)) == [StageChange("clear", "candidate", 2)]
    assert stage_changes(Decision("wait", [], 1, 2)) == []


def test_every_readout_query_is_scoped_to_the_release() -> None:
    """Two releases scraped by one Prometheus must never mix their evidence."""
    settings = RolloutSettings(rollout_namespace="team-a", rollout_stable_service="a-stable",
                               rollout_canary_service="a-canary")
    queries = readout_queries("unet", (1, 2), "30m", settings.rollout_routes,
                              namespace=settings.rollout_namespace, jobs=settings.jobs_regex)
    assert set(queries) == {"requests", "errors", "p95_seconds", "feedback_count",
                            "feedback_sum", "feedback_buckets", "canary_serving"}
    for name, promql in queries.items():
        selectors = re.findall(r"\{([^}]*)\}", promql)
        assert selectors, name
        for selector in selectors:
            assert 'namespace="team-a"' in selector, (name, promql)
            assert 'job=~"a\\\\-stable|a\\\\-canary"' in selector, (name, promql)
    custom = RolloutSettings(rollout_jobs="kubernetes-pods")
    assert custom.jobs_regex == "kubernetes-pods"
    with pytest.raises(ValidationError):
        RolloutSettings(rollout_jobs="(unclosed")


@pytest.mark.parametrize(("action", "serving", "weight"), [
    ("wait", (2,), 10), ("wait", (), 0), ("wait", (1,), 0),
    ("promote", (2,), 0), ("rollback", (2,), 0)])
def test_the_canary_gets_traffic_only_while_it_serves_a_candidate_under_test(
        action: str, serving: tuple[int, ...], weight: int) -> None:
    readout = Readout(stable=Side(1), canary=Side(2), window="30m",
                      evaluated_at=datetime(2026, 1, 1, tzinfo=UTC), canary_serving=serving)
    decision = Decision(action, [], 1, 2)  # type: ignore[arg-type]
    assert canary_weight(decision, readout, 10) == weight
    assert canary_weight(Decision("wait", [], 1, None), None, 10) == 0
