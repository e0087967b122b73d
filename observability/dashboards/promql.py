"""PromQL fragments shared by every dashboard.

Written once so that all panels filter, aggregate and attach the A/B role the same way;
a panel that forgot the namespace filter would silently mix releases.
"""

from __future__ import annotations

RATE = "$__rate_interval"
NAMESPACE = 'namespace=~"$namespace"'
# Routes that run the model; probes and /metrics scrapes would skew latency and A/B traffic.
PREDICT_ROUTES = 'route=~"/v1/segment|/v2/models/.+/infer"'
SERVER_ERRORS = 'status=~"5.."'


def selector(metric: str, *matchers: str) -> str:
    """`metric{namespace=~"$namespace", ...}`."""
    return f"{metric}{{{', '.join((NAMESPACE, *matchers))}}}"


def rate(metric: str, *matchers: str, window: str = RATE) -> str:
    return f"rate({selector(metric, *matchers)}[{window}])"


def by(labels: tuple[str, ...]) -> str:
    return f" by ({', '.join(labels)})" if labels else ""


def sum_rate(metric: str, *matchers: str, labels: tuple[str, ...] = (),
             window: str = RATE) -> str:
    return f"sum{by(labels)} ({rate(metric, *matchers, window=window)})"


def with_role(expr: str) -> str:
    """Attach the `role` (stable/canary) of the API process that exported each series.

    Only `maskfleet_model_ready` carries the role, and it exists from process start, so
    joining on the scrape target (job, instance) labels every API series, even the 503s of a
    pod still loading its model. `group` yields 1, so values pass through unchanged.
    """
    ready = selector("maskfleet_model_ready")
    return (f"({expr}) * on (job, instance) group_left (role) "
            f"group by (job, instance, role) ({ready})")


def quantile(q: float, histogram: str, *matchers: str, labels: tuple[str, ...] = (),
             role: bool = False, window: str = RATE) -> str:
    """`histogram_quantile` over a `_bucket` rate, optionally split by A/B role."""
    buckets = rate(f"{histogram}_bucket", *matchers, window=window)
    if role:
        buckets = with_role(buckets)
    return f"histogram_quantile({q}, sum by ({', '.join(('le', *labels))}) ({buckets}))"


def mean(histogram: str, *matchers: str, labels: tuple[str, ...] = (),
         window: str = RATE) -> str:
    """Average observation of a histogram over the window (sum / count)."""
    total = sum_rate(f"{histogram}_sum", *matchers, labels=labels, window=window)
    count = sum_rate(f"{histogram}_count", *matchers, labels=labels, window=window)
    return f"{total}\n/\n{count}"


def ratio(numerator: str, denominator: str) -> str:
    return f"(\n{numerator}\n)\n/\n(\n{denominator}\n)"
