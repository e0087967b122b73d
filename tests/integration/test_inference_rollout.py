"""Promoting a version while clients keep calling: the API swaps to it with no failed request,
and no client sees the old version again once it has seen the new one."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from shared.repository import ModelRepository
from tests.integration.test_inference_support import metric, photo, segment, start_api, url
from tests.servers import Server, running, wait_until

pytestmark = pytest.mark.integration
CLIENTS = 4


def test_a_stage_change_under_load_swaps_versions_without_failures(
        tiny_model_repo: Path, redis_server: Server, tmp_path: Path):
    root = tmp_path / "models"
    shutil.copytree(tiny_model_repo, root)  # the session repository stays at version 1
    repo = ModelRepository(str(root))
    api = start_api(root, tmp_path, f"redis://127.0.0.1:{redis_server.port}/0",
                    stage_poll_seconds=0.2)
    seen: list[list[str]] = [[] for _ in range(CLIENTS)]
    failures: list[str] = []
    stop = threading.Event()

    def load(index: int) -> None:
        with httpx.Client(timeout=30) as client:
            seed = index * 100_000
            while not stop.is_set():
                seed += 1
                try:
                    answer = segment(client, api, photo(seed, (64, 48)))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text}")
                else:
                    seen[index].append(answer.headers["x-model-version"].split("/")[0])

    with running(api), ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(load, i) for i in range(CLIENTS)]
        try:
            wait_until(lambda: all(len(s) >= 3 for s in seen), 60, "traffic on version 1")
            repo.set_stage("unet", "production", 2)
            wait_until(lambda: all(s[-1] == "2" for s in seen), 60, "every client on version 2")
            counts = [len(s) for s in seen]
            wait_until(lambda: all(len(s) >= c + 3 for s, c in zip(seen, counts, strict=True)),
                       60, "more traffic on version 2")
        finally:
            stop.set()
            for done in clients:
                done.result()
        assert failures == []
        for versions in seen:
            first_new = versions.index("2")
            assert set(versions[:first_new]) == {"1"}
            assert set(versions[first_new:]) == {"2"}, "a client saw version 1 after version 2"
        assert httpx.get(url(api, "/readyz")).json()["version"] == 2
        assert metric(api, "maskfleet_model_swaps_total", model="unet") == 1
        assert metric(api, "maskfleet_model_info", version="2", stage="production") == 1
        assert metric(api, "maskfleet_model_info", version="1") == 0
        assert metric(api, "maskfleet_model_eval_metric", version="2",
                      metric="mean_iou") == pytest.approx(0.7)
