"""The masks users get stay exactly what they were while the request path is made faster.

The "before" is written out here with Pillow and numpy alone, step by step, from what the
server documents today (shared/imaging.py, shared/segmentation.py): EXIF orientation, JPEG
draft decoding, every accepted mode to 8-bit RGB, bilinear resize to the model's square input,
scaling to [0, 1], argmax class ids, nearest-neighbour resize of the trimap back to the upright
size, class fractions. It imports none of the serving pipeline, so it keeps meaning "before"
whatever that pipeline becomes; only the model itself (the SavedModel, batch of one) is shared.

A fixed, generated set of images (sizes, orientations, formats and modes users send) then goes
through the real API — `/v1/segment` as PNG and JSON, from the cache, and `/v2` infer — and a
batch job's chunk run in-process, and every mask must equal the reference pixel for pixel.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import redis
from PIL import Image, ImageDraw

from services.jobs.chunk import ChunkRunner
from services.jobs.manifest import decode
from services.jobs.records import JobRequest, JobState
from services.jobs.service import JobService
from services.jobs.settings import JobSettings
from services.jobs.store import JobStore
from services.worker.models import ModelCache
from shared.model.serving import LoadedModel
from shared.redis import RedisEndpoint
from shared.repository import ModelRepository
from shared.storage import storage_for
from tests.integration.test_inference_support import start_api, url
from tests.servers import Server, running, wait_until

pytestmark = pytest.mark.integration

REDIS_DB = 14
MODEL, VERSION = "unet", 1
CLASS_NAMES = ("pet", "background", "border")
EXIF_ORIENTATION = 0x0112
ORIENTATION_STEPS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
HEADER_LENGTH = "Inference-Header-Content-Length"

Mask = npt.NDArray[np.uint8]
ClassIds = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.int32]]


# ---------------------------------------------------------------------------------------------
# The reference: today's semantics, spelled out.


@dataclass(frozen=True)
class Reference:
    mask: Mask
    fractions: dict[str, float]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.mask.shape[1]), int(self.mask.shape[0])


def orientation_of(image: Image.Image) -> int:
    """EXIF tag 0x0112, 1 (as stored) when absent or unreadable."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def upright_rgb(data: bytes, model_size: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decoded 8-bit RGB as viewers show it, and the upright (width, height) of the original.

    JPEGs are decoded with `draft` (DCT scaling) to no less than the model's size; the size a
    mask goes back at is the full image's, read from the header, never the drafted one.
    """
    image: Image.Image = Image.open(io.BytesIO(data))
    kind = "JPEG" if image.format == "MPO" else image.format
    orientation = orientation_of(image)
    width, height = image.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if kind == "JPEG":
        image.draft("RGB", (model_size, model_size))
    image.load()
    step = ORIENTATION_STEPS.get(orientation)
    if step is not None:
        image = image.transpose(step)
    if image.mode in SIXTEEN_BIT_MODES:  # the high byte, not Pillow's clipping conversion
        high = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
        image = Image.fromarray(high).convert("RGB")
    elif image.mode in ALPHA_MODES or "transparency" in image.info:  # over white
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return image, (width, height)


def reference_mask(data: bytes, class_ids: ClassIds, model_size: int) -> Reference:
    image, size = upright_rgb(data, model_size)
    square = image.resize((model_size, model_size), Image.Resampling.BILINEAR)
    # the server multiplies by the float32 reciprocal, which differs from dividing by 255 in
    # the last bit for some values: the model sees exactly these floats
    pixels = np.asarray(square, dtype=np.float32) * np.float32(1.0 / 255.0)
    ids = class_ids(pixels[np.newaxis])[0]
    trimap = Image.fromarray((ids + 1).astype(np.uint8))
    if trimap.size != size:
        trimap = trimap.resize(size, Image.Resampling.NEAREST)
    mask = np.asarray(trimap, dtype=np.uint8)
    counts = [int(np.count_nonzero(mask == value)) for value in (1, 2, 3)]
    total = max(sum(counts), 1)
    fractions = {name: round(count / total, 6)
                 for name, count in zip(CLASS_NAMES, counts, strict=True)}
    return Reference(mask, fractions)


# ---------------------------------------------------------------------------------------------
# The fixed image set: generated, so every run sends the same bytes.


@dataclass(frozen=True)
class Fixed:
    name: str
    data: bytes
    format: str
    mode: str
    """Pillow's mode of the stored pixels: which conversion path the image takes."""
    orientation: int = 1

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def scene(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients with a few shapes on top: regions and edges, as photos have."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    base = rng.uniform(40, 215, 3)
    slopes = rng.uniform(-90, 90, (2, 3))
    wave = 25 * np.sin(2 * np.pi * (u * rng.uniform(0.5, 2) + v * rng.uniform(0.5, 2)))
    rgb = base + u[..., None] * slopes[0] + v[..., None] * slopes[1] + wave[..., None]
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.uniform(-0.1, 0.7, 2) * (width, height)
        w, h = rng.uniform(0.2, 0.6, 2) * (width, height)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    return image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


def alpha_ramp(image: Image.Image) -> Image.Image:
    """The image with an alpha channel: opaque, half-transparent and fully transparent parts."""
    width, height = image.size
    alpha = np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1))
    alpha[: height // 3] = 0
    alpha[-height // 4:] = 255
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha.astype(np.uint8)))
    return rgba


def fixed_set() -> list[Fixed]:
    """Sizes (tiny, odd, portrait, 1200x900), EXIF orientations (JPEG and PNG), progressive and
    CMYK JPEGs, gray JPEG, and PNGs in RGB, RGBA, LA, palette (with and without a transparent
    index), 8- and 16-bit gray."""
    items: list[Fixed] = []

    def add(name: str, image: Image.Image, fmt: str, orientation: int = 1,
            **options: object) -> None:
        if orientation != 1:
            options["exif"] = with_orientation(orientation)
        items.append(Fixed(name, encode(image, fmt, **options), fmt, image.mode, orientation))

    add("landscape-500x375.jpg", scene(500, 375, 1), "JPEG", quality=90)
    add("portrait-375x500.jpg", scene(375, 500, 2), "JPEG", quality=85)
    add("odd-333x217.jpg", scene(333, 217, 3), "JPEG", quality=92)
    add("tiny-9x7.jpg", scene(9, 7, 4), "JPEG", quality=95)
    add("large-1200x900.jpg", scene(1200, 900, 5), "JPEG", quality=88)
    add("progressive-800x600.jpg", scene(800, 600, 6), "JPEG", quality=80, progressive=True,
        subsampling=0)
    add("exif6-640x480.jpg", scene(640, 480, 7), "JPEG", orientation=6, quality=90)
    add("exif3-301x199.jpg", scene(301, 199, 8), "JPEG", orientation=3, quality=90)
    add("gray-401x299.jpg", scene(401, 299, 9).convert("L"), "JPEG", quality=90)
    add("cmyk-220x160.jpg", scene(220, 160, 10).convert("CMYK"), "JPEG", quality=90)
    add("rgb-257x181.png", scene(257, 181, 11), "PNG")
    add("tiny-3x2.png", scene(3, 2, 12), "PNG")
    add("exif8-200x120.png", scene(200, 120, 13), "PNG", orientation=8)
    add("rgba-320x240.png", alpha_ramp(scene(320, 240, 14)), "PNG")
    add("gray-alpha-150x100.png", alpha_ramp(scene(150, 100, 15)).convert("LA"), "PNG")
    add("palette-250x250.png", scene(250, 250, 16).quantize(64, dither=Image.Dither.NONE),
        "PNG")
    transparent = scene(180, 140, 17).quantize(32, dither=Image.Dither.NONE)
    add("palette-transparent-180x140.png", transparent, "PNG", transparency=0)
    gray = np.asarray(scene(230, 170, 18).convert("L"), dtype=np.uint16)
    wide = Image.fromarray((gray * 257 + np.uint16(91)).astype(np.uint16))  # low byte varies
    add("gray16-230x170.png", wide, "PNG")
    add("gray-150x90.png", scene(150, 90, 19).convert("L"), "PNG")
    return items


# ---------------------------------------------------------------------------------------------
# Fixtures: the SavedModel the API serves, the references, one API for the module.


@pytest.fixture(scope="module")
def images() -> list[Fixed]:
    return fixed_set()


@pytest.fixture(scope="module")
def references(images: list[Fixed], tiny_model_repo: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reference]:
    local = ModelRepository(str(tiny_model_repo)).download(
        MODEL, VERSION, tmp_path_factory.mktemp("identity-model"))
    model = LoadedModel(local, name=MODEL, version=VERSION)
    return {image.name: reference_mask(image.data, model.class_ids, model.input_size)
            for image in images}


@pytest.fixture(scope="module")
def api(tiny_model_repo: Path, redis_server: Server,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()  # every first answer is computed, not cached
    with running(start_api(tiny_model_repo, tmp_path_factory.mktemp("identity-api"), redis_url,
                           model_variant="savedmodel", stage_poll_seconds=0)) as server:
        yield server


def png_pixels(data: bytes) -> Mask:
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.mode) == ("PNG", "L")
    return np.asarray(image)


def segment(client: httpx.Client, api: Server, image: Fixed, **params: str) -> httpx.Response:
    answer = client.post(url(api, "/v1/segment"), content=image.data, params=params,
                         headers={"Content-Type": image.content_type})
    assert answer.status_code == 200, f"{image.name}: {answer.text}"
    assert answer.headers["x-model-version"] == f"{VERSION}/savedmodel", image.name
    return answer


def differs(name: str, got: Mask, want: Mask) -> str:
    """Where a mask departs from the reference, for the failure message."""
    if got.shape != want.shape:
        return f"{name}: shape {got.shape} != reference {want.shape}"
    rows, cols = np.nonzero(got != want)
    sample = [(int(r), int(c), int(got[r, c]), int(want[r, c]))
              for r, c in zip(rows[:8], cols[:8], strict=True)]
    return (f"{name}: {rows.size} of {want.size} pixels differ; (row, col, served, reference) "
            f"e.g. {sample}")


# ---------------------------------------------------------------------------------------------
# Tests


def test_the_fixed_set_covers_what_it_claims(images: list[Fixed],
                                             references: dict[str, Reference]) -> None:
    """Guards the guard: every conversion path is exercised and masks are not one flat class,
    so a changed step would show in the masks."""
    modes = {image.mode for image in images}
    assert {"RGB", "RGBA", "LA", "P", "L", "CMYK"} <= modes
    assert modes & SIXTEEN_BIT_MODES
    for image in images:
        opened = Image.open(io.BytesIO(image.data))
        assert (opened.format, opened.mode) == (image.format, image.mode), image.name
        assert orientation_of(opened) == image.orientation, image.name
        width, height = opened.size
        upright = (height, width) if image.orientation in (5, 6, 7, 8) else (width, height)
        assert references[image.name].size == upright, image.name
    assert {image.orientation for image in images} >= {1, 3, 6, 8}
    assert any("transparency" in Image.open(io.BytesIO(image.data)).info
               for image in images if image.mode == "P")
    mixed = [name for name, ref in references.items() if len(np.unique(ref.mask)) > 1]
    assert len(mixed) >= len(images) * 2 // 3, f"too many single-class masks: {mixed}"


def test_v1_segment_answers_are_the_reference_masks(
        api: Server, images: list[Fixed], references: dict[str, Reference]) -> None:
    problems: list[str] = []
    with httpx.Client(timeout=60) as client:
        for image in images:
            want = references[image.name]
            first = segment(client, api, image)
            assert first.headers["x-cache"] == "miss", image.name
            got = png_pixels(first.content)
            if not np.array_equal(got, want.mask):
                problems.append(differs(f"/v1/segment {image.name}", got, want.mask))

            described = segment(client, api, image, format="json").json()
            assert (described["width"], described["height"]) == want.size, image.name
            if described["class_fractions"] != want.fractions:
                problems.append(f"/v1/segment?format=json {image.name}: class fractions "
                                f"{described['class_fractions']} != {want.fractions}")
            assert base64.b64decode(described["mask_png"]) == first.content, image.name

            # the cache may be filled after the answer is sent: ask until it answers from it
            hits: list[httpx.Response] = []

            def cached(image: Fixed = image, hits: list[httpx.Response] = hits) -> bool:
                hits.append(segment(client, api, image))
                return hits[-1].headers["x-cache"] == "hit"

            wait_until(cached, 30, f"a cache hit for {image.name}")
            assert hits[-1].content == first.content, f"{image.name}: cached bytes differ"
    assert problems == []


def test_v2_infer_masks_are_the_reference_masks(
        api: Server, images: list[Fixed], references: dict[str, Reference]) -> None:
    problems: list[str] = []
    with httpx.Client(timeout=60) as client:
        for image in images:
            request = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(image.data).decode()]}],
                       "outputs": [{"name": "mask", "parameters": {"binary_data": True}}]}
            answer = client.post(url(api, "/v2/models/unet/infer"), json=request)
            assert answer.status_code == 200, f"{image.name}: {answer.text}"
            assert answer.headers["x-model-version"] == f"{VERSION}/savedmodel"
            length = int(answer.headers[HEADER_LENGTH])
            (output,) = json.loads(answer.content[:length])["outputs"]
            width, height = references[image.name].size
            assert (output["name"], output["shape"]) == ("mask", [1, height, width])
            got = np.frombuffer(answer.content[length:], np.uint8).reshape(height, width)
            if not np.array_equal(got, references[image.name].mask):
                problems.append(differs(f"/v2 infer {image.name}", got,
                                        references[image.name].mask))
    assert problems == []


def test_a_batch_job_writes_the_reference_masks(
        images: list[Fixed], references: dict[str, Reference], tiny_model_repo: Path,
        redis_server: Server, tmp_path: Path) -> None:
    """The worker's chunk, run in-process as its Celery task runs it (batches of one image,
    so the model computes exactly what the reference asked it)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.data)
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    store = JobStore(RedisEndpoint.build("state", redis_url).client(decode_responses=True))
    queued: list[tuple[str, int]] = []

    def enqueue(job_id: str, chunks: Sequence[int]) -> None:  # what Celery would deliver
        queued.extend((job_id, index) for index in chunks)

    repository = ModelRepository(str(tiny_model_repo))
    service = JobService(store, repository, enqueue, JobSettings(
        model_repository=repository.root, job_input_prefixes=(str(tmp_path),),
        job_output_prefixes=(str(tmp_path),)))
    status = service.submit(JobRequest(input=str(folder), output=str(tmp_path / "masks"),
                                       model_version=VERSION, chunk_size=7))
    runner = ChunkRunner(store, ModelCache(repository, tmp_path / "cache"), service.policy,
                         batch_size=1, io_threads=2)
    for job_id, index in queued:
        runner.run(job_id, index)

    final = service.status(status.job_id)
    assert final.state is JobState.SUCCEEDED, final
    assert final.manifest is not None
    lines = {Path(line.input).name: line
             for line in decode(storage_for(final.manifest).read(final.manifest))}
    assert set(lines) == {image.name for image in images}
    problems: list[str] = []
    for name, line in lines.items():
        want = references[name]
        assert line.output is not None, line.error
        assert (line.width, line.height) == want.size, name
        if line.class_fractions != want.fractions:
            problems.append(f"batch job {name}: class fractions {line.class_fractions} != "
                            f"{want.fractions}")
        got = png_pixels(storage_for(line.output).read(line.output))
        if not np.array_equal(got, want.mask):
            problems.append(differs(f"batch job {name}", got, want.mask))
    assert problems == []
