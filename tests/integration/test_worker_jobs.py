"""Job logic against a real Redis and the GCS emulator, chunks run in-process (no Celery).

The API is the real `create_app`; its chunk messages go to a Redis queue nobody consumes here,
and the test runs the chunks itself, which is exactly what a worker's task does.
"""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from services.inference.app import create_app
from services.inference.settings import InferenceSettings
from services.jobs.broker import CHUNK_TASK
from services.jobs.chunk import ChunkRunner
from services.jobs.cli import main as cli
from services.jobs.confinement import InputNotAllowed, OutputNotEmpty
from services.jobs.manifest import chunk_manifest_uri, decode
from services.jobs.records import JobRequest, JobState
from services.jobs.service import JobService
from services.jobs.settings import JobSettings
from services.jobs.store import JobStore
from services.worker.models import ModelCache
from services.worker.settings import WorkerSettings
from services.worker.worker import create_worker_app
from shared.errors import (
    InvalidJob,
    JobNotFound,
    NoImagesFound,
    OutputInUse,
    StorageError,
    VersionNotFound,
)
from shared.imaging import decode_mask
from shared.redis import RedisEndpoint
from shared.repository import ModelRepository
from shared.segmentation import Segmentation, segment_many
from shared.storage import Storage, storage_for

pytestmark = pytest.mark.integration

REDIS_DB = 6
MAX_PIXELS = 1_000_000
MAX_IMAGE_BYTES = 150_000


def pet_image(seed: int, fmt: str = "JPEG", size: tuple[int, int] | None = None) -> bytes:
    """A blob 'pet' on a textured background: varied enough to give all three classes."""
    rng = np.random.default_rng(seed)
    width, height = size or (int(rng.integers(48, 220)), int(rng.integers(48, 220)))
    base = rng.integers(0, 256, 3)
    noise = rng.integers(-30, 30, (height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    ImageDraw.Draw(image).ellipse(
        (x0, y0, x0 + width // 2, y0 + height // 2), fill=tuple(int(v) for v in rng.integers(
            0, 256, 3)))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def put(uri: str, data: bytes) -> str:
    storage_for(uri).write(uri, data)
    return uri


class RecordedQueue:
    def __init__(self) -> None:
        self.chunks: list[tuple[str, int]] = []

    def __call__(self, job_id: str, chunks: object) -> None:
        self.chunks.extend((job_id, i) for i in chunks)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def model_repo(tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """A private copy, so moving a stage here cannot disturb other tests."""
    root = tmp_path_factory.mktemp("jobs-models") / "repo"
    shutil.copytree(tiny_model_repo, root)
    return ModelRepository(str(root))


@pytest.fixture(scope="module")
def models(model_repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return ModelCache(model_repo, tmp_path_factory.mktemp("jobs-cache"))


@pytest.fixture
def redis_url(redis_server) -> str:
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore(RedisEndpoint.build("state", redis_url).client(decode_responses=True),
                    max_errors=3)


@pytest.fixture
def queue() -> RecordedQueue:
    return RecordedQueue()


def confined_to(bucket: str, folder: Path) -> dict[str, object]:
    """Storage rules letting a test's jobs use its own bucket and temporary folder."""
    allowed = (bucket, str(folder))
    return {"job_input_prefixes": allowed, "job_output_prefixes": allowed,
            "job_overwrite_prefixes": allowed}


@pytest.fixture
def service(store: JobStore, model_repo: ModelRepository, queue: RecordedQueue,
            gcs_bucket: str, tmp_path: Path) -> JobService:
    return JobService(store, model_repo, queue, JobSettings(
        model_repository=model_repo.root, **confined_to(gcs_bucket, tmp_path)))


@pytest.fixture
def runner(store: JobStore, models: ModelCache, service: JobService) -> ChunkRunner:
    return ChunkRunner(store, models, service.policy, batch_size=3, max_pixels=MAX_PIXELS,
                       max_image_bytes=MAX_IMAGE_BYTES, io_threads=4)


def run_queued(runner: ChunkRunner, queue: RecordedQueue) -> None:
    for job_id, index in queue.chunks:
        runner.run(job_id, index)


def reference(models: ModelCache, version: int, data: bytes) -> np.ndarray:
    [result] = segment_many(models("unet", version), [data], MAX_PIXELS)
    assert isinstance(result, Segmentation)
    return result.mask


def test_a_job_writes_every_mask_and_a_manifest_listing_each_input_once(
    gcs_bucket: str, service: JobService, runner: ChunkRunner, queue: RecordedQueue,
    models: ModelCache,
) -> None:
    images = {put(f"{gcs_bucket}/images/{'sub/' if i % 4 == 0 else ''}p{i:02d}."
                  f"{'png' if i % 3 == 0 else 'jpg'}",
                  pet_image(i, "PNG" if i % 3 == 0 else "JPEG")): i for i in range(11)}
    put(f"{gcs_bucket}/images/readme.txt", b"not an image")
    status = service.submit(JobRequest(input=f"{gcs_bucket}/images", output=f"{gcs_bucket}/out",
                                       chunk_size=4))
    assert (status.state, status.totals.images, status.chunks.total) == ("queued", 11, 3)
    assert status.model.version == 1
    assert queue.chunks == [(status.job_id, i) for i in range(3)]

    run_queued(runner, queue)

    final = service.status(status.job_id)
    assert final.state is JobState.SUCCEEDED
    assert (final.totals.done, final.totals.failed, final.chunks.done) == (11, 0, 3)
    assert final.manifest == f"{gcs_bucket}/out/manifest.jsonl"
    lines = decode(storage_for(final.manifest).read(final.manifest))
    assert [x.input for x in lines] == sorted(images)
    for line in lines:
        assert line.output is not None
        assert line.error is None
        assert line.output.startswith(f"{gcs_bucket}/out/")
        mask = decode_mask(storage_for(line.output).read(line.output))
        data = storage_for(line.input).read(line.input)
        np.testing.assert_array_equal(mask, reference(models, 1, data))
        assert set(line.class_fractions or {}) == {"pet", "background", "border"}
    assert f"{gcs_bucket}/out/sub/p00.png" in {x.output for x in lines}


class FailFirstManifest:
    """Real storage whose first chunk-manifest write fails, like a worker dying right there."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.failed = False

    def __call__(self, uri: str) -> Storage:
        real = storage_for(uri)
        outer = self

        class Flaky:
            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
                if uri == outer.target and not outer.failed:
                    outer.failed = True
                    raise StorageError("injected failure")
                real.write(uri, data, content_type)

        return Flaky()  # type: ignore[return-value]


def test_a_redelivered_chunk_rewrites_identical_outputs_and_counts_once(
    gcs_bucket: str, service: JobService, runner: ChunkRunner, queue: RecordedQueue,
    store: JobStore,
) -> None:
    for i in range(5):
        put(f"{gcs_bucket}/in/q{i}.png", pet_image(100 + i, "PNG"))
    status = service.submit(JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/out",
                                       chunk_size=3))
    flaky = FailFirstManifest(chunk_manifest_uri(f"{gcs_bucket}/out", 0))
    runner.storage = flaky
    with pytest.raises(StorageError):
        runner.run(status.job_id, 0)  # masks written, then "died": nothing recorded
    first = {u: storage_for(u).read(u) for u in storage_for(gcs_bucket).list(
        f"{gcs_bucket}/out/") if u.endswith(".png")}
    assert len(first) == 3
    assert service.status(status.job_id).totals.done == 0

    runner.run(status.job_id, 0)  # the redelivery
    runner.run(status.job_id, 0)  # and once more, after it was recorded
    again = {u: storage_for(u).read(u) for u in first}
    assert again == first
    middle = service.status(status.job_id)
    assert (middle.totals.done, middle.chunks.done, middle.state) == (3, 1, "running")
    assert store.chunk_attempts(status.job_id)[0][0] == 2

    runner.run(status.job_id, 1)
    runner.run(status.job_id, 1)
    final = service.status(status.job_id)
    assert (final.state, final.totals.done, final.totals.images) == ("succeeded", 5, 5)
    lines = decode(storage_for(final.manifest or "").read(final.manifest or ""))
    assert sorted(x.input for x in lines) == sorted(set(x.input for x in lines))
    assert len(lines) == 5


def test_cancel_skips_chunks_that_have_not_started(
    gcs_bucket: str, service: JobService, runner: ChunkRunner, queue: RecordedQueue,
) -> None:
    for i in range(6):
        put(f"{gcs_bucket}/in/c{i}.jpg", pet_image(200 + i))
    status = service.submit(JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/out",
                                       chunk_size=2))
    assert runner.run(status.job_id, 0).status == "succeeded"
    cancelled = service.cancel(status.job_id)
    assert cancelled.state is JobState.CANCELLED
    assert [runner.run(status.job_id, i).status for i in (1, 2)] == ["skipped", "skipped"]
    written = [u for u in storage_for(gcs_bucket).list(f"{gcs_bucket}/out/") if
               u.endswith(".png")]
    assert sorted(written) == [f"{gcs_bucket}/out/c0.png", f"{gcs_bucket}/out/c1.png"]
    final = service.cancel(status.job_id)  # idempotent
    assert (final.state, final.totals.done, final.chunks.done, final.manifest) == (
        "cancelled", 2, 1, None)


def test_bad_images_are_per_item_errors_and_the_job_still_succeeds(
    gcs_bucket: str, service: JobService, runner: ChunkRunner, queue: RecordedQueue,
) -> None:
    good = [put(f"{gcs_bucket}/in/good{i}.jpg", pet_image(300 + i)) for i in range(3)]
    truncated = pet_image(310, "PNG")[:300]
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (260, 260, 3), np.uint8)).save(
        noisy, format="PNG")
    huge = io.BytesIO()
    Image.new("RGB", (1200, 1000), (10, 200, 30)).save(huge, format="PNG")
    gif = io.BytesIO()
    Image.new("RGB", (20, 20)).save(gif, format="GIF")
    bad = {
        put(f"{gcs_bucket}/in/corrupt.jpg", b"\xff\xd8 definitely not a jpeg"): "invalid_image",
        put(f"{gcs_bucket}/in/truncated.png", truncated): "invalid_image",
        put(f"{gcs_bucket}/in/too-many-pixels.png", huge.getvalue()): "too_many_pixels",
        put(f"{gcs_bucket}/in/too-many-bytes.png", noisy.getvalue()): "payload_too_large",
        put(f"{gcs_bucket}/in/actually-a-gif.png", gif.getvalue()): "unsupported_media_type",
        f"{gcs_bucket}/in/missing.png": "object_not_found",
        put(f"{gcs_bucket}/in/cut-in-header.jpg", pet_image(311)[:200]): "invalid_image",
    }
    assert len(noisy.getvalue()) > MAX_IMAGE_BYTES
    status = service.submit(JobRequest(input=[*good, *bad], output=f"{gcs_bucket}/out",
                                       chunk_size=4))
    run_queued(runner, queue)

    final = service.status(status.job_id)
    assert final.state is JobState.SUCCEEDED
    assert (final.totals.images, final.totals.done, final.totals.failed) == (10, 10, 7)
    assert len(final.errors) == 3  # the store keeps the first max_errors=3
    lines = {x.input: x for x in decode(storage_for(final.manifest or "").read(
        final.manifest or ""))}
    assert {uri: lines[uri].error.code for uri in bad} == bad  # type: ignore[union-attr]
    assert all(lines[uri].output is None for uri in bad)
    assert all(lines[uri].output and storage_for(lines[uri].output or "").exists(
        lines[uri].output or "") for uri in good)


def test_a_local_chunk_runs_on_the_local_io_threads_only(
    store: JobStore, models: ModelCache, service: JobService, queue: RecordedQueue,
    tmp_path: Path,
) -> None:
    """Local files need no latency hiding: their reads and writes take `local_io_threads`
    (here one), not the GCS pool's `io_threads`, whose extra threads would only contend with
    the model's thread for the GIL."""
    source = tmp_path / "in"
    source.mkdir()
    for i in range(6):
        (source / f"p{i}.jpg").write_bytes(pet_image(400 + i))
    used: set[str] = set()

    def recording(uri: str) -> Storage:
        used.add(threading.current_thread().name)
        return storage_for(uri)

    runner = ChunkRunner(store, models, service.policy, batch_size=2, max_pixels=MAX_PIXELS,
                         io_threads=4, local_io_threads=1, storage=recording)
    status = service.submit(JobRequest(input=str(source), output=str(tmp_path / "out"),
                                       chunk_size=6))
    run_queued(runner, queue)

    final = service.status(status.job_id)
    assert (final.state, final.totals.done, final.totals.failed) == (JobState.SUCCEEDED, 6, 0)
    assert len(list((tmp_path / "out").glob("p*.png"))) == 6
    assert {name for name in used if name.startswith("chunk-io")} == {"chunk-io_0"}


def test_a_lost_chunk_manifest_fails_the_job_with_the_reason(
    gcs_bucket: str, service: JobService, runner: ChunkRunner,
) -> None:
    for i in range(4):
        put(f"{gcs_bucket}/in/m{i}.jpg", pet_image(450 + i))
    status = service.submit(JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/out",
                                       chunk_size=2))
    runner.run(status.job_id, 0)
    storage_for(gcs_bucket).delete(chunk_manifest_uri(f"{gcs_bucket}/out", 0))
    runner.run(status.job_id, 1)
    final = service.status(status.job_id)
    assert final.state is JobState.FAILED
    assert "chunk-0.jsonl is missing" in (final.error or "")
    assert final.manifest is None


def test_a_chunk_task_that_cannot_run_fails_its_job(
    gcs_bucket: str, redis_url: str, store: JobStore, tiny_model_repo: Path, tmp_path: Path,
) -> None:
    """The Celery task itself (run eagerly): a pinned version that vanished is not retried."""
    root = tmp_path / "repo"
    shutil.copytree(tiny_model_repo, root)
    repo = ModelRepository(str(root))
    put(f"{gcs_bucket}/in/a.jpg", pet_image(460))
    service = JobService(store, repo, RecordedQueue(), JobSettings(
        model_repository=str(root), **confined_to(gcs_bucket, tmp_path)))
    status = service.submit(JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/out",
                                       model_version=2))
    (root / "unet" / "2" / "COMPLETE").unlink()

    settings = WorkerSettings(state_redis_url=redis_url, model_repository=str(root),
                              cache_dir=str(tmp_path / "cache"), worker_metrics_port=0)
    celery = create_worker_app(settings)
    result = celery.tasks[CHUNK_TASK].apply(args=[status.job_id, 0])
    assert result.failed()
    final = service.status(status.job_id)
    assert final.state is JobState.FAILED
    assert final.error == "chunk 0 failed: VersionNotFound: unet has no version 2"


def test_the_stage_is_pinned_at_submission(
    gcs_bucket: str, service: JobService, runner: ChunkRunner, queue: RecordedQueue,
    model_repo: ModelRepository,
) -> None:
    put(f"{gcs_bucket}/in/a.jpg", pet_image(400))
    model_repo.set_stage("unet", "candidate", 2)
    try:
        status = service.submit(JobRequest(input=f"{gcs_bucket}/in",
                                           output=f"{gcs_bucket}/out", model_stage="candidate"))
        model_repo.set_stage("unet", "candidate", 1)
        run_queued(runner, queue)
    finally:
        model_repo.clear_stage("unet", "candidate")
    final = service.status(status.job_id)
    assert (final.model.version, final.model.stage) == (2, "candidate")
    [line] = decode(storage_for(final.manifest or "").read(final.manifest or ""))
    assert line.model_version == 2


def test_refusals_leave_no_job_behind(
    gcs_bucket: str, tmp_path: Path, service: JobService, queue: RecordedQueue,
    store: JobStore,
) -> None:
    put(f"{gcs_bucket}/in/a.jpg", pet_image(500))
    with pytest.raises(NoImagesFound, match=r"no \.jpg"):
        service.submit(JobRequest(input=f"{gcs_bucket}/nothing-here", output=f"{gcs_bucket}/o"))
    with pytest.raises(InputNotAllowed):  # a bucket nobody allowed is not even listed
        service.submit(JobRequest(input="gs://no-such-bucket-x/in", output=f"{gcs_bucket}/o"))
    with pytest.raises(VersionNotFound):
        service.submit(JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/o",
                                  model_version=99))
    with pytest.raises(InvalidJob, match="chunk_size"):
        service.submit(JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/o",
                                  chunk_size=5000))
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    with pytest.raises(InvalidJob, match="cannot write to output"):
        service.submit(JobRequest(input=f"{gcs_bucket}/in", output=str(blocked / "out")))
    assert queue.chunks == []
    with pytest.raises(JobNotFound):
        service.status("f" * 32)


def test_one_output_is_written_by_one_unfinished_job_at_a_time(
    gcs_bucket: str, service: JobService,
) -> None:
    put(f"{gcs_bucket}/in/a.jpg", pet_image(600))
    request = JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/out")
    first = service.submit(request)
    with pytest.raises(OutputInUse) as caught:
        service.submit(request)
    assert caught.value.status == 409
    service.cancel(first.job_id)
    with pytest.raises(OutputNotEmpty):  # its plan is there now: a job never overwrites...
        service.submit(request)
    again = request.model_copy(update={"overwrite": True})  # ...unless asked and allowed
    assert service.submit(again).state is JobState.QUEUED


def test_nested_outputs_of_unfinished_jobs_are_refused(
    gcs_bucket: str, service: JobService,
) -> None:
    """The output lock was one key per exact output: a job writing into a folder inside (or
    around) another unfinished job's output was accepted, and each overwrote the other's
    masks and manifests."""
    put(f"{gcs_bucket}/in/a.jpg", pet_image(601))
    first = service.submit(JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/out/n"))
    for nested in (f"{gcs_bucket}/out/n/sub", f"{gcs_bucket}/out"):
        with pytest.raises(OutputInUse, match=first.job_id) as caught:  # even with overwrite
            service.submit(JobRequest(input=f"{gcs_bucket}/in", output=nested, overwrite=True))
        assert caught.value.status == 409
    # a sibling whose name merely starts the same is no overlap
    beside = service.submit(JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/out/nx"))
    assert beside.state is JobState.QUEUED
    service.cancel(first.job_id)
    service.cancel(beside.job_id)
    inner = service.submit(JobRequest(input=f"{gcs_bucket}/in", output=f"{gcs_bucket}/out/n/s2"))
    assert inner.state is JobState.QUEUED  # finished jobs lock nothing


@pytest.mark.parametrize("spelling", ["in/%ff", "in/%c3%28.jpg"])
def test_percent_encoding_that_is_not_utf8_is_refused_as_invalid(
    service: JobService, tmp_path: Path, spelling: str,
) -> None:
    with pytest.raises(InvalidJob, match="not UTF-8") as caught:  # was a 500
        service.submit(JobRequest(input=f"{tmp_path}/{spelling}", output=f"{tmp_path}/out"))
    assert caught.value.status == 422


def test_hidden_files_and_links_make_a_local_output_not_empty(
    service: JobService, tmp_path: Path,
) -> None:
    """The emptiness check listed like the storage does, which skips hidden files (in-flight
    writes there): a caller's own dotfile was overwritten without "overwrite": true."""
    source = tmp_path / "in"
    source.mkdir()
    (source / ".p.jpg").write_bytes(pet_image(602))
    hidden, linked, bare = tmp_path / "hidden", tmp_path / "linked", tmp_path / "bare"
    hidden.mkdir()
    (hidden / ".p.png").write_text("precious")
    linked.mkdir()
    (linked / "elsewhere").symlink_to(tmp_path / "in")
    (bare / "empty" / "folders").mkdir(parents=True)
    for output in (hidden, linked):
        with pytest.raises(OutputNotEmpty):
            service.submit(JobRequest(input=[str(source / ".p.jpg")], output=str(output)))
    assert (hidden / ".p.png").read_text() == "precious"
    job = service.submit(JobRequest(input=[str(source / ".p.jpg")], output=str(bare)))
    assert job.state is JobState.QUEUED  # folders alone hold nothing to lose


def test_overwrite_is_refused_for_an_output_inside_its_input_folder(
    service: JobService, tmp_path: Path,
) -> None:
    """Images under the output are left out of the inputs, then a mask of the same name
    replaced them: the ground truth a nested output with "overwrite" could destroy."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "x.jpg").write_bytes(pet_image(603))
    (source / "sub" / "x.png").write_bytes(pet_image(604, fmt="PNG"))
    with pytest.raises(InvalidJob, match="inside the input"):
        service.submit(JobRequest(input=str(source), output=str(source / "sub"),
                                  overwrite=True))
    outside = service.submit(JobRequest(input=str(source), output=str(tmp_path / "masks"),
                                        overwrite=True))
    assert outside.state is JobState.QUEUED


@pytest.fixture
def api(redis_url: str, model_repo: ModelRepository, tmp_path: Path,
        gcs_bucket: str) -> Iterator[TestClient]:
    """The real app factory, its job service queueing real Celery messages in Redis. Run as
    a context manager: one event loop for the whole test, as under uvicorn (the rate limiter's
    asyncio Redis connections belong to one loop)."""
    settings = InferenceSettings(model_repository=model_repo.root, state_redis_url=redis_url,
                                 cache_redis_url=redis_url,
                                 cache_dir=str(tmp_path / "cache"),
                                 redis_connect_timeout_ms=1000,  # a loaded test machine
                                 **confined_to(gcs_bucket, tmp_path))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_the_http_api_submits_reads_and_cancels(
    gcs_bucket: str, api: TestClient, redis_url: str, runner: ChunkRunner,
) -> None:
    put(f"{gcs_bucket}/in/a.jpg", pet_image(700))
    put(f"{gcs_bucket}/in/b.png", pet_image(701, "PNG"))
    answer = api.post("/v1/jobs", json={"input": f"{gcs_bucket}/in",
                                        "output": f"{gcs_bucket}/out", "chunk_size": 1})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert answer.headers["location"] == f"/v1/jobs/{job['job_id']}"
    assert (job["state"], job["totals"]["images"], job["model"]["version"]) == ("queued", 2, 1)
    client = redis.Redis.from_url(redis_url)
    assert client.llen("maskfleet") == 2  # two chunk messages, JSON, waiting for a worker

    runner.run(job["job_id"], 0)
    assert api.get(f"/v1/jobs/{job['job_id']}").json()["totals"]["done"] == 1
    assert api.delete(f"/v1/jobs/{job['job_id']}").json()["state"] == "cancelled"
    assert runner.run(job["job_id"], 1).status == "skipped"
    assert "maskfleet_jobs_submitted_total 1.0" in api.get("/metrics").text

    for path in ("/v1/jobs/" + "0" * 32, "/v1/jobs/not-a-job-id"):
        missing = api.get(path)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["code"] == "job_not_found"
    assert api.delete("/v1/jobs/" + "0" * 32).status_code == 404

    empty = api.post("/v1/jobs", json={"input": f"{gcs_bucket}/nothing",
                                       "output": f"{gcs_bucket}/o2"})
    assert (empty.status_code, empty.json()["code"]) == (422, "no_images")
    assert "no .jpg" in empty.json()["detail"]
    bad = api.post("/v1/jobs", json={"input": ["ftp://x/a.png"], "output": f"{gcs_bucket}/o"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_job")


def test_the_cli_drives_the_api(
    gcs_bucket: str, api: TestClient, runner: ChunkRunner, capsys: pytest.CaptureFixture[str],
) -> None:
    put(f"{gcs_bucket}/in/a.jpg", pet_image(800))
    assert cli(["submit", f"{gcs_bucket}/in", f"{gcs_bucket}/out"], http=api) == 0
    job_id = capsys.readouterr().out.strip()
    runner.run(job_id, 0)
    assert cli(["wait", job_id, "--interval", "0"], http=api) == 0
    out = capsys.readouterr().out
    assert "succeeded" in out
    assert f"{gcs_bucket}/out/manifest.jsonl" in out
    assert cli(["status", "0" * 32], http=api) == 2
