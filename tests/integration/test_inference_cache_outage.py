"""Redis is an optimisation: stopped, restarted or stalled, the API keeps answering 200 and
uses the cache again as soon as Redis does, without a restart."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.test_inference_support import (
    assert_trimap,
    mask_of,
    metric,
    photo,
    segment,
    start_api,
)
from tests.servers import running, start_redis, wait_until

pytestmark = pytest.mark.integration


def test_redis_down_restarted_and_stalled(tiny_model_repo: Path, tmp_path: Path):
    cache = start_redis(log=tmp_path / "redis.log")
    api = start_api(tiny_model_repo, tmp_path, f"redis://127.0.0.1:{cache.port}/0",
                    cache_retry_seconds=0.2, stage_poll_seconds=0)
    with running(api), httpx.Client(timeout=30) as client:
        try:
            def cache_state(image: bytes) -> str:
                answer = segment(client, api, image)
                assert answer.status_code == 200, answer.text
                assert_trimap(mask_of(answer), 96, 72)
                return answer.headers["x-cache"]

            known = photo(1)
            assert [cache_state(known), cache_state(known)] == ["miss", "hit"]

            cache.stop()
            errors = metric(api, "maskfleet_cache_errors_total")
            assert [cache_state(image) for image in (known, photo(2), known)] == ["miss"] * 3
            assert metric(api, "maskfleet_cache_errors_total") > errors

            cache = start_redis(port=cache.port, log=tmp_path / "redis.log")
            fresh = photo(3)
            wait_until(lambda: cache_state(fresh) == "hit", 30,
                       "the API to cache in the restarted Redis")

            # a stalled Redis (every command waits 4 s) costs a short timeout, not the request
            redis.Redis(port=cache.port).client_pause(4000)
            errors = metric(api, "maskfleet_cache_errors_total")
            assert cache_state(fresh) == "miss"
            assert metric(api, "maskfleet_cache_errors_total") > errors
            wait_until(lambda: cache_state(fresh) == "hit", 30, "the pause to end")
        finally:
            cache.stop()
