"""Feedback end to end, as users run it: the API as a uvicorn process with a real Redis, the
dataset in a GCS-API server. Segment an image, correct the served mask, send the correction:
the pair lands in the dataset's feedback prefix, the retraining loader reads it and mixes it into
training batches, and the feedback IoU metric moves by exactly the correction's IoU. Kept
answers are bounded in number and expire."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from google.cloud import storage as gcs
from PIL import Image

from shared.imaging import mask_to_class_ids, preprocess
from shared.storage import folder, join, storage_for
from tests.integration.test_inference_support import (
    mask_of,
    metric,
    photo,
    segment,
    start_api,
    url,
)
from tests.servers import Server, running, wait_until

pytestmark = pytest.mark.integration

REDIS_DB = 7
MAX_ENTRIES = 3
TTL_SECONDS = 600


@dataclass
class Stack:
    api: Server
    dataset: str
    redis: redis.Redis  # type: ignore[type-arg]


def png(mask: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(mask, mode="L").save(out, format="PNG")
    return out.getvalue()


def write_base_dataset(root: str) -> None:
    """Two pairs and their split lists: the smallest dataset the loader accepts."""
    store = storage_for(root)
    for name in ("a", "b"):
        store.write(join(root, "images", f"{name}.png"), png(np.full((16, 16), 200, np.uint8)))
        store.write(join(root, "annotations", "trimaps", f"{name}.png"),
                    png(np.full((16, 16), 2, np.uint8)))
    store.write(join(root, "annotations", "trainval.txt"), b"a 1 1 1\n")
    store.write(join(root, "annotations", "test.txt"), b"b 1 1 1\n")


@pytest.fixture(scope="module")
def stack(gcs_emulator: Server, redis_server: Server, tiny_model_repo: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    bucket = "feedback-e2e"
    client = gcs.Client()
    if not client.bucket(bucket).exists():
        client.create_bucket(bucket)
    dataset = f"gs://{bucket}/pets"
    write_base_dataset(dataset)
    api = start_api(tiny_model_repo, tmp_path_factory.mktemp("feedback-api"),
                    f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
                    feedback_uri=join(dataset, "feedback"), feedback_sample_rate=1.0,
                    feedback_max_entries=MAX_ENTRIES, feedback_ttl_seconds=TTL_SECONDS,
                    stage_poll_seconds=0, cache_enabled="false")
    db = redis.Redis(port=redis_server.port, db=REDIS_DB)
    db.flushdb()
    with running(api):
        yield Stack(api, dataset, db)
    db.flushdb()
    db.close()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def mean_iou(served: np.ndarray, corrected: np.ndarray) -> float:
    """Written out again here, so the test does not trust the code it checks."""
    scores = []
    for value in (1, 2, 3):
        both = np.logical_and(served == value, corrected == value).sum()
        either = np.logical_or(served == value, corrected == value).sum()
        if either:
            scores.append(both / either)
    return float(np.mean(scores))


def correct(mask: np.ndarray) -> np.ndarray:
    """What a user does: repaint the top-left quarter with another class."""
    fixed = mask.copy()
    h, w = mask.shape
    fixed[: h // 2, : w // 2] = mask[: h // 2, : w // 2] % 3 + 1
    return fixed


def send(http: httpx.Client, stack: Stack, token: str, mask: np.ndarray) -> httpx.Response:
    return http.post(url(stack.api, "/v1/feedback"), params={"feedback_token": token},
                     content=png(mask), headers={"Content-Type": "image/png"})


def kept(stack: Stack, token: str) -> bool:
    return bool(stack.redis.exists(f"maskfleet:feedback:served:{token}"))


def dataset_name(image: bytes, version: str) -> str:
    return f"{hashlib.sha256(image).hexdigest()[:32]}-v{version}"


def test_a_correction_is_stored_read_by_the_loader_and_measured(stack: Stack,
                                                               http: httpx.Client,
                                                               tmp_path: Path) -> None:
    from training.config import DataConfig
    from training.data import load_dataset, training_batches

    image = photo(11, (96, 72))
    answer = segment(http, stack.api, image)
    assert answer.status_code == 200, answer.text
    request_id, answered = answer.headers["x-request-id"], answer.headers["x-model-version"]
    version, _, variant = answered.partition("/")
    assert variant == "savedmodel"
    token = answer.headers["x-feedback-token"]
    served = mask_of(answer)
    fixed = correct(served)
    expected = mean_iou(served, fixed)
    assert 0 < expected < 1
    count = metric(stack.api, "maskfleet_feedback_iou_count", version=version)
    total = metric(stack.api, "maskfleet_feedback_iou_sum", version=version)

    stored = send(http, stack, token, fixed)  # right away: no waiting for Redis

    assert stored.status_code == 200, stored.text
    assert stored.json() == {"feedback_token": token, "request_id": request_id, "model": "unet",
                             "version": int(version), "iou": pytest.approx(expected, abs=1e-6)}
    feedback = join(stack.dataset, "feedback")
    name = dataset_name(image, version)
    image_uri = join(feedback, "images", f"{name}.jpg")
    trimap_uri = join(feedback, "annotations", "trimaps", f"{name}.png")
    assert storage_for(feedback).list(folder(feedback)) == sorted([image_uri, trimap_uri])
    assert storage_for(image_uri).read(image_uri) == image
    trimap = np.asarray(Image.open(io.BytesIO(storage_for(trimap_uri).read(trimap_uri))))
    assert (trimap == fixed).all()

    assert metric(stack.api, "maskfleet_feedback_total", version=version) >= 1
    assert metric(stack.api, "maskfleet_feedback_iou_count", version=version) == count + 1
    assert metric(stack.api, "maskfleet_feedback_iou_sum", version=version) == \
        pytest.approx(total + expected, abs=1e-9)

    # the retraining loader finds the pair under <dataset>/feedback ...
    config = DataConfig(uri=stack.dataset, feedback_fraction=1.0, batch_size=1, cache="none",
                        shuffle_buffer=1, flip=False)
    dataset = load_dataset(config, tmp_path)
    assert [pair.name for pair in dataset.feedback] == [name]
    assert dataset.feedback[0].image.read_bytes() == image
    # ... and, with all of the mix drawn from feedback, trains on exactly that correction
    pixels, ids = next(iter(training_batches(dataset, config, 32, seed=0)))
    assert (ids.numpy()[0] == mask_to_class_ids(fixed, 32)).all()
    assert np.allclose(pixels.numpy()[0], preprocess(image, 32)[0])


def test_a_second_correction_wrong_masks_and_unknown_tokens_are_refused(
        stack: Stack, http: httpx.Client) -> None:
    image = photo(12, (40, 30))
    answer = segment(http, stack.api, image)
    token = answer.headers["x-feedback-token"]
    served = mask_of(answer)

    wrong_size = send(http, stack, token, np.ones((30, 41), np.uint8))
    assert (wrong_size.status_code, wrong_size.json()["code"]) == (422, "invalid_mask")
    wrong_values = send(http, stack, token, np.zeros((30, 40), np.uint8))
    assert (wrong_values.status_code, wrong_values.json()["code"]) == (422, "invalid_mask")
    assert send(http, stack, token, served).status_code == 200
    again = send(http, stack, token, served)
    assert (again.status_code, again.json()["code"]) == (409, "feedback_already_received")
    # the same image served again gets a new token, but it is the same answer: still 409
    repeat = segment(http, stack.api, image)
    replay = send(http, stack, repeat.headers["x-feedback-token"], served)
    assert (replay.status_code, replay.json()["code"]) == (409, "feedback_already_received")
    # an id the client chose (its own X-Request-Id) names nothing
    chosen = segment(http, stack.api, photo(13, (40, 30)))
    forged = send(http, stack, chosen.headers["x-request-id"], served)
    assert forged.status_code in (404, 422)
    unknown = send(http, stack, "no-such-token-0123456789", served)
    assert (unknown.status_code, unknown.headers["content-type"]) == (
        404, "application/problem+json")
    assert unknown.json()["code"] == "feedback_token_unknown"
    assert "maskfleet:feedback" not in unknown.text  # no Redis key names in error bodies


def test_kept_answers_are_bounded_and_expire(stack: Stack, http: httpx.Client) -> None:
    ids = []
    for seed in range(20, 20 + MAX_ENTRIES + 2):
        answer = segment(http, stack.api, photo(seed, (40, 30)))
        ids.append(answer.headers["x-feedback-token"])
        wait_until(lambda: kept(stack, ids[-1]), 30, "the answer to be kept in Redis")
    # the oldest two made room for the newest: their feedback is a 404
    assert [kept(stack, token) for token in ids] == [False] * 2 + [True] * MAX_ENTRIES
    assert stack.redis.zcard("maskfleet:feedback:index") == MAX_ENTRIES
    dropped = send(http, stack, ids[0], np.ones((30, 40), np.uint8))
    assert (dropped.status_code, dropped.json()["code"]) == (404, "feedback_token_unknown")
    # every kept answer expires on its own
    key = f"maskfleet:feedback:served:{ids[-1]}"
    assert 0 < stack.redis.ttl(key) <= TTL_SECONDS
    stack.redis.pexpire(key, 1)
    wait_until(lambda: not stack.redis.exists(key), 10, "the entry to expire")
    expired = send(http, stack, ids[-1], np.ones((30, 40), np.uint8))
    assert (expired.status_code, expired.json()["code"]) == (404, "feedback_token_unknown")
