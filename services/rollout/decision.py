"""Promote, roll back or wait: pure functions from a readout and thresholds to a decision.

Each check ends in one verdict:
  pass          the canary is, with confidence 1 - alpha, within tolerance
  fail          the canary is, with confidence 1 - alpha, outside tolerance
  inconclusive  enough data to look, not enough to tell
  insufficient  below the minimum sample, not looked at
  skipped       not required (feedback with require_feedback off)
Any fail rolls back; promotion needs every check to pass (or be skipped); anything else waits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from services.rollout.readout import Readout
from services.rollout.stats import histogram_variance, mean_difference, proportion_difference

Action = Literal["promote", "rollback", "wait"]
Verdict = Literal["pass", "fail", "inconclusive", "insufficient", "skipped"]


@dataclass(frozen=True)
class Thresholds:
    min_requests: int = 500
    max_error_ratio_increase: float = 0.01
    max_p95_ratio: float = 1.25
    min_feedback: int = 30
    min_iou_delta: float = -0.01
    require_feedback: bool = True
    alpha: float = 0.05


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    summary: str
    numbers: dict[str, float | int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    action: Action
    reasons: list[str]
    production: int | None
    candidate: int | None
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def precheck(production: int | None, candidate: int | None) -> Decision | tuple[int, int]:
    """A wait decided from the stages alone, or the (production, candidate) pair to compare."""
    if candidate is None:
        return Decision("wait", ["no candidate version: nothing to compare"], production, None)
    if production is None:
        return Decision("wait", [f"candidate {candidate} has no production version to be "
                                 "compared with"], None, candidate)
    if candidate == production:
        return Decision("wait", [f"candidate {candidate} is already production"],
                        production, candidate)
    return production, candidate


def check_errors(r: Readout, t: Thresholds) -> Check:
    s, c = r.stable, r.canary
    numbers: dict[str, float | int | None] = {
        "stable_requests": round(s.requests), "canary_requests": round(c.requests),
        "stable_errors": round(s.errors), "canary_errors": round(c.errors),
        "stable_ratio": s.error_ratio, "canary_ratio": c.error_ratio,
        "max_increase": t.max_error_ratio_increase}
    if min(s.requests, c.requests) < t.min_requests:
        return Check("errors", "insufficient", f"requests stable {s.requests:.0f}, canary "
                     f"{c.requests:.0f}; need {t.min_requests} each", numbers)
    diff = proportion_difference(c.errors, c.requests, s.errors, s.requests, t.alpha)
    numbers.update(increase=diff.estimate, increase_low=diff.low, increase_high=diff.high,
                   p_value_canary_worse=diff.p_value)
    level = f"{100 * (1 - t.alpha):g}%"
    text = (f"5xx ratio stable {s.error_ratio:.2%}, canary {c.error_ratio:.2%}; increase "
            f"{diff.estimate:+.2%} ({level} one-sided bounds {diff.low:+.2%}..{diff.high:+.2%}), "
            f"tolerance {t.max_error_ratio_increase:+.2%}; Fisher p={diff.p_value:.3g}")
    if diff.low > t.max_error_ratio_increase:
        return Check("errors", "fail", text, numbers)
    if diff.high <= t.max_error_ratio_increase:
        return Check("errors", "pass", text, numbers)
    return Check("errors", "inconclusive", text, numbers)


def check_latency(r: Readout, t: Thresholds) -> Check:
    s, c = r.stable, r.canary
    numbers: dict[str, float | int | None] = {
        "stable_p95_seconds": s.p95_seconds, "canary_p95_seconds": c.p95_seconds,
        "max_ratio": t.max_p95_ratio}
    if min(s.requests, c.requests) < t.min_requests:
        return Check("latency", "insufficient", f"requests stable {s.requests:.0f}, canary "
                     f"{c.requests:.0f}; need {t.min_requests} each", numbers)
    if not s.p95_seconds or c.p95_seconds is None:
        return Check("latency", "insufficient", "no p95 latency of successful requests on "
                     "both sides", numbers)
    ratio = c.p95_seconds / s.p95_seconds
    numbers["ratio"] = ratio
    text = (f"p95 stable {s.p95_seconds * 1000:.0f} ms, canary {c.p95_seconds * 1000:.0f} ms; "
            f"ratio {ratio:.2f}, max {t.max_p95_ratio:.2f}")
    return Check("latency", "fail" if ratio > t.max_p95_ratio else "pass", text, numbers)


def check_feedback(r: Readout, t: Thresholds) -> Check:
    s, c = r.stable, r.canary
    numbers: dict[str, float | int | None] = {
        "stable_count": round(s.feedback_count), "canary_count": round(c.feedback_count),
        "stable_mean_iou": s.feedback_mean, "canary_mean_iou": c.feedback_mean,
        "min_delta": t.min_iou_delta}
    if min(s.feedback_count, c.feedback_count) < t.min_feedback:
        verdict: Verdict = "insufficient" if t.require_feedback else "skipped"
        return Check("feedback_iou", verdict, f"feedback stable {s.feedback_count:.0f}, canary "
                     f"{c.feedback_count:.0f}; need {t.min_feedback} each", numbers)
    ms, mc = s.feedback_sum / s.feedback_count, c.feedback_sum / c.feedback_count
    vs = histogram_variance(s.feedback_buckets, s.feedback_count, ms)
    vc = histogram_variance(c.feedback_buckets, c.feedback_count, mc)
    diff = mean_difference(mc, vc, c.feedback_count, ms, vs, s.feedback_count, t.alpha)
    numbers.update(delta=diff.estimate, delta_low=diff.low, delta_high=diff.high,
                   p_value=diff.p_value)
    level = f"{100 * (1 - t.alpha):g}%"
    text = (f"mean IoU stable {ms:.3f} (n={s.feedback_count:.0f}), canary {mc:.3f} "
            f"(n={c.feedback_count:.0f}); delta {diff.estimate:+.3f} ({level} one-sided bounds "
            f"{diff.low:+.3f}..{diff.high:+.3f}), minimum {t.min_iou_delta:+.3f}; "
            f"Welch p={diff.p_value:.3g}")
    if diff.high < t.min_iou_delta:
        return Check("feedback_iou", "fail", text, numbers)
    if diff.low >= t.min_iou_delta:
        return Check("feedback_iou", "pass", text, numbers)
    return Check("feedback_iou", "inconclusive", text, numbers)


def check_serving(r: Readout) -> Check:
    """The canary must serve the candidate, or its traffic says nothing about it yet."""
    candidate = r.canary.version
    numbers: dict[str, float | int | None] = {"candidate": candidate}
    if not r.canary_serving:
        return Check("serving", "pass", "no maskfleet_model_info for role canary; comparing "
                     "by version label only", numbers)
    if candidate in r.canary_serving:
        return Check("serving", "pass", f"canary serves version {candidate}", numbers)
    served = ", ".join(str(v) for v in r.canary_serving)
    return Check("serving", "inconclusive", f"canary serves version {served}, not candidate "
                 f"{candidate} yet", numbers)


def decide(readout: Readout, thresholds: Thresholds) -> Decision:
    checks = [check_serving(readout), check_errors(readout, thresholds),
              check_latency(readout, thresholds), check_feedback(readout, thresholds)]
    production, candidate = readout.stable.version, readout.canary.version
    failed = [f"{c.name}: {c.summary}" for c in checks if c.verdict == "fail"]
    if failed:
        return Decision("rollback", failed, production, candidate, checks)
    open_ = [f"{c.name} {c.verdict}: {c.summary}" for c in checks
             if c.verdict not in ("pass", "skipped")]
    if open_:
        return Decision("wait", open_, production, candidate, checks)
    return Decision("promote", [f"every check passed for candidate {candidate}"],
                    production, candidate, checks)
