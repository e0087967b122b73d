"""Pre- and post-processing: what the model sees and what users get back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.errors import EmptyBody, InvalidImage, InvalidMask, TooManyPixels, UnsupportedMediaType
from shared.imaging import (
    class_fractions,
    decode_mask,
    encode_png,
    mask_from_class_ids,
    mask_to_class_ids,
    open_image,
    preprocess,
)
from shared.segmentation import prepare
from training.data import decode_pair
from training.synthetic import render


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    xs = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([xs, ys, 255 - xs], -1).astype(np.uint8), "RGB")


def blocky_trimap(width: int, height: int) -> np.ndarray:
    """A trimap made of 4x4 cells, so nearest resizing to 1/4 and back is lossless."""
    rng = np.random.default_rng(7)
    cells = rng.integers(1, 4, size=(height // 4, width // 4), dtype=np.uint8)
    return np.kron(cells, np.ones((4, 4), np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_preprocess_gives_model_input_and_original_size(fmt: str) -> None:
    pixels, original = preprocess(encoded(gradient(500, 375), fmt), 128)
    assert original == (500, 375)
    assert pixels.shape == (128, 128, 3)
    assert pixels.dtype == np.float32
    assert pixels.min() >= 0.0
    assert pixels.max() <= 1.0
    assert pixels[:, :, 0].mean() == pytest.approx(0.5, abs=0.05), "scaled to [0, 1]"
    assert pixels[0, 0, 0] < pixels[0, -1, 0], "left-right orientation kept"
    assert pixels[0, 0, 1] < pixels[-1, 0, 1], "top-bottom orientation kept"


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_become_rgb(mode: str) -> None:
    image = gradient(64, 48).convert(mode)
    pixels, original = preprocess(encoded(image, "PNG"), 32)
    assert pixels.shape == (32, 32, 3)
    assert original == (64, 48)


def test_trimap_round_trip_through_class_ids_and_back() -> None:
    """Class ids at model size -> mask at the image's size; values stay 1/2/3."""
    trimap = blocky_trimap(512, 384)
    ids = mask_to_class_ids(trimap, 128)
    assert ids.shape == (128, 128)
    assert set(np.unique(ids).tolist()) <= {0, 1, 2}
    square = blocky_trimap(512, 512)
    back = mask_from_class_ids(mask_to_class_ids(square, 128), (512, 512))
    np.testing.assert_array_equal(back, square)


def test_mask_comes_back_at_the_input_resolution() -> None:
    ids = np.zeros((128, 128), np.int32)
    ids[:, 64:] = 2
    mask = mask_from_class_ids(ids, (500, 375))
    assert mask.shape == (375, 500), "numpy shape is (height, width)"
    assert set(np.unique(mask).tolist()) == {1, 3}
    assert (mask[0, 0], mask[0, -1]) == (1, 3), "trimap value = class id + 1"


def test_png_mask_round_trip() -> None:
    trimap = blocky_trimap(96, 64)
    assert np.array_equal(decode_mask(encode_png(trimap), (96, 64)), trimap)


def test_decode_mask_refuses_bad_masks() -> None:
    with pytest.raises(InvalidMask, match="1, 2 or 3"):
        decode_mask(encode_png(np.zeros((8, 8), np.uint8)))
    with pytest.raises(InvalidMask, match="expected 16x8"):
        decode_mask(encode_png(np.ones((8, 8), np.uint8)), (16, 8))
    with pytest.raises(InvalidMask, match="PNG"):
        decode_mask(encoded(Image.new("L", (8, 8), 1), "JPEG"))
    with pytest.raises(InvalidMask):
        decode_mask(b"not a png at all")
    with pytest.raises(EmptyBody):
        decode_mask(b"")


def test_open_image_refuses_bad_input() -> None:
    with pytest.raises(EmptyBody):
        open_image(b"")
    with pytest.raises(InvalidImage):
        open_image(b"definitely not an image")
    jpeg = encoded(gradient(64, 64), "JPEG")
    with pytest.raises(InvalidImage, match="truncated"):
        open_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(UnsupportedMediaType):
        open_image(encoded(gradient(8, 8), "GIF"))
    with pytest.raises(TooManyPixels):
        open_image(encoded(gradient(100, 100), "PNG"), max_pixels=9_999)


def test_class_fractions_sum_to_one() -> None:
    mask = np.array([[1, 1, 2, 2], [2, 2, 3, 2]], np.uint8)
    fractions = class_fractions(mask)
    assert fractions == {"pet": 0.25, "background": 0.625, "border": 0.125}


def test_training_decodes_exactly_like_serving() -> None:
    """The loader and the API must feed the model identical pixels for the same bytes."""
    sample = render(seed=3, index=0)
    pixels, ids, ok = decode_pair(sample.jpeg, sample.trimap, 128)
    served = prepare(sample.jpeg, 128)
    assert ok
    np.testing.assert_array_equal(pixels, served.pixels)
    np.testing.assert_array_equal(ids, mask_to_class_ids(decode_mask(sample.trimap), 128))


def test_training_skips_unreadable_pairs_instead_of_failing() -> None:
    sample = render(seed=3, index=0)
    _, _, ok = decode_pair(b"garbage", sample.trimap, 64)
    assert not ok
    _, _, ok = decode_pair(sample.jpeg, encode_png(np.zeros((4, 4), np.uint8)), 64)
    assert not ok
