"""Settings of the inference API: the job settings plus serving, batching, cache and limits.

Built once in `python -m services.inference` (or by a test) and passed to `create_app`; every
field reads `MASKFLEET_<FIELD>` from the environment.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from services.jobs.settings import JobSettings
from shared.imaging import DEFAULT_MAX_PIXELS

Role = Literal["stable", "canary"]

PRODUCTION_MAX_BODY_BYTES = 64 * 1024 * 1024
PRODUCTION_MAX_REDIS_TIMEOUT_MS = 1000.0
PRODUCTION_MIN_POLL_SECONDS = 1.0


class InferenceSettings(JobSettings):
    """Everything `create_app` needs beyond the shared and the job settings (the API accepts,
    reads and cancels jobs, so it enforces the same job limits as the worker)."""

    host: str = "0.0.0.0"
    """Interface uvicorn binds; 0.0.0.0 so the pod IP answers probes and traffic."""

    port: int = Field(default=8080, ge=1, le=65535)
    """HTTP port for /v1, /v2, probes and /metrics."""

    batch_max_size: int = Field(default=16, ge=1, le=256)
    """Most images per model call; 8-32 is where this CPU reaches its ceiling."""

    batch_max_wait_ms: float = Field(default=5.0, ge=0.0, le=10_000.0)
    """How long the first image of a batch waits for company; latency paid for throughput."""

    codec_threads: int = Field(default=2, ge=1, le=32)
    """Threads decoding images and encoding PNG masks beside the single model thread."""

    stage_poll_seconds: float = Field(default=10.0, ge=0.0)
    """How often the followed stage is re-read; 0 disables polling (a new version needs a
    restart). Ignored when a version is pinned."""

    cache_enabled: bool = True
    """Use the Redis result cache; off means every request runs the model."""

    cache_ttl_seconds: int = Field(default=3600, ge=1, le=30 * 24 * 3600)
    """Lifetime of a cached mask; the key already changes with the model version."""

    cache_max_value_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Masks whose cached record is larger are not cached, so one huge image cannot evict
    thousands of normal ones."""

    redis_socket_timeout_ms: float = Field(default=50.0, gt=0.0)
    """Per-command Redis timeout; a slow Redis must not slow the API down."""

    redis_connect_timeout_ms: float = Field(default=50.0, gt=0.0)
    """Redis connect timeout, short for the same reason."""

    cache_retry_seconds: float = Field(default=1.0, ge=0.0, le=300.0)
    """After a Redis error the cache is bypassed for this long, so a dead Redis costs one
    timeout per interval instead of one per request."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 beyond)."""

    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Largest width x height accepted before decoding (decompression-bomb guard, 413)."""

    max_images_per_request: int = Field(default=64, ge=1, le=1024)
    """Most images in one Open Inference Protocol v2 request."""

    path_prefixes: tuple[str, ...] = ("/model-a", "/model-b")
    """Leading path segments stripped before routing: the chart's Ingress fans out by
    `/model-a` and `/model-b`, and networking.k8s.io/v1 cannot rewrite paths by itself."""

    role: Role = "stable"
    """`stable` or `canary`: a metrics label telling the two Deployments of an A/B test apart."""

    shutdown_timeout_seconds: float = Field(default=30.0, gt=0.0)
    """On SIGTERM, how long in-flight requests may take to finish before uvicorn gives up;
    keep it below the pod's terminationGracePeriodSeconds."""

    feedback_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of /v1/segment answers kept (image, served mask, version) so that they can receive
    a correction through /v1/feedback; 0 keeps none (every feedback is then a 404)."""

    feedback_ttl_seconds: int = Field(default=86400, ge=1, le=30 * 24 * 3600)
    """How long a kept answer can receive its correction."""

    feedback_max_entries: int = Field(default=1000, ge=1)
    """Most answers kept at once, the oldest dropped first: with max_entry_bytes it bounds the
    Redis memory feedback uses. At R answers/s it also caps the time to correct at
    max_entries / (R x sample_rate) seconds."""

    feedback_max_entry_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Answers whose image plus mask are larger are not kept (their feedback gets a 404)."""

    feedback_uri: str = "./var/data/feedback"
    """Where corrected pairs are stored, in the dataset layout: `<dataset>/feedback`, the
    prefix the retraining loader reads (the default is that of `make run`'s `./var/data`)."""

    @model_validator(mode="after")
    def _refuse_unsafe_serving_values(self) -> Self:
        if self.environment != "production":
            return self
        problems = []
        if self.max_pixels > DEFAULT_MAX_PIXELS:
            problems.append(f"max_pixels above {DEFAULT_MAX_PIXELS} weakens the bomb guard")
        if self.max_body_bytes > PRODUCTION_MAX_BODY_BYTES:
            problems.append(f"max_body_bytes above {PRODUCTION_MAX_BODY_BYTES}")
        slowest = max(self.redis_socket_timeout_ms, self.redis_connect_timeout_ms)
        if slowest > PRODUCTION_MAX_REDIS_TIMEOUT_MS:
            problems.append("Redis timeouts above 1 s let a slow cache stall requests")
        if 0 < self.stage_poll_seconds < PRODUCTION_MIN_POLL_SECONDS:
            problems.append("stage_poll_seconds below 1 s hammers the model repository")
        if problems:
            raise ValueError("unsafe in production: " + "; ".join(problems))
        return self
