"""The page at /ui in a real browser: segment, look, correct, send, compare; /docs offline.

Each step is checked the way a person would see it (what the canvas shows, the IoU the page
prints) and against the API itself (the mask the API serves for the same image, the trimap
that /v1/feedback stored). A screenshot of each step lands in the artefact folder.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.conftest import UiStack
from tests.servers import REPO, Server

pytestmark = pytest.mark.integration

SAMPLE = REPO / "services/inference/ui/static/samples/animal.jpg"
COLOURS = {(230, 57, 70): 1, (69, 123, 157): 2, (255, 209, 102): 3}
"""The page's class colours (static/js/mask.js), written out again: the test reads pixels."""

READ_CANVAS = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  return {width: c.width, height: c.height, rgba: Array.from(d)};
}"""


def canvas_classes(page: Page, canvas_id: str) -> np.ndarray:
    """The overlay's pixels mapped back to class values (0 = transparent or unknown colour)."""
    got = page.evaluate(READ_CANVAS, canvas_id)
    rgba = np.array(got["rgba"], np.uint8).reshape(got["height"], got["width"], 4)
    classes = np.zeros(rgba.shape[:2], np.uint8)
    for colour, value in COLOURS.items():
        hit = np.all(rgba[..., :3] == colour, axis=-1) & (rgba[..., 3] == 255)
        classes[hit] = value
    return classes


def served_mask(stack: UiStack, image: bytes, **params: str) -> tuple[np.ndarray, str]:
    answer = httpx.post(stack.url("/v1/segment"), params=params, content=image, timeout=60,
                        headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
    return np.asarray(Image.open(io.BytesIO(answer.content))), answer.headers["x-model-version"]


def mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    scores = [np.sum((a == v) & (b == v)) / np.sum((a == v) | (b == v))
              for v in (1, 2, 3) if np.any((a == v) | (b == v))]
    return float(np.mean(scores))


def shot(page: Page, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def open_ui(page: Page, stack: UiStack) -> None:
    response = page.goto(stack.url("/ui/"))
    assert response is not None
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def test_segment_correct_send_and_compare(page: Page, ui_stack: UiStack,
                                          artifacts: Path) -> None:
    open_ui(page, ui_stack)
    expect(page.locator("#model-info")).to_contain_text("unet version 1")
    expect(page.locator("#sample-list button")).to_have_count(4)
    shot(page, artifacts, "01-loaded")

    # upload an image, asking the API to keep the answer for days
    page.locator("#keep").check()
    page.set_input_files("#file", str(SAMPLE))
    expect(page.locator("#overlay")).to_have_attribute("data-request-id", re.compile(".+"))
    expect(page.locator("#info-model")).to_have_text("unet version 1")
    expect(page.locator("#info-cache")).to_contain_text(re.compile("hit|miss"))
    expect(page.locator("#info-latency")).to_contain_text("ms")
    expect(page.locator("#info-kept")).to_have_text("kept for correction for 7 days")
    shot(page, artifacts, "02-overlay")

    shown = canvas_classes(page, "overlay")
    width, height = Image.open(SAMPLE).size
    assert shown.shape == (height, width)
    assert np.all(shown > 0), "every pixel of the overlay shows a class colour"
    expected, _ = served_mask(ui_stack, SAMPLE.read_bytes())
    np.testing.assert_array_equal(shown, expected)
    for value, name in ((1, "pet"), (2, "background"), (3, "border")):
        share = f"{100 * np.mean(expected == value):.1f}%"
        expect(page.locator(f"#fraction-{name}")).to_have_text(share)

    # hide a class: its pixels turn transparent
    page.locator("#show-background").uncheck()
    assert not np.any(canvas_classes(page, "overlay") == 2)
    page.locator("#show-background").check()

    # paint a stroke across the middle with the class the model used least
    rarest = int(np.argmin([np.sum(expected == v) for v in (1, 2, 3)])) + 1
    page.keyboard.press(str(rarest))
    page.locator("#size").fill("30")
    box = page.locator("#overlay").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=12)
    page.mouse.up()
    expect(page.locator("#send")).to_be_enabled()
    painted = canvas_classes(page, "overlay")
    assert np.sum(painted == rarest) > np.sum(expected == rarest)
    shot(page, artifacts, "03-painted")

    # undo and redo the stroke
    page.locator("#undo").click()
    np.testing.assert_array_equal(canvas_classes(page, "overlay"), expected)
    page.locator("#redo").click()
    np.testing.assert_array_equal(canvas_classes(page, "overlay"), painted)

    # send: the API stores exactly the painted trimap and the page shows its IoU
    page.locator("#send").click()
    result = page.locator("#feedback-result")
    expect(result).to_have_attribute("data-iou", re.compile(r"^[0-9.]+$"))
    iou = float(result.get_attribute("data-iou") or "nan")
    assert 0 < iou < 1
    assert iou == pytest.approx(mean_iou(expected, painted), abs=1e-6)
    expect(result).to_contain_text(f"{iou:.4f}")
    stored = list((ui_stack.feedback_dir / "annotations" / "trimaps").glob("*.png"))
    assert len(stored) == 1, stored
    with Image.open(stored[0]) as trimap:
        assert trimap.size == (width, height)
        np.testing.assert_array_equal(np.asarray(trimap), painted)
    shot(page, artifacts, "04-sent")

    # compare: stable (version 1) and candidate (version 2) side by side
    page.locator("#compare-run").click()
    agreement = page.locator("#compare-result")
    expect(agreement).to_have_attribute("data-agreement", re.compile(r"^[0-9.]+$"))
    expect(page.locator("#compare-stable-caption")).to_contain_text("version 1")
    expect(page.locator("#compare-candidate-caption")).to_contain_text("version 2")
    candidate, version = served_mask(ui_stack, SAMPLE.read_bytes(), stage="candidate")
    assert version == "2/savedmodel"
    agree = float(agreement.get_attribute("data-agreement") or "nan")
    assert agree == pytest.approx(float(np.mean(candidate == expected)), abs=1e-9)
    expect(agreement).to_contain_text(f"{100 * agree:.2f}%")
    page.locator("#compare").scroll_into_view_if_needed()
    shot(page, artifacts, "05-compare")
    assert page.console_errors == []  # type: ignore[attr-defined]


def test_phone_sized_and_keyboard_only(page: Page, ui_stack: UiStack, artifacts: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    open_ui(page, ui_stack)
    # a sample, chosen with the keyboard alone
    sample = page.locator("#sample-list button").first
    sample.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#overlay")).to_have_attribute("data-request-id", re.compile(".+"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "no sideways scroll"
    before = canvas_classes(page, "overlay")
    # paint with the keyboard: focus the mask, pick a class and brush size, Space dabs
    page.locator("#overlay").focus()
    rarest = int(np.argmin([np.sum(before == v) for v in (1, 2, 3)])) + 1
    page.keyboard.press(str(rarest))
    for _ in range(5):
        page.keyboard.press("]")
    page.keyboard.press("Space")
    page.keyboard.press("Shift+ArrowRight")
    after = canvas_classes(page, "overlay")
    assert np.sum(after == rarest) > np.sum(before == rarest)
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+z")
    np.testing.assert_array_equal(canvas_classes(page, "overlay"), before)
    shot(page, artifacts, "07-phone")


def test_batch_job_submitted_watched_and_opened(page: Page, ui_stack: UiStack, worker: Server,
                                               artifacts: Path, tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "images", tmp_path / "masks"
    inputs.mkdir()
    samples = sorted((REPO / "services/inference/ui/static/samples").glob("*.jpg"))
    for sample in samples:
        shutil.copy(sample, inputs / sample.name)
    open_ui(page, ui_stack)
    page.locator("#job-input").fill(str(inputs))
    page.locator("#job-output").fill(str(outputs))
    page.locator("#job-form button[type=submit]").click()
    expect(page.locator("#job-status")).to_have_attribute("data-state", "succeeded",
                                                          timeout=120_000)
    expect(page.locator("#job-status")).to_contain_text(f"{len(samples)} of {len(samples)} images")
    expect(page.locator("#job-progress")).to_have_attribute("value", str(len(samples)))
    buttons = page.locator("#job-items button")
    expect(buttons).to_have_count(len(samples))

    buttons.nth(1).click()
    expect(page.locator("#job-view")).to_have_attribute("data-index", "1")
    mask = np.asarray(Image.open(outputs / f"{samples[1].stem}.png"))
    size = page.evaluate("(() => { const c = document.getElementById('job-canvas');"
                         " return [c.width, c.height]; })()")
    assert size == [mask.shape[1], mask.shape[0]]
    shares = ", ".join(f"{name} {100 * np.mean(mask == value):.1f}%"
                       for value, name in ((1, "pet"), (2, "background"), (3, "border")))
    expect(page.locator("#job-caption")).to_contain_text(shares)
    drawn = page.evaluate(READ_CANVAS, "job-canvas")
    rgba = np.array(drawn["rgba"], np.uint8).reshape(mask.shape[0], mask.shape[1], 4)
    photo = np.asarray(Image.open(samples[1]).convert("RGB"))
    assert np.abs(rgba[..., :3].astype(int) - photo).mean() > 10, "the mask is drawn over it"
    page.locator("#jobs").scroll_into_view_if_needed()
    shot(page, artifacts, "06-job")


def test_docs_work_offline(page: Page, ui_stack: UiStack, artifacts: Path) -> None:
    """Swagger UI renders the API's own OpenAPI with every request outside loopback refused."""
    outside: list[str] = []

    def only_loopback(route, request) -> None:  # type: ignore[no-untyped-def]
        if request.url.startswith("http://127.0.0.1:"):
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.goto(ui_stack.url("/docs"))
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("maskfleet inference")
    expect(page.locator(".opblock-summary-path[data-path='/v1/segment']")).to_be_visible()
    assert outside == []
    shot(page, artifacts, "08-docs")
