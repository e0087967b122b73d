"""The page's mask code (static/js/mask.js) run in the browser, checked by Pillow and numpy.

What the page sends to /v1/feedback must be a trimap PNG of exactly the image's size with
values 1/2/3: decoded here by Pillow, not by the page's own decoder. The decoder must read the
API's masks (shared.imaging.encode_png, `Up`-filtered rows) value for value. The static files
are served by a plain `python -m http.server` process: the module needs no API.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

from shared.masks import encode_png
from tests.servers import REPO, Server, free_port, running

STATIC = REPO / "services/inference/ui/static"

ENCODE = """async ([values, width, height]) => {
  const m = await import('./js/mask.js');
  try {
    const png = await m.encodeTrimapPng(Uint8Array.from(values), width, height);
    return {png: Array.from(png)};
  } catch (e) { return {error: String(e.message)}; }
}"""

DECODE = """async (bytes) => {
  const m = await import('./js/mask.js');
  const mask = await m.decodeTrimapPng(Uint8Array.from(bytes));
  return {width: mask.width, height: mask.height, values: Array.from(mask.values)};
}"""


@pytest.fixture(scope="module")
def static_server() -> Iterator[Server]:
    port = free_port()
    server = Server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                     "--directory", str(STATIC)], port)
    with running(server.start()):
        yield server


@pytest.fixture
def tab(browser: Browser, static_server: Server) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{static_server.port}/style.css")
    yield page
    context.close()


def trimap(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 4, (height, width), dtype=np.uint8)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 5), (352, 240), (333, 1)])
def test_encoded_mask_is_an_exact_trimap_png(tab: Page, width: int, height: int) -> None:
    mask = trimap(width, height, width * 1000 + height)
    got = tab.evaluate(ENCODE, [mask.ravel().tolist(), width, height])
    with Image.open(io.BytesIO(bytes(got["png"]))) as image:
        assert image.format == "PNG"
        assert image.mode == "L"
        assert image.size == (width, height)
        np.testing.assert_array_equal(np.asarray(image), mask)


@pytest.mark.parametrize(("values", "width", "height", "message"), [
    ([1, 2, 0, 3], 2, 2, "mask value 0 is not 1, 2 or 3"),
    ([1, 2, 4, 3], 2, 2, "mask value 4 is not 1, 2 or 3"),
    ([1, 2, 3], 2, 2, "mask has 3 values, 2x2 needs 4"),
    ([], 0, 0, "bad mask size 0x0"),
])
def test_encoder_refuses_what_is_not_a_trimap(tab: Page, values: list[int], width: int,
                                              height: int, message: str) -> None:
    assert tab.evaluate(ENCODE, [values, width, height]) == {"error": message}


@pytest.mark.parametrize(("width", "height"), [(1, 1), (64, 48), (301, 97)])
def test_decoder_reads_the_apis_masks(tab: Page, width: int, height: int) -> None:
    mask = trimap(width, height, 7 + width)
    mask[: height // 2] = 2  # long runs, as real masks have
    got = tab.evaluate(DECODE, list(encode_png(mask)))
    assert (got["width"], got["height"]) == (width, height)
    np.testing.assert_array_equal(np.array(got["values"], np.uint8).reshape(height, width), mask)


def test_decoder_reads_pillow_pngs_with_every_filter(tab: Page) -> None:
    """Pillow picks filters per row (Sub, Up, Average, Paeth) for a gradient-like image."""
    ys, xs = np.mgrid[0:40, 0:50]
    mask = ((xs + ys) % 3 + 1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(mask, "L").save(out, format="PNG", optimize=True)
    got = tab.evaluate(DECODE, list(out.getvalue()))
    np.testing.assert_array_equal(np.array(got["values"], np.uint8).reshape(40, 50), mask)
