"""Pre- and post-processing shared by training, the API and the worker.

It lives once, here, because a mismatch between training and serving silently ruins accuracy.
Masks on the wire and in storage use the Oxford-IIIT Pet trimap values (1 pet, 2 background,
3 border); the model works in class ids (value - 1).

Untrusted bytes go through `probe` first: it reads only the header and refuses, before a single
pixel is decoded, what would cost memory out of proportion to its size (too many pixels, a PNG
compressed beyond what real images reach, a JPEG whose scan data stops long before its
declared size). Decoding then applies the EXIF orientation and turns every accepted mode into
8-bit RGB the same way for serving, the batch worker and training.

Well-formed JPEGs of 1 or 3 components (nearly every image served) are probed and decoded by
`shared.jpeg` (simplejpeg's libjpeg-turbo) instead of Pillow, for the same pixels at less CPU;
anything else, and any JPEG that module is not sure of, takes Pillow's path.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from shared.errors import (
    EmptyBody,
    InvalidImage,
    InvalidMask,
    TooManyPixels,
    UnsupportedMediaType,
)
from shared.jpeg import EXIF_PREFIX, JpegFrame, decode_rgb, orientation_of, read_frame
from shared.masks import PNG_SIGNATURE, UpscaledMask, trimap_counts
from shared.masks import Mask as Mask  # the type of a mask, re-exported where it always was

# Our own pixel limit applies (`probe`, before anything is decoded); Pillow's warning threshold
# is only noise here. Set once for the process: a `catch_warnings` block per image copied the
# warning filters twice per request on the API's event loop.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

CLASS_NAMES: tuple[str, ...] = ("pet", "background", "border")
TRIMAP_VALUES = frozenset({1, 2, 3})
ALLOWED_FORMATS = frozenset({"JPEG", "PNG"})
DEFAULT_MAX_PIXELS = 16_000_000
"""Per image: a 16 MP phone photo fits; a 128-px model gains nothing from more."""
MAX_PNG_RATIO = 400.0
"""Decoded bytes per PNG byte beyond which a large PNG is treated as a decompression bomb.
Photos compress 2-4x and screenshots 10-50x; deflate's own ceiling is ~1030x, which is what
bombs (an all-zero canvas) reach. A megapixel-sized PNG this empty (one flat colour, a pure
synthetic gradient) has nothing to segment either, so it is refused too (413)."""
RATIO_CHECK_MIN_PIXELS = 1_000_000
"""Below this many pixels decoding is cheap whatever the ratio, so flat small images pass."""
MIN_JPEG_SCAN_BITS_PER_BLOCK = 0.5
"""Huffman-coded JPEG scans spend at least one bit per 8x8 luma block (DC difference); half
of that leaves room for any legitimate encoder, while a 633-byte header declaring 6300x6300
(620k blocks) is 100x short."""
PREPROCESSING_ID = "rgb-exif-draft-bilinear-unit-v2"
"""Names this preprocessing in cache keys: change it whenever the pixels fed to the model change."""

FloatImage = npt.NDArray[np.float32]

_FORMAT_ALIASES = {"MPO": "JPEG"}
"""Phone cameras save multi-picture JPEGs (MPO): the first frame is an ordinary JPEG."""
_TRANSPOSED = frozenset({5, 6, 7, 8})
"""EXIF orientations that swap width and height (rotations by 90 or 270 degrees)."""
_PNG_EXIF = b"eXIf"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
_JPEG_EOI_SEARCH = re.compile(re.escape(_JPEG_EOI))
"""`bytes.find` looks for a two-byte needle at ~1 ns per byte (33 us in a 38 KB JPEG, half of
a probe); `re`'s literal search finds the same first match in a third of that."""
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""PNG colour type -> samples per pixel (gray, RGB, palette, gray+alpha, RGBA)."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read without decoding any pixel."""

    format: str
    """`JPEG` or `PNG` (an MPO counts as JPEG: its first frame is read)."""
    width: int
    """Width as viewers show it, i.e. after the EXIF orientation: the mask's width."""
    height: int
    length: int
    """Bytes of the image proper; anything after its end marker is ignored (and not part of
    the cache key, so trailing bytes do not defeat the cache)."""
    jpeg: JpegFrame | None = field(default=None, repr=False)
    """A JPEG's frame when its headers were read without Pillow: decoding skips Pillow too."""

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def probe(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
          formats: frozenset[str] = ALLOWED_FORMATS) -> ImageHeader:
    """Read the header and refuse, before decoding, what is not worth decoding.

    400 empty, 415 not an allowed format, 413 `too_many_pixels` (over `max_pixels`, or a PNG
    that only a decompression bomb compresses so well), 422 unreadable header or a JPEG whose
    scan data ends long before its declared size.
    """
    header = _probe_jpeg(data, max_pixels) if "JPEG" in formats else None
    return header or _probe_pillow(data, max_pixels, formats)


def _probe_jpeg(data: bytes, max_pixels: int) -> ImageHeader | None:
    """A well-formed JPEG's header without Pillow (`shared.jpeg.read_frame`), or `None`, also
    for every JPEG that `_probe_pillow` refuses: that one raises the error, as it always did."""
    frame = read_frame(data)
    if frame is None:
        return None
    pixels = frame.width * frame.height
    if pixels > max_pixels or (Image.MAX_IMAGE_PIXELS and pixels > 2 * Image.MAX_IMAGE_PIXELS):
        return None
    try:
        length = _jpeg_length(data, frame.width, frame.height, frame.scan_start)
    except InvalidImage:
        return None
    width, height = frame.width, frame.height
    if frame.orientation in _TRANSPOSED:
        width, height = height, width
    return ImageHeader("JPEG", width, height, length, frame)


def _probe_pillow(data: bytes, max_pixels: int, formats: frozenset[str]) -> ImageHeader:
    image = _open(data)
    try:
        kind = _FORMAT_ALIASES.get(str(image.format), str(image.format))
        if kind not in formats:
            raise UnsupportedMediaType(f"image format {image.format} is not allowed "
                                       f"(allowed: {', '.join(sorted(formats))})")
        width, height = image.size
        if width * height > max_pixels:
            raise TooManyPixels(f"{width}x{height} is more than the {max_pixels} pixels "
                                "allowed per image")
        if kind == "PNG":
            length = _png_length(data)
            _refuse_png_bomb(data, width, height)
        else:
            length = _jpeg_length(data, width, height)
        orientation = _png_orientation(data) if kind == "PNG" else _orientation(image)
        if orientation in _TRANSPOSED:
            width, height = height, width
        return ImageHeader(kind, width, height, length)
    finally:
        image.close()


def _open(data: bytes) -> Image.Image:
    if not data:
        raise EmptyBody("the image is empty (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise TooManyPixels("the image declares far more pixels than allowed") from None
    except UnidentifiedImageError:
        raise InvalidImage("the bytes are not a JPEG or PNG image") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise InvalidImage(f"the image header is truncated or corrupt: {exc}") from None


def _orientation(image: Image.Image) -> int:
    try:
        return orientation_of(image.getexif())
    except Exception:  # a corrupt EXIF block is ignored, as viewers do
        return 1


def _png_orientation(data: bytes) -> int:
    """The orientation in a PNG's `eXIf` chunk, read from the chunk list without decoding.

    Pillow's `getexif()` on a PNG whose EXIF is not among the chunks before the pixels decodes
    the whole image to look after them, which made every PNG header probe a full decode (90 ms
    for 3000x3000) before the real one. The last `eXIf` chunk wins, as in Pillow.
    """
    if _PNG_EXIF not in data:
        return 1
    found: bytes | None = None
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        kind = data[offset + 4:offset + 8]
        if kind == _PNG_EXIF:
            found = data[offset + 8:offset + 8 + length]
        elif kind == b"IEND":
            break
        offset += 12 + length  # length, type, data, CRC
    if found is None:
        return 1
    exif = Image.Exif()
    try:
        exif.load(EXIF_PREFIX + found)  # the prefix Pillow's PNG reader adds
    except Exception:  # a corrupt EXIF block is ignored, as viewers do
        return 1
    return orientation_of(exif)


def _png_length(data: bytes) -> int:
    end = data.find(_PNG_IEND)
    return len(data) if end < 0 else end + len(_PNG_IEND)


def _refuse_png_bomb(data: bytes, width: int, height: int) -> None:
    if width * height < RATIO_CHECK_MIN_PIXELS or len(data) < 26:
        return
    bit_depth, colour_type = data[24], data[25]
    decoded = width * height * _PNG_CHANNELS.get(colour_type, 4) * max(bit_depth, 8) // 8
    if decoded / len(data) > MAX_PNG_RATIO:
        raise TooManyPixels(
            f"a {len(data)}-byte PNG declaring {width}x{height} would decode to {decoded} bytes "
            f"(more than {MAX_PNG_RATIO:.0f}x its size): refused as a decompression bomb")


def _jpeg_length(data: bytes, width: int, height: int, scan: int | None = None) -> int:
    """End of the first image (its EOI), after checking that its scan data is plausible."""
    scan = _jpeg_scan_start(data) if scan is None else scan
    end = _JPEG_EOI_SEARCH.search(data, scan)
    length = len(data) if end is None else end.end()
    blocks = -(-width // 8) * -(-height // 8)
    if (length - scan) * 8 < blocks * MIN_JPEG_SCAN_BITS_PER_BLOCK:
        raise InvalidImage(
            f"the JPEG declares {width}x{height} but carries only {length - scan} bytes of "
            "scan data: it is truncated")
    return length


def _jpeg_scan_start(data: bytes) -> int:
    """Offset of the first entropy-coded byte: walk the marker segments up to SOS."""
    offset = 2  # after SOI
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise InvalidImage("the JPEG's marker segments are corrupt")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        length = int.from_bytes(data[offset + 2:offset + 4], "big")
        offset += 2 + length
        if marker == 0xDA:  # start of scan: the segment just skipped was its header
            return min(offset, len(data))
    raise InvalidImage("the JPEG has no scan data")


def open_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] = ALLOWED_FORMATS,
    draft_size: int | None = None,
    header: ImageHeader | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode JPEG/PNG bytes to upright 8-bit RGB, refusing bombs before decoding (`probe`).

    Returns the image (possibly JPEG-draft reduced, never below `draft_size`) and the upright
    (width, height), which is the resolution masks go back at. `header` skips a second probe
    when the caller already has one for these bytes.
    """
    header = header or probe(data, max_pixels=max_pixels, formats=formats)
    if header.jpeg is not None:
        pixels = decode_rgb(data, header.jpeg, draft_size)
        if pixels is not None:
            upright = apply_exif_orientation(Image.fromarray(pixels), header.jpeg.orientation)
            return upright, header.size
    image = _open(data)
    orientation = _orientation(image)
    if draft_size and header.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise InvalidImage(f"the image is truncated or corrupt: {exc}") from None
    return to_rgb(apply_exif_orientation(image, orientation)), header.size


_ORIENTATION_STEPS: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def apply_exif_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """The image as viewers show it: the one place serving, the worker and training turn
    a camera's stored pixels upright (EXIF tag 0x0112; 1 or unknown leaves them as they are).

    Masks therefore come back in the orientation users see, and training learns from the
    same upright pixels the API serves.
    """
    step = _ORIENTATION_STEPS.get(orientation)
    return image if step is None else image.transpose(step)


_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def to_rgb(image: Image.Image) -> Image.Image:
    """Any accepted mode -> 8-bit RGB, predictably.

    16-bit gray keeps its high byte (Pillow's own conversion would clip most values to white);
    transparency (alpha, or a palette/gray transparent colour) is composited over white, the
    background viewers show; CMYK, palette, gray and bilevel use Pillow's standard conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT:
        wide = np.asarray(image, dtype=np.int64)
        gray = np.clip(wide >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def to_model_input(image: Image.Image, size: int) -> FloatImage:
    """Resize to the model's square input and scale pixels to [0, 1]."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) * np.float32(1.0 / 255.0)


def preprocess(
    data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS,
    header: ImageHeader | None = None,
) -> tuple[FloatImage, tuple[int, int]]:
    """Image bytes -> model input and the upright (width, height)."""
    image, original = open_image(data, max_pixels=max_pixels, draft_size=size, header=header)
    return to_model_input(image, size), original


def mask_from_class_ids(class_ids: npt.NDArray[np.integer], size: tuple[int, int]) -> Mask:
    """Class ids at model resolution -> trimap mask at the input image's (width, height),
    scaled up nearest-neighbour as Pillow does (`shared.masks` builds it)."""
    return UpscaledMask(class_ids, size).pixels()


def decode_mask(data: bytes, expected_size: tuple[int, int] | None = None, *,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Mask:
    """A trimap PNG -> uint8 array, checking size (before decoding) and values."""
    if not data:
        raise EmptyBody("the mask is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise TooManyPixels("the mask declares far more pixels than allowed") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidMask("the mask is not a readable PNG") from None
    if image.format != "PNG":
        raise InvalidMask(f"masks must be PNG, got {image.format}")
    if expected_size is not None and image.size != expected_size:
        raise InvalidMask(f"mask is {image.size[0]}x{image.size[1]}, expected "
                          f"{expected_size[0]}x{expected_size[1]}")
    if image.size[0] * image.size[1] > max_pixels:
        raise TooManyPixels(f"a {image.size[0]}x{image.size[1]} mask is more than the "
                            f"{max_pixels} pixels allowed")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError):
        raise InvalidMask("the mask is not a readable PNG") from None
    mask = np.asarray(image.convert("L") if image.mode not in ("L", "P") else image)
    bad = set(np.unique(mask).tolist()) - TRIMAP_VALUES
    if bad:
        raise InvalidMask(f"mask values must be 1, 2 or 3; found {sorted(bad)[:5]}")
    return mask.astype(np.uint8)


def mask_to_class_ids(mask: Mask, size: int) -> npt.NDArray[np.int32]:
    """Trimap mask at any resolution -> class ids at the model's square size (nearest)."""
    image = Image.fromarray(mask, mode="L").resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(image, dtype=np.int32) - 1


def class_fractions(mask: Mask) -> Mapping[str, float]:
    """Share of pixels per class, for JSON answers and manifests."""
    return fractions_from_counts(trimap_counts(mask))


def fractions_from_counts(counts: Sequence[int]) -> dict[str, float]:
    """Shares of the pixels of trimap values 1, 2, 3 from their counts, rounded for answers."""
    total = max(sum(counts), 1)
    return {name: round(c / total, 6) for name, c in zip(CLASS_NAMES, counts, strict=True)}
