"""The API in-process (TestClient): a model that thresholds brightness stands in for the U-Net,
so every mask is predictable, and a dict stands in for Redis."""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.inference.app import create_app
from services.inference.feedback import ServedMask
from services.inference.settings import InferenceSettings
from tests.servers import wait_until
from tests.unit.test_inference_batcher import FakeRepository
from tests.unit.test_inference_cache import FakeRedis

PROBLEM = "application/problem+json"


class ThresholdModel:
    """Bright pixels are pet (1), mid grey background (2), dark border (3)."""

    input_size = 32
    name = "unet"
    variant = "savedmodel"
    load_seconds = 0.0

    def __init__(self, version: int) -> None:
        self.version = version
        self.loaded = threading.Event()
        self.loaded.set()

    def class_ids(self, images: np.ndarray) -> np.ndarray:
        brightness = images.mean(axis=-1)
        return np.where(brightness > 0.66, 0, np.where(brightness > 0.33, 1, 2)).astype(np.int32)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        assert self.loaded.wait(30)


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def half_white(width: int = 200, height: int = 100, fmt: str = "PNG") -> bytes:
    """Left half white (pet), right half black (border)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = 255
    return encode(Image.fromarray(pixels), fmt)


def mask_of(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image)


def settings(**overrides) -> InferenceSettings:
    base = {"model_repository": "/nowhere", "batch_max_wait_ms": 1, "max_body_bytes": 64 * 1024,
            "max_pixels": 250_000, "role": "canary", "stage_poll_seconds": 0}
    return InferenceSettings(**(base | overrides))


@pytest.fixture(scope="module")
def redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture(scope="module")
def client(redis: FakeRedis) -> Iterator[TestClient]:
    models = {1: ThresholdModel(1)}
    redis.data.clear()
    app = create_app(settings(), repository=FakeRepository(1), loader=models.__getitem__,
                     redis_client=redis)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, 30, "model loaded")
        yield test_client


def segment(client: TestClient, body: bytes, content_type: str = "image/png", **kw):
    return client.post("/v1/segment", content=body, headers={"Content-Type": content_type,
                                                             **kw.pop("headers", {})}, **kw)


def test_probes_wait_for_the_model_to_be_loaded_and_warm():
    model = ThresholdModel(1)
    model.loaded.clear()
    app = create_app(settings(cache_enabled=False), repository=FakeRepository(1),
                     loader=lambda version: model)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/v2/health/live").json() == {"live": True}
        for path in ("/readyz", "/v2/health/ready", "/v2/models/unet/ready"):
            answer = client.get(path)
            assert answer.status_code == 503
            assert answer.json()["code"] == "model_not_ready"
        refused = segment(client, half_white())
        assert (refused.status_code, refused.headers["content-type"]) == (503, PROBLEM)
        model.loaded.set()
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "readiness")
        assert client.get("/readyz").json() == {"status": "ready", "model": "unet", "version": 1,
                                                "stage": "production"}
        assert segment(client, half_white()).status_code == 200


def test_the_mask_comes_back_as_png_at_the_input_resolution(client):
    answer = segment(client, half_white(200, 100))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["x-model-version"] == "1/savedmodel"
    assert len(answer.headers["x-request-id"]) >= 16
    mask = mask_of(answer.content)
    assert mask.shape == (100, 200)
    assert (mask[:, :90] == 1).all()  # white half: pet
    assert (mask[:, 110:] == 3).all()  # black half: border


def test_jpeg_and_multipart_uploads_are_segmented(client):
    jpeg = half_white(64, 48, "JPEG")
    raw = segment(client, jpeg, "image/jpeg")
    multipart = client.post("/v1/segment", files={"image": ("cat.jpg", jpeg, "image/jpeg")})
    assert raw.status_code == multipart.status_code == 200
    assert raw.content == multipart.content
    assert mask_of(raw.content).shape == (48, 64)


def test_a_repeat_is_a_cache_hit_with_identical_bytes(client, redis):
    image = half_white(120, 80)
    first, second = segment(client, image), segment(client, image)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content
    assert any(":unet:1/savedmodel:" in key for key in redis.data)


@pytest.mark.parametrize("how", ["query", "accept"])
def test_json_answers_describe_the_mask(client, how):
    image = half_white(100, 50)
    if how == "query":
        answer = client.post("/v1/segment?format=json", content=image,
                             headers={"Content-Type": "image/png", "X-Request-Id": "trace-7"})
    else:
        answer = segment(client, image, headers={"Accept": "application/json",
                                                 "X-Request-Id": "trace-7"})
    assert answer.status_code == 200
    body = answer.json()
    assert {k: body[k] for k in ("model", "version", "width", "height", "request_id")} == \
        {"model": "unet", "version": 1, "width": 100, "height": 50, "request_id": "trace-7"}
    assert answer.headers["x-request-id"] == "trace-7"
    assert body["class_fractions"] == {"pet": 0.5, "background": 0.0, "border": 0.5}
    assert mask_of(base64.b64decode(body["mask_png"])).shape == (50, 100)
    assert body["cached"] == (answer.headers["x-cache"] == "hit")


def test_an_unsafe_request_id_is_replaced(client):
    answer = client.get("/healthz", headers={"X-Request-Id": "a b\tc"})
    assert answer.headers["x-request-id"] != "a b\tc"


GIF = encode(Image.new("RGB", (4, 4)), "GIF")
TRUNCATED = half_white(64, 64, "JPEG")[:300]
BOUNDARY = "multipart/form-data; boundary=xyz"


@pytest.mark.parametrize(("path", "body", "content_type", "status", "code"), [
    ("/v1/segment", b"", "image/png", 400, "empty_body"),
    ("/v1/segment", b"hello, not an image", "image/jpeg", 422, "invalid_image"),
    ("/v1/segment", TRUNCATED, "image/jpeg", 422, "invalid_image"),
    ("/v1/segment", GIF, "image/png", 415, "unsupported_media_type"),
    ("/v1/segment", half_white(), "text/plain", 415, "unsupported_media_type"),
    ("/v1/segment", half_white(), "", 415, "unsupported_media_type"),
    ("/v1/segment", b"x" * (64 * 1024 + 1), "image/png", 413, "payload_too_large"),
    ("/v1/segment", encode(Image.new("RGB", (600, 500)), "PNG"), "image/png", 413,
     "too_many_pixels"),
    ("/v1/segment", b"--xyz\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--xyz--\r\n",
     BOUNDARY, 400, "malformed_multipart"),
    ("/v1/segment", b"--xyz\r\nContent-Disposition: form-data; name=\"photo\"; "
     b"filename=\"a.png\"\r\n\r\nabc\r\n--xyz--\r\n", BOUNDARY, 400, "missing_image"),
    ("/v1/segment", b"--xyz\r\n", "multipart/form-data", 400, "malformed_multipart"),
    ("/v1/segment?format=xml", half_white(), "image/png", 422, "invalid_request"),
    ("/v1/segment?keep=maybe", half_white(), "image/png", 422, "invalid_request"),
    (f"/v1/segment?stage={'s' * 33}", half_white(), "image/png", 422, "invalid_request"),
    ("/v2/models/unet/infer", b"{\"inputs\": [", "application/json", 400,
     "invalid_inference_request"),
    ("/v2/models/unet/infer", b"{}", "application/json", 400, "invalid_inference_request"),
    ("/v2/models/other/infer", b"{}", "application/json", 404, "model_not_found"),
    ("/v2/models/unet/versions/9/infer", b"{}", "application/json", 404, "version_not_found"),
    ("/v1/nothing", b"", "image/png", 404, "route_not_found"),
])
def test_bad_requests_get_a_problem_with_a_stable_code(client, path, body, content_type, status,
                                                       code):
    answer = client.post(path, content=body, headers={"Content-Type": content_type})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert (problem["status"], problem["code"]) == (status, code)
    assert problem["type"].endswith(code)
    assert problem["title"]
    assert problem["detail"]
    assert problem["request_id"] == answer.headers["x-request-id"]
    if path.startswith("/v2"):
        assert problem["error"] == problem["detail"]  # what OIP clients print


@pytest.mark.parametrize(("query", "problem"), [
    ("format=xml", "query.format"), ("keep=maybe", "query.keep"), ("stage=" + "s" * 33,
                                                                    "query.stage")])
def test_query_parameters_are_checked_as_the_openapi_document_declares(client, query, problem):
    """/v1/segment reads its parameters itself (`ServedDirectly`); they must still obey the
    constraints its OpenAPI operation publishes, and say which one failed."""
    declared = {p["name"]: p["schema"] for p in
                client.get("/openapi.json").json()["paths"]["/v1/segment"]["post"]["parameters"]}
    assert set(declared) == {"format", "stage", "keep"}
    assert declared["stage"]["anyOf"][0]["maxLength"] == 32
    answer = client.post(f"/v1/segment?{query}", content=half_white(),
                         headers={"Content-Type": "image/png"})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(problem)
    fine = client.post("/v1/segment?format=json&keep=yes&stage=production",
                       content=half_white(), headers={"Content-Type": "image/png"})
    assert fine.status_code == 200, fine.text
    assert fine.headers["content-type"] == "application/json"  # format=json was read
    assert fine.json()["model"] == "unet"


def test_wrong_method_is_405_problem(client):
    answer = client.get("/v1/segment")
    assert (answer.status_code, answer.json()["code"]) == (405, "method_not_allowed")


@pytest.mark.parametrize("kept", [True, False])
def test_every_answer_is_offered_to_the_feedback_log_with_a_server_drawn_token(client, kept):
    seen: list[ServedMask] = []

    class Recorder:
        def remember(self, served: ServedMask) -> bool:
            seen.append(served)
            return kept

    state = client.app.state
    original = state.segment_parts
    state.segment_parts = replace(original, served_log=Recorder())
    try:
        image = half_white(40, 30)
        answer = segment(client, image, headers={"X-Request-Id": "chosen-by-the-client"})
    finally:
        state.segment_parts = original
    (served,) = seen
    assert served.request_id == answer.headers["x-request-id"] == "chosen-by-the-client"
    assert served.token != served.request_id
    assert len(served.token) >= 22
    assert served.caller == "anonymous"
    assert (served.image, served.mask_png, served.version) == (image, answer.content, 1)
    assert answer.headers.get("x-feedback-token") == (served.token if kept else None)


def test_v2_json_tensors_as_in_the_kserve_spec(client):
    pixels = np.zeros((2, 3, 4, 3), np.uint8)
    pixels[1] = 255
    request = {"id": "req-1", "inputs": [{"name": "images", "shape": [2, 3, 4, 3],
                                          "datatype": "UINT8",
                                          "data": pixels.ravel().tolist()}]}
    answer = client.post("/v2/models/unet/versions/1/infer", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("unet", "1", "req-1")
    (mask,) = body["outputs"]
    assert (mask["name"], mask["datatype"], mask["shape"]) == ("mask", "UINT8", [2, 3, 4])
    assert mask["data"] == [3] * 12 + [1] * 12

    encoded = [base64.b64encode(half_white(20, 10)).decode()]
    request = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                           "data": encoded}],
               "outputs": [{"name": "mask"}, {"name": "mask_png"}]}
    body = client.post("/v2/models/unet/infer", json=request).json()
    assert body["id"]  # the server's request id when the client sent none
    tensors = {t["name"]: t for t in body["outputs"]}
    assert tensors["mask"]["shape"] == [1, 10, 20]
    png_mask = mask_of(base64.b64decode(tensors["mask_png"]["data"][0]))
    np.testing.assert_array_equal(png_mask.ravel(), tensors["mask"]["data"])


def test_v2_metadata_describes_the_loaded_model(client):
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    metadata = client.get("/v2/models/unet").json()
    assert (metadata["name"], metadata["versions"]) == ("unet", ["1"])
    assert {t["name"] for t in metadata["outputs"]} == {"mask", "mask_png"}
    assert client.get("/v2/models/unet/versions/1").status_code == 200
    assert client.get("/v2/models/unet/versions/2/ready").status_code == 404
    assert client.get("/v2/models/cat").status_code == 404


def test_metrics_describe_the_served_model_and_traffic(client):
    segment(client, half_white(30, 30))
    client.get("/metrics")
    text = client.get("/metrics").text
    assert ('maskfleet_model_info{model="unet",role="canary",stage="production",'
            'variant="savedmodel",version="1"} 1.0') in text
    assert 'maskfleet_model_ready{model="unet",role="canary"} 1.0' in text
    assert ('maskfleet_model_eval_metric{metric="mean_iou",model="unet",variant="savedmodel",'
            'version="1"} 0.1') in text
    assert 'maskfleet_http_requests_total{method="POST",protocol="http",route="/v1/segment",' \
           'status="200",variant="savedmodel",version="1"}' in text
    assert 'route="/metrics"' not in text  # scrapes are not traffic
    assert "maskfleet_batch_size_bucket" in text
    assert "maskfleet_cache_misses_total" in text


def test_the_openapi_document_describes_the_image_upload(client):
    spec = client.get("/openapi.json").json()
    segment_op = spec["paths"]["/v1/segment"]["post"]
    assert {"image/jpeg", "image/png", "multipart/form-data"} <= \
        set(segment_op["requestBody"]["content"])
    assert {"200", "413", "415"} <= set(segment_op["responses"])
    assert "/v2/models/{name}/versions/{version}/infer" in spec["paths"]


def test_invalid_settings_stop_the_process_with_a_clear_log():
    result = subprocess.run(
        [sys.executable, "-m", "services.inference"], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "MASKFLEET_BATCH_MAX_SIZE": "0",
             "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 2
    line = next(json.loads(x) for x in result.stdout.splitlines() if x.startswith("{"))
    assert line["msg"] == "invalid settings"
    assert "batch_max_size" in json.dumps(line["errors"])


@pytest.mark.parametrize("prefix", ["/model-a", "/model-b"])
def test_the_ingress_path_prefixes_reach_the_same_routes(client, prefix):
    plain = segment(client, half_white())
    prefixed = client.post(f"{prefix}/v1/segment", content=half_white(),
                           headers={"Content-Type": "image/png"})
    assert prefixed.status_code == 200
    assert prefixed.content == plain.content
    assert client.get(f"{prefix}/readyz").status_code == 200
    assert client.get("/model-c/readyz").status_code == 404


def test_an_unexpected_failure_is_a_500_problem_that_still_carries_the_request_id(client):
    class Broken:
        async def segment(self, *args: object) -> object:
            raise RuntimeError("a bug " + "x" * 5000)

    state = client.app.state
    original = state.segment_parts
    state.segment_parts = replace(original, segmenter=Broken())
    try:
        answer = segment(client, half_white(), headers={"X-Request-Id": "trace-500"})
    finally:
        state.segment_parts = original
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["x-request-id"] == "trace-500"
    assert answer.json()["request_id"] == "trace-500"
    assert "Traceback" not in answer.text
    assert "xxxx" not in answer.text


def test_log_lines_clip_what_callers_control():
    from shared.logging import JsonFormatter

    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "m" * 5000, None, None)
    record.detail = "d" * 50_000
    record.body = b"\x00" * 10_000
    line = JsonFormatter().format(record)
    assert len(line) < 4000
    assert "more characters" in line
