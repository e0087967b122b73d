"""`JobSettings`: every batch-job setting, defined once for the API and the worker.

The API (which accepts, reads and cancels jobs) and the worker (which runs their chunks) both
enforce these limits, so they cannot be two copies that drift. Each process still builds one
settings object at its entry point: `InferenceSettings` and `WorkerSettings` inherit from this
class, and `services.jobs` receives that object (typed as `JobSettings`).
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from shared.settings import ServiceSettings


class JobSettings(ServiceSettings):
    """Limits and lifetimes of batch jobs; every field reads `MASKFLEET_<FIELD>`."""

    job_chunk_size: int = Field(default=64, ge=1)
    """Images per chunk when a job does not say; a chunk is the unit of work and of
    redelivery, so a crash costs at most one chunk of work."""

    job_max_chunk_size: int = Field(default=1000, ge=1)
    """Largest chunk size a job may ask for (422 beyond): a bigger chunk costs more when it is
    redelivered and holds one worker longer."""

    job_max_images: int = Field(default=100_000, ge=1)
    """Most images one job may name (413 beyond); bounds the job's plan and its manifest."""

    job_max_errors: int = Field(default=100, ge=0)
    """Per-item errors kept in the job record, so the record stays small; the manifest lists
    every one of them."""

    job_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    """How long a finished job (succeeded, failed or cancelled) stays queryable before its
    record expires; applies to cancels made through the API as to jobs finished by a worker."""

    @model_validator(mode="after")
    def _chunk_size_fits_the_maximum(self) -> Self:
        if self.job_chunk_size > self.job_max_chunk_size:
            raise ValueError("job_chunk_size is larger than job_max_chunk_size")
        return self
