"""Test images for load: synthetic pets (training.synthetic) at the sizes users send.

No real dataset can be downloaded here; the synthetic pets have the texture and JPEG artefacts
of photos, so decoding costs what it would for Oxford-IIIT Pet images (500x375 is its typical
size).
"""

from __future__ import annotations

import io

from PIL import Image

from training.synthetic import render

OXFORD_SIZE = (500, 375)
SEED = 7


def pet_image(index: int, size: tuple[int, int] = OXFORD_SIZE, fmt: str = "JPEG",
              quality: int = 90) -> bytes:
    """Synthetic pet number `index`, resized to `size` and encoded as JPEG or PNG."""
    image = Image.open(io.BytesIO(render(SEED, index).jpeg)).convert("RGB")
    image = image.resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format=fmt)
    return out.getvalue()
