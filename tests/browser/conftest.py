"""A real browser (Debian's Chromium, headless, driven by Playwright) against a real API.

The API runs as users run it (`python -m services.inference` under uvicorn, real Redis), with a
tiny U-Net at `production` and a second version at `candidate` that the same process also
serves (`MASKFLEET_COMPARE_STAGE`), so the compare view has two versions to show. Screenshots
of each step go to `var/test-artifacts/browser/` (or `$MASKFLEET_TEST_ARTIFACTS`): kept for
people to look at, never committed (var/ is ignored).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, sync_playwright

from shared.repository import ModelRepository
from tests.integration.test_inference_support import start_api, url
from tests.servers import REPO, Server, free_port, running, wait_until

CHROMIUM = os.environ.get("MASKFLEET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # tests run as root in CI containers, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
REDIS_DB = 9
MODELS_OVERRIDE = os.environ.get("MASKFLEET_UI_TEST_MODEL_REPOSITORY")
"""A local model repository with `unet` at production and candidate to use instead of the tiny
untrained one (whose masks are noise): README's screenshot comes from a run with one."""


@dataclass
class UiStack:
    api: Server
    feedback_dir: Path
    redis_url: str
    repo: Path
    workdir: Path

    def url(self, path: str = "") -> str:
        return url(self.api, path)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("MASKFLEET_TEST_ARTIFACTS", REPO / "var" / "test-artifacts"))
    out = path / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Package-scoped: Playwright's sync API keeps an event loop running in this thread while
    it is open, so it must be closed before tests that run asyncio loops of their own."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium "
                    "(scripts/install-system.sh)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def ui_stack(redis_server: Server, tiny_model_repo: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    """The API with version 1 at production and version 2 at candidate, both served."""
    repo = tmp_path_factory.mktemp("ui-models") / "repo"
    if MODELS_OVERRIDE:  # a trained repository, for screenshots people can read
        shutil.copytree(MODELS_OVERRIDE, repo)
    else:
        shutil.copytree(tiny_model_repo, repo)
        ModelRepository(str(repo)).set_stage("unet", "candidate", 2)
    workdir = tmp_path_factory.mktemp("ui-api")
    feedback_dir = workdir / "feedback"
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    api = start_api(repo, workdir, redis_url,
                    feedback_uri=str(feedback_dir), feedback_sample_rate=1.0,
                    stage_poll_seconds=0, compare_stage="candidate")
    with running(api):
        stack = UiStack(api, feedback_dir, redis_url, repo, workdir)
        wait_until(lambda: _candidate_ready(stack), timeout=120, what="candidate stage loaded")
        yield stack


def _candidate_ready(stack: UiStack) -> bool:
    answer = httpx.get(stack.url("/ui/config.json"), timeout=5)
    if answer.json()["compare"]["stage"] != "candidate":
        return False
    probe = httpx.post(stack.url("/v1/segment?stage=candidate"), timeout=30,
                       content=(REPO / "services/inference/ui/static/samples/animal.jpg")
                       .read_bytes(), headers={"Content-Type": "image/jpeg"})
    return probe.status_code == 200


@pytest.fixture(scope="module")
def worker(ui_stack: UiStack) -> Iterator[Server]:
    """One batch worker (`celery ... worker --pool=solo`, as deployed) on the stack's Redis."""
    port = free_port()
    celery = str(Path(sys.executable).with_name("celery"))
    server = Server(
        [celery, "-A", "services.worker.app", "worker", "--pool=solo", "--concurrency=1",
         "-Q", "maskfleet", "--without-mingle", "--without-gossip", "-n", f"ui-{port}@%h"],
        port, log=ui_stack.workdir / "worker.log",
        env={"MASKFLEET_CACHE_REDIS_URL": ui_stack.redis_url,
             "MASKFLEET_STATE_REDIS_URL": ui_stack.redis_url,
             "MASKFLEET_MODEL_REPOSITORY": str(ui_stack.repo),
             "MASKFLEET_CACHE_DIR": str(ui_stack.workdir / "worker-cache"),
             "MASKFLEET_JOB_INPUT_PREFIXES": str(ui_stack.workdir.parent),  # as start_api's
             "MASKFLEET_WORKER_METRICS_PORT": str(port), "TF_CPP_MIN_LOG_LEVEL": "2"})
    with running(server.start(timeout=120)):
        yield server


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) at a desktop size; console errors are collected."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.console_errors = errors  # type: ignore[attr-defined]
    yield tab
    context.close()
