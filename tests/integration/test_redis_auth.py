"""Every Redis client authenticates through the one factory: a real `redis-server
--requirepass`, the API as a uvicorn process (result cache on the cache role, kept answers and
jobs on the state role) and a real Celery worker (broker, backend and job store). The password
never shows in logs, error bodies or metrics, and a wrong one is a plain 503."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from services.inference.app import create_app
from services.inference.settings import InferenceSettings
from tests.integration.test_inference_support import photo, segment, start_api, url
from tests.servers import Server, free_port, running, start_redis, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "pw-9f2c:/@x"  # characters that need quoting inside a URL
WRONG = "not-the-password-71ab"
CACHE_DB, STATE_DB = 1, 2
CELERY = str(Path(sys.executable).with_name("celery"))


@dataclass
class Stack:
    redis: Server
    api: Server
    worker: Server
    logs: Path

    def db(self, number: int) -> redis.Redis:
        return redis.Redis(port=self.redis.port, db=number, password=PASSWORD)


@pytest.fixture(scope="module")
def stack(tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("redis-auth")
    with running(start_redis(log=logs / "redis.log", password=PASSWORD)) as server:
        base = f"redis://127.0.0.1:{server.port}"
        api = start_api(tiny_model_repo, logs, f"{base}/{STATE_DB}",
                        cache_redis_url=f"{base}/{CACHE_DB}", cache_redis_password=PASSWORD,
                        state_redis_password=PASSWORD, feedback_uri=str(logs / "feedback"),
                        stage_poll_seconds=0, log_level="DEBUG")
        port = free_port()
        worker = Server(
            [CELERY, "-A", "services.worker.app", "worker", "--pool=solo", "--concurrency=1",
             "-Q", "maskfleet", "--without-mingle", "--without-gossip", "--loglevel=DEBUG",
             "-n", f"auth-{port}@%h"], port, log=logs / "worker.log",
            env={"MASKFLEET_STATE_REDIS_URL": f"{base}/{STATE_DB}",
                 "MASKFLEET_STATE_REDIS_PASSWORD": PASSWORD,
                 "MASKFLEET_MODEL_REPOSITORY": str(tiny_model_repo),
                 "MASKFLEET_WORKER_METRICS_PORT": str(port), "MASKFLEET_LOG_LEVEL": "DEBUG",
                 "MASKFLEET_CACHE_DIR": str(logs / "worker-cache"), "TF_CPP_MIN_LOG_LEVEL": "2",
                 "MASKFLEET_JOB_INPUT_PREFIXES": str(logs.parent)})  # as start_api's
        with running(api), running(worker.start(timeout=120)):
            yield Stack(server, api, worker, logs)


def test_redis_refuses_clients_without_the_password(stack: Stack) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stack.redis.port).ping()


def test_the_cache_and_kept_answers_live_in_their_roles(stack: Stack, tmp_path: Path) -> None:
    image = photo(41)
    with httpx.Client(timeout=60) as http:
        first = segment(http, stack.api, image)
        second = segment(http, stack.api, image)
        assert (first.status_code, second.status_code) == (200, 200)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        assert stack.db(CACHE_DB).keys("maskfleet:mask:*")
        kept = f"maskfleet:feedback:served:{first.headers['x-feedback-token']}"
        wait_until(lambda: bool(stack.db(STATE_DB).exists(kept)), 30, "the kept answer")
        assert not stack.db(CACHE_DB).exists(kept)
        correction = http.post(url(stack.api, "/v1/feedback"),
                               params={"feedback_token": first.headers["x-feedback-token"]},
                               content=first.content, headers={"Content-Type": "image/png"})
        assert correction.status_code == 200, correction.text


def test_a_job_runs_through_the_password_protected_state_redis(
    stack: Stack, tmp_path: Path,
) -> None:
    source = tmp_path / "images"
    source.mkdir()
    for i in range(3):
        (source / f"p{i}.jpg").write_bytes(photo(50 + i))
    with httpx.Client(base_url=url(stack.api), timeout=30) as http:
        answer = http.post("/v1/jobs", json={"input": str(source),
                                             "output": str(tmp_path / "masks"), "chunk_size": 2})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]

        def finished() -> bool:
            return http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"

        wait_until(finished, 120, "the job to succeed")
        assert http.get(f"/v1/jobs/{job_id}").json()["totals"] == {
            "images": 3, "done": 3, "failed": 0}
    assert stack.db(STATE_DB).exists(f"maskfleet:job:{job_id}")
    assert not stack.db(CACHE_DB).exists(f"maskfleet:job:{job_id}")


def test_a_wrong_password_is_a_plain_503(stack: Stack, tmp_path: Path,
                                         tiny_model_repo: Path) -> None:
    settings = InferenceSettings(
        model_repository=str(tiny_model_repo), cache_dir=str(tmp_path / "cache"),
        state_redis_url=f"redis://127.0.0.1:{stack.redis.port}/{STATE_DB}",
        state_redis_password=WRONG, cache_redis_password=WRONG)
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.jpg").write_bytes(photo(60))
    answer = client.post("/v1/jobs", json={"input": str(source), "output": str(tmp_path / "o")})
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == "the job store refused this service's credentials"
    assert WRONG not in answer.text
    status = client.get("/v1/jobs/" + "a" * 32)
    assert status.status_code == 503
    assert WRONG not in status.text


def test_the_password_never_shows_in_logs_or_metrics(stack: Stack) -> None:
    exposed = [httpx.get(url(stack.api, "/metrics")).text,
               httpx.get(f"http://127.0.0.1:{stack.worker.port}/metrics").text]
    exposed += [path.read_text(errors="replace") for path in stack.logs.glob("*.log")]
    assert len(exposed) >= 4
    for text in exposed:
        assert PASSWORD not in text
        assert "pw-9f2c%3A%2F%40x" not in text  # nor its URL-quoted form
