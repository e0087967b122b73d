"""A finished job's items, one per input: what the web page lists and opens over its input.

Read from the job manifest (`manifest.jsonl`, written when the job succeeds), so they exist only
for succeeded jobs (409 before). The URIs come from the manifest the worker wrote, but they are
checked again before any byte is read: a mask must lie under the job's output prefix and, for
prefix jobs, an input under the input prefix, so a manifest edited in the bucket cannot turn
this into a reader of arbitrary objects. Local files are checked where they really are, on the
file opened (a symlink, or a folder swapped for one, cannot lead out: 403 `input_not_allowed`
for an input, 422 for a mask), must be regular files, and are refused above `max_bytes` (413)
before they are read; on GCS no more than `max_bytes + 1` bytes are downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from services.jobs import manifest
from services.jobs.confinement import InputNotAllowed, StoragePolicy, every, read_check
from services.jobs.manifest import ErrorEntry, ManifestLine
from services.jobs.records import JobState, JobStatus
from shared.errors import InvalidJob, JobNotFinished, MaskfleetError, NotFound, PayloadTooLarge
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
    return manifest.decode(manifest.read_output(
        status.output, uri, manifest.max_bytes(status.totals.images), storage))


def items(status: JobStatus, offset: int, limit: int,
          storage: Callable[[str], Storage] = storage_for) -> JobItems:
    lines = _lines(status, storage)
    page = [JobItem(index=i, **line.model_dump(exclude={"model", "model_version"}))
            for i, line in enumerate(lines[offset:offset + limit], start=offset)]
    return JobItems(job_id=status.job_id, total=len(lines), offset=offset, items=page)


def _under(uri: str, prefix: str | None) -> bool:
    return prefix is not None and uri.startswith(prefix.rstrip("/") + "/") and ".." not in uri


def item_file(status: JobStatus, index: int, which: Which, max_bytes: int,
              storage: Callable[[str], Storage] = storage_for,
              policy: StoragePolicy | None = None) -> tuple[bytes, str]:
    """The bytes and content type of item `index`'s input image or output mask.

    Inputs are read only under the job's input folder (prefix jobs) and the allowed input
    prefixes of `policy`; a list job's inputs have no folder, so without `policy` they are
    refused (403) rather than read unchecked."""
    lines = _lines(status, storage)
    if not 0 <= index < len(lines):
        raise NotFound(f"job {status.job_id} has {len(lines)} items; no item {index}")
    line = lines[index]
    folders: tuple[str, ...]
    if which == "mask":
        if line.output is None:
            raise NotFound(f"item {index} has no mask: {line.error.detail if line.error else ''}")
        uri = line.output
        allowed = _under(uri, status.output)
        folders = (status.output,)
    else:
        uri = line.input
        allowed = status.input.kind == "list" or _under(uri, status.input.prefix)
        folders = (status.input.prefix,) if status.input.prefix else ()
    if not allowed:
        raise InvalidJob(f"the manifest's {which} URI for item {index} lies outside the job")
    suffix = uri[uri.rfind("."):].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    kind = CONTENT_TYPES.get(suffix)
    if kind is None:
        raise InvalidJob(f"item {index}'s {which} is not a JPEG or PNG file")
    try:
        data = storage(uri).read_checked(uri, max_bytes, _check(index, which, folders, policy))
    except PayloadTooLarge as exc:
        raise PayloadTooLarge(f"item {index}'s {which} is above {max_bytes} bytes") from exc
    return data, kind


def _check(index: int, which: Which, folders: tuple[str, ...],
           policy: StoragePolicy | None) -> Callable[[str], None]:
    """Where item `index`'s file may really be: a mask in the job's output; an input in its
    input folder (prefix jobs, which was under the rules at submission) and under the
    policy's input prefixes; nowhere for a list job's input without a policy."""
    def refuse(where: str) -> MaskfleetError:
        if which == "mask":
            return InvalidJob(f"item {index}'s mask leads outside the job's output")
        return InputNotAllowed(f"item {index}'s input leads outside the job's input folders")

    checks = [read_check((folder,), refuse) for folder in folders]
    if which == "input" and (policy is not None or not checks):
        checks.append(read_check(policy.inputs if policy else (), refuse))
    return every(checks)
