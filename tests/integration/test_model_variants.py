"""Optimized variants end to end: built at publish, gated, served, falling back.

A tiny U-Net (64 px, alpha 0.35) trains for a few dozen steps on generated data, so OpenVINO
conversion and NNCF int8 quantization run on a real trained model in seconds. What is checked
is what an operator relies on: variants within the accuracy budget are published inside the
version and described in metadata.json, one outside it is not, serving picks a variant (or
falls back to the SavedModel when it is missing or broken), the masks agree with the
SavedModel's, and the variant shows in the answer's headers and cache keys.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.models.cli import main as models_cli
from shared.imaging import preprocess
from shared.model.ir import IR_FILE, OpenVinoModel
from shared.model.serving import LoadedModel
from shared.repository import VersionMetadata
from shared.segmentation import load_model
from tests.integration.test_inference_support import segment, start_api, url
from tests.integration.variants_support import (
    BUDGET_AGREEMENT,
    BUDGET_IOU_LOSS,
    TINY,
    Published,
    published_tiny_model,
    savedmodel_only,
)
from tests.servers import Server, running
from training.config import VariantsConfig, parse_config
from training.data import load_dataset
from training.optimize import optimize
from training.synthetic import generate
from training.variants import build_variants

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    with published_tiny_model(tmp_path_factory.mktemp("variants")) as result:
        yield result


def fixed_images(tmp: Path) -> list[bytes]:
    """A fixed set of images the model never saw (another seed of the generator)."""
    generate(str(tmp), count=12, seed=123)
    return [p.read_bytes() for p in sorted((tmp / "images").iterdir())]


def test_variants_within_budget_are_published_inside_the_version(published: Published) -> None:
    result, repo = published.result, published.repository
    assert result.status == "published", result.summary
    metadata = repo.metadata("unet", 1)
    assert set(metadata.variants) == {"fp32", "int8"}, result.summary["variants"]
    for name, record in metadata.variants.items():
        assert (published.root / "unet" / "1" / "variants" / name / IR_FILE).is_file()
        assert record.runtime == "openvino"
        assert record.runtime_version
        assert record.mean_iou_loss <= BUDGET_IOU_LOSS
        assert record.pixel_agreement >= BUDGET_AGREEMENT
        assert abs(record.metrics["mean_iou"] - metadata.metrics["mean_iou"]
                   + record.mean_iou_loss) < 1e-5
        assert record.images_per_second
        assert record.savedmodel_images_per_second
    train_images = result.summary["examples"]["train"]
    assert metadata.variants["int8"].calibration_images == min(32, train_images)
    assert metadata.variants["fp32"].calibration_images == 0
    # the opt-out is recorded where OpenVINO and NNCF look for consent
    assert (published.home / "intel" / "openvino_telemetry").read_text() == "0"


def test_a_variant_outside_the_budget_is_not_published(published: Published,
                                                       tmp_path: Path) -> None:
    repo = published.repository
    # the same SavedModel again, published without variants (as older versions are)
    version = repo.publish("unet", savedmodel_only(repo, tmp_path), VersionMetadata(
        model="unet", version=0, metrics=repo.metadata("unet", 1).metrics,
        config=repo.metadata("unet", 1).config))
    strict = VariantsConfig(build=("int8",), max_mean_iou_loss=0.0, min_pixel_agreement=1.0)
    summary = optimize(repo, "unet", version, tmp_path / "work", strict)
    assert "int8" not in summary["published"]
    assert "pixel agreement" in summary["rejected"]["int8"] or \
        "mean IoU loss" in summary["rejected"]["int8"], summary
    assert repo.metadata("unet", version).variants == {}
    assert not (published.root / "unet" / str(version) / "variants").exists()


def test_maskfleet_models_optimize_adds_variants_to_a_published_version(published: Published,
                                                       tmp_path: Path) -> None:
    repo = published.repository
    version = repo.publish("unet", savedmodel_only(repo, tmp_path), VersionMetadata(
        model="unet", version=0, config=repo.metadata("unet", 1).config))
    served = load_model(repo, "unet", version, tmp_path / "serving", variant="int8")
    assert served.variant == "savedmodel"  # nothing published yet: the fallback serves

    out = io.StringIO()
    code = models_cli(["--repository", str(published.root), "optimize", str(version),
                       "--work-dir", str(tmp_path / "work")], out=out)  # the recorded budget
    assert code == 0, out.getvalue()
    summary = json.loads(out.getvalue())

    assert set(summary["published"]) == {"fp32", "int8"}
    assert set(repo.metadata("unet", version).variants) == {"fp32", "int8"}
    # the same local cache now fetches the variant added after it downloaded the version
    again = load_model(repo, "unet", version, tmp_path / "serving", variant="int8")
    assert (again.variant, again.version) == ("int8", version)


def test_a_variant_that_fails_to_load_falls_back_to_the_savedmodel(published: Published,
                                                                   tmp_path: Path) -> None:
    repo = published.repository
    local = repo.download("unet", 1, tmp_path / "cache")
    (local / "variants" / "int8" / IR_FILE).write_text("<net>not an IR</net>")
    served = load_model(repo, "unet", 1, tmp_path / "cache", variant="int8")
    assert served.variant == "savedmodel"
    assert served.class_ids(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 64, 64)
    auto = load_model(repo, "unet", 1, tmp_path / "cache", variant="auto")
    assert auto.variant in {"fp32", "savedmodel"}


def test_each_variant_agrees_with_the_savedmodel_on_a_fixed_set(published: Published,
                                                                tmp_path: Path) -> None:
    repo = published.repository
    local = repo.download("unet", 1, tmp_path / "cache")
    reference = LoadedModel(local, name="unet", version=1)
    pixels = np.stack([preprocess(blob, 64)[0] for blob in fixed_images(tmp_path / "fixed")])
    expected = reference.class_ids(pixels)
    for name in ("fp32", "int8"):
        variant = OpenVinoModel(local / "variants" / name, name="unet", version=1, variant=name)
        agreement = float(np.mean(variant.class_ids(pixels) == expected))
        assert agreement >= BUDGET_AGREEMENT, (name, agreement)
        # one call or one image at a time: the split across infer requests changes nothing
        one_by_one = np.concatenate([variant.class_ids(p[np.newaxis]) for p in pixels])
        assert np.array_equal(one_by_one, variant.class_ids(pixels))


def test_auto_keeps_the_fastest_variant_timed_here(published: Published, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="shared.model.variants"):
        served = load_model(published.repository, "unet", 1, tmp_path / "cache",
                            variant="auto", batch=8)
    chosen = [r for r in caplog.records if r.getMessage() == "variant chosen by benchmark"]
    assert len(chosen) == 1
    speeds: dict[str, float] = chosen[0].__dict__["images_per_second"]
    assert set(speeds) == {"fp32", "int8", "savedmodel"}
    assert served.variant == max(speeds, key=lambda name: speeds[name])


def test_openvino_inference_leaves_the_gil_to_other_threads(published: Published,
                                                            tmp_path: Path) -> None:
    local = published.repository.download("unet", 1, tmp_path / "cache")
    model = OpenVinoModel(local / "variants" / "fp32", name="unet", version=1, variant="fp32")
    images = np.random.default_rng(0).random((64, 64, 64, 3), dtype=np.float32)
    model.class_ids(images)
    done, spins = threading.Event(), 0

    def infer() -> None:
        for _ in range(3):
            model.class_ids(images)
        done.set()

    worker = threading.Thread(target=infer)
    worker.start()
    while not done.is_set():  # pure Python: only runs while the inference thread lets go
        spins += 1
    worker.join()
    # with the GIL held through inference this loop would only run between Python steps of
    # the other thread (a handful of switch intervals); released, it spins the whole time
    assert spins > 10_000


def test_the_api_answers_with_the_variant_and_caches_per_variant(
    published: Published, redis_server: Server, tmp_path: Path
) -> None:
    redis_url = f"redis://127.0.0.1:{redis_server.port}/5"
    image = fixed_images(tmp_path / "fixed")[0]
    with httpx.Client(timeout=30) as http:
        with running(start_api(published.root, tmp_path, redis_url,
                               model_variant="savedmodel", stage_poll_seconds=0)) as api:
            first = segment(http, api, image)
            assert (first.headers["x-model-version"], first.headers["x-cache"]) == \
                ("1/savedmodel", "miss")
            assert segment(http, api, image).headers["x-cache"] == "hit"
        with running(start_api(published.root, tmp_path, redis_url,
                               model_variant="int8", stage_poll_seconds=0)) as api:
            answer = segment(http, api, image)
            # the SavedModel's cached mask is not served as the int8 build's answer
            assert (answer.headers["x-model-version"], answer.headers["x-cache"]) == \
                ("1/int8", "miss")
            meta = http.get(url(api, "/v2/models/unet")).json()
            assert (meta["platform"], meta["parameters"]["variant"]) == ("openvino_ir", "int8")
            metrics = http.get(url(api, "/metrics")).text
            assert 'variant="int8",version="1"' in metrics


def test_publish_without_a_listed_variant_folder_is_refused(published: Published,
                                                            tmp_path: Path) -> None:
    repo = published.repository
    local = repo.download("unet", 1, tmp_path / "cache")
    metadata = repo.metadata("unet", 1)
    before = repo.versions("unet")
    with pytest.raises(ValueError, match="have no folder"):
        repo.publish("unet", local, metadata, None)
    assert repo.versions("unet") == before


def test_build_variants_skips_everything_when_conversion_fails(published: Published,
                                                               tmp_path: Path) -> None:
    dataset = load_dataset(parse_config({**TINY, "data": {**TINY["data"],
                                                          "uri": published.data_uri},
                                         "checkpoint": {"root": str(tmp_path)}}).data,
                           tmp_path / "data")
    broken = tmp_path / "broken"
    shutil.copytree(published.repository.download("unet", 1, tmp_path / "cache"), broken)
    reference = LoadedModel(broken, name="unet", version=1)
    (broken / "saved_model.pb").write_bytes(b"garbage")
    outcome = build_variants(broken, reference, tmp_path / "out", train=dataset.train,
                             validation=dataset.validation, config=VariantsConfig())
    assert outcome.passed == {}
    assert set(outcome.rejected) == {"fp32", "int8"}
    assert all("conversion failed" in reason for reason in outcome.rejected.values())
    assert not (tmp_path / "out").exists()
