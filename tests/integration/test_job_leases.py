"""Leases, fencing, the reaper and the plan file against a real Redis, chunks run in-process.

A "slow" worker is a chunk runner whose storage holds one image read until the test lets it
go (a gate), so the test decides when it is in the middle of a chunk, with no sleep. The
crash-and-restart behaviour with real worker processes is in test_durable_jobs.py.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from services.inference.app import create_app
from services.inference.settings import InferenceSettings
from services.jobs.chunk import ChunkOutcome, ChunkRunner
from services.jobs.leases import ChunkLeases
from services.jobs.manifest import PlanFile, decode, plan_uri
from services.jobs.reaper import INTERRUPTED, Reaper
from services.jobs.records import JobPlan, JobRequest, JobState, now
from services.jobs.service import JobService
from services.jobs.settings import JobSettings
from services.jobs.store import LEASES, JobStore, key, lease_member
from services.worker.models import ModelCache
from shared.redis import RedisEndpoint
from shared.repository import ModelRepository
from shared.storage import Storage, storage_for
from shared.storage.base import ReadCheck
from tests.servers import Server, running, start_redis, wait_until

pytestmark = pytest.mark.integration

REDIS_DB = 5


class Queue:
    def __init__(self) -> None:
        self.chunks: list[tuple[str, int]] = []

    def __call__(self, job_id: str, chunks: Any) -> None:
        self.chunks.extend((job_id, i) for i in chunks)


class Gate:
    """Storage whose first read of `uri` waits until `open()`: a worker stuck mid-chunk."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.reached = threading.Event()
        self._open = threading.Event()
        self._passed = False

    def open(self) -> None:
        self._open.set()

    def __call__(self, uri: str) -> Storage:
        real = storage_for(uri)
        gate = self

        class Gated:
            def read_checked(self, target: str, max_bytes: int,
                             check: ReadCheck | None = None) -> bytes:
                if target == gate.uri and not gate._passed:
                    gate._passed = True
                    gate.reached.set()
                    gate._open.wait(120)
                return real.read_checked(target, max_bytes, check)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        return Gated()  # type: ignore[return-value]


def images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    uris = []
    for i in range(count):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(out, "PNG")
        (folder / f"i{i}.png").write_bytes(out.getvalue())
        uris.append(str(folder / f"i{i}.png"))
    return uris


@pytest.fixture
def client(redis_server: Server) -> redis.Redis:
    found = RedisEndpoint.build(
        "state", f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}").client(
        decode_responses=True)
    found.flushdb()
    return found


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client)


@pytest.fixture
def queue() -> Queue:
    return Queue()


@pytest.fixture
def service(store: JobStore, tiny_model_repo: Path, queue: Queue, tmp_path: Path) -> JobService:
    allowed = (str(tmp_path), "/data/pets")
    return JobService(store, ModelRepository(str(tiny_model_repo)), queue,
                      JobSettings(model_repository=str(tiny_model_repo),
                                  job_input_prefixes=allowed, job_output_prefixes=allowed))


@pytest.fixture(scope="module")
def models(tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return ModelCache(ModelRepository(str(tiny_model_repo)), tmp_path_factory.mktemp("lease"))


def runner(service: JobService, models: ModelCache, **options: Any) -> ChunkRunner:
    """A worker's chunk runner under the storage rules `service` accepted the job with."""
    return ChunkRunner(service.store, models, service.policy, batch_size=2, io_threads=2,
                       **options)


def in_thread(run: ChunkRunner, job_id: str, chunk: int) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(run.run(job_id, chunk)))
    thread.start()
    return thread, outcome


def deadline_ms(client: redis.Redis, job_id: str, chunk: int) -> float:
    return float(client.zscore(LEASES, lease_member(job_id, chunk)) or 0)


def test_a_slow_but_alive_worker_keeps_its_chunk(
    service: JobService, store: JobStore, client: redis.Redis, models: ModelCache,
    queue: Queue, tmp_path: Path,
) -> None:
    uris = images(tmp_path / "in", 3)
    job = service.submit(JobRequest(input=uris, output=str(tmp_path / "out")))
    gate = Gate(uris[1])
    slow = runner(service, models, storage=gate, lease_seconds=2, heartbeat_seconds=0.2)
    thread, outcome = in_thread(slow, job.job_id, 0)
    assert gate.reached.wait(60)
    first = deadline_ms(client, job.job_id, 0)
    # Its heartbeat carries the lease well past three lease lengths.
    wait_until(lambda: deadline_ms(client, job.job_id, 0) > first + 6000, 60,
               "the heartbeat to renew the lease")
    reaper = Reaper(store, ChunkLeases(client, lease_seconds=2), queue,
                    submit_grace_seconds=60)
    assert reaper.reap_once() == ([], [])
    other = runner(service, models).run(job.job_id, 0)
    assert other.status == "skipped"  # never run twice at once
    gate.open()
    thread.join(60)
    [done] = outcome
    assert (done.status, done.images) == ("succeeded", 3)
    final = service.status(job.job_id)
    assert (final.state, final.totals.done) == (JobState.SUCCEEDED, 3)
    assert store.chunk_attempts(job.job_id)[0][0] == 1


def test_an_expired_lease_is_requeued_and_the_late_holder_does_not_count(
    service: JobService, store: JobStore, client: redis.Redis, models: ModelCache,
    queue: Queue, tmp_path: Path,
) -> None:
    uris = images(tmp_path / "in", 3)
    job = service.submit(JobRequest(input=uris, output=str(tmp_path / "out")))
    queue.chunks.clear()
    gate = Gate(uris[1])
    # A holder that stops beating (a stalled process): its lease lapses after 1 s.
    silent = runner(service, models, storage=gate, lease_seconds=1, heartbeat_seconds=3600)
    thread, outcome = in_thread(silent, job.job_id, 0)
    assert gate.reached.wait(60)
    reaper = Reaper(store, ChunkLeases(client, lease_seconds=1), queue,
                    submit_grace_seconds=60)
    found: list[Any] = []
    wait_until(lambda: bool(found.extend(reaper.reap_once()[0]) or found), 30,
               "the reaper to take the chunk back")
    assert [(r.job_id, r.chunk, r.crashed) for r in found] == [(job.job_id, 0, True)]
    assert queue.chunks == [(job.job_id, 0)]

    replacement = runner(service, models).run(job.job_id, 0)
    assert (replacement.status, replacement.attempt) == ("succeeded", 2)
    gate.open()
    thread.join(60)
    [late] = outcome
    assert isinstance(late, ChunkOutcome)
    assert late.status == "superseded"
    final = service.status(job.job_id)
    assert (final.state, final.totals.done, final.chunks.done) == (JobState.SUCCEEDED, 3, 1)
    lines = decode(storage_for(final.manifest or "").read(final.manifest or ""))
    assert [x.input for x in lines] == uris


def test_crashed_runs_become_worker_crashed_errors_after_max_attempts(
    service: JobService, store: JobStore, client: redis.Redis, models: ModelCache,
    queue: Queue, tmp_path: Path,
) -> None:
    uris = images(tmp_path / "in", 4)
    job = service.submit(JobRequest(input=uris, output=str(tmp_path / "out")))
    leases = ChunkLeases(client, lease_seconds=1)
    reaper = Reaper(store, leases, queue, submit_grace_seconds=60)
    dead: list[tuple[Gate, threading.Thread]] = []
    for crash in range(2):  # two runs die on the third image (they hang, silent, instead)
        gate = Gate(uris[2])
        dying = runner(service, models, storage=gate, lease_seconds=1, heartbeat_seconds=3600,
                       max_attempts=2)
        thread = threading.Thread(target=dying.run, args=(job.job_id, 0), daemon=True)
        thread.start()
        dead.append((gate, thread))
        assert gate.reached.wait(60)
        wait_until(lambda: bool(reaper.reap_once()[0]), 30, f"crash {crash + 1} to be seen")
    assert client.hget(key(job.job_id, "crashes"), "0") == "2"
    last = runner(service, models, max_attempts=2).run(job.job_id, 0)
    assert last.status == "succeeded"
    final = service.status(job.job_id)
    assert final.state is JobState.SUCCEEDED
    # The second run segmented one image at a time: the first two were kept as progress.
    assert final.totals.model_dump() == {"images": 4, "done": 4, "failed": 2}
    assert [(e.input, e.code) for e in final.errors] == [
        (uris[2], "worker_crashed"), (uris[3], "worker_crashed")]
    lines = decode(storage_for(final.manifest or "").read(final.manifest or ""))
    assert [x.input for x in lines] == uris
    assert [x.output is not None for x in lines] == [True, True, False, False]
    for gate, thread in dead:  # the hung runs wake up to a chunk recorded by someone else
        gate.open()
        thread.join(60)
    assert service.status(job.job_id).totals.done == 4


def test_the_reaper_fails_an_interrupted_submission_and_frees_its_output(
    service: JobService, store: JobStore, client: redis.Redis, queue: Queue, tmp_path: Path,
) -> None:
    uris = images(tmp_path / "in", 2)
    output = str(tmp_path / "out")
    # What a submission leaves when Redis or the queue fails after the record was made.
    cut = JobPlan.model_validate({
        **service.submit(JobRequest(input=uris, output=str(tmp_path / "elsewhere")))
        .model_dump(include={"input", "model", "chunk_size"}),
        "id": "c" * 32, "output": output, "base": None, "chunks": 1, "images": 2,
        "created_at": now() - timedelta(seconds=120)})
    store.create(cut)
    fresh = JobPlan.model_validate({**cut.model_dump(), "id": "d" * 32,
                                    "output": output + "-2", "created_at": now()})
    store.create(fresh)
    assert client.get(f"maskfleet:output:{output}") == cut.id
    reaper = Reaper(store, ChunkLeases(client, lease_seconds=30), queue,
                    submit_grace_seconds=60)
    assert reaper.reap_once() == ([], [cut.id])
    failed = service.status(cut.id)
    assert (failed.state, failed.error) == (JobState.FAILED, INTERRUPTED)
    assert client.get(f"maskfleet:output:{output}") is None
    assert service.status(fresh.id).state is JobState.QUEUED  # still within its grace
    assert service.submit(JobRequest(input=uris, output=output)).state is JobState.QUEUED


def test_a_large_input_list_lives_in_the_plan_file_not_in_redis(
    service: JobService, client: redis.Redis, tmp_path: Path,
) -> None:
    uris = [f"/data/pets/{i:06d}.jpg" for i in range(20_000)]  # listed, never read
    job = service.submit(JobRequest(input=uris, output=str(tmp_path / "out"),
                                    chunk_size=500))
    used = sum(int(client.memory_usage(name) or 0)
               for name in client.scan_iter(f"maskfleet:job:{job.job_id}*"))
    assert used < 4096
    uri = plan_uri(str(tmp_path / "out"))
    plan = PlanFile.model_validate_json(storage_for(uri).read(uri))
    assert (plan.plan.id, plan.inputs) == (job.job_id, uris)


def fill(db: redis.Redis) -> int:
    """Write 64 KiB values until Redis refuses (noeviction); returns how many it kept."""
    written = 0
    while True:
        try:
            db.set(f"kept-answer-{written}", b"x" * 65536)
        except redis.exceptions.OutOfMemoryError:
            return written
        written += 1


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[Server]:
    with running(start_redis(log=tmp_path / "full.log", options=[
            "--maxmemory", "4mb", "--maxmemory-policy", "noeviction"])) as server:
        yield server


def test_a_full_state_redis_refuses_submissions_plainly_and_evicts_nothing(
    full_redis: Server, tiny_model_repo: Path, tmp_path: Path,
) -> None:
    url = f"redis://127.0.0.1:{full_redis.port}/0"
    db = redis.Redis.from_url(url)
    written = fill(db)
    settings = InferenceSettings(model_repository=str(tiny_model_repo), state_redis_url=url,
                                 cache_redis_url=url, cache_dir=str(tmp_path / "cache"),
                                 job_input_prefixes=(str(tmp_path),),
                                 job_output_prefixes=(str(tmp_path),))
    api = TestClient(create_app(settings), raise_server_exceptions=False)
    uris = images(tmp_path / "in", 2)
    answer = api.post("/v1/jobs", json={"input": uris, "output": str(tmp_path / "out")})
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert body["code"] == "jobs_unavailable"
    assert body["detail"].startswith("the job store is full")
    for leak in ("maskfleet:job", "maskfleet:output", "maskfleet:jobs", "maxmemory", "OOM",
                 "script"):
        assert leak not in answer.text
    assert len(db.keys("kept-answer-*")) == written  # nothing evicted
    assert not db.keys("maskfleet:job*")  # nothing half-made: no record,
    assert not db.keys("maskfleet:output:*")  # no output lock
