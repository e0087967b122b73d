"""Overview: is the inference API healthy right now, and where does a request's time go."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery

from observability.dashboards import promql as q
from observability.dashboards.panels import base, graph, listing, query, single

UID = "maskfleet-overview"

REQUESTS = "maskfleet_http_requests_total"
DURATION = "maskfleet_http_request_duration_seconds"

CACHE_HIT_RATIO = q.ratio(
    q.sum_rate("maskfleet_cache_hits_total"),
    f'{q.sum_rate("maskfleet_cache_hits_total")} + {q.sum_rate("maskfleet_cache_misses_total")}',
)
ERROR_RATIO = q.ratio(q.sum_rate(REQUESTS, q.SERVER_ERRORS), q.sum_rate(REQUESTS))
CLIENT_ERROR_RATIO = q.ratio(q.sum_rate(REQUESTS, 'status=~"4.."'), q.sum_rate(REQUESTS))


def _latency(histogram: str, *matchers: str) -> tuple[Dataquery, ...]:
    return tuple(
        query(q.quantile(p, histogram, *matchers), f"p{round(p * 100)}") for p in (0.5, 0.95, 0.99)
    )


def build() -> Dashboard:
    latency = _latency(DURATION, q.PREDICT_ROUTES)
    return (
        base(UID, "maskfleet / Overview",
             "Traffic, errors, latency, micro-batching and the result cache of the inference API.",
             ["inference"], "maskfleet_model_ready")
        .with_row(Row("Service level"))
        .with_panel(single(
            "Request rate", "Prediction requests per second (/v1/segment and v2 infer).", "reqps",
            query(q.sum_rate(REQUESTS, q.PREDICT_ROUTES), "req/s")))
        .with_panel(single(
            "5xx ratio", "Share of all API responses that were server errors.", "percentunit",
            query(ERROR_RATIO, "5xx"), thresholds=(0.01, 0.05), decimals=2))
        .with_panel(single(
            "Latency p95", "95th percentile of prediction request duration; objective 0.5 s.",
            "s", query(q.quantile(0.95, DURATION, q.PREDICT_ROUTES), "p95"),
            thresholds=(0.5, 1.0)))
        .with_panel(single(
            "Cache hit ratio", "Cache lookups answered from Redis without running the model.",
            "percentunit", query(CACHE_HIT_RATIO, "hit ratio"), decimals=1))
        .with_panel(single(
            "In flight", "Requests being handled right now, all API pods.", "short",
            query(f'sum({q.selector("maskfleet_http_requests_in_flight")})', "in flight")))
        .with_panel(single(
            "Models ready", "API pods whose model is loaded and warm, out of all API pods.",
            "short", query(f'sum({q.selector("maskfleet_model_ready")})', "ready"),
            query(f'count({q.selector("maskfleet_model_ready")})', "pods")))
        .with_row(Row("Traffic and errors"))
        .with_panel(graph(
            "Requests by route and status", "Every API response, by route template and status.",
            "reqps", query(q.sum_rate(REQUESTS, labels=("route", "status")),
                           "{{route}} {{status}}")))
        .with_panel(graph(
            "Error ratio", "Server (5xx) and client (4xx) errors as a share of all responses.",
            "percentunit", query(ERROR_RATIO, "5xx"), query(CLIENT_ERROR_RATIO, "4xx"),
            minimum=0))
        .with_row(Row("Latency"))
        .with_panel(graph(
            "Prediction latency", "Request duration percentiles of the prediction routes.", "s",
            *latency))
        .with_panel(graph(
            "Latency p95 by route", "95th percentile request duration of every route.", "s",
            query(q.quantile(0.95, DURATION, labels=("route",)), "{{route}}")))
        .with_row(Row("Micro-batching"))
        .with_panel(graph(
            "In flight by pod", "Concurrent requests per API pod: what the batcher can merge.",
            "short", query(f'sum by (instance) ({q.selector("maskfleet_http_requests_in_flight")})',
                           "{{instance}}"), width=6))
        .with_panel(graph(
            "Batch size", "Images per model call: mean and 95th percentile. 1 means no batching.",
            "short", query(q.mean("maskfleet_batch_size"), "mean"),
            query(q.quantile(0.95, "maskfleet_batch_size"), "p95"), width=6, minimum=0))
        .with_panel(graph(
            "Queue time", "Time an image waited for its batch to start.", "s",
            *_latency("maskfleet_batch_queue_seconds"), width=6))
        .with_panel(graph(
            "Model call time", "Duration of one batched model call.", "s",
            *_latency("maskfleet_model_inference_seconds"), width=6))
        .with_row(Row("Admission control"))
        .with_panel(graph(
            "Shed and expired", "Requests refused at once with 503 (by full queue or pixel "
            "budget), answered 504 (deadline passed), and queued work dropped before it ran "
            "(deadline, client gone).", "reqps",
            query(q.sum_rate("maskfleet_requests_shed_total", labels=("reason",)),
                  "shed: {{reason}}"),
            query(q.sum_rate("maskfleet_deadline_exceeded_total"), "504 deadline"),
            query(q.sum_rate("maskfleet_work_dropped_total", labels=("stage", "reason")),
                  "dropped: {{stage}} {{reason}}"), width=8, minimum=0))
        .with_panel(graph(
            "Queue depth", "Work waiting per pod: images for the model (bounded by "
            "batch_max_queue_images), jobs for the codec threads (codec_max_queue).", "short",
            query(f'max by (instance, queue) ({q.selector("maskfleet_queue_depth")})',
                  "{{instance}} {{queue}}"), width=8, minimum=0))
        .with_panel(graph(
            "Pixels in flight", "Pixels of the requests being served per pod: what bounds "
            "request memory (max_inflight_pixels).", "short",
            query(f'max by (instance) ({q.selector("maskfleet_pixels_in_flight")})',
                  "{{instance}}"), width=8, minimum=0))
        .with_row(Row("Result cache"))
        .with_panel(graph(
            "Cache hit ratio", "Share of cache lookups served from Redis.", "percentunit",
            query(CACHE_HIT_RATIO, "hit ratio"), minimum=0, maximum=1))
        .with_panel(graph(
            "Cache operations", "Hits, misses and Redis errors per second; errors mean requests "
            "are served uncached.", "ops",
            query(q.sum_rate("maskfleet_cache_hits_total"), "hits"),
            query(q.sum_rate("maskfleet_cache_misses_total"), "misses"),
            query(q.sum_rate("maskfleet_cache_errors_total"), "errors")))
        .with_row(Row("Model"))
        .with_panel(listing(
            "Served versions", "Which model version and stage each role serves, and on how "
            "many pods.",
            query(f'count by (model, version, stage, role) ({q.selector("maskfleet_model_info")})',
                  instant=True), width=8))
        .with_panel(graph(
            "Model load time", "Seconds to load and warm each version.", "s",
            query(f'max by (model, version) ({q.selector("maskfleet_model_load_seconds")})',
                  "{{model}} v{{version}}"), width=8))
        .with_panel(graph(
            "Model swaps", "Hot swaps to a new version (the stage moved).", "short",
            query(f'sum by (model) (increase({q.selector("maskfleet_model_swaps_total")}'
                  f"[{q.RATE}]))", "{{model}}"), width=8))
    )
