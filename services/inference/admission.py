"""Admission control: per-request deadlines and the budgets of pixels and bytes in flight.

Together with the bounded batch queue (`batcher`) and codec queue (`codec`) these keep the
API's latency and memory within bounds under any load, as TF Serving's
`max_enqueued_batches` and Triton's `max_queue_size` / `default_queue_policy` do: work that
cannot be done in time is refused at once (503 + Retry-After) or dropped before it reaches the
model (504), never left to pile up.

A deadline is data, passed from the route down to the codec pool and the batcher; it is the
earliest of the server's `request_timeout_seconds`, the caller's `X-Request-Timeout` header
(seconds) and the Open Inference Protocol `timeout` parameter (microseconds, as Triton reads
it). A caller can shorten the server's limit, never extend it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from shared.errors import DeadlineExceeded, InvalidRequest, Overloaded

from .metrics import ApiMetrics

TIMEOUT_HEADER = "x-request-timeout"
OIP_TIMEOUT = "timeout"


@dataclass(frozen=True)
class Deadline:
    """When a request's work must be finished (a `time.monotonic()` instant)."""

    at: float
    seconds: float

    @classmethod
    def within(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def tightened(self, seconds: float | None) -> Deadline:
        """This deadline, or an earlier one `seconds` after the request started."""
        if seconds is None or seconds >= self.seconds:
            return self
        return Deadline(self.at - self.seconds + seconds, seconds)

    def exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"the request did not finish within its {self.seconds:g} s "
                                "deadline; its queued work was dropped")

    @asynccontextmanager
    async def enforce(self, metrics: ApiMetrics) -> AsyncIterator[None]:
        """Run the block within the deadline: on expiry its awaits are cancelled (which drops
        queued codec and model work) and the caller gets 504."""
        remaining = self.remaining()
        if remaining <= 0:
            metrics.deadline_exceeded.inc()
            raise self.exceeded()
        scope = asyncio.timeout(remaining)
        try:
            async with scope:
                yield
        except TimeoutError:
            if not scope.expired():
                raise
            metrics.deadline_exceeded.inc()
            raise self.exceeded() from None


def header_timeout(value: str | None) -> float | None:
    """`X-Request-Timeout: 2.5` -> 2.5 s; 400 when it is not a positive number of seconds."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequest(f"X-Request-Timeout must be a positive number of seconds, got "
                             f"{value[:40]!r}")
    return seconds


def oip_timeout(parameters: dict[str, object]) -> float | None:
    """The OIP/Triton request parameter `timeout` (microseconds) in seconds."""
    value = parameters.get(OIP_TIMEOUT)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequest("parameters.timeout must be a positive integer of microseconds")
    return value / 1_000_000


class PixelBudget:
    """Pixels of the requests being served, bounded: what bounds the API's memory.

    Every admitted request holds its images' pixel count (decoded images and full-size masks
    scale with it) until its answer is built; when the sum would pass `capacity`, the request
    is shed with 503 instead of joining the others in memory. Single-threaded: only the event
    loop touches it.
    """

    def __init__(self, capacity: int, metrics: ApiMetrics) -> None:
        self.capacity = capacity
        self.used = 0
        self._metrics = metrics
        metrics.pixels_in_flight.set_function(lambda: self.used)

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        if self.used + pixels > self.capacity:
            self._metrics.requests_shed.labels("pixel_budget").inc()
            raise Overloaded(f"{self.used} of the {self.capacity} pixels this server decodes "
                             f"at once are in use; this request needs {pixels}")
        self.used += pixels
        try:
            yield
        finally:
            self.used -= pixels


class BodyBudget:
    """Bytes of request bodies (REST) and request messages (gRPC) held at once, bounded.

    Without it, one limit per request does not bound memory: 150 slow 16 MB uploads held
    3.3 GB, and 100 gRPC calls each sending all but the last byte of a 16 MB message held
    1.5 GB (the pixel budget counts decoded images only). REST counts a body's bytes as they
    arrive (`take`, refused at once); a gRPC message is only handed over whole, so a call
    reserves the largest message it may send before its message is read (`reserve`, which
    waits for bytes to come back, up to a timeout) and gives back what it did not use. Bytes
    count until the answer is sent. Single-threaded: only the event loop touches it.
    """

    def __init__(self, capacity: int, metrics: ApiMetrics) -> None:
        self.capacity = capacity
        self.used = 0
        self._metrics = metrics
        self._waiting: list[asyncio.Future[None]] = []
        metrics.body_bytes_in_flight.set_function(lambda: self.used)

    def take(self, size: int) -> bool:
        """Take `size` bytes now if they fit (False, counted as shed, if not)."""
        if self._take(size):
            return True
        self._metrics.requests_shed.labels("body_budget").inc()
        return False

    def _take(self, size: int) -> bool:
        if self.used + size > self.capacity:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size
        if not self._waiting:  # every REST request ends here: nothing to allocate or wake
            return
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:  # each looks again; few wait at once
            if not waiter.done():
                waiter.set_result(None)

    async def reserve(self, size: int, timeout: float) -> None:
        """Take `size` bytes, waiting up to `timeout` seconds for others to give theirs
        back; `Overloaded` (503, RESOURCE_EXHAUSTED) after that."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while not self._take(size):
            left = until - loop.time()
            if left <= 0:
                self._metrics.requests_shed.labels("body_budget").inc()
                raise Overloaded(f"the server holds {self.used} of the {self.capacity} bytes "
                                 f"of requests it accepts at once; this call may need {size}")
            waiter = loop.create_future()
            self._waiting.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, left)
