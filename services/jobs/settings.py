"""`JobSettings`: every batch-job setting, defined once for the API and the worker.

The API (which accepts, reads and cancels jobs) and the worker (which runs their chunks) both
enforce these limits, so they cannot be two copies that drift. Each process still builds one
settings object at its entry point: `InferenceSettings` and `WorkerSettings` inherit from this
class, and `services.jobs` receives that object (typed as `JobSettings`).
"""

from __future__ import annotations

import json
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

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

    job_input_prefixes: Annotated[tuple[str, ...], NoDecode] = ()
    """Where jobs may read (comma-separated URI prefixes, e.g. `gs://acme-uploads/batch`).
    None configured: every job is refused (403 `input_not_allowed`); `make run` sets
    `./var/jobs/in`. Local folders count only outside production."""

    job_output_prefixes: Annotated[tuple[str, ...], NoDecode] = ()
    """Where jobs may write masks and manifests (comma-separated URI prefixes). Never honoured
    where it overlaps a protected prefix; `make run` sets `./var/jobs/out`."""

    job_overwrite_prefixes: Annotated[tuple[str, ...], NoDecode] = ()
    """Output prefixes under which a job may say `"overwrite": true`; elsewhere, and without
    it, a job's output folder must be empty."""

    job_protected_prefixes: Annotated[tuple[str, ...], NoDecode] = ()
    """Prefixes no job may write whatever the other settings say: the dataset (with its
    feedback pairs) and anything else precious. The model repository is always protected; the
    API also protects its feedback prefix and the dataset holding it."""

    @field_validator("job_input_prefixes", "job_output_prefixes", "job_overwrite_prefixes",
                     "job_protected_prefixes", mode="before")
    @classmethod
    def _split_prefixes(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _prefixes_are_specific(self) -> Self:
        for prefix in (*self.job_input_prefixes, *self.job_output_prefixes):
            bare = prefix.removeprefix("gs://").removeprefix("file://").strip("/")
            if not bare or bare == ".":
                raise ValueError(f"job prefix {prefix!r} would allow a whole scheme or the "
                                 "root folder; name a bucket or folder")
        return self

    job_lease_seconds: float = Field(default=30.0, ge=2.0, le=3600.0)
    """How long a chunk stays reserved for its worker without a heartbeat. A worker that dies
    gives its chunk back this long after its last heartbeat (plus one reaper pass), whatever
    the hostname of its replacement."""

    job_heartbeat_seconds: float = Field(default=5.0, gt=0.0, le=600.0)
    """How often a running chunk renews its lease, and how often each worker's reaper looks
    for expired leases and interrupted submissions. At most a third of the lease, so two
    missed beats (a pause, a Redis blip) do not hand a live chunk to someone else."""

    job_max_attempts: int = Field(default=3, ge=1, le=100)
    """Runs of one chunk that may crash their worker before its unfinished images become
    `worker_crashed` per-item errors, so a poison image cannot be redelivered forever."""

    job_submit_grace_seconds: float = Field(default=60.0, ge=1.0)
    """A job still `queued` without all of its chunk messages sent this long after submission
    was cut short (its caller got a 503): the reaper fails it and releases its output."""

    @model_validator(mode="after")
    def _chunk_size_fits_the_maximum(self) -> Self:
        if self.job_chunk_size > self.job_max_chunk_size:
            raise ValueError("job_chunk_size is larger than job_max_chunk_size")
        if self.job_heartbeat_seconds * 3 > self.job_lease_seconds:
            raise ValueError("job_heartbeat_seconds must be at most a third of "
                             "job_lease_seconds")
        return self

    def state_redis_problems(self) -> list[str]:
        """What production refuses about the state Redis (each process adds it to its own
        list of unsafe values)."""
        if self.environment == "production" and self.state_redis().password is None:
            return ["the state Redis (jobs, queue, kept answers) has no password; set "
                    "state_redis_password"]
        return []
