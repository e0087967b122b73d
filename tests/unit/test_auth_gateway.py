"""The auth dependency in-process: keys from a real hashed file, and the trusted gateway header
(off by default). Route groups against a real server: tests/integration/test_security_api.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.inference.app import create_app
from shared.auth.cli import create
from tests.servers import wait_until
from tests.unit.test_inference_api import ThresholdModel, half_white, settings
from tests.unit.test_inference_batcher import FakeRepository
from tests.unit.test_inference_cache import FakeRedis


@pytest.fixture
def keys_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "keys.json"
    return path, create(path, "batch", frozenset({"jobs"}))


def client_for(**overrides: object) -> Iterator[TestClient]:
    models = {1: ThresholdModel(1)}
    app = create_app(settings(cache_enabled=False, **overrides), repository=FakeRepository(1),
                     loader=models.__getitem__, redis_client=FakeRedis())
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "model loaded")
        yield client


def segment(client: TestClient, **headers: str):
    return client.post("/v1/segment", content=half_white(),
                       headers={"Content-Type": "image/png", **headers})


def test_the_keys_file_holds_digests_only(keys_file):
    path, key = keys_file
    assert key.startswith("mfk_")
    assert key not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0


def test_a_gateway_identity_is_trusted_only_when_configured(keys_file):
    path, _ = keys_file
    gateway = {"X-Authenticated-User": "alice@example.com"}
    for client in client_for(api_keys_file=str(path)):  # header ignored: not configured
        assert segment(client, **gateway).status_code == 401
    for client in client_for(api_keys_file=str(path),
                             trusted_identity_header="X-Authenticated-User"):
        assert segment(client, **gateway).status_code == 200  # infer by default
        answer = client.post("/v1/jobs", json={"input": "gs://b/in", "output": "gs://b/out"},
                             headers=gateway)
        assert (answer.status_code, answer.json()["code"]) == (403, "forbidden")
        assert "alice@example.com" in answer.json()["detail"]
        scoped = segment(client, **gateway, **{"X-Maskfleet-Scopes": "feedback"})
        assert scoped.status_code == 403  # the gateway listed scopes: infer is not among them
        unknown = segment(client, **gateway, **{"X-API-Key": "mfk_forged"})
        assert unknown.status_code == 401  # a presented key is checked, whatever the header
        assert segment(client).status_code == 401  # no identity at all


def test_local_mode_is_open_and_says_so(caplog):
    with caplog.at_level("WARNING", logger="services.inference.app"):
        for client in client_for():
            assert segment(client).status_code == 200
    assert any("open to callers without a key" in r.getMessage() for r in caplog.records)
