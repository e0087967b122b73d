"""The API's Prometheus metrics (names as in docs/interfaces.md), one registry per app.

A registry per app rather than the process-global one lets tests build several apps in one
process, and keeps /metrics free of anything we did not define on purpose.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics_server import serve_metrics

HTTP_LABELS = ("route", "method", "status", "version", "variant", "protocol")
"""`protocol` is `http` (REST) or `grpc`: gRPC calls are counted in the same series, with the
full method name as `route`, `POST` as method and the HTTP status of the same error as
`status` (`grpc_v2.status` maps them), so error-rate alerts and the rollout readout see both
transports alike."""
MODEL_LABELS = ("version", "variant")
"""Every model-side series says which version and which runtime build (`savedmodel`, `int8`...)
answered, so an A/B comparison never mixes a quantized build with the reference."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
IOU_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class ApiMetrics:
    """Every metric the inference API exports; components receive this object, not globals."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "maskfleet_http_requests", "Requests (REST and gRPC) by route template, method, "
            "status, model version, variant and protocol", HTTP_LABELS, registry=r)
        self.http_duration = Histogram(
            "maskfleet_http_request_duration_seconds", "Request latency, REST and gRPC "
            "(server side)",
            HTTP_LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.http_in_flight = Gauge(
            "maskfleet_http_requests_in_flight", "Requests being processed (scrapes excluded)",
            registry=r)
        self.batch_size = Histogram(
            "maskfleet_batch_size", "Images per model call", MODEL_LABELS,
            buckets=BATCH_BUCKETS, registry=r)
        self.batch_queue = Histogram(
            "maskfleet_batch_queue_seconds", "Time an image waited for its batch",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS, registry=r)
        self.model_inference = Histogram(
            "maskfleet_model_inference_seconds", "Duration of one model call", MODEL_LABELS,
            buckets=LATENCY_BUCKETS, registry=r)
        self.cache_hits = Counter("maskfleet_cache_hits", "Result cache hits", registry=r)
        self.cache_misses = Counter(
            "maskfleet_cache_misses", "Requests not answered from the cache (including while "
            "Redis is bypassed after an error)", registry=r)
        self.cache_errors = Counter(
            "maskfleet_cache_errors", "Redis errors and timeouts of the result cache", registry=r)
        self.model_info = Gauge(
            "maskfleet_model_info", "1 for the model version being served",
            ["model", "version", "variant", "stage", "role"], registry=r)
        self.model_ready = Gauge(
            "maskfleet_model_ready", "1 once a model version is loaded and warm",
            ["model", "role"], registry=r)
        self.model_load_seconds = Gauge(
            "maskfleet_model_load_seconds", "Time to download, load and warm up a version",
            ["model", "version", "variant"], registry=r)
        self.model_swaps = Counter(
            "maskfleet_model_swaps", "Hot swaps to a new version after a stage change",
            ["model"], registry=r)
        self.model_eval_metric = Gauge(
            "maskfleet_model_eval_metric", "Evaluation metrics of the served version "
            "(from its metadata.json; a variant's own held-out figures)",
            ["model", "version", "variant", "metric"], registry=r)
        self.feedback = Counter(
            "maskfleet_feedback", "Corrected masks received", MODEL_LABELS, registry=r)
        self.feedback_iou = Histogram(
            "maskfleet_feedback_iou", "IoU of the served mask against the corrected one",
            MODEL_LABELS, buckets=IOU_BUCKETS, registry=r)
        self.requests_shed = Counter(
            "maskfleet_requests_shed", "Requests refused with 503 because a bounded queue or "
            "the pixel or body budget was full", ["reason"], registry=r)
        self.body_bytes_in_flight = Gauge(
            "maskfleet_body_bytes_in_flight", "Bytes of request bodies and gRPC messages held, "
            "or reserved for messages being read (bounded by max_body_bytes_in_flight)",
            registry=r)
        self.deadline_exceeded = Counter(
            "maskfleet_deadline_exceeded", "Requests answered 504: their deadline passed "
            "before their work finished", registry=r)
        self.work_dropped = Counter(
            "maskfleet_work_dropped", "Queued work dropped before it ran, by stage (codec, "
            "model) and reason (deadline, disconnected)", ["stage", "reason"], registry=r)
        self.queue_depth = Gauge(
            "maskfleet_queue_depth", "Work waiting: images for the model (batch), jobs for "
            "the codec threads (codec)", ["queue"], registry=r)
        self.pixels_in_flight = Gauge(
            "maskfleet_pixels_in_flight", "Pixels of the requests being decoded, segmented or "
            "encoded (bounded by max_inflight_pixels)", registry=r)
        self.jobs_submitted = Counter(
            "maskfleet_jobs_submitted", "Batch jobs submitted", registry=r)


class MetricsServer:
    """/metrics on its own port (`shared.metrics_server`: bounded threads and timeouts), off
    the API's port so the Ingress never exposes it and scrapes never queue behind inference
    requests."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None

    def start(self) -> None:
        if self._port and self._server is None:
            self._server = serve_metrics(self._registry, self._host, self._port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
