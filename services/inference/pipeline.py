"""Image bytes (or pixels) to trimap masks, off the event loop, through the cache and batcher.

The event loop only moves bytes: hashing large bodies, decoding, resizing and PNG encoding run
in a small codec pool, the model call in the batcher's own thread. The steps themselves are
`shared.segmentation`/`shared.imaging`, the same code the batch worker runs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from shared.imaging import Mask, mask_from_class_ids, to_model_input
from shared.segmentation import Prepared, finish, prepare

from .batcher import Batcher, BatchResult, StaleInput
from .cache import CachedMask, ResultCache, cache_key
from .model_holder import ModelHolder

T = TypeVar("T")
INLINE_HASH_BYTES = 256 * 1024
"""Bodies up to this size are hashed on the event loop: a thread hop would cost more."""


@dataclass(frozen=True)
class MaskAnswer:
    """One /v1/segment result, fresh or from the cache."""

    mask: CachedMask
    model: str
    version: int
    cached: bool
    image_sha256: str


@dataclass(frozen=True)
class MaskBatch:
    """Masks for the images of one v2 request, all from one model version."""

    masks: list[Mask]
    model: str
    version: int


class Segmenter:
    def __init__(self, holder: ModelHolder, batcher: Batcher, cache: ResultCache, *,
                 max_pixels: int, codec_threads: int) -> None:
        self._holder = holder
        self._batcher = batcher
        self._cache = cache
        self._max_pixels = max_pixels
        self._codec_threads = codec_threads
        self._codec: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._codec = ThreadPoolExecutor(self._codec_threads, thread_name_prefix="codec")

    def close(self) -> None:
        if self._codec is not None:
            self._codec.shutdown(wait=True)

    async def _off_loop(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._codec, fn, *args)

    async def segment(self, data: bytes) -> MaskAnswer:
        """Encoded image -> mask PNG at the image's resolution, cached by content."""
        served = self._holder.require()
        digest = (_sha256(data) if len(data) <= INLINE_HASH_BYTES
                  else await self._off_loop(_sha256, data))
        hit = await self._cache.get(cache_key(served.name, served.version,
                                              served.input_size, digest))
        if hit is not None:
            return MaskAnswer(hit, served.name, served.version, True, digest)
        (prepared,), result = await self._run_encoded([data])
        mask = await self._off_loop(_cacheable, result.class_ids[0], prepared.original)
        # the batch may have run on a newer version than the lookup: file it under that one
        await self._cache.put(cache_key(result.model, result.version, result.input_size,
                                        digest), mask)
        return MaskAnswer(mask, result.model, result.version, False, digest)

    async def segment_encoded(self, blobs: Sequence[bytes]) -> MaskBatch:
        """Encoded images -> masks at each image's resolution (one model version)."""
        prepared, result = await self._run_encoded(blobs)
        masks = await self._off_loop(_masks, result.class_ids, [p.original for p in prepared])
        return MaskBatch(masks, result.model, result.version)

    async def segment_pixels(self, images: npt.NDArray[np.uint8]) -> MaskBatch:
        """`[N, H, W, 3]` RGB pixels -> `N` masks of `H x W`."""
        height, width = int(images.shape[1]), int(images.shape[2])
        for attempt in (1, 2):
            size = self._holder.require().input_size
            pixels = await self._off_loop(_pixels_to_input, images, size)
            try:
                result = await self._batcher.run(pixels)
            except StaleInput:
                if attempt == 2:
                    raise
                continue
            masks = await self._off_loop(_masks, result.class_ids,
                                         [(width, height)] * len(images))
            return MaskBatch(masks, result.model, result.version)
        raise AssertionError("unreachable")

    async def _run_encoded(self, blobs: Sequence[bytes]) -> tuple[list[Prepared], BatchResult]:
        """Decode (in parallel) and batch; decode again if a swap changed the input size."""
        for attempt in (1, 2):
            size = self._holder.require().input_size
            if len(blobs) == 1:  # /v1/segment: no task for gather to create, no copy to stack
                prepared = [await self._off_loop(prepare, blobs[0], size, self._max_pixels)]
                pixels = prepared[0].pixels[np.newaxis]
            else:
                prepared = await asyncio.gather(
                    *(self._off_loop(prepare, blob, size, self._max_pixels) for blob in blobs))
                pixels = np.stack([p.pixels for p in prepared])
            try:
                return prepared, await self._batcher.run(pixels)
            except StaleInput:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cacheable(class_ids: npt.NDArray[np.int32], original: tuple[int, int]) -> CachedMask:
    segmentation = finish(class_ids, original)
    return CachedMask(segmentation.png, segmentation.width, segmentation.height,
                      segmentation.fractions)


def _masks(class_ids: npt.NDArray[np.int32], sizes: Sequence[tuple[int, int]]) -> list[Mask]:
    return [mask_from_class_ids(ids, size) for ids, size in zip(class_ids, sizes, strict=True)]


def _pixels_to_input(images: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.float32]:
    return np.stack([to_model_input(Image.fromarray(image, mode="RGB"), size)
                     for image in images])
