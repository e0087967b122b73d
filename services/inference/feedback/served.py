"""What /v1/segment keeps about an answer, so that feedback can refer back to it later.

Feedback on a request needs that request's image (to store the training pair), the mask that
was served (to score it) and the version that served it (to label the score). A sampled share
of answers (`feedback_sample_rate`) is kept in Redis under its request id: shared by every API
pod, so feedback may reach another pod than the one that answered, and bounded three ways:
each entry expires (`feedback_ttl_seconds`), entries larger than `feedback_max_entry_bytes` are
not kept, and at most `feedback_max_entries` are kept (the oldest are dropped first), so Redis
never holds more than max entries x max entry bytes for feedback.

Keeping runs in a background task: the answer is not delayed by a Redis write of a whole image,
and Redis trouble is logged, never seen by /v1/segment. After an error Redis is left alone for
`cache_retry_seconds`, as the result cache does. A feedback request for an answer whose write is
still in flight in this process waits for it, so a fast client cannot overtake its own entry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from shared.errors import MaskfleetError, NotFound

from ..backoff import RedisBackoff
from ..settings import InferenceSettings

KEY_PREFIX = "maskfleet:feedback:served"
INDEX_KEY = "maskfleet:feedback:index"
"""Sorted set of entry keys by the time they were kept (Redis clock, microseconds)."""
CLAIMED = b"claimed"
"""Replaces an entry once its feedback is accepted: a second correction gets a 409."""
REDIS_TIMEOUT_SECONDS = 2.0
"""Writes carry whole images and run in the background; the result cache's 50 ms budget would
drop large ones, and a slow Redis delays only feedback here, never an answer."""
MAX_PENDING_WRITES = 32
"""Background writes in flight at once; more are dropped so a stalled Redis cannot pile up
images in the API's memory."""
CLOSE_TIMEOUT_SECONDS = 5.0

# One round trip, atomic: keep the entry, index it, forget index members that expired, drop the
# oldest entries beyond the bound. TIME is Redis' clock, the same for every API pod.
_KEEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl * 1000000)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do redis.call('DEL', oldest[i]) end
end
redis.call('EXPIRE', KEYS[2], ttl)
return math.max(over, 0)
"""

# 1 = claimed now, 0 = claimed before, nil = no such entry (unknown, expired or dropped).
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if not value then return nil end
if value == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1
"""

log = logging.getLogger(__name__)


class FeedbackUnavailable(MaskfleetError):
    """Feedback needs Redis (where served answers are kept); /v1/segment does not."""

    status = 503
    code = "feedback_unavailable"
    title = "Feedback is unavailable"


class RequestNotKept(NotFound):
    code = "request_not_found"
    title = "No served mask is kept for that request id"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"no served mask is kept for request {request_id}: the id is unknown, its answer "
            "was not sampled or was too large to keep, or it expired")


class AlreadyCorrected(MaskfleetError):
    status = 409
    code = "feedback_already_received"
    title = "This request already received its correction"


@dataclass(frozen=True)
class ServedMask:
    """One answer of /v1/segment as feedback needs it."""

    request_id: str
    model: str
    version: int
    image: bytes
    image_sha256: str
    mask_png: bytes
    cached: bool

    def to_bytes(self) -> bytes:
        """A JSON head line, then the image and the mask PNG back to back (no base64)."""
        head = json.dumps({"id": self.request_id, "model": self.model, "version": self.version,
                           "sha256": self.image_sha256, "cached": self.cached,
                           "image_bytes": len(self.image)}, separators=(",", ":"))
        return head.encode() + b"\n" + self.image + self.mask_png

    @classmethod
    def from_bytes(cls, data: bytes) -> ServedMask:
        head, _, rest = data.partition(b"\n")
        meta = json.loads(head)
        split = int(meta["image_bytes"])
        return cls(str(meta["id"]), str(meta["model"]), int(meta["version"]), rest[:split],
                   str(meta["sha256"]), rest[split:], bool(meta["cached"]))


class ServedLog(Protocol):
    """What /v1/segment hands every answer to."""

    async def remember(self, served: ServedMask) -> None: ...


def entry_key(request_id: str) -> str:
    return f"{KEY_PREFIX}:{request_id}"


class RedisServedLog:
    """Keeps a sampled, bounded, expiring share of answers in Redis for `POST /v1/feedback`."""

    def __init__(
        self,
        client: redis.Redis,  # type: ignore[type-arg]
        *,
        sample_rate: float,
        ttl_seconds: int,
        max_entries: int,
        max_entry_bytes: int,
        retry_seconds: float,
        owns_client: bool = False,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self._client = client
        self._sample_rate = sample_rate
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._max_entry_bytes = max_entry_bytes
        self._owns_client = owns_client
        self._sample = sample
        self._backoff = RedisBackoff(retry_seconds, "feedback store", log)
        self._pending: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def from_settings(cls, settings: InferenceSettings,
                      client: redis.Redis | None = None) -> RedisServedLog:  # type: ignore[type-arg]
        """A log on the state Redis role (kept answers must survive a cache flush), with its
        own connection pool (or on `client`)."""
        owns = client is None
        if client is None:
            client = settings.state_redis().with_timeouts(
                REDIS_TIMEOUT_SECONDS, settings.redis_connect_timeout_ms / 1000,
                retries=0).async_client()
        return cls(client, sample_rate=settings.feedback_sample_rate,
                   ttl_seconds=settings.feedback_ttl_seconds,
                   max_entries=settings.feedback_max_entries,
                   max_entry_bytes=settings.feedback_max_entry_bytes,
                   retry_seconds=settings.cache_retry_seconds, owns_client=owns)

    def wanted(self, served: ServedMask) -> bool:
        """Sampled in, small enough, and Redis not being left alone after an error."""
        if self._sample_rate <= 0.0 or self._sample() >= self._sample_rate:
            return False
        size = len(served.image) + len(served.mask_png)
        if size > self._max_entry_bytes:
            log.debug("answer too large to keep for feedback",
                      extra={"request_id": served.request_id, "bytes": size})
            return False
        return self._backoff.open

    async def remember(self, served: ServedMask) -> None:
        """Start keeping `served` if it is wanted; returns without waiting for Redis."""
        if not self.wanted(served):
            return
        if len(self._pending) >= MAX_PENDING_WRITES:  # Redis is too slow: leave it alone too
            self._failed("keep", TimeoutError(f"{MAX_PENDING_WRITES} writes still in flight"))
            return
        request_id = served.request_id
        task = asyncio.create_task(self._keep(served), name=f"keep-served-{request_id}")
        self._pending[request_id] = task
        task.add_done_callback(lambda done: self._forget(request_id, done))

    def _forget(self, request_id: str, task: asyncio.Task[None]) -> None:
        if self._pending.get(request_id) is task:
            del self._pending[request_id]

    async def _keep(self, served: ServedMask) -> None:
        try:
            dropped = await self._client.eval(  # type: ignore[no-untyped-call]
                _KEEP, 2, entry_key(served.request_id), INDEX_KEY, served.to_bytes(),
                self._ttl, self._max_entries)
        except Exception as exc:  # a background write has no caller to report to
            self._failed("keep", exc)
        else:
            if dropped:
                log.debug("dropped the oldest answers kept for feedback",
                          extra={"dropped": dropped})

    def _failed(self, action: str, exc: BaseException) -> None:
        self._backoff.trip(action, exc)

    async def find(self, request_id: str) -> ServedMask | None:
        """The kept answer, None when unknown, expired or dropped; 409 once corrected."""
        pending = self._pending.get(request_id)
        if pending is not None:
            await asyncio.wait([pending])
        raw = await self._call(self._client.get(entry_key(request_id)))
        if raw is None:
            return None
        if raw == CLAIMED:
            raise AlreadyCorrected(f"request {request_id} already received a corrected mask")
        return ServedMask.from_bytes(raw)

    async def claim(self, request_id: str) -> None:
        """Mark the entry as corrected, exactly once even when two corrections race."""
        outcome = await self._call(self._client.eval(  # type: ignore[no-untyped-call]
            _CLAIM, 1, entry_key(request_id), CLAIMED))
        if outcome is None:
            raise RequestNotKept(request_id)
        if int(outcome) == 0:
            raise AlreadyCorrected(f"request {request_id} already received a corrected mask")

    async def release(self, served: ServedMask) -> None:
        """Put a claimed entry back (storing its pair failed), so the client can retry."""
        await self._call(self._client.set(
            entry_key(served.request_id), served.to_bytes(), keepttl=True, xx=True))

    async def _call(self, pending: Any) -> Any:
        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise FeedbackUnavailable(f"the feedback store (Redis) failed: "
                                      f"{type(exc).__name__}") from None

    async def close(self) -> None:
        """Let in-flight writes finish (briefly), then close our own connections."""
        if self._pending:
            await asyncio.wait(list(self._pending.values()), timeout=CLOSE_TIMEOUT_SECONDS)
        if self._owns_client:
            await self._client.aclose()  # type: ignore[attr-defined]
