"""Promoting a version while clients keep calling: the API swaps to it with no failed request,
and no client sees the old version again once it has seen the new one."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from shared.repository import ModelRepository
from tests.integration.test_inference_support import SteadyClients, metric, start_api, url
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
    load = SteadyClients(api, CLIENTS, first_seed=0)

    def versions() -> list[list[str]]:
        """Each client's answers so far, as version numbers (`2/savedmodel` -> `2`)."""
        return [[label.split("/")[0] for label in labels] for labels in load.seen]

    with running(api):
        with load:
            wait_until(lambda: all(len(s) >= 3 for s in versions()), 60, "traffic on version 1")
            repo.set_stage("unet", "production", 2)
            wait_until(lambda: all(s[-1] == "2" for s in versions()), 60,
                       "every client on version 2")
            counts = [len(s) for s in versions()]
            wait_until(lambda: all(len(s) >= c + 3
                                   for s, c in zip(versions(), counts, strict=True)),
                       60, "more traffic on version 2")
        assert load.failures == []
        for seen in versions():
            first_new = seen.index("2")
            assert set(seen[:first_new]) == {"1"}
            assert set(seen[first_new:]) == {"2"}, "a client saw version 1 after version 2"
        assert httpx.get(url(api, "/readyz")).json()["version"] == 2
        assert metric(api, "maskfleet_model_swaps_total", model="unet") == 1
        assert metric(api, "maskfleet_model_info", version="2", stage="production") == 1
        assert metric(api, "maskfleet_model_info", version="1") == 0
        assert metric(api, "maskfleet_model_eval_metric", version="2",
                      metric="mean_iou") == pytest.approx(0.7)
