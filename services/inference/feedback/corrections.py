"""Corrected masks for earlier answers: scored against what was served, stored for retraining.

The score is the mean IoU over the trimap classes (pet, background, border) present in the
served or the corrected mask: the definition training uses for held-out mean IoU
(training/evaluate.py), so live and offline quality read on one scale. A class in neither mask
has no IoU and stays out of the mean; identical masks score 1.

The pair lands in the dataset layout under the feedback prefix, where the retraining loader
reads it: `<feedback>/images/<name>.jpg|png` holds the bytes the client sent (training decodes
exactly what serving decoded) and `<feedback>/annotations/trimaps/<name>.png` the correction,
written last because the loader only pairs names that have both files. `<name>` is the image
digest and the model version: what makes an answer the same answer. Decoding, scoring and
storage writes run in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from shared.errors import InvalidMask, MaskfleetError, StorageError, TooManyPixels
from shared.imaging import CLASS_NAMES, Mask, decode_mask
from shared.masks import encode_png
from shared.storage import join, storage_for

from ..metrics import ApiMetrics
from .served import RequestNotKept, ServedMask

log = logging.getLogger(__name__)


class ServedEntries(Protocol):
    """The answers kept for feedback (`RedisServedLog`)."""

    async def find(self, token: str, caller: str) -> ServedMask | None: ...

    async def claim(self, served: ServedMask) -> None: ...

    async def release(self, served: ServedMask) -> None: ...


class FeedbackReceipt(BaseModel):
    """`POST /v1/feedback`: what the correction was scored against."""

    feedback_token: str = Field(description="The X-Feedback-Token of the corrected answer")
    request_id: str = Field(description="X-Request-Id of the /v1/segment answer corrected")
    model: str
    version: int = Field(description="Model version that served the corrected mask")
    iou: float = Field(description="Mean IoU over the classes between the served and the "
                                   "corrected mask (1 = the served mask was right)")


def mask_iou(served: Mask, corrected: Mask) -> float:
    """Mean IoU over the classes present in either trimap (values 1..3)."""
    ious = []
    for value in range(1, len(CLASS_NAMES) + 1):
        a, b = served == value, corrected == value
        union = int(np.count_nonzero(a | b))
        if union:
            ious.append(np.count_nonzero(a & b) / union)
    return float(np.mean(ious)) if ious else 1.0


def read_correction(data: bytes, size: tuple[int, int]) -> Mask:
    """The corrected trimap, refusing (422) a wrong size from the header, before decoding."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            found = image.size
    except Image.DecompressionBombError:  # not an OSError: Pillow's own, raised by open
        raise TooManyPixels("the mask declares far more pixels than allowed") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        found = None
    if found is not None and found != size:
        raise InvalidMask(f"the mask is {found[0]}x{found[1]}; the served mask (the image's "
                          f"resolution) is {size[0]}x{size[1]}")
    return decode_mask(data, size)


def score(served_png: bytes, corrected_png: bytes) -> tuple[Mask, float]:
    """The validated correction and its IoU against the served mask."""
    served = np.asarray(Image.open(io.BytesIO(served_png)), dtype=np.uint8)
    corrected = read_correction(corrected_png, (served.shape[1], served.shape[0]))
    return corrected, mask_iou(served, corrected)


def image_kind(data: bytes) -> tuple[str, str]:
    """File suffix and content type of a served image (only JPEG and PNG are served)."""
    return (".png", "image/png") if data.startswith(b"\x89PNG") else (".jpg", "image/jpeg")


def dataset_name(served: ServedMask) -> str:
    """Image digest and version: the same answer always lands on the same name."""
    return f"{served.image_sha256[:32]}-v{served.version}"


class Feedback:
    """Receives corrections: find the answer, validate and score, claim it once, store, count."""

    def __init__(self, served: ServedEntries, metrics: ApiMetrics, *, uri: str) -> None:
        self._served = served
        self._metrics = metrics
        self._uri = uri.rstrip("/")

    def pair_uris(self, served: ServedMask) -> tuple[str, str]:
        """Where the image and the trimap of a correction go."""
        name = dataset_name(served)
        suffix, _ = image_kind(served.image)
        return (join(self._uri, "images", name + suffix),
                join(self._uri, "annotations", "trimaps", name + ".png"))

    async def receive(self, token: str, caller: str, mask_png: bytes) -> FeedbackReceipt:
        served = await self._served.find(token, caller)
        if served is None:
            raise RequestNotKept()
        corrected, iou = await asyncio.to_thread(score, served.mask_png, mask_png)
        await self._served.claim(served)
        try:
            await asyncio.to_thread(self._store, served, corrected)
        except (MaskfleetError, OSError) as exc:
            await self._served.release(served)
            if isinstance(exc, MaskfleetError) and not isinstance(exc, StorageError):
                raise
            # the storage's own message names bucket paths or local folders: logs only
            detail = exc.detail if isinstance(exc, MaskfleetError) else repr(exc)
            log.error("storing a corrected pair failed", extra={"error": detail})
            raise StorageError("storing the corrected pair failed; try again later") from None
        labels = (str(served.version), served.variant)
        self._metrics.feedback.labels(*labels).inc()
        self._metrics.feedback_iou.labels(*labels).observe(iou)
        log.info("feedback stored", extra={"for_request_id": served.request_id,
                                           "caller": caller, "model": served.model,
                                           "version": served.version, "iou": round(iou, 4)})
        return FeedbackReceipt(feedback_token=token, request_id=served.request_id,
                               model=served.model,
                               version=served.version, iou=round(iou, 6))

    def _store(self, served: ServedMask, corrected: Mask) -> None:
        image_uri, trimap_uri = self.pair_uris(served)
        _, content_type = image_kind(served.image)
        storage = storage_for(self._uri)
        storage.write(image_uri, served.image, content_type)
        storage.write(trimap_uri, encode_png(corrected), "image/png")
