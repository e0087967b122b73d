"""Per-key rate limits on feedback and job submission: a token bucket kept in Redis.

Every API pod shares the bucket, so the limit holds per key however many replicas there are.
A key may send `burst` requests at once, then `rate_per_minute` on average; beyond that the
answer is 429 with `Retry-After` (whole seconds, rounded up). The bucket lives in one Redis hash
per (action, caller) and refills by Redis' own clock in one atomic script, so two pods never
both spend the last token. Both limited actions need Redis anyway (kept answers, the job
queue), so a Redis failure is that action's 503, never a silent "no limit".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import redis.asyncio as redis
from fastapi import Depends, Request
from redis.exceptions import RedisError

from shared.errors import JobsUnavailable, MaskfleetError, RateLimited
from shared.redis import plain_reason

from .auth import Caller, RequireScope
from .feedback import FeedbackUnavailable
from .settings import InferenceSettings

Action = Literal["feedback", "jobs"]
KEY_PREFIX = "maskfleet:ratelimit"

log = logging.getLogger(__name__)

# Returns the seconds to wait as a string (0 = allowed and one token spent).
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


@dataclass(frozen=True)
class Bucket:
    per_minute: float
    burst: int
    unavailable: Callable[[str], MaskfleetError]
    store: str
    """The Redis the action needs anyway, named in the 503 (the bucket lives there too)."""


class RateLimiter:
    """Spends one token of the caller's bucket for an action, or raises 429."""

    def __init__(self, client: redis.Redis, buckets: dict[Action, Bucket]) -> None:  # type: ignore[type-arg]
        self._client = client
        self._buckets = buckets

    @classmethod
    def from_settings(cls, settings: InferenceSettings,
                      client: redis.Redis) -> RateLimiter:  # type: ignore[type-arg]
        return cls(client, {
            "feedback": Bucket(settings.feedback_rate_per_minute, settings.feedback_burst,
                               FeedbackUnavailable, "the feedback store"),
            "jobs": Bucket(settings.jobs_rate_per_minute, settings.jobs_burst, JobsUnavailable,
                           "the job store"),
        })

    async def take(self, action: Action, caller: str) -> None:
        bucket = self._buckets[action]
        try:
            wait = float(await self._client.eval(  # type: ignore[no-untyped-call]
                _TAKE, 1, f"{KEY_PREFIX}:{action}:{caller}", bucket.per_minute / 60.0,
                bucket.burst))
        except (RedisError, OSError) as exc:
            log.warning("rate limiter failed", extra={"action": action,
                                                      "error": type(exc).__name__})
            raise bucket.unavailable(plain_reason(exc, bucket.store)) from None
        if wait > 0:
            raise RateLimited(f"{caller!r} sent more than {bucket.burst} {action} requests at "
                              f"once or {bucket.per_minute:g} per minute",
                              retry_after=math.ceil(wait))


class Limited:
    """`Depends(Limited("jobs"))`: the caller holds the scope and has a token left."""

    def __init__(self, action: Action) -> None:
        self.action = action
        self._scope = RequireScope(action)

    async def __call__(self, request: Request) -> Caller:
        caller = await self._scope(request)
        limiter: RateLimiter = request.app.state.rate_limiter
        await limiter.take(self.action, caller.id)
        return caller


def _limited(action: Action) -> Any:
    return Depends(Limited(action))


FeedbackSender = Annotated[Caller, _limited("feedback")]
JobSubmitter = Annotated[Caller, _limited("jobs")]
