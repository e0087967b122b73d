"""Micro-batching: concurrent requests share one model call.

One model call per request leaves the CPU at ~40% of what batched calls reach (MACHINE.md).
Requests queue their preprocessed pixels; one dedicated model thread takes the first and runs
the batch: TensorFlow already uses both cores, so a second model thread would only
oversubscribe them. While a batch runs the next one accumulates, so under load batches fill up
without any extra waiting. A request's images are never split across batches, so a whole
response comes from one model version.

The model thread waits for company only when company is coming: images admitted and still
being decoded (`preparing`) are waited for, up to `batch_max_wait_ms` counted from the first
image's arrival; with nothing in preparation the batch runs at once. A lone request therefore
pays no batching delay, and under load fewer, larger model calls run: each call has a fixed
cost, and after an idle gap a model call costs more CPU than back to back (cold caches: with
the quick int8 model here, a batch of 4 costs 4.0 core-ms back to back and 4.9 after 10 ms
idle), so calls of 5 images on average cost ~0.2 core-ms per image more than calls of 11.
`batch_wait=always` restores TF Serving's rule (wait for arrivals too) for traffic that comes
spaced out, where nothing is ever being decoded when a batch forms.

The model thread forms its own batches instead of the event loop doing it: when a call ends it
picks up what queued meanwhile at once, without waiting for the busy event loop (and the GIL
hand-offs) to notice, so the model idles less between calls. Results go back to the event loop
in one callback per batch.

The queue is bounded in images (`batch_max_queue_images`): beyond it a request is refused at
once with 503 (TF Serving's `max_enqueued_batches`, Triton's `max_queue_size`), so queueing
delay stays near one batch time instead of growing with the offered load. Before a batch runs,
requests whose deadline passed (504) or whose client went away are dropped: the model only
computes answers somebody still waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.errors import DeadlineExceeded, ModelNotReady, Overloaded

from .admission import Deadline
from .metrics import ApiMetrics
from .model_holder import ModelHolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """Class ids for one request's images, and the version that computed them."""

    class_ids: npt.NDArray[np.int32]
    model: str
    version: int
    variant: str
    input_size: int


class StaleInput(Exception):
    """The served version changed input size after these pixels were prepared: redo them."""


Outcome = BatchResult | BaseException


@dataclass
class _Item:
    pixels: npt.NDArray[np.float32]
    future: asyncio.Future[BatchResult]
    enqueued: float
    deadline: float = float("inf")
    abandoned: bool = False
    """Set on the event loop when the caller stopped waiting (deadline, disconnect); read by
    the model thread, which then skips the item. A plain attribute: atomic under the GIL."""


class Batcher:
    def __init__(self, holder: ModelHolder, metrics: ApiMetrics, *, max_size: int,
                 max_wait_ms: float, max_queue_images: int = 1024,
                 wait_always: bool = False) -> None:
        self._holder = holder
        self._metrics = metrics
        self._max_size = max_size
        self._max_wait = max_wait_ms / 1000.0
        self._wait_always = wait_always
        """`batch_wait=always`: wait for arrivals too, not only for images being decoded."""
        self._max_queue_images = max_queue_images
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._queued_images = 0
        self._preparing = 0
        """Images admitted to the queue's bound while they are decoded (`preparing`). Changed
        on the event loop, read by the model thread: a plain int, atomic under the GIL."""
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        metrics.queue_depth.labels("batch").set_function(lambda: self._queued_images)

    @property
    def queued(self) -> int:
        """Requests waiting for the model thread (not yet in a forming batch)."""
        return self._queue.qsize()

    @contextlib.contextmanager
    def preparing(self, count: int) -> Iterator[None]:
        """`with batcher.preparing(n)`: hold `n` images' place while they are decoded.

        Refused (503) before any decoding when they, with the images queued or already being
        decoded, would overflow the queue: a request that will be shed should not first wait
        for, and spend, a codec thread. Meanwhile the model thread knows they are coming and
        lets a forming batch wait for them.
        """
        queued = self._queued_images + self._preparing
        if queued and queued + count > self._max_queue_images:
            self._metrics.requests_shed.labels("batch_queue").inc()
            raise Overloaded(f"the model queue is full ({self._max_queue_images} images)")
        self._preparing += count
        try:
            yield
        finally:
            self._preparing -= count

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._collect, name="model", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Refuse new work, run everything already queued, then stop."""
        self._closing = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)

    async def run(self, pixels: npt.NDArray[np.float32],
                  deadline: Deadline | None = None) -> BatchResult:
        """Segment `[k, S, S, 3]` pixels of one request within some batch; 503 at once when
        the queue holds `max_queue_images` images already."""
        if self._closing:
            raise ModelNotReady("the server is shutting down")
        self._holder.require()
        count = len(pixels)
        with self._count_lock:
            # one request alone may always queue, however large (it is bounded elsewhere)
            if self._queued_images and self._queued_images + count > self._max_queue_images:
                full = True
            else:
                full = False
                self._queued_images += count
        if full:
            self._metrics.requests_shed.labels("batch_queue").inc()
            raise Overloaded(f"the model queue is full ({self._max_queue_images} images)")
        item = _Item(pixels, asyncio.get_running_loop().create_future(), time.monotonic(),
                     deadline.at if deadline is not None else float("inf"))
        self._queue.put(item)
        try:
            return await item.future
        except asyncio.CancelledError:
            item.abandoned = True
            raise

    def _take(self, item: _Item) -> None:
        with self._count_lock:
            self._queued_images -= len(item.pixels)

    def _collect(self) -> None:
        """The model thread: form a batch from the queue, run it, repeat until stopped."""
        carry: _Item | None = None
        stopping = False
        while not stopping:
            if carry is not None:  # already taken off the queue (and counted) last round
                first, carry = carry, None
            else:
                taken = self._queue.get()
                if taken is None:
                    return
                first = taken
                self._take(first)
            if self._dropped(first):
                continue
            batch, count = [first], len(first.pixels)
            deadline = first.enqueued + self._max_wait
            while count < self._max_size:
                try:
                    waiting = self._wait_always or self._preparing
                    nxt = self._next(deadline - time.monotonic() if waiting else 0.0)
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                self._take(nxt)
                if self._dropped(nxt):
                    continue
                if count + len(nxt.pixels) > self._max_size:
                    carry = nxt
                    break
                batch.append(nxt)
                count += len(nxt.pixels)
            self._dispatch(batch)
            if stopping and carry is not None:
                self._dispatch([carry])

    def _dropped(self, item: _Item) -> bool:
        """Drop (and settle) an item nobody waits for any more, before it costs a model call."""
        if time.monotonic() >= item.deadline:
            self._metrics.work_dropped.labels("model", "deadline").inc()
            if not item.abandoned:
                error: Outcome = DeadlineExceeded("the request's deadline passed while it "
                                                  "waited for the model; it was dropped")
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    self._loop.call_soon_threadsafe(_settle_all, [(item, error)])
            return True
        if item.abandoned:  # the caller went away (client disconnected)
            self._metrics.work_dropped.labels("model", "disconnected").inc()
            return True
        return False

    def _next(self, timeout: float) -> _Item | None:
        """The next queued item, waiting at most `timeout` s for one (else queue.Empty)."""
        if timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _dispatch(self, batch: list[_Item]) -> None:
        """Run one batch; whatever goes wrong ends up in its requests, never in the thread."""
        try:
            outcomes = self._run_batch(batch)
        except Exception as exc:
            log.exception("batch failed", extra={"requests": len(batch)})
            outcomes = [exc] * len(batch)
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_settle_all, list(zip(batch, outcomes, strict=True)))
        except RuntimeError:  # the event loop is closed: nobody waits for these any more
            log.warning("dropping results for a closed event loop")

    def _run_batch(self, batch: list[_Item]) -> list[Outcome]:
        served = self._holder.require()
        size = served.input_size
        fresh = [item for item in batch if item.pixels.shape[1:3] == (size, size)]
        results: dict[int, BatchResult] = {}
        if fresh:
            labels = (str(served.version), served.variant)
            now = time.monotonic()
            for item in fresh:
                self._metrics.batch_queue.labels(*labels).observe(now - item.enqueued)
            images = np.concatenate([item.pixels for item in fresh]) if len(fresh) > 1 \
                else fresh[0].pixels
            started = time.perf_counter()
            ids = served.model.class_ids(images)
            self._metrics.model_inference.labels(*labels).observe(time.perf_counter() - started)
            self._metrics.batch_size.labels(*labels).observe(len(images))
            offset = 0
            for item in fresh:
                k = len(item.pixels)
                results[id(item)] = BatchResult(ids[offset:offset + k], served.name,
                                                served.version, served.variant, size)
                offset += k
        return [results.get(id(item)) or StaleInput() for item in batch]


def _settle_all(settled: list[tuple[_Item, Outcome]]) -> None:
    """Resolve the requests' futures on their event loop, unless a client gave up (cancelled)."""
    for item, outcome in settled:
        if item.future.done():
            continue
        if isinstance(outcome, BaseException):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(outcome)
