"""The jobs CLI against a scripted API: what it sends, what it prints, how it exits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.jobs.cli import main

JOB_ID = "a" * 32


def job(state: str, done: int = 0, failed: int = 0, errors: list[Any] | None = None) -> Any:
    return {
        "job_id": JOB_ID, "state": state, "input": {"kind": "prefix", "prefix": "gs://b/in/"},
        "output": "gs://b/out", "model": {"name": "unet", "version": 3, "stage": "production"},
        "chunk_size": 2, "chunks": {"total": 2, "done": done // 2},
        "totals": {"images": 4, "done": done, "failed": failed}, "errors": errors or [],
        "manifest": "gs://b/out/manifest.jsonl" if state == "succeeded" else None,
        "error": "chunk 1 failed" if state == "failed" else None,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z",
    }


class ScriptedApi:
    """Answers POST with the first state, then each GET with the next one."""

    def __init__(self, *states: Any) -> None:
        self.states: Iterator[Any] = iter(states)
        self.last: Any = None
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1/jobs/" + "0" * 32:
            return httpx.Response(404, json={"title": "Unknown job", "detail": "no job 000"})
        self.last = next(self.states, self.last)
        return httpx.Response(202 if request.method == "POST" else 200, json=self.last)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url="http://api", transport=httpx.MockTransport(self))


def test_submit_and_wait_follows_progress_to_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    api = ScriptedApi(job("queued"), job("running", 2), job("succeeded", 4, 1, [
        {"input": "gs://b/in/bad.png", "code": "invalid_image", "detail": "not an image"}]))
    code = main(["submit", "gs://b/in", "gs://b/out", "--chunk-size", "2", "--model-stage",
                 "candidate", "--wait", "--interval", "0"], http=api.client())
    assert code == 0
    assert json.loads(api.requests[0].content) == {
        "input": "gs://b/in", "output": "gs://b/out", "model_stage": "candidate",
        "chunk_size": 2}
    out = capsys.readouterr().out
    assert "succeeded" in out
    assert "gs://b/out/manifest.jsonl" in out
    assert "invalid_image" in out


def test_an_input_file_becomes_a_list(tmp_path: Path) -> None:
    listing = tmp_path / "uris.txt"
    listing.write_text("gs://b/a.png\n\ngs://b/c.jpg\n")
    api = ScriptedApi(job("queued"))
    assert main(["submit", f"@{listing}", "gs://b/out"], http=api.client()) == 0
    assert json.loads(api.requests[0].content)["input"] == ["gs://b/a.png", "gs://b/c.jpg"]


@pytest.mark.parametrize(("final", "strict", "code"), [
    (job("succeeded", 4), False, 0),
    (job("succeeded", 4, 1), False, 0),
    (job("succeeded", 4, 1), True, 1),
    (job("failed", 2), False, 1),
    (job("cancelled", 2), False, 3),
])
def test_wait_exit_codes(final: Any, strict: bool, code: int) -> None:
    api = ScriptedApi(job("running"), final)
    argv = ["wait", JOB_ID, "--interval", "0", *(["--strict"] if strict else [])]
    assert main(argv, http=api.client()) == code


def test_wait_gives_up_at_the_timeout() -> None:
    api = ScriptedApi(job("running"))
    assert main(["wait", JOB_ID, "--interval", "0", "--timeout", "0"], http=api.client()) == 4


def test_a_refused_request_prints_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    api = ScriptedApi()
    assert main(["status", "0" * 32], http=api.client()) == 2
    assert "Unknown job: no job 000" in capsys.readouterr().err


def test_an_unreachable_api_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = httpx.Client(base_url="http://api", transport=httpx.MockTransport(refuse))
    assert main(["status", JOB_ID], http=client) == 2
    assert "cannot reach the API" in capsys.readouterr().err


def test_status_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    api = ScriptedApi(job("running", 2))
    assert main(["status", JOB_ID, "--json"], http=api.client()) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["done"] == 2


def test_cancel_shows_the_new_state(capsys: pytest.CaptureFixture[str]) -> None:
    api = ScriptedApi(job("cancelled", 2))
    assert main(["cancel", JOB_ID], http=api.client()) == 0
    assert api.requests[0].method == "DELETE"
    assert "cancelled" in capsys.readouterr().out
