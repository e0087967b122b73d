"""A fresh install: the API starts on an empty model repository, stays alive and unready, and
turns ready on its own once a version is published at its stage (no restart). Also `GET /` for
load balancers that health-check the root, and the keep-alive timeout behind Google's LBs."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from services.models.cli import main as models_cli
from tests.integration.test_inference_support import start_api, url
from tests.servers import Server, wait_until

pytestmark = pytest.mark.integration
UVICORN_DEFAULT_KEEP_ALIVE = 5.0


def raw_get(sock: socket.socket, path: str) -> bytes:
    """One HTTP/1.1 request on an already open keep-alive connection; b"" if it was closed."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def attempts_logged(api: Server) -> int:
    assert api.log is not None
    return api.log.read_text().count('"model not loaded"')


def test_an_empty_repository_keeps_the_api_alive_and_unready_until_a_version_is_published(
        tiny_model_repo: Path, redis_server: Server, tmp_path: Path) -> None:
    repository = tmp_path / "models"  # does not even exist yet: a fresh bucket prefix
    api = start_api(repository, tmp_path, f"redis://127.0.0.1:{redis_server.port}/0",
                    ready_path="/healthz", stage_poll_seconds=1, cache_enabled="false")
    try:
        assert api.proc is not None
        idle = socket.create_connection(("127.0.0.1", api.port), timeout=10)
        first = raw_get(idle, "/healthz")
        assert first.startswith(b"HTTP/1.1 200")
        opened = time.monotonic()

        root = httpx.get(url(api, "/"), timeout=5)
        assert root.status_code == 200
        body = root.json()
        assert body["name"] == "maskfleet-inference"
        assert body["version"]
        assert body["model"] == {"name": "unet", "version": None, "stage": "production"}
        assert body["links"]["ready"] == "/readyz"

        # the holder keeps looking (one attempt per poll) while the probes keep their answers
        wait_until(lambda: attempts_logged(api) >= 3, 60, "three attempts to find a version")
        ready = httpx.get(url(api, "/readyz"), timeout=5)
        assert ready.status_code == 503
        assert ready.json()["code"] == "model_not_ready"
        assert httpx.get(url(api, "/healthz"), timeout=5).status_code == 200
        assert api.proc.poll() is None

        # an idle keep-alive connection outlives uvicorn's 5 s default (the LB's 600 s rule)
        wait_until(lambda: time.monotonic() - opened > UVICORN_DEFAULT_KEEP_ALIVE + 1, 30,
                   "the connection to idle past uvicorn's default keep-alive")
        again = raw_get(idle, "/")
        idle.close()
        assert again.startswith(b"HTTP/1.1 200"), "the server closed an idle connection"

        code = models_cli(["--repository", str(repository), "import",
                           str(tiny_model_repo / "unet" / "2"), "--stage", "production"])
        assert code == 0
        pid = api.proc.pid
        wait_until(lambda: httpx.get(url(api, "/readyz"), timeout=5).status_code == 200, 60,
                   "readiness after the version is published")
        assert api.proc.poll() is None
        assert api.proc.pid == pid, "ready without a restart"
        for path in ("/", "/model-a/", "/model-b"):  # the Ingress fan-out reaches it too
            served = httpx.get(url(api, path), timeout=5).json()["model"]
            assert served == {"name": "unet", "version": 1, "stage": "production"}, path
    finally:
        api.stop()

