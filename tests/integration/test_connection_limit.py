"""Beyond `limit_concurrency` the API still answers like itself: a problem+json 503 with
Retry-After, not uvicorn's plain-text one, and it serves again once connections go away."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.integration.test_inference_support import start_api
from tests.servers import Server, running, wait_until

pytestmark = pytest.mark.integration
LIMIT = 3


def keep_alive_request(port: int) -> tuple[socket.socket, bytes]:
    """A connection that made one request and stays open (HTTP/1.1 keep-alive)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    return sock, answer


def test_past_the_connection_limit_the_answer_is_a_problem_with_retry_after(
        tiny_model_repo: Path, redis_server: Server, tmp_path: Path) -> None:
    api = start_api(tiny_model_repo, tmp_path, f"redis://127.0.0.1:{redis_server.port}/6",
                    ready_path="/healthz", limit_concurrency=LIMIT)
    with running(api):
        held = [keep_alive_request(api.port) for _ in range(LIMIT - 1)]
        try:
            assert all(answer.startswith(b"HTTP/1.1 200") for _, answer in held)
            refused = httpx.get(f"http://127.0.0.1:{api.port}/healthz", timeout=30)
        finally:
            for sock, _ in held:
                sock.close()
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "1"
        problem = refused.json()
        assert (problem["status"], problem["code"]) == (503, "overloaded")
        assert problem["request_id"] == refused.headers["x-request-id"]
        # once the server has seen the held connections close it answers normally again
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{api.port}/healthz",
                                     timeout=30).status_code == 200, 30, "capacity back")
