"""Bytes in, trimap masks out: the one pipeline behind the API and the batch worker.

Both paths call these functions, so a batch job's mask equals the live API's mask for the
same image and the same model version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from shared.errors import MaskfleetError
from shared.imaging import (
    DEFAULT_MAX_PIXELS,
    FloatImage,
    ImageHeader,
    Mask,
    fractions_from_counts,
    preprocess,
)
from shared.masks import UpscaledMask
from shared.model.runtime import SAVEDMODEL, SegmentationModel
from shared.model.serving import LoadedModel
from shared.model.variants import VariantRecord, choose, load_variant
from shared.repository import ModelRepository

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Segmentation:
    """A served mask whose pixels, PNG and class fractions are computed on first use, then kept.

    Built from the model's class ids (`shared.masks.UpscaledMask`): the PNG and the fractions
    need no full-size mask, and the API's /v1/segment and the batch worker ask for nothing else.

    Not `functools.cached_property`: on Python 3.11 it holds one lock per class while it
    computes, so threads encoding different masks (the API's codec pool, the worker's I/O
    threads) waited for one another. Two threads computing the same value both get equal bytes.
    """

    upscaled: UpscaledMask

    @property
    def width(self) -> int:
        return self.upscaled.size[0]

    @property
    def height(self) -> int:
        return self.upscaled.size[1]

    @property
    def mask(self) -> Mask:
        return self._kept("_mask", self.upscaled.pixels)

    @property
    def png(self) -> bytes:
        return self._kept("_png", self.upscaled.png)

    @property
    def fractions(self) -> dict[str, float]:
        return self._kept("_fractions", lambda: fractions_from_counts(self.upscaled.counts()))

    def _kept(self, name: str, compute: Callable[[], T]) -> T:
        value: T | None = self.__dict__.get(name)
        if value is None:
            value = compute()
            object.__setattr__(self, name, value)
        return value


@dataclass(frozen=True)
class Prepared:
    pixels: FloatImage
    original: tuple[int, int]


def prepare(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
            header: ImageHeader | None = None) -> Prepared:
    pixels, original = preprocess(data, size, max_pixels=max_pixels, header=header)
    return Prepared(pixels, original)


def finish(class_ids: np.ndarray, original: tuple[int, int]) -> Segmentation:
    return Segmentation(UpscaledMask(class_ids, original))


def segment_many(
    model: SegmentationModel, blobs: Sequence[bytes], max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[Segmentation | MaskfleetError]:
    """Segment in one model call; a bad image becomes its error, not a failed batch."""
    prepared: list[Prepared | MaskfleetError] = []
    for blob in blobs:
        try:
            prepared.append(prepare(blob, model.input_size, max_pixels))
        except MaskfleetError as exc:
            prepared.append(exc)
    good = [p for p in prepared if isinstance(p, Prepared)]
    ids = model.class_ids(np.stack([p.pixels for p in good])) if good else np.empty((0,))
    results: list[Segmentation | MaskfleetError] = []
    position = 0
    for item in prepared:
        if isinstance(item, Prepared):
            results.append(finish(ids[position], item.original))
            position += 1
        else:
            results.append(item)
    return results


def load_model(
    repository: ModelRepository, name: str, version: int, cache_dir: Path, *,
    variant: str = SAVEDMODEL, threads: int = 0, batch: int = 16,
) -> SegmentationModel:
    """Download a version into the local cache (once) and load the variant `variant` names
    (`auto`: the fastest on this machine at `batch` images), the SavedModel as fallback."""
    local = repository.download(name, version, cache_dir)
    listed: dict[str, VariantRecord] = {}
    if variant != SAVEDMODEL:
        try:  # read from the repository: variants may have been added after the download
            listed = dict(repository.metadata(name, version).variants)
        except MaskfleetError as exc:
            log.warning("no variant list; serving the SavedModel", extra={"error": exc.detail})

    def open_variant(which: str) -> SegmentationModel:
        if which == SAVEDMODEL:
            return LoadedModel(local, name=name, version=version)
        repository.download_variant(name, version, which, cache_dir)
        return load_variant(local, which, listed[which], model=name, version=version,
                            threads=threads)

    return choose(variant, listed, open_variant, batch=batch)
