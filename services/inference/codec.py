"""The codec pool: decoding, resizing, mask building and answer encoding off the event loop.

A few threads (`codec_threads`) beside the model thread, behind a bounded queue: when
`codec_max_queue` jobs already wait, a new one is refused at once (503) rather than queued
behind seconds of work. A job whose deadline passed while it waited is dropped unstarted, and
one whose caller went away (cancelled) never starts.

Not `loop.run_in_executor`: a request makes two or three codec hops, and each hop through a
`ThreadPoolExecutor` builds a concurrent future, an asyncio future chained to it and a work
item, and takes the executor's locks, about a tenth of the event loop's CPU per request. Here a
hop is one asyncio future, one put on a `SimpleQueue` and one `call_soon_threadsafe` back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

from shared.errors import Overloaded

from .admission import Deadline
from .metrics import ApiMetrics

T = TypeVar("T")


class _Job:
    __slots__ = ("args", "deadline", "fn", "future", "loop")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], deadline: Deadline | None,
                 loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.args = args
        self.deadline = deadline
        self.loop = loop
        self.future = future


class CodecPool:
    def __init__(self, threads: int, max_queue: int, metrics: ApiMetrics) -> None:
        self._threads = threads
        self._max_pending = threads + max_queue
        self._metrics = metrics
        self._pending = 0
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._workers: list[threading.Thread] = []
        metrics.queue_depth.labels("codec").set_function(
            lambda: max(0, self._pending - self._threads))

    def start(self) -> None:
        for index in range(self._threads):
            worker = threading.Thread(target=self._work, name=f"codec_{index}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def close(self) -> None:
        """Let the threads finish the jobs already queued, then stop them."""
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join()
        self._workers.clear()

    async def run(self, fn: Callable[..., T], *args: Any,
                  deadline: Deadline | None = None) -> T:
        """`fn(*args)` on a codec thread; 503 when the queue is full, 504 when it expired
        waiting."""
        if self._pending >= self._max_pending:
            self._metrics.requests_shed.labels("codec_queue").inc()
            raise Overloaded(f"the codec queue is full ({self._max_pending - self._threads} "
                             "jobs waiting)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending += 1
        try:
            self._jobs.put(_Job(fn, args, deadline, loop, future))
            return await future
        finally:
            self._pending -= 1

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.future.cancelled():  # the caller went away while the job waited
                continue
            try:
                if job.deadline is not None and job.deadline.expired():
                    self._metrics.work_dropped.labels("codec", "deadline").inc()
                    raise job.deadline.exceeded()
                result = job.fn(*job.args)
            except BaseException as exc:  # handed to the awaiting request, which renders it
                _reply(job, _fail, exc)
            else:
                _reply(job, _settle, result)
            del job


def _reply(job: _Job, settle: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the job ran: no one waits
        job.loop.call_soon_threadsafe(settle, job.future, value)


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
