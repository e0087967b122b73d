"""A hostile caller's local job folders, against a real Redis, the GCS emulator, the real app
and the chunk runner exactly as a worker process builds it (`WorkerRuntime.runner`).

The caller owns the input and output folders and changes them after submission: symlinks to
files outside, folders swapped for links, an edited plan file or manifest, a folder flipping
between a real folder and a link while masks are written, a FIFO, a sparse giant. Each costs
that item (or, for the job's own manifests, the job) a clear error; nothing is read from or
written to anywhere else, nothing hangs, and memory stays near the per-image limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from services.inference.app import create_app
from services.inference.settings import InferenceSettings
from services.jobs.chunk import ChunkRunner
from services.jobs.manifest import ManifestLine, decode, encode, plan_uri
from services.jobs.records import JobRequest, JobState, JobStatus
from services.jobs.service import JobService
from services.jobs.store import JobStore
from services.worker.runtime import WorkerRuntime
from services.worker.settings import WorkerSettings
from shared.errors import MaskfleetError, OutsideFolder
from shared.repository import ModelRepository
from shared.storage import GcsStorage, storage_for
from tests.integration.test_worker_jobs import RecordedQueue, pet_image, put

pytestmark = pytest.mark.integration

REDIS_DB = 13
MAX_IMAGE_BYTES = 150_000
PRIVATE = pet_image(99)


@pytest.fixture(scope="module")
def model_repo(tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("file-confinement-models") / "repo"
    shutil.copytree(tiny_model_repo, root)
    return ModelRepository(str(root))


@pytest.fixture
def redis_url(redis_server) -> str:  # type: ignore[no-untyped-def]
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """`in/` and `out/` are the caller's (allowed); `secret/` is not."""
    for name in ("in", "out", "secret", "outside"):
        (tmp_path / name).mkdir()
    (tmp_path / "secret" / "private.jpg").write_bytes(PRIVATE)
    return tmp_path


@pytest.fixture
def settings(model_repo: ModelRepository, redis_url: str, area: Path,
             gcs_bucket: str) -> WorkerSettings:
    allowed = (str(area / "in"), f"{gcs_bucket}/in")
    return WorkerSettings(
        model_repository=model_repo.root, state_redis_url=redis_url,
        cache_dir=str(area / "cache"), max_image_bytes=MAX_IMAGE_BYTES, model_batch_size=4,
        job_input_prefixes=allowed, job_output_prefixes=(str(area / "out"), f"{gcs_bucket}/out"),
        worker_metrics_port=0)


@pytest.fixture
def queue() -> RecordedQueue:
    return RecordedQueue()


@pytest.fixture
def service(settings: WorkerSettings, model_repo: ModelRepository,
            queue: RecordedQueue) -> JobService:
    return JobService(JobStore.from_settings(settings), model_repo, queue, settings)


@pytest.fixture
def runner(settings: WorkerSettings) -> ChunkRunner:
    """The runner a worker process runs chunks with, built from its settings."""
    return WorkerRuntime(settings).runner


@pytest.fixture
def api(settings: WorkerSettings, area: Path) -> Iterator[TestClient]:
    app_settings = InferenceSettings(
        model_repository=settings.model_repository, state_redis_url=settings.state_redis_url,
        cache_redis_url=settings.state_redis_url, cache_dir=str(area / "api-cache"),
        redis_connect_timeout_ms=1000, job_input_prefixes=settings.job_input_prefixes,
        job_output_prefixes=settings.job_output_prefixes)
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        yield client


def run_all(runner: ChunkRunner, queue: RecordedQueue) -> None:
    for job_id, index in queue.chunks:
        runner.run(job_id, index)


def images(folder: Path, names: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(pet_image(500 + i))
    return [str(folder / name) for name in names]


def lines_of(status: JobStatus) -> dict[str, ManifestLine]:
    assert status.manifest is not None
    return {x.input: x for x in decode(Path(status.manifest).read_bytes())}


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_a_symlink_in_the_input_folder_is_neither_segmented_nor_served(
        area: Path, service: JobService, runner: ChunkRunner, queue: RecordedQueue,
        api: TestClient) -> None:
    [good] = images(area / "in", ["good.jpg"])
    (area / "in" / "leak.jpg").symlink_to("../secret/private.jpg")
    job = service.submit(JobRequest(input=str(area / "in"), output=str(area / "out")))
    run_all(runner, queue)

    final = service.status(job.job_id)
    assert (final.state, final.totals.done, final.totals.failed) == (JobState.SUCCEEDED, 2, 1)
    lines = lines_of(final)
    leak = lines[str(area / "in" / "leak.jpg")]
    assert (leak.output, leak.error.code if leak.error else None) == (None, "input_not_allowed")
    assert not (area / "out" / "leak.png").exists()
    assert lines[good].error is None

    order = list(lines)
    answer = api.get(f"/v1/jobs/{job.job_id}/items/{order.index(leak.input)}/input")
    assert (answer.status_code, answer.json()["code"]) == (403, "input_not_allowed")
    assert PRIVATE not in answer.content
    served = api.get(f"/v1/jobs/{job.job_id}/items/{order.index(good)}/input")
    assert (served.status_code, served.content) == (200, Path(good).read_bytes())
    assert served.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in served.headers["content-security-policy"]


def test_an_input_folder_swapped_for_a_link_after_submission_is_not_followed(
        area: Path, service: JobService, runner: ChunkRunner, queue: RecordedQueue) -> None:
    images(area / "in" / "batch", ["a.jpg", "b.jpg"])
    job = service.submit(JobRequest(input=str(area / "in" / "batch"), output=str(area / "out")))
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(area / "secret" / "private.jpg", area / "secret" / name)
    (area / "in" / "batch").rename(area / "in" / "batch.orig")
    (area / "in" / "batch").symlink_to(area / "secret")
    run_all(runner, queue)

    final = service.status(job.job_id)
    assert final.state is JobState.SUCCEEDED
    assert [e.code for e in final.errors] == ["input_not_allowed"] * 2
    assert [p.name for p in files_under(area / "out") if p.suffix == ".png"] == []


def test_an_edited_plan_file_cannot_name_files_outside_the_inputs(
        area: Path, service: JobService, runner: ChunkRunner, queue: RecordedQueue) -> None:
    a, b = images(area / "in", ["a.jpg", "b.jpg"])
    job = service.submit(JobRequest(input=[a, b], output=str(area / "out")))
    plan = Path(plan_uri(str(area / "out")))
    edited = json.loads(plan.read_text())
    secret = str(area / "secret" / "private.jpg")
    edited["inputs"][1] = secret
    plan.write_text(json.dumps(edited))
    run_all(runner, queue)

    final = service.status(job.job_id)
    assert final.state is JobState.SUCCEEDED
    lines = lines_of(final)
    assert lines[a].error is None
    refused = lines[secret]
    assert (refused.output, refused.error.code if refused.error else None) == (
        None, "input_not_allowed")
    assert not (area / "out" / "private.png").exists()


def test_an_edited_manifest_cannot_make_the_api_serve_other_files(
        area: Path, service: JobService, runner: ChunkRunner, queue: RecordedQueue,
        api: TestClient) -> None:
    a, b = images(area / "in", ["a.jpg", "b.jpg"])
    job = service.submit(JobRequest(input=[a, b], output=str(area / "out")))
    run_all(runner, queue)
    final = service.status(job.job_id)
    assert final.manifest is not None
    lines = decode(Path(final.manifest).read_bytes())
    lines[1].input = str(area / "secret" / "private.jpg")
    Path(final.manifest).write_bytes(encode(lines))

    answer = api.get(f"/v1/jobs/{job.job_id}/items/1/input")
    assert (answer.status_code, answer.json()["code"]) == (403, "input_not_allowed")
    assert PRIVATE not in answer.content


def test_an_output_swapped_for_a_link_mid_job_gets_nothing_written_through_it(
        area: Path, service: JobService, runner: ChunkRunner, queue: RecordedQueue) -> None:
    images(area / "in", [f"p{i}.jpg" for i in range(4)])
    job = service.submit(JobRequest(input=str(area / "in"), output=str(area / "out"),
                                    chunk_size=2))
    assert runner.run(job.job_id, 0).status == "succeeded"
    # the caller moves the output away and links it to a folder the worker may not write
    shutil.copytree(area / "out", area / "outside", dirs_exist_ok=True)
    before = files_under(area / "outside")
    (area / "out").rename(area / "out.orig")
    (area / "out").symlink_to(area / "outside")

    with pytest.raises(OutsideFolder):  # the chunk manifest: the chunk fails, not quietly
        runner.run(job.job_id, 1)
    assert files_under(area / "outside") == before


def test_a_manifests_folder_swapped_for_a_link_fails_the_chunk_and_writes_nothing(
        area: Path, service: JobService, runner: ChunkRunner, queue: RecordedQueue) -> None:
    images(area / "in", ["a.jpg", "b.jpg"])
    job = service.submit(JobRequest(input=str(area / "in"), output=str(area / "out")))
    manifests = area / "out" / "_manifests"
    shutil.copytree(manifests, area / "outside" / "_manifests")
    shutil.rmtree(manifests)
    manifests.symlink_to(area / "outside" / "_manifests")

    with pytest.raises(MaskfleetError) as failed:
        runner.run(job.job_id, 0)
    assert failed.value.status < 500  # not retried: the task fails the job with the reason
    assert [p.name for p in files_under(area / "outside")] == ["job.json"]


def test_a_mask_folder_flipping_to_a_link_never_lets_a_mask_out(
        area: Path, service: JobService, runner: ChunkRunner, queue: RecordedQueue) -> None:
    """The check and the write used to be two steps: flipped fast enough, masks landed in
    the link's target. Now each mask is written through the descriptors it was checked on."""
    images(area / "in" / "sub", [f"p{i:02d}.jpg" for i in range(48)])
    job = service.submit(JobRequest(input=str(area / "in"), output=str(area / "out"),
                                    chunk_size=48))
    sub, real = area / "out" / "sub", area / "out" / "sub.real"
    sub.mkdir()
    stop = threading.Event()
    flips = 0

    def flip() -> None:
        nonlocal flips
        while not stop.is_set():
            for step in (lambda: sub.rename(real), lambda: sub.symlink_to(area / "outside"),
                         lambda: sub.unlink(), lambda: real.rename(sub)):
                with contextlib.suppress(OSError):  # the worker made the folder meanwhile
                    step()
            flips += 1

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        outcome = runner.run(job.job_id, 0)
    finally:
        stop.set()
        flipper.join(60)
    assert flips > 0
    assert outcome.status == "succeeded"
    assert files_under(area / "outside") == []
    final = service.status(job.job_id)
    assert final.state is JobState.SUCCEEDED
    for line in lines_of(final).values():
        assert line.output is not None or (line.error and line.error.code == "escapes_output")


def blocks_no_longer_than(fifo: Path, run: Any) -> None:
    """Run the chunk; if it blocks on the FIFO, a writer unblocks it and the test fails."""
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY))
        thread.join(60)
        pytest.fail("the worker blocked opening a FIFO")


def test_a_fifo_among_the_inputs_is_an_item_error_not_a_hung_worker(
        area: Path, service: JobService, runner: ChunkRunner, queue: RecordedQueue) -> None:
    [good] = images(area / "in", ["good.jpg"])
    fifo = area / "in" / "x.jpg"
    os.mkfifo(fifo)
    job = service.submit(JobRequest(input=[good, str(fifo)], output=str(area / "out")))
    blocks_no_longer_than(fifo, lambda: run_all(runner, queue))

    final = service.status(job.job_id)
    assert (final.state, final.totals.failed) == (JobState.SUCCEEDED, 1)
    assert [(e.input, e.code) for e in final.errors] == [(str(fifo), "not_a_file")]


def peak_traced(run: Any) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_sparse_giant_input_is_refused_without_reading_it(
        area: Path, service: JobService, runner: ChunkRunner, queue: RecordedQueue) -> None:
    [good] = images(area / "in", ["good.jpg"])
    big = area / "in" / "big.jpg"
    with big.open("wb") as f:
        f.truncate(512 * 1024 * 1024)
    job = service.submit(JobRequest(input=[good, str(big)], output=str(area / "out")))
    peak = peak_traced(lambda: run_all(runner, queue))

    final = service.status(job.job_id)
    assert [(e.input, e.code) for e in final.errors] == [(str(big), "payload_too_large")]
    assert peak < 64 * 1024 * 1024, f"{peak} bytes allocated for a refused image"


def test_a_large_gcs_input_is_refused_after_downloading_at_most_the_limit(
        gcs_bucket: str, service: JobService, runner: ChunkRunner, queue: RecordedQueue) -> None:
    good = put(f"{gcs_bucket}/in/good.jpg", pet_image(600))
    big = put(f"{gcs_bucket}/in/big.jpg", b"\xff\xd8" + bytes(24 * 1024 * 1024))
    job = service.submit(JobRequest(input=[good, big], output=f"{gcs_bucket}/out"))
    peak = peak_traced(lambda: run_all(runner, queue))

    final = service.status(job.job_id)
    assert (final.state, final.totals.failed) == (JobState.SUCCEEDED, 1)
    assert [(e.input, e.code) for e in final.errors] == [(big, "payload_too_large")]
    assert peak < 16 * 1024 * 1024, f"{peak} bytes allocated for a refused image"


def test_gcs_checked_reads_stop_at_the_limit_and_keep_small_objects_whole(
        gcs_bucket: str) -> None:
    storage = storage_for(gcs_bucket)
    assert isinstance(storage, GcsStorage)
    small = put(f"{gcs_bucket}/in/small.bin", bytes(range(256)) * 4)
    empty = put(f"{gcs_bucket}/in/empty.bin", b"")
    exact = put(f"{gcs_bucket}/in/exact.bin", b"x" * 1000)
    assert storage.read_checked(small, 1024) == bytes(range(256)) * 4
    assert storage.read_checked(exact, 1000) == b"x" * 1000
    assert storage.read_checked(empty, 1000) == b""
    with pytest.raises(MaskfleetError) as refused:
        storage.read_checked(exact, 999)
    assert refused.value.code == "payload_too_large"
