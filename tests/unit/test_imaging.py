"""Pre- and post-processing: what the model sees and what users get back."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from shared.errors import EmptyBody, InvalidImage, InvalidMask, TooManyPixels, UnsupportedMediaType
from shared.imaging import (
    apply_exif_orientation,
    class_fractions,
    decode_mask,
    mask_from_class_ids,
    mask_to_class_ids,
    open_image,
    preprocess,
    probe,
)
from shared.masks import encode_png
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


# --- hostile and unusual inputs: refused from the header, or converted predictably ---------

def png_header_only(width: int, height: int, colour_type: int = 2) -> bytes:
    """A PNG that declares `width x height` and carries one tiny IDAT (a bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header is patched to declare `width x height`."""
    data = bytearray(encoded(gradient(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def test_a_huge_png_header_is_too_many_pixels_not_an_unknown_format() -> None:
    with pytest.raises(TooManyPixels):
        probe(png_header_only(30000, 30000))
    with pytest.raises(TooManyPixels, match="per image"):
        probe(png_header_only(6300, 6300))


def test_a_png_compressed_beyond_any_real_image_is_a_bomb() -> None:
    flat = encoded(Image.new("L", (3000, 3000)), "PNG")  # 9 MP of zeros in a few KB
    with pytest.raises(TooManyPixels, match="decompression bomb"):
        probe(flat)
    small_flat = encoded(Image.new("L", (500, 500)), "PNG")
    assert probe(small_flat).size == (500, 500), "small flat images stay cheap and pass"
    noise = np.random.default_rng(1).integers(0, 8, (1000, 1200, 3), dtype=np.uint8)
    photo_like = Image.fromarray(np.asarray(gradient(1200, 1000)) // 2 + noise)
    assert probe(encoded(photo_like, "PNG")).size == (1200, 1000)


def test_a_jpeg_whose_scan_ends_long_before_its_declared_size_is_refused() -> None:
    with pytest.raises(InvalidImage, match="truncated"):
        probe(jpeg_declaring(3000, 3000))
    flat = encoded(Image.new("RGB", (3000, 2000), (120, 80, 40)), "JPEG")
    assert probe(flat).size == (3000, 2000), "a real flat photo has enough scan data"


def test_trailing_bytes_are_not_part_of_the_image() -> None:
    for fmt in ("JPEG", "PNG"):
        data = encoded(gradient(40, 30), fmt)
        assert probe(data + b"\x00trailing junk\xff\xd9").length == len(data)


def test_mpo_photos_are_read_as_their_first_frame() -> None:
    first, second = gradient(64, 48), gradient(64, 48).rotate(180)
    mpo = encoded(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    header = probe(mpo)
    assert (header.format, header.size) == ("JPEG", (64, 48))
    pixels, _ = preprocess(mpo, 32)
    expected, _ = preprocess(encoded(first, "JPEG"), 32)
    assert np.abs(pixels - expected).mean() < 0.02


def test_exif_orientation_gives_masks_in_the_orientation_viewers_show() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise (portrait)
    stored = gradient(80, 40)
    data = encoded(stored, "JPEG", exif=exif)
    assert probe(data).size == (40, 80)
    image, size = open_image(data)
    assert size == image.size == (40, 80)
    upright = np.asarray(stored.transpose(Image.Transpose.ROTATE_270), np.float32)
    assert np.abs(np.asarray(image, np.float32) - upright).mean() < 3
    assert apply_exif_orientation(stored, 1) is stored


def test_sixteen_bit_cmyk_palette_and_alpha_convert_predictably() -> None:
    ramp = (np.arange(256, dtype=np.uint16)[None, :].repeat(8, 0) * 257)
    sixteen = Image.fromarray(ramp.astype("<u2"))  # mode I;16
    image, _ = open_image(encoded(sixteen, "PNG"))
    np.testing.assert_array_equal(np.asarray(image)[0, :, 0], np.arange(256))

    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    red = np.asarray(open_image(encoded(cmyk, "JPEG"))[0], np.int32)
    assert red[..., 0].mean() > 200
    assert red[..., 1:].mean() < 60

    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.asarray(open_image(encoded(clear, "PNG"))[0]).min() == 255, "over white"

    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    np.testing.assert_array_equal(np.asarray(open_image(encoded(palette, "PNG"))[0])[0, 0],
                                  [10, 20, 30])
    transparent = encoded(palette, "PNG", transparency=0)
    assert np.asarray(open_image(transparent)[0]).min() == 255


def png_chunks(data: bytes) -> list[bytes]:
    chunks, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        chunks.append(data[offset:offset + 12 + length])
        offset += 12 + length
    return chunks


@pytest.mark.parametrize("exif_after_pixels", [False, True])
def test_a_png_probe_finds_its_exif_orientation_without_decoding_the_pixels(
        exif_after_pixels: bool) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: upright it is 30 wide, 40 high
    chunks = png_chunks(encoded(gradient(40, 30), "PNG", exif=exif))
    kinds = [chunk[4:8] for chunk in chunks]
    assert b"eXIf" in kinds
    if exif_after_pixels:  # allowed by the PNG spec; Pillow only sees it after decoding
        moved = chunks.pop(kinds.index(b"eXIf"))
        chunks.insert(len(chunks) - 1, moved)
    # pixel data no decoder can read: a probe that decoded would fail
    broken = [c if c[4:8] != b"IDAT" else
              struct.pack(">I", 16) + b"IDAT" + b"\x00" * 16 + struct.pack(">I", 0)
              for c in chunks]
    data = b"\x89PNG\r\n\x1a\n" + b"".join(broken)
    header = probe(data)
    assert (header.format, header.size) == ("PNG", (30, 40))
    intact = b"\x89PNG\r\n\x1a\n" + b"".join(chunks)
    image, size = open_image(intact)
    assert size == image.size == (30, 40)  # the decoder agrees with the probe
