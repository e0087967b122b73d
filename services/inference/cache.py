"""Redis result cache: a mask computed once is served again without touching the model.

The key names everything that determines the mask: model name, version, variant (an int8
build may answer a few pixels differently from the SavedModel), the preprocessing
(id and input size) and the SHA-256 of the image bytes, so a new version or a preprocessing
change can never serve a stale mask. The cache is an optimisation, never a dependency: every
Redis error or timeout (short socket timeouts, no client retries) is counted and the request
carries on uncached. After an error Redis is left alone for `cache_retry_seconds`, so a dead
Redis costs one timeout per interval rather than one per request; the next attempt reconnects
by itself, so a restarted Redis is used again without restarting the API.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

from shared.imaging import PREPROCESSING_ID

from .backoff import RedisBackoff
from .metrics import ApiMetrics
from .settings import InferenceSettings

KEY_PREFIX = "maskfleet:mask"

log = logging.getLogger(__name__)


def cache_key(model: str, version: int, variant: str, input_size: int,
              image_sha256: str) -> str:
    return (f"{KEY_PREFIX}:{model}:{version}/{variant}:{PREPROCESSING_ID}@{input_size}:"
            f"{image_sha256}")


@dataclass(frozen=True)
class CachedMask:
    """What a hit must reproduce: the PNG plus the numbers the JSON answer shows."""

    png: bytes
    width: int
    height: int
    fractions: dict[str, float]

    def to_bytes(self) -> bytes:
        head = json.dumps({"w": self.width, "h": self.height, "f": self.fractions},
                          separators=(",", ":"))
        return head.encode() + b"\n" + self.png

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedMask:
        head, _, png = data.partition(b"\n")
        meta = json.loads(head)
        if not png.startswith(b"\x89PNG"):
            raise ValueError("cached value holds no PNG")
        return cls(png, int(meta["w"]), int(meta["h"]),
                   {str(k): float(v) for k, v in meta["f"].items()})


class ResultCache:
    def __init__(
        self,
        client: redis.Redis | None,  # type: ignore[type-arg]
        metrics: ApiMetrics,
        *,
        ttl_seconds: int,
        max_value_bytes: int,
        retry_seconds: float,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._ttl = ttl_seconds
        self._max_value_bytes = max_value_bytes
        self._backoff = RedisBackoff(retry_seconds, "result cache", log)

    @classmethod
    def from_settings(cls, settings: InferenceSettings, metrics: ApiMetrics,
                      client: redis.Redis | None = None) -> ResultCache:  # type: ignore[type-arg]
        """A cache on the cache Redis role (or on `client`), or a disabled one."""
        if not settings.cache_enabled:
            client = None
        elif client is None:
            client = settings.cache_redis().async_client()
        return cls(client, metrics, ttl_seconds=settings.cache_ttl_seconds,
                   max_value_bytes=settings.cache_max_value_bytes,
                   retry_seconds=settings.cache_retry_seconds)

    def _usable(self) -> redis.Redis | None:  # type: ignore[type-arg]
        if self._client is None or not self._backoff.open:
            return None
        return self._client

    def _failed(self, action: str, exc: Exception) -> None:
        self._metrics.cache_errors.inc()
        self._backoff.trip(action, exc)

    async def get(self, key: str) -> CachedMask | None:
        """The cached mask, or None on a miss, a bypass or any Redis trouble."""
        client = self._usable()
        found = None
        if client is not None:
            try:
                raw = await client.get(key)
            except (RedisError, OSError) as exc:
                self._failed("get", exc)
            else:
                found = _decode(raw)
        (self._metrics.cache_hits if found else self._metrics.cache_misses).inc()
        return found

    async def put(self, key: str, mask: CachedMask) -> None:
        client = self._usable()
        if client is None:  # disabled or backing off: not even the value is built
            return
        value = mask.to_bytes()
        if len(value) > self._max_value_bytes:
            return
        try:
            await client.set(key, value, ex=self._ttl)
        except (RedisError, OSError) as exc:
            self._failed("set", exc)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()  # type: ignore[attr-defined]


def _decode(raw: bytes | str | None) -> CachedMask | None:
    """The cached mask; the cache client never decodes replies, so a str (which redis-py's
    hints admit) is as unreadable as a damaged entry."""
    if raw is None:
        return None
    if isinstance(raw, str):
        log.warning("ignoring a cache entry that came back as text")
        return None
    try:
        return CachedMask.from_bytes(raw)
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring an unreadable cache entry")
        return None
