"""What a user of the command sees: refused settings, the printed report, the exit codes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.rollout.actions import Plan, StageChange, stage_changes
from services.rollout.cli import main
from services.rollout.decision import Check, Decision
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
