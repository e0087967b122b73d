"""A finished job's items, one per input: what the web page lists and opens over its input.

Read from the job manifest (`manifest.jsonl`, written when the job succeeds), so they exist only
for succeeded jobs (409 before). The URIs come from the manifest the worker wrote, but they are
checked again before any byte is read: a mask must lie under the job's output prefix and, for
prefix jobs, an input under the input prefix, so a manifest edited in the bucket cannot turn
this into a reader of arbitrary objects. Files are capped at `max_bytes` (413 beyond).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from services.jobs import manifest
from services.jobs.manifest import ErrorEntry, ManifestLine
from services.jobs.records import JobState, JobStatus
from shared.errors import InvalidJob, JobNotFinished, NotFound, PayloadTooLarge
from shared.storage import Storage, storage_for

Which = Literal["input", "mask"]
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class JobItem(BaseModel):
    index: int = Field(description="Position in the job's input order (0-based)")
    input: str
    output: str | None = Field(description="The mask's URI; null when the image failed")
    width: int | None = None
    height: int | None = None
    class_fractions: dict[str, float] | None = None
    error: ErrorEntry | None = None


class JobItems(BaseModel):
    """`GET /v1/jobs/{id}/items`: one page of a succeeded job's items."""

    job_id: str
    total: int
    offset: int
    items: list[JobItem]


def _lines(status: JobStatus, storage: Callable[[str], Storage]) -> list[ManifestLine]:
    if status.state != JobState.SUCCEEDED or not status.manifest:
        raise JobNotFinished(f"job {status.job_id} is {status.state}; its items can be read "
                             "once it has succeeded")
    uri = manifest.job_manifest_uri(status.output)
    return manifest.decode(storage(uri).read(uri))


def items(status: JobStatus, offset: int, limit: int,
          storage: Callable[[str], Storage] = storage_for) -> JobItems:
    lines = _lines(status, storage)
    page = [JobItem(index=i, **line.model_dump(exclude={"model", "model_version"}))
            for i, line in enumerate(lines[offset:offset + limit], start=offset)]
    return JobItems(job_id=status.job_id, total=len(lines), offset=offset, items=page)


def _under(uri: str, prefix: str | None) -> bool:
    return prefix is not None and uri.startswith(prefix.rstrip("/") + "/") and ".." not in uri


def item_file(status: JobStatus, index: int, which: Which, max_bytes: int,
              storage: Callable[[str], Storage] = storage_for) -> tuple[bytes, str]:
    """The bytes and content type of item `index`'s input image or output mask."""
    lines = _lines(status, storage)
    if not 0 <= index < len(lines):
        raise NotFound(f"job {status.job_id} has {len(lines)} items; no item {index}")
    line = lines[index]
    if which == "mask":
        if line.output is None:
            raise NotFound(f"item {index} has no mask: {line.error.detail if line.error else ''}")
        uri = line.output
        allowed = _under(uri, status.output)
    else:
        uri = line.input
        allowed = status.input.kind == "list" or _under(uri, status.input.prefix)
    if not allowed:
        raise InvalidJob(f"the manifest's {which} URI for item {index} lies outside the job")
    suffix = uri[uri.rfind("."):].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    kind = CONTENT_TYPES.get(suffix)
    if kind is None:
        raise InvalidJob(f"item {index}'s {which} is not a JPEG or PNG file")
    data = storage(uri).read(uri)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"item {index}'s {which} is {len(data)} bytes, above {max_bytes}")
    return data, kind
