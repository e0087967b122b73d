"""A tiny trained U-Net published with optimized variants, for the tests that need one (no
tests here; the name keeps it among them).

It trains for a few dozen steps on generated data, so OpenVINO conversion and NNCF int8
quantization run on a real trained model in seconds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.repository import ModelRepository
from training.config import parse_config
from training.job import JobResult, run
from training.settings import TrainingSettings
from training.synthetic import generate

TINY: dict[str, Any] = {
    "model": {"input_size": 64, "alpha": 0.35, "decoder_filters": [32, 16, 16, 8],
              "bn_momentum": 0.9},
    "data": {"batch_size": 8, "cache": "memory", "shuffle_buffer": 64},
    "train": {"steps": 80, "learning_rate": 0.01, "checkpoint_every": 60, "log_every": 30},
    "repository": {"model": "unet"},
    "gate": {"min_mean_iou": 0.0, "max_regression": 1.0},
    # an 80-step toy with 8-filter layers quantizes worse than a trained production model
    # (MACHINE.md: -0.12 pt, 99.6%), so the budget here is looser than the default
    "variants": {"max_mean_iou_loss": 0.05, "min_pixel_agreement": 0.9,
                 "calibration_images": 32},
}
BUDGET_IOU_LOSS, BUDGET_AGREEMENT = 0.05, 0.9


@dataclass
class Published:
    result: JobResult
    repository: ModelRepository
    root: Path
    data_uri: str
    home: Path
    work: Path


@contextmanager
def published_tiny_model(base: Path) -> Iterator[Published]:
    """One training run into a local repository under `base` (version 1, with its fp32 and
    int8 variants, at `candidate` and `production`).

    HOME points at a private folder meanwhile, because OpenVINO and NNCF record the telemetry
    opt-out there; building variants later (`optimize`) should happen inside the block too.
    """
    home = base / "home"
    home.mkdir()
    previous = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        data_uri = str(base / "data")
        generate(data_uri, count=48, seed=5)
        raw = {**TINY, "data": {**TINY["data"], "uri": data_uri},
               "repository": {**TINY["repository"], "uri": str(base / "models")},
               "checkpoint": {"root": str(base / "checkpoints")}}
        settings = TrainingSettings(cache_dir=str(base / "cache"))
        result = run(parse_config(raw), settings, "variants-run")
        yield Published(result, ModelRepository(str(base / "models")), base / "models",
                        data_uri, home, base)
    finally:
        if previous is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = previous


def savedmodel_only(repo: ModelRepository, tmp: Path) -> Path:
    """Version 1's SavedModel without its variants, to publish as a version that has none."""
    local = repo.download("unet", 1, tmp / "cache")
    target = tmp / "savedmodel"
    shutil.copytree(local, target, ignore=shutil.ignore_patterns("variants"))
    return target
