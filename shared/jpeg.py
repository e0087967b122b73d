"""JPEG headers and pixels without Pillow's per-image overhead, for exactly Pillow's result.

Nearly every served image is a JPEG, probed once and decoded once. Pillow's `Image.open` costs
~20 us per probe and its draft decode ~0.5 ms for the bench's 500x375 JPEG; the marker walk
here reads what the probe needs in a few us, and simplejpeg runs the same libjpeg-turbo
(accurate integer IDCT, fancy upsampling, the same DCT scale) straight into a numpy array in
~0.4 ms with the GIL released. The pixels are the same to the bit, so `PREPROCESSING_ID` and
the masks stay as they were.

Sameness is what this module must guarantee, not speed. So it answers only for JPEGs whose
headers are plainly well formed, and says `None` otherwise: `read_frame` accepts only what
Pillow's JPEG reader is sure to accept too (junk between markers, a lossless or arithmetic
frame, a malformed JFIF, Adobe, ICC or Photoshop segment, an EXIF block Pillow cannot load
all go to Pillow, which refuses or reads them as it always did), and `decode_rgb` only what
libjpeg-turbo turns into RGB itself (1 or 3 components: CMYK and YCCK go to Pillow, whose
conversion differs from simplejpeg's) and decodes without a single warning.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image

EXIF_ORIENTATION = 0x0112
_RESOLUTION_UNIT = 0x0128
_X_RESOLUTION = 0x011A
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
"""What Pillow's `getexif` looks for in XMP when EXIF has no orientation."""
EXIF_PREFIX = b"Exif\x00\x00"
"""What an EXIF block starts with in a JPEG APP1 segment (and what Pillow expects before one)."""
_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_ICC_PREFIX = b"ICC_PROFILE\x00"
_PHOTOSHOP_PREFIX = b"Photoshop 3.0\x00"
_DCT_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
"""Baseline, extended and progressive Huffman DCT: what both decoders read the same way."""
_SKIPPED = frozenset({0xC4, 0xDD, 0xFE})
"""Huffman tables, restart interval and comments: segments Pillow keeps without parsing."""
_APP0, _APP1, _APP2, _APP13, _APP14, _APP15 = 0xE0, 0xE1, 0xE2, 0xED, 0xEE, 0xEF
_DQT, _SOS = 0xDB, 0xDA
_DRAFT_SCALES = (8, 4, 2)
_SMALLEST_SCALED = 8
"""Below 8 px on both sides, a scale under 1/s can give the same size as 1/s, and simplejpeg
(smallest factor reaching the sizes asked for) would pick it where Pillow picks 1/s."""


@dataclass(frozen=True)
class JpegFrame:
    """What the headers of a well-formed JPEG declare, read without Pillow."""

    width: int
    """As stored, before the EXIF orientation."""
    height: int
    components: int
    """1 gray, 3 YCbCr or RGB, 4 CMYK or YCCK."""
    orientation: int
    """EXIF orientation (1-8) as Pillow reads it: EXIF first, then XMP's tiff:Orientation."""
    scan_start: int
    """Offset of the first entropy-coded byte."""


def read_frame(data: bytes) -> JpegFrame | None:
    """The frame header of `data` if Pillow would surely open it too; `None` leaves it to Pillow.

    One walk over the marker segments up to the first scan, with Pillow's own checks of the
    segments it parses (a JFIF or Adobe segment too short for its version field, a quantization
    table cut short, an ICC chunk without its count, a Photoshop block cut inside a resource,
    an EXIF resolution Pillow fails on): where Pillow refuses, this gives up instead.
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    offset = 2
    exif: bytes | None = None
    xmp: bytes | None = None
    icc: list[bytes] = []
    jfif_dpi = False
    frame: tuple[int, int, int] | None = None
    while True:
        if offset + 4 > len(data) or data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        end = offset + 2 + int.from_bytes(data[offset + 2:offset + 4], "big")
        if end < offset + 4 or end > len(data):
            return None
        segment = data[offset + 4:end]
        offset = end
        if marker == _SOS:
            break
        if _APP0 <= marker <= _APP15:
            if not _app_segment_readable(marker, segment):
                return None
            if marker == _APP0 and segment.startswith(b"JFIF"):
                jfif_dpi = jfif_dpi or (len(segment) >= 12 and segment[7] in (1, 2))
            elif marker == _APP1 and segment.startswith(EXIF_PREFIX):
                exif = segment if exif is None else exif + segment[len(EXIF_PREFIX):]
            elif marker == _APP1 and segment.startswith(_XMP_PREFIX):
                xmp = segment[len(_XMP_PREFIX):]
            elif marker == _APP2 and segment.startswith(_ICC_PREFIX):
                icc.append(segment)
        elif marker == _DQT:
            if not _quantization_tables_whole(segment):
                return None
        elif marker in _DCT_FRAMES:
            if frame is not None or (icc and len(min(icc)) <= len(_ICC_PREFIX) + 1):
                return None  # libjpeg refuses a second frame; Pillow an ICC chunk without count
            frame = _frame_header(segment)
            if frame is None:
                return None
            icc = []
        elif marker not in _SKIPPED:
            return None
    if frame is None:
        return None
    orientation = _orientation(exif, xmp, jfif_dpi)
    if orientation is None:
        return None
    width, height, components = frame
    return JpegFrame(width, height, components, orientation, offset)


def _frame_header(segment: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of an 8-bit frame Pillow reads; `None` for anything else."""
    if len(segment) < 6 or segment[0] != 8 or (len(segment) - 6) % 3:
        return None
    height, width = struct.unpack_from(">HH", segment, 1)
    components = segment[5]
    if width == 0 or height == 0 or components not in (1, 3, 4):
        return None
    return width, height, components


def _quantization_tables_whole(segment: bytes) -> bool:
    """Pillow's DQT check: every table carries its 64 entries of 1 or 2 bytes."""
    while segment:
        length = 1 + 64 * (1 if segment[0] < 16 else 2)
        if len(segment) < length:
            return False
        segment = segment[length:]
    return True


def _app_segment_readable(marker: int, segment: bytes) -> bool:
    """False where Pillow's parser of this application segment fails (and refuses the file)."""
    if marker == _APP0 and segment.startswith(b"JFIF"):
        return len(segment) >= 7  # the version Pillow reads unconditionally
    if marker == _APP14 and segment.startswith(b"Adobe"):
        return len(segment) >= 7
    if marker == _APP13 and segment.startswith(_PHOTOSHOP_PREFIX):
        return _photoshop_resources_readable(segment)
    return True


def _photoshop_resources_readable(segment: bytes) -> bool:
    """Pillow walks the 8BIM resources; a block ending inside a resource header before its
    name length makes it fail, other shortfalls just end its walk."""
    offset = len(_PHOTOSHOP_PREFIX)
    while segment[offset:offset + 4] == b"8BIM":
        code_at = offset + 4
        if code_at + 2 > len(segment):
            return True
        name_at = code_at + 2
        if name_at >= len(segment):
            return False
        offset = name_at + 1 + segment[name_at]
        offset += offset & 1
        if offset + 4 > len(segment):
            return True
        (size,) = struct.unpack_from(">I", segment, offset)
        offset += 4
        if (int.from_bytes(segment[code_at:name_at], "big") == 0x03ED
                and len(segment[offset:offset + size]) < 14):
            return True  # ResolutionInfo cut short: Pillow stops reading there
        offset += size
        offset += offset & 1
    return True


def _orientation(exif_data: bytes | None, xmp: bytes | None, jfif_dpi: bool) -> int | None:
    """The orientation Pillow's `getexif()` gives this file, or `None` where the outcome
    depends on Pillow's state after a failure (an EXIF block it cannot load, or an EXIF
    resolution its JPEG reader fails on while opening the file)."""
    exif = Image.Exif()
    if exif_data is not None:
        try:
            exif.load(exif_data)
        except Exception:
            return None
    if EXIF_ORIENTATION not in exif and xmp:
        match = _XMP_ORIENTATION.search(xmp)
        if match:
            exif[EXIF_ORIENTATION] = int(match[2])
    if exif_data is not None and not jfif_dpi and not _resolution_readable(exif):
        return None
    return orientation_of(exif)


def _resolution_readable(exif: Image.Exif) -> bool:
    """Pillow's JPEG reader takes the DPI from EXIF when JFIF has none, and some malformed
    values (an empty XResolution) fail the whole `Image.open`: mirror its reading."""
    try:
        unit = exif[_RESOLUTION_UNIT]
        resolution = exif[_X_RESOLUTION]
        try:
            dpi = float(resolution[0]) / resolution[1]
        except TypeError:
            dpi = resolution
        if math.isnan(dpi):
            raise ValueError("DPI is not a number")
        if unit == 3:
            dpi *= 2.54
    except (struct.error, KeyError, SyntaxError, TypeError, ValueError, ZeroDivisionError):
        return True  # Pillow falls back to 72 dpi
    except Exception:
        return False
    return True


def orientation_of(exif: Image.Exif) -> int:
    """The EXIF orientation tag as an int; 1 (as stored) when absent or unreadable, as
    viewers do."""
    try:
        return int(exif.get(EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def draft_scale(width: int, height: int, size: int) -> int:
    """The DCT scale divisor Pillow's `JpegImageFile.draft` picks for a `size` x `size` request:
    the largest of 8, 4, 2 that keeps both sides at least `size`, else 1."""
    fits = min(width // size, height // size)
    for scale in _DRAFT_SCALES:
        if fits >= scale:
            return scale
    return 1


def decode_rgb(data: bytes, frame: JpegFrame,
               draft_size: int | None = None) -> npt.NDArray[np.uint8] | None:
    """RGB pixels, as stored (before the orientation), at the scale Pillow's draft for
    `draft_size` picks; `None` when only Pillow's decode is sure to give its own pixels."""
    if frame.components not in (1, 3):
        return None  # CMYK and YCCK: Pillow converts them its own way
    scale = draft_scale(frame.width, frame.height, draft_size) if draft_size else 1
    height, width = -(-frame.height // scale), -(-frame.width // scale)
    if scale > 1 and max(frame.width, frame.height) < _SMALLEST_SCALED:
        return None
    try:
        pixels: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(
            data, "rgb", fastdct=False, fastupsample=False,
            min_height=height if scale > 1 else 0, min_width=width if scale > 1 else 0,
            strict=True)
    except ValueError:  # any libjpeg-turbo error or warning: Pillow refuses or tolerates it
        return None
    if pixels.shape != (height, width, 3):
        return None
    return pixels
