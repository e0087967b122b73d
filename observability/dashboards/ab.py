"""A/B: stable against canary, side by side, on the numbers a promote/rollback rests on.

Serving numbers (traffic, latency, errors) are split by role through the `maskfleet_model_ready`
join; live quality is per model version, because feedback may reach a different pod (even a
different role) than the one that served the mask, and only the version travels with it.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard, Row

from observability.dashboards import promql as q
from observability.dashboards.panels import bars, base, graph, listing, query, single

UID = "maskfleet-ab"

REQUESTS = "maskfleet_http_requests_total"
DURATION = "maskfleet_http_request_duration_seconds"
FEEDBACK_IOU = "maskfleet_feedback_iou"
QUALITY_WINDOW = "1h"  # feedback is sparse: average it over a longer window than traffic
RANGE = "$__range"


def by_role(metric: str, *matchers: str, labels: tuple[str, ...] = ("role", "version"),
            fn: str = "rate", window: str = q.RATE) -> str:
    series = f"{fn}({q.selector(metric, *matchers)}[{window}])"
    return f"sum by ({', '.join(labels)}) ({q.with_role(series)})"


def share_by_role() -> str:
    per_role = by_role(REQUESTS, q.PREDICT_ROUTES, labels=("role",))
    total = f"sum ({q.with_role(q.rate(REQUESTS, q.PREDICT_ROUTES))})"
    return f"{per_role}\n/ ignoring (role) group_left ()\n{total}"


def ratio_by_role(status: str) -> str:
    return q.ratio(by_role(REQUESTS, status), by_role(REQUESTS))


def eval_metrics() -> str:
    """Evaluation metrics of the version each role serves (each pod exports its own)."""
    metrics = q.with_role(q.selector("maskfleet_model_eval_metric"))
    return f"max by (role, version, metric) ({metrics})"


def feedback_quantile(p: float) -> str:
    return q.quantile(p, FEEDBACK_IOU, labels=("version",), window=QUALITY_WINDOW)


def build() -> Dashboard:
    per_version = "{{role}} v{{version}}"
    return (
        base(UID, "maskfleet / A/B stable vs canary",
             "Stable against canary: traffic share, latency, errors, offline evaluation and live "
             "feedback quality per model version.", ["inference", "ab-test"],
             "maskfleet_model_ready")
        .with_row(Row("Who serves what"))
        .with_panel(listing(
            "Versions by role", "Model version and stage each role serves, and on how many pods.",
            query(f'count by (role, model, version, stage) ({q.selector("maskfleet_model_info")})',
                  instant=True), height=6))
        .with_panel(single(
            "Traffic share", "Share of prediction requests answered by each role.",
            "percentunit", query(share_by_role(), "{{role}}"), width=6, height=6, decimals=1))
        .with_panel(single(
            "Requests in range", "Prediction requests each role answered in the selected range: "
            "the sample behind every comparison below.", "short",
            query(by_role(REQUESTS, q.PREDICT_ROUTES, labels=("role",), fn="increase",
                          window=RANGE), "{{role}}"), width=6, height=6, decimals=0))
        .with_row(Row("Traffic"))
        .with_panel(graph(
            "Traffic share by role", "Share of prediction requests per role (the weighted split "
            "of the HTTPRoute plus the /model-a and /model-b paths).", "percentunit",
            query(share_by_role(), "{{role}}"), stacked=True, minimum=0, maximum=1))
        .with_panel(graph(
            "Requests by role and version", "Prediction requests per second.", "reqps",
            query(by_role(REQUESTS, q.PREDICT_ROUTES), per_version)))
        .with_row(Row("Latency"))
        .with_panel(graph(
            "Latency p95 by role", "95th percentile prediction latency.", "s",
            query(q.quantile(0.95, DURATION, q.PREDICT_ROUTES, labels=("role", "version"),
                             role=True), per_version)))
        .with_panel(graph(
            "Latency p99 by role", "99th percentile prediction latency.", "s",
            query(q.quantile(0.99, DURATION, q.PREDICT_ROUTES, labels=("role", "version"),
                             role=True), per_version)))
        .with_row(Row("Errors"))
        .with_panel(graph(
            "5xx ratio by role", "Server errors as a share of the role's responses.",
            "percentunit", query(ratio_by_role(q.SERVER_ERRORS), per_version), minimum=0))
        .with_panel(graph(
            "4xx ratio by role", "Rejected requests as a share of the role's responses; a jump "
            "on one side only points at the model version, not at the clients.", "percentunit",
            query(ratio_by_role('status=~"4.."'), per_version), minimum=0))
        .with_row(Row("Model quality"))
        .with_panel(bars(
            "Evaluation metrics", "Held-out metrics from each served version's metadata.json, "
            "measured when it was trained.", "percentunit",
            query(eval_metrics(), "{{role}} v{{version}} {{metric}}"), minimum=0, maximum=1))
        .with_panel(bars(
            "Feedback received in range", "Corrected masks per version in the selected range: "
            "the sample size behind the IoU comparison.", "short",
            query(f"sum by (version) (increase("
                  f'{q.selector("maskfleet_feedback_total")}[{RANGE}]))', "v{{version}}")))
        .with_panel(graph(
            "Feedback IoU by version", f"Mean IoU between served and user-corrected masks over "
            f"a moving {QUALITY_WINDOW} window.", "percentunit",
            query(q.mean(FEEDBACK_IOU, labels=("version",), window=QUALITY_WINDOW),
                  "v{{version}}"), minimum=0, maximum=1))
        .with_panel(graph(
            "Feedback IoU p10 by version", "10th percentile of feedback IoU: how bad the worst "
            "served masks are.", "percentunit",
            query(feedback_quantile(0.1), "v{{version}}"), minimum=0, maximum=1))
    )
