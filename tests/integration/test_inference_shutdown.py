"""SIGTERM (a rolling update, a scale-down) drains: the listener closes at once, and every
request already accepted is answered before the process exits."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.test_inference_support import (
    assert_trimap,
    mask_of,
    metric,
    photo,
    segment,
    start_api,
)
from tests.servers import Server, port_open, wait_until

pytestmark = pytest.mark.integration
REQUESTS = 6


def test_sigterm_answers_every_accepted_request(tiny_model_repo: Path, redis_server: Server,
                                                tmp_path: Path):
    # a long batch wait for arrivals parks the requests in the batcher, so they are surely in
    # flight
    api = start_api(tiny_model_repo, tmp_path, f"redis://127.0.0.1:{redis_server.port}/0",
                    batch_max_wait_ms=5000, batch_wait="always", batch_max_size=64,
                    cache_enabled="false",
                    stage_poll_seconds=0)

    def one(seed: int) -> tuple[httpx.Response, float]:
        with httpx.Client(timeout=60) as client:
            answer = segment(client, api, photo(seed))
            return answer, time.monotonic()

    try:
        with ThreadPoolExecutor(REQUESTS) as pool:
            pending = [pool.submit(one, seed) for seed in range(REQUESTS)]
            wait_until(lambda: metric(api, "maskfleet_http_requests_in_flight") == REQUESTS, 30,
                       "all requests in flight")
            terminated = time.monotonic()
            api.signal(signal.SIGTERM)
            wait_until(lambda: not port_open(api.port), 10, "the listener to close")
            results = [future.result() for future in pending]
        for answer, finished in results:
            assert answer.status_code == 200, answer.text
            assert_trimap(mask_of(answer), 96, 72)
            assert finished > terminated  # answered during the drain, not before it
        assert api.proc is not None
        # uvicorn re-raises the SIGTERM it handled once it has drained, so either status is fine
        assert api.proc.wait(30) in (0, -signal.SIGTERM)
        assert api.log is not None
        log = api.log.read_text()
        assert "Waiting for connections to close" in log
        assert "Application shutdown complete" in log
    finally:
        api.stop()
