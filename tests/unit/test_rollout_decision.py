"""The rollout decision from numbers alone: verdicts, sample size, and what each outcome means."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.rollout.decision import (
    Decision,
    Thresholds,
    check_errors,
    check_feedback,
    decide,
    precheck,
)
from services.rollout.readout import Readout, Side
from services.rollout.stats import histogram_variance, proportion_difference, wilson

IOU_BOUNDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, float("inf"))
FAST = 0.2


def feedback(values: list[float]) -> dict[str, object]:
    """Side fields for these IoU values, as the API's histogram would report them."""
    buckets = tuple((le, float(sum(v <= le for v in values))) for le in IOU_BOUNDS)
    return {"feedback_count": float(len(values)), "feedback_sum": float(sum(values)),
            "feedback_buckets": buckets}


def spread(mean: float, n: int) -> list[float]:
    """n IoU values around `mean` with a realistic spread of +-0.1."""
    return [min(1.0, max(0.0, mean + (i % 5 - 2) * 0.05)) for i in range(n)]


def readout(stable: dict[str, object], canary: dict[str, object],
            serving: tuple[int, ...] = (2,)) -> Readout:
    return Readout(stable=Side(version=1, **stable),  # type: ignore[arg-type]
                   canary=Side(version=2, **canary),  # type: ignore[arg-type]
                   window="30m", evaluated_at=datetime(2026, 1, 1, tzinfo=UTC),
                   canary_serving=serving)


def healthy(requests: float, errors: float, p95: float = FAST, iou: float = 0.7,
            n_feedback: int = 200) -> dict[str, object]:
    return {"requests": requests, "errors": errors, "p95_seconds": p95,
            **feedback(spread(iou, n_feedback))}


def test_wilson_interval_matches_the_textbook_value_for_zero_successes() -> None:
    low, high = wilson(0, 100, 1.959964)
    assert low == 0.0
    assert high == pytest.approx(0.0370, abs=2e-4)


def test_same_error_ratios_are_inconclusive_on_few_requests_and_a_failure_on_many() -> None:
    """2% vs 0.5% with a 1-point tolerance: the sample size decides whether we know."""
    t = Thresholds(min_requests=500)
    few = check_errors(readout(healthy(600, 3), healthy(600, 12)), t)
    many = check_errors(readout(healthy(20000, 100), healthy(20000, 400)), t)
    assert few.verdict == "inconclusive"
    assert many.verdict == "fail"
    assert many.numbers["increase"] == pytest.approx(0.015)
    assert many.numbers["increase_low"] > 0.01  # type: ignore[operator]


def test_no_errors_on_either_side_is_a_pass_not_a_division_by_zero() -> None:
    check = check_errors(readout(healthy(1000, 0), healthy(1000, 0)), Thresholds())
    assert check.verdict == "pass"
    assert check.numbers["increase_high"] < 0.01  # type: ignore[operator]


def test_fewer_requests_than_the_minimum_are_not_judged() -> None:
    check = check_errors(readout(healthy(5000, 0), healthy(499, 499)), Thresholds())
    assert check.verdict == "insufficient"
    assert "need 500 each" in check.summary


def test_same_iou_loss_is_inconclusive_on_little_feedback_and_a_failure_on_a_lot() -> None:
    t = Thresholds(min_iou_delta=-0.01)
    few = check_feedback(readout(healthy(1000, 0, iou=0.70, n_feedback=30),
                                 healthy(1000, 0, iou=0.66, n_feedback=30)), t)
    many = check_feedback(readout(healthy(1000, 0, iou=0.70, n_feedback=3000),
                                  healthy(1000, 0, iou=0.66, n_feedback=3000)), t)
    assert few.verdict == "inconclusive"
    assert many.verdict == "fail"
    assert many.numbers["delta"] == pytest.approx(-0.04, abs=1e-9)


def test_histogram_variance_is_close_to_the_true_one_and_falls_back_to_the_bound() -> None:
    values = spread(0.7, 500)
    fields = feedback(values)
    mean = sum(values) / len(values)
    true = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    estimate = histogram_variance(fields["feedback_buckets"], len(values), mean)  # type: ignore[arg-type]
    assert true <= estimate < true + 0.01
    assert histogram_variance((), 500, 0.7) == pytest.approx(0.7 * 0.3)


def test_clear_win_promotes_clear_loss_rolls_back_and_little_data_waits() -> None:
    t = Thresholds()
    win = decide(readout(healthy(4000, 20, iou=0.70), healthy(1000, 4, iou=0.85)), t)
    loss = decide(readout(healthy(4000, 20), healthy(1000, 80, p95=0.9, iou=0.5)), t)
    little = decide(readout(healthy(4000, 20), healthy(40, 0, n_feedback=4)), t)
    assert win.action == "promote"
    assert loss.action == "rollback"
    assert {c.name for c in loss.checks if c.verdict == "fail"} == {
        "errors", "latency", "feedback_iou"}
    assert little.action == "wait"
    assert {c.name: c.verdict for c in little.checks} == {
        "serving": "pass", "errors": "insufficient", "latency": "insufficient",
        "feedback_iou": "insufficient"}


def test_slow_canary_alone_rolls_back() -> None:
    decision = decide(readout(healthy(4000, 0), healthy(1000, 0, p95=FAST * 1.5)), Thresholds())
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("latency: p95 stable 200 ms, canary 300 ms")


def test_without_feedback_waits_unless_feedback_is_optional() -> None:
    r = readout(healthy(4000, 0), healthy(1000, 0, n_feedback=0))
    assert decide(r, Thresholds(require_feedback=True)).action == "wait"
    relaxed = decide(r, Thresholds(require_feedback=False))
    assert relaxed.action == "promote"
    assert {c.name: c.verdict for c in relaxed.checks}["feedback_iou"] == "skipped"


def test_a_canary_still_serving_another_version_is_not_promoted() -> None:
    r = readout(healthy(4000, 0), healthy(1000, 0, iou=0.9), serving=(1,))
    decision = decide(r, Thresholds())
    assert decision.action == "wait"
    assert "canary serves version 1, not candidate 2 yet" in decision.reasons[0]


@pytest.mark.parametrize(("production", "candidate", "reason"), [
    (1, None, "no candidate version"),
    (None, 2, "no production version"),
    (2, 2, "already production"),
])
def test_stages_alone_can_mean_there_is_nothing_to_decide(
        production: int | None, candidate: int | None, reason: str) -> None:
    decision = precheck(production, candidate)
    assert isinstance(decision, Decision)
    assert decision.action == "wait"
    assert reason in decision.reasons[0]
    assert precheck(1, 2) == (1, 2)


def test_fisher_p_value_is_small_only_when_the_canary_really_errs_more() -> None:
    assert proportion_difference(80, 1000, 20, 4000, 0.05).p_value < 1e-6
    assert proportion_difference(4, 1000, 20, 4000, 0.05).p_value > 0.5
