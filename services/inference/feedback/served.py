"""What /v1/segment keeps about an answer, so that feedback can refer back to it later.

Feedback on a request needs that request's image (to store the training pair), the mask that
was served (to score it) and the version that served it (to label the score). A sampled share
of answers (`feedback_sample_rate`) is kept in Redis under a feedback token the server draws
(128 random bits, sent back as `X-Feedback-Token`), never under an id the client chose, and
bound to the caller who received it: a correction needs the token and the same caller. Shared
by every API pod, so feedback may reach another pod than the one that answered, and bounded
three ways:
each entry expires (`feedback_ttl_seconds`), entries larger than `feedback_max_entry_bytes` are
not kept, and at most `feedback_max_entries` are kept (the oldest are dropped first), so Redis
never holds more than max entries x max entry bytes for feedback. A process keeps at most
`feedback_max_kept_per_second` answers per second (a token bucket): under load the rest get no
token, which is what the bound would have done to them seconds later anyway.

Keeping runs in the background: the answer is not delayed by a Redis write of a whole image,
and Redis trouble is logged, never seen by /v1/segment. One writer task sends the answers
kept since its last round trip as one pipeline, so under load a write costs the event loop a
share of a round trip rather than a task and a round trip per answer. After an error Redis is
left alone for `cache_retry_seconds`, as the result cache does. A feedback request for an
answer whose write is still queued or in flight in this process waits for it, so a fast client
cannot overtake its own entry.

One correction per served answer: the claim is made on (model, version, image digest), not on
the token, so sending the same image again (a new token each time) cannot add a second score
for what is the same answer. Claims outlive entries (`CLAIM_TTL_SECONDS`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from shared.errors import MaskfleetError, NotFound
from shared.model.runtime import SAVEDMODEL

from ..backoff import RedisBackoff
from ..settings import InferenceSettings

KEY_PREFIX = "maskfleet:feedback:served"
INDEX_KEY = "maskfleet:feedback:index"
"""Sorted set of entry keys by the time they were kept (Redis clock, microseconds)."""
CLAIM_PREFIX = "maskfleet:feedback:claimed"
"""One key per corrected (model, version, image digest): a second correction gets a 409."""
CLAIM_TTL_SECONDS = 30 * 24 * 3600
"""How long a correction blocks others for the same answer: beyond the longest entry TTL, and
longer than a rollout needs to decide on the scores."""
TOKEN_BYTES = 16
REDIS_TIMEOUT_SECONDS = 2.0
"""Writes carry whole images and run in the background; the result cache's 50 ms budget would
drop large ones, and a slow Redis delays only feedback here, never an answer."""
CONNECT_TIMEOUT_SECONDS = 1.0
"""The state Redis is durable, not a cache: a busy node may take longer than the cache's 50 ms
to accept a connection, and a refused connection fails at once anyway."""
MAX_PENDING_WRITES = 32
"""Answers queued or in flight at once; more are not kept, so a stalled Redis cannot pile up
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
# ARGV[3] = 0 claims without an entry in Redis: an answer kept durably (kept.py).
_CLAIM = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return nil end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then return 1 end
return 0
"""

# Release a claim only if it is still ours (storing the pair failed).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

log = logging.getLogger(__name__)


class FeedbackUnavailable(MaskfleetError):
    """Feedback needs Redis (where served answers are kept); /v1/segment does not."""

    status = 503
    code = "feedback_unavailable"
    title = "Feedback is unavailable"


class RequestNotKept(NotFound):
    code = "feedback_token_unknown"
    title = "No served mask is kept for that feedback token"

    def __init__(self) -> None:
        super().__init__(
            "no served mask is kept for that feedback token: it is unknown, was issued to "
            "another caller, or expired")


class AlreadyCorrected(MaskfleetError):
    status = 409
    code = "feedback_already_received"
    title = "This answer already received its correction"


def new_token() -> str:
    """A feedback token: random, URL-safe, 22 characters."""
    return secrets.token_urlsafe(TOKEN_BYTES)


@dataclass(frozen=True)
class ServedMask:
    """One answer of /v1/segment as feedback needs it."""

    token: str
    """Server-drawn id of this answer, handed to the caller as `X-Feedback-Token`."""
    caller: str
    """Id of the caller the answer was served to; only they may correct it."""
    request_id: str
    """The answer's X-Request-Id, for logs only (clients may choose it)."""
    model: str
    version: int
    image: bytes
    image_sha256: str
    mask_png: bytes
    cached: bool
    variant: str = SAVEDMODEL
    """The runtime build that answered, so the feedback IoU is labelled like the answer."""

    @property
    def answer_key(self) -> str:
        """What "the same served answer" means: same model, version and image bytes."""
        return f"{self.model}:{self.version}:{self.image_sha256}"

    def to_bytes(self) -> bytes:
        """A JSON head line, then the image and the mask PNG back to back (no base64)."""
        head = json.dumps({"token": self.token, "caller": self.caller, "id": self.request_id,
                           "model": self.model, "version": self.version, "variant": self.variant,
                           "sha256": self.image_sha256, "cached": self.cached,
                           "image_bytes": len(self.image)}, separators=(",", ":"))
        return head.encode() + b"\n" + self.image + self.mask_png

    @classmethod
    def from_bytes(cls, data: bytes) -> ServedMask:
        head, _, rest = data.partition(b"\n")
        meta = json.loads(head)
        split = int(meta["image_bytes"])
        return cls(str(meta["token"]), str(meta["caller"]), str(meta["id"]),
                   str(meta["model"]), int(meta["version"]), rest[:split],
                   str(meta["sha256"]), rest[split:], bool(meta["cached"]),
                   str(meta.get("variant", SAVEDMODEL)))


class ServedLog(Protocol):
    """What /v1/segment hands every answer to; True when it is kept (a token is then sent)."""

    def remember(self, served: ServedMask) -> bool: ...


def entry_key(token: str) -> str:
    return f"{KEY_PREFIX}:{token}"


def claim_key(served: ServedMask) -> str:
    return f"{CLAIM_PREFIX}:{served.answer_key}"


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
        max_per_second: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._sample_rate = sample_rate
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._max_entry_bytes = max_entry_bytes
        self._owns_client = owns_client
        self._sample = sample
        self._max_per_second = max_per_second
        self._clock = clock
        self._allowance = max(max_per_second, 1.0)
        """Token bucket of answers that may still be kept (one second's worth at most)."""
        self._refilled = clock()
        self._backoff = RedisBackoff(retry_seconds, "feedback store", log)
        self._pending: dict[str, asyncio.Future[None]] = {}
        """Token -> the round trip that carries it (queued or in flight)."""
        self._queue: list[ServedMask] = []
        self._next: asyncio.Future[None] | None = None
        """Settled once the queued answers' round trip ends."""
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: InferenceSettings,
                      client: redis.Redis | None = None) -> RedisServedLog:  # type: ignore[type-arg]
        """A log on the state Redis role (kept answers must survive a cache flush), with its
        own connection pool (or on `client`)."""
        owns = client is None
        if client is None:
            # One retry on a fresh connection: a restarted state Redis leaves every pooled
            # connection dead, and the first request after it must not fail for that.
            client = settings.state_redis().with_timeouts(
                REDIS_TIMEOUT_SECONDS, CONNECT_TIMEOUT_SECONDS, retries=1).async_client()
        return cls(client, sample_rate=settings.feedback_sample_rate,
                   ttl_seconds=settings.feedback_ttl_seconds,
                   max_entries=settings.feedback_max_entries,
                   max_entry_bytes=settings.feedback_max_entry_bytes,
                   retry_seconds=settings.cache_retry_seconds, owns_client=owns,
                   max_per_second=settings.feedback_max_kept_per_second)

    @property
    def client(self) -> redis.Redis:  # type: ignore[type-arg]
        """The connection pool, shared with the rate limiter (both are feedback-path Redis)."""
        return self._client

    def wanted(self, served: ServedMask) -> bool:
        """Sampled in, small enough, Redis not being left alone after an error, and within
        the rate cap."""
        if self._sample_rate <= 0.0 or self._sample() >= self._sample_rate:
            return False
        size = len(served.image) + len(served.mask_png)
        if size > self._max_entry_bytes:
            log.debug("answer too large to keep for feedback",
                      extra={"request_id": served.request_id, "bytes": size})
            return False
        return self._backoff.open and (self._max_per_second <= 0.0 or self._take())

    def _take(self) -> bool:
        """One answer's worth from the rate bucket, if any is left."""
        now = self._clock()
        self._allowance = min(max(self._max_per_second, 1.0), self._allowance
                              + (now - self._refilled) * self._max_per_second)
        self._refilled = now
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True

    def remember(self, served: ServedMask) -> bool:
        """Queue `served` for keeping if it is wanted; returns without waiting for Redis."""
        if not self.wanted(served):
            return False
        if len(self._pending) >= MAX_PENDING_WRITES:  # Redis is too slow: leave it alone too
            self._failed("keep", TimeoutError(f"{MAX_PENDING_WRITES} writes still in flight"))
            return False
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        self._queue.append(served)
        self._pending[served.token] = self._next
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="keep-served")
        return True

    async def _write(self) -> None:
        """Send what was queued, one pipeline per round trip, until nothing is left."""
        try:
            while self._queue and self._next is not None:
                batch, self._queue = self._queue, []
                done, self._next = self._next, None
                try:
                    await self._keep(batch)
                finally:
                    done.set_result(None)
                    for served in batch:
                        if self._pending.get(served.token) is done:
                            del self._pending[served.token]
        except asyncio.CancelledError:
            self._drop_queued()  # shutdown: nothing will send them, nobody may wait for them
            raise
        finally:
            self._writer = None

    def _drop_queued(self) -> None:
        """Forget the answers still queued (not kept) and settle the round trip they waited
        for, so a lookup of one of them ends (as unknown) instead of waiting forever."""
        queued, self._queue = self._queue, []
        waiting, self._next = self._next, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        for served in queued:
            if self._pending.get(served.token) is waiting:
                del self._pending[served.token]

    async def _keep(self, batch: list[ServedMask]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for served in batch:
            pipe.eval(_KEEP, 2, entry_key(served.token), INDEX_KEY,  # type: ignore[no-untyped-call]
                      served.to_bytes(), self._ttl, self._max_entries)
        try:
            outcomes = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # a background write has no caller to report to
            self._failed("keep", exc)
            return
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            self._failed("keep", failed[0])
        dropped = sum(int(o) for o in outcomes if isinstance(o, int))
        if dropped:
            log.debug("dropped the oldest answers kept for feedback", extra={"dropped": dropped})

    def _failed(self, action: str, exc: BaseException) -> None:
        self._backoff.trip(action, exc)

    async def find(self, token: str, caller: str) -> ServedMask | None:
        """The answer kept under `token` for `caller`; None when unknown, expired, dropped or
        served to someone else; 409 once that answer was corrected."""
        pending = self._pending.get(token)
        if pending is not None:
            await asyncio.wait([pending])
        raw = await self._call(self._client.get(entry_key(token)))
        if raw is None:
            return None
        served = ServedMask.from_bytes(raw)
        if served.caller != caller:
            return None
        await self.refuse_corrected(served)
        return served

    async def refuse_corrected(self, served: ServedMask) -> None:
        """409 when that answer (same model, version and image) was corrected already."""
        if await self._call(self._client.exists(claim_key(served))):
            raise AlreadyCorrected("this answer (same model version and image) already "
                                   "received a corrected mask")

    async def claim(self, served: ServedMask, *, kept_here: bool = True) -> None:
        """Mark the answer as corrected, exactly once even when two corrections race;
        `kept_here=False` for an answer found in durable storage, not in this log."""
        outcome = await self._call(self._client.eval(  # type: ignore[no-untyped-call]
            _CLAIM, 2, entry_key(served.token), claim_key(served), served.token,
            CLAIM_TTL_SECONDS, "1" if kept_here else "0"))
        if outcome is None:
            raise RequestNotKept()
        if int(outcome) == 0:
            raise AlreadyCorrected("this answer (same model version and image) already "
                                   "received a corrected mask")

    async def release(self, served: ServedMask) -> None:
        """Drop our claim (storing the pair failed), so the client can retry."""
        await self._call(self._client.eval(  # type: ignore[no-untyped-call]
            _RELEASE, 1, claim_key(served), served.token))

    async def _call(self, pending: Any) -> Any:
        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise FeedbackUnavailable(f"the feedback store (Redis) failed: "
                                      f"{type(exc).__name__}") from None

    async def close(self) -> None:
        """Let in-flight writes finish (briefly), stop the writer if they do not, then close
        our own connections."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait([writer], timeout=CLOSE_TIMEOUT_SECONDS)
            if not writer.done():
                writer.cancel()
                await asyncio.wait([writer])
        if self._owns_client:
            await self._client.aclose()  # type: ignore[attr-defined]
