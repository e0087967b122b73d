"""Choosing the variant that serves: fallbacks and `auto`, with stand-in models.

The real OpenVINO builds are covered in tests/integration/test_model_variants.py; here the
choice itself, which must never leave a version unserved.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from shared.model.runtime import SAVEDMODEL, SegmentationModel
from shared.model.variants import VariantRecord, candidates, choose

RECORD = VariantRecord(runtime_version="2026.4.1", precision="int8", mean_iou_loss=0.001,
                       pixel_agreement=0.995)
LISTED = {"int8": RECORD, "fp32": RECORD.model_copy(update={"precision": "fp32"})}


class Stand:
    """Answers zeros; `wait_per_call` seconds per call make one variant measurably slower."""

    name, version, input_size, load_seconds = "unet", 1, 8, 0.0

    def __init__(self, variant: str, wait_per_call: float = 0.0) -> None:
        self.variant = variant
        self._wait = wait_per_call
        self._never = threading.Event()

    def class_ids(self, images: np.ndarray) -> np.ndarray:
        self._never.wait(self._wait)
        return np.zeros(images.shape[:3], np.int32)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        pass


def opener(models: dict[str, Stand], broken: frozenset[str] = frozenset()):
    opened: list[str] = []

    def open_variant(name: str) -> SegmentationModel:
        opened.append(name)
        if name in broken:
            raise RuntimeError(f"{name} does not load")
        return models[name]

    return open_variant, opened


def test_candidates_always_end_with_the_savedmodel() -> None:
    assert candidates("auto", LISTED) == ["fp32", "int8", SAVEDMODEL]
    assert candidates("int8", LISTED) == ["int8", SAVEDMODEL]
    assert candidates(SAVEDMODEL, LISTED) == [SAVEDMODEL]
    assert candidates("int8", {}) == [SAVEDMODEL]  # an older version without variants


def test_a_named_variant_serves_without_loading_the_savedmodel() -> None:
    models = {n: Stand(n) for n in ("int8", "fp32", SAVEDMODEL)}
    open_variant, opened = opener(models)
    assert choose("int8", LISTED, open_variant, batch=4).variant == "int8"
    assert opened == ["int8"]


@pytest.mark.parametrize(("listed", "broken"), [({}, frozenset()),
                                                (LISTED, frozenset({"int8"}))])
def test_a_missing_or_broken_variant_falls_back_to_the_savedmodel(listed, broken) -> None:
    models = {n: Stand(n) for n in ("int8", "fp32", SAVEDMODEL)}
    open_variant, opened = opener(models, broken)
    assert choose("int8", listed, open_variant, batch=4).variant == SAVEDMODEL
    assert opened[-1] == SAVEDMODEL


def test_auto_keeps_the_variant_that_ran_fastest_here() -> None:
    # int8 is made slow on this "machine": the recorded metadata never decides
    models = {"int8": Stand("int8", 0.05), "fp32": Stand("fp32"),
              SAVEDMODEL: Stand(SAVEDMODEL, 0.02)}
    open_variant, opened = opener(models)
    assert choose("auto", LISTED, open_variant, batch=4).variant == "fp32"
    assert sorted(opened) == sorted(["fp32", "int8", SAVEDMODEL])


def test_auto_without_variants_loads_only_the_savedmodel() -> None:
    models = {SAVEDMODEL: Stand(SAVEDMODEL)}
    open_variant, opened = opener(models)
    assert choose("auto", {}, open_variant, batch=4).variant == SAVEDMODEL
    assert opened == [SAVEDMODEL]


def test_a_broken_savedmodel_is_an_error_not_a_silent_empty_server() -> None:
    open_variant, _ = opener({}, frozenset({SAVEDMODEL}))
    with pytest.raises(RuntimeError, match="does not load"):
        choose(SAVEDMODEL, {}, open_variant, batch=4)
