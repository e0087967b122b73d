"""Celery tasks: thin wrappers over `jobs.chunk.ChunkRunner`, which tests call directly.

Storage and Redis hiccups retry the chunk with backoff (the rerun is idempotent); when
retries run out, or on an error that no retry can fix, the chunk's job is marked failed.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, signals

from services.jobs.broker import CHUNK_TASK
from services.worker.runtime import WorkerRuntime
from shared.errors import StorageError

log = logging.getLogger(__name__)

RETRYABLE = (StorageError, redis.RedisError, ConnectionError, TimeoutError)


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    @app.task(  # type: ignore[untyped-decorator]
        name=CHUNK_TASK, shared=False, autoretry_for=RETRYABLE, retry_backoff=2,
        retry_backoff_max=60, retry_jitter=True, max_retries=5, acks_late=True,
        reject_on_worker_lost=True,
    )
    def process_chunk(job_id: str, index: int) -> dict[str, Any]:
        return runtime.run_chunk(job_id, index).as_dict()

    def on_failure(sender: Any = None, exception: BaseException | None = None,
                   args: Any = None, **_: Any) -> None:
        job_id, index = args
        try:
            runtime.fail_job(job_id, f"chunk {index} failed: {type(exception).__name__}: "
                                     f"{exception}")
        except redis.RedisError as exc:  # the lease expires and the reaper requeues the chunk
            log.warning("could not fail the job", extra={"job_id": job_id,
                                                         "error": type(exc).__name__})

    signals.task_failure.connect(on_failure, sender=process_chunk, weak=False)
