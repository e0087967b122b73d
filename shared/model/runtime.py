"""The one interface serving code calls, whatever runtime computes the masks.

The batcher, the pipeline and the batch worker only see `SegmentationModel`; the TensorFlow
SavedModel (`shared.model.serving.LoadedModel`) and an OpenVINO IR build
(`shared.model.ir.OpenVinoModel`) implement it, chosen from the version's metadata
(`shared.model.variants`). Runtime details stay out of the server, as in KServe's `model.py`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

SAVEDMODEL = "savedmodel"
"""Variant name of the TensorFlow SavedModel: the reference every other variant is gated
against, and the fallback when a variant is missing or does not load."""


class SegmentationModel(Protocol):
    """A loaded model version in one of its variants, ready to segment batches."""

    name: str
    version: int
    variant: str
    input_size: int
    load_seconds: float

    def class_ids(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.int32]:
        """[N, S, S, 3] floats in [0, 1] -> [N, S, S] class ids."""
        ...

    def warm_up(self, batch_sizes: tuple[int, ...] = ...) -> None:
        """Run once per batch size so the first real request pays no setup cost."""
        ...
