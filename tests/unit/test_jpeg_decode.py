"""JPEGs decoded by simplejpeg (shared.jpeg) give exactly the pixels Pillow gave, and every
JPEG Pillow refused is still refused with the same error.

The reference is Pillow's decode as shared/imaging did it before simplejpeg, from Pillow's
public API (open, draft, load) and the two public steps it shares with the pipeline; the
outcomes of hostile bytes are compared with the pipeline whose frame reader is switched off,
which is the Pillow path taken before, unchanged.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import pytest
import simplejpeg
from PIL import Image

import shared.imaging
from shared.errors import EmptyBody, InvalidImage, MaskfleetError, TooManyPixels
from shared.imaging import apply_exif_orientation, open_image, probe, to_rgb
from shared.jpeg import decode_rgb, draft_scale, read_frame

Pixels = npt.NDArray[np.uint8]
DRAFT_SIZES = (None, 128, 224, 32)
# sides on both sides of where Pillow's draft switches scale for 128 and 224 (2x, 4x, 8x)
THRESHOLDS = (255, 256, 257, 447, 448, 449, 511, 512, 513, 895, 896, 897, 1023, 1024, 1025)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients, edges and noise: every DCT coefficient and the chroma upsampling matter."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([(xs * 7 + ys * 3) % 256, (xs // 5 * 40 + ys) % 256,
                     ((xs ^ ys) * 3) % 256], -1)
    noise = rng.integers(0, 48, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=str(options.pop("format", "JPEG")), quality=90, **options)
    return out.getvalue()


def with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def camera_exif() -> Image.Exif:
    """Orientation and resolution as cameras write them (Pillow reads the DPI from EXIF)."""
    exif = with_orientation(8)
    exif[0x0128] = 2  # inches
    exif[0x011A] = exif[0x011B] = 300.0
    return exif


def pillow_decode(data: bytes, draft_size: int | None) -> Pixels:
    """Before simplejpeg: Pillow opens, drafts (JPEG only), loads, turns upright, to RGB."""
    image = Image.open(io.BytesIO(data))
    orientation = int(image.getexif().get(0x0112, 1))
    if draft_size and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    return np.asarray(to_rgb(apply_exif_orientation(image, orientation)))


def corpus() -> Iterator[tuple[str, bytes]]:
    """JPEGs as cameras, phones, editors and Pillow write them."""
    for width, height in [(1, 1), (2, 3), (7, 5), (8, 8), (9, 17), (16, 16), (500, 375),
                          (375, 500), (2000, 1500), (1999, 1333)]:
        yield f"{width}x{height}", jpeg(photo(width, height))
    for side in THRESHOLDS:
        yield f"{side}x{side + 2}", jpeg(photo(side, side + 2, seed=side), subsampling=2)
        yield f"{side}x300", jpeg(photo(side, 300, seed=side), subsampling=0)
    for name, subsampling in [("4:4:4", 0), ("4:2:2", 1), ("4:2:0", 2)]:
        for progressive in (False, True):
            image = photo(513, 383, seed=subsampling)
            yield (f"{name} progressive={progressive}",
                   jpeg(image, subsampling=subsampling, progressive=progressive))
    yield "optimized Huffman tables", jpeg(photo(300, 200), optimize=True)
    yield "restart markers", jpeg(photo(300, 200), restart_marker_rows=1)
    yield "RGB, no YCbCr (Adobe transform 0)", jpeg(photo(300, 200), keep_rgb=True)
    yield "gray", jpeg(photo(333, 257).convert("L"))
    yield "gray progressive", jpeg(photo(1025, 515).convert("L"), progressive=True)
    yield "1x1 gray", jpeg(photo(1, 1).convert("L"))
    for orientation in range(1, 9):
        yield f"EXIF orientation {orientation}", jpeg(photo(301, 203),
                                                      exif=with_orientation(orientation))
    yield "EXIF orientation 6, JFIF dpi", jpeg(photo(301, 203), exif=with_orientation(6),
                                               dpi=(300, 300))
    yield "camera EXIF (orientation 8, resolution)", jpeg(photo(301, 203), exif=camera_exif())
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="8"/></x:xmpmeta>'
    yield "XMP orientation 8", jpeg(photo(301, 203), xmp=xmp)
    yield "ICC profile, comment", jpeg(photo(200, 150), icc_profile=b"\0" * 300, comment="c")
    first, second = photo(600, 400), photo(600, 400, seed=1)
    yield "MPO", jpeg(first, format="MPO", save_all=True, append_images=[second],
                      exif=with_orientation(3))
    yield "trailing bytes", jpeg(photo(300, 200)) + b"\x00trailing junk\xff\xd9\xff\xd8"
    yield "CMYK", jpeg(photo(300, 200).convert("CMYK"))


CORPUS = dict(corpus())


@pytest.mark.parametrize("name", CORPUS)
def test_jpegs_decode_to_pillows_pixels(name: str) -> None:
    data = CORPUS[name]
    header = probe(data)
    assert header.jpeg is not None, "a well-formed JPEG is probed without Pillow"
    stored = Image.open(io.BytesIO(data))
    assert (header.jpeg.width, header.jpeg.height) == stored.size
    upright = pillow_decode(data, None).shape[1::-1]
    assert header.size == upright
    for draft_size in DRAFT_SIZES:
        expected = pillow_decode(data, draft_size)
        image, size = open_image(data, draft_size=draft_size)
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), expected,
                                      err_msg=f"{name}, draft {draft_size}")
        assert size == upright
        fast = decode_rgb(data, header.jpeg, draft_size)
        if header.jpeg.components == 4:
            assert fast is None, "CMYK is converted by Pillow, as before"
        else:
            assert fast is not None, f"{name} decoded by simplejpeg at draft {draft_size}"


def test_the_upright_size_is_the_one_viewers_show() -> None:
    for orientation in range(1, 9):
        data = CORPUS[f"EXIF orientation {orientation}"]
        transposed = orientation in (5, 6, 7, 8)
        assert probe(data).size == ((203, 301) if transposed else (301, 203))
        assert open_image(data)[0].size == probe(data).size
    assert probe(CORPUS["XMP orientation 8"]).size == (203, 301)


def app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


@pytest.mark.parametrize(("first", "second"), [(6, 3), (1, 8)])
def test_several_exif_and_xmp_segments_read_as_pillow_reads_them(first: int,
                                                                  second: int) -> None:
    """Pillow appends later EXIF segments to the first (whose IFD0 wins) and keeps the last
    XMP packet, which counts only when EXIF has no orientation."""
    extra = app1(with_orientation(second).tobytes())
    xmp = [app1(b"http://ns.adobe.com/xap/1.0/\0" + f'tiff:Orientation="{o}"'.encode())
           for o in (second, 7)]
    for data in (jpeg(photo(64, 48), exif=with_orientation(first)),
                 jpeg(photo(64, 48), exif=with_orientation(5)), jpeg(photo(64, 48))):
        scan = data.index(b"\xff\xdb")
        for segments in ([extra], xmp, [extra, *xmp]):
            variant = data[:scan] + b"".join(segments) + data[scan:]
            frame = read_frame(variant)
            assert frame is not None
            assert frame.orientation == Image.open(io.BytesIO(variant)).getexif().get(0x0112, 1)
            np.testing.assert_array_equal(np.asarray(open_image(variant, draft_size=16)[0]),
                                          pillow_decode(variant, 16))


def test_tiny_images_scaled_by_pillow_alone() -> None:
    """Under 8 px a smaller libjpeg scale reaches the same output size, and simplejpeg would
    pick it: those few decodes stay with Pillow."""
    data = CORPUS["7x5"]
    frame = read_frame(data)
    assert frame is not None
    assert draft_scale(7, 5, 2) == 2
    assert decode_rgb(data, frame, 2) is None
    np.testing.assert_array_equal(np.asarray(open_image(data, draft_size=2)[0]),
                                  pillow_decode(data, 2))


def test_simplejpeg_picks_the_scale_pillows_draft_picks() -> None:
    """libjpeg's output side at scale 1/s is ceil(side / s); asking simplejpeg for exactly that
    size gives exactly that size (so scale 1/s: from 8 px up each k/8 gives another size)."""
    base = bytearray(jpeg(photo(16, 16)))
    sof = base.index(b"\xff\xc0")
    sides = sorted({*range(8, 80), *THRESHOLDS, *(t * 2 + d for t in THRESHOLDS for d in (-1, 1)),
                    500, 375, 1999, 4000, 4001, 30001})
    checked = 0
    for draft_size in (32, 64, 128, 224, 256):
        for width in sides:
            for height in (width, 8, 375, 1001, 2 * draft_size, 2 * draft_size - 1):
                struct.pack_into(">HH", base, sof + 5, height, width)
                scale = draft_scale(width, height, draft_size)
                if scale == 1:
                    continue
                wanted = (-(-height // scale), -(-width // scale))
                got = simplejpeg.decode_jpeg_header(bytes(base), min_height=wanted[0],
                                                    min_width=wanted[1])[:2]
                assert got == wanted, (width, height, draft_size, scale)
                checked += 1
    assert checked > 500


def test_draft_scale_is_pillows() -> None:
    data = bytearray(jpeg(photo(16, 16)))
    sof = data.index(b"\xff\xc0")
    for width, height, size in [(500, 375, 128), (256, 256, 128), (255, 1000, 128),
                                (1024, 1024, 128), (1023, 2000, 128), (4000, 3000, 224),
                                (100, 100, 128), (1792, 1793, 224)]:
        struct.pack_into(">HH", data, sof + 5, height, width)
        image = Image.open(io.BytesIO(bytes(data)))
        image.draft("RGB", (size, size))
        scale = draft_scale(width, height, size)
        assert image.size == (-(-width // scale), -(-height // scale))


# --- refusals: the same error classes as before --------------------------------------------

def declaring(width: int, height: int) -> bytes:
    data = bytearray(jpeg(photo(16, 16)))
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, height, width)
    return bytes(data)


def pillow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline as it was: no frame is read without Pillow, so Pillow probes and decodes."""
    monkeypatch.setattr(shared.imaging, "read_frame", lambda data: None)


Outcome = tuple[str, Pixels | None, tuple[int, int] | None]


def outcome(data: bytes, draft_size: int | None, max_pixels: int = 16_000_000) -> Outcome:
    try:
        image, size = open_image(data, draft_size=draft_size, max_pixels=max_pixels)
    except MaskfleetError as exc:
        return type(exc).__name__, None, None
    return "decoded", np.asarray(image), size


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_hostile_jpegs_keep_their_errors() -> None:
    whole = jpeg(photo(300, 200))
    with pytest.raises(EmptyBody):
        probe(b"")
    with pytest.raises(InvalidImage, match="truncated"):
        open_image(whole[: len(whole) // 2])
    with pytest.raises(InvalidImage):
        open_image(whole[:300])  # cut inside the headers
    with pytest.raises(TooManyPixels):
        probe(declaring(60000, 60000))
    with pytest.raises(TooManyPixels):  # beyond Pillow's own bomb limit, whatever ours is
        probe(declaring(60000, 60000), max_pixels=4_000_000_000)
    with pytest.raises(InvalidImage, match="truncated"):
        probe(declaring(12000, 12000), max_pixels=4_000_000_000)
    with pytest.raises(InvalidImage, match="truncated"):
        probe(declaring(3000, 3000))
    junk = whole.replace(b"\xff\xdb", b"\xff\x01\xff\xdb", 1)  # a marker Pillow does not know
    with pytest.raises(InvalidImage):
        probe(junk)
    image_only = jpeg(photo(64, 64), streamtype=2)  # no tables: no decoder can read it
    with pytest.raises(InvalidImage):
        open_image(image_only)


def ascii_resolution_exif() -> bytes:
    """An EXIF block whose XResolution is an empty string: Pillow's JPEG reader fails on it."""
    entries = [(0x0128, 3, 1, struct.pack(">HH", 2, 0)), (0x011A, 2, 1, b"\0\0\0\0")]
    ifd = struct.pack(">H", len(entries)) + b"".join(
        struct.pack(">HHI", tag, kind, count) + value for tag, kind, count, value in entries)
    return b"Exif\0\0MM\0*" + struct.pack(">I", 8) + ifd + b"\0\0\0\0"


def test_an_exif_block_pillow_refuses_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    data = jpeg(photo(64, 48), exif=ascii_resolution_exif())
    assert read_frame(data) is None
    with pytest.raises(InvalidImage):
        probe(data)
    with_dpi = jpeg(photo(64, 48), exif=ascii_resolution_exif(), dpi=(72, 72))
    assert read_frame(with_dpi) is not None, "with a JFIF dpi Pillow never reads it"
    expected = outcome(with_dpi, 32)
    pillow_path(monkeypatch)
    before = outcome(with_dpi, 32)
    assert expected[0] == before[0] == "decoded"
    np.testing.assert_array_equal(expected[1], before[1])


def mutations(data: bytes, seed: int, count: int) -> Iterator[bytes]:
    """Truncations, changed bytes (in the headers and in the scan) and inserted junk."""
    rng = np.random.default_rng(seed)
    scan = data.index(b"\xff\xda")
    for _ in range(count):
        kind = rng.integers(0, 4)
        cut = int(rng.integers(2, len(data)))
        header_byte = int(rng.integers(2, scan + 12))
        if kind == 0:
            yield data[:cut]
        elif kind == 1:
            yield data[:header_byte] + bytes([int(rng.integers(0, 256))]) + data[header_byte + 1:]
        elif kind == 2:
            yield data[:cut] + bytes([int(rng.integers(0, 256))]) + data[cut + 1:]
        else:
            junk = rng.integers(0, 256, int(rng.integers(1, 6)), dtype=np.uint8).tobytes()
            yield data[:header_byte] + junk + data[header_byte:]


SEEDS: dict[str, Callable[[], bytes]] = {
    "baseline": lambda: jpeg(photo(80, 60)),
    "progressive gray": lambda: jpeg(photo(80, 60).convert("L"), progressive=True),
    "exif and dpi": lambda: jpeg(photo(80, 60), exif=with_orientation(6), dpi=(96, 96)),
    "exif resolution": lambda: jpeg(photo(80, 60), exif=camera_exif()),
    "icc and photoshop-free xmp": lambda: jpeg(photo(80, 60), icc_profile=b"\1" * 40,
                                               xmp=b'tiff:Orientation="3"'),
    "cmyk": lambda: jpeg(photo(80, 60).convert("CMYK")),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("seed", SEEDS)
def test_corrupt_jpegs_end_as_they_did_with_pillow(seed: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever Pillow made of damaged bytes (an error class, or pixels), the fast path makes
    the same: it refuses what Pillow refused and decodes what Pillow decoded, to its pixels."""
    damaged = list(mutations(SEEDS[seed](), seed=len(seed), count=150))
    now = [outcome(data, draft) for data in damaged for draft in (None, 16)]
    pillow_path(monkeypatch)
    before = [outcome(data, draft) for data in damaged for draft in (None, 16)]
    for index, (new, old) in enumerate(zip(now, before, strict=True)):
        assert new[0] == old[0], (index, new[0], old[0])
        assert new[2] == old[2]
        if new[1] is not None:
            np.testing.assert_array_equal(new[1], old[1], err_msg=str(index))
    assert {"decoded", "InvalidImage"} <= {kind for kind, _, _ in now}
