"""Micro-batching: concurrent requests share one model call.

One model call per request leaves the CPU at ~40% of what batched calls reach (MACHINE.md).
Requests queue their preprocessed pixels; a collector task takes the first one, waits at most
`batch_max_wait_ms` (counted from that image's arrival) for more, and runs the batch in one
dedicated thread: TensorFlow already uses both cores, so a second model thread would only
oversubscribe them. While a batch runs the next one accumulates, so under load batches fill
up without any extra waiting. A request's images are never split across batches, so a whole
response comes from one model version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.errors import ModelNotReady

from .metrics import ApiMetrics
from .model_holder import ModelHolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """Class ids for one request's images, and the version that computed them."""

    class_ids: npt.NDArray[np.int32]
    model: str
    version: int
    input_size: int


class StaleInput(Exception):
    """The served version changed input size after these pixels were prepared: redo them."""


@dataclass
class _Item:
    pixels: npt.NDArray[np.float32]
    future: asyncio.Future[BatchResult]
    enqueued: float


class Batcher:
    def __init__(self, holder: ModelHolder, metrics: ApiMetrics, *, max_size: int,
                 max_wait_ms: float) -> None:
        self._holder = holder
        self._metrics = metrics
        self._max_size = max_size
        self._max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._carry: _Item | None = None
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def queued(self) -> int:
        """Requests waiting for the collector (not yet in a forming batch)."""
        return self._queue.qsize()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._collect(), name="batcher")

    async def stop(self) -> None:
        """Refuse new work, run everything already queued, then stop."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        self._model_thread.shutdown(wait=False)

    async def run(self, pixels: npt.NDArray[np.float32]) -> BatchResult:
        """Segment `[k, S, S, 3]` pixels of one request within some batch."""
        if self._closing:
            raise ModelNotReady("the server is shutting down")
        self._holder.require()
        loop = asyncio.get_running_loop()
        item = _Item(pixels, loop.create_future(), loop.time())
        self._queue.put_nowait(item)
        return await item.future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = self._carry or await self._queue.get()
            self._carry = None
            if first is None:
                return
            batch, count = [first], len(first.pixels)
            deadline = first.enqueued + self._max_wait
            while count < self._max_size:
                try:
                    nxt = await self._next(deadline - loop.time())
                except TimeoutError:
                    break
                if nxt is None:
                    stopping = True
                    break
                if count + len(nxt.pixels) > self._max_size:
                    self._carry = nxt
                    break
                batch.append(nxt)
                count += len(nxt.pixels)
            await self._dispatch(batch)
            if stopping and self._carry is not None:
                await self._dispatch([self._carry])

    async def _next(self, timeout: float) -> _Item | None:
        """The next queued item, waiting at most `timeout` s for one (else TimeoutError)."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                raise TimeoutError from None
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _dispatch(self, batch: list[_Item]) -> None:
        """Run one batch; whatever goes wrong ends up in its requests, never in the collector."""
        try:
            await self._run_batch(batch)
        except Exception as exc:
            log.exception("batch failed", extra={"requests": len(batch)})
            for item in batch:
                _settle(item, exc)

    async def _run_batch(self, batch: list[_Item]) -> None:
        served = self._holder.require()
        size = served.input_size
        for item in batch:
            if item.pixels.shape[1:3] != (size, size):
                _settle(item, StaleInput())
        batch = [item for item in batch if not item.future.done()]
        if not batch:
            return
        loop = asyncio.get_running_loop()
        version = str(served.version)
        now = loop.time()
        for item in batch:
            self._metrics.batch_queue.labels(version).observe(now - item.enqueued)
        images = np.concatenate([item.pixels for item in batch]) if len(batch) > 1 \
            else batch[0].pixels
        started = time.perf_counter()
        ids = await loop.run_in_executor(self._model_thread, served.model.class_ids, images)
        self._metrics.model_inference.labels(version).observe(time.perf_counter() - started)
        self._metrics.batch_size.labels(version).observe(len(images))
        offset = 0
        for item in batch:
            k = len(item.pixels)
            _settle(item, BatchResult(ids[offset:offset + k], served.name, served.version, size))
            offset += k


def _settle(item: _Item, outcome: BatchResult | BaseException) -> None:
    """Resolve a request's future unless its client already gave up (cancelled)."""
    if item.future.done():
        return
    if isinstance(outcome, BaseException):
        item.future.set_exception(outcome)
    else:
        item.future.set_result(outcome)
