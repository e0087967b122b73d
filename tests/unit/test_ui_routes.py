"""Serving the web page and the offline docs, and `?stage=` for the compare view (in-process).

The browser tests (tests/browser) drive the page itself; these check what the server promises
about it: files from the package, a strict CSP on every /ui answer, the page config, a second
stage served only when configured, and Swagger UI with no reference to another host.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient

from services.inference.app import create_app
from services.inference.ui.router import STATIC_DIR
from shared.repository import VersionMetadata
from tests.servers import wait_until
from tests.unit.test_inference_api import PROBLEM, ThresholdModel, half_white, mask_of, settings
from tests.unit.test_inference_cache import FakeRedis


class StagedRepository:
    """production -> 1, candidate -> 2."""

    stages: ClassVar[dict[str, int]] = {"production": 1, "candidate": 2}

    def resolve(self, model: str, *, version: int | None = None, stage: str = "") -> int:
        return version or self.stages[stage]

    def metadata(self, model: str, version: int) -> VersionMetadata:
        return VersionMetadata(model=model, version=version, metrics={})


def start(**overrides) -> TestClient:
    models = {1: ThresholdModel(1), 2: ThresholdModel(2)}
    app = create_app(settings(**overrides), repository=StagedRepository(),  # type: ignore[arg-type]
                     loader=models.__getitem__, redis_client=FakeRedis())
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with start(compare_stage="candidate") as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, 30, "model loaded")
        wait_until(lambda: test_client.post(
            "/v1/segment?stage=candidate", content=half_white(),
            headers={"Content-Type": "image/png"}).status_code == 200, 30, "candidate loaded")
        yield test_client


def assert_strict_csp(headers) -> None:
    csp = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"
    assert csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_the_page_and_its_files_come_from_the_package_with_a_strict_csp(client):
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "ui/"  # relative: keeps /model-a in front
    page = client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert_strict_csp(page.headers)
    assert page.text == (STATIC_DIR / "index.html").read_text()
    for path in ("js/app.js", "js/mask.js", "style.css", "samples/animal.jpg"):
        answer = client.get(f"/ui/{path}")
        assert answer.status_code == 200, path
        assert_strict_csp(answer.headers)
    assert client.get("/ui/js/app.js").headers["content-type"].startswith("text/javascript")


def test_no_file_on_the_page_names_another_host():
    for file in STATIC_DIR.rglob("*"):
        if file.suffix in {".html", ".js", ".css", ".json"}:
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", file.read_text()), file


def test_paths_outside_the_static_folder_are_not_served(client):
    for path in ("/ui/../app.py", "/ui/%2e%2e/router.py", "/ui/..%2Frouter.py"):
        assert client.get(path).status_code == 404, path


def test_the_page_config_says_what_this_api_offers(client):
    config = client.get("/ui/config.json")
    assert config.status_code == 200
    assert_strict_csp(config.headers)
    assert config.json() == {
        "model": {"name": "unet", "version": 1, "stage": "production"},
        "compare": {"stage": "candidate", "header": "X-Maskfleet-Variant",
                    "stable": "stable", "canary": "canary"},
        "keep": {"enabled": True, "ttl_seconds": 7 * 86400},
    }


def test_a_configured_second_stage_is_served_on_request(client):
    stable = client.post("/v1/segment", content=half_white(), headers={"Content-Type": "image/png"})
    candidate = client.post("/v1/segment?stage=candidate", content=half_white(),
                            headers={"Content-Type": "image/png"})
    own = client.post("/v1/segment?stage=production", content=half_white(),
                      headers={"Content-Type": "image/png"})
    assert (stable.headers["x-model-version"], candidate.headers["x-model-version"],
            own.headers["x-model-version"]) == ("1/savedmodel", "2/savedmodel", "1/savedmodel")
    assert mask_of(candidate.content).shape == mask_of(stable.content).shape


@pytest.mark.parametrize("stage", ["candidate", "staging", "x" * 40])
def test_a_stage_this_api_does_not_serve_is_a_clear_404(stage):
    with start() as plain:
        wait_until(lambda: plain.get("/readyz").status_code == 200, 30, "model loaded")
        answer = plain.post(f"/v1/segment?stage={stage}", content=half_white(),
                            headers={"Content-Type": "image/png"})
        assert answer.headers["content-type"] == PROBLEM
        if len(stage) > 32:
            assert answer.status_code == 422
        else:
            assert answer.status_code == 404
            assert answer.json()["code"] == "stage_not_served"
        assert plain.get("/ui/config.json").json()["compare"]["stage"] is None


def test_docs_are_served_from_local_assets(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    scripts = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert scripts, docs.text
    assert all(not re.match(r"(https?:)?//", url) for url in scripts), scripts
    for url in scripts:
        assert client.get(f"/{url}").status_code == 200, url
    assert "'openapi.json'" in docs.text or '"openapi.json"' in docs.text
    assert client.get("/redoc").status_code == 404


def test_the_root_links_to_the_page_and_the_docs(client):
    links = client.get("/").json()["links"]
    assert (links["ui"], links["docs"]) == ("/ui/", "/docs")
