"""Settings of the batch worker: the shared base plus broker, metrics and chunking limits.

Built once where the worker starts (`services.worker.app`) and passed down; every field reads
`MASKFLEET_<FIELD>` from the environment.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from services.worker.jobs.limits import JobLimits
from shared.imaging import DEFAULT_MAX_PIXELS
from shared.settings import ServiceSettings

PRODUCTION_MIN_VISIBILITY_SECONDS = 60


class WorkerSettings(ServiceSettings):
    """Everything a worker process needs beyond the shared model/Redis/logging settings."""

    visibility_timeout_seconds: int = Field(default=3600, ge=1)
    """Seconds before an unacknowledged chunk is handed to another worker. A worker killed
    mid-chunk loses nothing but this delay; keep it above the slowest chunk, or a chunk that
    is still running gets a (harmless, wasted) second run."""

    worker_metrics_port: int = Field(default=9808, ge=0, le=65535)
    """Port of the worker's Prometheus /metrics; 0 turns the endpoint off."""

    model_batch_size: int = Field(default=16, ge=1, le=256)
    """Images per model call inside a chunk; 8-32 is where this CPU reaches its ceiling."""

    io_threads: int = Field(default=8, ge=1, le=64)
    """Threads reading images and writing masks, so storage latency overlaps the model."""

    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Largest width x height decoded; a larger image is a per-item error (bomb guard)."""

    max_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """Largest image object segmented; a larger one is a per-item error."""

    job_chunk_size: int = Field(default=64, ge=1)
    """Images per chunk when a job does not say; a chunk is the unit of redelivery."""

    job_max_chunk_size: int = Field(default=1000, ge=1)
    """Largest chunk size a job may ask for."""

    job_max_images: int = Field(default=100_000, ge=1)
    """Most images one job may name."""

    job_max_errors: int = Field(default=100, ge=0)
    """Per-item errors kept in the job record (all of them are in the manifest)."""

    job_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    """How long a finished job's record stays queryable in Redis."""

    @model_validator(mode="after")
    def _refuse_unsafe_worker_values(self) -> Self:
        if self.environment == "production" and (
            self.visibility_timeout_seconds < PRODUCTION_MIN_VISIBILITY_SECONDS
        ):
            raise ValueError("visibility_timeout_seconds below 60 s re-runs chunks that are "
                             "still running")
        if self.job_chunk_size > self.job_max_chunk_size:
            raise ValueError("job_chunk_size is larger than job_max_chunk_size")
        return self

    def job_limits(self) -> JobLimits:
        return JobLimits(
            default_chunk_size=self.job_chunk_size, max_chunk_size=self.job_max_chunk_size,
            max_images=self.job_max_images, max_errors=self.job_max_errors,
            ttl_seconds=self.job_ttl_seconds,
        )
