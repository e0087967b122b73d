"""The result cache: keys that change with everything that changes a mask, and a Redis
outage that costs nothing but the cache."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.inference.cache import CachedMask, ResultCache, cache_key
from services.inference.metrics import ApiMetrics
from shared.imaging import PREPROCESSING_ID

pytestmark = pytest.mark.anyio

MASK = CachedMask(b"\x89PNG fake", 500, 375, {"pet": 0.25, "background": 0.7, "border": 0.05})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeRedis:
    """Just GET/SET, and a switch that makes every call fail like an unreachable server."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.calls = 0
        self.error: Exception | None = None
        self.ttls: dict[str, int] = {}

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        if self.error:
            raise self.error
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ex: int) -> None:
        self.calls += 1
        if self.error:
            raise self.error
        self.data[key] = value
        self.ttls[key] = ex

    async def aclose(self) -> None:
        pass


def make_cache(client, retry_seconds: float = 3600.0, max_value_bytes: int = 10_000):
    metrics = ApiMetrics()
    cache = ResultCache(client, metrics, ttl_seconds=60, max_value_bytes=max_value_bytes,
                        retry_seconds=retry_seconds)
    return cache, metrics.registry.get_sample_value


def test_the_key_names_model_version_preprocessing_and_content():
    key = cache_key("unet", 3, "savedmodel", 128, "ab" * 32)
    assert key.startswith("maskfleet:mask:unet:3/savedmodel:")
    assert PREPROCESSING_ID in key
    assert key.endswith("ab" * 32)
    others = {cache_key("unet", 4, "savedmodel", 128, "ab" * 32),
              cache_key("unet", 3, "savedmodel", 256, "ab" * 32),
              cache_key("other", 3, "savedmodel", 128, "ab" * 32),
              cache_key("unet", 3, "savedmodel", 128, "cd" * 32),
              cache_key("unet", 3, "int8", 128, "ab" * 32),
              cache_key("unet", 3, "fp32", 128, "ab" * 32)}
    assert key not in others
    assert len(others) == 6


def test_a_cached_mask_round_trips():
    assert CachedMask.from_bytes(MASK.to_bytes()) == MASK


async def test_hit_miss_and_unreadable_entries():
    redis = FakeRedis()
    cache, sample = make_cache(redis)
    assert await cache.get("k") is None
    await cache.put("k", MASK)
    assert await cache.get("k") == MASK
    assert redis.ttls["k"] == 60
    redis.data["k"] = b"garbage"
    assert await cache.get("k") is None
    assert (sample("maskfleet_cache_hits_total"), sample("maskfleet_cache_misses_total"),
            sample("maskfleet_cache_errors_total")) == (1, 2, 0)


async def test_masks_larger_than_the_bound_are_not_stored():
    redis = FakeRedis()
    cache, _ = make_cache(redis, max_value_bytes=100)
    await cache.put("big", CachedMask(b"\x89PNG" + b"x" * 200, 1, 1, {}))
    assert redis.data == {}


async def test_redis_errors_are_counted_and_redis_is_left_alone_for_a_while():
    redis = FakeRedis()
    cache, sample = make_cache(redis)
    redis.error = RedisConnectionError("connection refused")
    assert await cache.get("k") is None
    await cache.put("k", MASK)
    assert await cache.get("k") is None
    assert redis.calls == 1  # after the error, no request pays for another timeout
    assert sample("maskfleet_cache_errors_total") == 1
    assert sample("maskfleet_cache_misses_total") == 2


async def test_the_cache_is_used_again_once_redis_answers():
    redis = FakeRedis()
    cache, sample = make_cache(redis, retry_seconds=0.0)
    redis.error = RedisTimeoutError("Timeout reading from socket")
    await cache.put("k", MASK)
    redis.error = None
    await cache.put("k", MASK)
    assert await cache.get("k") == MASK
    assert sample("maskfleet_cache_errors_total") == 1


async def test_a_disabled_cache_answers_misses():
    cache, sample = make_cache(None)
    await cache.put("k", MASK)
    assert await cache.get("k") is None
    assert sample("maskfleet_cache_misses_total") == 1
    await cache.close()
