"""Every documented job setting is enforced where it applies: by the API (the real app
factory, real Redis) when jobs are accepted, read and cancelled, and by the worker (its real
runtime) when chunks finish. Both build their job domain from their own settings object."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from services.inference.app import create_app
from services.inference.settings import InferenceSettings
from services.jobs.records import JobRequest
from services.jobs.service import JobService
from services.jobs.settings import JobSettings
from services.jobs.store import JobStore, key
from services.worker.runtime import WorkerRuntime
from services.worker.settings import WorkerSettings
from shared.errors import JobTooLarge
from shared.repository import ModelRepository
from shared.storage import LocalStorage

pytestmark = pytest.mark.integration

REDIS_DB = 7
TTL = 120


def write_images(folder: Path, count: int, *, corrupt: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(out, "PNG")
        data = out.getvalue()[:20] if i < corrupt else out.getvalue()
        (folder / f"img-{i}.png").write_bytes(data)
    return folder


@pytest.fixture
def redis_url(redis_server) -> str:  # type: ignore[no-untyped-def]
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


def job_settings(redis_url: str, repo: Path, tmp_path: Path) -> dict[str, object]:
    return {"state_redis_url": redis_url, "cache_redis_url": redis_url,
            "model_repository": str(repo),
            "cache_dir": str(tmp_path / "cache"), "job_chunk_size": 2,
            "job_max_chunk_size": 3, "job_max_images": 5, "job_max_errors": 1,
            "job_ttl_seconds": TTL, "job_input_prefixes": (str(tmp_path),),
            "job_output_prefixes": (str(tmp_path),)}


@pytest.fixture
def api(redis_url: str, tiny_model_repo: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = InferenceSettings(**job_settings(redis_url, tiny_model_repo, tmp_path))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def submit(api: TestClient, tmp_path: Path, images: int, **body: object) -> dict[str, object]:
    source = write_images(tmp_path / f"in-{images}", images)
    answer = api.post("/v1/jobs", json={"input": str(source), "output": str(tmp_path / "out"),
                                        **body})
    found: dict[str, object] = {"status": answer.status_code, **answer.json()}
    return found


def test_the_api_splits_jobs_by_the_configured_chunk_size(
    api: TestClient, tmp_path: Path,
) -> None:
    job = submit(api, tmp_path, 5)
    assert job["status"] == 202
    assert job["chunk_size"] == 2
    assert job["chunks"] == {"total": 3, "done": 0}


def test_the_api_refuses_a_chunk_size_above_the_configured_maximum(
    api: TestClient, tmp_path: Path,
) -> None:
    job = submit(api, tmp_path, 2, chunk_size=4)
    assert (job["status"], job["code"]) == (422, "invalid_job")
    assert "above the maximum 3" in str(job["detail"])


def test_the_api_refuses_more_images_than_the_configured_maximum(
    api: TestClient, tmp_path: Path,
) -> None:
    job = submit(api, tmp_path, 6)
    assert (job["status"], job["code"]) == (413, "job_too_large")
    assert "at most 5" in str(job["detail"])


class CountingStorage(LocalStorage):
    """Local storage counting the listed objects a caller takes."""

    def __init__(self) -> None:
        self.taken = 0

    def walk(self, prefix: str) -> Iterator[str]:
        for uri in super().walk(prefix):
            self.taken += 1
            yield uri


def test_a_huge_input_prefix_is_refused_without_listing_all_of_it(
    redis_url: str, tiny_model_repo: Path, tmp_path: Path,
) -> None:
    """The listing stops at the first image beyond the maximum: a prefix of a million objects
    costs the API what the largest acceptable job costs, not a list of a million names."""
    source = tmp_path / "huge"
    source.mkdir()
    for i in range(300):
        (source / f"{i:04}.jpg").touch()
    storage = CountingStorage()
    service = JobService(JobStore(redis.Redis.from_url(redis_url)),
                         ModelRepository(str(tiny_model_repo)), lambda *_: None,
                         JobSettings(**job_settings(redis_url, tiny_model_repo, tmp_path)),
                         storage=lambda _: storage)
    with pytest.raises(JobTooLarge, match="more than 5 images"):
        service.submit(JobRequest(input=str(source), output=str(tmp_path / "out")))
    assert storage.taken == 6


def test_a_job_cancelled_through_the_api_expires_after_the_configured_ttl(
    api: TestClient, tmp_path: Path, redis_url: str,
) -> None:
    job = submit(api, tmp_path, 2)
    job_id = str(job["job_id"])
    client = redis.Redis.from_url(redis_url)
    assert client.ttl(key(job_id)) == -1  # an unfinished job never expires
    assert api.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    assert 0 < client.ttl(key(job_id)) <= TTL


def test_the_worker_keeps_the_configured_errors_and_ttl(
    api: TestClient, tmp_path: Path, redis_url: str, tiny_model_repo: Path,
) -> None:
    source = write_images(tmp_path / "mixed", 3, corrupt=2)
    job = api.post("/v1/jobs", json={"input": str(source), "output": str(tmp_path / "out"),
                                     "chunk_size": 3}).json()
    runtime = WorkerRuntime(WorkerSettings(**job_settings(redis_url, tiny_model_repo, tmp_path),
                                           worker_metrics_port=0))
    assert runtime.run_chunk(job["job_id"], 0).job_state == "succeeded"
    final = api.get(f"/v1/jobs/{job['job_id']}").json()
    assert final["totals"] == {"images": 3, "done": 3, "failed": 2}
    assert len(final["errors"]) == 1  # the record keeps job_max_errors; the manifest has both
    assert 0 < redis.Redis.from_url(redis_url).ttl(key(job["job_id"])) <= TTL
