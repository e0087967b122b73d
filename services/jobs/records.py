"""What a job is on the wire and in Redis: the request, the plan, the status."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.settings import Stage


def now() -> datetime:
    return datetime.now(UTC)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


MAX_URI_CHARS = 2048
"""Longer than any GCS URI (object names are at most 1024 bytes) or sane local path."""
Uri = Annotated[str, Field(min_length=1, max_length=MAX_URI_CHARS)]


class JobRequest(BaseModel):
    """Body of `POST /v1/jobs`."""

    model_config = ConfigDict(extra="forbid")

    input: Uri | Annotated[list[Uri], Field(min_length=1)]
    """A URI prefix (treated as a folder) or an explicit list of image URIs."""

    output: Uri
    """URI prefix receiving `<name>.png` masks, `manifest.jsonl` and `_manifests/`."""

    model_version: int | None = Field(default=None, ge=1)
    """Pinned model version; wins over `model_stage`."""

    model_stage: Stage | None = None
    """Stage resolved once at submission; every chunk then uses that one version."""

    chunk_size: int | None = Field(default=None, ge=1)
    """Images per chunk (the unit of work and of redelivery)."""

    overwrite: bool = False
    """Allow writing into an output folder that already holds objects; only honoured under
    the configured overwrite prefixes (403 elsewhere)."""


class InputSummary(BaseModel):
    kind: Literal["prefix", "list"]
    prefix: str | None = None
    """The listed folder, for prefix jobs."""


class ModelRef(BaseModel):
    name: str
    version: int
    stage: str | None = None
    """The stage the version was resolved from, if it was not pinned."""


class JobPlan(BaseModel):
    """The immutable part of a job, fixed at submission."""

    id: str
    input: InputSummary
    output: str
    base: str | None
    """Folder that mask names are relative to (prefix jobs); None: the input's file name."""
    model: ModelRef
    chunk_size: int
    chunks: int
    images: int
    submitted_by: str = "anonymous"
    """Id of the API key (or gateway identity) that submitted the job; never the key."""
    overwrite: bool = False
    """The request allowed replacing existing masks (and the output prefix allows it)."""
    created_at: datetime = Field(default_factory=now)

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        """First and last+1 position of chunk `index` in the job's input list."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.images)


class ItemError(BaseModel):
    input: str
    code: str
    detail: str


class Totals(BaseModel):
    images: int
    done: int
    """Images processed so far, successfully or not."""
    failed: int
    """Processed images that became per-item errors."""


class ChunkTotals(BaseModel):
    total: int
    done: int


class JobStatus(BaseModel):
    """Body of `GET /v1/jobs/{id}` (and of the POST and DELETE answers)."""

    job_id: str
    state: JobState
    input: InputSummary
    output: str
    model: ModelRef
    chunk_size: int
    chunks: ChunkTotals
    totals: Totals
    errors: list[ItemError]
    """The first per-item errors (bounded); the manifest lists all of them."""
    manifest: str | None
    """URI of `manifest.jsonl`, once the job has succeeded."""
    error: str | None = None
    """Why the job failed, when it did."""
    submitted_by: str = "anonymous"
    """Id of the API key that submitted the job (only it, or an `admin` key, may see it)."""
    created_at: datetime
    updated_at: datetime
