"""Settings of the batch worker: the job settings plus broker, metrics and image limits.

Built once where the worker starts (`services.worker.app`) and passed down; every field reads
`MASKFLEET_<FIELD>` from the environment.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from services.jobs.settings import JobSettings
from shared.imaging import DEFAULT_MAX_PIXELS

PRODUCTION_MIN_VISIBILITY_SECONDS = 60


class WorkerSettings(JobSettings):
    """Everything a worker process needs beyond the shared and the job settings."""

    visibility_timeout_seconds: int = Field(default=3600, ge=1)
    """Seconds before an unacknowledged chunk is handed to another worker. A worker killed
    mid-chunk loses nothing but this delay; keep it above the slowest chunk, or a chunk that
    is still running gets a (harmless, wasted) second run."""

    worker_metrics_port: int = Field(default=9808, ge=0, le=65535)
    """Port of the worker's Prometheus /metrics; 0 turns the endpoint off."""

    worker_heartbeat_file: str | None = None
    """File the Celery consumer loop touches every `worker_heartbeat_seconds`; the liveness
    probe (`python -m services.worker.liveness`) fails when it goes stale. Unset: no beats."""

    worker_heartbeat_seconds: float = Field(default=10.0, gt=0.0, le=300.0)
    """Interval between heartbeats while the consumer loop turns."""

    model_batch_size: int = Field(default=16, ge=1, le=256)
    """Images per model call inside a chunk; 8-32 is where this CPU reaches its ceiling."""

    io_threads: int = Field(default=8, ge=1, le=64)
    """Threads reading images and writing masks in GCS, so storage latency overlaps the model."""

    local_io_threads: int = Field(default=0, ge=0, le=64)
    """Threads for a chunk whose images and masks are all local files; 0: one per core the
    worker may use (`cpu_limit`). More only contend with the model's thread for the GIL."""

    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Largest width x height decoded; a larger image is a per-item error (bomb guard)."""

    max_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """Largest image object segmented; a larger one is a per-item error."""

    @model_validator(mode="after")
    def _refuse_unsafe_worker_values(self) -> Self:
        if self.environment == "production" and (
            self.visibility_timeout_seconds < PRODUCTION_MIN_VISIBILITY_SECONDS
        ):
            raise ValueError("visibility_timeout_seconds below 60 s re-runs chunks that are "
                             "still running")
        if problems := self.state_redis_problems():
            raise ValueError("unsafe in production: " + "; ".join(problems))
        return self
