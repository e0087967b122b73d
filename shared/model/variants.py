"""Which runtime serves a version: its variants, how they are recorded, and how one is chosen.

A version is a SavedModel (the reference) plus optional variants under
`<version>/variants/<name>/`, each listed in `metadata.json` with the held-out figures that let
it pass the accuracy gate. Serving (API and worker alike) asks for `auto`, `savedmodel` or a
variant name:

- `auto` loads every listed variant and the SavedModel, times a few batches of each on the
  machine itself and keeps the fastest: node CPUs differ (AMX, VNNI only, AMD), so the figures
  recorded where the variant was built say nothing about this node.
- A variant that is missing, not listed or fails to load falls back to the SavedModel, so a
  version without variants (older, or whose conversion failed) serves as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from shared.model.runtime import SAVEDMODEL, SegmentationModel

VARIANTS_DIR = "variants"
AUTO = "auto"
VARIANT_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"

log = logging.getLogger(__name__)


class VariantRecord(BaseModel):
    """What `metadata.json` says about one variant: how it was built and how good it is."""

    runtime: Literal["openvino"] = "openvino"
    runtime_version: str
    precision: Literal["fp32", "int8"]
    metrics: dict[str, float] = Field(default_factory=dict)
    """Held-out metrics (the gate's), same split as the SavedModel's."""
    mean_iou_loss: float
    """SavedModel mean IoU minus this variant's, on the held-out split (positive = worse)."""
    pixel_agreement: float
    """Share of held-out mask pixels equal to the SavedModel's."""
    images_per_second: float | None = None
    """Speed where it was built (batch of `speed_batch`), for people: serving re-measures."""
    savedmodel_images_per_second: float | None = None
    speed_batch: int | None = None
    built_on: str = ""
    """CPU of the machine that built and timed it."""
    built_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    calibration_images: int = 0
    """Training-split images the int8 quantization was calibrated on (0 for fp32)."""


def variant_dir(version_dir: Path, name: str) -> Path:
    return version_dir / VARIANTS_DIR / name


def load_variant(version_dir: Path, name: str, record: VariantRecord, *, model: str,
                 version: int, threads: int = 0) -> SegmentationModel:
    """Open one variant of a downloaded version (imports its runtime only when needed)."""
    from shared.model.ir import OpenVinoModel

    return OpenVinoModel(variant_dir(version_dir, name), name=model, version=version,
                         variant=name, threads=threads)


def candidates(choice: str, listed: Mapping[str, VariantRecord]) -> list[str]:
    """Variant names to try for `choice`, best guess first; the SavedModel is always last."""
    if choice == AUTO:
        return [*sorted(listed), SAVEDMODEL]
    if choice == SAVEDMODEL:
        return [SAVEDMODEL]
    if choice not in listed:
        log.warning("requested variant is not published for this version; serving the "
                    "SavedModel", extra={"variant": choice, "published": sorted(listed)})
        return [SAVEDMODEL]
    return [choice, SAVEDMODEL]


def images_per_second(model: SegmentationModel, batch: int, rounds: int = 3) -> float:
    """Best of `rounds` timed calls at `batch` images (after one untimed call)."""
    images = np.zeros((batch, model.input_size, model.input_size, 3), np.float32)
    model.class_ids(images)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        model.class_ids(images)
        best = min(best, time.perf_counter() - started)
    return batch / best


def choose(choice: str, listed: Mapping[str, VariantRecord],
           open_variant: Callable[[str], SegmentationModel], *, batch: int) -> SegmentationModel:
    """Load the variant(s) `choice` names; under `auto` keep the fastest measured here.

    `open_variant(SAVEDMODEL)` must succeed (its errors propagate: nothing else can serve);
    any other variant that fails to load is logged and skipped.
    """
    loaded: list[SegmentationModel] = []
    for name in candidates(choice, listed):
        if name == SAVEDMODEL and loaded and choice != AUTO:
            break
        if name == SAVEDMODEL:
            loaded.append(open_variant(SAVEDMODEL))
            continue
        try:
            loaded.append(open_variant(name))
        except Exception as exc:
            log.warning("variant failed to load; trying the next one",
                        extra={"variant": name, "error": f"{type(exc).__name__}: {exc}"})
    if len(loaded) == 1:
        return loaded[0]
    speeds = {m.variant: images_per_second(m, batch) for m in loaded}
    fastest = max(loaded, key=lambda m: speeds[m.variant])
    log.info("variant chosen by benchmark", extra={
        "variant": fastest.variant, "batch": batch,
        "images_per_second": {k: round(v, 1) for k, v in speeds.items()}})
    return fastest
