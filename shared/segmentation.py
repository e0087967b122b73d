"""Bytes in, trimap masks out: the one pipeline behind the API and the batch worker.

Both paths call these functions, so a batch job's mask equals the live API's mask for the
same image and the same model version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import MaskfleetError
from shared.imaging import (
    DEFAULT_MAX_PIXELS,
    FloatImage,
    ImageHeader,
    Mask,
    class_fractions,
    encode_png,
    mask_from_class_ids,
    preprocess,
)
from shared.model.runtime import SAVEDMODEL, SegmentationModel
from shared.model.serving import LoadedModel
from shared.model.variants import VariantRecord, choose, load_variant
from shared.repository import ModelRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segmentation:
    """A mask whose PNG and class fractions are computed on first use, then kept.

    Not `functools.cached_property`: on Python 3.11 it holds one lock per class while it
    computes, so threads encoding different masks (the API's codec pool, the worker's I/O
    threads) waited for one another. Two threads computing the same value both get equal bytes.
    """

    mask: Mask

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def png(self) -> bytes:
        png: bytes | None = self.__dict__.get("_png")
        if png is None:
            png = encode_png(self.mask)
            object.__setattr__(self, "_png", png)
        return png

    @property
    def fractions(self) -> dict[str, float]:
        fractions: dict[str, float] | None = self.__dict__.get("_fractions")
        if fractions is None:
            fractions = dict(class_fractions(self.mask))
            object.__setattr__(self, "_fractions", fractions)
        return fractions


@dataclass(frozen=True)
class Prepared:
    pixels: FloatImage
    original: tuple[int, int]


def prepare(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
            header: ImageHeader | None = None) -> Prepared:
    pixels, original = preprocess(data, size, max_pixels=max_pixels, header=header)
    return Prepared(pixels, original)


def finish(class_ids: np.ndarray, original: tuple[int, int]) -> Segmentation:
    return Segmentation(mask_from_class_ids(class_ids, original))


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
