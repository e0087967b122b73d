"""Batch jobs end to end: real Celery worker processes, the real API (uvicorn), Redis, GCS.

Two workers run `celery -A services.worker.app worker --pool=solo` exactly as deployed. To stop
a worker at a known point inside a chunk, a job names a held object as one of its images: the
workers reach GCS through `tests.holding_proxy`, which keeps the request for it waiting until
the test releases it. That is how the cancel and SIGKILL tests hold chunks "in flight" without
any sleep.
"""

from __future__ import annotations

import io
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image, ImageDraw

from services.jobs.cli import main as cli
from services.jobs.manifest import decode
from services.jobs.store import JobStore
from services.worker.models import ModelCache
from shared.imaging import decode_mask
from shared.redis import RedisEndpoint
from shared.repository import ModelRepository
from shared.segmentation import Segmentation, segment_many
from shared.storage import storage_for
from tests.holding_proxy import HoldingProxy
from tests.servers import REPO, Server, free_port, http_ok, wait_until

pytestmark = pytest.mark.integration

REDIS_DB = 7
VISIBILITY_SECONDS = 3600  # only a backstop: chunk leases bring a dead worker's chunk back
LEASE_SECONDS = 6
MAX_PIXELS = 1_000_000
JOB_TIMEOUT = 120.0
CELERY = str(Path(sys.executable).with_name("celery"))


def pet_image(seed: int, fmt: str = "JPEG") -> bytes:
    """A blob 'pet' on a textured background, so masks have all three classes."""
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(48, 220)), int(rng.integers(48, 220))
    noise = rng.integers(-30, 30, (height, width, 3)) + rng.integers(0, 256, 3)
    image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    ImageDraw.Draw(image).ellipse((x0, y0, x0 + width // 2, y0 + height // 2),
                                  fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def put(uri: str, data: bytes) -> str:
    storage_for(uri).write(uri, data)
    return uri


@dataclass
class Fleet:
    """The API and the workers of one test module, sharing one Redis database."""

    redis_url: str
    env: dict[str, str]
    logs: Path
    api: Server
    proxy: HoldingProxy
    workers: list[Server] = field(default_factory=list)
    stale_unacked: int = 0
    """Messages of SIGKILLed workers: Celery keeps them unacknowledged until the visibility
    timeout (the lease brought their chunk back long before)."""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    def start_worker(self, slot: int) -> Server:
        port = free_port()
        worker = Server(
            [CELERY, "-A", "services.worker.app", "worker", "--pool=solo", "--concurrency=1",
             "-Q", "maskfleet", "--without-mingle", "--without-gossip", "--loglevel=INFO",
             "-n", f"w{slot}-{port}@%h"],
            port, log=self.logs / f"worker-{slot}.log",
            env={**self.env, "MASKFLEET_WORKER_METRICS_PORT": str(port),
                 "MASKFLEET_CACHE_DIR": str(self.logs / f"cache-{slot}")})
        return worker.start(timeout=120)

    def ensure_workers(self, count: int = 2) -> None:
        """Replace workers an earlier test killed, then wait for an empty queue."""
        alive = [w for w in self.workers if w.proc and w.proc.poll() is None]
        missing = range(len(alive), count)
        with ThreadPoolExecutor(max(1, len(missing))) as pool:
            alive += list(pool.map(self.start_worker, missing))
        self.workers = alive
        client = redis.Redis.from_url(self.redis_url)
        wait_until(lambda: client.llen("maskfleet") == 0
                   and client.hlen("unacked") <= self.stale_unacked, JOB_TIMEOUT, "an idle queue")

    def worker_pid(self, worker: Server) -> int:
        assert worker.proc is not None
        return worker.proc.pid

    def metric(self, worker: Server, sample: str) -> float:
        for line in httpx.get(f"http://127.0.0.1:{worker.port}/metrics").text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


FLEET_BUCKET = "celery-fleet"


@pytest.fixture
def gcs_bucket(gcs_emulator: Server, request: pytest.FixtureRequest) -> str:
    """A folder per test in the one bucket the fleet's API lets jobs use (the storage rules
    name prefixes, fixed when the API starts)."""
    from google.cloud import storage as gcs

    client = gcs.Client()
    if not client.bucket(FLEET_BUCKET).exists():
        client.create_bucket(FLEET_BUCKET)
    return f"gs://{FLEET_BUCKET}/{request.node.name}"


@pytest.fixture(scope="module")
def fleet(redis_server: Server, gcs_emulator: Server, tiny_model_repo: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("worker-fleet")
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    allowed = f"gs://{FLEET_BUCKET},{tmp_path_factory.getbasetemp()}"
    common = {"MASKFLEET_CACHE_REDIS_URL": redis_url, "MASKFLEET_STATE_REDIS_URL": redis_url,
              "MASKFLEET_MODEL_REPOSITORY": str(tiny_model_repo), "TF_CPP_MIN_LOG_LEVEL": "2",
              "PYTHONPATH": str(REPO), "MASKFLEET_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
              "MASKFLEET_JOB_HEARTBEAT_SECONDS": "1", "MASKFLEET_JOB_INPUT_PREFIXES": allowed,
              "MASKFLEET_JOB_OUTPUT_PREFIXES": allowed}
    proxy = HoldingProxy(gcs_emulator.port)
    worker_env = {**common, "MASKFLEET_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_SECONDS),
                  "STORAGE_EMULATOR_HOST": proxy.url,
                  "MASKFLEET_MODEL_BATCH_SIZE": "4", "MASKFLEET_MAX_PIXELS": str(MAX_PIXELS),
                  "MASKFLEET_MAX_IMAGE_BYTES": "150000"}
    api_port = free_port()
    api = Server([sys.executable, "-m", "services.inference"], api_port,
                 log=logs / "api.log",
                 env={**common, "MASKFLEET_HOST": "127.0.0.1", "MASKFLEET_PORT": str(api_port),
                      "MASKFLEET_CACHE_DIR": str(logs / "cache-api"),
                      "MASKFLEET_STAGE_POLL_SECONDS": "0"})
    found = Fleet(redis_url, worker_env, logs, api, proxy)
    try:
        with ThreadPoolExecutor(3) as pool:
            started = pool.submit(api.start, lambda: http_ok(f"{found.api_url}/readyz"), 120)
            found.workers = list(pool.map(found.start_worker, range(2)))
            started.result()
        yield found
    finally:
        with ThreadPoolExecutor(3) as pool:  # TensorFlow takes seconds to exit: in parallel
            list(pool.map(lambda server: server.stop(), [*found.workers, api]))
        proxy.close()


@pytest.fixture
def http(fleet: Fleet) -> Iterator[httpx.Client]:
    fleet.ensure_workers(2)
    with httpx.Client(base_url=fleet.api_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def store(fleet: Fleet) -> JobStore:
    return JobStore(RedisEndpoint.build("state", fleet.redis_url).client(decode_responses=True))


@pytest.fixture(scope="module")
def models(tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return ModelCache(ModelRepository(str(tiny_model_repo)), tmp_path_factory.mktemp("ref"))


def submit(http: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = http.post("/v1/jobs", json=body)
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    return job


def wait_for(http: httpx.Client, job_id: str, *states: str) -> dict[str, Any]:
    def reached() -> bool:
        return http.get(f"/v1/jobs/{job_id}").json()["state"] in states

    wait_until(reached, JOB_TIMEOUT, f"job {job_id} to be {'/'.join(states)}")
    job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
    return job


def manifest_of(job: dict[str, Any]) -> list[Any]:
    return decode(storage_for(job["manifest"]).read(job["manifest"]))


def hold(fleet: Fleet, uri: str, data: bytes) -> str:
    """An image whose reads by a worker wait until `release(fleet, uri)`."""
    put(uri, data)
    fleet.proxy.hold(uri.removeprefix(f"gs://{FLEET_BUCKET}/"))
    return uri


def release(fleet: Fleet, uri: str) -> None:
    """Let a worker's read of `uri` through, once one is waiting (bounded by a deadline)."""
    fleet.proxy.release(uri.removeprefix(f"gs://{FLEET_BUCKET}/"), JOB_TIMEOUT)


def started_by(store: JobStore, job_id: str, chunk: int, attempt: int = 1) -> str | None:
    """The worker (`host:pid`) running `chunk` in its `attempt`-th run, once it has started."""
    found = store.chunk_attempts(job_id).get(chunk)
    return found[1] if found and found[0] >= attempt else None


def test_a_job_of_50_images_gives_the_masks_of_the_live_api(
    fleet: Fleet, http: httpx.Client, gcs_bucket: str, models: ModelCache,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = {}
    for i in range(50):
        fmt = "PNG" if i % 3 == 0 else "JPEG"
        name = f"{'nested/' if i % 10 == 0 else ''}pet{i:02d}.{'png' if fmt == 'PNG' else 'jpg'}"
        data = pet_image(i, fmt)
        images[put(f"{gcs_bucket}/images/{name}", data)] = data
    job = submit(http, input=f"{gcs_bucket}/images/", output=f"{gcs_bucket}/masks",
                 chunk_size=8)
    assert (job["totals"]["images"], job["chunks"]["total"], job["model"]["version"]) == (
        50, 7, 1)

    done = wait_for(http, job["job_id"], "succeeded", "failed", "cancelled")
    assert done["state"] == "succeeded", done
    assert done["totals"] == {"images": 50, "done": 50, "failed": 0}
    assert cli(["--api-url", fleet.api_url, "wait", job["job_id"]]) == 0
    assert "succeeded" in capsys.readouterr().out

    lines = manifest_of(done)
    assert [x.input for x in lines] == sorted(images)
    for line in lines:
        mask = decode_mask(storage_for(line.output).read(line.output))
        [reference] = segment_many(models("unet", 1), [images[line.input]], MAX_PIXELS)
        assert isinstance(reference, Segmentation)
        np.testing.assert_array_equal(mask, reference.mask, err_msg=line.input)
        live = http.post("/v1/segment", content=images[line.input],
                         headers={"content-type": "image/png" if line.input.endswith(".png")
                                  else "image/jpeg"})
        assert live.status_code == 200, live.text
        assert live.headers["x-model-version"] == "1/savedmodel"
        np.testing.assert_array_equal(mask, decode_mask(live.content), err_msg=line.input)
    assert f"{gcs_bucket}/masks/nested/pet00.png" in {x.output for x in lines}

    succeeded = sum(fleet.metric(w, 'maskfleet_worker_chunks_total{status="succeeded"}')
                    for w in fleet.workers)
    assert succeeded >= 7
    images_ok = sum(fleet.metric(w, 'maskfleet_worker_images_total{status="ok"}')
                    for w in fleet.workers)
    assert images_ok >= 50


def test_bad_images_are_counted_and_the_job_succeeds(
    http: httpx.Client, gcs_bucket: str,
) -> None:
    good = [put(f"{gcs_bucket}/in/good{i}.jpg", pet_image(100 + i)) for i in range(4)]
    huge = io.BytesIO()
    Image.new("RGB", (1100, 1000), (0, 90, 200)).save(huge, format="PNG")
    bad = {
        put(f"{gcs_bucket}/in/corrupt.jpg", b"\xff\xd8\xff not really"): "invalid_image",
        put(f"{gcs_bucket}/in/truncated.jpg", pet_image(110)[:200]): "invalid_image",
        put(f"{gcs_bucket}/in/oversized.png", huge.getvalue()): "too_many_pixels",
    }
    job = submit(http, input=[*good, *bad], output=f"{gcs_bucket}/out", chunk_size=3)
    done = wait_for(http, job["job_id"], "succeeded", "failed", "cancelled")
    assert done["state"] == "succeeded"
    assert done["totals"] == {"images": 7, "done": 7, "failed": 3}
    assert {e["input"]: e["code"] for e in done["errors"]} == bad
    lines = {x.input: x for x in manifest_of(done)}
    assert {uri: lines[uri].error.code for uri in bad} == bad
    assert all(lines[uri].output for uri in good)


def test_cancel_skips_the_chunks_that_have_not_started(
    fleet: Fleet, http: httpx.Client, gcs_bucket: str, store: JobStore, tmp_path: Path,
) -> None:
    images = [put(f"{gcs_bucket}/in/c{i:02d}.jpg", pet_image(200 + i)) for i in range(10)]
    held = [hold(fleet, f"{gcs_bucket}/in/held-{i}.png", pet_image(299, "PNG")) for i in (0, 1)]
    inputs = [held[0], *images[:3], held[1], *images[3:]]  # chunks 0 and 1 start held
    skipped_before = sum(fleet.metric(w, 'maskfleet_worker_chunks_total{status="skipped"}')
                         for w in fleet.workers)
    job = submit(http, input=inputs, output=f"{gcs_bucket}/out", chunk_size=4)
    job_id, chunks = job["job_id"], job["chunks"]["total"]
    assert chunks == 3
    wait_until(lambda: all(started_by(store, job_id, c) for c in (0, 1)), JOB_TIMEOUT,
               "both workers to be inside chunks 0 and 1")
    worker = fleet.workers[0]
    assert fleet.metric(worker, 'maskfleet_queue_length{queue="maskfleet"}') == 1
    assert fleet.metric(worker, f'maskfleet_job_images{{job_id="{job_id}",state="total"}}') == 12

    cancelled = http.delete(f"/v1/jobs/{job_id}")
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
    for uri in held:
        release(fleet, uri)
    fleet.ensure_workers(2)  # waits until every message was taken and acknowledged

    final = http.get(f"/v1/jobs/{job_id}").json()
    assert (final["state"], final["totals"]["done"], final["chunks"]["done"]) == (
        "cancelled", 0, 0)
    assert set(store.chunk_attempts(job_id)) == {0, 1}  # chunk 2 never started
    assert [u for u in storage_for(gcs_bucket).list(f"{gcs_bucket}/out/")
            if u.endswith(".png")] == []
    skipped_after = sum(fleet.metric(w, 'maskfleet_worker_chunks_total{status="skipped"}')
                        for w in fleet.workers)
    assert skipped_after - skipped_before >= chunks  # more if a slow ack caused a redelivery


def test_a_worker_killed_mid_chunk_loses_nothing(
    fleet: Fleet, http: httpx.Client, gcs_bucket: str, store: JobStore, tmp_path: Path,
) -> None:
    images = [put(f"{gcs_bucket}/in/k{i:02d}.png", pet_image(300 + i, "PNG")) for i in range(19)]
    held = hold(fleet, f"{gcs_bucket}/in/held.png", pet_image(399, "PNG"))
    inputs = [*images[:10], held, *images[10:]]  # chunk 2 = k08, k09, held, k10
    job = submit(http, input=inputs, output=f"{gcs_bucket}/out", chunk_size=4)
    job_id = job["job_id"]
    assert job["chunks"]["total"] == 5

    wait_until(lambda: started_by(store, job_id, 2) is not None, JOB_TIMEOUT,
               "a worker inside chunk 2")
    first = started_by(store, job_id, 2)
    [victim] = [w for w in fleet.workers if first and first.endswith(f":{fleet.worker_pid(w)}")]
    victim.stop(signal.SIGKILL)
    fleet.stale_unacked += 1
    assert victim.proc is not None
    assert victim.proc.returncode == -signal.SIGKILL

    wait_until(lambda: started_by(store, job_id, 2, attempt=2) is not None,
               LEASE_SECONDS + JOB_TIMEOUT, "chunk 2 to be redelivered")
    second = started_by(store, job_id, 2, attempt=2)
    assert second != first
    release(fleet, held)

    done = wait_for(http, job_id, "succeeded", "failed", "cancelled")
    assert done["state"] == "succeeded"
    assert done["totals"] == {"images": 20, "done": 20, "failed": 0}
    lines = manifest_of(done)
    assert [x.input for x in lines] == inputs  # every input exactly once, in order
    assert all(x.error is None and x.output for x in lines)
    assert store.chunk_attempts(job_id)[2][0] == 2
