"""What Prometheus says about the two versions over one window.

Every query is scoped to one release: `namespace` (the release's namespace) and `job` (its
two inference Services), so two releases scraped by one Prometheus never mix their evidence.
Both sides are told apart by the `version` label of the API's own metrics, not by pod or
Service: the stable and canary Deployments follow the `production` and `candidate` stages, so
the versions those stages name are exactly what is being compared, and requests served by an
older version during a reload do not pollute either side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from services.rollout.prometheus import PrometheusClient, Sample


@dataclass(frozen=True)
class Side:
    """Counts of one version over the window (increase() of counters, hence floats)."""

    version: int
    requests: float = 0.0
    errors: float = 0.0
    p95_seconds: float | None = None
    feedback_count: float = 0.0
    feedback_sum: float = 0.0
    feedback_buckets: tuple[tuple[float, float], ...] = ()
    """(upper bound `le`, cumulative count) of the feedback IoU histogram, ascending."""

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def feedback_mean(self) -> float | None:
        return self.feedback_sum / self.feedback_count if self.feedback_count > 0 else None


@dataclass(frozen=True)
class Readout:
    stable: Side
    canary: Side
    window: str
    evaluated_at: datetime
    canary_serving: tuple[int, ...] = ()
    """Versions that `maskfleet_model_info{role="canary"}` reports as served right now."""
    queries: dict[str, str] = field(default_factory=dict)


def _string(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def readout_queries(model: str, versions: tuple[int, int], window: str,
                    routes: str, *, namespace: str, jobs: str) -> dict[str, str]:
    """The PromQL of a readout, one query per quantity, each grouped by version."""
    v = _string("|".join(str(n) for n in versions))
    scope = f"namespace={_string(namespace)},job=~{_string(jobs)}"
    http = f"{scope},route=~{_string(routes)},version=~{v}"
    return {
        "requests": f"sum by (version) (increase(maskfleet_http_requests_total{{{http}}}"
                    f"[{window}]))",
        "errors": f'sum by (version) (increase(maskfleet_http_requests_total{{{http},'
                  f'status=~"5.."}}[{window}]))',
        "p95_seconds": f"histogram_quantile(0.95, sum by (version, le) (rate("
                       f'maskfleet_http_request_duration_seconds_bucket{{{http},status=~"2.."}}'
                       f"[{window}])))",
        "feedback_count": f"sum by (version) (increase(maskfleet_feedback_iou_count"
                          f"{{{scope},version=~{v}}}[{window}]))",
        "feedback_sum": f"sum by (version) (increase(maskfleet_feedback_iou_sum"
                        f"{{{scope},version=~{v}}}[{window}]))",
        "feedback_buckets": f"sum by (version, le) (increase(maskfleet_feedback_iou_bucket"
                            f"{{{scope},version=~{v}}}[{window}]))",
        "canary_serving": f"max by (version) (maskfleet_model_info{{{scope},"
                          f'model={_string(model)},role="canary"}})',
    }


def _by_version(samples: list[Sample]) -> dict[int, float]:
    found: dict[int, float] = {}
    for s in samples:
        version = s.labels.get("version", "")
        if version.isdigit():
            found[int(version)] = found.get(int(version), 0.0) + s.value
    return found


def _buckets(samples: list[Sample], version: int) -> tuple[tuple[float, float], ...]:
    rows = [(float(s.labels["le"]), s.value) for s in samples
            if s.labels.get("version") == str(version) and "le" in s.labels]
    return tuple(sorted(rows))


def read_readout(client: PrometheusClient, *, model: str, stable_version: int,
                 canary_version: int, window: str, routes: str, namespace: str, jobs: str,
                 at: datetime) -> Readout:
    queries = readout_queries(model, (stable_version, canary_version), window, routes,
                              namespace=namespace, jobs=jobs)
    results = {name: client.query(q, at) for name, q in queries.items()}
    scalars = {name: _by_version(results[name]) for name in
               ("requests", "errors", "p95_seconds", "feedback_count", "feedback_sum")}

    def side(version: int) -> Side:
        p95 = scalars["p95_seconds"].get(version)
        return Side(
            version=version,
            requests=scalars["requests"].get(version, 0.0),
            errors=scalars["errors"].get(version, 0.0),
            p95_seconds=p95 if p95 is not None and math.isfinite(p95) else None,
            feedback_count=scalars["feedback_count"].get(version, 0.0),
            feedback_sum=scalars["feedback_sum"].get(version, 0.0),
            feedback_buckets=_buckets(results["feedback_buckets"], version),
        )

    serving = tuple(sorted(v for v, up in _by_version(results["canary_serving"]).items() if up))
    return Readout(stable=side(stable_version), canary=side(canary_version), window=window,
                   evaluated_at=at, canary_serving=serving, queries=queries)
