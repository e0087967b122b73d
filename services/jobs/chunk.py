"""One chunk of a job: read its images, segment them in model batches, write masks + manifest.

Running a chunk twice is harmless: masks and the chunk manifest are rewritten with identical
bytes (same images, same pinned version, same pipeline) and the job's counts only move the
first time the chunk is recorded. Reading and decoding the next batch and encoding and writing
the previous one overlap the model call on the current one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Histogram

from services.jobs import manifest
from services.jobs.confinement import (
    InputNotAllowed,
    StoragePolicy,
    escapes,
    every,
    is_local,
    read_check,
    write_under,
)
from services.jobs.inputs import mask_uri
from services.jobs.leases import ChunkLeases, Heartbeat, Lease, Refused
from services.jobs.manifest import ErrorEntry, ManifestLine
from services.jobs.records import ItemError, JobPlan, JobState, now
from services.jobs.store import JobStore
from shared.errors import (
    InvalidImage,
    InvalidStorageUri,
    JobNotFound,
    MaskfleetError,
    ObjectNotFound,
    OutsideFolder,
    PayloadTooLarge,
    StorageNotAllowed,
)
from shared.imaging import DEFAULT_MAX_PIXELS
from shared.model.runtime import SegmentationModel
from shared.segmentation import Prepared, Segmentation, finish, prepare
from shared.storage import Storage, storage_for

log = logging.getLogger(__name__)

Status = Literal["succeeded", "skipped", "cancelled", "superseded"]
Written = tuple[ManifestLine, "Future[Segmentation | MaskfleetError] | None"]
"""A manifest line and the mask being finished and written for it (None: the item failed; an
error: the mask could not be written where it belongs)."""
ModelProvider = Callable[[str, int], SegmentationModel]


class ChunkMetrics(Protocol):
    """What the runner records; the worker's `WorkerMetrics` provides it."""

    chunks: Counter
    images: Counter
    chunk_duration: Histogram
    batch_size: Histogram


@dataclass(frozen=True)
class ChunkOutcome:
    job_id: str
    chunk: int
    status: Status
    images: int = 0
    failed: int = 0
    attempt: int = 0
    job_state: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EscapesOutput(MaskfleetError):
    status = 422
    code = "escapes_output"
    title = "The item's mask would land outside the job's output folder"


class InternalItemError(MaskfleetError):
    code = "internal_error"
    title = "The image could not be segmented"


class WorkerCrashed(MaskfleetError):
    code = "worker_crashed"
    title = "The worker died every time it segmented this image's chunk"


class LeaseLost(Exception):
    """Another attempt holds this chunk's lease now; this run's results must not count."""


@dataclass
class ChunkRunner:
    """Runs chunks against one job store; built once per worker process."""

    store: JobStore
    models: ModelProvider
    policy: StoragePolicy
    """The storage rules jobs were submitted under (`confinement.policy_from`, as the worker
    builds it from its own settings). Every image is read at most `max_image_bytes` at a time
    and only under the rules' input prefixes (and a prefix job's own input folder), checked on
    the file actually opened, so a symlink or a swapped folder cannot lead out; with no input
    prefixes nothing is read. Masks and manifests are confined to the job's output."""
    batch_size: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_bytes: int = 32 * 1024 * 1024
    io_threads: int = 8
    """Threads reading and writing a chunk's objects in remote storage (GCS): each read waits
    on the network, so several overlap the model."""
    local_io_threads: int = 2
    """Threads for a chunk whose images and masks are all local files (one per core is
    enough): a local read or write is a page-cache copy, and each thread beyond the cores only
    contends with the model's thread for the GIL (docs/batch.md)."""
    worker: str = "local"
    metrics: ChunkMetrics | None = None
    storage: Callable[[str], Storage] = storage_for
    leases: ChunkLeases | None = None
    """Built on the store's Redis with `lease_seconds` when not given."""
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    max_attempts: int = 3
    plans_kept: int = 4
    """Input lists (plan files) of this many jobs stay in memory, so a chunk does not re-read
    a 100k-image plan."""
    _plans: OrderedDict[str, list[str]] = field(default_factory=OrderedDict, repr=False)
    _plans_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.leases is None:
            self.leases = ChunkLeases(self.store.redis, lease_seconds=self.lease_seconds)

    @property
    def _leases(self) -> ChunkLeases:
        assert self.leases is not None
        return self.leases

    def run(self, job_id: str, index: int) -> ChunkOutcome:
        started = time.perf_counter()
        try:
            plan = self.store.plan(job_id)
        except JobNotFound:
            return self._skipped(job_id, index, "skipped", None)
        if not 0 <= index < plan.chunks:
            raise ValueError(f"job {job_id} has no chunk {index}")
        taken = self._leases.acquire(job_id, index, self.worker, now().isoformat())
        if isinstance(taken, Refused):
            if taken.reason == "recorded":
                # Redelivered after it was recorded: only make sure the job got finished.
                self._finish_if_complete(plan, self.store.chunks_done(job_id))
            return self._skipped(job_id, index, "skipped", self.store.state(job_id))
        lease = taken
        log.info("chunk started", extra={"job_id": job_id, "chunk": index,
                                         "attempt": lease.attempt, "crashes": lease.crashes})
        try:
            with Heartbeat(self._leases, lease, self.heartbeat_seconds) as beat:
                lines = self._chunk_lines(plan, lease, beat)
                if lines is None:  # the job finished meanwhile: cancelled, or done by others
                    status: Status = ("superseded" if self.store.chunk_recorded(job_id, index)
                                      else "cancelled")
                    return self._skipped(job_id, index, status, self.store.state(job_id))
                manifest.write_chunk_manifest(plan, index, lines, self.storage)
                errors = [ItemError(input=x.input, code=x.error.code, detail=x.error.detail)
                          for x in lines if x.error]
                done = self.store.complete_chunk(job_id, index, len(lines), errors,
                                                 token=lease.token)
        except LeaseLost:
            return self._skipped(job_id, index, "superseded", self.store.state(job_id))
        except Exception:
            with contextlib.suppress(Exception):  # else the lease expires: the reaper requeues
                self._leases.release(lease)
            raise
        if done.chunks_done == -2:
            return self._skipped(job_id, index, "superseded", self.store.state(job_id))
        if done.counted:
            self._observe(lines, len(errors), started)
        self._finish_if_complete(plan, done.chunks_done)
        final = self.store.state(job_id)
        log.info("chunk done", extra={"job_id": job_id, "chunk": index, "images": len(lines),
                                      "failed": len(errors), "counted": done.counted})
        return ChunkOutcome(job_id, index, "succeeded", len(lines), len(errors), lease.attempt,
                            final.value if final else "")

    def _chunk_lines(self, plan: JobPlan, lease: Lease,
                     beat: Heartbeat) -> list[ManifestLine] | None:
        """Every manifest line of the chunk: earlier runs' progress, then the rest, segmented
        here (or, after `max_attempts` crashes, given up as `worker_crashed`)."""
        start, stop = plan.chunk_bounds(lease.chunk)
        inputs = self._inputs(plan)[start:stop]
        kept = [ManifestLine.model_validate_json(raw)
                for raw in self._leases.progress(plan.id, lease.chunk, len(inputs))]
        rest = inputs[len(kept):]
        if lease.crashes >= self.max_attempts:
            log.error("chunk gave up: its worker died on every run", extra={
                "job_id": plan.id, "chunk": lease.chunk, "crashes": lease.crashes,
                "images": len(rest)})
            return kept + [self._crashed_line(plan, uri, lease.crashes) for uri in rest]
        # After a crash, one image at a time and no overlap: progress is saved per image
        # before the next one is even opened, so the image that kills the worker costs only
        # itself and what follows it.
        isolate = lease.crashes > 0
        found = self._segment_chunk(plan, rest, 1 if isolate else self.batch_size, lease,
                                    len(kept), beat, overlap=not isolate)
        return None if found is None else kept + found

    def _crashed_line(self, plan: JobPlan, uri: str, crashes: int) -> ManifestLine:
        error = WorkerCrashed(f"the worker died {crashes} times running this image's chunk "
                              "(out of memory, or killed); the image was not segmented")
        return ManifestLine(input=uri, output=None, model=plan.model.name,
                            model_version=plan.model.version,
                            error=ErrorEntry(code=error.code, detail=error.detail))

    def _inputs(self, plan: JobPlan) -> list[str]:
        with self._plans_lock:
            found = self._plans.get(plan.id)
            if found is not None:
                self._plans.move_to_end(plan.id)
                return found
        inputs = manifest.read_plan_inputs(plan, self.storage)
        with self._plans_lock:
            self._plans[plan.id] = inputs
            while len(self._plans) > self.plans_kept:
                self._plans.popitem(last=False)
        return inputs

    def _segment_chunk(self, plan: JobPlan, inputs: list[str], batch_size: int, lease: Lease,
                       offset: int, beat: Heartbeat,
                       overlap: bool = True) -> list[ManifestLine] | None:
        """Manifest lines of `inputs` (the chunk from position `offset` on), or None when the
        job was cancelled on the way.

        Three stages overlap, each bounded to about one batch ahead: the I/O threads read and
        decode the next batch while this thread runs the model on the current one, and they
        resize, PNG-encode and write the previous batch's masks meanwhile. The model is the
        only step that needs both cores to itself; decoding and encoding would otherwise leave
        it idle a third of the time (MACHINE.md). A batch's lines are saved as progress
        (fenced by the lease) once its masks are written. Without `overlap` (after a crash),
        an image is not even opened before the previous one is saved.

        Between two model calls the model waits for this thread, which needs the GIL for each
        step it takes; per-image work (output checks, class shares) is therefore the I/O
        threads', and local chunks run on fewer of them (`local_io_threads`).
        """
        model = self.models(plan.model.name, plan.model.version)
        size = model.input_size
        batches = [inputs[i:i + batch_size] for i in range(0, len(inputs), batch_size)]
        lines: list[ManifestLine] = []
        saved = 0
        local = is_local(plan.output) and all(is_local(uri) for uri in inputs)
        threads = self.local_io_threads if local else self.io_threads
        with ThreadPoolExecutor(threads, thread_name_prefix="chunk-io") as pool:

            def load(batch: Sequence[str]) -> list[Future[Prepared | MaskfleetError]]:
                return [pool.submit(self._load, plan, uri, size) for uri in batch]

            def settle_and_save(written: list[Written]) -> None:
                nonlocal saved
                _settle(written)
                if not self._leases.save_progress(
                        lease, offset + saved, [line.model_dump_json() for line, _ in written]):
                    raise LeaseLost()
                saved += len(written)

            pending = load(batches[0]) if batches else []
            writing: list[Written] = []
            for position, batch in enumerate(batches):
                loaded = [f.result() for f in pending]
                following = batches[position + 1] if position + 1 < len(batches) else []
                pending = load(following) if overlap else []
                if beat.lost.is_set() or self.store.state(plan.id) is not JobState.RUNNING:
                    for future in pending:
                        future.cancel()
                    if beat.lost.is_set():
                        raise LeaseLost()
                    return None
                written = self._segment_batch(plan, model, batch, loaded, pool)
                settle_and_save(writing)  # the previous batch: at most two in flight
                writing = written
                lines.extend(line for line, _ in written)
                if not overlap:
                    settle_and_save(writing)
                    writing = []
                    pending = load(following)
            settle_and_save(writing)
        return lines

    def _read(self, plan: JobPlan, uri: str) -> bytes | MaskfleetError:
        """An image's bytes, or the per-item error; other storage errors retry the chunk.

        The plan file names the inputs, and the caller may edit it (or swap folders for
        links) after submission, so the rules are checked again here, on what is opened."""
        try:
            data = self.storage(uri).read_checked(uri, self.max_image_bytes,
                                                  self._input_check(plan, uri))
        # this item's fault: record it (a FIFO is a NotAFile, an InvalidStorageUri)
        except (ObjectNotFound, InvalidStorageUri, StorageNotAllowed, PayloadTooLarge) as exc:
            return exc
        return data

    def _input_check(self, plan: JobPlan, uri: str) -> Callable[[str], None]:
        """Reads land under one of the worker's input prefixes and, for a prefix job, under
        its folder. A worker configured without input prefixes (the API refuses every job
        then, so only a worker whose settings differ from the API's) reads nothing."""
        def refuse(where: str) -> MaskfleetError:
            if not self.policy.inputs:
                return InputNotAllowed(f"input {uri!r} not read: this worker has no input "
                                       "prefixes (MASKFLEET_JOB_INPUT_PREFIXES)")
            return InputNotAllowed(f"input {uri!r} leads to {where!r}, outside the job's "
                                   "input folders; not read")

        checks = [read_check(self.policy.inputs, refuse)]
        if plan.input.prefix:
            checks.append(read_check((plan.input.prefix,), refuse))
        return every(checks)

    def _load(self, plan: JobPlan, uri: str, size: int) -> Prepared | MaskfleetError:
        """Read and decode one image (in an I/O thread); bad bytes, or a mask that would land
        outside the job's output, are the item's error.

        The output check resolves the mask's path (`realpath`: a system call per folder), so
        it runs here and not on the thread that drives the model (see `_segment_chunk`).
        """
        data = self._read(plan, uri)
        if isinstance(data, MaskfleetError):
            return data
        try:
            prepared = prepare(data, size, self.max_pixels)
        except MaskfleetError as exc:
            return exc
        except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises on bad bytes
            return InvalidImage(f"the image is truncated or corrupt: {exc}")
        if escapes(mask_uri(uri, plan.output, plan.base), plan.output):
            return EscapesOutput(f"the object name {uri!r} would put its mask outside "
                                 f"{plan.output}; not written")
        return prepared

    def _segment_batch(self, plan: JobPlan, model: SegmentationModel, batch: Sequence[str],
                       loaded: Sequence[Prepared | MaskfleetError], pool: ThreadPoolExecutor,
                       ) -> list[Written]:
        """Run the model on a batch and hand each mask to the I/O threads to finish and write."""
        good = [p for p in loaded if isinstance(p, Prepared)]
        if good and self.metrics:
            self.metrics.batch_size.observe(len(good))
        ids = iter(self._class_ids(model, good))
        written: list[Written] = []
        for uri, item in zip(batch, loaded, strict=True):
            line = ManifestLine(input=uri, output=None, model=plan.model.name,
                                model_version=plan.model.version)
            result = next(ids) if isinstance(item, Prepared) else item
            if isinstance(result, MaskfleetError):
                line.error = ErrorEntry(code=result.code, detail=result.detail)
                written.append((line, None))
                continue
            assert isinstance(item, Prepared)
            line.output = mask_uri(uri, plan.output, plan.base)  # `_load` checked it
            written.append((line, pool.submit(self._finish_and_write, plan.output, line.output,
                                              result, item.original)))
        return written

    def _class_ids(self, model: SegmentationModel, good: list[Prepared],
                   ) -> list[npt.NDArray[np.int32] | MaskfleetError]:
        """Class ids per image in one call; if the call breaks, one image at a time finds the
        culprit and only that image fails."""
        if not good:
            return []
        try:
            return list(model.class_ids(np.stack([p.pixels for p in good])))
        except Exception:
            log.exception("batch failed; segmenting its images one by one")
        results: list[npt.NDArray[np.int32] | MaskfleetError] = []
        for item in good:
            try:
                results.append(model.class_ids(item.pixels[np.newaxis])[0])
            except Exception as exc:
                results.append(InternalItemError(f"{type(exc).__name__}: {exc}"))
        return results

    def _finish_and_write(self, output: str, uri: str, class_ids: npt.NDArray[np.int32],
                          original: tuple[int, int]) -> Segmentation | MaskfleetError:
        """The finished mask, written; a write refused because it would leave `output` (a
        folder swapped for a symlink since `_load` checked it) is the item's error."""
        result = finish(class_ids, original)
        try:
            self._write_mask(output, uri, result)
        except OutsideFolder as exc:
            return EscapesOutput(f"the mask {uri!r} would land outside {output}: "
                                 f"{exc.detail}")
        _ = result.fractions  # counted here, not when the model's thread settles the line
        return result

    def _write_mask(self, output: str, uri: str, result: Segmentation) -> None:
        write_under(self.storage(uri), output, uri, result.png, "image/png")

    def _finish_if_complete(self, plan: JobPlan, chunks_done: int) -> None:
        if chunks_done != plan.chunks:
            return
        state = self.store.state(plan.id)
        if state is None or state.finished:
            return
        try:
            uri = manifest.assemble(plan, self.storage)
        except MaskfleetError as exc:
            if exc.status >= 500:
                raise
            self.store.fail(plan.id, exc.detail)
            log.error("job failed", extra={"job_id": plan.id, "error": exc.detail})
            return
        if self.store.succeed(plan.id, uri):
            log.info("job succeeded", extra={"job_id": plan.id, "manifest": uri})

    def _observe(self, lines: list[ManifestLine], failed: int, started: float) -> None:
        if not self.metrics:
            return
        self.metrics.chunks.labels("succeeded").inc()
        self.metrics.images.labels("ok").inc(len(lines) - failed)
        self.metrics.images.labels("error").inc(failed)
        self.metrics.chunk_duration.observe(time.perf_counter() - started)

    def _skipped(self, job_id: str, index: int, status: Status,
                 state: JobState | None) -> ChunkOutcome:
        if self.metrics:
            self.metrics.chunks.labels("skipped").inc()
        log.info("chunk skipped", extra={"job_id": job_id, "chunk": index,
                                         "state": state.value if state else None})
        return ChunkOutcome(job_id, index, status, job_state=state.value if state else "")


def _settle(written: list[Written]) -> None:
    """Wait for masks being written and fill in what their manifest lines say about them."""
    for line, future in written:
        if future is not None:
            result = future.result()
            if isinstance(result, MaskfleetError):
                line.output = None
                line.error = ErrorEntry(code=result.code, detail=result.detail)
                continue
            line.width, line.height = result.width, result.height
            line.class_fractions = result.fractions
