"""A synthetic stand-in for the Oxford-IIIT Pet dataset, written in its layout to any URI.

The real dataset cannot be downloaded here, so tests, `make run` and the quick config train on
this. Each image holds one "pet" (ellipse, blob, polygon or a body-head-ears animal) with fur
noise, a coat pattern and shading, on a textured background full of flat-coloured clutter whose
colours come from the same distribution as the pets', sometimes partly hidden behind an
occluder, then noise and JPEG artefacts. Pixel colour alone cannot separate pet from
background; texture and shape can, which is what a U-Net has to learn.

Images vary in size around Oxford's 500x375 so the resize-back path is exercised. Everything is
deterministic from the seed, and image `i` depends only on `(seed, i)`: a larger `--count`
adds images without changing the earlier ones.

CLI: `python -m training.synthetic --out URI --count N --seed S`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

from shared.storage import join, storage_for

KINDS: tuple[str, ...] = ("ellipse", "blob", "polygon", "animal")
PET, BACKGROUND, BORDER = 1, 2, 3
TRAIN_SPLIT, TEST_SPLIT = "trainval", "test"
MIN_CONTRAST = 90.0
"""Least RGB distance between a pet's base colour and the mean colour behind it."""

Rgb = npt.NDArray[np.float32]
Points = list[tuple[float, float]]


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str
    test: bool
    jpeg: bytes
    trimap: bytes


@dataclass(frozen=True)
class GeneratedDataset:
    uri: str
    train: list[str]
    test: list[str]


def _color(rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Any colour; pets and clutter share this distribution on purpose."""
    return rng.uniform(20.0, 235.0, size=3).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], scale: float,
                  channels: int = 3) -> npt.NDArray[np.float32]:
    """Zero-mean noise with features about `scale` pixels wide (upsampled random grid)."""
    width, height = size
    gw, gh = max(2, int(width / scale) + 2), max(2, int(height / scale) + 2)
    planes = []
    for _ in range(channels):
        grid = rng.normal(0.0, 1.0, size=(gh, gw)).astype(np.float32)
        planes.append(np.asarray(
            Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
        ))
    return np.stack(planes, axis=-1)


def _coords(size: tuple[int, int]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Rgb:
    """A two-colour gradient with a wall/floor-like texture (blotches, stripes or checks)."""
    xs, ys = _coords(size)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    image = _color(rng) * (1 - ramp[..., None]) + _color(rng) * ramp[..., None]
    texture = rng.choice(["blotches", "stripes", "checks"], p=[0.5, 0.3, 0.2])
    if texture == "blotches":
        image += _smooth_noise(rng, size, rng.uniform(30, 90)) * rng.uniform(8, 22)
    else:
        period = rng.uniform(14, 60)
        turn = rng.uniform(0, math.pi)
        u = xs * math.cos(turn) + ys * math.sin(turn)
        wave = np.sin(2 * math.pi * u / period)
        if texture == "checks":
            v = -xs * math.sin(turn) + ys * math.cos(turn)
            wave = np.sign(wave * np.sin(2 * math.pi * v / period))
        image += (wave * rng.uniform(6, 18))[..., None] * rng.uniform(0.5, 1.0, size=3)
    return np.asarray(image, dtype=np.float32)


def _ring(cx: float, cy: float, radii: Sequence[float], turn: float) -> Points:
    count = len(radii)
    return [
        (cx + r * math.cos(turn + 2 * math.pi * k / count),
         cy + r * math.sin(turn + 2 * math.pi * k / count))
        for k, r in enumerate(radii)
    ]


def _ellipse(cx: float, cy: float, rx: float, ry: float, turn: float, n: int = 72) -> Points:
    cos_t, sin_t = math.cos(turn), math.sin(turn)
    out = []
    for k in range(n):
        a = 2 * math.pi * k / n
        x, y = rx * math.cos(a), ry * math.sin(a)
        out.append((cx + x * cos_t - y * sin_t, cy + x * sin_t + y * cos_t))
    return out


def _pet_shapes(rng: np.random.Generator, kind: str, size: tuple[int, int]) -> list[Points]:
    """Polygons whose union is the pet, centred somewhere in the frame (sometimes cut off)."""
    width, height = size
    radius = rng.uniform(0.25, 0.42) * min(width, height)
    cx = rng.uniform(0.2, 0.8) * width
    cy = rng.uniform(0.2, 0.8) * height
    turn = rng.uniform(0, 2 * math.pi)
    if kind == "ellipse":
        return [_ellipse(cx, cy, radius, radius * rng.uniform(0.5, 1.0), turn)]
    if kind == "blob":
        n = 96
        harmonics = [(k, rng.uniform(0, 0.22 / k ** 0.5), rng.uniform(0, 2 * math.pi))
                     for k in range(2, 7)]
        radii = [radius * (1 + sum(a * math.sin(k * 2 * math.pi * i / n + p)
                                   for k, a, p in harmonics)) for i in range(n)]
        return [_ring(cx, cy, radii, turn)]
    if kind == "polygon":
        n = int(rng.integers(5, 10))
        radii = list(radius * rng.uniform(0.55, 1.15, size=n))
        return [_ring(cx, cy, radii, turn)]
    body = _ellipse(cx, cy, radius, radius * rng.uniform(0.45, 0.7), turn)
    head_r = radius * rng.uniform(0.35, 0.5)
    side = rng.choice([-1.0, 1.0])
    hx = cx + side * radius * 0.95 * math.cos(turn)
    hy = cy + side * radius * 0.95 * math.sin(turn)
    head = _ellipse(hx, hy, head_r, head_r * rng.uniform(0.8, 1.0), turn)
    ears = []
    for offset in (-0.6, 0.6):
        a = turn + (0 if side > 0 else math.pi) + offset
        base = (hx + head_r * 0.8 * math.cos(a), hy + head_r * 0.8 * math.sin(a))
        tip = (hx + head_r * 1.6 * math.cos(a), hy + head_r * 1.6 * math.sin(a))
        ears.append([
            (base[0] + head_r * 0.35 * math.cos(a + math.pi / 2),
             base[1] + head_r * 0.35 * math.sin(a + math.pi / 2)),
            tip,
            (base[0] + head_r * 0.35 * math.cos(a - math.pi / 2),
             base[1] + head_r * 0.35 * math.sin(a - math.pi / 2)),
        ])
    return [body, head, *ears]


def _contrasting(rng: np.random.Generator, behind: npt.NDArray[np.float32]) -> npt.NDArray[
        np.float32]:
    """A colour visibly unlike what is behind the pet: hard data, not invisible pets."""
    color = _color(rng)
    for _ in range(30):
        if float(np.linalg.norm(color - behind)) >= MIN_CONTRAST:
            break
        color = _color(rng)
    return color


def _coat(rng: np.random.Generator, size: tuple[int, int], inside: npt.NDArray[np.float32],
          radius_px: float, behind: npt.NDArray[np.float32]) -> Rgb:
    """Fur: a base colour with fine noise, a pattern (stripes, spots or patches) and shading."""
    xs, ys = _coords(size)
    coat = np.broadcast_to(_contrasting(rng, behind), (size[1], size[0], 3)).copy()
    fur = _smooth_noise(rng, size, rng.uniform(3.5, 6.0), channels=1)
    coat += fur * rng.uniform(28, 40)
    pattern = rng.choice(["stripes", "spots", "patches", "plain"], p=[0.3, 0.25, 0.25, 0.2])
    second = _color(rng)
    if pattern == "stripes":
        turn = rng.uniform(0, math.pi)
        u = xs * math.cos(turn) + ys * math.sin(turn)
        wobble = _smooth_noise(rng, size, 25, channels=1)[..., 0] * 6
        weight = (np.sin(2 * math.pi * (u + wobble) / rng.uniform(12, 30)) > 0.2)
        coat = np.where(weight[..., None], coat * 0.4 + second * 0.6, coat)
    elif pattern in ("spots", "patches"):
        scale = rng.uniform(8, 16) if pattern == "spots" else radius_px * rng.uniform(0.4, 0.8)
        blobs = _smooth_noise(rng, size, scale, channels=1)[..., 0] > 0.7
        coat = np.where(blobs[..., None], coat * 0.4 + second * 0.6, coat)
    shade = 0.55 + 0.45 * inside
    return (coat * shade[..., None]).astype(np.float32)


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: tuple[int, int],
             count: int, ink: int | None = None) -> None:
    """Flat-coloured things that are not pets: boxes, bars, discs, triangles.

    With `ink`, every shape is drawn in that single value (a mask of where the clutter is).
    """
    width, height = size
    short = min(width, height)
    for _ in range(count):
        color = tuple(int(c) for c in _color(rng))
        fill: int | tuple[int, ...] = color if ink is None else ink
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        what = rng.choice(["box", "bar", "disc", "triangle"])
        if what == "box":
            w, h = rng.uniform(0.05, 0.3, size=2) * short
            draw.rectangle([x, y, x + w, y + h], fill=fill)
        elif what == "bar":
            x2, y2 = rng.uniform(0, width), rng.uniform(0, height)
            draw.line([x, y, x2, y2], fill=fill, width=int(rng.integers(2, 9)))
        elif what == "disc":
            r = rng.uniform(0.02, 0.12) * short
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        else:
            r = rng.uniform(0.04, 0.15) * short
            draw.polygon(_ring(x, y, [r, r, r], rng.uniform(0, 2 * math.pi)), fill=fill)


def _dilate(mask: npt.NDArray[np.bool_], radius: int) -> npt.NDArray[np.bool_]:
    """Square dilation, separable: PIL's rank filters are 50x slower at these radii."""
    out = mask
    for axis in (0, 1):
        grown = out.copy()
        length = out.shape[axis]
        for shift in range(1, radius + 1):
            if shift >= length:
                break
            ahead = [slice(None), slice(None)]
            behind = [slice(None), slice(None)]
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(behind)] |= out[tuple(ahead)]
            grown[tuple(ahead)] |= out[tuple(behind)]
        out = grown
    return out


def render(seed: int, index: int) -> Sample:
    """Image and trimap number `index` of the dataset seeded with `seed`."""
    rng = np.random.default_rng([seed, index])
    kind = str(rng.choice(KINDS))
    width = int(rng.integers(40, 66)) * 8
    height = int(rng.integers(30, 63)) * 8
    size = (width, height)

    canvas = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8), "RGB")
    _clutter(rng, ImageDraw.Draw(canvas), size, int(rng.integers(2, 8)))

    shapes = _pet_shapes(rng, kind, size)
    silhouette = Image.new("L", size, 0)
    pen = ImageDraw.Draw(silhouette)
    for polygon in shapes:
        pen.polygon(polygon, fill=255)
    radius_px = math.sqrt(max(float(np.count_nonzero(np.asarray(silhouette))), 1.0) / math.pi)
    inside = np.asarray(
        silhouette.filter(ImageFilter.GaussianBlur(max(2.0, radius_px * 0.25))), np.float32
    ) / 255.0
    behind = np.asarray(canvas, np.float32)[np.asarray(silhouette) > 0]
    behind_mean = behind.mean(axis=0) if len(behind) else np.full(3, 128.0, np.float32)
    coat = Image.fromarray(
        np.clip(_coat(rng, size, inside, radius_px, behind_mean), 0, 255).astype(np.uint8), "RGB"
    )
    canvas.paste(coat, (0, 0), silhouette.filter(ImageFilter.GaussianBlur(0.8)))

    visible = silhouette
    if rng.random() < 0.3:
        occluder = Image.new("L", size, 0)
        _clutter(rng, ImageDraw.Draw(occluder), size, 1, ink=255)
        mask = occluder
        fill = Image.new("RGB", size, tuple(int(c) for c in _color(rng)))
        canvas.paste(fill, (0, 0), mask)
        visible = Image.fromarray(
            np.where(np.asarray(mask) > 0, 0, np.asarray(silhouette)).astype(np.uint8), "L"
        )

    pixels = np.asarray(canvas, np.float32) * rng.uniform(0.75, 1.2) + rng.uniform(-20, 20)
    pixels += rng.normal(0.0, rng.uniform(3, 10), size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG", quality=int(rng.integers(60, 95)))

    band = max(2, round(rng.uniform(0.026, 0.032) * min(width, height)))
    pet = np.asarray(visible) > 127
    grown = _dilate(pet, band)
    shrunk = ~_dilate(~pet, band)
    trimap = np.full((height, width), BACKGROUND, np.uint8)
    trimap[grown] = BORDER
    trimap[shrunk] = PET
    png = io.BytesIO()
    Image.fromarray(trimap, "L").save(png, format="PNG")

    test = bool(rng.random() < 0.2)
    return Sample(f"{kind}_{index + 1}", kind, test, jpeg.getvalue(), png.getvalue())


def _split_line(sample: Sample) -> str:
    """Oxford's list format: name, class id, species, breed id (loaders read the first token)."""
    kind_id = KINDS.index(sample.kind) + 1
    return f"{sample.name} {kind_id} 1 {kind_id}"


def generate(out: str, count: int, seed: int = 0, *, workers: int = 4) -> GeneratedDataset:
    """Render `count` samples and write them, split lists last (they mark the dataset done)."""
    if count < 2:
        raise ValueError("count must be at least 2 (one training and one test image)")
    storage = storage_for(out)

    def make(index: int) -> Sample:
        sample = render(seed, index)
        storage.write(join(out, "images", f"{sample.name}.jpg"), sample.jpeg, "image/jpeg")
        storage.write(join(out, "annotations", "trimaps", f"{sample.name}.png"), sample.trimap,
                      "image/png")
        return sample

    with ThreadPoolExecutor(max_workers=workers) as pool:
        samples = list(pool.map(make, range(count)))
    test = [s for s in samples if s.test] or samples[-1:]
    train = [s for s in samples if s not in test]
    for split, chosen in ((TRAIN_SPLIT, train), (TEST_SPLIT, test)):
        text = "".join(_split_line(s) + "\n" for s in chosen)
        storage.write(join(out, "annotations", f"{split}.txt"), text.encode(), "text/plain")
    return GeneratedDataset(out, [s.name for s in train], [s.name for s in test])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synthetic",
        description="Write a synthetic Oxford-IIIT-Pet-style dataset to a URI.",
    )
    parser.add_argument("--out", required=True, help="dataset URI (gs://bucket/prefix or path)")
    parser.add_argument("--count", type=int, default=600, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same dataset")
    args = parser.parse_args(argv)
    if args.count < 2:
        parser.error("--count must be at least 2")
    made = generate(args.out, args.count, args.seed)
    print(json.dumps({"uri": made.uri, "train": len(made.train), "test": len(made.test)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
