"""The reaper: takes back chunks whose worker died and jobs whose submission was cut short.

Every worker process runs one (a daemon thread, every `job_heartbeat_seconds`); the Lua calls
make each expired lease handled by exactly one of them. Three duties:
- a chunk whose lease expired gets a new chunk message (the old one stays unacknowledged in
  Celery until its visibility timeout, then arrives as a duplicate that skips itself);
- a chunk message a worker took and still holds unacknowledged after `job_lease_seconds`
  goes back on the queue when nothing else would move its job on (`JobStore.orphaned`): its
  chunk was never started (the worker died between taking it and leasing the chunk, so there
  is no lease to expire), or it was recorded while the job is still unfinished (the worker
  died before writing the job's manifest; the redelivered message finishes the job);
- a job left `queued` without all of its chunk messages sent (the API answered 503 because the
  queue or Redis failed mid-submission) is failed with a reason once it is older than
  `job_submit_grace_seconds`, which releases its output lock. Its caller never received a job
  id, so running it later would surprise them; failing it tells anyone who looks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Protocol, runtime_checkable

import redis

from services.jobs.broker import Delivery
from services.jobs.leases import ChunkLeases, Requeue
from services.jobs.records import now
from services.jobs.store import JobStore

log = logging.getLogger(__name__)

Enqueue = Callable[[str, Sequence[int]], None]

INTERRUPTED = ("the submission was interrupted before all of its chunks were queued (the "
               "caller received a 503); submit the job again")


@runtime_checkable
class TakenMessages(Protocol):
    """The broker's unacknowledged chunk messages (`broker.CeleryEnqueuer`)."""

    def taken(self, older_than: float) -> list[Delivery]: ...

    def restore(self, delivery: Delivery) -> None: ...


class Reaper:
    def __init__(self, store: JobStore, leases: ChunkLeases, enqueue: Enqueue, *,
                 submit_grace_seconds: float,
                 on_requeue: Callable[[Requeue], None] | None = None) -> None:
        self.store = store
        self.leases = leases
        self.enqueue = enqueue
        self.taken = enqueue if isinstance(enqueue, TakenMessages) else None
        self.grace = timedelta(seconds=submit_grace_seconds)
        self.on_requeue = on_requeue

    def reap_once(self) -> tuple[list[Requeue], list[str]]:
        """Requeue expired chunks and fail interrupted submissions; returns what it did."""
        requeued = self.leases.reap()
        for item in requeued:
            try:
                self.enqueue(item.job_id, [item.chunk])
            except Exception:
                self.leases.retry_later(item.job_id, item.chunk)
                raise
            log.warning("chunk requeued: its lease expired", extra={
                "job_id": item.job_id, "chunk": item.chunk, "crashed": item.crashed})
            if self.on_requeue:
                self.on_requeue(item)
        self.restore_untouched()
        failed = []
        cutoff = now() - self.grace
        for job_id, created in self.store.unenqueued():
            if created < cutoff and self.store.fail(job_id, INTERRUPTED):
                log.error("job failed: submission interrupted", extra={"job_id": job_id})
                failed.append(job_id)
        return requeued, failed

    def restore_untouched(self) -> list[Delivery]:
        """Put back on the queue the chunk messages held unacknowledged for longer than a lease
        that nothing else would hand on (`JobStore.orphaned`); returns them."""
        if self.taken is None:
            return []
        restored = []
        for delivery in self.taken.taken(older_than=self.leases.lease_ms / 1000):
            if self.store.orphaned(delivery.job_id, delivery.chunk):
                self.taken.restore(delivery)
                log.warning("chunk message requeued: its worker died holding it", extra={
                    "job_id": delivery.job_id, "chunk": delivery.chunk})
                restored.append(delivery)
        return restored

    def run(self, stop: threading.Event, every_seconds: float) -> None:
        """Reap until `stop` is set; Redis or broker trouble only delays the next pass."""
        while not stop.wait(every_seconds):
            try:
                self.reap_once()
            except (redis.RedisError, OSError, ConnectionError) as exc:
                log.warning("reaper pass failed", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("reaper pass failed")

    def start(self, every_seconds: float) -> threading.Event:
        """Run in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop, every_seconds), daemon=True,
                         name="job-reaper").start()
        return stop
