"""The served trimap mask, built from the model's class ids without a full-size copy first.

A mask goes back at the image's resolution: the model's `S x S` class ids scaled up with
nearest neighbour, exactly as Pillow's `resize(NEAREST)` scales them (`UpscaledMask.pixels`
equals `imaging.mask_from_class_ids`). Scaled that way, every output row is a copy of one of
only `S` distinct rows, so the rows are scaled across once (`S` rows instead of the image's
height) and everything else follows from which of them each output row copies:

- the PNG (`png`), whose `Up` filter leaves an all-zero row wherever a row repeats the one
  above, so only the rows where the copied row changes are computed;
- the full mask when one is needed (`pixels`: rows copied into place, no scaling).

The API and the batch worker build one of these per served mask, which is why it matters: for
the bench's 500x375 JPEG, PNG and class counts take ~0.20 ms of CPU where scaling the full mask
with Pillow, counting it and encoding it (run-length deflate) took ~0.41.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np
import numpy.typing as npt
from PIL import Image
from zlib_ng import zlib_ng

Mask = npt.NDArray[np.uint8]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FILTER_UP = 2
DEFLATE_LEVEL = 2
"""zlib-ng's level 2 (its `deflate_fast`) with the default strategy. Measured on this
project's masks (thread CPU, 500x375 unless said): a trained model's blob-like mask 0.08 ms
and 1.7 kB, the same as the run-length strategy (0.08 ms, 1.4 kB); a speckled mask from a
weakly trained model 0.09 ms and 4.7 kB where run-length strategy took 0.21 ms for 11.3 kB
(it finds repeats only one byte back, not a row back); 2000x1500 blobs 0.68 vs 0.76-1.1 ms.
Level 1 (`deflate_quick`) is a little faster but up to 2.5x larger on blob masks."""


class UpscaledMask:
    """Class ids at the model's resolution, as the trimap mask of a `(width, height)` image."""

    __slots__ = ("_rows", "_source", "size")

    def __init__(self, class_ids: npt.NDArray[np.integer], size: tuple[int, int]) -> None:
        if class_ids.ndim != 2:
            raise ValueError(f"class ids are 2-D, got shape {class_ids.shape}")
        width, height = size
        self.size = size
        trimap = Image.fromarray((class_ids + 1).astype(np.uint8), mode="L")
        if trimap.width != width:  # scale across only: Pillow maps columns alike in every row
            trimap = trimap.resize((width, trimap.height), Image.Resampling.NEAREST)
        self._rows: Mask = np.asarray(trimap, dtype=np.uint8)
        """The distinct rows, already at the output width."""
        self._source = _row_sources(trimap.height, height)
        """For each output row, the index of the distinct row it copies."""

    def pixels(self) -> Mask:
        """The full mask, rows copied into place."""
        return self._rows[self._source]

    def counts(self) -> tuple[int, int, int]:
        """Pixels of each trimap value (1, 2, 3), counted on the full mask: copying the rows
        into place costs less than weighting per-row counts by their copies (numpy's counting
        along an axis is slow)."""
        return trimap_counts(self.pixels())

    def png(self) -> bytes:
        """The mask as 8-bit grayscale PNG, byte for byte what `encode_png(self.pixels())`
        writes."""
        width, height = self.size
        filtered = np.zeros((height, width + 1), np.uint8)
        filtered[:, 0] = PNG_FILTER_UP
        rows, source = self._rows, self._source
        filtered[0, 1:] = rows[source[0]]
        changed = np.flatnonzero(source[1:] != source[:-1]) + 1
        if len(changed):  # modulo 256, as PNG wants
            filtered[changed, 1:] = rows[source[changed]] - rows[source[changed - 1]]
        return png_from_filtered(filtered)


def trimap_counts(mask: Mask) -> tuple[int, int, int]:
    """Pixels of each trimap value (1, 2, 3) in any mask.

    One comparison per value: 8x faster than `np.bincount`, which first widens every uint8
    pixel to int64.
    """
    pet, background, border = (int(np.count_nonzero(mask == value)) for value in (1, 2, 3))
    return pet, background, border


def encode_png(mask: Mask) -> bytes:
    """An 8-bit grayscale PNG of any 2-D uint8 mask; any PNG decoder reads back exactly `mask`.

    Every row uses the `Up` filter: a mask's rows mostly repeat the row above, leaving zeros.
    """
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {mask.shape}")
    pixels = np.asarray(mask, dtype=np.uint8)
    height, width = pixels.shape
    filtered = np.empty((height, width + 1), np.uint8)
    filtered[:, 0] = PNG_FILTER_UP
    filtered[:1, 1:] = pixels[:1]
    np.subtract(pixels[1:], pixels[:-1], out=filtered[1:, 1:])
    return png_from_filtered(filtered)


def png_from_filtered(filtered: Mask) -> bytes:
    """PNG bytes around already filtered rows (each led by its filter byte) of 8-bit gray."""
    height, stride = filtered.shape
    deflate = zlib_ng.compressobj(DEFLATE_LEVEL, zlib_ng.DEFLATED, 15, 9,
                                  zlib_ng.Z_DEFAULT_STRATEGY)
    header = struct.pack(">IIBBBBB", stride - 1, height, 8, 0, 0, 0, 0)  # gray, no interlace
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", header),
                     _chunk(b"IDAT", deflate.compress(filtered.data) + deflate.flush()),
                     _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=512)
def _row_sources(rows: int, height: int) -> npt.NDArray[np.intp]:
    """Which of `rows` rows each of `height` output rows copies, taken from Pillow's own
    nearest-neighbour scaling of a column of row numbers, so its rounding is Pillow's."""
    if rows == height:
        return np.arange(height, dtype=np.intp)
    column = Image.fromarray(np.arange(rows, dtype=np.int32).reshape(rows, 1))
    scaled = column.resize((1, height), Image.Resampling.NEAREST)
    source = np.asarray(scaled, dtype=np.intp)[:, 0].copy()
    source.flags.writeable = False
    return source
