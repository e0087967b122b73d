"""The served mask built from class ids (`shared.masks`) is Pillow's nearest-neighbour scaling,
pixel for pixel, and its PNG and counts are those of that full mask.

The reference here is computed the way the API computed masks before: Pillow scales the whole
trimap to the image's size. Sizes cover up- and down-scaling, 1-pixel edges, non-integer
ratios and the model sizes in use.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.masks import UpscaledMask, encode_png

MODEL_SIZES = (1, 7, 128, 256)
FIXED_SIZES = [(1, 1), (1, 375), (500, 1), (128, 128), (127, 129), (500, 375), (375, 500),
               (64, 48), (3, 2), (2000, 1500), (4032, 3024), (129, 4000)]


def reference(class_ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    trimap = Image.fromarray((class_ids + 1).astype(np.uint8), mode="L")
    return np.asarray(trimap.resize(size, Image.Resampling.NEAREST), dtype=np.uint8)


def sizes() -> list[tuple[int, tuple[int, int]]]:
    rng = np.random.default_rng(7)
    cases = [(s, size) for s in MODEL_SIZES for size in FIXED_SIZES]
    for _ in range(120):
        width, height = (int(rng.integers(1, limit)) for limit in rng.choice([40, 700, 3000], 2))
        cases.append((int(rng.choice(MODEL_SIZES)), (width, height)))
    return cases


@pytest.mark.parametrize(("model_size", "size"), sizes())
def test_mask_png_and_counts_equal_pillows_full_scaling(model_size: int,
                                                       size: tuple[int, int]) -> None:
    rng = np.random.default_rng(model_size * 10_000 + size[0] * 7 + size[1])
    class_ids = rng.integers(0, 3, (model_size, model_size)).astype(np.int32)
    want = reference(class_ids, size)
    mask = UpscaledMask(class_ids, size)
    assert np.array_equal(mask.pixels(), want)
    assert mask.counts() == tuple(int(np.count_nonzero(want == v)) for v in (1, 2, 3))
    assert mask.png() == encode_png(want)


@pytest.mark.parametrize("pattern", ["speckled", "blob", "flat"])
def test_the_png_decodes_to_the_mask_in_any_decoder(pattern: str) -> None:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:128, 0:128]
    class_ids = {
        "speckled": rng.integers(0, 3, (128, 128)),
        "blob": ((xx - 60) ** 2 + (yy - 70) ** 2 < 40 ** 2) + ((xx - 60) ** 2 + (yy - 70) ** 2
                                                               < 44 ** 2),
        "flat": np.ones((128, 128)),
    }[pattern].astype(np.int32)
    mask = UpscaledMask(class_ids, (500, 375))
    decoded = Image.open(io.BytesIO(mask.png()))
    assert (decoded.mode, decoded.size) == ("L", (500, 375))
    assert np.array_equal(np.asarray(decoded), reference(class_ids, (500, 375)))


def test_class_ids_must_be_two_dimensional() -> None:
    with pytest.raises(ValueError, match="2-D"):
        UpscaledMask(np.zeros((2, 4, 4), np.int32), (8, 8))
