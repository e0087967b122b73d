"""Batch jobs confined to allowed storage, against a real Redis and the GCS emulator.

The attack this stops: one job with input `<dataset>/images/` and output
`<dataset>/annotations/trimaps/` overwrote the ground truth with the model's own predictions.
It is refused locally and with gs:// URIs, however the path is spelled (`./`, `//`, `..`,
percent-encoding, a symlink), before anything is queued or written; existing outputs are never
overwritten unless asked and allowed; an object name with `..` in a listing becomes a per-item
error; the HTTP API answers each refusal with a 403 problem+json naming the rule.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from services.inference.app import create_app
from services.inference.settings import InferenceSettings
from services.jobs.chunk import ChunkRunner
from services.jobs.confinement import (
    InputNotAllowed,
    LocalPathsNotAllowed,
    OutputNotAllowed,
    OutputNotEmpty,
    OutputProtected,
    OverwriteNotAllowed,
)
from services.jobs.records import JobRequest, JobState
from services.jobs.service import JobService
from services.jobs.settings import JobSettings
from services.jobs.store import JobStore
from services.worker.models import ModelCache
from shared.errors import InvalidJob, StorageNotAllowed
from shared.redis import RedisEndpoint
from shared.repository import ModelRepository
from shared.storage import storage_for
from tests.integration.test_worker_jobs import RecordedQueue, pet_image, put

pytestmark = pytest.mark.integration

REDIS_DB = 12
GROUND_TRUTH = b"\x89PNG the annotator's trimap"


@pytest.fixture(scope="module")
def model_repo(tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("confined-models") / "repo"
    shutil.copytree(tiny_model_repo, root)
    return ModelRepository(str(root))


@pytest.fixture
def store(redis_server) -> JobStore:  # type: ignore[no-untyped-def]
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return JobStore(RedisEndpoint.build("state", url).client(decode_responses=True))


def dataset_at(root: str) -> str:
    """A dataset in the training layout: images and their ground-truth trimaps."""
    for name in ("cat", "dog"):
        put(f"{root}/images/{name}.jpg", pet_image(len(name)))
        put(f"{root}/annotations/trimaps/{name}.png", GROUND_TRUTH)
    return root


def service_for(store: JobStore, repo: ModelRepository, queue: RecordedQueue, *,
                environment: str = "development", **prefixes: tuple[str, ...]) -> JobService:
    settings = JobSettings(model_repository=repo.root, environment=environment,
                           **prefixes)  # type: ignore[arg-type]
    return JobService(store, repo, queue, settings)


def assert_untouched(root: str, store: JobStore, queue: RecordedQueue) -> None:
    for name in ("cat", "dog"):
        uri = f"{root}/annotations/trimaps/{name}.png"
        assert storage_for(uri).read(uri) == GROUND_TRUTH
    assert queue.chunks == []
    assert store.redis.keys("maskfleet:job:*") == []


def spellings(dataset: str) -> list[str]:
    """The ground-truth folder, written as an attacker would to slip past a prefix check."""
    scheme, _, rest = dataset.partition("://")
    head = f"{scheme}://" if rest else ""
    path = rest or dataset
    return [
        f"{dataset}/annotations/trimaps",
        f"{dataset}/annotations/trimaps/",
        f"{dataset}/./annotations/./trimaps",
        f"{head}{path.replace('/', '//')}//annotations//trimaps",
        f"{dataset}/../{path.rsplit('/', 1)[-1]}/annotations/trimaps",
        f"{dataset}/jobs/out/../../annotations/trimaps",
        f"{dataset}/%61nnotations/trimaps",
    ]


@pytest.fixture
def gcs_dataset(gcs_bucket: str) -> str:
    return dataset_at(f"{gcs_bucket}/pets")


def test_overwriting_the_ground_truth_is_refused_with_gs_uris_in_production(
        gcs_bucket: str, gcs_dataset: str, store: JobStore, model_repo: ModelRepository) -> None:
    queue = RecordedQueue()
    # even a careless configuration that allows the whole bucket cannot reach the dataset
    service = service_for(store, model_repo, queue, environment="production",
                          job_input_prefixes=(gcs_bucket,), job_output_prefixes=(gcs_bucket,),
                          job_protected_prefixes=(gcs_dataset,))
    for output in spellings(gcs_dataset):
        with pytest.raises(OutputProtected) as refused:
            service.submit(JobRequest(input=f"{gcs_dataset}/images/", output=output))
        assert refused.value.status == 403
    with pytest.raises(OutputProtected):  # a parent of the dataset holds it: refused too
        service.submit(JobRequest(input=f"{gcs_dataset}/images/", output=f"{gcs_bucket}/"))
    assert_untouched(gcs_dataset, store, queue)


def test_overwriting_the_ground_truth_is_refused_locally(
        tmp_path: Path, store: JobStore, model_repo: ModelRepository) -> None:
    dataset = dataset_at(str(tmp_path / "data"))
    jobs = tmp_path / "jobs"
    (jobs / "out").mkdir(parents=True)
    (jobs / "out" / "link").symlink_to(tmp_path / "data" / "annotations")
    queue = RecordedQueue()
    service = service_for(store, model_repo, queue,
                          job_input_prefixes=(str(tmp_path),), job_output_prefixes=(str(jobs),),
                          job_protected_prefixes=(dataset,))
    for output in spellings(dataset):
        with pytest.raises(StorageNotAllowed) as refused:
            service.submit(JobRequest(input=f"{dataset}/images/", output=output))
        assert refused.value.code in ("output_protected", "output_not_allowed")
    with pytest.raises(OutputProtected):  # a symlink inside an allowed folder leads nowhere
        service.submit(JobRequest(input=f"{dataset}/images/", output=str(jobs / "out" / "link")))
    assert_untouched(dataset, store, queue)


def test_the_model_repository_and_the_apis_dataset_are_always_protected(
        gcs_bucket: str, gcs_dataset: str, store: JobStore, model_repo: ModelRepository,
        tmp_path: Path) -> None:
    queue = RecordedQueue()
    service = service_for(store, model_repo, queue,
                          job_input_prefixes=(str(tmp_path), gcs_bucket),
                          job_output_prefixes=(model_repo.root, gcs_bucket))
    put(f"{gcs_bucket}/incoming/a.jpg", pet_image(3))
    with pytest.raises(OutputProtected):
        service.submit(JobRequest(input=f"{gcs_bucket}/incoming/",
                                  output=f"{model_repo.root}/unet/9"))
    settings = InferenceSettings(model_repository=model_repo.root,
                                 feedback_uri=f"{gcs_dataset}/feedback")
    api_side = JobService(store, model_repo, queue, JobSettings(
        model_repository=model_repo.root, job_input_prefixes=(gcs_bucket,),
        job_output_prefixes=(gcs_bucket,)), protected=settings.feedback_protected)
    for output in (f"{gcs_dataset}/feedback/images", f"{gcs_dataset}/annotations/trimaps"):
        with pytest.raises(OutputProtected):
            api_side.submit(JobRequest(input=f"{gcs_bucket}/incoming/", output=output))
    assert queue.chunks == []


def test_inputs_and_outputs_stay_under_their_prefixes(
        gcs_bucket: str, store: JobStore, model_repo: ModelRepository, tmp_path: Path) -> None:
    put(f"{gcs_bucket}/incoming/a.jpg", pet_image(4))
    put(f"{gcs_bucket}/private/b.jpg", pet_image(5))
    queue = RecordedQueue()
    service = service_for(store, model_repo, queue,
                          job_input_prefixes=(f"{gcs_bucket}/incoming",),
                          job_output_prefixes=(f"{gcs_bucket}/results",))
    for source in (f"{gcs_bucket}/private/", f"{gcs_bucket}/incoming/../private/",
                   f"{gcs_bucket}/incoming-and-more/", [f"{gcs_bucket}/private/b.jpg"],
                   f"{gcs_bucket}/incoming%2F..%2Fprivate/"):
        with pytest.raises(InputNotAllowed):
            service.submit(JobRequest(input=source, output=f"{gcs_bucket}/results/x"))
    with pytest.raises(OutputNotAllowed):
        service.submit(JobRequest(input=f"{gcs_bucket}/incoming/", output=f"{gcs_bucket}/x"))
    with pytest.raises(InvalidJob, match="percent-encoded twice"):
        service.submit(JobRequest(input=f"{gcs_bucket}/incoming/%252e%252e/private/",
                                  output=f"{gcs_bucket}/results/x"))
    with pytest.raises(InputNotAllowed):  # local paths need a configured folder
        service.submit(JobRequest(input=str(tmp_path), output=f"{gcs_bucket}/results/x"))
    accepted = service.submit(JobRequest(input=f"{gcs_bucket}/incoming/./",
                                         output=f"{gcs_bucket}//results/x/"))
    assert (accepted.input.prefix, accepted.output) == (f"{gcs_bucket}/incoming/",
                                                        f"{gcs_bucket}/results/x")


def test_local_paths_are_refused_in_production(store: JobStore, model_repo: ModelRepository,
                                               tmp_path: Path) -> None:
    service = service_for(store, model_repo, RecordedQueue(), environment="production",
                          job_input_prefixes=(str(tmp_path),),
                          job_output_prefixes=(str(tmp_path),))
    (tmp_path / "a.jpg").write_bytes(pet_image(6))
    with pytest.raises(LocalPathsNotAllowed):
        service.submit(JobRequest(input=str(tmp_path), output=str(tmp_path / "out")))


def test_existing_objects_are_not_overwritten_unless_asked_and_allowed(
        gcs_bucket: str, store: JobStore, model_repo: ModelRepository) -> None:
    put(f"{gcs_bucket}/incoming/a.jpg", pet_image(7))
    kept = put(f"{gcs_bucket}/results/old/a.png", b"someone's mask")
    queue = RecordedQueue()
    strict = service_for(store, model_repo, queue,
                         job_input_prefixes=(f"{gcs_bucket}/incoming",),
                         job_output_prefixes=(f"{gcs_bucket}/results",))
    request = JobRequest(input=f"{gcs_bucket}/incoming/", output=f"{gcs_bucket}/results/old")
    with pytest.raises(OutputNotEmpty):
        strict.submit(request)
    with pytest.raises(OverwriteNotAllowed):
        strict.submit(request.model_copy(update={"overwrite": True}))
    assert storage_for(kept).read(kept) == b"someone's mask"
    assert queue.chunks == []
    lenient = service_for(store, model_repo, queue,
                          job_input_prefixes=(f"{gcs_bucket}/incoming",),
                          job_output_prefixes=(f"{gcs_bucket}/results",),
                          job_overwrite_prefixes=(f"{gcs_bucket}/results/old",))
    assert lenient.submit(request.model_copy(update={"overwrite": True})).state is \
        JobState.QUEUED


def test_listed_names_with_percent_signs_are_segmented_inside_the_output_as_spelled(
        gcs_bucket: str, store: JobStore, model_repo: ModelRepository,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Object names are literal: `%2e%2e` is a folder of that name (Cloud Storage never
    decodes it to `..`), `50%25off.jpg` an ordinary file. Their masks keep the names, inside
    the output; a literal `..` (which the emulator refuses to store) is the unit tests'."""
    put(f"{gcs_bucket}/incoming/good.jpg", pet_image(8))
    put(f"{gcs_bucket}/incoming/%2e%2e/%2e%2e/evil.jpg", pet_image(9))
    put(f"{gcs_bucket}/incoming/50%25off.jpg", pet_image(10))
    queue = RecordedQueue()
    service = service_for(store, model_repo, queue,
                          job_input_prefixes=(f"{gcs_bucket}/incoming",),
                          job_output_prefixes=(f"{gcs_bucket}/results",))
    status = service.submit(JobRequest(input=f"{gcs_bucket}/incoming/",
                                       output=f"{gcs_bucket}/results/run"))
    assert status.totals.images == 3
    runner = ChunkRunner(store, ModelCache(model_repo, tmp_path_factory.mktemp("cc")),
                         service.policy, batch_size=4)
    for job_id, index in queue.chunks:
        runner.run(job_id, index)
    final = service.status(status.job_id)
    assert final.state is JobState.SUCCEEDED
    assert final.errors == []
    masks = sorted(u for u in storage_for(gcs_bucket).list(f"{gcs_bucket}/")
                   if u.endswith(".png"))
    assert masks == [f"{gcs_bucket}/results/run/{name}.png"
                     for name in ("%2e%2e/%2e%2e/evil", "50%25off", "good")]


@pytest.fixture
def api(store: JobStore, model_repo: ModelRepository, gcs_bucket: str, redis_server,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> Iterator[TestClient]:
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    settings = InferenceSettings(
        model_repository=model_repo.root, state_redis_url=url, cache_redis_url=url,
        cache_dir=str(tmp_path / "cache"), redis_connect_timeout_ms=1000,
        feedback_uri=f"{gcs_bucket}/pets/feedback", job_input_prefixes=(gcs_bucket,),
        job_output_prefixes=(gcs_bucket,))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_the_api_answers_each_refusal_with_the_rule_before_queueing(
        api: TestClient, gcs_dataset: str, store: JobStore) -> None:
    cases = {
        f"{gcs_dataset}/annotations/trimaps": "output_protected",
        f"{gcs_dataset}/feedback/x": "output_protected",
        "gs://somebody-elses-bucket/out": "output_not_allowed",
    }
    for output, code in cases.items():
        answer = api.post("/v1/jobs", json={"input": f"{gcs_dataset}/images/", "output": output})
        assert answer.status_code == 403, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == code
    assert store.redis.llen("maskfleet") == 0
    assert_untouched(gcs_dataset, store, RecordedQueue())
