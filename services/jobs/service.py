"""Submitting, reading and cancelling jobs: what the API's /v1/jobs routes call.

Submission pins the model version (a stage is resolved once, here), so every chunk of a job
uses one version even if the stage moves while it runs. Everything is checked before the job
is recorded, and a submission that fails after that (unwritable output, queue or Redis down or
full) discards the record and its output lock, so a refused job leaves nothing behind but an
error with its reason. If even the discard fails (Redis gone), the reaper fails the job later.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import redis

from services.jobs import manifest
from services.jobs.confinement import OutputNotEmpty, is_local, policy_from, under
from services.jobs.inputs import chunk_count, resolve_inputs
from services.jobs.leases import ChunkLeases
from services.jobs.reaper import Reaper
from services.jobs.records import JobPlan, JobRequest, JobStatus, ModelRef
from services.jobs.settings import JobSettings
from services.jobs.store import JobStore
from shared.errors import (
    InvalidJob,
    JobNotFound,
    JobsUnavailable,
    ObjectNotFound,
    OutputInUse,
    StorageError,
    StorageUnavailable,
)
from shared.redis import plain_reason
from shared.repository import ModelRepository
from shared.storage import Storage, folder, storage_for

log = logging.getLogger(__name__)

Enqueue = Callable[[str, Sequence[int]], None]
"""Queues chunk tasks: (job id, chunk numbers)."""

_JOB_ID_CHARS = frozenset("0123456789abcdef")


def valid_job_id(job_id: str) -> bool:
    return len(job_id) == 32 and set(job_id) <= _JOB_ID_CHARS


def unavailable(exc: BaseException) -> JobsUnavailable:
    """A 503 with a plain reason; Redis' own message (keys, scripts) stays out of it."""
    log.warning("job store failed", extra={"error": type(exc).__name__})
    return JobsUnavailable(plain_reason(exc, "the job store"))


@contextmanager
def redis_guard() -> Iterator[None]:
    """Redis down or full means no batch jobs (503), not a stack trace."""
    try:
        yield
    except redis.RedisError as exc:
        raise unavailable(exc) from exc


class JobService:
    """Submission, status and cancel over one store, bounded by one `JobSettings`.

    `settings` also names the model served by default (a job that pins nothing gets the
    version the API would serve), the environment (local paths only outside production) and
    the storage prefixes jobs are confined to (`confinement`). `protected` adds prefixes no
    job may write to the configured ones (the API passes its feedback prefix and dataset).
    """

    def __init__(
        self, store: JobStore, repository: ModelRepository, enqueue: Enqueue,
        settings: JobSettings, *, on_submitted: Callable[[], None] | None = None,
        storage: Callable[[str], Storage] = storage_for, protected: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.repository = repository
        self.enqueue = enqueue
        self.settings = settings
        self.allow_local = settings.environment != "production"
        self.on_submitted = on_submitted
        self.storage = storage
        self.policy = policy_from(settings, protected)

    @classmethod
    def from_settings(cls, settings: JobSettings, *,
                      on_submitted: Callable[[], None] | None = None,
                      protected: Sequence[str] = ()) -> JobService:
        """The API's wiring: same Redis, model repository and default model as it serves."""
        from services.jobs.broker import CeleryEnqueuer

        return cls(
            JobStore.from_settings(settings), ModelRepository(settings.model_repository),
            CeleryEnqueuer.for_endpoint(settings.state_redis()), settings,
            on_submitted=on_submitted, protected=protected,
        )

    def confine(self, request: JobRequest) -> tuple[str | list[str], str]:
        """The request's input(s) and output, normalised, once every storage rule allows them
        (403 naming the rule otherwise); nothing is listed or written before this."""
        output = self.policy.check_output(request.output, request.overwrite)
        source: str | list[str]
        if isinstance(request.input, str):
            source = self.policy.check_input(request.input)
        else:
            source = [self.policy.check_input(uri) for uri in request.input]
        return source, output

    def _refuse_overwrite(self, output: str, overwrite: bool) -> None:
        """Without `overwrite` (allowed by the policy), the output folder must be empty."""
        with redis_guard():
            writer = self.store.output_writer(output)
        if writer is not None:
            raise OutputInUse(f"output {output} is being written by unfinished job {writer}; "
                              "cancel it or choose another output")
        if overwrite:
            return
        try:
            existing = _first_object(output) if is_local(output) else next(
                self.storage(output).walk(folder(output)), None)
        except ObjectNotFound:
            return
        except StorageError as exc:
            raise InvalidJob(f"cannot list output {output}: {exc.detail}") from None
        if existing:
            raise OutputNotEmpty(
                f"output {output} already holds objects, e.g. {existing}; a job never "
                "overwrites them: choose an empty output, or pass "
                '"overwrite": true under an output prefix that allows it')

    def submit(self, request: JobRequest, submitted_by: str = "anonymous") -> JobStatus:
        chunk_size = request.chunk_size or self.settings.job_chunk_size
        if chunk_size > self.settings.job_max_chunk_size:
            raise InvalidJob(f"chunk_size {chunk_size} is above the maximum "
                             f"{self.settings.job_max_chunk_size}")
        source, output = self.confine(request)
        if request.overwrite and isinstance(source, str) and under(output, source):
            raise InvalidJob(f"output {output} is inside the input {source}: overwriting there "
                             "could replace images of the input; choose an output outside it")
        model = self._pin_model(request)
        self._refuse_overwrite(output, request.overwrite)
        inputs = resolve_inputs(source, output, allow_local=self.allow_local,
                                max_images=self.settings.job_max_images, storage=self.storage)
        plan = JobPlan(
            id=uuid.uuid4().hex, input=inputs.summary, output=output, base=inputs.base,
            model=model, chunk_size=chunk_size,
            chunks=chunk_count(len(inputs.uris), chunk_size), images=len(inputs.uris),
            submitted_by=submitted_by, overwrite=request.overwrite,
        )
        with redis_guard():
            self.store.create(plan)
        try:
            self._write_plan(plan, inputs.uris)
        except (InvalidJob, StorageUnavailable):
            with redis_guard():
                self.store.discard(plan)
            raise
        try:
            self.enqueue(plan.id, range(plan.chunks))
        except Exception as exc:
            # Chunk messages already sent find no job and skip themselves.
            with redis_guard():
                self.store.discard(plan)
            raise unavailable(exc) from exc
        with redis_guard():
            self.store.mark_enqueued(plan.id)
        if self.on_submitted:
            self.on_submitted()
        log.info("job submitted", extra={"job_id": plan.id, "images": plan.images,
                                         "submitted_by": submitted_by,
                                         "chunks": plan.chunks, "version": model.version})
        return self.status(plan.id)

    def start_reaper(self) -> threading.Event:
        """Run the reaper (`reaper.py`) beside the API too, so a dead worker's chunk is
        requeued even before a replacement worker has started; set the event to stop it."""
        leases = ChunkLeases(self.store.redis, lease_seconds=self.settings.job_lease_seconds)
        reaper = Reaper(self.store, leases, self.enqueue,
                        submit_grace_seconds=self.settings.job_submit_grace_seconds)
        return reaper.start(self.settings.job_heartbeat_seconds)

    def status(self, job_id: str, viewer: str | None = None) -> JobStatus:
        """The job's status; with `viewer`, only if they submitted it (404 otherwise, so ids
        of other callers' jobs are not confirmed)."""
        if not valid_job_id(job_id):
            raise JobNotFound(f"no job {job_id}")
        with redis_guard():
            status = self.store.status(job_id)
        if viewer is not None and status.submitted_by != viewer:
            raise JobNotFound(f"no job {job_id}")
        return status

    def cancel(self, job_id: str, viewer: str | None = None) -> JobStatus:
        """Cancel an unfinished job (idempotent: a finished job is returned unchanged)."""
        self.status(job_id, viewer)
        with redis_guard():
            if self.store.cancel(job_id):
                log.info("job cancelled", extra={"job_id": job_id})
            return self.store.status(job_id)

    def _pin_model(self, request: JobRequest) -> ModelRef:
        version = request.model_version
        stage = request.model_stage
        default = self.settings
        if version is None and stage is None:
            version, stage = default.model_version, default.model_stage
        resolved = self.repository.resolve(default.model_name, version=version,
                                           stage=stage or default.model_stage)
        return ModelRef(name=default.model_name, version=resolved,
                        stage=None if version is not None else stage)

    def _write_plan(self, plan: JobPlan, inputs: list[str]) -> None:
        """Write the plan file (plan + inputs) beside the outputs; this also proves the
        output is writable. The job holds the output lock by now, so it cannot clobber the
        plan of another unfinished job."""
        try:
            manifest.write_plan(plan, inputs, self.storage)
        except StorageUnavailable:
            raise  # passing: the caller gets 503 and may retry
        except StorageError as exc:
            # the storage layer's detail may name internal paths or cloud messages: log it,
            # tell the caller only which output it could not write
            log.warning("job output not writable",
                        extra={"output": plan.output, "error": exc.detail[:1024]})
            raise InvalidJob(f"cannot write to output {plan.output}") from exc


def _first_object(output: str) -> str | None:
    """Any entry under a local output folder, hidden files and symlinks included (the storage
    listing skips hidden files, which are in-flight writes there, but a caller's dotfile is
    still theirs to lose); stops at the first, so a huge folder costs no full listing."""
    path = output.removeprefix("file://")
    try:
        for root, folders, files in os.walk(path, onerror=_raise):
            links = [f for f in folders if os.path.islink(os.path.join(root, f))]
            for name in files + links:
                return os.path.join(root, name)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (writing will tell more)
        return None
    except OSError as exc:
        raise StorageError(f"cannot list {output[:200]}: {exc.strerror}") from exc
    return None


def _raise(exc: OSError) -> None:
    raise exc
