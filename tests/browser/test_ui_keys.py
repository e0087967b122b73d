"""The page against an API that requires keys: it asks for one when the API answers 401/403,
keeps it for the tab only, and uses it for segmenting and for feedback.

The API runs with a keys file made by `python -m shared.auth create` (as an operator does), so
no caller gets anything without a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, expect

from tests.browser.test_ui import SAMPLE, canvas_classes, shot
from tests.integration.test_inference_support import start_api, url
from tests.integration.test_security_api import create_key
from tests.servers import Server, running

pytestmark = pytest.mark.integration

REDIS_DB = 12
"""Its own database, emptied first: corrections are claimed per (model, version, image) for
30 days, and test_ui.py corrects the same sample with the same version."""


@dataclass
class KeyedApi:
    api: Server
    infer_only: str
    full: str


@pytest.fixture(scope="module")
def keyed(redis_server: Server, tiny_model_repo: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedApi]:
    workdir = tmp_path_factory.mktemp("ui-keys")
    keys_file = workdir / "keys.json"
    infer_only = create_key(keys_file, "viewer", "infer")
    full = create_key(keys_file, "annotator", "infer,feedback")
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    api = start_api(tiny_model_repo, workdir, redis_url,
                    api_keys_file=keys_file, feedback_uri=str(workdir / "feedback"),
                    feedback_sample_rate=1.0, stage_poll_seconds=0)
    with running(api):
        yield KeyedApi(api, infer_only, full)


def enter_key(page: Page, key: str, reason: str) -> None:
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-reason")).to_contain_text(reason)
    page.locator("#key-input").fill(key)
    page.locator("#key-form button[value=save]").click()


def test_the_page_asks_for_a_key_and_keeps_it_for_the_tab_only(
        browser: Browser, keyed: KeyedApi, artifacts: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(url(keyed.api, "/ui/"))
    expect(page.locator("body")).to_have_attribute("data-ready", "true")

    # segmenting needs a key: the page asks, a wrong one is refused and asked again
    page.set_input_files("#file", str(SAMPLE))
    enter_key(page, "mfk_" + "x" * 43, "asks for a key")
    shot(page, artifacts, "09-key-asked")
    enter_key(page, keyed.infer_only, "refused this key")
    expect(page.locator("#overlay")).to_have_attribute("data-request-id", re.compile(".+"))
    assert canvas_classes(page, "overlay").all()

    # the key lives in this tab's sessionStorage, nowhere else
    stored = page.evaluate("""() => ({session: sessionStorage.getItem('maskfleet.apiKey'),
                                      local: localStorage.length, cookies: document.cookie})""")
    assert stored == {"session": keyed.infer_only, "local": 0, "cookies": ""}
    other_tab = context.new_page()
    other_tab.goto(url(keyed.api, "/ui/"))
    assert other_tab.evaluate("sessionStorage.getItem('maskfleet.apiKey')") is None

    # the viewer key may not send feedback (403): the page asks for one that may, segments
    # the image again with it (tokens are bound to keys) and sends the same painting
    box = page.locator("#overlay").bounding_box()
    assert box is not None
    page.keyboard.press("3")
    page.mouse.move(box["x"] + 10, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 10, box["y"] + box["height"] - 10, steps=8)
    page.mouse.up()
    page.locator("#send").click()
    enter_key(page, keyed.full, "may not send corrections")
    result = page.locator("#feedback-result")
    expect(result).to_have_attribute("data-iou", re.compile(r"^0\.[0-9]+$"))
    assert page.evaluate("sessionStorage.getItem('maskfleet.apiKey')") == keyed.full
    shot(page, artifacts, "10-key-feedback")

    # this API serves no second stage: compare asks the gateway for each side with the
    # HTTPRoute's variant header; with no gateway both answers carry one version
    variants: list[str | None] = []
    page.on("request", lambda r: variants.append(r.headers.get("x-maskfleet-variant"))
            if "/v1/segment" in r.url else None)
    page.locator("#compare-run").click()
    expect(page.locator("#compare-result")).to_have_text(
        "Both sides answered with version 1: no candidate is being served.")
    assert sorted(v or "" for v in variants) == ["canary", "stable"]
    context.close()
