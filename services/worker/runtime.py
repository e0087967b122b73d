"""What a worker process holds: job store, loaded models, metrics and the chunk runner.

Built lazily in the process that runs tasks (after a prefork fork, never before it: neither
TensorFlow nor a Redis connection survives a fork), from the settings of the entry point.
"""

from __future__ import annotations

import logging
import os
import socket
from functools import cached_property
from pathlib import Path

from services.jobs.broker import QUEUE
from services.jobs.chunk import ChunkOutcome, ChunkRunner
from services.jobs.confinement import policy_from
from services.jobs.leases import ChunkLeases
from services.jobs.reaper import Enqueue, Reaper
from services.jobs.store import JobStore
from services.worker.metrics import WorkerMetrics
from services.worker.models import ModelCache
from services.worker.settings import WorkerSettings
from shared.cpu import thread_count
from shared.errors import MaskfleetError
from shared.metrics_server import serve_metrics
from shared.repository import ModelRepository

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: WorkerSettings, enqueue: Enqueue | None = None) -> None:
        self.settings = settings
        self.enqueue = enqueue
        """Sends chunk messages (the reaper's requeues); the worker's own Celery app."""

    @cached_property
    def store(self) -> JobStore:
        return JobStore.from_settings(self.settings)

    @cached_property
    def leases(self) -> ChunkLeases:
        return ChunkLeases(self.store.redis, lease_seconds=self.settings.job_lease_seconds)

    @cached_property
    def reaper(self) -> Reaper:
        if self.enqueue is None:
            raise RuntimeError("the reaper needs a way to send chunk messages")
        return Reaper(self.store, self.leases, self.enqueue,
                      submit_grace_seconds=self.settings.job_submit_grace_seconds,
                      on_requeue=lambda item: self.metrics.requeued.labels(
                          "crashed" if item.crashed else "released").inc())

    def start_reaper(self) -> None:
        """Every worker reaps, so a replacement starts recovering its predecessor's chunk
        before it has even loaded a model."""
        self.reaper.start(self.settings.job_heartbeat_seconds)

    @cached_property
    def repository(self) -> ModelRepository:
        return ModelRepository(self.settings.model_repository)

    @cached_property
    def models(self) -> ModelCache:
        s = self.settings
        return ModelCache(self.repository, Path(s.cache_dir), variant=s.model_variant,
                          threads=s.model_threads or thread_count(s.cpu_limit),
                          batch=s.model_batch_size)

    @cached_property
    def metrics(self) -> WorkerMetrics:
        metrics = WorkerMetrics().with_process_metrics()
        metrics.watch(self.store, QUEUE)
        return metrics

    @cached_property
    def runner(self) -> ChunkRunner:
        s = self.settings
        if not s.job_input_prefixes:
            log.warning("no job input prefixes configured on the worker: every job's images "
                        "are refused; set MASKFLEET_JOB_INPUT_PREFIXES as on the API")
        return ChunkRunner(
            self.store, self.models, batch_size=s.model_batch_size, max_pixels=s.max_pixels,
            max_image_bytes=s.max_image_bytes, io_threads=s.io_threads,
            local_io_threads=s.local_io_threads or thread_count(s.cpu_limit),
            worker=f"{socket.gethostname()}:{os.getpid()}", metrics=self.metrics,
            leases=self.leases, heartbeat_seconds=s.job_heartbeat_seconds,
            max_attempts=s.job_max_attempts, policy=policy_from(s),
        )

    def warm_up(self) -> None:
        """Load the default version before the first chunk; jobs may still pin others."""
        s = self.settings
        try:
            version = self.repository.resolve(s.model_name, version=s.model_version,
                                              stage=s.model_stage)
            self.models(s.model_name, version)
        except MaskfleetError as exc:
            log.warning("no model to warm up; loading on the first chunk instead",
                        extra={"error": exc.detail})

    def serve_metrics(self) -> None:
        port = self.settings.worker_metrics_port
        if not port:
            return
        try:
            serve_metrics(self.metrics.registry, "0.0.0.0", port)
        except OSError as exc:
            log.warning("metrics port is taken; run one worker process per pod (--pool=solo)",
                        extra={"port": port, "error": str(exc)})
            return
        log.info("metrics served", extra={"port": port})

    def run_chunk(self, job_id: str, index: int) -> ChunkOutcome:
        try:
            return self.runner.run(job_id, index)
        except Exception:
            self.metrics.chunks.labels("failed").inc()
            raise

    def fail_job(self, job_id: str, reason: str) -> None:
        """A chunk gave up (retries exhausted or a non-retryable error): the job failed."""
        if self.store.fail(job_id, reason):
            log.error("job failed", extra={"job_id": job_id, "error": reason})
