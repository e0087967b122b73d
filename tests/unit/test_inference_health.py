"""`GET /` and readiness while draining, in-process (the real-process versions are
tests/integration/test_inference_bootstrap.py and test_inference_drain.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from services.inference.app import create_app
from tests.servers import wait_until
from tests.unit.test_inference_api import PROBLEM, ThresholdModel, half_white, segment, settings
from tests.unit.test_inference_batcher import FakeRepository


def test_root_answers_before_and_after_the_model_loads():
    model = ThresholdModel(3)
    model.loaded.clear()
    app = create_app(settings(cache_enabled=False), repository=FakeRepository(3),
                     loader=lambda version: model)
    with TestClient(app) as client:
        early = client.get("/")
        assert early.status_code == 200
        assert early.json()["model"] == {"name": "unet", "version": None, "stage": "production"}
        assert early.json()["links"]["docs"] == "/docs"
        model.loaded.set()
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "readiness")
        body = client.get("/").json()
        assert body["model"]["version"] == 3
        assert body["name"] == "maskfleet-inference"
        assert body["version"] == app.version


def test_the_drain_marker_fails_readiness_but_not_serving(tmp_path: Path):
    marker = tmp_path / "draining"
    marker.touch()  # left by the previous container of this pod
    app = create_app(settings(cache_enabled=False, drain_file=str(marker)),
                     repository=FakeRepository(1), loader=ThresholdModel)
    with TestClient(app) as client:
        assert not marker.exists(), "a stale marker is removed on start"
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "readiness")
        marker.touch()  # the preStop hook
        answer = client.get("/readyz")
        assert (answer.status_code, answer.headers["content-type"]) == (503, PROBLEM)
        assert answer.json()["code"] == "draining"
        assert client.get("/healthz").status_code == 200, "alive: no restart while draining"
        assert client.get("/").status_code == 200
        served = segment(client, half_white())
        assert served.status_code == 200, "requests still arriving during the sleep are served"
