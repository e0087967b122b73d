"""Promoting versions while clients keep calling an API that serves an optimized variant.

The API asks for `int8`. Version 1 and version 2 (the same SavedModel, optimized after it was
published) have an int8 build, version 3 has none: promoting 2 must move every client from
`1/int8` to `2/int8`, promoting 3 to `3/savedmodel` (the fallback), with no failed request and
no client ever answered by an older version again; readiness, `/v2` metadata and the model
metrics must follow each swap.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path

import httpx
import pytest

from shared.repository import ModelRepository, VersionMetadata
from tests.integration.test_inference_support import SteadyClients, metric, start_api, url
from tests.integration.variants_support import (
    BUDGET_AGREEMENT,
    BUDGET_IOU_LOSS,
    published_tiny_model,
    savedmodel_only,
)
from tests.servers import Server, running, wait_until
from training.config import VariantsConfig
from training.optimize import optimize

pytestmark = pytest.mark.integration

CLIENTS = 4
REDIS_DB = 15
SWAP_SECONDS = 120
"""Loading and warming a version beside the served one, on a shared 2-core machine."""
ANSWERS = ("1/int8", "2/int8", "3/savedmodel")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelRepository]:
    """The tiny model's repository holding version 1 (fp32 + int8 at publish),
    version 2 (the same SavedModel, int8 added by `optimize`) and version 3 (no variants);
    `production` points at 1."""
    base = tmp_path_factory.mktemp("variant-swap")
    with published_tiny_model(base) as published:
        assert published.result.status == "published", published.result.summary
        repo = published.repository
        first = repo.metadata("unet", 1)
        assert "int8" in first.variants

        def republish(folder: str) -> int:
            return repo.publish("unet", savedmodel_only(repo, base / folder), VersionMetadata(
                model="unet", version=0, metrics=first.metrics, config=first.config))

        two = republish("two")
        summary = optimize(repo, "unet", two, base / "work", VariantsConfig(
            build=("int8",), max_mean_iou_loss=BUDGET_IOU_LOSS,
            min_pixel_agreement=BUDGET_AGREEMENT, calibration_images=32))
        assert list(summary["published"]) == ["int8"], summary
        three = republish("three")
        assert (two, three) == (2, 3)
        assert repo.stage("unet", "production") == 1
        yield repo


def served_by(api: Server) -> tuple[int, str]:
    """The version `/readyz` reports and the variant `/v2` model metadata names."""
    ready = httpx.get(url(api, "/readyz"), timeout=5)
    meta = httpx.get(url(api, "/v2/models/unet"), timeout=5).json()
    assert ready.status_code == 200, ready.text
    assert meta["versions"] == [str(ready.json()["version"])]
    return int(ready.json()["version"]), str(meta["parameters"]["variant"])


def assert_model_metrics(api: Server, repo: ModelRepository, version: int, variant: str,
                         swaps: int) -> None:
    """`model_info` names only the served build; its evaluation figures are the build's own."""
    assert metric(api, "maskfleet_model_swaps_total", model="unet") == swaps
    assert metric(api, "maskfleet_model_info", model="unet", version=str(version),
                  variant=variant, stage="production") == 1
    for older in range(1, version):
        assert metric(api, "maskfleet_model_info", version=str(older)) == 0
    metadata = repo.metadata("unet", version)
    record = metadata.variants.get(variant)
    expected = (record.metrics if record is not None else metadata.metrics)["mean_iou"]
    assert metric(api, "maskfleet_model_eval_metric", version=str(version), variant=variant,
                  metric="mean_iou") == pytest.approx(expected)


def test_promotions_swap_variants_under_load_without_failures(
        repository: ModelRepository, redis_server: Server, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(repository.root, root)  # the module's repository stays at version 1
    repo = ModelRepository(str(root))
    api = start_api(root, tmp_path, f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
                    model_variant="int8", stage_poll_seconds=0.2)
    load = SteadyClients(api, CLIENTS, first_seed=7_000_000)
    seen = load.seen

    def everyone_on(label: str) -> Callable[[], bool]:
        return lambda: all(s and s[-1] == label for s in seen)

    def more_traffic() -> None:
        counts = [len(s) for s in seen]
        wait_until(lambda: all(len(s) >= c + 3 for s, c in zip(seen, counts, strict=True)),
                   60, "more answers from every client")

    with running(api), load:
        wait_until(lambda: all(len(s) >= 3 for s in seen), 60, "traffic on version 1")
        assert served_by(api) == (1, "int8")
        assert_model_metrics(api, repo, 1, "int8", swaps=0)

        repo.set_stage("unet", "production", 2)
        wait_until(everyone_on("2/int8"), SWAP_SECONDS, "every client on 2/int8")
        more_traffic()
        assert served_by(api) == (2, "int8")
        assert_model_metrics(api, repo, 2, "int8", swaps=1)

        repo.set_stage("unet", "production", 3)  # no int8 build: the SavedModel serves
        wait_until(everyone_on("3/savedmodel"), SWAP_SECONDS, "every client on 3/savedmodel")
        more_traffic()
        assert served_by(api) == (3, "savedmodel")
        assert_model_metrics(api, repo, 3, "savedmodel", swaps=2)
    assert load.failures == []
    for answers in seen:
        # in order, each seen, none seen again after a newer one
        assert [label for label, _ in groupby(answers)] == list(ANSWERS), answers
