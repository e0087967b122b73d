"""Scoring a correction: the IoU definition, and which corrected masks are refused (422)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.inference.feedback.corrections import (
    dataset_name,
    image_kind,
    mask_iou,
    read_correction,
    score,
)
from shared.errors import EmptyBody, InvalidMask, TooManyPixels
from shared.masks import encode_png


def trimap(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


def test_identical_masks_score_one():
    mask = trimap([[1, 2, 3], [1, 1, 2]])
    assert mask_iou(mask, mask) == 1.0


def test_iou_is_the_mean_over_the_classes_in_either_mask():
    served = trimap([[1, 1, 2, 2]])
    corrected = trimap([[1, 2, 2, 2]])
    # pet: 1 shared of 2 -> 0.5; background: 2 shared of 3 -> 2/3; border in neither: left out
    assert mask_iou(served, corrected) == pytest.approx((0.5 + 2 / 3) / 2)


def test_a_class_only_one_mask_has_scores_zero_for_that_class():
    served = trimap([[1, 1, 3, 3]])
    corrected = trimap([[1, 1, 2, 2]])
    assert mask_iou(served, corrected) == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_completely_wrong_masks_score_zero():
    assert mask_iou(trimap([[1, 1]]), trimap([[2, 2]])) == 0.0


def test_score_reads_the_served_png_and_checks_the_correction():
    served = np.full((30, 40), 2, np.uint8)
    served[:, :20] = 1
    corrected = served.copy()
    corrected[:, 10:20] = 2
    mask, iou = score(encode_png(served), encode_png(corrected))
    assert (mask == corrected).all()
    assert iou == pytest.approx((300 / 600 + 600 / 900) / 2)


def png(pixels: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(("body", "fragment"), [
    (png(np.full((30, 40), 1, np.uint8)), "40x30"),                      # transposed
    (png(np.full((20, 10), 1, np.uint8)), "10x20"),                      # too small
    (png(np.full((10, 20), 4, np.uint8)), "values must be 1, 2 or 3"),
    (png(np.full((10, 20), 0, np.uint8)), "values must be 1, 2 or 3"),
    (png(np.full((10, 20, 3), 1, np.uint8), "RGB", "JPEG"), "PNG"),
    (b"not a png at all", "not a readable PNG"),
])
def test_a_correction_of_the_wrong_size_or_values_is_invalid(body, fragment):
    with pytest.raises(InvalidMask, match=fragment) as raised:
        read_correction(body, (20, 10))
    assert raised.value.status == 422


def test_a_correction_declaring_a_bomb_is_refused_as_too_many_pixels():
    """Pillow's own DecompressionBombError is no OSError: it escaped as a 500."""
    out = io.BytesIO()
    Image.new("L", (16, 16), 1).save(out, format="PNG")
    data = bytearray(out.getvalue())
    data[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(TooManyPixels) as raised:
        read_correction(bytes(data), (20, 10))
    assert raised.value.status == 413


def test_an_empty_correction_is_a_bad_request():
    with pytest.raises(EmptyBody):
        read_correction(b"", (20, 10))


def test_palette_and_greyscale_trimaps_are_both_accepted():
    values = np.array([[1, 2], [3, 1]], np.uint8)
    palette = Image.fromarray(values, mode="P")  # what annotation tools often write
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255, 255, 255, 0])
    out = io.BytesIO()
    palette.save(out, format="PNG")
    assert (read_correction(out.getvalue(), (2, 2)) == values).all()
    assert (read_correction(png(values), (2, 2)) == values).all()


def test_pairs_are_named_by_answer_not_by_a_client_chosen_id_and_keep_the_image_format():
    from services.inference.feedback import ServedMask

    def answer(request_id: str, version: int) -> ServedMask:
        return ServedMask("tok", "web", request_id, "unet", version, b"img", "ab" * 32, b"m",
                          False)

    assert dataset_name(answer("../../etc", 3)) == "ab" * 16 + "-v3"
    assert dataset_name(answer("other", 3)) == dataset_name(answer(".hidden", 3))
    assert dataset_name(answer("x", 4)) != dataset_name(answer("x", 3))
    assert image_kind(b"\x89PNG\r\n\x1a\n...") == (".png", "image/png")
    assert image_kind(b"\xff\xd8\xff\xe0...") == (".jpg", "image/jpeg")
