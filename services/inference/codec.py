"""The codec pool: decoding, resizing, mask building and answer encoding off the event loop.

A few threads (`codec_threads`) beside the model thread, behind a bounded queue: when
`codec_max_queue` jobs already wait, a new one is refused at once (503) rather than queued
behind seconds of work. A job whose deadline passed while it waited is dropped unstarted, and
one whose caller went away (cancelled) never starts: asyncio cancels the executor future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from shared.errors import Overloaded

from .admission import Deadline
from .metrics import ApiMetrics

T = TypeVar("T")


class CodecPool:
    def __init__(self, threads: int, max_queue: int, metrics: ApiMetrics) -> None:
        self._threads = threads
        self._max_pending = threads + max_queue
        self._metrics = metrics
        self._pending = 0
        self._executor: ThreadPoolExecutor | None = None
        metrics.queue_depth.labels("codec").set_function(
            lambda: max(0, self._pending - self._threads))

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="codec")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any,
                  deadline: Deadline | None = None) -> T:
        """`fn(*args)` on a codec thread; 503 when the queue is full, 504 when it expired
        waiting."""
        if self._pending >= self._max_pending:
            self._metrics.requests_shed.labels("codec_queue").inc()
            raise Overloaded(f"the codec queue is full ({self._max_pending - self._threads} "
                             "jobs waiting)")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, _unless_expired, fn, args, deadline, self._metrics)
        finally:
            self._pending -= 1


def _unless_expired(fn: Callable[..., T], args: tuple[Any, ...], deadline: Deadline | None,
                    metrics: ApiMetrics) -> T:
    if deadline is not None and deadline.expired():
        metrics.work_dropped.labels("codec", "deadline").inc()
        raise deadline.exceeded()
    return fn(*args)
