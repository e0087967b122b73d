"""The per-image work a peer's user writes around the SavedModel: JPEG in, PNG mask out.

Both peers call this, so they do the same work as each other and as maskfleet: decode, resize
to the model's input, one batched signature call, class ids back to the image's size as a
trimap (1 pet, 2 background, 3 border) and PNG-encode it. It is the plain Pillow + NumPy code
their tutorials show (a full-size decode, Pillow's PNG encoder), not maskfleet's tuned request
path (`shared.imaging`): how far maskfleet's own shortcuts carry it is part of what the
side-by-side table measures. It imports neither `shared` nor TensorFlow, so it runs in the
peers' virtualenv (var/peers-venv) and in the project's alike.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

ClassIds = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.integer]]
"""A batch `[N, S, S, 3]` of pixels in [0, 1] -> class ids `[N, S, S]` (the signature)."""


def decode(jpeg: bytes, size: int) -> tuple[npt.NDArray[np.float32], tuple[int, int]]:
    """Model input `[S, S, 3]` in [0, 1] and the image's (width, height)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        rgb = image.convert("RGB")
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / np.float32(255.0), rgb.size


def mask_png(class_ids: npt.NDArray[np.integer], size: tuple[int, int]) -> bytes:
    """Class ids at model resolution -> trimap PNG at the image's (width, height)."""
    trimap = Image.fromarray((class_ids + 1).astype(np.uint8), mode="L")
    out = io.BytesIO()
    trimap.resize(size, Image.Resampling.NEAREST).save(out, format="PNG")
    return out.getvalue()


def segment(jpegs: Sequence[bytes], class_ids: ClassIds, size: int) -> list[bytes]:
    """One PNG mask per JPEG, with a single model call for the whole batch."""
    decoded = [decode(jpeg, size) for jpeg in jpegs]
    ids = class_ids(np.stack([pixels for pixels, _ in decoded]))
    return [mask_png(one, original) for one, (_, original) in zip(ids, decoded, strict=True)]
