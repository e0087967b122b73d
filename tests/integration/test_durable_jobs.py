"""Durable jobs with real components: the state Redis (AOF `everysec`, `requirepass`), the API
as a uvicorn process and the only Celery worker, started as deployed with one fixed node name,
so a replacement has the same hostname as the worker it replaces (as a restarted container).

A job holds a worker inside a chunk by naming one of its images on a GCS emulator of its own
(`held`), which the test stops (SIGSTOP) while it wants the chunk held: once the chunk's lease
is taken, the worker cannot finish it until the emulator runs again. (A local FIFO used to
serve, but the worker now refuses anything that is not a regular file.) The "poison" image is
such a held image whose worker the test SIGKILLs every time, as the kernel's OOM killer would.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from google.cloud import storage as gcs
from PIL import Image
from pydantic import SecretStr

from services.jobs.manifest import decode
from services.jobs.store import JobStore, key
from shared.redis import RedisEndpoint
from shared.storage import storage_for
from tests.integration.test_inference_support import start_api, url
from tests.servers import (
    REPO,
    Server,
    free_port,
    port_open,
    start_gcs_emulator,
    start_redis,
    wait_until,
)

pytestmark = pytest.mark.integration

PASSWORD = "durable-7c1e"
CELERY = str(Path(sys.executable).with_name("celery"))
NODE = "durable@%h"
JOB_TIMEOUT = 180.0
REQUEUE_WITHIN = 60.0
HELD_BUCKET = "held-images"


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@dataclass
class Stack:
    redis: Server
    aof: Path
    api: Server
    logs: Path
    repo: Path
    held: Server
    inputs: str
    """Where jobs may read, for the API and the worker alike."""
    worker: Server | None = None

    @property
    def state_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def store(self) -> JobStore:
        endpoint = RedisEndpoint.build("state", self.state_url, SecretStr(PASSWORD))
        return JobStore(endpoint.client(decode_responses=True))

    def worker_env(self, **settings: object) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.held.port}",
                "MASKFLEET_STATE_REDIS_URL": self.state_url,
                "MASKFLEET_STATE_REDIS_PASSWORD": PASSWORD,
                "MASKFLEET_MODEL_REPOSITORY": str(self.repo),
                "MASKFLEET_CACHE_DIR": str(self.logs / "worker-cache"),
                "MASKFLEET_JOB_INPUT_PREFIXES": self.inputs,
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **{f"MASKFLEET_{k.upper()}": str(v) for k, v in settings.items()}}

    def start_worker(self, **settings: object) -> Server:
        """The only worker, always with the same node name and hostname."""
        port = free_port()
        env = self.worker_env(worker_metrics_port=port, **settings)
        worker = Server([CELERY, "-A", "services.worker.app", "worker", "--pool=solo",
                         "--concurrency=1", "-Q", "maskfleet", "--without-mingle",
                         "--without-gossip", "--loglevel=INFO", "-n", NODE], port,
                        log=self.logs / "worker.log", env=env)
        self.worker = worker.start(timeout=120)
        return self.worker

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.stop(signal.SIGKILL)
        assert self.worker.proc is not None
        assert self.worker.proc.returncode == -signal.SIGKILL

    def hold_image(self, name: str, data: bytes) -> str:
        """An image on the `held` emulator; its reads wait while `holding()`."""
        with _emulator(self.held):
            bucket = gcs.Client().bucket(HELD_BUCKET)
            if not bucket.exists():
                bucket.create()
            bucket.blob(name).upload_from_string(data, content_type="image/png")
        return f"gs://{HELD_BUCKET}/{name}"

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Every read of a held image waits until the block ends."""
        assert self.held.proc is not None
        self.held.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.held.proc.send_signal(signal.SIGCONT)

    def restart_redis(self) -> None:
        self.redis = start_redis(self.redis.port, self.logs / "redis.log", password=PASSWORD,
                                 aof_dir=self.aof)


@pytest.fixture(scope="module")
def stack(tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("durable")
    aof = logs / "aof"
    server = start_redis(log=logs / "redis.log", password=PASSWORD, aof_dir=aof)
    base = f"redis://127.0.0.1:{server.port}/0"
    inputs = f"{logs.parent},gs://{HELD_BUCKET}"
    api = start_api(tiny_model_repo, logs, base, state_redis_password=PASSWORD,
                    cache_redis_password=PASSWORD, cache_enabled="false",
                    stage_poll_seconds=0, job_input_prefixes=inputs)
    held = start_gcs_emulator(log=logs / "held-gcs.log")
    found = Stack(server, aof, api, logs, tiny_model_repo, held, inputs)
    try:
        yield found
    finally:
        for process in (found.worker, api, found.redis, held):
            if process is not None:
                process.stop()


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url(stack.api), timeout=30) as client:
        yield client


def images(folder: Path, count: int, seed: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        path.write_bytes(png(seed + i))
        uris.append(str(path))
    return uris


@contextlib.contextmanager
def _emulator(server: Server) -> Iterator[None]:
    """The google client of this process pointed at `server` for a moment."""
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{server.port}"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def progress_saved(store: JobStore, job_id: str) -> int:
    """Images whose manifest lines a crashed chunk's rerun saved one by one (`leases.py`)."""
    return int(store.redis.hlen(key(job_id, "progress")))


def submit(http: httpx.Client, inputs: list[str], output: Path, chunk_size: int) -> str:
    answer = http.post("/v1/jobs", json={"input": inputs, "output": str(output),
                                         "chunk_size": chunk_size})
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


def finished(http: httpx.Client, job_id: str) -> dict[str, Any]:
    def done() -> bool:
        reply = http.get(f"/v1/jobs/{job_id}")
        return reply.status_code == 200 and reply.json()["state"] in (
            "succeeded", "failed", "cancelled")

    wait_until(done, JOB_TIMEOUT, f"job {job_id} to finish")
    job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
    return job


def manifest_inputs(job: dict[str, Any]) -> list[Any]:
    return decode(storage_for(job["manifest"]).read(job["manifest"]))


def started(store: JobStore, job_id: str, chunk: int, attempt: int = 1) -> bool:
    found = store.chunk_attempts(job_id).get(chunk)
    return bool(found and found[0] >= attempt)


def test_a_killed_worker_is_replaced_by_one_with_the_same_hostname_and_the_job_completes(
    stack: Stack, http: httpx.Client, tmp_path: Path,
) -> None:
    stack.start_worker()  # default lease (30 s) and heartbeat (5 s)
    store = stack.store()
    plain = images(tmp_path / "in", 11, 100)
    held = stack.hold_image(f"{tmp_path.name}-held.png", png(999))
    inputs = [*plain[:5], held, *plain[5:]]  # chunk 1 = img04, held, img05, img06
    with stack.holding():
        job_id = submit(http, inputs, tmp_path / "out", chunk_size=4)
        wait_until(lambda: started(store, job_id, 1), JOB_TIMEOUT, "the worker in chunk 1")
        stack.kill_worker()  # it cannot have finished chunk 1: its held image is unread
        killed = time.monotonic()
        stack.start_worker()

        def requeued() -> bool:
            return store.redis.hget(key(job_id, "crashes"), "1") == "1"

        wait_until(requeued, max(1.0, REQUEUE_WITHIN - (time.monotonic() - killed)),
                   "chunk 1 to be requeued within 60 s of its worker's death")
        wait_until(lambda: started(store, job_id, 1, attempt=2), JOB_TIMEOUT,
                   "the replacement in chunk 1")
    job = finished(http, job_id)
    assert job["state"] == "succeeded", job
    assert job["totals"] == {"images": 12, "done": 12, "failed": 0}
    lines = manifest_inputs(job)
    assert [x.input for x in lines] == inputs  # each input exactly once, in order
    assert all(x.output and x.error is None for x in lines)
    assert store.chunk_attempts(job_id)[1][0] == 2


def test_the_state_redis_killed_mid_job_restarts_from_its_aof_and_loses_nothing(
    stack: Stack, http: httpx.Client, tmp_path: Path,
) -> None:
    if stack.worker is None or stack.worker.proc is None or stack.worker.proc.poll() is not None:
        stack.start_worker()
    store = stack.store()
    plain = images(tmp_path / "in", 7, 200)
    held = stack.hold_image(f"{tmp_path.name}-held.png", png(998))
    inputs = [*plain[:3], held, *plain[3:]]  # chunk 1 = held, img03, img04
    with stack.holding():
        job_id = submit(http, inputs, tmp_path / "out", chunk_size=3)
        wait_until(lambda: started(store, job_id, 1), JOB_TIMEOUT, "the worker in chunk 1")
        stack.redis.stop(signal.SIGKILL)
        wait_until(lambda: not port_open(stack.redis.port), 30, "Redis to be gone")
        stack.restart_redis()
        assert store.redis.hget(key(job_id), "state") == "running"  # read back from the AOF
    job = finished(http, job_id)
    assert job["state"] == "succeeded", job
    assert job["totals"] == {"images": 8, "done": 8, "failed": 0}
    assert [x.input for x in manifest_inputs(job)] == inputs


def test_an_image_that_kills_its_worker_every_time_becomes_a_per_item_error(
    stack: Stack, http: httpx.Client, tmp_path: Path,
) -> None:
    fast = {"job_lease_seconds": 4, "job_heartbeat_seconds": 1, "job_max_attempts": 2}
    if stack.worker is not None:
        stack.worker.stop()
    stack.start_worker(**fast)
    store = stack.store()
    plain = images(tmp_path / "in", 5, 300)
    poison = stack.hold_image(f"{tmp_path.name}-poison.png", png(997))
    inputs = [*plain[:2], poison, *plain[2:]]  # chunk 0 = img00, img01, poison
    with stack.holding():  # every worker that reaches the poison dies there
        job_id = submit(http, inputs, tmp_path / "out", chunk_size=3)
        wait_until(lambda: started(store, job_id, 0), JOB_TIMEOUT, "the first worker in chunk 0")
        stack.kill_worker()
        stack.start_worker(**fast)
        # after a crash the chunk runs one image at a time, each saved: the poison is the third
        wait_until(lambda: started(store, job_id, 0, attempt=2)
                   and progress_saved(store, job_id) == 2, JOB_TIMEOUT,
                   "the second worker at the poison")
        stack.kill_worker()
        stack.start_worker(**fast)
        job = finished(http, job_id)  # the poison is never read again: its read would wait
    assert job["state"] == "succeeded", job
    assert job["totals"] == {"images": 6, "done": 6, "failed": 1}
    assert [(e["input"], e["code"]) for e in job["errors"]] == [(poison, "worker_crashed")]
    lines = manifest_inputs(job)
    assert [x.input for x in lines] == inputs
    assert [x.output is not None for x in lines] == [True, True, False, True, True, True]


def test_a_submission_while_the_state_redis_is_down_is_a_503_that_leaves_nothing(
    stack: Stack, http: httpx.Client, tmp_path: Path,
) -> None:
    inputs = images(tmp_path / "in", 2, 400)
    output = tmp_path / "out"
    store = stack.store()
    jobs_before = len(list(store.redis.scan_iter("maskfleet:job:*")))
    stack.redis.stop(signal.SIGKILL)
    wait_until(lambda: not port_open(stack.redis.port), 30, "Redis to be gone")
    try:
        answer = http.post("/v1/jobs", json={"input": inputs, "output": str(output)})
    finally:
        stack.restart_redis()
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == "the job store is unreachable; try again later"
    assert "maskfleet:" not in answer.json()["detail"]
    assert store.redis.get(f"maskfleet:output:{output}") is None  # no orphaned lock
    assert len(list(store.redis.scan_iter("maskfleet:job:*"))) == jobs_before  # no record
    job_id = submit(http, inputs, output, chunk_size=2)  # the output is free
    assert finished(http, job_id)["state"] == "succeeded"


TAKE_AND_DIE = """
import os, signal, sys
from pydantic import SecretStr
from services.jobs.broker import QUEUE, make_celery
from shared.redis import RedisEndpoint
app = make_celery(RedisEndpoint.build("state", sys.argv[1], SecretStr(sys.argv[2])))
with app.connection_for_write() as connection:
    taken = connection.default_channel.basic_get(QUEUE, no_ack=False)  # as a consumer takes one
    assert taken is not None, "no chunk message to take"
    os.kill(os.getpid(), signal.SIGKILL)  # before any lease: the chunk was never started
"""


def test_a_worker_killed_after_taking_a_chunk_but_before_leasing_it_costs_seconds(
    stack: Stack, http: httpx.Client, tmp_path: Path,
) -> None:
    """The window between taking a message and leasing its chunk is milliseconds wide, but a
    kill landing in it left no lease to expire: only the transport's visibility timeout (an
    hour) handed the message on. The reaper now puts it back after one lease time."""
    if stack.worker is not None:  # nobody may consume the message before the dying worker
        stack.worker.stop()
        stack.worker = None
    store = stack.store()
    inputs = images(tmp_path / "in", 3, 500)
    job_id = submit(http, inputs, tmp_path / "out", chunk_size=3)
    taker = subprocess.run([sys.executable, "-c", TAKE_AND_DIE, stack.state_url, PASSWORD],
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
                           capture_output=True, text=True)
    assert taker.returncode == -signal.SIGKILL, taker.stderr
    held = [json.loads(raw)[0]["headers"]["id"] for raw in store.redis.hvals("unacked")]
    queued = [json.loads(raw)["headers"]["id"] for raw in store.redis.lrange("maskfleet", 0, -1)]
    assert f"{job_id}-0" in held  # held for a dead consumer (earlier tests' backstops too)
    assert f"{job_id}-0" not in queued
    assert not started(store, job_id, 0)
    stack.start_worker(job_lease_seconds=3, job_heartbeat_seconds=1)
    job = finished(http, job_id)  # within JOB_TIMEOUT, far below the 3600 s visibility timeout
    assert job["state"] == "succeeded", job
    assert job["totals"] == {"images": 3, "done": 3, "failed": 0}
    assert [x.input for x in manifest_inputs(job)] == inputs
    assert store.chunk_attempts(job_id)[0][0] == 1  # started once: a restore, not a crash


RECORD_AND_DIE = """
import os, signal, sys
from services.jobs.broker import QUEUE, make_celery
from services.jobs.chunk import ChunkRunner
from services.worker.runtime import WorkerRuntime
from services.worker.settings import WorkerSettings
runtime = WorkerRuntime(WorkerSettings())
app = make_celery(runtime.settings.state_redis())
with app.connection_for_write() as connection:
    taken = connection.default_channel.basic_get(QUEUE, no_ack=False)  # as a consumer takes one
    assert taken is not None, "no chunk message to take"
    # the worker's own chunk run, killed where it would write the job's manifest
    ChunkRunner._finish_if_complete = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    runtime.runner.run(sys.argv[1], 0)
"""


def test_a_worker_killed_after_recording_the_last_chunk_costs_seconds(
    stack: Stack, http: httpx.Client, tmp_path: Path,
) -> None:
    """A worker that recorded a job's last chunk and died before writing the job's manifest
    left the job running with every chunk done, and its output locked: no lease was left to
    expire, and only the transport's visibility timeout (an hour) handed the message on. The
    reaper now puts that message back after one lease time; its redelivery finishes the job."""
    if stack.worker is not None:  # nobody may consume the message before the dying worker
        stack.worker.stop()
        stack.worker = None
    store = stack.store()
    inputs = images(tmp_path / "in", 3, 700)
    output = tmp_path / "out"
    job_id = submit(http, inputs, output, chunk_size=3)
    dying = subprocess.run([sys.executable, "-c", RECORD_AND_DIE, job_id],
                           env={**os.environ, **stack.worker_env(), "PYTHONPATH": str(REPO)},
                           timeout=180, capture_output=True, text=True)
    assert dying.returncode == -signal.SIGKILL, dying.stderr
    assert store.chunks_done(job_id) == 1  # recorded ...
    assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "running"  # ... and never finished
    stack.start_worker(job_lease_seconds=3, job_heartbeat_seconds=1)
    job = finished(http, job_id)  # within JOB_TIMEOUT, far below the 3600 s visibility timeout
    assert job["state"] == "succeeded", job
    assert job["totals"] == {"images": 3, "done": 3, "failed": 0}
    assert [x.input for x in manifest_inputs(job)] == inputs
    assert store.chunk_attempts(job_id)[0][0] == 1  # run once: the redelivery only finished it
    assert store.redis.get(f"maskfleet:output:{output}") is None  # the output is free again
