"""Chunk manifests and the job manifest (JSON lines, one per input).

Lines are serialised from a fixed model in a fixed order, so a redelivered chunk rewrites
byte-identical manifests. The job manifest is the chunk manifests concatenated in chunk order,
so every input appears exactly once, in the job's input order.

They live under the job's output, which the caller can change under a running job: every
write goes through `write_under` (never through a symlink swapped in there), and every read
is of a regular file inside the output, of a size bounded by the job's image count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel

from services.jobs.confinement import read_check, write_under
from services.jobs.records import JobPlan
from shared.errors import InvalidJob, ObjectNotFound, OutsideFolder, StorageNotAllowed
from shared.storage import Storage, join, storage_for

MANIFEST = "manifest.jsonl"
CHUNK_FOLDER = "_manifests"
PLAN_FILE = "job.json"
MAX_LINE_BYTES = 64 * 1024
"""Most bytes one manifest line (or plan entry) may take: two URIs of at most 2048 characters
and an error detail of at most 1024, escaped, with room to spare. Bounds manifest reads."""


def max_bytes(lines: int) -> int:
    """Largest manifest (or plan file) of `lines` lines that is read at all."""
    return (lines + 1) * MAX_LINE_BYTES


def read_output(output: str, uri: str, limit: int,
                storage: Callable[[str], Storage] = storage_for) -> bytes:
    """A manifest or plan file under the job's `output`: a regular file really inside it (no
    symlink out of it), of at most `limit` bytes."""
    def refuse(where: str) -> StorageNotAllowed:
        return OutsideFolder(f"{uri} leads to {where}, outside the job's output; not read")

    return storage(uri).read_checked(uri, limit, read_check((output,), refuse))


class ErrorEntry(BaseModel):
    code: str
    detail: str


class ManifestLine(BaseModel):
    input: str
    output: str | None
    """The mask URI; None when the image could not be segmented."""
    model: str
    model_version: int
    width: int | None = None
    height: int | None = None
    class_fractions: dict[str, float] | None = None
    error: ErrorEntry | None = None


def chunk_manifest_uri(output: str, index: int) -> str:
    return join(output, CHUNK_FOLDER, f"chunk-{index}.jsonl")


def job_manifest_uri(output: str) -> str:
    return join(output, MANIFEST)


def plan_uri(output: str) -> str:
    return join(output, CHUNK_FOLDER, PLAN_FILE)


class PlanFile(BaseModel):
    """`<output>/_manifests/job.json`: the plan and the job's full input list, in order.

    The input list lives here, in storage, not in Redis: a 100k-image job would otherwise
    take megabytes of the state Redis, which must never fill up. Workers read it once per job.
    """

    plan: JobPlan
    inputs: list[str]


def write_plan(plan: JobPlan, inputs: list[str],
               storage: Callable[[str], Storage] = storage_for) -> str:
    uri = plan_uri(plan.output)
    data = PlanFile(plan=plan, inputs=inputs).model_dump_json().encode()
    try:
        write_under(storage(uri), plan.output, uri, data, "application/json")
    except OutsideFolder as exc:  # swapped for a link since it was resolved: refuse the job
        raise InvalidJob(f"cannot write to output {plan.output}: {exc.detail}") from exc
    return uri


def read_plan_inputs(plan: JobPlan, storage: Callable[[str], Storage] = storage_for) -> list[str]:
    """The job's inputs; refuses a plan file that another job has overwritten since."""
    uri = plan_uri(plan.output)
    try:
        found = PlanFile.model_validate_json(
            read_output(plan.output, uri, max_bytes(plan.images), storage))
    except ObjectNotFound as exc:
        raise InvalidJob(f"the plan file {uri} is missing") from exc
    if found.plan.id != plan.id or len(found.inputs) != plan.images:
        raise InvalidJob(f"the plan file {uri} belongs to another job (was the output "
                         "overwritten?)")
    return found.inputs


def encode(lines: Iterable[ManifestLine]) -> bytes:
    return b"".join(line.model_dump_json().encode() + b"\n" for line in lines)


def decode(data: bytes) -> list[ManifestLine]:
    return [ManifestLine.model_validate_json(raw) for raw in data.splitlines() if raw.strip()]


def write_chunk_manifest(plan: JobPlan, index: int, lines: list[ManifestLine],
                         storage: Callable[[str], Storage] = storage_for) -> str:
    uri = chunk_manifest_uri(plan.output, index)
    write_under(storage(uri), plan.output, uri, encode(lines), "application/jsonl")
    return uri


def assemble(plan: JobPlan, storage: Callable[[str], Storage] = storage_for) -> str:
    """Concatenate every chunk manifest into the job manifest; refuse a short or missing one."""
    parts = []
    for index in range(plan.chunks):
        uri = chunk_manifest_uri(plan.output, index)
        start, stop = plan.chunk_bounds(index)
        try:
            data = read_output(plan.output, uri, max_bytes(stop - start), storage)
        except ObjectNotFound as exc:
            raise InvalidJob(f"chunk manifest {uri} is missing") from exc
        found = sum(1 for raw in data.splitlines() if raw.strip())
        if found != stop - start:
            raise InvalidJob(f"chunk manifest {uri} has {found} lines, expected {stop - start}"
                             " (was the output overwritten by another job?)")
        parts.append(data)
    target = job_manifest_uri(plan.output)
    write_under(storage(target), plan.output, target, b"".join(parts), "application/jsonl")
    return target
