"""Image bytes (or pixels) to trimap masks, off the event loop, through the cache and batcher.

The event loop only moves bytes: probing headers of large bodies, hashing them, decoding,
resizing, building masks and encoding answers run in the bounded codec pool, the model call in
the batcher's own thread. The steps themselves are `shared.segmentation`/`shared.imaging`, the
same code the batch worker runs.

Every call takes the request's `Deadline`; headers are probed (and bombs refused) before any
pixel is decoded, and the request then holds its pixel count in the `PixelBudget` until its
answer is built, which is what bounds the API's memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from shared.imaging import ImageHeader, Mask, mask_from_class_ids, probe, to_model_input
from shared.segmentation import Prepared, finish, prepare

from .admission import Deadline, PixelBudget
from .batcher import Batcher, BatchResult, StaleInput
from .cache import CachedMask, ResultCache, cache_key
from .codec import CodecPool
from .metrics import ApiMetrics
from .model_holder import ModelHolder

T = TypeVar("T")
INLINE_BYTES = 256 * 1024
"""Bodies up to this size are probed and hashed on the event loop: a thread hop would cost
more than the work."""


@dataclass(frozen=True)
class MaskAnswer:
    """One /v1/segment result, fresh or from the cache."""

    mask: CachedMask
    model: str
    version: int
    variant: str
    cached: bool
    image_sha256: str


@dataclass(frozen=True)
class MaskBatch:
    """The model's answer for the images of one v2 request, all from one model version.

    Masks are built by `masks()` in the same codec job that renders the transport's answer
    (`dataplane`), not in a job of their own: one thread hop less per request.
    """

    class_ids: npt.NDArray[np.int32]
    sizes: list[tuple[int, int]]
    """Each image's upright (width, height): the resolution its mask comes back at."""
    model: str
    version: int
    variant: str

    def masks(self) -> list[Mask]:
        return _masks(self.class_ids, self.sizes)


class Segmenter:
    def __init__(self, holder: ModelHolder, batcher: Batcher, cache: ResultCache,
                 codec: CodecPool, budget: PixelBudget, metrics: ApiMetrics, *,
                 max_pixels: int) -> None:
        self._holder = holder
        self._batcher = batcher
        self._cache = cache
        self._codec = codec
        self._budget = budget
        self._metrics = metrics
        self._max_pixels = max_pixels

    def start(self) -> None:
        self._codec.start()

    def close(self) -> None:
        self._codec.close()

    def within(self, deadline: Deadline) -> Any:
        """`async with segmenter.within(deadline)`: 504 and dropped work once it passes."""
        return deadline.enforce(self._metrics)

    def admit(self, pixels: int) -> Any:
        """`with segmenter.admit(n)`: hold `n` pixels of the budget, or 503 at once."""
        return self._budget.hold(pixels)

    async def codec(self, fn: Callable[..., T], *args: Any, deadline: Deadline | None = None,
                    **kwargs: Any) -> T:
        """Run `fn` on the bounded codec pool (parsing and building answers use it too)."""
        if kwargs:
            return await self._codec.run(_call_with, fn, args, kwargs, deadline=deadline)
        return await self._codec.run(fn, *args, deadline=deadline)

    async def probe(self, blobs: Sequence[bytes], deadline: Deadline) -> list[ImageHeader]:
        """Every image's header, refusing bombs (413/415/422) before anything is decoded."""
        if sum(len(b) for b in blobs) <= INLINE_BYTES:
            return _probe_all(blobs, self._max_pixels)
        return await self._codec.run(_probe_all, blobs, self._max_pixels, deadline=deadline)

    async def segment(self, data: bytes, deadline: Deadline) -> MaskAnswer:
        """Encoded image -> mask PNG at the image's (upright) resolution, cached by content."""
        served = self._holder.require()
        async with self.within(deadline):
            (header,) = await self.probe([data], deadline)
            with self.admit(header.pixels):
                image = memoryview(data)[:header.length]  # trailing bytes do not change a mask
                digest = (_sha256_holding_gil(image) if header.length <= INLINE_BYTES
                          else await self._codec.run(_sha256, image, deadline=deadline))
                hit = await self._cache.get(cache_key(
                    served.name, served.version, served.variant, served.input_size, digest))
                if hit is not None:
                    return MaskAnswer(hit, served.name, served.version, served.variant, True,
                                      digest)
                (prepared,), result = await self._run_encoded([data], [header], deadline)
                mask = await self._codec.run(_cacheable, result.class_ids[0],
                                             prepared.original, deadline=deadline)
        # the batch may have run on a newer version than the lookup: file it under that one
        await self._cache.put(cache_key(result.model, result.version, result.variant,
                                        result.input_size, digest), mask)
        return MaskAnswer(mask, result.model, result.version, result.variant, False, digest)

    async def segment_encoded(self, blobs: Sequence[bytes], headers: Sequence[ImageHeader],
                              deadline: Deadline) -> MaskBatch:
        """Encoded images (already probed) -> the model's class ids and each image's upright
        resolution, for masks at that resolution."""
        prepared, result = await self._run_encoded(blobs, headers, deadline)
        return MaskBatch(result.class_ids, [p.original for p in prepared], result.model,
                         result.version, result.variant)

    async def segment_pixels(self, images: npt.NDArray[np.uint8],
                             deadline: Deadline) -> MaskBatch:
        """`[N, H, W, 3]` RGB pixels -> class ids for `N` masks of `H x W`."""
        height, width = int(images.shape[1]), int(images.shape[2])
        for attempt in (1, 2):
            size = self._holder.require().input_size
            with self._batcher.preparing(len(images)):
                pixels = await self._codec.run(_pixels_to_input, images, size,
                                               deadline=deadline)
            try:
                result = await self._batcher.run(pixels, deadline)
            except StaleInput:
                if attempt == 2:
                    raise
                continue
            return MaskBatch(result.class_ids, [(width, height)] * len(images), result.model,
                             result.version, result.variant)
        raise AssertionError("unreachable")

    async def _run_encoded(self, blobs: Sequence[bytes], headers: Sequence[ImageHeader],
                           deadline: Deadline) -> tuple[list[Prepared], BatchResult]:
        """Decode and batch; decode again if a swap changed the input size.

        A request's images are decoded by one codec job, in turn: a 64-image request cannot
        take every codec thread (and their memory) from the requests behind it.
        """
        for attempt in (1, 2):
            size = self._holder.require().input_size
            with self._batcher.preparing(len(blobs)):
                prepared = await self._codec.run(_prepare_all, blobs, headers, size,
                                                 self._max_pixels, deadline=deadline)
            pixels = (prepared[0].pixels[np.newaxis] if len(prepared) == 1
                      else np.stack([p.pixels for p in prepared]))
            try:
                return prepared, await self._batcher.run(pixels, deadline)
            except StaleInput:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _call_with(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    return fn(*args, **kwargs)


def _probe_all(blobs: Sequence[bytes], max_pixels: int) -> list[ImageHeader]:
    return [probe(blob, max_pixels=max_pixels) for blob in blobs]


def _prepare_all(blobs: Sequence[bytes], headers: Sequence[ImageHeader], size: int,
                 max_pixels: int) -> list[Prepared]:
    return [prepare(blob, size, max_pixels, header)
            for blob, header in zip(blobs, headers, strict=True)]


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


GIL_KEPT_CHUNK = 2047
"""hashlib lets go of the GIL for inputs of 2048 bytes or more."""


def _sha256_holding_gil(data: memoryview) -> str:
    """SHA-256 on the event loop without letting go of the GIL.

    Released for a 40 kB image, the GIL goes to a codec or model thread, and the event loop
    (every request's I/O) waits up to a switch interval (5 ms) to get it back, for a hash that
    takes 25 us. Fed in chunks below hashlib's threshold, it keeps the GIL throughout.
    """
    digest = hashlib.sha256()
    for start in range(0, len(data), GIL_KEPT_CHUNK):
        digest.update(data[start:start + GIL_KEPT_CHUNK])
    return digest.hexdigest()


def _cacheable(class_ids: npt.NDArray[np.int32], original: tuple[int, int]) -> CachedMask:
    segmentation = finish(class_ids, original)
    return CachedMask(segmentation.png, segmentation.width, segmentation.height,
                      segmentation.fractions)


def _masks(class_ids: npt.NDArray[np.int32], sizes: Sequence[tuple[int, int]]) -> list[Mask]:
    return [mask_from_class_ids(ids, size) for ids, size in zip(class_ids, sizes, strict=True)]


def _pixels_to_input(images: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.float32]:
    return np.stack([to_model_input(Image.fromarray(image, mode="RGB"), size)
                     for image in images])


