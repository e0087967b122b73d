"""`POST /v1/feedback` in-process: the brightness-threshold model serves predictable masks, a
dict stands in for the Redis-kept answers and a temporary directory for the dataset."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.inference.app import create_app
from services.inference.deps import get_feedback
from services.inference.feedback import (
    AlreadyCorrected,
    Feedback,
    RequestNotKept,
    ServedMask,
    mask_iou,
)
from shared.masks import encode_png
from tests.servers import wait_until
from tests.unit.test_inference_api import ThresholdModel, half_white, settings
from tests.unit.test_inference_batcher import FakeRepository

PROBLEM = "application/problem+json"


class MemoryServed:
    """The kept answers as a dict: what RedisServedLog does, minus Redis (which
    tests/integration/test_feedback_e2e.py and test_security_api.py run for real)."""

    def __init__(self) -> None:
        self.entries: dict[str, ServedMask] = {}
        self.claimed: set[str] = set()

    def remember(self, served: ServedMask) -> bool:
        self.entries[served.token] = served
        return True

    async def find(self, token: str, caller: str) -> ServedMask | None:
        served = self.entries.get(token)
        if served is None or served.caller != caller:
            return None
        if served.answer_key in self.claimed:
            raise AlreadyCorrected()
        return served

    async def claim(self, served: ServedMask) -> None:
        if served.token not in self.entries:
            raise RequestNotKept()
        if served.answer_key in self.claimed:
            raise AlreadyCorrected()
        self.claimed.add(served.answer_key)

    async def release(self, served: ServedMask) -> None:
        self.claimed.discard(served.answer_key)


class NoLimit:
    async def take(self, action: str, caller: str) -> None:
        return None


@pytest.fixture
def served() -> MemoryServed:
    return MemoryServed()


@contextmanager
def client_for(dataset: str, served: MemoryServed) -> Iterator[TestClient]:
    models = {1: ThresholdModel(1)}
    app = create_app(settings(cache_enabled=False, feedback_uri=dataset),
                     repository=FakeRepository(1), loader=models.__getitem__)
    corrections = Feedback(served, app.state.metrics, uri=dataset)
    app.state.segment_parts = replace(app.state.segment_parts, served_log=served)
    app.dependency_overrides[get_feedback] = lambda: corrections
    app.state.rate_limiter = NoLimit()
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, 30, "model loaded")
        yield test_client


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return tmp_path / "data" / "feedback"


@pytest.fixture
def client(dataset: Path, served: MemoryServed) -> Iterator[TestClient]:
    with client_for(str(dataset), served) as test_client:
        yield test_client


def segment(client: TestClient, image: bytes, content_type: str = "image/png"):
    answer = client.post("/v1/segment", content=image, headers={"Content-Type": content_type})
    assert answer.status_code == 200
    return answer.headers["x-feedback-token"], np.asarray(Image.open(io.BytesIO(answer.content)))


def name_of(image: bytes, version: int = 1) -> str:
    return f"{hashlib.sha256(image).hexdigest()[:32]}-v{version}"


def corrected_from(mask: np.ndarray) -> np.ndarray:
    """The user's fix: the top quarter of the image is background after all."""
    fixed = mask.copy()
    fixed[: mask.shape[0] // 4] = 2
    return fixed


def send(client: TestClient, token: str, mask_png: bytes):
    return client.post("/v1/feedback", params={"feedback_token": token}, content=mask_png,
                       headers={"Content-Type": "image/png"})


def metric(client: TestClient, name: str, version: str = "1") -> float:
    value = client.app.state.metrics.registry.get_sample_value(name, {"version": version,
                                                                  "variant": "savedmodel"})
    return value or 0.0


def test_a_correction_is_scored_and_stored_in_the_dataset_layout(client, dataset):
    image = half_white(80, 40)
    token, served_mask = segment(client, image)
    fixed = corrected_from(served_mask)
    answer = send(client, token, encode_png(fixed))
    assert answer.status_code == 200, answer.text
    expected = mask_iou(served_mask, fixed)
    assert 0 < expected < 1
    receipt = answer.json()
    assert receipt | {"request_id": None} == {
        "feedback_token": token, "request_id": None, "model": "unet", "version": 1,
        "iou": pytest.approx(expected)}
    name = name_of(image)
    assert (dataset / "images" / f"{name}.png").read_bytes() == image
    stored = np.asarray(Image.open(dataset / "annotations" / "trimaps" / f"{name}.png"))
    assert (stored == fixed).all()
    assert metric(client, "maskfleet_feedback_total") == 1
    assert metric(client, "maskfleet_feedback_iou_count") == 1
    assert metric(client, "maskfleet_feedback_iou_sum") == pytest.approx(expected)


def test_multipart_feedback_names_the_request_in_a_field(client, dataset):
    jpeg = half_white(64, 48, "JPEG")
    token, served_mask = segment(client, jpeg, "image/jpeg")
    answer = client.post("/v1/feedback", data={"feedback_token": token},
                         files={"mask": ("fixed.png", encode_png(served_mask), "image/png")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["iou"] == 1.0  # nothing to correct
    assert (dataset / "images" / f"{name_of(jpeg)}.jpg").read_bytes() == jpeg


def test_an_answer_takes_one_correction_even_when_served_again(client):
    image = half_white(40, 20)
    token, served_mask = segment(client, image)
    assert send(client, token, encode_png(served_mask)).status_code == 200
    again = send(client, token, encode_png(served_mask))
    assert (again.status_code, again.json()["code"]) == (409, "feedback_already_received")
    second_token, _ = segment(client, image)  # the same image again: a new token...
    assert second_token != token
    replay = send(client, second_token, encode_png(served_mask))
    assert (replay.status_code, replay.json()["code"]) == (409, "feedback_already_received")
    assert metric(client, "maskfleet_feedback_total") == 1  # ...but still one score


def test_an_unknown_token_is_404_problem(client):
    answer = send(client, "0123456789abcdefABCDEF", encode_png(np.ones((4, 4), np.uint8)))
    assert answer.status_code == 404
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert problem["code"] == "feedback_token_unknown"
    assert problem["request_id"] == answer.headers["x-request-id"]


@pytest.mark.parametrize(("mask", "fragment"), [
    (np.ones((20, 41), np.uint8), "41x20"),
    (np.full((20, 40), 7, np.uint8), "1, 2 or 3"),
])
def test_a_mask_of_the_wrong_size_or_values_is_422_and_can_be_fixed(client, dataset, mask,
                                                                     fragment):
    token, served_mask = segment(client, half_white(40, 20))
    answer = send(client, token, encode_png(mask))
    assert (answer.status_code, answer.json()["code"]) == (422, "invalid_mask")
    assert fragment in answer.json()["detail"]
    assert not dataset.exists()
    assert metric(client, "maskfleet_feedback_total") == 0
    assert send(client, token, encode_png(served_mask)).status_code == 200


BOUNDARY = "multipart/form-data; boundary=xyz"
TOKEN = "0123456789abcdefABCDEF"


@pytest.mark.parametrize(("params", "body", "content_type", "status", "code"), [
    ({}, b"\x89PNG", "image/png", 422, "invalid_request"),
    ({"feedback_token": "a b"}, b"\x89PNG", "image/png", 422, "invalid_request"),
    ({"feedback_token": "abc"}, b"\x89PNG", "image/png", 422, "invalid_request"),
    ({"feedback_token": TOKEN}, b"", "image/png", 400, "empty_body"),
    ({"feedback_token": TOKEN}, b"GIF89a", "image/gif", 415, "unsupported_media_type"),
    ({"feedback_token": TOKEN}, b"--xyz\r\nContent-Disposition: form-data; "
     b"name=\"feedback_token\"\r\n\r\nother\r\n--xyz--\r\n", BOUNDARY, 422,
     "invalid_request"),
    ({}, b"--xyz\r\nContent-Disposition: form-data; name=\"feedback_token\"\r\n\r\n"
     + TOKEN.encode() + b"\r\n--xyz--\r\n", BOUNDARY, 422, "invalid_request"),
    ({}, b"--xyz\r\n", "multipart/form-data", 400, "malformed_multipart"),
    ({"feedback_token": TOKEN}, b"x" * (64 * 1024 + 1), "image/png", 413, "payload_too_large"),
])
def test_malformed_feedback_requests_get_a_problem(client, params, body, content_type, status,
                                                   code):
    answer = client.post("/v1/feedback", params=params, content=body,
                         headers={"Content-Type": content_type})
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert answer.headers["content-type"] == PROBLEM


def test_a_storage_failure_is_502_and_the_answer_stays_correctable(tmp_path, served):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the dataset should be")
    with client_for(str(blocker / "feedback"), served) as client:
        token, served_mask = segment(client, half_white(40, 20))
        answer = send(client, token, encode_png(served_mask))
        assert (answer.status_code, answer.json()["code"]) == (502, "storage_error")
        assert str(blocker) not in answer.text  # no internal path in the error body
        assert not served.claimed  # released: a retry can succeed
        assert metric(client, "maskfleet_feedback_total") == 0


def test_the_openapi_document_describes_both_upload_forms(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/feedback"]["post"]
    assert set(operation["requestBody"]["content"]) == {"image/png", "multipart/form-data"}
    assert {"404", "409", "422"} <= set(operation["responses"])


def test_the_token_may_travel_in_the_header_it_came_in(client):
    token, served_mask = segment(client, half_white(30, 20))
    answer = client.post("/v1/feedback", content=encode_png(served_mask),
                         headers={"Content-Type": "image/png", "X-Feedback-Token": token})
    assert answer.status_code == 200, answer.text
    clash = client.post("/v1/feedback", params={"feedback_token": TOKEN},
                        content=encode_png(served_mask),
                        headers={"Content-Type": "image/png", "X-Feedback-Token": token})
    assert (clash.status_code, clash.json()["code"]) == (422, "invalid_request")
